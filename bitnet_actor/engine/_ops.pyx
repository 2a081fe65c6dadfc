# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled engine ops (RMSNorm, RoPE, attention, gated activations, dense products) with OpenMP.

Same math as the numpy versions in :mod:`bitnet_actor.engine.ops`; inner loops in ``engine_simd.h``.  Each
output row is computed by the same code whatever the batch, so results do not depend on batching.
Arguments are validated by the callers in :mod:`bitnet_actor.engine.ops` (shapes, dtypes, contiguity).
"""

from cython.parallel cimport prange
from libc.math cimport fabsf, rintf
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

cimport numpy as cnp
cimport openmp

import numpy as np

cnp.import_array()


cdef extern from "engine_simd.h" nogil:
    int be_has_simd()
    void be_rmsnorm_row(const float *x, const float *w, float *y, int64_t K, float eps)
    void be_rope_row(float *x, int64_t H, int64_t D, const float *cos_, const float *sin_)
    void be_glu_row(const float *gu, float *out, int64_t F, int relu2)
    int BE_HAS_F16_KV
    void be_store_f16(void *dst, const float *src, int64_t n)
    void be_attend_f16(const float *q, const void *k, const void *v, int64_t t, int64_t D, float scale,
                       float *sc, float *out)
    void be_attend(const float *q, const float *k, const float *v, int64_t t, int64_t D, float scale,
                   float *sc, float *out)
    void be_dense_portable(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                           int64_t n1, float *y, int64_t N)
    void be_dense_simd(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0,
                       int64_t n1, float *y, int64_t N)
    void be_q8_portable(const int8_t *xq, const float *xs, int64_t M, int64_t K, const int8_t *W,
                        const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_q8_simd(const int8_t *xq, const float *xs, int64_t M, int64_t Kp, const int8_t *W,
                    const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    void be_dense_avx512(const float *x, int64_t M, int64_t K, const void *W, int kind, int64_t n0, int64_t n1,
                         float *y, int64_t N)
    void be_q8_vnni(const int8_t *xq, const float *xs, const int32_t *xsum, int64_t M, int64_t Kp,
                    const int8_t *W, const float *ws, int64_t n0, int64_t n1, float *y, int64_t N)
    int be_has_vnni512()


cdef int _simd = be_has_simd()
# Paths of the dense products, best last; dense_matmul(..., path=) picks another (the tests run them all).
DENSE_PATHS = ("portable",) + (("avx2",) if _simd else ()) + (("avx512",) if be_has_vnni512() else ())
_PATH_CODES = {"portable": 0, "avx2": 1, "avx512": 2}
_BEST_PATH = _PATH_CODES[DENSE_PATHS[len(DENSE_PATHS) - 1]]  # (no negative indexing: wraparound is off here)
cdef int _n_threads = max(1, openmp.omp_get_num_procs())
# Rows of the output matrix per parallel task of the dense products.
DEF NB = 64


def set_num_threads(int n):
    """Set the OpenMP threads of these ops."""
    global _n_threads
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _n_threads = n


def get_num_threads():
    """The OpenMP threads of these ops."""
    return _n_threads


def has_simd():
    """Whether the AVX2/FMA paths run on this CPU."""
    return bool(_simd)


def rmsnorm(const float[:, ::1] x, const float[::1] w, float eps):
    """RMSNorm of each row of x (M, K) with weight w (K,); a new float32 (M, K)."""
    cdef int64_t M = x.shape[0], K = x.shape[1], m
    out = np.empty((M, K), dtype=np.float32)
    cdef float[:, ::1] y = out
    if M == 0:
        return out
    cdef int nt = _n_threads if M * K >= 65536 else 1
    if nt == 1:
        for m in range(M):
            be_rmsnorm_row(&x[m, 0], &w[0], &y[m, 0], K, eps)
    else:
        for m in prange(M, nogil=True, num_threads=nt, schedule="static"):
            be_rmsnorm_row(&x[m, 0], &w[0], &y[m, 0], K, eps)
    return out


def rope(float[:, :, ::1] x, const float[:, ::1] cos, const float[:, ::1] sin):
    """NeoX RoPE in place on x (M, H, D) with per-row cos/sin (M, D/2)."""
    cdef int64_t M = x.shape[0], H = x.shape[1], D = x.shape[2], m
    with nogil:
        for m in range(M):
            be_rope_row(&x[m, 0, 0], H, D, &cos[m, 0], &sin[m, 0])


def glu(const float[:, ::1] gu, bint relu2):
    """act(gate) * up of a fused (M, 2F) product; a new float32 (M, F)."""
    cdef int64_t M = gu.shape[0], F = gu.shape[1] // 2, m
    out = np.empty((M, F), dtype=np.float32)
    cdef float[:, ::1] y = out
    cdef int nt = _n_threads if M * F >= 65536 else 1
    if M == 0:
        return out
    if nt == 1:
        for m in range(M):
            be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
    else:
        for m in prange(M, nogil=True, num_threads=nt, schedule="static"):
            be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
    return out


def attention(const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v, int64_t start,
              float[:, ::1] out):
    """Causal GQA attention of n new rows q (n, H, D) over caches k, v (Hkv, cap, D); writes out (n, H*D)."""
    cdef int64_t n = q.shape[0], H = q.shape[1], D = q.shape[2], Hkv = k.shape[0]
    cdef int64_t group = H // Hkv, tmax = start + n, task, i, h, g
    cdef float scale = float(D) ** -0.5
    cdef int nt = _n_threads
    if n * H < 2:
        nt = 1
    scratch = np.empty((nt, tmax), dtype=np.float32)
    cdef float[:, ::1] sc = scratch
    cdef int tid
    if n == 0:
        return
    if nt == 1 or n * H * tmax < 512:
        for task in range(n * H):
            i = task // H
            h = task % H
            g = h // group
            be_attend(&q[i, h, 0], &k[g, 0, 0], &v[g, 0, 0], start + i + 1, D, scale, &sc[0, 0],
                      &out[i, h * D])
        return
    for task in prange(n * H, nogil=True, num_threads=nt, schedule="dynamic"):
        tid = openmp.omp_get_thread_num()
        i = task // H
        h = task % H
        g = h // group
        be_attend(&q[i, h, 0], &k[g, 0, 0], &v[g, 0, 0], start + i + 1, D, scale, &sc[tid, 0],
                  &out[i, h * D])


def dense_matmul(x, data, str kind, scales, path=None):
    """x (M, K) float32 @ W.T for W (N, K) stored as f32 / f16 / bf16 (uint16) / q8 (int8 + scales).

    ``path``: one of :data:`DENSE_PATHS` (default the last, the fastest).  For q8 every path gives the same
    bits; the float kinds differ between paths in summation order only.
    """
    cdef const float[:, ::1] xv = x
    cdef int64_t M = xv.shape[0], K = xv.shape[1], N = data.shape[0]
    out = np.empty((M, N), dtype=np.float32)
    cdef float[:, ::1] y = out
    if M == 0 or N == 0:
        return out
    cdef int nt = _n_threads
    cdef int64_t nblk = (N + NB - 1) // NB, b, n0, n1
    cdef int kd
    cdef cnp.ndarray wa = data
    cdef const void *wp = cnp.PyArray_DATA(wa)
    if path is not None and path not in DENSE_PATHS:
        raise ValueError(f"path must be one of {DENSE_PATHS}, got {path!r}")
    cdef int code = _BEST_PATH if path is None else _PATH_CODES[path]
    if kind == "q8":
        return _q8(xv, wa, scales, out, code)
    kd = {"f32": 0, "f16": 1, "bf16": 2}[kind]
    if nblk < nt:
        nt = 1
    for b in prange(nblk, nogil=True, num_threads=nt, schedule="static"):
        n0 = b * NB
        n1 = n0 + NB
        if n1 > N:
            n1 = N
        if code == 2:
            be_dense_avx512(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
        elif code == 1:
            be_dense_simd(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
        else:
            be_dense_portable(&xv[0, 0], M, K, wp, kd, n0, n1, &y[0, 0], N)
    return out


cdef object _q8(const float[:, ::1] x, cnp.ndarray wa, scales, out, int path):
    """int8 activations (per-row absmax) times int8 weights (per-row scales)."""
    cdef int64_t M = x.shape[0], K = x.shape[1], N = wa.shape[0], m, k, b, n0, n1
    cdef int64_t Kp = wa.shape[1]
    cdef float[:, ::1] y = out
    cdef const float[::1] ws = scales
    cdef const int8_t *wp = <const int8_t *>cnp.PyArray_DATA(wa)
    xs_arr = np.empty(M, dtype=np.float32)
    cdef float[::1] xs = xs_arr
    xsum_arr = np.empty(M, dtype=np.int32)
    cdef int32_t[::1] xsum = xsum_arr
    cdef int32_t acc
    xq_arr = np.zeros((M, Kp), dtype=np.int8)  # zero-padded
    cdef int8_t[:, ::1] xq = xq_arr
    cdef float amax, inv, v
    for m in range(M):
        amax = 0.0
        for k in range(K):
            if fabsf(x[m, k]) > amax:
                amax = fabsf(x[m, k])
        xs[m] = amax / 127.0 if amax > 0 else 1.0
        inv = 1.0 / xs[m]
        acc = 0
        for k in range(K):
            v = rintf(x[m, k] * inv)
            if v > 127.0:
                v = 127.0
            elif v < -127.0:
                v = -127.0
            xq[m, k] = <int8_t>v
            acc = acc + <int32_t>v
        xsum[m] = acc
    cdef int nt = _n_threads
    cdef int64_t nblk = (N + NB - 1) // NB
    if nblk < nt:
        nt = 1
    for b in prange(nblk, nogil=True, num_threads=nt, schedule="static"):
        n0 = b * NB
        n1 = n0 + NB
        if n1 > N:
            n1 = N
        if path == 2:
            be_q8_vnni(&xq[0, 0], &xs[0], &xsum[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        elif path == 1:
            be_q8_simd(&xq[0, 0], &xs[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
        else:
            be_q8_portable(&xq[0, 0], &xs[0], M, Kp, wp, &ws[0], n0, n1, &y[0, 0], N)
    return out


def add_rmsnorm(float[:, ::1] x, const float[:, ::1] y, const float[::1] w, float eps):
    """``x += y`` in place, then RMSNorm of x's rows; a new float32 (M, K)."""
    cdef int64_t M = x.shape[0], K = x.shape[1], m, k
    out = np.empty((M, K), dtype=np.float32)
    cdef float[:, ::1] o = out
    with nogil:
        for m in range(M):
            for k in range(K):
                x[m, k] = x[m, k] + y[m, k]
            be_rmsnorm_row(&x[m, 0], &w[0], &o[m, 0], K, eps)
    return out


