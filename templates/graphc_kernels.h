/* graphc_kernels.h: the kernel library shared by every model graphc emits.
 *
 * Dense matrix products (GEMM) with a fused epilogue, in float (suffix _f) and double
 * (suffix _d). A model file calls one set through the names it uses (gc_gemm, gc_gemm_ex,
 * ...); graphc_kernels.c implements both, for AVX-512, AVX2 + FMA, NEON and portable C, and
 * picks the fastest the CPU has at run time. It is C99 and needs libm alone; OpenMP is
 * optional (-fopenmp splits large products over threads, with the same bits).
 *
 * Conventions
 *   C[M,N] = beta*C + op(A)[M,K] op(B)[K,N], row-major, leading dimensions lda, ldb, ldc;
 *   op(A) = A (ta = 0, A is M x K) or A^T (ta = 1, A is K x M), the same for B and tb;
 *   beta is 0 (C is overwritten and never read: it may hold NaN) or 1.
 *   pack: caller-owned scratch of gc_gemm_pack_elems_T(ta, tb, M, N, K, threads) elements
 *   (T: f or d), 64-byte aligned; NULL when that is 0 (tiny products, matrix-vector and
 *   outer products: nothing is packed).
 *   C may be NULL when the epilogue updates and does nothing else (beta 0): C is then
 *   neither read nor written (with K > the library's KC, each block of KC steps of K
 *   updates with its own partial product).
 *   threads: the most threads a call may use (the pack was sized for them); the calls use
 *   gc_kernels_threads(threads) when compiled with OpenMP, else one. Every element
 *   of C is computed by the same operations in the same order for any thread count.
 *   Nothing here allocates or prints, and every function is reentrant. The one state kept
 *   is a hint, atomic, that the machine was found busy (see gc_kernels_threads): it
 *   changes how many threads run, never a result.
 *
 * Build options (-D...=0 when compiling graphc_kernels.c and the files that include this)
 *   GC_KERNELS_FLOAT, GC_KERNELS_DOUBLE   1 (default): provide that element type.
 *   GC_GEMM_DISPATCH, GC_GEMM_ISA_CAP     see graphc_kernels.c (instruction sets).
 */
#ifndef GRAPHC_KERNELS_H
#define GRAPHC_KERNELS_H

#include <stddef.h>     /* size_t */

#ifndef GC_KERNELS_FLOAT
#define GC_KERNELS_FLOAT 1
#endif
#ifndef GC_KERNELS_DOUBLE
#define GC_KERNELS_DOUBLE 1
#endif
/* How the entry points are declared: external by default; a file that pastes the library
   in (graphc emit --amalgamate) makes them static, and unused ones then need no warning. */
#ifndef GC_KERNELS_API
#define GC_KERNELS_API
#endif

/* where(c, a, b) in a model file's elementwise loops (gc_real is its element type): a where c is
   nonzero (NaN too), else b. Picked from a two-element array, not by `c != 0 ? a : b`, which GCC 12
   at -O3 with AVX-512 miscompiles when c is broadcast over the loop (a masked load at c's stride). */
#define GC_WHERE(c, a, b) (((const gc_real[2]){(b), (a)})[(c) != 0])

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__GNUC__)
#define GC_UNUSED __attribute__((unused))   /* a model that calls no tanh or exp: no warning */
#else
#define GC_UNUSED
#endif

/* exp of a softmax's row (and attention's scores), with no libm call and no branch, so that the loop
   around it is vectorized: 2^n p(r), n = round(x / ln 2) read off the low bits of x / ln 2 + 1.5 * 2^m,
   r = x - n ln 2 in two steps (Cody-Waite), p the Taylor polynomial (|r| <= ln 2 / 2; degree 7 for
   float, 13 for double), 2^n made from its exponent bits. Within 2 ulp of exp for x in [-87, 88]
   (float) and [-708, 709] (double); below, 0 (exp is subnormal there: a masked score's -inf gives 0);
   above, x is clamped (exp(+inf) is finite): for the arguments x - max of a row (at most 0) only.
   NaN stays NaN. */
#if GC_KERNELS_FLOAT
/* e^y for y in [-87, 88] (the part of gc_expf and gc_tanhf they share): 2^n p(r) as above. */
static inline GC_UNUSED float gc_expf_in_range(float y)
{
    float shift, nf, r, p, pow2;
    uint32_t bits;
    shift = y * 1.44269504088896341f + 12582912.0f;
    memcpy(&bits, &shift, sizeof bits);
    nf = shift - 12582912.0f;
    r = (y - nf * 0.693359375f) + nf * 2.12194440e-4f;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.66666667e-1f + r * (4.16666667e-2f
        + r * (8.33333333e-3f + r * (1.38888889e-3f + r * 1.98412698e-4f))))));
    bits = (bits - 0x4B400000u + 127u) << 23;
    memcpy(&pow2, &bits, sizeof pow2);
    return p * pow2;
}

