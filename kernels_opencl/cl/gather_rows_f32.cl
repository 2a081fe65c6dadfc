// out[i, :] = x[rows[i], :] for the rows whose logits are needed.  Grid: (K, n).
__kernel void gather_rows_f32(__global const float *x, const int K, __global const int *rows,
                              __global float *out) {
    const int k = get_global_id(0), i = get_global_id(1);
    out[(size_t)i * K + k] = x[(size_t)rows[i] * K + k];
}
