// Symmetric per-row int8 quantization for the int8 (q8) dense output layer, as the CPU engine's:
// xs = max|x| / 127 (1 when the row is all zero); xq = clamp(rint(x * (1 / xs)), -127, 127).
// One work-group per row; columns K .. Kp - 1 are written as 0.
__kernel void quantize_rows_q8_f32_i8(__global const float *x, const int ldx, const int K, const int Kp,
                                      __global char *xq, __global float *xs, __local float *red) {
    const int m = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);
    __global const float *row = x + (size_t)m * ldx;
    float amax = 0.0f;
    for (int k = lid; k < K; k += wg) amax = fmax(amax, fabs(row[k]));
    amax = wg_max_float(amax, red);
    const float sc = amax > 0.0f ? amax / 127.0f : 1.0f;
    const float inv = 1.0f / sc;
    __global char *out = xq + (size_t)m * Kp;
    for (int k = lid; k < Kp; k += wg) {
        out[k] = k < K ? (char)clamp(rint(row[k] * inv), -127.0f, 127.0f) : (char)0;
    }
    if (lid == 0) xs[m] = sc;
}