static inline GC_UNUSED float gc_expf(float x)
{
    float y = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    return x < -87.0f ? 0.0f : gc_expf_in_range(y);
}
#endif
#if GC_KERNELS_DOUBLE
static inline GC_UNUSED double gc_exp(double x)
{
    double y = x < -708.0 ? -708.0 : x > 709.0 ? 709.0 : x, shift, nf, r, p, pow2;
    uint64_t bits;
    shift = y * 1.4426950408889634 + 6755399441055744.0;
    memcpy(&bits, &shift, sizeof bits);
    nf = shift - 6755399441055744.0;
    r = (y - nf * 6.93145751953125e-1) - nf * 1.42860682030941723212e-6;
    p = 1.0 + r * (1.0 + r * (1.0 / 2 + r * (1.0 / 6 + r * (1.0 / 24 + r * (1.0 / 120 + r * (1.0 / 720
        + r * (1.0 / 5040 + r * (1.0 / 40320 + r * (1.0 / 362880 + r * (1.0 / 3628800 + r * (1.0 / 39916800
        + r * (1.0 / 479001600 + r * (1.0 / 6227020800.0)))))))))))));
    bits = (bits - UINT64_C(0x4338000000000000) + 1023u) << 52;
    memcpy(&pow2, &bits, sizeof pow2);
    return x < -708.0 ? 0.0 : p * pow2;
}
#endif

#if GC_KERNELS_FLOAT

/* tanh of a float with no libm call and no branch, so that the loops around it (tanh, GELU and their
   gradients) are vectorized: for |x| < 0.625 Cephes' odd polynomial x + x^3 P(x^2), else
   1 - 2 / (e^2|x| + 1) with the sign of x, e^y by gc_expf_in_range (2^n p(r), as gc_expf); |x| is
   capped at 10, past which tanh is 1 in float. Within 1.4 ulp of tanh; NaN stays NaN, -0 stays -0. */
static inline GC_UNUSED float gc_tanhf(float x)
{
    float a = fabsf(x), s = x * x, big, small;
    big = 1.0f - 2.0f / (gc_expf_in_range(a > 10.0f ? 20.0f : 2.0f * a) + 1.0f);
    small = x + x * s * ((((-5.70498872745e-3f * s + 2.06390887954e-2f) * s - 5.37397155531e-2f) * s
                          + 1.33314422036e-1f) * s - 3.33332819422e-1f);
    return copysignf(a < 0.625f ? small : big, x);
}
#endif /* GC_KERNELS_FLOAT */

