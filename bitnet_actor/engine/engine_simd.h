/* Inner loops of the engine's compiled ops (bitnet_actor/engine/_ops.pyx).
 *
 * Every function computes one output row (or one (row, head) pair) with a fixed summation order that does
 * not depend on how many rows are in the batch, so a sequence's results are the same alone and batched.
 * Float reductions use `omp simd reduction` (the compiler may reassociate inside the 16 lanes; the order is
 * still fixed for a given binary).  The dense products have AVX2/FMA paths (per-function target attributes,
 * chosen at run time) and portable fallbacks.
 */
#ifndef BITNET_ENGINE_SIMD_H
#define BITNET_ENGINE_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define BE_X86 1
#else
#define BE_X86 0
#endif

/* ---------------------------------------------------------------------------------------------- CPU */

static int be_has_simd(void) {
#if BE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

#define BE_AVX2 __attribute__((target("avx2,fma,f16c")))
#define BE_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")))

/* Whether the AVX-512 VNNI int8 product (be_q8_vnni) runs. */
static int be_has_vnni512(void) {
#if BE_X86 && defined(__GNUC__)
    __builtin_cpu_init();
    return be_has_simd() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

/* Whether the AVX2 paths of the row functions run (asked once; the answer never changes). */
static int be_simd_rows(void) {
    static int flag = -1;
    if (flag < 0) flag = be_has_simd();
    return flag;
}

/* ---------------------------------------------------------------------------------------------- rows */

static void be_rmsnorm_row(const float *x, const float *w, float *y, int64_t K, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t k = 0; k < K; k++) ss += x[k] * x[k];
    float inv = 1.0f / sqrtf(ss / (float)K + eps);
#pragma omp simd
    for (int64_t k = 0; k < K; k++) y[k] = w[k] * (x[k] * inv);
}

static void be_rope_row(float *x, int64_t H, int64_t D, const float *cos_, const float *sin_) {
    int64_t half = D / 2;
    for (int64_t h = 0; h < H; h++) {
        float *a = x + h * D;
        float *b = a + half;
#pragma omp simd
        for (int64_t j = 0; j < half; j++) {
            float x1 = a[j], x2 = b[j];
            a[j] = x1 * cos_[j] - x2 * sin_[j];
            b[j] = x2 * cos_[j] + x1 * sin_[j];
        }
    }
}

/* exp(x) for x in [-87, 88] (clamped there: exp(-87) ~ 1.6e-38 is below anything a softmax sum or a SiLU
 * denominator notices, exp(88) ~ 1.7e38 is still finite): Cody-Waite reduction x = n ln2 + r and Cephes'
 * degree-6 polynomial for exp(r), about 1 ulp from expf.  be_exp8 is the same on 8 lanes (AVX2); be_expf the
 * scalar form for tails and CPUs without AVX2. */
static inline float be_expf(float x) {
    x = fmaxf(-87.0f, fminf(88.0f, x));
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    return ldexpf(p, (int)n);
}

#if BE_X86
BE_AVX2 static inline __m256 be_exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-87.0f), _mm256_min_ps(_mm256_set1_ps(88.0f), x));
    const __m256 n = _mm256_floor_ps(
        _mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p, r), r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* SiLU gated unit on 8 lanes at a time; returns how many elements it did (a multiple of 8). */
BE_AVX2 static int64_t be_silu_avx2(const float *g, const float *u, float *out, int64_t F) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int64_t f = 0;
    for (; f + 8 <= F; f += 8) {
        const __m256 gv = _mm256_loadu_ps(g + f);
        const __m256 den = _mm256_add_ps(one, be_exp8(_mm256_sub_ps(zero, gv)));
        _mm256_storeu_ps(out + f, _mm256_mul_ps(_mm256_div_ps(gv, den), _mm256_loadu_ps(u + f)));
    }
    return f;
}

/* sc[j] = exp(sc[j] - mx) for j < t, 8 lanes at a time; returns how many it did and adds them to *sum. */
BE_AVX2 static int64_t be_softmax_exp_avx2(float *sc, int64_t t, float mx, float *sum) {
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= t; j += 8) {
        const __m256 e = be_exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + j), m));
        _mm256_storeu_ps(sc + j, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    *sum += ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    return j;
}
#endif

