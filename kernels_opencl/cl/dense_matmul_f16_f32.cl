// Dense product Y[m, ycol + n] = sum_k X[m, k] * W[n, k] for weights (N, K) stored as float16 (read with vload_half: no cl_khr_fp16 needed);
// float32 activations (M, K) and float32 accumulation.  Grid and work split: see common.clh.
#define LOAD4(k) vload_half4(0, W + (k))
#define LOAD1(k) vload_half((k), W)
__kernel void dense_matmul_f16_f32(__global const half *Wall, const int K, __global const float *X, const int M,
        __global float *Y, const int ldy, const int ycol, __local float *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT;
    const int rows = min(MT, M - m0);
    __global const half *W = Wall + (size_t)n * K;
    float4 acc[MT];
    DENSE_ROW_PRODUCTS(LOAD4, LOAD1, X, K, m0, rows, acc);
    for (int r = 0; r < rows; r++) {
        const float v = wg_sum_float((acc[r].s0 + acc[r].s1) + (acc[r].s2 + acc[r].s3), red);
        if (get_local_id(0) == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = v;
    }
}
