#version 330 core
// Pre-FX feedback: mix the last output into the next input (engine/fx.py feedback_mix).
// A lerp is affine, so it is the same in [0,1] texture space as in img_pm1 space.
// Alpha is the current frame's.
uniform sampler2D u_src;
uniform sampler2D u_last;
uniform float u_amount;    // fx_feedback, 0..1: 0 = input untouched, 1 = last output
out vec4 frag;

void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    vec4 src = texelFetch(u_src, p, 0);
    frag = vec4(mix(src.rgb, texelFetch(u_last, p, 0).rgb, u_amount), src.a);
}
