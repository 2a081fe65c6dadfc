// Elementwise x += y over n floats (the last layer's residual add).
__kernel void residual_add_f32(__global float *x, __global const float *y, const int n) {
    const int i = get_global_id(0);
    if (i < n) x[i] += y[i];
}
