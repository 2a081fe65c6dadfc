// Ternary linear layer with per-row weight scales, fused rescale: the exact int32 product of
// ternary_matmul_i8_i32, then Y[m, ycol + n] = (float(acc) / s[m]) * scale[n] (divide, then multiply:
// bit for bit kernels_cython.reference.ternary_linear with -cl-fp32-correctly-rounded-divide-sqrt).
// Grid: (N * wg, ceil(M / MT)); one work-group per output row n and tile of MT activation rows; each
// work-item takes 16-byte words of the row (64 weights) strided by the local size, then the work-group
// sums (a local size of 1 is one row per work-item, the best shape on CPU devices).
__kernel void ternary_linear_i8_f32(__global const uint4 *W, const int words, __global const char *X, const int Kp,
        const int M, __global const float *s, __global const float *scale, __global float *Y, const int ldy,
        const int ycol, __local int *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT, lid = get_local_id(0), wg = get_local_size(0);
    const int rows = min(MT, M - m0);
    int acc[MT];
    for (int r = 0; r < MT; r++) acc[r] = 0;
    __global const uint4 *wr = W + (size_t)n * words;
    for (int j = lid; j < words; j += wg) {
        const uint4 word = wr[j];
        const int base = ((j >> 1) << 7) + ((j & 1) << 4);  // 128 * chunk + first byte's position in it
        for (int r = 0; r < MT; r++) {
            if (r >= rows) break;
            acc[r] += ternary_dot64(word, X + (size_t)(m0 + r) * Kp + base);
        }
    }
    for (int r = 0; r < rows; r++) {
        const int v = wg_sum_int(acc[r], red);
        if (lid == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = ((float)v / s[m0 + r]) * scale[n];
    }
}
