// Squared-ReLU gated unit of a fused (M, 2F) gate/up product: out[m, f] = relu(g)^2 * u.
// Grid: (F, M).
__kernel void glu_relu2_f32(__global const float *gu, const int F, __global float *out) {
    const int f = get_global_id(0), m = get_global_id(1);
    const float g = gu[(size_t)m * 2 * F + f], u = gu[(size_t)m * 2 * F + F + f];
    const float r = fmax(g, 0.0f);
    out[(size_t)m * F + f] = r * r * u;
}
