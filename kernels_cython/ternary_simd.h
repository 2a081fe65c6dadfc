/*
 * SIMD inner kernels for the ternary matmul (included by _ternary.pyx through `cdef extern`).
 *
 * Layout of the packed weights (see kernels_cython/reference.py): row n has rb = Kp/4 bytes; byte j of a row
 * belongs to chunk c = j / 32, position m = j % 32, and its bits [2l, 2l+1] hold the code (w + 1, in 0..2) of
 * weight k = 128c + 32l + m.  So ((v >> 2l) & 3) of a 32-byte load v are the codes of 32 consecutive weights,
 * multiplied against 32 consecutive int8 activations.  With codes c = w + 1 (unsigned) the products use
 * u8 x s8 instructions (vpmaddubsw on AVX2, vpdpbusd on AVX-512 VNNI) and dot(w, x) = dot(c, x) - sum(x).
 *
 * Every function is compiled for its own target via attributes, so one binary carries all paths; the caller
 * picks one at run time (bk_cpu_isa_mask).  Functions work on a range of output rows and never allocate
 * except bk_alloc; OpenMP threading is done by the Cython caller.
 */
#ifndef BITNET_TERNARY_SIMD_H
#define BITNET_TERNARY_SIMD_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define BK_ISA_AVX2 1
#define BK_ISA_AVX512 2
#define BK_ISA_AMX 4

/* GEMM blocking: BK_MR activation rows per micro-tile, BK_NB weight rows unpacked per thread block, K in
 * chunks of BK_KC codes so that one chunk of the unpacked block (BK_NB x BK_KC bytes) and one activation tile
 * (BK_MR x BK_KC bytes) stay in L1 while the tile is reused across the block's rows.  Both are stored
 * chunk-major and contiguous ("tile layout"):
 *   activations  Xt[kc][mt][r][BK_KC]  (kc < nkc = ceil(Kp / BK_KC), mt < Mp / BK_MR, r < BK_MR)
 *   codes        buf[kc][j][BK_KC]     (j < BK_NB)
 * so each micro-kernel call streams contiguous memory. */
#define BK_MR 4
#define BK_NB 16
#define BK_KC 1024
#define BK_NKC(Kp) (((Kp) + BK_KC - 1) / BK_KC)
/* bytes of the tile-layout activations and of one thread's unpacked block */
#define BK_XT_BYTES(Mp, Kp) ((Mp) * BK_NKC(Kp) * BK_KC)
#define BK_BUF_BYTES(Kp) (BK_NKC(Kp) * BK_NB * BK_KC)

#define BK_T_AVX2 __attribute__((target("avx2")))
#define BK_T_AVX512 __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni")))
#define BK_T_AMX __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))

/* Output epilogue: either int32 acc, or float32 acc / s[m] * (rscale ? rscale[n] : scale). */
typedef struct {
    int32_t *outi;       /* (M, N) or NULL */
    float *outf;         /* (M, N) or NULL */
    const float *s;      /* (M,) activation scales (outf only) */
    const float *rscale; /* (N,) per-row weight scales, or NULL */
    float scale;         /* weight scale when rscale is NULL */
    int64_t M;
    int64_t N;
} bk_out_t;

static inline void bk_store(const bk_out_t *o, int64_t m, int64_t n, int32_t acc) {
    if (o->outf) {
        float sc = o->rscale ? o->rscale[n] : o->scale;
        o->outf[m * o->N + n] = ((float)acc / o->s[m]) * sc;
    } else {
        o->outi[m * o->N + n] = acc;
    }
}

/* AMX-INT8 (Intel Sapphire Rapids and later): CPUID.(7,0):EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), and Linux
 * must grant this process the 8 KB of tile state (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, kernel
 * 5.16+); without the grant the first tile instruction would kill the process with SIGILL. */
static int bk_amx_usable(void) {
#if defined(__linux__) && defined(SYS_arch_prctl)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!((d >> 24) & 1u) || !((d >> 25) & 1u)) return 0;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
    return 0;
#endif
}

static int bk_cpu_isa_mask(void) {
    int mask = 0;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) mask |= BK_ISA_AVX2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
        mask |= BK_ISA_AVX512;
    if ((mask & BK_ISA_AVX512) && bk_amx_usable()) mask |= BK_ISA_AMX;
    return mask;
}

/* 64-byte aligned allocation (free with free()); NULL on failure. */
static void *bk_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64)) return NULL;
    return p;
}

/* ------------------------------------------------------------------------------------------------------- */
/* activation quantization (torch rounding order; see reference.quantize_activations)                      */

typedef uint32_t __attribute__((may_alias)) bk_u32a;

/* Scalar tail shared by both paths: q = clamp(rint(x * s)), returns the sum of q. */
static inline int32_t bk_quant_tail(const float *x, int64_t i0, int64_t K, float s, int8_t *q) {
    int32_t sum = 0;
    for (int64_t i = i0; i < K; i++) {
        float v = rintf(x[i] * s);
        v = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
        q[i] = (int8_t)(int32_t)v;
        sum += (int32_t)v;
    }
    return sum;
}

static inline float bk_scale_from_amax_bits(uint32_t bits) {
    float amax;
    memcpy(&amax, &bits, sizeof amax);
    if (amax < 1e-5f) amax = 1e-5f;
    float recip = 1.0f / amax;
    return recip * 127.0f;
}

/* Portable: quantize one row x (K,) into q (Kp,), zero-padded. Returns 1 if x holds NaN/inf. */
static int bk_quant_row_portable(const float *x, int64_t K, int64_t Kp, int8_t *q, float *s_out, int32_t *sum_out) {
    const bk_u32a *xb = (const bk_u32a *)x;
    uint32_t amax_bits = 0;
    for (int64_t i = 0; i < K; i++) {
        uint32_t b = xb[i] & 0x7fffffffu;
        amax_bits = b > amax_bits ? b : amax_bits;
    }
    if (amax_bits >= 0x7f800000u) return 1;
    float s = bk_scale_from_amax_bits(amax_bits);
    *s_out = s;
    *sum_out = bk_quant_tail(x, 0, K, s, q);
    if (Kp > K) memset(q + K, 0, (size_t)(Kp - K));
    return 0;
}

