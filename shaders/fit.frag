#version 330 core
// Fit a source of any size to the destination: cover (scale + centre-crop) or contain
// (scale + letterbox bars). Geometry comes from the host (bridges/gl_fx.py, which uses
// engine/fit.py's cover_crop_box); rects are (x0, y0, w, h) in uv with y from the top row.
uniform sampler2D u_src;
uniform vec4 u_dst_rect;   // where the image lands in the destination (0,0,1,1 for cover)
uniform vec4 u_src_rect;   // the source window shown there (the crop box for cover)
uniform vec4 u_src_clamp;  // (min.xy, max.xy): the window inset by half a texel, so filtering
                           // never pulls in pixels from outside the crop (edge clamp, as
                           // engine/fit.py gets by cropping before it resizes)
uniform vec2 u_footprint;  // one destination pixel, in source uv
uniform ivec2 u_taps;      // samples per axis: 1 when enlarging (plain bilinear), ceil(shrink
                           // factor) when shrinking, so no source pixel is skipped (antialias)
uniform vec4 u_border;     // colour of the letterbox bars
in vec2 v_uv;
out vec4 frag;

void main() {
    vec2 local = (v_uv - u_dst_rect.xy) / u_dst_rect.zw;
    if (any(lessThan(local, vec2(0.0))) || any(greaterThanEqual(local, vec2(1.0)))) {
        frag = u_border;
        return;
    }
    vec2 centre = u_src_rect.xy + local * u_src_rect.zw;
    vec4 acc = vec4(0.0);
    for (int j = 0; j < u_taps.y; ++j) {
        for (int i = 0; i < u_taps.x; ++i) {
            vec2 offset = (vec2(i, j) + 0.5) / vec2(u_taps) - 0.5;
            acc += texture(u_src, clamp(centre + offset * u_footprint, u_src_clamp.xy, u_src_clamp.zw));
        }
    }
    frag = acc / float(u_taps.x * u_taps.y);
}
