# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fast CPU ternary kernels: Cython + OpenMP over output rows, AVX-512 VNNI / AVX2 / portable paths.

Semantics, layout and rounding are those of :mod:`kernels_cython.reference`; every function here returns
exactly what its reference twin returns.

Paths (``isa=``; default: $BITNET_ISA if usable, else the best the CPU has):

* ``"avx512"``: AVX-512 VL + VNNI ``vpdpbusd`` on 256-bit vectors (on Zen 4 as fast per byte as 512-bit).
* ``"amx"``: AMX-INT8 ``tdpbusd`` tiles for M > 4 (Intel Sapphire Rapids and later, Linux 5.16+, which must
  grant the process its tile state); M <= 4 takes the ``"avx512"`` GEMV.
* ``"avx2"``: ``vpmaddubsw`` into int16 accumulators, widened before they can overflow.
* ``"avx512-emulated"``: the AVX-512 kernels' code with ``vpdpbusd`` emulated exactly by AVX2, so their
  control flow is tested on machines without AVX-512.
* ``"portable"``: plain Cython loops the compiler vectorizes for the build target (``-fopt-info-vec`` reports
  the unpack and dot loops vectorized).

All paths compute ``dot(codes, x) - sum(x)`` with unsigned codes ``c = w + 1``.  M <= 4 (decode, small
batched decode) streams the packed bytes once (GEMV, software-prefetched, rows split in 8 parts per thread,
handed out dynamically; each chunk is unpacked once for all M rows); M > 4 unpacks BK_NB = 16 weight rows per
thread into an L1/L2-resident block and runs a 4 x 2 register-tiled micro-kernel (assembly on AVX2) over K
chunks of 1024 (GEMM).  Activation quantization writes straight into the padded,
zero-filled buffer the kernels read, with the row sums.  The SIMD code lives in ``ternary_simd.h`` (compiled
with per-function target attributes and picked at run time, so one binary carries every path); all kernels
run ``with nogil``; the only module state is the default thread count ($BITNET_THREADS, else all cores).
"""

from cython.parallel cimport parallel, prange
from libc.math cimport rintf
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

cimport numpy as cnp
cimport openmp

import os

import numpy as np

from kernels_cython import reference as _ref
from kernels_cython.reference import TernaryMatrix

cnp.import_array()


cdef extern from "ternary_simd.h" nogil:
    ctypedef struct bk_out_t:
        int32_t *outi
        float *outf
        const float *s
        const float *rscale
        float scale
        int64_t M
        int64_t N

    int BK_ISA_AVX2
    int BK_ISA_AVX512
    int BK_ISA_AMX
    int BK_AMX_NB
    int BK_AMX_MT
    int64_t BK_AMX_BUF_BYTES(int64_t Kp)
    int BK_MR
    int BK_NB
    int64_t BK_ACC_BYTES(int64_t Mp)
    int64_t BK_XT_BYTES(int64_t Mp, int64_t Kp)
    int64_t BK_BUF_BYTES(int64_t Kp)

    int bk_cpu_isa_mask()
    void *bk_alloc(size_t n)
    void bk_store(const bk_out_t *o, int64_t m, int64_t n, int32_t acc)
    int bk_quant_row_portable(const float *x, int64_t K, int64_t Kp, int8_t *q, float *s, int32_t *xsum)
    int bk_quant_row_avx2(const float *x, int64_t K, int64_t Kp, int8_t *q, float *s, int32_t *xsum)
    void bk_gemv_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *x, int32_t xsum,
                      const bk_out_t *o)
    void bk_gemv_vnni_emu(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *x,
                          int32_t xsum, const bk_out_t *o)
    void bk_gemv2_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                       const int32_t *xsum, const bk_out_t *o)
    void bk_gemv4_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                       const int32_t *xsum, const bk_out_t *o)
    void bk_gemv2_vnni(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                       const int32_t *xsum, const bk_out_t *o)
    void bk_gemv4_vnni(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                       const int32_t *xsum, const bk_out_t *o)
    void bk_gemv2_vnni_emu(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                           const int32_t *xsum, const bk_out_t *o)
    void bk_gemv4_vnni_emu(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t Kp,
                           const int32_t *xsum, const bk_out_t *o)
    void bk_unpack_avx2(const uint8_t *W, int64_t rb, int64_t n0, int64_t nrows, int64_t nbuf, uint8_t *buf)
    void bk_pack_x(const int8_t *X, int64_t Mp, int64_t Kp, int8_t *Xt)
    void bk_gemm_avx2(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid, const int8_t *X,
                      int64_t Mp, int64_t Kp, const int32_t *xsum, const bk_out_t *o, void *accv)
    void bk_gemm_vnni(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid, const int8_t *X,
                      int64_t Mp, int64_t Kp, const int32_t *xsum, const bk_out_t *o, void *accv)
    void bk_gemm_vnni_emu(const uint8_t *buf, int64_t nbuf, int64_t n0, int64_t nvalid, const int8_t *X,
                          int64_t Mp, int64_t Kp, const int32_t *xsum, const bk_out_t *o, void *accv)
    void bk_interleave_x(const int8_t *x, int64_t Kp, int8_t *xi)
    void bk_gemv_vnni512(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *xi, int32_t xsum,
                         const bk_out_t *o)
    void bk_amx_pack_x(const int8_t *X, int64_t Kp, int64_t mb, int8_t *Xv)
    void bk_amx_unpack(const uint8_t *W, int64_t rb, int64_t n0, int64_t nrows, uint8_t *buf)
    void bk_gemm_amx(const uint8_t *buf, int64_t n0, int64_t nvalid, const int8_t *Xv, int64_t nmb, int64_t Kp,
                     const int32_t *xsum, const bk_out_t *o, int32_t *ct)


cdef enum:
    # ISA codes
    ISA_PORTABLE = 0
    ISA_AVX2 = 1
    ISA_AVX512 = 2
    ISA_AVX512_EMU = 3
    ISA_AMX = 4
    # Quantize rows in parallel only above this many elements (an OpenMP fork costs a few microseconds).
    PAR_QUANT_MIN = 65536

_ISA_CODES = {
    "portable": ISA_PORTABLE,
    "avx2": ISA_AVX2,
    "avx512": ISA_AVX512,
    "avx512-emulated": ISA_AVX512_EMU,
    "amx": ISA_AMX,
}
_CPU_MASK = bk_cpu_isa_mask()


def _detect_isas():
    isas = ["portable"]
    if _CPU_MASK & BK_ISA_AVX2:
        isas += ["avx2", "avx512-emulated"]
    if _CPU_MASK & BK_ISA_AVX512:
        isas.append("avx512")
    if _CPU_MASK & BK_ISA_AMX:
        isas.append("amx")
    return tuple(isas)


def _best(available):
    for name in ("amx", "avx512", "avx2"):
        if name in available:
            return name
    return "portable"


_AVAILABLE = _detect_isas()
_BEST = _best(_AVAILABLE)


def _env_isa():
    name = os.environ.get("BITNET_ISA", "auto").strip().lower()
    return name if name in _AVAILABLE else _BEST


_DEFAULT_ISA = _env_isa()


def _env_threads():
    raw = os.environ.get("BITNET_THREADS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    return max(1, openmp.omp_get_num_procs())


# The only mutable module state: the default thread count.
cdef int _n_threads = _env_threads()


def available_isas():
    """ISAs usable on this CPU: "portable", then "avx2" and "avx512-emulated", "avx512" where supported."""
    return _AVAILABLE


def default_isa():
    """The ISA used when a call passes ``isa=None``: $BITNET_ISA if usable, else the best available."""
    return _DEFAULT_ISA


def set_num_threads(n):
    """Set the default number of OpenMP threads for the kernels (initially $BITNET_THREADS or all cores)."""
    global _n_threads
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"threads must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _n_threads = n


def get_num_threads():
    """The default number of OpenMP threads for the kernels."""
    return _n_threads


cdef int _DEFAULT_ISA_CODE = _ISA_CODES[_DEFAULT_ISA]


cdef int _resolve_isa(object isa) except -1:
    if isa is None:
        return _DEFAULT_ISA_CODE
    if isa == "auto":
        isa = _DEFAULT_ISA
    if not isinstance(isa, str):
        raise TypeError(f"isa must be a str or None, got {type(isa).__name__}")
    if isa not in _ISA_CODES:
        raise ValueError(f"unknown isa {isa!r}; expected one of 'auto', {', '.join(map(repr, _ISA_CODES))}")
    if isa not in _AVAILABLE:
        raise ValueError(f"isa {isa!r} is not supported by this CPU (available: {', '.join(_AVAILABLE)})")
    return _ISA_CODES[isa]


cdef int _resolve_threads(object threads) except -1:
    if threads is None:
        return _n_threads
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


# ------------------------------------------------------------------------------------------------------------
# activation quantization


cdef int _quantize_rows(const float *x, int64_t M, int64_t K, int64_t Kp, int8_t *q, float *s, int32_t *xsum,
                        int isa, int nt) noexcept nogil:
    """Quantize x (M, K) into q (M, Kp) (zero-padded), s (M,), xsum (M,); returns the count of bad rows."""
    cdef int64_t m
    cdef int bad = 0
    if M * K < PAR_QUANT_MIN or nt == 1:
        for m in range(M):
            if isa == ISA_PORTABLE:
                bad += bk_quant_row_portable(x + m * K, K, Kp, q + m * Kp, s + m, xsum + m)
            else:
                bad += bk_quant_row_avx2(x + m * K, K, Kp, q + m * Kp, s + m, xsum + m)
        return bad
    for m in prange(M, num_threads=nt, schedule="static"):
        if isa == ISA_PORTABLE:
            bad += bk_quant_row_portable(x + m * K, K, Kp, q + m * Kp, s + m, xsum + m)
        else:
            bad += bk_quant_row_avx2(x + m * K, K, Kp, q + m * Kp, s + m, xsum + m)
    return bad


def quantize_activations(x, *, isa=None, threads=None):
    """Per-row absmax quantization to int8; identical to :func:`kernels_cython.reference.quantize_activations`.

    Args:
        x: float32 (M, K), C-contiguous, finite.
        isa: "auto" / None, "portable", "avx2", "avx512" or "avx512-emulated".
        threads: OpenMP threads (default :func:`get_num_threads`).

    Returns:
        ``(xq int8 (M, K), s float32 (M,))`` with ``x ~= xq / s[:, None]``.
    """
    _ref.check_matrix(x, np.float32, "x")
    cdef int isa_c = _resolve_isa(isa)
    cdef int nt = _resolve_threads(threads)
    cdef int64_t M = x.shape[0], K = x.shape[1]
    xq = np.empty((M, K), dtype=np.int8)  # (M, K)
    s = np.empty(M, dtype=np.float32)  # (M,)
    sums = np.empty(M, dtype=np.int32)  # (M,)
    cdef const float[:, ::1] xv = x
    cdef int8_t[:, ::1] qv = xq
    cdef float[::1] sv = s
    cdef int32_t[::1] smv = sums
    cdef int bad = 0
    if M:
        with nogil:
            bad = _quantize_rows(&xv[0, 0], M, K, K, &qv[0, 0], &sv[0], &smv[0], isa_c, nt)
    if bad:
        raise ValueError("x contains NaN or inf")
    return xq, s


# ------------------------------------------------------------------------------------------------------------
# matmul drivers


cdef void _portable_rows(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t M,
                         int64_t Kp, int8_t *wbuf, const bk_out_t *o) noexcept nogil:
    """Portable kernel for output rows [n0, n1): unpack each row to int8 weights, then int32 dot products."""
    cdef int64_t n, c, j, m, k
    cdef const uint8_t *wc
    cdef int8_t *bc
    cdef const int8_t *xr
    cdef int32_t acc
    for n in range(n0, n1):
        for c in range(rb // 32):
            # chunk c: byte j, bits [2l, 2l+1] -> weight 128c + 32l + j (contiguous loops that vectorize)
            wc = W + n * rb + c * 32
            bc = wbuf + c * 128
            for j in range(32):
                bc[j] = <int8_t>(wc[j] & 3) - 1
            for j in range(32):
                bc[32 + j] = <int8_t>((wc[j] >> 2) & 3) - 1
            for j in range(32):
                bc[64 + j] = <int8_t>((wc[j] >> 4) & 3) - 1
            for j in range(32):
                bc[96 + j] = <int8_t>(wc[j] >> 6) - 1
        for m in range(M):
            xr = X + m * Kp
            acc = 0
            for k in range(Kp):
                acc = acc + <int32_t>wbuf[k] * <int32_t>xr[k]
            bk_store(o, m, n, acc)


cdef inline int64_t _thread_bytes(int64_t Mp, int64_t Kp) noexcept nogil:
    """Per-thread scratch: an unpacked block of BK_NB rows (tile layout), then the GEMM accumulators; or the
    AMX block and its C tiles, whichever is larger."""
    cdef int64_t vnni = BK_BUF_BYTES(Kp) + BK_ACC_BYTES(Mp)
    cdef int64_t amx = BK_AMX_BUF_BYTES(Kp)
    return vnni if vnni > amx else amx


cdef inline void _gemv_rows(const uint8_t *W, int64_t rb, int64_t n0, int64_t n1, const int8_t *X, int64_t M,
                            int64_t Kp, const int32_t *xsum, const bk_out_t *o, int isa) noexcept nogil:
    """Streaming GEMV for 1 <= M <= 4 activation rows over output rows [n0, n1)."""
    if M == 1:
        if isa == ISA_AVX2:
            bk_gemv_avx2(W, rb, n0, n1, X, xsum[0], o)
        elif isa == ISA_AVX512:
            bk_gemv_vnni512(W, rb, n0, n1, X, xsum[0], o)  # X interleaved by _matmul
        else:
            bk_gemv_vnni_emu(W, rb, n0, n1, X, xsum[0], o)
    elif M == 2:
        if isa == ISA_AVX2:
            bk_gemv2_avx2(W, rb, n0, n1, X, Kp, xsum, o)
        elif isa == ISA_AVX512:
            bk_gemv2_vnni(W, rb, n0, n1, X, Kp, xsum, o)
        else:
            bk_gemv2_vnni_emu(W, rb, n0, n1, X, Kp, xsum, o)
    else:
        if isa == ISA_AVX2:
            bk_gemv4_avx2(W, rb, n0, n1, X, Kp, xsum, o)
        elif isa == ISA_AVX512:
            bk_gemv4_vnni(W, rb, n0, n1, X, Kp, xsum, o)
        else:
            bk_gemv4_vnni_emu(W, rb, n0, n1, X, Kp, xsum, o)


cdef void _matmul(const uint8_t *W, int64_t N, int64_t rb, const int8_t *X, int64_t M, int64_t Mp,
                  const int32_t *xsum, const bk_out_t *o, uint8_t *tbuf, int8_t *Xt, int8_t *xi, int isa,
                  int nt) noexcept nogil:
    """Run the chosen kernel over all N output rows.

    X is (Mp, Kp) int8, zero-padded, Mp % BK_MR == 0; for GEMM (M > 1, not portable) tbuf holds nt per-thread
    buffers of _thread_bytes(Mp, Kp) bytes each and Xt room for X in the tile layout (BK_XT_BYTES).
    """
    cdef int64_t Kp = rb * 4
    cdef int64_t tb = _thread_bytes(Mp, Kp)
    cdef int64_t t, n0, n1, b, nblk, nvalid, nbuf, nb
    cdef int64_t nparts
    cdef uint8_t *ubuf = NULL
    if isa == ISA_AMX and M <= 4:
        isa = ISA_AVX512  # streaming GEMV: bandwidth-bound, VNNI keeps up with memory
    if isa == ISA_AVX512 and M == 1:
        bk_interleave_x(X, Kp, xi)  # the 512-bit GEMV's activation order (Kp bytes of scratch)
        X = xi
    if isa == ISA_PORTABLE:
        nparts = nt if nt < N else N
        for t in prange(nparts, num_threads=nt, schedule="static", chunksize=1):
            _portable_rows(W, rb, N * t // nparts, N * (t + 1) // nparts, X, M, Kp,
                           <int8_t *>(tbuf + t * tb), o)
        return
    if M <= 4 and nt == 1:
        _gemv_rows(W, rb, 0, N, X, M, Kp, xsum, o, isa)
        return
    if M <= 4:
        # streaming GEMV: 8 contiguous parts per thread, handed out dynamically (a thread the OS preempts
        # delays one part only); below 1 MiB of weights one part per thread (each new part restarts the
        # prefetch streams: 640x2560 at 2 threads 24 -> 20 us)
        nparts = nt if N * rb < 1048576 else (N // 32 if N // 32 < 8 * nt else 8 * nt)
        if nparts < nt:
            nparts = nt if nt < N else N
        for t in prange(nparts, num_threads=nt, schedule="dynamic", chunksize=1):
            _gemv_rows(W, rb, N * t // nparts, N * (t + 1) // nparts, X, M, Kp, xsum, o, isa)
        return
    # GEMM: blocks of weight rows unpacked per thread (BK_AMX_NB rows for AMX, BK_NB otherwise), handed out
    # dynamically; the activations are laid out once for the kernel (AMX B tiles, or the tile layout)
    nb = BK_AMX_NB if isa == ISA_AMX else BK_NB
    if isa == ISA_AMX:
        for b in prange(Mp // BK_AMX_MT, num_threads=nt, schedule="static"):  # Mp % BK_AMX_MT == 0 (_row_tile)
            bk_amx_pack_x(X, Kp, b, Xt)
    else:
        bk_pack_x(X, Mp, Kp, Xt)
    nblk = (N + nb - 1) // nb
    with parallel(num_threads=nt):
        ubuf = tbuf + openmp.omp_get_thread_num() * tb
        for b in prange(nblk, schedule="dynamic"):
            nvalid = N - b * nb
            if nvalid > nb:
                nvalid = nb
            if isa == ISA_AMX:
                bk_amx_unpack(W, rb, b * nb, nvalid, ubuf)
                bk_gemm_amx(ubuf, b * nb, nvalid, Xt, Mp // BK_AMX_MT, Kp, xsum, o, <int32_t *>(ubuf + nb * Kp))
            else:
                nbuf = (nvalid + 1) & ~(<int64_t>1)
                bk_unpack_avx2(W, rb, b * nb, nvalid, nbuf, ubuf)
                if isa == ISA_AVX2:
                    bk_gemm_avx2(ubuf, nbuf, b * nb, nvalid, Xt, Mp, Kp, xsum, o, ubuf + BK_BUF_BYTES(Kp))
                elif isa == ISA_AVX512:
                    bk_gemm_vnni(ubuf, nbuf, b * nb, nvalid, Xt, Mp, Kp, xsum, o, ubuf + BK_BUF_BYTES(Kp))
                else:
                    bk_gemm_vnni_emu(ubuf, nbuf, b * nb, nvalid, Xt, Mp, Kp, xsum, o, ubuf + BK_BUF_BYTES(Kp))


cdef inline int64_t _row_tile(int isa, int64_t M) noexcept nogil:
    """Rows of the GEMM's row tile: activations are padded to a multiple of it."""
    return BK_AMX_MT if isa == ISA_AMX and M > 4 else BK_MR


