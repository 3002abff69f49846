#version 330 core
// Post-FX anti-flicker: out = mix(out, previous shown frame, amount) (engine/fx.py
// temporal_blend): an exponential moving average over frames. Alpha is the current frame's.
uniform sampler2D u_src;
uniform sampler2D u_prev;
uniform float u_amount;    // fx_blend, 0..1: 0 = off, higher = smoother, more trailing
out vec4 frag;

void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    vec4 src = texelFetch(u_src, p, 0);
    frag = vec4(mix(src.rgb, texelFetch(u_prev, p, 0).rgb, u_amount), src.a);
}
