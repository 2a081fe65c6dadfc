// Ternary linear layer with one scale per 256-weight block (GGUF TQ1_0 / TQ2_0 whose block scales
// differ): Y[m, ycol + n] = sum_b float(acc_b) * scale[n, b] / s[m].  A 16-byte word never straddles a
// block (64 bytes), so each word's exact partial product is scaled by its own block's scale; the float sum
// runs in work-group order (within float tolerance of the reference, which sums blocks in order).
// Grid and words as ternary_linear_i8_f32.
__kernel void ternary_linear_blockscaled_i8_f32(__global const uint4 *W, const int words, __global const char *X,
        const int Kp, const int M, __global const float *s, __global const float *bscale, __global float *Y,
        const int ldy, const int ycol, __local float *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT, lid = get_local_id(0), wg = get_local_size(0);
    const int rows = min(MT, M - m0);
    const int nb = words >> 2;  // 4 words per 256-weight block
    float acc[MT];
    for (int r = 0; r < MT; r++) acc[r] = 0.0f;
    __global const uint4 *wr = W + (size_t)n * words;
    for (int j = lid; j < words; j += wg) {
        const uint4 word = wr[j];
        const int base = ((j >> 1) << 7) + ((j & 1) << 4);
        const float bs = bscale[(size_t)n * nb + (j >> 2)];
        for (int r = 0; r < MT; r++) {
            if (r >= rows) break;
            acc[r] += (float)ternary_dot64(word, X + (size_t)(m0 + r) * Kp + base) * bs;
        }
    }
    for (int r = 0; r < rows; r++) {
        const float v = wg_sum_float(acc[r], red);
        if (lid == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = v / s[m0 + r];
    }
}