cdef int tl_scratch_init(tl_scratch *sc, int64_t M, int64_t Kp, int nt, bint need_tbuf, int isa) noexcept nogil:
    """One aligned allocation for products of up to M rows of up to Kp padded columns with nt threads on isa:
    padded activations X (Mp, Kp) int8, row sums (Mp,), scales (Mp,) and, for GEMM and the portable path
    (need_tbuf), nt per-thread buffers of _thread_bytes(Mp, Kp) bytes and the GEMM's activation layout.
    Returns 0, or -1 when memory is short (sc.base is then NULL)."""
    cdef int64_t Mp = (M + BK_AMX_MT - 1) // BK_AMX_MT * BK_AMX_MT  # a multiple of every row tile
    cdef int64_t xbytes = Mp * Kp
    cdef int64_t vbytes = (Mp * 4 + 63) // 64 * 64
    cdef int64_t tbytes = nt * _thread_bytes(Mp, Kp) if need_tbuf else 0
    cdef int64_t xtbytes = BK_XT_BYTES(Mp, Kp) if need_tbuf else 0
    sc.cap_M = M
    sc.cap_Kp = Kp
    sc.nt = nt
    sc.isa = isa
    sc.base = <uint8_t *>bk_alloc(xbytes + 2 * vbytes + tbytes + xtbytes + Kp)
    if sc.base == NULL:
        return -1
    sc.X = <int8_t *>sc.base
    sc.xsum = <int32_t *>(sc.base + xbytes)
    sc.s = <float *>(sc.base + xbytes + vbytes)
    sc.tbuf = sc.base + xbytes + 2 * vbytes if need_tbuf else NULL
    sc.Xt = <int8_t *>(sc.base + xbytes + 2 * vbytes + tbytes) if need_tbuf else NULL
    sc.xi = <int8_t *>(sc.base + xbytes + 2 * vbytes + tbytes + xtbytes)
    return 0