static void be_glu_row(const float *gu, float *out, int64_t F, int relu2) {
    const float *g = gu;
    const float *u = gu + F;
    if (relu2) {
#pragma omp simd
        for (int64_t f = 0; f < F; f++) {
            float r = g[f] > 0.0f ? g[f] : 0.0f;
            out[f] = (r * r) * u[f];
        }
    } else {
        int64_t f = 0;
#if BE_X86
        if (be_simd_rows()) f = be_silu_avx2(g, u, out, F);
#endif
        for (; f < F; f++) out[f] = (g[f] / (1.0f + be_expf(-g[f]))) * u[f];
    }
}

/* One query head of one row: attends to cache positions [0, t).  k, v: (t, D) rows of the head's KV group
 * (stride `cap` rows apart for different groups is handled by the caller).  sc: scratch of t floats.
 * Positions go four at a time: the four dot products share the loads of q, and the weighted sum of values
 * updates out once per four positions (the summation order is fixed by t and D alone).
 * The cache holds float32, or float16 (half the bytes a step reads; be_attend_f16). */
#define BE_ATTEND_NAME be_attend
#define BE_KV_T float
#include "engine_attend.inc"
#undef BE_ATTEND_NAME
#undef BE_KV_T
#if defined(__FLT16_MAX__)
#define BE_HAS_F16_KV 1
#define BE_ATTEND_NAME be_attend_f16_portable
#define BE_KV_T _Float16
#include "engine_attend.inc"
#undef BE_ATTEND_NAME
#undef BE_KV_T
#else
#define BE_HAS_F16_KV 0
#endif

/* ---------------------------------------------------------------------------------------------- dense */
/* y[m, n] = sum_k x[m, k] * W[n, k] for rows n in [n0, n1), every m < M; W kinds: 0 f32, 1 f16, 2 bf16.
 * For q8 (kind 3): x is int8 (with per-row scale xs[m]) and W int8 with per-row scale ws[n];
 * y = float(sum xq * wq) * xs[m] * ws[n]. */

#define BE_MB 4

static inline float be_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void be_dense_portable(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                              int64_t n1, float *y, int64_t N) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * K;
            float s = 0.0f;
            if (kind == 0) {
                const float *w = (const float *)W + n * K;
#pragma omp simd reduction(+ : s)
                for (int64_t k = 0; k < K; k++) s += xr[k] * w[k];
            } else if (kind == 2) {
                const uint16_t *w = (const uint16_t *)W + n * K;
#pragma omp simd reduction(+ : s)
                for (int64_t k = 0; k < K; k++) s += xr[k] * be_bf16(w[k]);
            } else {
#if defined(__FLT16_MAX__)
                const _Float16 *w = (const _Float16 *)W + n * K;
#pragma omp simd reduction(+ : s)
                for (int64_t k = 0; k < K; k++) s += xr[k] * (float)w[k];
#endif
            }
            y[m * N + n] = s;
        }
    }
}

static void be_q8_portable(const int8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *W,
                           const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = W + n * K;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * K;
            int32_t s = 0;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < K; k++) s += (int32_t)xr[k] * (int32_t)w[k];
            y[m * N + n] = (float)s * xs[m] * ws[n];
        }
    }
}

/* q6 (kind "q6" of DenseMatrix, a Q6_K-like output layer): each row is Kp / 64 groups of 52 bytes for 64
 * weights w = ws[n] * d * (u - 32): lo[32] (weight j: low nibble of lo[j]; weight j + 32: its high nibble),
 * hi[16] (weight j + 16 i: bits 2i, 2i + 1 of hi[j]), d[4] (the 0..127 scale of weights 16 i .. 16 i + 15),
 * u = lo | hi << 4 in 1..63.  y = float(sum_k d * (u - 32) * xq[k]) * xs[m] * ws[n], the sum exact in int64
 * (every path gives the same bits).  The SIMD paths read xu = xq + 128 as unsigned bytes and take off
 * off[n] = 128 * sum_k d * (u - 32), computed when the matrix was quantized. */
