// Causal grouped-query attention of one sequence's n new rows over its KV cache, softmax included.
// Row i (position start + i) attends to cache positions 0 .. start + i.  One work-group per (row, head):
// scores q.k * scale into `scratch` (n, H, tmax), max, exp and sum, then out = sum_t p_t v_t / sum.
// Grid: (n * wg, H).
__kernel void attention_f32(__global const float *qkv, const int ld, const int row0, const int H, const int Hkv,
                            const int D, __global const float *kc, __global const float *vc, const int layer,
                            const int cap, const int start, const float scale, __global float *out,
                            const int ldo, __global float *scratch, const int tmax, __local float *red) {
    const int i = get_group_id(0), h = get_group_id(1), lid = get_local_id(0), wg = get_local_size(0);
    const int g = h / (H / Hkv);
    const int T = start + i + 1;
    __global const float *q = qkv + (size_t)(row0 + i) * ld + h * D;
    const size_t base = ((size_t)layer * Hkv + g) * cap * D;  // size_t: a cache may pass 2^31 floats
    __global const float *K = kc + base;
    __global const float *V = vc + base;
    __global float *sc = scratch + ((size_t)i * H + h) * tmax;
    float mx = -INFINITY;
    for (int t = lid; t < T; t += wg) {
        __global const float *kt = K + (size_t)t * D;
        float a = 0.0f;
        for (int d = 0; d < D; d++) a += q[d] * kt[d];
        a *= scale;
        sc[t] = a;
        mx = fmax(mx, a);
    }
    mx = wg_max_float(mx, red);
    float sum = 0.0f;
    for (int t = lid; t < T; t += wg) {
        const float p = exp(sc[t] - mx);
        sc[t] = p;
        sum += p;
    }
    sum = wg_sum_float(sum, red);
    barrier(CLK_GLOBAL_MEM_FENCE);  // every work-item's probabilities visible to the others
    __global float *o = out + (size_t)(row0 + i) * ldo + h * D;
    for (int d = lid; d < D; d += wg) {
        float a = 0.0f;
        for (int t = 0; t < T; t++) a += sc[t] * V[(size_t)t * D + d];
        o[d] = a / sum;
    }
}