BK_T_AVX2 static int bk_quant_row_avx2(const float *x, int64_t K, int64_t Kp, int8_t *q, float *s_out,
                                       int32_t *sum_out) {
    const __m256i absmask = _mm256_set1_epi32(0x7fffffff);
    __m256i vmax0 = _mm256_setzero_si256(), vmax1 = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 16 <= K; i += 16) {
        vmax0 = _mm256_max_epu32(vmax0, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), absmask));
        vmax1 = _mm256_max_epu32(vmax1, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i + 8)), absmask));
    }
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_max_epu32(vmax0, vmax1));
    uint32_t amax_bits = 0;
    for (int j = 0; j < 8; j++) amax_bits = lanes[j] > amax_bits ? lanes[j] : amax_bits;
    const bk_u32a *xb = (const bk_u32a *)x;
    for (; i < K; i++) {
        uint32_t b = xb[i] & 0x7fffffffu;
        amax_bits = b > amax_bits ? b : amax_bits;
    }
    if (amax_bits >= 0x7f800000u) return 1;
    const float s = bk_scale_from_amax_bits(amax_bits);
    *s_out = s;

    const __m256 vs = _mm256_set1_ps(s), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i vsum = _mm256_setzero_si256();
    i = 0;
    for (; i + 32 <= K; i += 32) {
        __m256i k[4];
        for (int j = 0; j < 4; j++) {
            __m256 f = _mm256_mul_ps(_mm256_loadu_ps(x + i + 8 * j), vs);
            f = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
            k[j] = _mm256_cvtps_epi32(f);
        }
        vsum = _mm256_add_epi32(vsum, _mm256_add_epi32(_mm256_add_epi32(k[0], k[1]), _mm256_add_epi32(k[2], k[3])));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(k[0], k[1]), _mm256_packs_epi32(k[2], k[3]));
        _mm256_storeu_si256((__m256i *)(q + i), _mm256_permutevar8x32_epi32(p, perm));
    }
    int32_t sl[8];
    _mm256_storeu_si256((__m256i *)sl, vsum);
    int32_t sum = sl[0] + sl[1] + sl[2] + sl[3] + sl[4] + sl[5] + sl[6] + sl[7];
    sum += bk_quant_tail(x, i, K, s, q);
    if (Kp > K) memset(q + K, 0, (size_t)(Kp - K));
    *sum_out = sum;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------- */
/* AVX2: vpmaddubsw into int16 accumulators, widened to int32 before they can overflow                      */

BK_T_AVX2 static inline int32_t bk_hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* One 32-byte chunk V of packed codes (128 weights) against the 128 activations X0..X3, with one shift:
 * t = V >> 4 (16-bit lanes; the bits pulled in from the neighbouring byte are masked away), then
 * V & 3 -> codes of weights 0..31, V & 12 -> 4 * codes of weights 32..63, t & 3 -> weights 64..95 and
 * t & 12 -> 4 * codes of weights 96..127.  A collects the plain products, B the products scaled by 4
 * (B's int32 sums are multiples of 4 and shifted right by 2 at the end):
 * per chunk |A| <= 2 * (2*2*128) = 1024 and |B| <= 2 * (2*8*128) = 4096 in every int16 lane.  Summed over 8
 * chunks B stays within [-32768, 32512], so int16 wrap-around never changes a final value. */
#define BK_CHUNK_AB(V, X0, X1, X2, X3, A, B)                                                                  \
    do {                                                                                                      \
        const __m256i t_ = _mm256_srli_epi16((V), 4);                                                         \
        (A) = _mm256_add_epi16((A), _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256((V), m3), (X0)),   \
                                                     _mm256_maddubs_epi16(_mm256_and_si256(t_, m3), (X2))));  \
        (B) = _mm256_add_epi16((B), _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256((V), m12), (X1)),  \
                                                     _mm256_maddubs_epi16(_mm256_and_si256(t_, m12), (X3)))); \
    } while (0)

#define BK_GEMV_FLUSH 8

/* GEMV software prefetch distance: the loops consume 64 bytes of codes per iteration (two rows x 32 bytes),
 * too few instructions per cache line for out-of-order execution alone to keep enough misses in flight, so
 * they prefetch the line BK_PF_BYTES ahead of their position in the rows they stream. */
#ifndef BK_PF_BYTES
#define BK_PF_BYTES 4096
#endif

/* GEMV, one activation row x (Kp,) with xsum = sum(x): output rows [n0, n1). */
BK_T_AVX2 static void bk_gemv_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *x,
                                   int32_t xsum, const bk_out_t *o) {
    const int64_t nch = rb / 32;
    const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
    const __m256i ones = _mm256_set1_epi16(1);
    int64_t n = n0;
    const char *pf = (const char *)(W + n0 * rb) + BK_PF_BYTES;
    for (; n + 2 <= n1; n += 2) {
        const uint8_t *w0 = W + n * rb, *w1 = w0 + rb;
        __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
        __m256i bcc0 = _mm256_setzero_si256(), bcc1 = _mm256_setzero_si256();
        for (int64_t c0 = 0; c0 < nch; c0 += BK_GEMV_FLUSH) {
            const int64_t c1 = c0 + BK_GEMV_FLUSH < nch ? c0 + BK_GEMV_FLUSH : nch;
            __m256i a0 = _mm256_setzero_si256(), b0 = _mm256_setzero_si256();
            __m256i a1 = _mm256_setzero_si256(), b1 = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                _mm_prefetch(pf, _MM_HINT_T0);
                pf += 64;
                const int8_t *xc = x + c * 128;
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)xc);
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xc + 32));
                const __m256i x2 = _mm256_loadu_si256((const __m256i *)(xc + 64));
                const __m256i x3 = _mm256_loadu_si256((const __m256i *)(xc + 96));
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + c * 32));
                const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w1 + c * 32));
                BK_CHUNK_AB(v0, x0, x1, x2, x3, a0, b0);
                BK_CHUNK_AB(v1, x0, x1, x2, x3, a1, b1);
            }
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, ones));
            bcc0 = _mm256_add_epi32(bcc0, _mm256_madd_epi16(b0, ones));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(a1, ones));
            bcc1 = _mm256_add_epi32(bcc1, _mm256_madd_epi16(b1, ones));
        }
        bk_store(o, 0, n, bk_hsum_avx2(_mm256_add_epi32(acc0, _mm256_srai_epi32(bcc0, 2))) - xsum);
        bk_store(o, 0, n + 1, bk_hsum_avx2(_mm256_add_epi32(acc1, _mm256_srai_epi32(bcc1, 2))) - xsum);
    }
    for (; n < n1; n++) {
        const uint8_t *w0 = W + n * rb;
        __m256i acc0 = _mm256_setzero_si256(), bcc0 = _mm256_setzero_si256();
        for (int64_t c0 = 0; c0 < nch; c0 += BK_GEMV_FLUSH) {
            const int64_t c1 = c0 + BK_GEMV_FLUSH < nch ? c0 + BK_GEMV_FLUSH : nch;
            __m256i a0 = _mm256_setzero_si256(), b0 = _mm256_setzero_si256();
            for (int64_t c = c0; c < c1; c++) {
                const int8_t *xc = x + c * 128;
                const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + c * 32));
                BK_CHUNK_AB(v0, _mm256_loadu_si256((const __m256i *)xc), _mm256_loadu_si256((const __m256i *)(xc + 32)),
                            _mm256_loadu_si256((const __m256i *)(xc + 64)),
                            _mm256_loadu_si256((const __m256i *)(xc + 96)), a0, b0);
            }
            acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(a0, ones));
            bcc0 = _mm256_add_epi32(bcc0, _mm256_madd_epi16(b0, ones));
        }
        bk_store(o, 0, n, bk_hsum_avx2(_mm256_add_epi32(acc0, _mm256_srai_epi32(bcc0, 2))) - xsum);
    }
}

