// SiLU gated unit of a fused (M, 2F) gate/up product: out[m, f] = g / (1 + exp(-g)) * u.
// Grid: (F, M).
__kernel void glu_silu_f32(__global const float *gu, const int F, __global float *out) {
    const int f = get_global_id(0), m = get_global_id(1);
    const float g = gu[(size_t)m * 2 * F + f], u = gu[(size_t)m * 2 * F + F + f];
    out[(size_t)m * F + f] = g / (1.0f + exp(-g)) * u;
}