#define BE_Q6_GROUP 52

static inline int be_q6_code(const uint8_t *g, int k) {
    const int lo = k < 32 ? g[k] & 15 : g[k - 32] >> 4;
    const int hi = (g[32 + (k & 15)] >> (2 * (k >> 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

static void be_q6_portable(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const uint8_t *W,
                           const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    const int64_t G = Kp / 64;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * Kp;
            int64_t acc = 0;
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *grp = W + (n * G + g) * BE_Q6_GROUP;
                for (int j = 0; j < 4; j++) {
                    int32_t s = 0;
                    for (int t = 0; t < 16; t++) s += be_q6_code(grp, 16 * j + t) * (int32_t)xr[g * 64 + 16 * j + t];
                    acc += (int64_t)grp[48 + j] * s;
                }
            }
            y[m * N + n] = (float)acc * xs[m] * ws[n];
        }
    }
}

#if BE_X86 && defined(__GNUC__)

/* 8 weights of row n at column k as float32 (kind 0 f32, 1 f16, 2 bf16); k + 8 <= K. */
BE_AVX2 static inline __m256 be_load_w8(const void *W, int kind, int64_t off) {
    if (kind == 0) return _mm256_loadu_ps((const float *)W + off);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)W + off));
    if (kind == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

BE_AVX2 static inline float be_hsum8(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    return _mm_cvtss_f32(lo);
}

static inline float be_w_scalar(const void *W, int kind, int64_t off) {
    if (kind == 0) return ((const float *)W)[off];
    if (kind == 2) return be_bf16(((const uint16_t *)W)[off]);
#if defined(__FLT16_MAX__)
    return (float)((const _Float16 *)W)[off];
#else
    return 0.0f;
#endif
}

/* Four accumulators per activation row over 32-column steps, then an 8-column step, then a scalar tail;
 * the order is the same for every kind and every batch size. */
BE_AVX2 static void be_dense_simd(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                                  int64_t n1, float *y, int64_t N) {
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t m0 = 0; m0 < M; m0 += 2) {
            int64_t mb = M - m0 < 2 ? M - m0 : 2;
            __m256 a[2][4];
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 4; j++) a[i][j] = _mm256_setzero_ps();
            int64_t k = 0;
            for (; k + 32 <= K; k += 32) {
                for (int j = 0; j < 4; j++) {
                    __m256 w = be_load_w8(W, kind, n * K + k + 8 * j);
                    for (int64_t i = 0; i < mb; i++)
                        a[i][j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (m0 + i) * K + k + 8 * j), w, a[i][j]);
                }
            }
            for (; k + 8 <= K; k += 8) {
                __m256 w = be_load_w8(W, kind, n * K + k);
                for (int64_t i = 0; i < mb; i++)
                    a[i][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + (m0 + i) * K + k), w, a[i][0]);
            }
            for (int64_t i = 0; i < mb; i++) {
                __m256 t = _mm256_add_ps(_mm256_add_ps(a[i][0], a[i][1]), _mm256_add_ps(a[i][2], a[i][3]));
                float s = be_hsum8(t);
                for (int64_t kk = k; kk < K; kk++) s += x[(m0 + i) * K + kk] * be_w_scalar(W, kind, n * K + kk);
                y[(m0 + i) * N + n] = s;
            }
        }
    }
}

/* q8: xa = |xq| (uint8), xsgn = xq (int8, for the sign), both (M, Kp) zero-padded, Kp % 64 == 0;
 * W (N, Kp) int8 zero-padded.  sum xq * w = sum |xq| * (w * sign(xq)) with maddubs pairs <= 2 * 127 * 127. */