/* Small-batch GEMV (batched decode, 2 <= M <= 4): streams the packed rows once, like the GEMV, and unpacks each
 * chunk once for R activation rows of X (row-major (Mp, Kp), zero rows beyond M).  DOT4 is the per-chunk
 * accumulation (int16 A/B with a flush every BK_GEMV_FLUSH chunks on AVX2, int32 on VNNI). */
#define BK_SMALL_BODY(R, INIT, DOT4, FLUSH, FINAL)                                                              \
    const int64_t nch = rb / 32;                                                                                \
    const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12), ones = _mm256_set1_epi16(1);            \
    (void)ones;                                                                                                 \
    const char *pf = (const char *)(W + n0 * rb) + BK_PF_BYTES;                                                 \
    for (int64_t n = n0; n < n1; n++) {                                                                         \
        const uint8_t *w0 = W + n * rb;                                                                         \
        __m256i acc[R], bcc[R];                                                                                 \
        for (int r = 0; r < R; r++) acc[r] = bcc[r] = _mm256_setzero_si256();                                   \
        for (int64_t c0 = 0; c0 < nch; c0 += BK_GEMV_FLUSH) {                                                   \
            const int64_t c1 = c0 + BK_GEMV_FLUSH < nch ? c0 + BK_GEMV_FLUSH : nch;                             \
            __m256i a[R], b[R];                                                                                 \
            INIT;                                                                                               \
            for (int64_t c = c0; c < c1; c++) {                                                                 \
                _mm_prefetch(pf, _MM_HINT_T0);                                                                  \
                pf += 32;                                                                                       \
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w0 + c * 32));                           \
                const __m256i t = _mm256_srli_epi16(v, 4);                                                      \
                const __m256i u0 = _mm256_and_si256(v, m3), u1 = _mm256_and_si256(v, m12);                      \
                const __m256i u2 = _mm256_and_si256(t, m3), u3 = _mm256_and_si256(t, m12);                      \
                _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                           \
                    const int8_t *xc = X + r * Kp + c * 128;                                                    \
                    DOT4;                                                                                       \
                }                                                                                               \
            }                                                                                                   \
            FLUSH;                                                                                              \
        }                                                                                                       \
        for (int r = 0; r < R && r < o->M; r++) bk_store(o, r, n, FINAL - xsum[r]);                             \
    }

#define BK_LDX(OFF) _mm256_loadu_si256((const __m256i *)(xc + (OFF)))
/* AVX2: int16 A (plain) / B (4x scaled) accumulators, see BK_CHUNK_AB */
#define BK_SMALL_AVX2_INIT                                                                                      \
    for (int r = 0; r < BK_R; r++) a[r] = b[r] = _mm256_setzero_si256()
#define BK_SMALL_AVX2_DOT4                                                                                      \
    a[r] = _mm256_add_epi16(a[r], _mm256_add_epi16(_mm256_maddubs_epi16(u0, BK_LDX(0)),                         \
                                                   _mm256_maddubs_epi16(u2, BK_LDX(64))));                      \
    b[r] = _mm256_add_epi16(b[r], _mm256_add_epi16(_mm256_maddubs_epi16(u1, BK_LDX(32)),                        \
                                                   _mm256_maddubs_epi16(u3, BK_LDX(96))))
#define BK_SMALL_AVX2_FLUSH                                                                                     \
    for (int r = 0; r < BK_R; r++) {                                                                               \
        acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(a[r], ones));                                       \
        bcc[r] = _mm256_add_epi32(bcc[r], _mm256_madd_epi16(b[r], ones));                                       \
    }
#define BK_SMALL_FINAL bk_hsum_avx2(_mm256_add_epi32(acc[r], _mm256_srai_epi32(bcc[r], 2)))
/* VNNI: DOT straight into the int32 accumulators (a, b unused) */
#define BK_SMALL_VNNI_DOT4(DOT)                                                                                 \
    acc[r] = DOT(DOT(acc[r], u0, BK_LDX(0)), u2, BK_LDX(64));                                                   \
    bcc[r] = DOT(DOT(bcc[r], u1, BK_LDX(32)), u3, BK_LDX(96))

#define BK_SMALL_SIG(NAME) \
    static void NAME(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp, \
                     const int32_t *xsum, const bk_out_t *o)

#define BK_R 2
BK_T_AVX2 BK_SMALL_SIG(bk_gemv2_avx2) {
    BK_SMALL_BODY(BK_R, BK_SMALL_AVX2_INIT, BK_SMALL_AVX2_DOT4, BK_SMALL_AVX2_FLUSH, BK_SMALL_FINAL)
}
#undef BK_R
#define BK_R 4
BK_T_AVX2 BK_SMALL_SIG(bk_gemv4_avx2) {
    BK_SMALL_BODY(BK_R, BK_SMALL_AVX2_INIT, BK_SMALL_AVX2_DOT4, BK_SMALL_AVX2_FLUSH, BK_SMALL_FINAL)
}
#undef BK_R

/* The 128 code bytes (0..2) of one 32-byte chunk of packed codes, in weight order. */
BK_T_AVX2 static inline void bk_unpack_chunk(const uint8_t *src, uint8_t *dst) {
    const __m256i mask = _mm256_set1_epi8(3), v = _mm256_loadu_si256((const __m256i *)src);
    _mm256_storeu_si256((__m256i *)dst, _mm256_and_si256(v, mask));
    _mm256_storeu_si256((__m256i *)(dst + 32), _mm256_and_si256(_mm256_srli_epi16(v, 2), mask));
    _mm256_storeu_si256((__m256i *)(dst + 64), _mm256_and_si256(_mm256_srli_epi16(v, 4), mask));
    _mm256_storeu_si256((__m256i *)(dst + 96), _mm256_and_si256(_mm256_srli_epi16(v, 6), mask));
}