def glu_norm(const float[:, ::1] gu, bint relu2, w, float eps):
    """act(gate) * up of a fused (M, 2F) product, then RMSNorm with w (F,) unless w is None."""
    cdef int64_t M = gu.shape[0], F = gu.shape[1] // 2, m
    out = np.empty((M, F), dtype=np.float32)
    cdef float[:, ::1] y = out
    cdef const float[::1] wv
    cdef int has_w = w is not None
    if has_w:
        wv = w
    cdef int nt = _n_threads if M * F >= 65536 else 1
    if M == 0:
        return out
    if nt == 1:
        with nogil:
            for m in range(M):
                be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
                if has_w:
                    be_rmsnorm_row(&y[m, 0], &wv[0], &y[m, 0], F, eps)
        return out
    for m in prange(M, nogil=True, num_threads=nt, schedule="static"):
        be_glu_row(&gu[m, 0], &y[m, 0], F, relu2)
        if has_w:
            be_rmsnorm_row(&y[m, 0], &wv[0], &y[m, 0], F, eps)
    return out


cdef inline void _attend(bint f16, const float *q, char *k, char *v, int64_t t, int64_t D, float scale, float *sc,
                         float *out) noexcept nogil:
    if f16:
        be_attend_f16(q, <const void *>k, <const void *>v, t, D, scale, sc, out)
    else:
        be_attend(q, <const float *>k, <const float *>v, t, D, scale, sc, out)