cdef void tl_scratch_free(tl_scratch *sc) noexcept nogil:
    free(sc.base)
    sc.base = NULL


cdef inline int64_t _pad_rows(tl_scratch *sc, int64_t M, int64_t Kp) noexcept nogil:
    """Zero the padding rows of X and xsum for M rows of Kp columns; returns Mp."""
    cdef int64_t mr = _row_tile(sc.isa, M)
    cdef int64_t Mp = (M + mr - 1) // mr * mr
    if Mp > M:
        memset(sc.X + M * Kp, 0, (Mp - M) * Kp)
        memset(sc.xsum + M, 0, (Mp - M) * sizeof(int32_t))
    return Mp


cdef int tl_linear(const float *x, int64_t M, int64_t K, const uint8_t *W, int64_t N, int64_t rb,
                   const float *rscale, float scale, float *out, tl_scratch *sc) noexcept nogil:
    """out (M, N) = rescaled exact product of x (M, K) quantized per row and the packed codes W (N, rb), with
    per-row scales rscale (N,) or, when NULL, the one scale; sc from tl_scratch_init with M <= cap_M, rb * 4 <=
    cap_Kp and (for M > 1 or the portable path) need_tbuf.  Returns the number of rows of x that hold NaN or inf
    (out is then not written)."""
    cdef int64_t Kp = rb * 4
    cdef int64_t Mp = _pad_rows(sc, M, Kp)
    cdef bk_out_t o
    o.outi = NULL
    o.outf = out
    o.s = sc.s
    o.rscale = rscale
    o.scale = 1.0 if rscale != NULL else scale
    o.M = M
    o.N = N
    cdef int bad = _quantize_rows(x, M, K, Kp, sc.X, sc.s, sc.xsum, sc.isa, sc.nt)
    if bad == 0:
        _matmul(W, N, rb, sc.X, M, Mp, sc.xsum, &o, sc.tbuf, sc.Xt, sc.xi, sc.isa, sc.nt)
    return bad