/* Unpack rows [n0, n0 + nrows) into buf (tile layout, see BK_KC) as one code byte (0..2) per weight; rows
 * nrows..nbuf-1 are zeroed. */
BK_T_AVX2 static void bk_unpack_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t nrows, int64_t nbuf,
                                     uint8_t *buf) {
    const int64_t kp = rb * 4, nch = rb / 32;
    for (int64_t r = 0; r < nrows; r++) {
        const uint8_t *wr = W + (n0 + r) * rb;
        for (int64_t c = 0; c < nch; c++) {
            const int64_t k = c * 128;
            bk_unpack_chunk(wr + c * 32, buf + (k / BK_KC) * (BK_NB * BK_KC) + r * BK_KC + k % BK_KC);
        }
    }
    for (int64_t r = nrows; r < nbuf; r++)
        for (int64_t kc = 0; kc < BK_NKC(kp); kc++) memset(buf + kc * (BK_NB * BK_KC) + r * BK_KC, 0, BK_KC);
}

/* Copy row-major activations X (Mp, Kp) into the tile layout Xt (see BK_KC). */
static void bk_pack_x(const int8_t *X, int64_t Mp, int64_t Kp, int8_t *Xt) {
    const int64_t nkc = BK_NKC(Kp);
    for (int64_t kc = 0; kc < nkc; kc++) {
        const int64_t k0 = kc * BK_KC, len = Kp - k0 < BK_KC ? Kp - k0 : BK_KC;
        for (int64_t m = 0; m < Mp; m++) memcpy(Xt + (kc * Mp + m) * BK_KC, X + m * Kp + k0, (size_t)len);
    }
}

/* Bytes of accumulator scratch bk_gemm_* needs for Mp activation rows: (Mp / BK_MR) * (BK_NB / 2) tiles of 8
 * vectors of 32 bytes. */
#define BK_ACC_BYTES(Mp) ((Mp) * BK_NB * 32)


/* Epilogue of one micro-tile: c[2i + j] holds the 8 int32 partial sums of activation row m0 + i times output
 * row n + j.  A hadd tree reduces all eight at once to [r0n, r0n1, r1n, r1n1, r2n, r2n1, r3n, r3n1]; the row sums
 * (xsum, Mp entries) come off as int32, and for float output the rescale (acc / s[m]) * scale runs on the
 * vector (IEEE division, then multiply: the same bits as the scalar bk_store).  Writes rows m < M, column n,
 * and column n + 1 when ncol is 2. */
BK_T_AVX2 static inline void bk_tile_store_avx2(const __m256i *c, int64_t m0, int64_t n, int64_t ncol,
                                               const int32_t *xsum, const bk_out_t *o) {
    const int64_t rows = o->M - m0 < BK_MR ? o->M - m0 : BK_MR;
    if (rows <= 0) return;
    const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(c[0], c[1]), _mm256_hadd_epi32(c[2], c[3]));
    const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(c[4], c[5]), _mm256_hadd_epi32(c[6], c[7]));
    const __m256i sum = _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20),
                                         _mm256_permute2x128_si256(g0, g1, 0x31));
    const __m256i pairs = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m128i xs4 = _mm_loadu_si128((const __m128i *)(xsum + m0));
    const __m256i r = _mm256_sub_epi32(sum, _mm256_permutevar8x32_epi32(_mm256_castsi128_si256(xs4), pairs));
    if (o->outf) {
        float sv[BK_MR] = {1.0f, 1.0f, 1.0f, 1.0f};
        for (int64_t i = 0; i < rows; i++) sv[i] = o->s[m0 + i];
        const float w0 = o->rscale ? o->rscale[n] : o->scale;
        const float w1 = o->rscale && ncol > 1 ? o->rscale[n + 1] : w0;
        const __m256 d = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sv)), pairs);
        const __m256 w = _mm256_setr_ps(w0, w1, w0, w1, w0, w1, w0, w1);
        float out[8];
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_div_ps(_mm256_cvtepi32_ps(r), d), w));
        for (int64_t i = 0; i < rows; i++) {
            float *dst = o->outf + (m0 + i) * o->N + n;
            dst[0] = out[2 * i];
            if (ncol > 1) dst[1] = out[2 * i + 1];
        }
    } else {
        int32_t out[8];
        _mm256_storeu_si256((__m256i *)out, r);
        for (int64_t i = 0; i < rows; i++) {
            int32_t *dst = o->outi + (m0 + i) * o->N + n;
            dst[0] = out[2 * i];
            if (ncol > 1) dst[1] = out[2 * i + 1];
        }
    }
}

/* Write the tiles' results: tile (mt, jp) holds rows 4mt..4mt+3 x columns n0 + 2jp, n0 + 2jp + 1. */
BK_T_AVX2 static void bk_gemm_store(const __m256i *acc, int64_t ntile, int64_t npair, int64_t n0, int64_t nvalid,
                                    const int32_t *xsum, const bk_out_t *o) {
    for (int64_t mt = 0; mt < ntile; mt++) {
        if (mt * BK_MR >= o->M) break;
        for (int64_t jp = 0; jp < npair; jp++)
            bk_tile_store_avx2(acc + (mt * npair + jp) * 8, mt * BK_MR, n0 + 2 * jp, 2 * jp + 1 < nvalid ? 2 : 1,
                               xsum, o);
    }
}

/* Micro-kernel: 4 activation rows x0..x3 times 2 rows of codes b0, b1 over nbytes (a multiple of 32, at
 * most 2048 so the int16 sums stay in range), added as int32 to c[0..7] (c[2i + j]: x_i times b_j).
 * Written in assembly because gcc 12 inserts a register copy per accumulator into the intrinsics version
 * (twice the instructions, front-end bound); the loop is 6 loads, 8 vpmaddubsw and 8 vpaddw per 32 bytes. */
