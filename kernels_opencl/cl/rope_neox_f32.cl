// NeoX rotary embedding in place on the first `heads` heads of each row (queries then keys in the fused
// q/k/v row): with half = D / 2 and (c, s) = (cos, sin)[pos[m], j],
// x[j] <- x[j] * c - x[j + h2] * s;  x[j + h2] <- x[j + h2] * c + x[j] * s.
// Grid: (half, heads, M).  cos / sin are (context, half) tables kept on the device.
__kernel void rope_neox_f32(__global float *qkv, const int ld, const int D, __global const int *pos,
                            __global const float *cos_t, __global const float *sin_t) {
    const int j = get_global_id(0), h = get_global_id(1), m = get_global_id(2);
    const int h2 = D >> 1;
    const float c = cos_t[(size_t)pos[m] * h2 + j], s = sin_t[(size_t)pos[m] * h2 + j];
    __global float *x = qkv + (size_t)m * ld + h * D;
    const float x1 = x[j], x2 = x[j + h2];
    x[j] = x1 * c - x2 * s;
    x[j + h2] = x2 * c + x1 * s;
}