cdef int tl_default_isa() noexcept nogil:
    """The ISA code a call with ``isa=None`` uses."""
    return _DEFAULT_ISA_CODE


cdef int tl_default_threads() noexcept nogil:
    """The thread count a call with ``threads=None`` uses (see :func:`set_num_threads`)."""
    return _n_threads


cdef object _packed_for(object w, int64_t K):
    """Validate w against K columns and return its packed codes (N, Kp / 4)."""
    if not isinstance(w, TernaryMatrix):
        _ref.check_weights(w, K)
    if w.shape[1] != K:
        _ref.check_weights(w, K)
    return w.packed  # the reference constructor checked dtype, layout, contiguity and Kp


cdef inline bint _is_matrix(object a, int typenum):
    """Fast path of reference.check_matrix (which runs, for its message, when this is false)."""
    if not isinstance(a, np.ndarray):
        return False
    cdef cnp.ndarray arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == 2 and cnp.PyArray_DIM(arr, 1) > 0
            and cnp.PyArray_IS_C_CONTIGUOUS(arr))


def ternary_matmul_int32(xq, w, *, isa=None, threads=None):
    """Exact int32 product ``xq @ codes.T``; equals :func:`kernels_cython.reference.ternary_matmul_int32`.

    Args:
        xq: int8 (M, K), C-contiguous.
        w: :class:`TernaryMatrix` (N, K).
        isa: "auto" / None, "portable", "avx2", "avx512" or "avx512-emulated".
        threads: OpenMP threads (default :func:`get_num_threads`).

    Returns:
        int32 (M, N).
    """
    if not _is_matrix(xq, cnp.NPY_INT8):
        _ref.check_matrix(xq, np.int8, "xq")
    cdef int64_t M = cnp.PyArray_DIM(<cnp.ndarray>xq, 0), K = cnp.PyArray_DIM(<cnp.ndarray>xq, 1)
    cdef cnp.ndarray packed = _packed_for(w, K)
    cdef int isa_c = _resolve_isa(isa)
    cdef int nt = _resolve_threads(threads)
    cdef int64_t N = cnp.PyArray_DIM(packed, 0), rb = cnp.PyArray_DIM(packed, 1), Kp = rb * 4
    cdef cnp.ndarray out = np.empty((M, N), dtype=np.int32)  # (M, N)
    if M == 0 or N == 0:
        return out
    cdef const int8_t *xp = <const int8_t *>cnp.PyArray_DATA(<cnp.ndarray>xq)
    cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(packed)
    cdef tl_scratch sc
    if tl_scratch_init(&sc, M, Kp, nt, M > 1 or isa_c == ISA_PORTABLE, isa_c):
        raise MemoryError("cannot allocate activation scratch")
    cdef int64_t Mp = _pad_rows(&sc, M, Kp)
    cdef bk_out_t o
    o.outi = <int32_t *>cnp.PyArray_DATA(out)
    o.outf = NULL
    o.s = NULL
    o.rscale = NULL
    o.scale = 1.0
    o.M = M
    o.N = N
    cdef int64_t m, k
    cdef int32_t acc
    with nogil:
        for m in range(M):
            memcpy(sc.X + m * Kp, xp + m * K, K)
            memset(sc.X + m * Kp + K, 0, Kp - K)
            acc = 0
            for k in range(K):
                acc = acc + xp[m * K + k]
            sc.xsum[m] = acc
        _matmul(wp, N, rb, sc.X, M, Mp, sc.xsum, &o, sc.tbuf, sc.Xt, sc.xi, isa_c, nt)
        tl_scratch_free(&sc)
    return out