BK_T_AVX2 static inline void bk_mk4x2_avx2(const uint8_t *b0, const uint8_t *b1, const int8_t *x0, const int8_t *x1,
                                          const int8_t *x2, const int8_t *x3, int64_t nbytes, __m256i *c) {
    __m256i a00 = _mm256_setzero_si256(), a01 = _mm256_setzero_si256();
    __m256i a10 = _mm256_setzero_si256(), a11 = _mm256_setzero_si256();
    __m256i a20 = _mm256_setzero_si256(), a21 = _mm256_setzero_si256();
    __m256i a30 = _mm256_setzero_si256(), a31 = _mm256_setzero_si256();
    __m256i w0, w1, v, t0, t1;
    int64_t i = 0;
    __asm__ volatile(
        "1:\n\t"
        "vmovdqu (%[b0],%[i]), %[w0]\n\t"
        "vmovdqu (%[b1],%[i]), %[w1]\n\t"
        "vmovdqu (%[x0],%[i]), %[v]\n\t"
        "vpmaddubsw %[v], %[w0], %[t0]\n\t"
        "vpmaddubsw %[v], %[w1], %[t1]\n\t"
        "vpaddw %[t0], %[a00], %[a00]\n\t"
        "vpaddw %[t1], %[a01], %[a01]\n\t"
        "vmovdqu (%[x1],%[i]), %[v]\n\t"
        "vpmaddubsw %[v], %[w0], %[t0]\n\t"
        "vpmaddubsw %[v], %[w1], %[t1]\n\t"
        "vpaddw %[t0], %[a10], %[a10]\n\t"
        "vpaddw %[t1], %[a11], %[a11]\n\t"
        "vmovdqu (%[x2],%[i]), %[v]\n\t"
        "vpmaddubsw %[v], %[w0], %[t0]\n\t"
        "vpmaddubsw %[v], %[w1], %[t1]\n\t"
        "vpaddw %[t0], %[a20], %[a20]\n\t"
        "vpaddw %[t1], %[a21], %[a21]\n\t"
        "vmovdqu (%[x3],%[i]), %[v]\n\t"
        "vpmaddubsw %[v], %[w0], %[t0]\n\t"
        "vpmaddubsw %[v], %[w1], %[t1]\n\t"
        "vpaddw %[t0], %[a30], %[a30]\n\t"
        "vpaddw %[t1], %[a31], %[a31]\n\t"
        "add $32, %[i]\n\t"
        "cmp %[n], %[i]\n\t"
        "jb 1b\n\t"
        : [a00] "+x"(a00), [a01] "+x"(a01), [a10] "+x"(a10), [a11] "+x"(a11), [a20] "+x"(a20), [a21] "+x"(a21),
          [a30] "+x"(a30), [a31] "+x"(a31), [w0] "=&x"(w0), [w1] "=&x"(w1), [v] "=&x"(v), [t0] "=&x"(t0),
          [t1] "=&x"(t1), [i] "+r"(i)
        : [b0] "r"(b0), [b1] "r"(b1), [x0] "r"(x0), [x1] "r"(x1), [x2] "r"(x2), [x3] "r"(x3), [n] "r"(nbytes)
        : "cc", "memory");
    const __m256i ones = _mm256_set1_epi16(1);
    c[0] = _mm256_add_epi32(c[0], _mm256_madd_epi16(a00, ones));
    c[1] = _mm256_add_epi32(c[1], _mm256_madd_epi16(a01, ones));
    c[2] = _mm256_add_epi32(c[2], _mm256_madd_epi16(a10, ones));
    c[3] = _mm256_add_epi32(c[3], _mm256_madd_epi16(a11, ones));
    c[4] = _mm256_add_epi32(c[4], _mm256_madd_epi16(a20, ones));
    c[5] = _mm256_add_epi32(c[5], _mm256_madd_epi16(a21, ones));
    c[6] = _mm256_add_epi32(c[6], _mm256_madd_epi16(a30, ones));
    c[7] = _mm256_add_epi32(c[7], _mm256_madd_epi16(a31, ones));
}

/* GEMM on an unpacked block: buf (tile layout) holds the codes of output rows n0.. (nvalid of them real, nbuf
 * even), Xt (tile layout) the int8 activations, Mp a multiple of BK_MR (rows >= M zero), xsum (Mp,), accv
 * scratch of BK_ACC_BYTES(Mp) bytes (32-byte aligned).  Micro-tile: 4 activation rows x 2 weight rows.  One K
 * chunk is at most 32 steps of 32 bytes, so the int16 accumulators stay within 32 * 512 in magnitude. */
BK_T_AVX2 static void bk_gemm_avx2(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid, const int8_t *Xt,
                                   int64_t Mp, int64_t Kp, const int32_t *xsum, const bk_out_t *o, void *accv) {
    const int64_t ntile = Mp / BK_MR, npair = nbuf / 2;
    __m256i *acc = (__m256i *)accv;
    memset(acc, 0, (size_t)(ntile * npair * 8) * sizeof(__m256i));
    for (int64_t kc = 0; kc < BK_NKC(Kp); kc++) {
        const int64_t k0 = kc * BK_KC, nbytes = Kp - k0 < BK_KC ? Kp - k0 : BK_KC;
        const uint8_t *bk = buf + kc * (BK_NB * BK_KC);
        for (int64_t mt = 0; mt < ntile; mt++) {
            const int8_t *x0 = Xt + (kc * Mp + mt * BK_MR) * BK_KC;
            for (int64_t jp = 0; jp < npair; jp++) {
                const uint8_t *b0 = bk + 2 * jp * BK_KC;
                bk_mk4x2_avx2(b0, b0 + BK_KC, x0, x0 + BK_KC, x0 + 2 * BK_KC, x0 + 3 * BK_KC, nbytes,
                              acc + (mt * npair + jp) * 8);
            }
        }
    }
    bk_gemm_store(acc, ntile, npair, n0, nvalid, xsum, o);
}

/* ------------------------------------------------------------------------------------------------------- */
/* VNNI: vpdpbusd (u8 x s8 -> s32) on 256-bit vectors (AVX-512 VL; on Zen 4 as fast per byte as 512-bit).     */
/* The same bodies are instantiated a second time for AVX2 with vpdpbusd emulated exactly (no int16          */
/* saturation is possible, every pair sum is at most 512 in magnitude), so their control flow is tested on   */
/* machines without AVX-512.                                                                                */

/* 4 DOTs per chunk into plain accumulators (p) and 4x-scaled ones (q, shifted right by 2 at the end), see
 * BK_CHUNK_AB. */
#define BK_VNNI_CHUNK(V, X0, X1, X2, X3, P, Q, DOT)                                                             \
    do {                                                                                                        \
        const __m256i t_ = _mm256_srli_epi16((V), 4);                                                           \
        (P) = DOT((P), _mm256_and_si256((V), m3), (X0));                                                        \
        (Q) = DOT((Q), _mm256_and_si256((V), m12), (X1));                                                       \
        (P) = DOT((P), _mm256_and_si256(t_, m3), (X2));                                                         \
        (Q) = DOT((Q), _mm256_and_si256(t_, m12), (X3));                                                        \
    } while (0)