BE_AVX2 static void be_q8_simd(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const int8_t *W,
                               const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = W + n * Kp;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * Kp;
            __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
            for (int64_t k = 0; k < Kp; k += 64) {
                __m256i x0 = _mm256_loadu_si256((const __m256i *)(xr + k));
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(xr + k + 32));
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k + 32));
                __m256i p0 = _mm256_maddubs_epi16(_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(w0, x0));
                __m256i p1 = _mm256_maddubs_epi16(_mm256_sign_epi8(x1, x1), _mm256_sign_epi8(w1, x1));
                a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(p0, ones));
                a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(p1, ones));
            }
            __m256i t = _mm256_add_epi32(a0, a1);
            __m128i l = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            l = _mm_add_epi32(l, _mm_shuffle_epi32(l, 0x4E));
            l = _mm_add_epi32(l, _mm_shuffle_epi32(l, 0xB1));
            y[m * N + n] = (float)_mm_cvtsi128_si32(l) * xs[m] * ws[n];
        }
    }
}
/* 16 weights of row n at column k as float32 (kind 0 f32, 1 f16, 2 bf16), lanes outside mask zero. */
BE_AVX512 static inline __m512 be_load_w16(const void *W, int kind, int64_t off, __mmask16 mask) {
    if (kind == 0) return _mm512_maskz_loadu_ps(mask, (const float *)W + off);
    const __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)W + off);
    if (kind == 1) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Float products on AVX-512: two weight rows per activation load, two accumulators per row over 32-column
 * steps, then masked 16-column steps; the rows are prefetched ahead.  A row's summation order depends on K
 * only (not on M or on its neighbour), so a sequence's logits are the same alone and in a batch. */
#define BE_DENSE_PF 4096
BE_AVX512 static void be_dense_avx512(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                                      int64_t n1, float *y, int64_t N) {
    const int64_t esz = kind == 0 ? 4 : 2;
    for (int64_t n = n0; n < n1; n += 2) {
        const int two = n + 1 < n1;
        const int64_t r0 = n * K, r1 = two ? r0 + K : r0;
        for (int64_t b = 0; b < 2 * K * esz; b += 64)
            _mm_prefetch((const char *)W + r0 * esz + BE_DENSE_PF + b, _MM_HINT_T0);
        for (int64_t m = 0; m < M; m++) {
            const float *xr = x + m * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0;
            int64_t k = 0;
            for (; k + 32 <= K; k += 32) {
                const __m512 x0 = _mm512_loadu_ps(xr + k), x1 = _mm512_loadu_ps(xr + k + 16);
                a0 = _mm512_fmadd_ps(x0, be_load_w16(W, kind, r0 + k, 0xffff), a0);
                a1 = _mm512_fmadd_ps(x1, be_load_w16(W, kind, r0 + k + 16, 0xffff), a1);
                b0 = _mm512_fmadd_ps(x0, be_load_w16(W, kind, r1 + k, 0xffff), b0);
                b1 = _mm512_fmadd_ps(x1, be_load_w16(W, kind, r1 + k + 16, 0xffff), b1);
            }
            for (; k < K; k += 16) {
                const __mmask16 mask = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1u);
                const __m512 x0 = _mm512_maskz_loadu_ps(mask, xr + k);
                a0 = _mm512_fmadd_ps(x0, be_load_w16(W, kind, r0 + k, mask), a0);
                b0 = _mm512_fmadd_ps(x0, be_load_w16(W, kind, r1 + k, mask), b0);
            }
            y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
            if (two) y[m * N + n + 1] = _mm512_reduce_add_ps(_mm512_add_ps(b0, b1));
        }
    }
}

/* q8 on AVX-512 VNNI: vpdpbusd takes unsigned bytes, so each weight byte is offset by 128 (w ^ 0x80 = w + 128
 * as uint8) and 128 * xsum[m] (xsum: each activation row's sum) taken off again: the same exact int32 dot, two
 * instructions per 64 weights.  Two weight rows share each activation load; the rows are prefetched BE_Q8_PF
 * bytes ahead (a decode step streams the whole output layer, the largest matrix of the model, once). */
