// Y[m, ycol + n] += b[n] for the M x N block written by a linear layer with a bias.
__kernel void bias_add_f32(__global float *Y, const int ldy, const int ycol, const int N,
                           __global const float *b) {
    const int n = get_global_id(0), m = get_global_id(1);
    if (n < N) Y[(size_t)m * ldy + ycol + n] += b[n];
}
