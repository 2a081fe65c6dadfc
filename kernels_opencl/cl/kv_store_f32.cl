// Write the keys and values of n new rows of one sequence into its cache at positions p0 .. p0 + n - 1.
// Cache layout per sequence: (layers, Hkv, cap, D) float32; `layer` picks the layer (size_t offsets).
// Keys are heads H .. H + Hkv - 1 of the fused q/k/v row, values the Hkv heads after them.
// Grid: (D, Hkv, n).
__kernel void kv_store_f32(__global const float *qkv, const int ld, const int row0, const int H, const int D,
                           __global float *kc, __global float *vc, const int layer, const int cap, const int p0) {
    const int d = get_global_id(0), g = get_global_id(1), i = get_global_id(2);
    const int hkv = get_global_size(1);
    __global const float *row = qkv + (size_t)(row0 + i) * ld;
    const size_t dst = (((size_t)layer * hkv + g) * cap + p0 + i) * D + d;
    kc[dst] = row[(H + g) * D + d];
    vc[dst] = row[(H + hkv + g) * D + d];
}