#define BK_VNNI_GEMV_BODY(DOT)                                                                                  \
    const int64_t nch = rb / 32;                                                                                \
    const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);                                         \
    int64_t n = n0;                                                                                             \
    const char *pf = (const char *)(W + n0 * rb) + BK_PF_BYTES;                                                 \
    for (; n + 2 <= n1; n += 2) {                                                                               \
        const uint8_t *w0 = W + n * rb, *w1 = w0 + rb;                                                          \
        __m256i p0 = _mm256_setzero_si256(), p1 = _mm256_setzero_si256();                                       \
        __m256i q0 = _mm256_setzero_si256(), q1 = _mm256_setzero_si256();                                       \
        for (int64_t c = 0; c < nch; c++) {                                                                     \
            _mm_prefetch(pf, _MM_HINT_T0);                                                                      \
            pf += 64;                                                                                           \
            const int8_t *xc = x + c * 128;                                                                     \
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)xc);                                         \
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xc + 32));                                  \
            const __m256i x2 = _mm256_loadu_si256((const __m256i *)(xc + 64));                                  \
            const __m256i x3 = _mm256_loadu_si256((const __m256i *)(xc + 96));                                  \
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + c * 32));                              \
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w1 + c * 32));                              \
            BK_VNNI_CHUNK(v0, x0, x1, x2, x3, p0, q0, DOT);                                                     \
            BK_VNNI_CHUNK(v1, x0, x1, x2, x3, p1, q1, DOT);                                                     \
        }                                                                                                       \
        bk_store(o, 0, n, bk_hsum_avx2(_mm256_add_epi32(p0, _mm256_srai_epi32(q0, 2))) - xsum);                 \
        bk_store(o, 0, n + 1, bk_hsum_avx2(_mm256_add_epi32(p1, _mm256_srai_epi32(q1, 2))) - xsum);             \
    }                                                                                                           \
    for (; n < n1; n++) {                                                                                       \
        const uint8_t *w0 = W + n * rb;                                                                         \
        __m256i p0 = _mm256_setzero_si256(), q0 = _mm256_setzero_si256();                                       \
        for (int64_t c = 0; c < nch; c++) {                                                                     \
            const int8_t *xc = x + c * 128;                                                                     \
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w0 + c * 32));                              \
            BK_VNNI_CHUNK(v0, _mm256_loadu_si256((const __m256i *)xc), _mm256_loadu_si256((const __m256i *)(xc + 32)), \
                          _mm256_loadu_si256((const __m256i *)(xc + 64)),                                       \
                          _mm256_loadu_si256((const __m256i *)(xc + 96)), p0, q0, DOT);                         \
        }                                                                                                       \
        bk_store(o, 0, n, bk_hsum_avx2(_mm256_add_epi32(p0, _mm256_srai_epi32(q0, 2))) - xsum);                 \
    }

#define BK_VNNI_GEMM_BODY(DOT)                                                                                  \
    const int64_t ntile = Mp / BK_MR, npair = nbuf / 2;                                                         \
    __m256i *acc = (__m256i *)accv;                                                                             \
    memset(acc, 0, (size_t)(ntile * npair * 8) * sizeof(__m256i));                                              \
    for (int64_t kc = 0; kc < BK_NKC(Kp); kc++) {                                                               \
        const int64_t nst = (Kp - kc * BK_KC < BK_KC ? Kp - kc * BK_KC : BK_KC) / 32;                           \
        for (int64_t mt = 0; mt < ntile; mt++) {                                                                \
            const int8_t *x0 = X + (kc * Mp + mt * BK_MR) * BK_KC;                                              \
            const int8_t *x1 = x0 + BK_KC, *x2 = x1 + BK_KC, *x3 = x2 + BK_KC;                                  \
            for (int64_t jp = 0; jp < npair; jp++) {                                                            \
                const uint8_t *b0 = buf + kc * (BK_NB * BK_KC) + 2 * jp * BK_KC, *b1 = b0 + BK_KC;              \
                __m256i *c = acc + (mt * npair + jp) * 8;                                                       \
                __m256i a00 = c[0], a01 = c[1], a10 = c[2], a11 = c[3];                                         \
                __m256i a20 = c[4], a21 = c[5], a30 = c[6], a31 = c[7];                                         \
                for (int64_t s = 0; s < nst; s++) {                                                             \
                    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + s * 32));                      \
                    const __m256i w1 = _mm256_loadu_si256((const __m256i *)(b1 + s * 32));                      \
                    __m256i v = _mm256_loadu_si256((const __m256i *)(x0 + s * 32));                             \
                    a00 = DOT(a00, w0, v);                                                                      \
                    a01 = DOT(a01, w1, v);                                                                      \
                    v = _mm256_loadu_si256((const __m256i *)(x1 + s * 32));                                     \
                    a10 = DOT(a10, w0, v);                                                                      \
                    a11 = DOT(a11, w1, v);                                                                      \
                    v = _mm256_loadu_si256((const __m256i *)(x2 + s * 32));                                     \
                    a20 = DOT(a20, w0, v);                                                                      \
                    a21 = DOT(a21, w1, v);                                                                      \
                    v = _mm256_loadu_si256((const __m256i *)(x3 + s * 32));                                     \
                    a30 = DOT(a30, w0, v);                                                                      \
                    a31 = DOT(a31, w1, v);                                                                      \
                }                                                                                               \
                c[0] = a00;                                                                                     \
                c[1] = a01;                                                                                     \
                c[2] = a10;                                                                                     \
                c[3] = a11;                                                                                     \
                c[4] = a20;                                                                                     \
                c[5] = a21;                                                                                     \
                c[6] = a30;                                                                                     \
                c[7] = a31;                                                                                     \
            }                                                                                                   \
        }                                                                                                       \
    }                                                                                                           \
    bk_gemm_store(acc, ntile, npair, n0, nvalid, xsum, o);

#define BK_DOT_VNNI(ACC, U, S) _mm256_dpbusd_epi32((ACC), (U), (S))
#define BK_DOT_EMU(ACC, U, S) \
    _mm256_add_epi32((ACC), _mm256_madd_epi16(_mm256_maddubs_epi16((U), (S)), _mm256_set1_epi16(1)))

BK_T_AVX2 static void bk_gemv_vnni_emu(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *x,
                                       int32_t xsum, const bk_out_t *o) {
    BK_VNNI_GEMV_BODY(BK_DOT_EMU)
}

BK_T_AVX512 static void bk_gemm_vnni(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid, const int8_t *X,
                                     int64_t Mp, int64_t Kp, const int32_t *xsum, const bk_out_t *o, void *accv) {
    BK_VNNI_GEMM_BODY(BK_DOT_VNNI)
}