#define BE_Q8_PF 4096
BE_AVX512 static void be_q8_vnni(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t Kp,
                                 const int8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t n = n0; n < n1; n += 2) {
        const int two = n + 1 < n1;
        const int8_t *w0 = W + n * Kp, *w1 = two ? w0 + Kp : w0;
        for (int64_t k = 0; k < 2 * Kp; k += 64) _mm_prefetch((const char *)w0 + BE_Q8_PF + k, _MM_HINT_T0);
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * Kp;
            __m512i a0 = _mm512_setzero_si512(), a1 = a0;
            for (int64_t k = 0; k < Kp; k += 64) {
                const __m512i x = _mm512_loadu_si512(xr + k);
                a0 = _mm512_dpbusd_epi32(a0, _mm512_xor_si512(_mm512_loadu_si512(w0 + k), flip), x);
                a1 = _mm512_dpbusd_epi32(a1, _mm512_xor_si512(_mm512_loadu_si512(w1 + k), flip), x);
            }
            const int32_t off = 128 * xsum[m];
            y[m * N + n] = (float)(_mm512_reduce_add_epi32(a0) - off) * xs[m] * ws[n];
            if (two) y[m * N + n + 1] = (float)(_mm512_reduce_add_epi32(a1) - off) * xs[m] * ws[n + 1];
        }
    }
}
/* q6 with AVX2: a 64-weight group as two 32-byte halves.  Codes: the nibbles of lo, and hi's 2-bit fields
 * shifted into place per 128-bit lane (a 32-bit shift by 2i leaves bits 2i, 2i + 1 of each byte at bits 0, 1:
 * the shift never reaches 8).  maddubs(xu, code - 32) pairs stay within int16 (2 * 255 * 31), madd by the
 * sub-block scales (as 16-bit words, one per 128-bit lane) gives int32 lanes; 8 lanes x 8.0M per group hold
 * K <= 16384 (DenseMatrix.quantize_q6 refuses more).  Lanes are summed in int64. */
BE_AVX2 static inline int64_t be_hsum8_i64(__m256i v) {
    const __m256i w = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                       _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

BE_AVX2 static void be_q6_simd(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                               const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    const int64_t G = Kp / 64;
    const __m256i m15 = _mm256_set1_epi8(15), m3 = _mm256_set1_epi8(3), c32 = _mm256_set1_epi8(32);
    const __m256i sh01 = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2), sh23 = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
    const __m256i d01 = _mm256_setr_epi8(0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1, 0, -1,
                                         1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m256i d23 = _mm256_add_epi8(d01, _mm256_setr_epi8(2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0,
                                                                2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0, 2, 0));
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = W + n * G * BE_Q6_GROUP;
        for (int64_t k = 0; k < G * BE_Q6_GROUP; k += 64) _mm_prefetch((const char *)row + BE_Q8_PF + k, _MM_HINT_T0);
        for (int64_t m = 0; m < M; m++) {
            const uint8_t *xr = xu + m * Kp;
            __m256i acc = _mm256_setzero_si256();
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *grp = row + g * BE_Q6_GROUP;
                const __m256i L = _mm256_loadu_si256((const __m256i *)grp);
                const __m256i H = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(grp + 32)));
                int32_t d4;
                memcpy(&d4, grp + 48, 4);
                const __m256i D = _mm256_set1_epi32(d4);
                const __m256i h0 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srlv_epi32(H, sh01), m3), 4);
                const __m256i h1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srlv_epi32(H, sh23), m3), 4);
                const __m256i q0 = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(L, m15), h0), c32);
                const __m256i q1 =
                    _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L, 4), m15), h1), c32);
                const __m256i p0 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(xr + g * 64)), q0);
                const __m256i p1 = _mm256_maddubs_epi16(_mm256_loadu_si256((const __m256i *)(xr + g * 64 + 32)), q1);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p0, _mm256_shuffle_epi8(D, d01)));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p1, _mm256_shuffle_epi8(D, d23)));
            }
            y[m * N + n] = (float)(be_hsum8_i64(acc) - off[n]) * xs[m] * ws[n];
        }
    }
}

