// int8 dense product for the quantized output layer: activations quantized by quantize_rows_q8_f32_i8
// (xq (M, Kp), xs (M,)), weights int8 (N, Kp) with per-row scales ws: Y[m, n] = float(acc) * xs[m] * ws[n],
// the int32 sum exact.  Grid: (N * wg, ceil(M / MT)).
__kernel void dense_matmul_q8_i8_f32(__global const char *Wall, const int Kp, __global const char *X,
                                     __global const float *xs, __global const float *ws, const int M,
                                     __global float *Y, const int ldy, const int ycol, __local int *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT, lid = get_local_id(0), wg = get_local_size(0);
    const int rows = min(MT, M - m0);
    __global const char *W = Wall + (size_t)n * Kp;
    int acc[MT];
    for (int r = 0; r < MT; r++) acc[r] = 0;
    for (int k = lid * 16; k < Kp; k += wg * 16) {  // Kp is a multiple of 64
        const short16 w = convert_short16(vload16(0, W + k));
        for (int r = 0; r < MT; r++) {
            if (r >= rows) break;
            const short16 p = convert_short16(vload16(0, X + (size_t)(m0 + r) * Kp + k)) * w;  // |p| <= 127 * 127
            const int8 q = convert_int8(p.lo) + convert_int8(p.hi);
            const int4 q4 = q.lo + q.hi;
            acc[r] += q4.s0 + q4.s1 + q4.s2 + q4.s3;
        }
    }
    for (int r = 0; r < rows; r++) {
        const int v = wg_sum_int(acc[r], red);
        if (lid == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = (float)v * xs[m0 + r] * ws[n];
    }
}