BK_T_AVX2 static void bk_gemm_vnni_emu(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid,
                                       const int8_t *X, int64_t Mp, int64_t Kp, const int32_t *xsum,
                                       const bk_out_t *o, void *accv) {
    BK_VNNI_GEMM_BODY(BK_DOT_EMU)
}

#define BK_SMALL_DOT4_VNNI BK_SMALL_VNNI_DOT4(BK_DOT_VNNI)
#define BK_SMALL_DOT4_EMU BK_SMALL_VNNI_DOT4(BK_DOT_EMU)
#define BK_R 2
BK_T_AVX512 BK_SMALL_SIG(bk_gemv2_vnni) {
    BK_SMALL_BODY(BK_R, (void)a; (void)b, BK_SMALL_DOT4_VNNI, , BK_SMALL_FINAL)
}
BK_T_AVX2 BK_SMALL_SIG(bk_gemv2_vnni_emu) {
    BK_SMALL_BODY(BK_R, (void)a; (void)b, BK_SMALL_DOT4_EMU, , BK_SMALL_FINAL)
}
#undef BK_R
#define BK_R 4
BK_T_AVX512 BK_SMALL_SIG(bk_gemv4_vnni) {
    BK_SMALL_BODY(BK_R, (void)a; (void)b, BK_SMALL_DOT4_VNNI, , BK_SMALL_FINAL)
}
BK_T_AVX2 BK_SMALL_SIG(bk_gemv4_vnni_emu) {
    BK_SMALL_BODY(BK_R, (void)a; (void)b, BK_SMALL_DOT4_EMU, , BK_SMALL_FINAL)
}
#undef BK_R

/* 512-bit GEMV (M = 1).  The activations are first interleaved (bk_interleave_x): in each 256-byte group the
 * 32-byte pieces [A0 A1 A2 A3 B0 B1 B2 B3] (A: weights of packed chunk 2p, B: of chunk 2p + 1, piece l = shift
 * l) become [A0 B0 A1 B1 A2 B2 A3 B3], so one 64-byte load of packed codes (chunks 2p and 2p + 1) lines up with
 * one 64-byte load of activations per shift.  Four accumulators per row (one per shift; the 4x-scaled ones
 * for shifts 1 and 3 as in BK_CHUNK_AB) keep every vpdpbusd off the previous one's latency: with two per
 * accumulator and iteration the loop ran at half the ports' rate. */
static void bk_interleave_x(const int8_t *x, int64_t Kp, int8_t *xi) {
    for (int64_t g = 0; g < Kp; g += 256)
        for (int l = 0; l < 4; l++) {
            memcpy(xi + g + 64 * l, x + g + 32 * l, 32);
            memcpy(xi + g + 64 * l + 32, x + g + 128 + 32 * l, 32);
        }
}

#define BK_V512_ROW(V, T, A, B, C, D)                                               \
    do {                                                                            \
        (T) = _mm512_srli_epi16((V), 4);                                            \
        (A) = _mm512_dpbusd_epi32((A), _mm512_and_si512((V), m3), x0);              \
        (B) = _mm512_dpbusd_epi32((B), _mm512_and_si512((V), m12), x1);             \
        (C) = _mm512_dpbusd_epi32((C), _mm512_and_si512((T), m3), x2);              \
        (D) = _mm512_dpbusd_epi32((D), _mm512_and_si512((T), m12), x3);             \
    } while (0)
#define BK_V512_SUM(A, B, C, D) \
    _mm512_reduce_add_epi32(_mm512_add_epi32(_mm512_add_epi32((A), (C)), _mm512_srai_epi32(_mm512_add_epi32((B), (D)), 2)))

BK_T_AVX512 static void bk_gemv_vnni512(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *xi,
                                        int32_t xsum, const bk_out_t *o) {
    const int64_t npair = rb / 64;
    const __m512i m3 = _mm512_set1_epi8(3), m12 = _mm512_set1_epi8(12);
    const char *pf = (const char *)(W + n0 * rb) + BK_PF_BYTES;
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
        const uint8_t *w0 = W + n * rb, *w1 = w0 + rb;
        __m512i a0 = _mm512_setzero_si512(), b0 = a0, c0 = a0, d0 = a0, a1 = a0, b1 = a0, c1 = a0, d1 = a0, t0, t1;
        for (int64_t p = 0; p < npair; p++) {
            _mm_prefetch(pf, _MM_HINT_T0);
            _mm_prefetch(pf + 64, _MM_HINT_T0);
            pf += 128;
            const int8_t *xp = xi + p * 256;
            const __m512i x0 = _mm512_loadu_si512(xp), x1 = _mm512_loadu_si512(xp + 64);
            const __m512i x2 = _mm512_loadu_si512(xp + 128), x3 = _mm512_loadu_si512(xp + 192);
            const __m512i v0 = _mm512_loadu_si512(w0 + p * 64), v1 = _mm512_loadu_si512(w1 + p * 64);
            BK_V512_ROW(v0, t0, a0, b0, c0, d0);
            BK_V512_ROW(v1, t1, a1, b1, c1, d1);
        }
        bk_store(o, 0, n, BK_V512_SUM(a0, b0, c0, d0) - xsum);
        bk_store(o, 0, n + 1, BK_V512_SUM(a1, b1, c1, d1) - xsum);
    }
    for (; n < n1; n++) {
        const uint8_t *w0 = W + n * rb;
        __m512i a0 = _mm512_setzero_si512(), b0 = a0, c0 = a0, d0 = a0, t0;
        for (int64_t p = 0; p < npair; p++) {
            const int8_t *xp = xi + p * 256;
            const __m512i x0 = _mm512_loadu_si512(xp), x1 = _mm512_loadu_si512(xp + 64);
            const __m512i x2 = _mm512_loadu_si512(xp + 128), x3 = _mm512_loadu_si512(xp + 192);
            const __m512i v0 = _mm512_loadu_si512(w0 + p * 64);
            BK_V512_ROW(v0, t0, a0, b0, c0, d0);
        }
        bk_store(o, 0, n, BK_V512_SUM(a0, b0, c0, d0) - xsum);
    }
}

