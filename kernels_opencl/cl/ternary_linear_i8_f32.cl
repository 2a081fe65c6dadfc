// Ternary linear layer with per-row weight scales, fused rescale: the exact int32 product of
// ternary_matmul_i8_i32, then Y[m, ycol + n] = (float(acc) / s[m]) * scale[n] (divide, then multiply:
// bit for bit kernels_cython.reference.ternary_linear with -cl-fp32-correctly-rounded-divide-sqrt).
// Grid and work split: see ternary_row_products in common.clh.
__kernel void ternary_linear_i8_f32(__global const uint4 *W, const int words, __global const char *X, const int Kp,
        const int M, __global const float *s, __global const float *scale, __global float *Y, const int ldy,
        const int ycol, __local int *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT, lid = get_local_id(0);
    const int rows = min(MT, M - m0);
    int acc[MT];
    ternary_row_products(W + (size_t)n * words, words, X, Kp, m0, rows, acc);
    for (int r = 0; r < rows; r++) {
        const int v = wg_sum_int(acc[r], red);
        if (lid == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = ((float)v / s[m0 + r]) * scale[n];
    }
}