/* q6 with AVX-512 BW: a whole 64-weight group per vector (16 int32 lanes x 4.0M per group). */
BE_AVX512 static void be_q6_avx512(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                                   const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    const int64_t G = Kp / 64;
    const __m512i m15 = _mm512_set1_epi8(15), m3 = _mm512_set1_epi8(3), c32 = _mm512_set1_epi8(32);
    const __m512i sh = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    /* word w of 128-bit lane i takes d[i] (byte i of the broadcast scales), its high byte zero */
    const __m512i dsel = _mm512_set_epi64(0xff03ff03ff03ff03LL, 0xff03ff03ff03ff03LL, 0xff02ff02ff02ff02LL,
                                          0xff02ff02ff02ff02LL, 0xff01ff01ff01ff01LL, 0xff01ff01ff01ff01LL,
                                          0xff00ff00ff00ff00LL, 0xff00ff00ff00ff00LL);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = W + n * G * BE_Q6_GROUP;
        for (int64_t k = 0; k < G * BE_Q6_GROUP; k += 64) _mm_prefetch((const char *)row + BE_Q8_PF + k, _MM_HINT_T0);
        for (int64_t m = 0; m < M; m++) {
            const uint8_t *xr = xu + m * Kp;
            __m512i acc = _mm512_setzero_si512();
            for (int64_t g = 0; g < G; g++) {
                const uint8_t *grp = row + g * BE_Q6_GROUP;
                const __m256i L = _mm256_loadu_si256((const __m256i *)grp);
                const __m512i lo = _mm512_and_si512(
                    _mm512_inserti64x4(_mm512_castsi256_si512(L), _mm256_srli_epi16(L, 4), 1), m15);
                const __m512i H = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(grp + 32)));
                const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi32(H, sh), m3), 4);
                int32_t d4;
                memcpy(&d4, grp + 48, 4);
                const __m512i q = _mm512_sub_epi8(_mm512_or_si512(lo, hi), c32);
                const __m512i p = _mm512_maddubs_epi16(_mm512_loadu_si512(xr + g * 64), q);
                acc = _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_shuffle_epi8(_mm512_set1_epi32(d4), dsel)));
            }
            const __m512i w = _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(acc)),
                                               _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(acc, 1)));
            y[m * N + n] = (float)(_mm512_reduce_add_epi64(w) - off[n]) * xs[m] * ws[n];
        }
    }
}
#else
static void be_dense_avx512(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                            int64_t n1, float *y, int64_t N) {
    be_dense_portable(x, M, K, W, kind, n0, n1, y, N);
}
static void be_q8_vnni(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t Kp,
                       const int8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    (void)xsum;
    be_q8_portable(xq, xs, M, Kp, W, ws, n0, n1, y, N);
}
static void be_dense_simd(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                          int64_t n1, float *y, int64_t N) {
    be_dense_portable(x, M, K, W, kind, n0, n1, y, N);
}
static void be_q8_simd(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const int8_t *W,
                       const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    be_q8_portable(xq, xs, M, Kp, W, ws, n0, n1, y, N);
}
/* never called: DENSE_PATHS offers only "portable" without x86 SIMD */
static void be_q6_simd(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                       const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    (void)xu, (void)xs, (void)off, (void)M, (void)Kp, (void)W, (void)ws, (void)n0, (void)n1, (void)y, (void)N;
}
static void be_q6_avx512(const uint8_t *xu, const float *xs, const int64_t *off, int64_t M, int64_t Kp,
                         const uint8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N) {
    (void)xu, (void)xs, (void)off, (void)M, (void)Kp, (void)W, (void)ws, (void)n0, (void)n1, (void)y, (void)N;
}
#endif

/* ---------------------------------------------------------------------------------------------- float16 KV */
/* be_store_f16 stores n floats as float16 (round to nearest even, as numpy's astype); be_attend_f16 is
 * be_attend over a float16 cache.  With AVX2 + F16C (and D % 8 == 0, every real head size) both convert 8
 * values per instruction; otherwise the compiler's _Float16 conversions run element by element. */
#if BE_HAS_F16_KV
#if BE_X86 && defined(__GNUC__)
BE_AVX2 static void be_store_f16_avx2(_Float16 *d, const float *src, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) d[i] = (_Float16)src[i];
}

