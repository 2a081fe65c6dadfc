// RMSNorm of each row: out = w * (x * (1 / sqrt(mean(x^2) + eps))), as transformers computes it in
// float32.  One work-group per row; out may be x (every element is read before the reduction ends).
__kernel void rmsnorm_f32(__global const float *x, const int ldx, const int K, __global const float *w,
                          const float eps, __global float *out, const int ldo, __local float *red) {
    const int m = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);
    __global const float *row = x + (size_t)m * ldx;
    float ss = 0.0f;
    for (int k = lid; k < K; k += wg) ss += row[k] * row[k];
    const float var = wg_sum_float(ss, red) / (float)K;
    const float inv = 1.0f / sqrt(var + eps);
    __global float *o = out + (size_t)m * ldo;
    for (int k = lid; k < K; k += wg) o[k] = w[k] * (row[k] * inv);
}