def ternary_linear(x, w, *, isa=None, threads=None):
    """Quantize activations, exact int32 product, rescale; equals :func:`kernels_cython.reference.ternary_linear`.

    Args:
        x: float32 (M, K), C-contiguous, finite.
        w: :class:`TernaryMatrix` (N, K).
        isa: "auto" / None, "portable", "avx2", "avx512" or "avx512-emulated".
        threads: OpenMP threads (default :func:`get_num_threads`).

    Returns:
        float32 (M, N).
    """
    if not _is_matrix(x, cnp.NPY_FLOAT32):
        _ref.check_matrix(x, np.float32, "x")
    cdef int64_t M = cnp.PyArray_DIM(<cnp.ndarray>x, 0), K = cnp.PyArray_DIM(<cnp.ndarray>x, 1)
    cdef cnp.ndarray packed = _packed_for(w, K)
    cdef int isa_c = _resolve_isa(isa)
    cdef int nt = _resolve_threads(threads)
    scale = w.scale
    row_scale = w.row_scale
    if row_scale is None and not isinstance(scale, float):
        # general per-block scales: rare (GGUF files whose block scales differ), done block by block
        xq, s = quantize_activations(x, isa=isa, threads=threads)
        return _ref.rescale(xq, s, w, lambda a, b: ternary_matmul_int32(a, b, isa=isa, threads=threads))
    cdef int64_t N = cnp.PyArray_DIM(packed, 0), rb = cnp.PyArray_DIM(packed, 1), Kp = rb * 4
    cdef cnp.ndarray out = np.empty((M, N), dtype=np.float32)  # (M, N)
    if M == 0 or N == 0:
        return out
    cdef const float *xp = <const float *>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef const uint8_t *wp = <const uint8_t *>cnp.PyArray_DATA(packed)
    cdef const float *rsp = NULL
    cdef cnp.ndarray rs
    if row_scale is not None:
        rs = row_scale
        rsp = <const float *>cnp.PyArray_DATA(rs)
    cdef float sc_f = 1.0 if row_scale is not None else <float>scale
    cdef float *op = <float *>cnp.PyArray_DATA(out)
    cdef tl_scratch sc
    if tl_scratch_init(&sc, M, Kp, nt, M > 1 or isa_c == ISA_PORTABLE, isa_c):
        raise MemoryError("cannot allocate activation scratch")
    cdef int bad
    with nogil:
        bad = tl_linear(xp, M, K, wp, N, rb, rsp, sc_f, op, &sc)
        tl_scratch_free(&sc)
    if bad:
        raise ValueError("x contains NaN or inf")
    return out