BE_AVX2 static inline __m256 be_h8(const _Float16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* As be_attend (four positions per pass), 8 lanes at a time over D (D % 8 == 0). */
BE_AVX2 static void be_attend_f16_avx2(const float *q, const _Float16 *k, const _Float16 *v, int64_t t, int64_t D,
                                       float scale, float *sc, float *out) {
    int64_t i = 0;
    for (; i + 4 <= t; i += 4) {
        const _Float16 *k0 = k + i * D, *k1 = k0 + D, *k2 = k1 + D, *k3 = k2 + D;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 qd = _mm256_loadu_ps(q + d);
            s0 = _mm256_fmadd_ps(qd, be_h8(k0 + d), s0);
            s1 = _mm256_fmadd_ps(qd, be_h8(k1 + d), s1);
            s2 = _mm256_fmadd_ps(qd, be_h8(k2 + d), s2);
            s3 = _mm256_fmadd_ps(qd, be_h8(k3 + d), s3);
        }
        sc[i] = be_hsum8(s0) * scale;
        sc[i + 1] = be_hsum8(s1) * scale;
        sc[i + 2] = be_hsum8(s2) * scale;
        sc[i + 3] = be_hsum8(s3) * scale;
    }
    for (; i < t; i++) {
        __m256 s0 = _mm256_setzero_ps();
        for (int64_t d = 0; d < D; d += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), be_h8(k + i * D + d), s0);
        sc[i] = be_hsum8(s0) * scale;
    }
    float mx = -INFINITY, sum = 0.0f;
    for (i = 0; i < t; i++)
        if (sc[i] > mx) mx = sc[i];
    int64_t j = be_softmax_exp_avx2(sc, t, mx, &sum);
    for (; j < t; j++) {
        const float e = be_expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int64_t d = 0; d < D; d++) out[d] = 0.0f;
    for (i = 0; i + 4 <= t; i += 4) {
        const _Float16 *v0 = v + i * D, *v1 = v0 + D, *v2 = v1 + D, *v3 = v2 + D;
        const __m256 p0 = _mm256_set1_ps(sc[i] * inv), p1 = _mm256_set1_ps(sc[i + 1] * inv);
        const __m256 p2 = _mm256_set1_ps(sc[i + 2] * inv), p3 = _mm256_set1_ps(sc[i + 3] * inv);
        for (int64_t d = 0; d < D; d += 8) {
            const __m256 a = _mm256_fmadd_ps(p1, be_h8(v1 + d), _mm256_mul_ps(p0, be_h8(v0 + d)));
            const __m256 b = _mm256_fmadd_ps(p3, be_h8(v3 + d), _mm256_mul_ps(p2, be_h8(v2 + d)));
            _mm256_storeu_ps(out + d, _mm256_add_ps(_mm256_loadu_ps(out + d), _mm256_add_ps(a, b)));
        }
    }
    for (; i < t; i++) {
        const __m256 p = _mm256_set1_ps(sc[i] * inv);
        for (int64_t d = 0; d < D; d += 8)
            _mm256_storeu_ps(out + d, _mm256_fmadd_ps(p, be_h8(v + i * D + d), _mm256_loadu_ps(out + d)));
    }
}
#endif

static void be_store_f16(void *dst, const float *src, int64_t n) {
    _Float16 *d = (_Float16 *)dst;
#if BE_X86 && defined(__GNUC__)
    if (be_simd_rows()) {
        be_store_f16_avx2(d, src, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = (_Float16)src[i];
}

static void be_attend_f16(const float *q, const void *k, const void *v, int64_t t, int64_t D, float scale,
                          float *sc, float *out) {
#if BE_X86 && defined(__GNUC__)
    if (be_simd_rows() && D % 8 == 0) {
        be_attend_f16_avx2(q, (const _Float16 *)k, (const _Float16 *)v, t, D, scale, sc, out);
        return;
    }
#endif
    be_attend_f16_portable(q, (const _Float16 *)k, (const _Float16 *)v, t, D, scale, sc, out);
}
#else
static void be_store_f16(void *dst, const float *src, int64_t n) { (void)dst, (void)src, (void)n; }
static void be_attend_f16(const float *q, const void *k, const void *v, int64_t t, int64_t D, float scale,
                          float *sc, float *out) {
    (void)q, (void)k, (void)v, (void)t, (void)D, (void)scale, (void)sc, (void)out;
}
#endif

#endif
