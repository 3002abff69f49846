#version 330 core
// One triangle that covers the whole viewport, generated from gl_VertexID: no vertex buffer.
// v_uv is the destination position in [0,1]; with streamvj's row convention (see
// bridges/gl_fx.py) v_uv.y = 0 is the top row of the numpy frame, so no pass ever flips.
out vec2 v_uv;

void main() {
    vec2 pos = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    v_uv = pos * 0.5 + 0.5;
    gl_Position = vec4(pos, 0.0, 1.0);
}
