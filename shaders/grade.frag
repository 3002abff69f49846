#version 330 core
// Colour grade, the same math as engine/fx.py grade, in [0,1] texture space
// (u = (img_pm1 + 1) / 2): contrast around mid-grey 0.5, brightness offset, saturation
// around Rec.709 luma, hue rotation with the luminance-preserving matrix (Haeberli; SVG/CSS
// hue-rotate) whose sin term HUE_SIN has rows summing to 0, so it needs no offset here.
// The RGBA8 target clamps to [0,1] as the torch version clamps to [-1,1]. Alpha passes through.
uniform sampler2D u_src;
uniform float u_brightness;  // -1..1, in [0,1] display units
uniform float u_contrast;    // 0..4, 1 = unchanged
uniform float u_saturation;  // 0..4, 1 = unchanged
uniform float u_hue_deg;     // -180..180 degrees
out vec4 frag;

const vec3 LUMA = vec3(0.2126, 0.7152, 0.0722);
const vec3 HUE_SIN_0 = vec3(-0.2126, -0.7152, 0.9278);
const vec3 HUE_SIN_1 = vec3(0.142686018, 0.1404, -0.283086018);
const vec3 HUE_SIN_2 = vec3(-0.7874, 0.7152, 0.0722);

void main() {
    vec4 src = texelFetch(u_src, ivec2(gl_FragCoord.xy), 0);
    vec3 x = (src.rgb - 0.5) * u_contrast + 0.5 + u_brightness;
    float y = dot(LUMA, x);
    float angle = radians(u_hue_deg);
    // Saturation and hue both act on the chroma x - y and commute: one residual term each.
    float k_chroma = u_saturation * cos(angle) - 1.0;
    float k_rotate = u_saturation * sin(angle);
    vec3 rotated = vec3(dot(HUE_SIN_0, x), dot(HUE_SIN_1, x), dot(HUE_SIN_2, x));
    frag = vec4(clamp(x + k_chroma * (x - y) + k_rotate * rotated, 0.0, 1.0), src.a);
}
