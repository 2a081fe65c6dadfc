# cython: language_level=3
"""C-level entry points of the ternary kernels, for other extensions (``cimport`` them; the engine's compiled
layer loop calls them without the Python-level checks of :func:`ternary_linear`)."""

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t


ctypedef struct tl_scratch:
    # Aligned scratch for products of up to cap_M activation rows of up to cap_Kp (padded) columns.
    uint8_t *base
    int8_t *X        # padded activations (Mp, Kp) int8, rows >= M zero
    int32_t *xsum    # row sums (Mp,)
    float *s         # row scales (Mp,)
    uint8_t *tbuf    # nt per-thread GEMM / portable buffers, or NULL
    int8_t *Xt       # X in the GEMM's layout, or NULL
    int8_t *xi       # X interleaved for the 512-bit GEMV (Kp bytes)
    int64_t cap_M
    int64_t cap_Kp
    int nt
    int isa


cdef int tl_scratch_init(tl_scratch *sc, int64_t M, int64_t Kp, int nt, bint need_tbuf, int isa) noexcept nogil
cdef void tl_scratch_free(tl_scratch *sc) noexcept nogil
cdef int tl_linear(const float *x, int64_t M, int64_t K, const uint8_t *W, int64_t N, int64_t rb,
                   const float *rscale, float scale, float *out, tl_scratch *sc) noexcept nogil
cdef int tl_default_isa() noexcept nogil
cdef int tl_default_threads() noexcept nogil