cdef inline void _store(bint f16, char *dst, const float *src, int64_t n) noexcept nogil:
    if f16:
        be_store_f16(dst, src, n)
    else:
        memcpy(dst, src, n * sizeof(float))


def attn_block(float[:, ::1] qkv, int nh, int nkv, int hd, const float[:, ::1] cos, const float[:, ::1] sin,
               list kcaches, list vcaches, const int64_t[::1] bounds, const int64_t[::1] starts,
               float[:, ::1] out, sub_w=None, float eps=1e-5):
    """RoPE on the q/k parts of a fused (M, (nh + 2 nkv) hd) product, cache writes, causal GQA attention.

    Sequence s owns rows [bounds[s], bounds[s+1]) at positions starts[s] + i, and the caches
    kcaches[s], vcaches[s] (nkv, cap, hd), all float32 or all float16 (stored rounded to nearest).  Writes
    out (M, nh * hd), then RMSNorm of its rows with sub_w (nh * hd,) unless sub_w is None.
    """
    cdef const float[::1] swv
    cdef int has_sub = sub_w is not None
    if has_sub:
        swv = sub_w
    cdef int64_t M = qkv.shape[0], S = len(kcaches), s, m, p, task, nt_tasks, tmax = 0
    cdef int64_t qd = nh * hd, kvd = nkv * hd, group = nh // nkv, g, h
    cdef float scale = float(hd) ** -0.5
    if M == 0:
        return
    if len(vcaches) != S or bounds.shape[0] != S + 1 or starts.shape[0] != S or bounds[S] != M:
        raise ValueError("attn_block: inconsistent sequences")
    cdef char **kp = <char **>malloc(S * sizeof(char *))
    cdef char **vp = <char **>malloc(S * sizeof(char *))
    cdef int64_t *cap = <int64_t *>malloc(S * sizeof(int64_t))
    cdef int64_t *seq_of = <int64_t *>malloc(M * sizeof(int64_t))
    cdef float *sc = NULL
    cdef cnp.ndarray kc, vc
    cdef int nt = _n_threads
    cdef int tid
    cdef bint f16 = S > 0 and isinstance(kcaches[0], np.ndarray) and kcaches[0].dtype == np.float16
    cdef int dtype = cnp.NPY_FLOAT16 if f16 else cnp.NPY_FLOAT32
    cdef int64_t esz = 2 if f16 else 4
    if f16 and not BE_HAS_F16_KV:
        raise ValueError("attn_block: this build has no float16 support (a compiler with _Float16 is needed)")
    try:
        if kp == NULL or vp == NULL or cap == NULL or seq_of == NULL:
            raise MemoryError()
        for s in range(S):
            kc = kcaches[s]
            vc = vcaches[s]
            if (cnp.PyArray_NDIM(kc) != 3 or cnp.PyArray_DIM(kc, 0) != nkv or cnp.PyArray_DIM(kc, 2) != hd
                    or not cnp.PyArray_IS_C_CONTIGUOUS(kc) or not cnp.PyArray_IS_C_CONTIGUOUS(vc)
                    or cnp.PyArray_TYPE(kc) != dtype or cnp.PyArray_TYPE(vc) != dtype
                    or cnp.PyArray_NDIM(vc) != 3 or cnp.PyArray_DIM(vc, 0) != nkv or cnp.PyArray_DIM(vc, 2) != hd
                    or cnp.PyArray_DIM(vc, 1) != cnp.PyArray_DIM(kc, 1)):
                raise ValueError("attn_block: bad cache array")
            kp[s] = <char *>cnp.PyArray_DATA(kc)
            vp[s] = <char *>cnp.PyArray_DATA(vc)
            cap[s] = cnp.PyArray_DIM(kc, 1)
            if starts[s] < 0 or bounds[s + 1] < bounds[s] or starts[s] + bounds[s + 1] - bounds[s] > cap[s]:
                raise ValueError("attn_block: sequence overflows its cache")
            if starts[s] + bounds[s + 1] - bounds[s] > tmax:
                tmax = starts[s] + bounds[s + 1] - bounds[s]
            for m in range(bounds[s], bounds[s + 1]):
                seq_of[m] = s
        nt_tasks = M * nh
        if nt_tasks < 2 or nt_tasks * tmax * hd < 65536:  # below ~10 us of work a second thread costs more
            nt = 1
        sc = <float *>malloc(nt * tmax * sizeof(float))
        if sc == NULL:
            raise MemoryError()
        with nogil:
            for m in range(M):
                s = seq_of[m]
                p = starts[s] + m - bounds[s]
                be_rope_row(&qkv[m, 0], nh, hd, &cos[m, 0], &sin[m, 0])
                be_rope_row(&qkv[m, qd], nkv, hd, &cos[m, 0], &sin[m, 0])
                for g in range(nkv):
                    _store(f16, kp[s] + (g * cap[s] + p) * hd * esz, &qkv[m, qd + g * hd], hd)
                    _store(f16, vp[s] + (g * cap[s] + p) * hd * esz, &qkv[m, qd + kvd + g * hd], hd)
            if nt == 1:
                for task in range(nt_tasks):
                    m = task // nh
                    h = task % nh
                    s = seq_of[m]
                    p = starts[s] + m - bounds[s]
                    _attend(f16, &qkv[m, h * hd], kp[s] + (h // group) * cap[s] * hd * esz,
                            vp[s] + (h // group) * cap[s] * hd * esz, p + 1, hd, scale, sc, &out[m, h * hd])
            else:
                for task in prange(nt_tasks, num_threads=nt, schedule="dynamic"):
                    tid = openmp.omp_get_thread_num()
                    m = task // nh
                    h = task % nh
                    s = seq_of[m]
                    p = starts[s] + m - bounds[s]
                    _attend(f16, &qkv[m, h * hd], kp[s] + (h // group) * cap[s] * hd * esz,
                            vp[s] + (h // group) * cap[s] * hd * esz, p + 1, hd, scale, sc + tid * tmax,
                            &out[m, h * hd])
            if has_sub:
                for m in range(M):
                    be_rmsnorm_row(&out[m, 0], &swv[0], &out[m, 0], qd, eps)
    finally:
        free(kp)
        free(vp)
        free(cap)
        free(seq_of)
        free(sc)
