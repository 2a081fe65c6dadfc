// Dense product Y[m, ycol + n] = sum_k X[m, k] * W[n, k] for weights (N, K) stored as float16 (read with vload_half: no cl_khr_fp16 needed);
// float32 activations (M, K) and float32 accumulation, four columns at a time.
// Grid: (N * wg, ceil(M / MT)); one work-group per output row and tile of MT rows (see ternary_linear_i8_f32).
__kernel void dense_matmul_f16_f32(__global const half *Wall, const int K, __global const float *X, const int M,
        __global float *Y, const int ldy, const int ycol, __local float *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT, lid = get_local_id(0), wg = get_local_size(0);
    const int rows = min(MT, M - m0);
    __global const half *W = Wall + (size_t)n * K;
    float4 acc[MT];
    for (int r = 0; r < MT; r++) acc[r] = (float4)(0.0f);
    const int k4 = K & ~3;
    for (int k = lid * 4; k < k4; k += wg * 4) {
        const float4 w = vload_half4(0, W + k);
        for (int r = 0; r < MT; r++) {
            if (r >= rows) break;
            acc[r] += vload4(0, X + (size_t)(m0 + r) * K + k) * w;
        }
    }
    for (int k = k4 + lid; k < K; k += wg) {
        const float w = vload_half(k, W);
        for (int r = 0; r < MT; r++) {
            if (r >= rows) break;
            acc[r].s0 += X[(size_t)(m0 + r) * K + k] * w;
        }
    }
    for (int r = 0; r < rows; r++) {
        const float v = wg_sum_float((acc[r].s0 + acc[r].s1) + (acc[r].s2 + acc[r].s3), red);
        if (lid == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = v;
    }
}
