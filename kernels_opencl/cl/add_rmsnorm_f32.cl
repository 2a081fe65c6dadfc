// Residual add, then RMSNorm: x += y (the residual stream, in place), out = rmsnorm(x) * w.
// One work-group per row.
__kernel void add_rmsnorm_f32(__global float *x, __global const float *y, const int K, __global const float *w,
                              const float eps, __global float *out, __local float *red) {
    const int m = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);
    __global float *row = x + (size_t)m * K;
    __global const float *yr = y + (size_t)m * K;
    float ss = 0.0f;
    for (int k = lid; k < K; k += wg) {
        const float v = row[k] + yr[k];
        row[k] = v;
        ss += v * v;
    }
    const float var = wg_sum_float(ss, red) / (float)K;
    const float inv = 1.0f / sqrt(var + eps);
    __global float *o = out + (size_t)m * K;
    for (int k = lid; k < K; k += wg) o[k] = w[k] * (row[k] * inv);
}