def _verify_isa(isa):
    """Check a SIMD path against the portable one on small cases; False on any difference or error.

    On CPUs without AVX-512 the tests only reach the AVX-512 code through its AVX2 emulation, so on a CPU that
    has it, import runs this once to guard against a path that was never executed natively.
    """
    rng = np.random.default_rng(12345)
    try:
        for m, n, k in ((1, 5, 700), (2, 7, 1100), (3, 3, 300), (9, 6, 2100), (40, 37, 300)):
            w = TernaryMatrix.from_codes(rng.integers(-1, 2, size=(n, k)).astype(np.int8))
            xq = rng.integers(-128, 128, size=(m, k)).astype(np.int8)
            fast = ternary_matmul_int32(xq, w, isa=isa, threads=1)
            if not np.array_equal(fast, ternary_matmul_int32(xq, w, isa="portable", threads=1)):
                return False
    except Exception:
        return False
    return True


for _name in ("avx512", "amx"):
    if _name in _AVAILABLE and not _verify_isa(_name):
        _AVAILABLE = tuple(name for name in _AVAILABLE if name != _name and not (_name == "avx512" and name == "amx"))
_BEST = _best(_AVAILABLE)
_DEFAULT_ISA = _env_isa()
_DEFAULT_ISA_CODE = _ISA_CODES[_DEFAULT_ISA]
