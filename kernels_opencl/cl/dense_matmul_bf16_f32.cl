// Dense product Y[m, ycol + n] = sum_k X[m, k] * W[n, k] for weights (N, K) stored as bfloat16 (uint16 storage);
// float32 activations (M, K) and float32 accumulation.  Grid and work split: see common.clh.
#define LOAD4(k) as_float4(convert_uint4(vload4(0, W + (k))) << (uint4)(16))
#define LOAD1(k) as_float((uint)W[k] << 16)
__kernel void dense_matmul_bf16_f32(__global const ushort *Wall, const int K, __global const float *X, const int M,
        __global float *Y, const int ldy, const int ycol, __local float *red) {
    const int n = get_group_id(0), m0 = get_group_id(1) * MT;
    const int rows = min(MT, M - m0);
    __global const ushort *W = Wall + (size_t)n * K;
    float4 acc[MT];
    DENSE_ROW_PRODUCTS(LOAD4, LOAD1, X, K, m0, rows, acc);
    for (int r = 0; r < rows; r++) {
        const float v = wg_sum_float((acc[r].s0 + acc[r].s1) + (acc[r].s2 + acc[r].s3), red);
        if (get_local_id(0) == 0) Y[(size_t)(m0 + r) * ldy + ycol + n] = v;
    }
}
