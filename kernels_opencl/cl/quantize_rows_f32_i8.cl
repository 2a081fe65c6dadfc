// Per-row absmax quantization of activations to int8, as kernels_cython.reference.quantize_activations:
// amax = max(max|x|, 1e-5); s = (1 / amax) * 127 (two roundings); xq = clamp(rint(x * s), -128, 127).
// One work-group per row.  Columns K .. Kp - 1 of xq are written as 0 (the ternary kernels read Kp).
// Needs -cl-fp32-correctly-rounded-divide-sqrt for the bit-exact scale.
__kernel void quantize_rows_f32_i8(__global const float *x, const int ldx, const int K, const int Kp,
                                   __global char *xq, __global float *s, __local float *red) {
    const int m = get_group_id(0), lid = get_local_id(0), wg = get_local_size(0);
    __global const float *row = x + (size_t)m * ldx;
    float amax = 0.0f;
    for (int k = lid; k < K; k += wg) amax = fmax(amax, fabs(row[k]));
    amax = fmax(wg_max_float(amax, red), 1e-5f);
    const float recip = 1.0f / amax;
    const float sc = recip * 127.0f;
    __global char *out = xq + (size_t)m * Kp;
    for (int k = lid; k < Kp; k += wg) {
        out[k] = k < K ? (char)clamp(rint(row[k] * sc), -128.0f, 127.0f) : (char)0;
    }
    if (lid == 0) s[m] = sc;
}