#ifdef __cplusplus
extern "C" {
#endif

/* The instruction set the products run on, on this CPU: 2 AVX-512, 1 AVX2 + FMA, 3 NEON (AArch64),
   0 portable C. */
GC_KERNELS_API int gc_kernels_isa(void);

/* The threads a product or a model's loop uses now, given that it may use `threads`:
 * min(threads, omp_get_max_threads()), or 1 for a moment (0.2 s, longer while it lasts) after
 * two split products in a row found the machine busy (a thread that started or finished a
 * scheduler slice late: another process holds a core, where two threads would wait for each
 * other). 1 without OpenMP. */
GC_KERNELS_API int gc_kernels_threads(int threads);

/* How long (seconds) products stay on one thread after one found the machine busy: 0.2 unless
 * compiled with -DGC_BUSY_HOLD=s. Sets it to `seconds` when seconds >= 0 (0: always the threads
 * asked for, as a benchmark of fixed thread counts wants) and ends a current hold; returns the
 * previous value. Without OpenMP it does nothing and returns 0. */
GC_KERNELS_API double gc_kernels_busy_hold(double seconds);

/* A model's parallel region (a convolution's images shared out by its threads) tells the busy
 * mark what the split products tell it: a thread waited `late` seconds (started late, or the
 * first to finish waited for the last) of a region that took `took`. Nothing without OpenMP. */
GC_KERNELS_API void gc_kernels_note_wait(double late, double took);

/* Dropout's random bits: a counter-based generator, 32 bits of element `index` of the mask of
 * the dropout keyed `seed` at training step `step`. No state: the same arguments give the same
 * bits in every program, thread and call (graphc's NumPy reference computes the same ones).
 * bits = mix(mix(seed * 0x9E3779B9 + mix(step)) ^ index), mix the "lowbias32" integer hash
 * (h ^= h >> 16; h *= 0x7feb352d; h ^= h >> 15; h *= 0x846ca68b; h ^= h >> 16), all mod 2^32. */
GC_KERNELS_API unsigned long gc_random_bits(unsigned long seed, unsigned long step, unsigned long index);

/* A size at the run-time dims x[0 .. dims-1] (a workspace's elements, for a model's batch and
 * sequence lengths): the sum over the `count` rows of `terms`, each dims + 1 numbers
 * { coefficient, power of x[0], power of x[1], ... }. Returns 1 and sets *out, or 0 (leaving
 * *out) when the value overflows size_t. */
GC_KERNELS_API int gc_size_poly(const size_t *terms, int count, const size_t *x, int dims, size_t *out);

/* The epilogue: applied to each final value of C as it is written, in this order:
 * + bias[j], relu (x <= 0 ? 0 : x, so NaN stays NaN), * sgn(mask[i*ldm + j]); then
 * update[i*ldu + j] -= rate * the value (one rounding: an SGD step of a parameter from its
 * gradient; C is then scratch, not the result); then colsum[j] += the value, over the rows
 * in order (the caller zeroes colsum first; it then holds the bits of a loop summing C's
 * rows). NULL fields (and relu 0) are skipped. */
#if GC_KERNELS_FLOAT
typedef struct {
    const float *bias;     /* N values added to every row, or NULL */
    int relu;              /* 1: relu */
    const float *mask;     /* M x N, row stride ldm: C *= sgn(mask), or NULL */
    long ldm;
    float *colsum;         /* N values: += C's final values, row by row, or NULL */
    float *update;         /* M x N, row stride ldu: -= rate * C's final values, or NULL */
    long ldu;
    float rate;
} gc_gemm_epilogue_f;

/* C = epilogue(beta*C + op(A) op(B)); ep NULL: no epilogue. */
GC_KERNELS_API void gc_gemm_ex_f(int ta, int tb, long M, long N, long K, const float *A, long lda,
                                 const float *B, long ldb, int beta, float *C, long ldc,
                                 float *pack, int threads, const gc_gemm_epilogue_f *ep);
/* C = beta*C + op(A) op(B). */
GC_KERNELS_API void gc_gemm_f(int ta, int tb, long M, long N, long K, const float *A, long lda,
                              const float *B, long ldb, int beta, float *C, long ldc,
                              float *pack, int threads);
/* C = act(beta*C + op(A) op(B) + bias[j]); bias may be NULL; act 0: none, 1: relu. */
GC_KERNELS_API void gc_gemm_bias_act_f(int ta, int tb, long M, long N, long K, const float *A, long lda,
                                       const float *B, long ldb, int beta, float *C, long ldc,
                                       float *pack, int threads, const float *bias, int act);
/* Elements of `pack` a call of these arguments with up to `threads` threads needs (0: the
 * call packs nothing). It never decreases as M, N, K or threads grow, and does not depend on
 * the CPU or on how the library was compiled; graphc's Python side computes the same value
 * (graphc/backend/packing.py) to size a model's workspace at compile time. */
GC_KERNELS_API long gc_gemm_pack_elems_f(int ta, int tb, long M, long N, long K, int threads);
/* A token drawn from softmax(logits[0..V-1] / temperature) by the counter generator above (its
 * bits of (seed, step, index 0)); temperature <= 0: the argmax. A language model's generate
 * function calls it once per new token, with step = the token's position. */
GC_KERNELS_API long gc_sample_f(const float *logits, long V, double temperature, unsigned long seed, unsigned long step);
#endif /* GC_KERNELS_FLOAT */

#if GC_KERNELS_DOUBLE
typedef struct {
    const double *bias;
    int relu;
    const double *mask;
    long ldm;
    double *colsum;
    double *update;
    long ldu;
    double rate;
} gc_gemm_epilogue_d;

GC_KERNELS_API void gc_gemm_ex_d(int ta, int tb, long M, long N, long K, const double *A, long lda,
                                 const double *B, long ldb, int beta, double *C, long ldc,
                                 double *pack, int threads, const gc_gemm_epilogue_d *ep);
GC_KERNELS_API void gc_gemm_d(int ta, int tb, long M, long N, long K, const double *A, long lda,
                              const double *B, long ldb, int beta, double *C, long ldc,
                              double *pack, int threads);
GC_KERNELS_API void gc_gemm_bias_act_d(int ta, int tb, long M, long N, long K, const double *A, long lda,
                                       const double *B, long ldb, int beta, double *C, long ldc,
                                       double *pack, int threads, const double *bias, int act);
GC_KERNELS_API long gc_gemm_pack_elems_d(int ta, int tb, long M, long N, long K, int threads);
GC_KERNELS_API long gc_sample_d(const double *logits, long V, double temperature, unsigned long seed, unsigned long step);
#endif /* GC_KERNELS_DOUBLE */

#ifdef __cplusplus
}
#endif

#endif /* GRAPHC_KERNELS_H */