/* ------------------------------------------------------------------------------------------------------- */
/* AMX-INT8: tdpbusd on 16 x 64-byte tiles (u8 x s8 -> s32, 16 x 16 x 64 multiply-adds per instruction).     */
/*                                                                                                           */
/* A tiles are 16 weight rows x 64 codes (u8, 0..2) of a block of BK_AMX_NB = 32 rows unpacked row-major      */
/* (stride Kp); B tiles are 64 activations x 16 activation rows in the "VNNI" order tdpbusd reads: row r of a */
/* B tile holds, for each of the 16 activation rows j, the 4 int8 values k = 64 kg + 4 r .. + 3 (Xv, packed  */
/* once per call by bk_amx_pack_x); C tiles (int32 16 x 16) are [weight row][activation row].  Four C tiles   */
/* (2 x 2) take all but four of the eight tile registers, the usual blocking.  The int32 sums cannot          */
/* overflow below K = 2^23.                                                                                  */

#define BK_AMX_NB 32
#define BK_AMX_MT 16
/* per-thread scratch: the unpacked block, then four C tiles */
#define BK_AMX_BUF_BYTES(Kp) (BK_AMX_NB * (Kp) + 4 * 1024)
/* Xv bytes for Mp activation rows (Mp a multiple of BK_AMX_MT) */
#define BK_AMX_XV_BYTES(Mp, Kp) ((Mp) * (Kp))

typedef struct {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} bk_amx_cfg_t;

/* The tile intrinsics are asm statements without a memory clobber: fence the compiler around them. */
#define BK_COMPILER_FENCE() __asm__ __volatile__("" ::: "memory")

/* Activation rows 16 mb .. 16 mb + 15 of X (row-major (Mp, Kp) int8) into their B tiles Xv[mb][kg] (1 KB each). */
BK_T_AMX static void bk_amx_pack_x(const int8_t *X, int64_t Kp, int64_t mb, int8_t *Xv) {
    const int64_t nkg = Kp / 64;
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)Kp));
    const int8_t *x0 = X + mb * BK_AMX_MT * Kp;
    int8_t *t = Xv + mb * nkg * 1024;
    for (int64_t kg = 0; kg < nkg; kg++)
        for (int r = 0; r < 16; r++)
            _mm512_storeu_si512(t + kg * 1024 + r * 64, _mm512_i32gather_epi32(idx, x0 + kg * 64 + r * 4, 1));
}

/* Unpack weight rows [n0, n0 + nrows) into buf (BK_AMX_NB rows of Kp code bytes); rows beyond nrows are
 * zeroed (their results are computed and never stored). */
BK_T_AMX static void bk_amx_unpack(const uint8_t *W, int64_t rb, int64_t n0, int64_t nrows, uint8_t *buf) {
    const int64_t kp = rb * 4, nch = rb / 32;
    for (int64_t r = 0; r < nrows; r++)
        for (int64_t c = 0; c < nch; c++) bk_unpack_chunk(W + (n0 + r) * rb + c * 32, buf + r * kp + c * 128);
    if (nrows < BK_AMX_NB) memset(buf + nrows * kp, 0, (size_t)((BK_AMX_NB - nrows) * kp));
}

/* Epilogue of one C tile ct[i][j] (weight row n0 + i, activation row m0 + j): transposed by 16-lane gathers
 * into output rows, minus the activation sums, rescaled on the vector for float output (IEEE division, then
 * multiply: the same bits as bk_store).  Columns n0 + ncol .. and rows >= M are not written. */
BK_T_AMX static void bk_amx_tile_store(const int32_t *ct, int64_t m0, int64_t n0, int64_t ncol, const int32_t *xsum,
                                       const bk_out_t *o) {
    if (ncol <= 0 || m0 >= o->M) return;
    const __mmask16 cols = ncol >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncol) - 1u);
    const __m512i idx = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    const int64_t rows = o->M - m0 < BK_AMX_MT ? o->M - m0 : BK_AMX_MT;
    __m512 w = _mm512_set1_ps(o->scale);
    if (o->outf && o->rscale) w = _mm512_maskz_loadu_ps(cols, o->rscale + n0);
    for (int64_t j = 0; j < rows; j++) {
        const __m512i v = _mm512_sub_epi32(_mm512_i32gather_epi32(idx, ct + j, 4), _mm512_set1_epi32(xsum[m0 + j]));
        if (o->outf) {
            const __m512 f = _mm512_div_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(o->s[m0 + j]));
            _mm512_mask_storeu_ps(o->outf + (m0 + j) * o->N + n0, cols, _mm512_mul_ps(f, w));
        } else {
            _mm512_mask_storeu_epi32(o->outi + (m0 + j) * o->N + n0, cols, v);
        }
    }
}

/* GEMM of one unpacked block (buf: weight rows n0 .. n0 + nvalid - 1, see bk_amx_unpack) against all nmb B-tile
 * columns of Xv; ct is 4 KB of scratch for the C tiles.  Configures the tiles on entry and releases them on
 * exit (tile state is per thread, and a released state is not saved at context switches). */
BK_T_AMX static void bk_gemm_amx(const uint8_t *buf, int64_t n0, int64_t nvalid, const int8_t *Xv, int64_t nmb,
                                 int64_t Kp, const int32_t *xsum, const bk_out_t *o, int32_t *ct) {
    bk_amx_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    _tile_loadconfig(&cfg);
    BK_COMPILER_FENCE();
    const int64_t nkg = Kp / 64;
    const uint8_t *a0 = buf, *a1 = buf + 16 * Kp;
    for (int64_t mb = 0; mb < nmb; mb += 2) {
        /* B-tile columns mb and mb + 1 (C tiles 0/2 and 1/3); the last alone when nmb is odd */
        const int two = mb + 1 < nmb;
        const int8_t *b0 = Xv + mb * nkg * 1024, *b1 = b0 + nkg * 1024;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int64_t kg = 0; kg < nkg; kg++) {
            _tile_loadd(4, a0 + kg * 64, Kp);
            _tile_loadd(6, b0 + kg * 1024, 64);
            _tile_dpbusd(0, 4, 6);
            if (two) {
                _tile_loadd(7, b1 + kg * 1024, 64);
                _tile_dpbusd(1, 4, 7);
            }
            _tile_loadd(5, a1 + kg * 64, Kp);
            _tile_dpbusd(2, 5, 6);
            if (two) _tile_dpbusd(3, 5, 7);
        }
        _tile_stored(0, ct, 64);
        _tile_stored(1, ct + 256, 64);
        _tile_stored(2, ct + 512, 64);
        _tile_stored(3, ct + 768, 64);
        BK_COMPILER_FENCE();
        for (int j = 0; j <= two; j++) {
            bk_amx_tile_store(ct + 256 * j, (mb + j) * 16, n0, nvalid, xsum, o);
            bk_amx_tile_store(ct + 512 + 256 * j, (mb + j) * 16, n0 + 16, nvalid - 16, xsum, o);
        }
    }
    _tile_release();
}

#endif /* BITNET_TERNARY_SIMD_H */
