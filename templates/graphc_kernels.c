/* graphc_kernels.c: the kernel library shared by every model graphc emits. The interface,
 * its conventions and the build options are in graphc_kernels.h.
 *
 * Dense matrix products, C = epilogue(beta*C + op(A) op(B)), in float and double, for
 * AVX-512, AVX2 + FMA and portable C99, with the instruction set chosen at run time.
 *
 * How this file is read
 *   The GEMM is written once, below, and compiled once per element type and instruction
 *   set: this file includes itself, and each reading takes one of four parts, chosen by
 *   the macros the reading before it defined:
 *     1. (first reading) configuration, the choice of instruction sets, gc_kernels_isa();
 *        then part 2 for float, and again for double;
 *     2. the GEMM of one element type (gc_real): the epilogue's helpers, part 3 once per
 *        instruction set compiled, the dispatch and the entry points gc_gemm*_f (or _d);
 *     3. the GEMM of one element type and instruction set: its vector layer and register
 *        tile, part 4 once per micro-kernel, packing, the blocked driver, the small loops;
 *     4. one micro-kernel: a register tile of GC_TILE_ROWS x GC_TILE_VECS vectors, its
 *        statements repeated per row and vector by the GC_EACH_* macros of part 1.
 *   Every function but the entry points is static and carries its type's and instruction
 *   set's suffix (gc_gemm_blocked_f_avx2); parts 2-4 write them under short names (the
 *   #defines at the top of each part) and #undef all they define at their end.
 *
 * Blocking scheme (Goto/BLIS loop order, roles of A and B mirrored because C
 * is row-major and vectors run along its rows):
 *
 *   for jc over N in steps of NC                        (per thread)
 *     for pc over K in ceil(K/KC) steps of equal depth (<= KC)
 *       pack op(B)[pc:+KC, jc:+NC] into NR-wide panels  -> L2-resident block
 *       for ic over M in steps of MC
 *         pack op(A)[ic:+MC, pc:+KC] into MR-tall panels
 *         for ir over the MC rows in steps of MR        A panel stays in L1
 *           for jr over the NC columns in steps of NR   B panels stream from L2
 *             micro-kernel: MR x NR tile of C in registers, kc FMAs deep
 *
 * Packing pads edge panels with zeros, so the micro-kernel always computes a
 * full tile; a tile that sticks out of C is computed into a scratch tile and
 * only its valid part is added into C.  The common edge row counts (M mod MR)
 * have micro-kernels of their own that write C directly.
 *
 * Packing costs one pass over each operand; it pays when a panel is reused
 * many times.  Products of up to GC_GEMM_DIRECT_WORK multiply-adds skip it:
 * the micro-kernel reads op(A) in place (any form: it takes a row and a step
 * stride) and op(B) in place when tb = 0; only an edge strip or panel is
 * packed, for its zero padding.  With ta = 0, op(A) is read in place at
 * every size.  Products at most one vector wide (h U^T with 10 classes) use
 * one-vector panels and a narrow micro-kernel.  The sequence of operations per
 * C element is the same packed or not, narrow or not.
 *
 * Threads (OpenMP, when compiled with -fopenmp): C is cut into parts, each a
 * contiguous range of whole NR columns (or MR rows); the threads take parts
 * one at a time (dynamic schedule, so a thread that the OS delays leaves its
 * share to the others) and run the loops above on them with their own slice
 * of `pack`.  K is never split and the block sizes do not depend on the
 * thread count or the part, so every C element sees the same sequence of
 * operations for any number of threads: results are bit-identical for 1 and
 * 2 threads.  On a busy machine (another process holds a core) a thread can
 * start or finish a scheduler slice late, and the product waits for it at its
 * end: see "Threads on a busy machine" below for how one thread then runs.
 *
 * Tiny problems (M*N*K < GC_GEMM_SMALL_WORK, at most GC_GEMM_SMALL_ROWS rows
 * of C with op(B) = B, or a dimension of 1: a matrix-vector or outer product,
 * which a batch of one row makes) take a plain loop nest with no tiling, and
 * no packing.
 *
 * Scratch: gc_gemm_pack_elems_T(ta, tb, M, N, K, threads) is what a call
 * packs into, at most (0 on the tiny path): per thread, an A area (one edge
 * panel when op(A) is read in place, else an MC x KC block, both no larger
 * than op(A) rounded up to whole panels) and a B area (the same, NC wide),
 * the largest over the three instruction sets, so a size does not depend on
 * the CPU.  It never shrinks as M, N or K grow: a workspace sized for the
 * largest batch serves every smaller one.
 *
 * Instruction sets: a build whose flags already enable AVX-512 (-march=native
 * on such a machine) compiles only that.  Otherwise, on GCC or Clang for
 * x86-64, all three are compiled (the vector ones with target attributes, so
 * the file needs no -m flags and stays C99) and each call picks the best one
 * the CPU supports, read from the compiler's CPU model (__builtin_cpu_supports:
 * no state of ours, so the code stays reentrant).  Under valgrind, whose
 * emulated CPU has no AVX-512, that is AVX2.  -DGC_GEMM_DISPATCH=0 turns the
 * run-time choice off (then the compiler flags decide); -DGC_GEMM_ISA_CAP=1
 * (or 0) caps it at AVX2 (or plain C), for tests.  Everywhere else (other
 * compilers, other architectures) the plain C is compiled alone.
 */
#if !defined(GC_KERNELS_TYPE_PASS)      /* part 1 */
/* ======================================================================
 * Part 1: configuration and the choice of instruction set
 * ====================================================================== */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "graphc_kernels.h"

#ifndef GC_GEMM_DISPATCH
#define GC_GEMM_DISPATCH 1
#endif
#ifndef GC_GEMM_ISA_CAP
#define GC_GEMM_ISA_CAP 2
#endif

#if defined(__GNUC__) && defined(__AVX512F__)
/* The flags enable AVX-512 (-march=native on this machine class): only that. */
#include <immintrin.h>
#define GC_GEMM_HAVE_AVX512 1
#elif GC_GEMM_DISPATCH && defined(__GNUC__) && defined(__x86_64__)
/* Portable flags on x86-64: every variant, chosen per call. */
#include <immintrin.h>
#define GC_GEMM_RUNTIME_ISA 1
#define GC_GEMM_HAVE_AVX512 1
#define GC_GEMM_HAVE_AVX2 1
#define GC_GEMM_HAVE_GENERIC 1
#define GC_GEMM_TARGET_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define GC_GEMM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#elif defined(__GNUC__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GC_GEMM_HAVE_AVX2 1
#else
#define GC_GEMM_HAVE_GENERIC 1
#endif
/* On AArch64, NEON is part of the base architecture: the portable kernels use its vectors
   (a 4- or 2-lane vector layer and a register tile of their own), unless -DGC_GEMM_ISA_CAP=0
   asks for plain C. */
#if defined(GC_GEMM_HAVE_GENERIC) && defined(__GNUC__) && defined(__aarch64__) && defined(__ARM_NEON) \
    && GC_GEMM_ISA_CAP >= 1
#include <arm_neon.h>
#define GC_GEMM_NEON 1
#endif
#ifndef GC_GEMM_TARGET_AVX512
#define GC_GEMM_TARGET_AVX512
#endif
#ifndef GC_GEMM_TARGET_AVX2
#define GC_GEMM_TARGET_AVX2
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------------- */
/* Block sizes and thresholds (shared by every type and instruction set)  */
/* ---------------------------------------------------------------------- */
/* KC: depth of a packed panel (256 floats or 128 doubles unless -DGC_GEMM_KC
   sets both); NC: width of a packed B block (see the scheme above).  The
   register tile MR x NR is per instruction set.  (KC 192 or 384 and NC 1024
   measured within 2 % of these at mnist and wide sizes on the Zen 5 machine;
   -D overrides them for such probes.) */
#ifndef GC_GEMM_NC
#define GC_GEMM_NC 512
#endif
/* Rows of a row-major op(B) copied per sweep across the panels of a block. */
#ifndef GC_GEMM_PACK_B_ROWS
#define GC_GEMM_PACK_B_ROWS 8
#endif

/* Tiny path (measured on AVX-512): below 16^3 multiply-adds tiling costs
   more than it saves; with op(B) row-major, up to 4 rows of C are faster as
   plain row updates than as a mostly empty 12-row register tile.  (With
   tb = 1 the tiny path is a dot product per element.) */
#define GC_GEMM_SMALL_WORK (16L * 16 * 16)
#define GC_GEMM_SMALL_ROWS 4
#define GC_GEMM_DOT_LANES 16
/* Up to this many multiply-adds the operands are read in place, not packed
   (the digits train step's GEMMs, 32 x 128 x 64 and smaller, and the
   backward GEMMs of mnist with a dimension of 10).  op(A) = A (x, h, d1:
   rows of A) is read in place at any size: the micro-kernel only broadcasts
   single values from it, MR rows at a time, and skipping its pack measured
   1-3 % faster at mnist and wide sizes and spares every thread its copy. */
#ifndef GC_GEMM_DIRECT_WORK
#define GC_GEMM_DIRECT_WORK (128L * 128 * 128)
#endif
#ifndef GC_GEMM_A_ROWS_IN_PLACE
#define GC_GEMM_A_ROWS_IN_PLACE 1
#endif
#define GC_GEMM_DIRECT_A 1
#define GC_GEMM_DIRECT_B 2
/* Below this many multiply-adds a second thread is not worth waking: a
   fork-join costs a microsecond or two when the threads are awake, and a
   scheduler slice (milliseconds) when another process holds a core, while
   one thread does 100^3 in about 5 us.  (The digits GEMMs, 32 x 128 x 64,
   and the mnist GEMMs with a dimension of 10 stay on one thread.) */
#ifndef GC_GEMM_PARALLEL_WORK
#define GC_GEMM_PARALLEL_WORK (100L * 100 * 100)
#endif
/* Parts per thread of a threaded product (see Threads above), when cutting
   finer costs nothing: C split by columns and op(A) read in place (no part
   packs a copy of it).  Otherwise one part per thread. */
#ifndef GC_GEMM_PARTS_PER_THREAD
#define GC_GEMM_PARTS_PER_THREAD 4
#endif

/* The register tile of each instruction set, MR rows x NV vectors (part 3 takes its own).
   The packing need (part 2) is the largest over all four, compiled or not: a workspace
   sized by gc_gemm_pack_elems_f serves whichever the CPU that runs it picks. */
#define GC_GEMM_MR_2 12
#define GC_GEMM_NV_2 2
#define GC_GEMM_MR_1 6
#define GC_GEMM_NV_1 2
#define GC_GEMM_MR_0 4
#define GC_GEMM_NV_0 8
/* NEON (the portable slot on AArch64): 8 x 3 float vectors (BLIS's 8 x 12 float tile on
   ARMv8), 6 x 4 double vectors; 24 of NEON's 32 registers hold C. */
#define GC_GEMM_MR_3F 8
#define GC_GEMM_NV_3F 3
#define GC_GEMM_MR_3D 6
#define GC_GEMM_NV_3D 4
/* AVX2's micro-kernels take 4 steps of k per iteration with constant strides (part 4);
   -DGC_GEMM_AVX2_UNROLL=0 keeps the plain loop (the same bits: for tests and probes). */
#ifndef GC_GEMM_AVX2_UNROLL
#define GC_GEMM_AVX2_UNROLL 1
#endif
/* Rows of op(A) per packed A block: MC = MR * GC_GEMM_MC_PANELS. */
#define GC_GEMM_MC_PANELS 16
/* Columns of C a tiny product with an update epilogue and no C (C = NULL) computes at a
   time, on the stack. */
#define GC_GEMM_SMALL_CHUNK 64

/* Elements of gc_real (the element type of part 2) per 64-byte cache line. */
#define GC_GEMM_PACK_CHUNK (64 / (long)sizeof(gc_real))
/* sgn(x) = (x > 0) - (x < 0): 1, -1, or 0 at 0 and at NaN. */
#define GC_GEMM_SGN(x) ((gc_real)(((x) > 0) - ((x) < 0)))

/* Names: gc_<stem>_<type> (part 2), gc_<stem>_<type>_<isa> (parts 3 and 4). */
#define GC_CAT_(a, b) a##b
#define GC_CAT(a, b) GC_CAT_(a, b)
#define GC_TYPED(stem) GC_CAT(GC_CAT(gc_, stem), GC_CAT(_, GC_T))
#define GC_ISA_TYPED(stem, isa) GC_CAT(GC_TYPED(stem), GC_CAT(_, isa))

/* ---------------------------------------------------------------------- */
/* Repetition, for the micro-kernels (part 4)                             */
/* ---------------------------------------------------------------------- */
/* GC_EACH_ROW(n, X, p) is X(0, p) X(1, p) ... X(n - 1, p) (n <= 12);
   GC_EACH_VEC(n, X, r) is X(r, 0) X(r, 1) ... X(r, n - 1) (n <= 8).  A tile's
   statements are written once, as macros of (row, vector), and repeated with
   constant indices: its accumulators stay named registers (an array indexed
   at run time anywhere would put them all on the stack). */
#define GC_EACH_ROW(n, X, p) GC_EACH_ROW_(n, X, p)
#define GC_EACH_ROW_(n, X, p) GC_ROWS_##n(X, p)
#define GC_ROWS_1(X, p) X(0, p)
#define GC_ROWS_2(X, p) GC_ROWS_1(X, p) X(1, p)
#define GC_ROWS_3(X, p) GC_ROWS_2(X, p) X(2, p)
#define GC_ROWS_4(X, p) GC_ROWS_3(X, p) X(3, p)
#define GC_ROWS_5(X, p) GC_ROWS_4(X, p) X(4, p)
#define GC_ROWS_6(X, p) GC_ROWS_5(X, p) X(5, p)
#define GC_ROWS_7(X, p) GC_ROWS_6(X, p) X(6, p)
#define GC_ROWS_8(X, p) GC_ROWS_7(X, p) X(7, p)
#define GC_ROWS_9(X, p) GC_ROWS_8(X, p) X(8, p)
#define GC_ROWS_10(X, p) GC_ROWS_9(X, p) X(9, p)
#define GC_ROWS_11(X, p) GC_ROWS_10(X, p) X(10, p)
#define GC_ROWS_12(X, p) GC_ROWS_11(X, p) X(11, p)
#define GC_EACH_VEC(n, X, r) GC_EACH_VEC_(n, X, r)
#define GC_EACH_VEC_(n, X, r) GC_VECS_##n(X, r)
#define GC_VECS_1(X, r) X(r, 0)
#define GC_VECS_2(X, r) GC_VECS_1(X, r) X(r, 1)
#define GC_VECS_3(X, r) GC_VECS_2(X, r) X(r, 2)
#define GC_VECS_4(X, r) GC_VECS_3(X, r) X(r, 3)
#define GC_VECS_5(X, r) GC_VECS_4(X, r) X(r, 4)
#define GC_VECS_6(X, r) GC_VECS_5(X, r) X(r, 5)
#define GC_VECS_7(X, r) GC_VECS_6(X, r) X(r, 6)
#define GC_VECS_8(X, r) GC_VECS_7(X, r) X(r, 7)
/* Rows of A are read through one pointer per 3 rows, a_g0 .. a_g3 (see part 4). */
#define GC_GROUPS_(n) GC_GROUPS__(n)
#define GC_GROUPS__(n) GC_GROUPS_OF_##n
#define GC_GROUPS_OF_1 1
#define GC_GROUPS_OF_2 1
#define GC_GROUPS_OF_3 1
#define GC_GROUPS_OF_4 2
#define GC_GROUPS_OF_5 2
#define GC_GROUPS_OF_6 2
#define GC_GROUPS_OF_7 3
#define GC_GROUPS_OF_8 3
#define GC_GROUPS_OF_9 3
#define GC_GROUPS_OF_10 4
#define GC_GROUPS_OF_11 4
#define GC_GROUPS_OF_12 4
#define GC_TILE_A_0 a_g0[0 * a_rs]
#define GC_TILE_A_1 a_g0[1 * a_rs]
#define GC_TILE_A_2 a_g0[2 * a_rs]
#define GC_TILE_A_3 a_g1[0 * a_rs]
#define GC_TILE_A_4 a_g1[1 * a_rs]
#define GC_TILE_A_5 a_g1[2 * a_rs]
#define GC_TILE_A_6 a_g2[0 * a_rs]
#define GC_TILE_A_7 a_g2[1 * a_rs]
#define GC_TILE_A_8 a_g2[2 * a_rs]
#define GC_TILE_A_9 a_g3[0 * a_rs]
#define GC_TILE_A_10 a_g3[1 * a_rs]
#define GC_TILE_A_11 a_g3[2 * a_rs]
/* The statements of a tile, per row r and vector v (acc<r>_<v> is its accumulator). */
#define GC_ACC(r, v) acc##r##_##v
#define GC_TILE_ZERO(r, v) gc_vec GC_ACC(r, v) = gc_vec_zero();
#define GC_TILE_A_POINTER(g, unused) const gc_real *a_g##g = a + 3 * g * a_rs;
#define GC_TILE_A_STEP(g, unused) a_g##g += GC_TILE_AKS;
#define GC_TILE_LOAD_B(unused, v) const gc_vec b##v = gc_vec_loadu(b + v * GC_VEC_WIDTH);
/* One step k of a micro-kernel; GC_TILE_AKS and GC_TILE_BKS, defined where it is used, are the
   steps of op(A) and op(B) (the variables a_ks and b_ks, or constants the caller tested for). */
#define GC_TILE_STEP \
    { GC_TILE_EACH_VEC(GC_TILE_LOAD_B) GC_TILE_EACH_ROW(GC_TILE_ROW_FMA) GC_TILE_EACH_GROUP(GC_TILE_A_STEP) \
      b += GC_TILE_BKS; }
#define GC_TILE_STEP4 { GC_TILE_STEP GC_TILE_STEP GC_TILE_STEP GC_TILE_STEP }
#define GC_TILE_PREFETCH_C(r, unused) \
    _mm_prefetch((const char *)(C + r * ldc), _MM_HINT_T0); \
    _mm_prefetch((const char *)(C + r * ldc + GC_TILE_VECS * GC_VEC_WIDTH - 1), _MM_HINT_T0);
#define GC_TILE_ROW_FMA(r, unused) \
    { const gc_vec a##r = gc_vec_set1(GC_TILE_A_##r); GC_EACH_VEC(GC_TILE_VECS, GC_TILE_FMA, r) }
#define GC_TILE_FMA(r, v) GC_ACC(r, v) = gc_vec_fma(a##r, b##v, GC_ACC(r, v));
#define GC_TILE_ADD_C(r, v) GC_ACC(r, v) = gc_vec_add(gc_vec_loadu(C + r * ldc + v * GC_VEC_WIDTH), GC_ACC(r, v));
#define GC_TILE_LOAD_BIAS(unused, v) const gc_vec bias##v = gc_vec_loadu(ep->bias + col + v * GC_VEC_WIDTH);
#define GC_TILE_ADD_BIAS(r, v) GC_ACC(r, v) = gc_vec_add(GC_ACC(r, v), bias##v);
#define GC_TILE_RELU(r, v) GC_ACC(r, v) = gc_vec_relu(GC_ACC(r, v));
#define GC_TILE_MASK(r, v) \
    GC_ACC(r, v) = gc_vec_mul(GC_ACC(r, v), gc_vec_sgn(gc_vec_loadu(mask + r * ep->ldm + v * GC_VEC_WIDTH)));
#define GC_TILE_UPDATE(r, v) \
    gc_vec_storeu(update + r * ep->ldu + v * GC_VEC_WIDTH, \
                  gc_vec_fnma(rate, GC_ACC(r, v), gc_vec_loadu(update + r * ep->ldu + v * GC_VEC_WIDTH)));
#define GC_TILE_STORE(r, v) gc_vec_storeu(C + r * ldc + v * GC_VEC_WIDTH, GC_ACC(r, v));
#define GC_TILE_LOAD_SUM(unused, v) gc_vec sum##v = gc_vec_loadu(ep->colsum + col + v * GC_VEC_WIDTH);
#define GC_TILE_ADD_SUM(r, v) sum##v = gc_vec_add(sum##v, GC_ACC(r, v));
#define GC_TILE_STORE_SUM(unused, v) gc_vec_storeu(ep->colsum + col + v * GC_VEC_WIDTH, sum##v);
/* Every (row, vector) of the tile, rows outer; every vector; every row; every pointer into A. */
#define GC_TILE_EACH(X) GC_EACH_ROW(GC_TILE_ROWS, GC_TILE_ROW_OF, X)
#define GC_TILE_ROW_OF(r, X) GC_EACH_VEC(GC_TILE_VECS, X, r)
#define GC_TILE_EACH_VEC(X) GC_EACH_VEC(GC_TILE_VECS, X, 0)
#define GC_TILE_EACH_ROW(X) GC_EACH_ROW(GC_TILE_ROWS, X, 0)
#define GC_TILE_EACH_GROUP(X) GC_EACH_ROW(GC_GROUPS_(GC_TILE_ROWS), X, 0)

/* ---------------------------------------------------------------------- */
/* Choice of instruction set                                              */
/* ---------------------------------------------------------------------- */
/* 2: AVX-512, 1: AVX2 + FMA, 3: NEON (AArch64), 0: plain C.  Asked per call (a
   few loads of the compiler runtime's CPU model, filled in when the library
   loads).  NEON runs as the portable slot: the dispatch below treats 3 as 0. */
static int gc_kernels_isa_now(void)
{
#if defined(GC_GEMM_NEON)
    return 3;
#elif defined(GC_GEMM_RUNTIME_ISA)
    __builtin_cpu_init();
    if (GC_GEMM_ISA_CAP >= 2 && __builtin_cpu_supports("avx512f")) return 2;
    if (GC_GEMM_ISA_CAP >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
    return 0;
#elif defined(GC_GEMM_HAVE_AVX512)
    return 2;
#elif defined(GC_GEMM_HAVE_AVX2)
    return 1;
#else
    return 0;
#endif
}

GC_KERNELS_API int gc_kernels_isa(void)
{
    return gc_kernels_isa_now();
}

static unsigned long gc_mix32(unsigned long h)
{
    h &= 0xffffffffUL;
    h ^= h >> 16;
    h = (h * 0x7feb352dUL) & 0xffffffffUL;
    h ^= h >> 15;
    h = (h * 0x846ca68bUL) & 0xffffffffUL;
    h ^= h >> 16;
    return h;
}

GC_KERNELS_API unsigned long gc_random_bits(unsigned long seed, unsigned long step, unsigned long index)
{
    unsigned long key = gc_mix32(((seed & 0xffffffffUL) * 0x9E3779B9UL + gc_mix32(step)) & 0xffffffffUL);
    return gc_mix32(key ^ (index & 0xffffffffUL));
}

GC_KERNELS_API int gc_size_poly(const size_t *terms, int count, const size_t *x, int dims, size_t *out)
{
    size_t acc = 0;
    for (int t = 0; t < count; ++t, terms += dims + 1) {
        size_t term = terms[0];
        for (int d = 0; d < dims; ++d) {
            for (size_t p = 0; p < terms[d + 1]; ++p) {
                if (x[d] != 0 && term > SIZE_MAX / x[d]) {
                    return 0;
                }
                term *= x[d];
            }
        }
        if (term > SIZE_MAX - acc) {
            return 0;
        }
        acc += term;
    }
    *out = acc;
    return 1;
}

/* ---------------------------------------------------------------------- */
/* Threads on a busy machine                                              */
/* ---------------------------------------------------------------------- */
/* A product split over threads ends when its last thread does. When another process holds
   a core, one thread may start, or pause, for a scheduler slice (milliseconds) while the
   other waits, and every split product and threaded loop of a call pays that: two threads
   ran a train step 8x slower than one. So each split product notes how late its threads
   started and how long the first thread waited at its end; a wait of more than GC_BUSY_LATE
   seconds and more than GC_BUSY_SHARE of the product's time (a large product still gains
   from a second thread that starts a slice late), in GC_BUSY_STRIKES products in a row (a
   quiet virtual machine wakes a sleeping thread late now and then), marks the machine busy, and
   for the next GC_BUSY_HOLD seconds (gc_kernels_busy_hold changes it) products and a model's
   loops run on one thread; then more are tried again (and if the machine is still busy, the
   next hold is twice as long, up to 16 times). The thread count changes, never the bits. The mark is the
   library's one piece of state, read and written atomically (it assumes omp_get_wtime()
   is one clock for all threads, as in libgomp and LLVM's libomp). */
#ifndef GC_BUSY_LATE
#define GC_BUSY_LATE 1e-3
#endif
#ifndef GC_BUSY_HOLD
#define GC_BUSY_HOLD 0.2
#endif
#ifndef GC_BUSY_SHARE
#define GC_BUSY_SHARE 0.25
#endif
#ifndef GC_BUSY_STRIKES
#define GC_BUSY_STRIKES 2   /* late products in a row: one alone is often a quiet VM's slow wake-up */
#endif
#ifdef _OPENMP
static double gc_busy_until = 0.0;         /* omp_get_wtime() until which one thread runs */
static double gc_busy_hold = GC_BUSY_HOLD;  /* gc_kernels_busy_hold */
static int gc_busy_strikes = 0;             /* split products in a row that found a late thread */
static double gc_busy_times = 1.0;          /* the hold's multiple: 1, 2, 4 ... 16 while still busy */

/* A thread waited `late` seconds of a product that took `took`: the machine is busy when that
   happens in GC_BUSY_STRIKES split products in a row. */
static void gc_note_wait(double late, double took)
{
    if (late > GC_BUSY_LATE && late > GC_BUSY_SHARE * took) {
        int strikes;
#pragma omp atomic capture
        strikes = ++gc_busy_strikes;
        if (strikes >= GC_BUSY_STRIKES) {
            /* busy again within a hold of the last one's end: hold twice as long (to 16 holds),
               so that a machine that stays busy is probed less and less often */
            const double now = omp_get_wtime();
            double hold, until, times;
#pragma omp atomic read
            hold = gc_busy_hold;
#pragma omp atomic read
            until = gc_busy_until;
#pragma omp atomic read
            times = gc_busy_times;
            times = now < until + hold ? (times < 16.0 ? 2.0 * times : 16.0) : 1.0;
#pragma omp atomic write
            gc_busy_times = times;
#pragma omp atomic write
            gc_busy_until = now + times * hold;
#pragma omp atomic write
            gc_busy_strikes = 0;
        }
    } else {
#pragma omp atomic write
        gc_busy_strikes = 0;
    }
}
#endif

GC_KERNELS_API double gc_kernels_busy_hold(double seconds)
{
#ifdef _OPENMP
    double previous;
#pragma omp atomic read
    previous = gc_busy_hold;
    if (seconds >= 0) {
#pragma omp atomic write
        gc_busy_hold = seconds;
#pragma omp atomic write
        gc_busy_until = 0.0;
#pragma omp atomic write
        gc_busy_times = 1.0;
    }
    return previous;
#else
    (void)seconds;
    return 0.0;
#endif
}

GC_KERNELS_API void gc_kernels_note_wait(double late, double took)
{
#ifdef _OPENMP
    gc_note_wait(late, took);
#else
    (void)late;
    (void)took;
#endif
}

GC_KERNELS_API int gc_kernels_threads(int threads)
{
#ifdef _OPENMP
    int team = omp_get_max_threads();
    if (team > threads) team = threads;
    if (team > 1) {
        double until;
#pragma omp atomic read
        until = gc_busy_until;
        if (omp_get_wtime() < until) team = 1;
    }
    return team > 1 ? team : 1;
#else
    (void)threads;
    return 1;
#endif
}

/* ---------------------------------------------------------------------- */
/* The GEMM of each element type (part 2, through part 3 and part 4)      */
/* ---------------------------------------------------------------------- */
#define GC_KERNELS_TYPE_PASS 1
#if GC_KERNELS_FLOAT
#define gc_real float
#define GC_REAL_IS_DOUBLE 0
#define GC_T f
#include "graphc_kernels.c"
#undef GC_T
#undef GC_REAL_IS_DOUBLE
#undef gc_real
#endif
#if GC_KERNELS_DOUBLE
#define gc_real double
#define GC_REAL_IS_DOUBLE 1
#define GC_T d
#include "graphc_kernels.c"
#undef GC_T
#undef GC_REAL_IS_DOUBLE
#undef gc_real
#endif
#undef GC_KERNELS_TYPE_PASS

#elif !defined(GC_KERNELS_ISA_PASS)     /* part 2 */
/* ======================================================================
 * Part 2: the GEMM of one element type, gc_real (GC_T: f or d)
 * ====================================================================== */
#define gc_epilogue GC_TYPED(gemm_epilogue)
#define gc_epilogue_at GC_TYPED(gemm_epilogue_at)
#define gc_by_columns GC_TYPED(gemm_by_columns)
#define gc_pack_area GC_TYPED(gemm_pack_area)
#define gc_pack_thread_elems GC_TYPED(gemm_pack_thread_elems)
#define gc_is_small GC_TYPED(gemm_is_small)
#define gc_direct_flags GC_TYPED(gemm_direct_flags)
#define gc_team_bound GC_TYPED(gemm_team_bound)
#define gc_small_isa GC_TYPED(gemm_small_isa)
#define gc_part_isa GC_TYPED(gemm_part_isa)
#define gc_gemm_ex_T GC_TYPED(gemm_ex)
#define gc_gemm_T GC_TYPED(gemm)
#define gc_gemm_bias_act_T GC_TYPED(gemm_bias_act)
#define gc_gemm_pack_elems_T GC_TYPED(gemm_pack_elems)
#define gc_sample_T GC_TYPED(sample)
#ifdef GC_GEMM_KC
#define GC_KC GC_GEMM_KC
#elif GC_REAL_IS_DOUBLE
#define GC_KC 128
#else
#define GC_KC 256
#endif

/* The epilogue of the sub-matrix of C at (i0, j0), in *out; NULL stays NULL. */
static const gc_epilogue *gc_epilogue_at(const gc_epilogue *ep, long i0, long j0, gc_epilogue *out)
{
    if (!ep) return 0;
    *out = *ep;
    if (out->bias) out->bias += j0;
    if (out->mask) out->mask += i0 * out->ldm + j0;
    if (out->colsum) out->colsum += j0;
    if (out->update) out->update += i0 * out->ldu + j0;
    return out;
}

/* Whether threads split C by columns (else by rows): the smaller operand is
   the one every part reads whole.  Column sums need columns, so that each
   column's rows are added by one thread in order. */
static int gc_by_columns(long M, long N, const gc_epilogue *ep)
{
    return M <= N || (ep && ep->colsum);
}

/* Elements one packed operand takes in a thread's share of `pack` (see gc_blocked): with
   direct (the operand read in place), one zero-padded edge panel of `width` lanes; else a
   block of `lanes` lanes rounded up to panels of `width`, at most `cap`. The depth of a
   panel is at most K and KC; counted as K rounded up to a cache line (at most KC, itself a
   multiple of one), so the B area after the A area stays aligned. The bound grows with
   lanes and K: a larger product never needs less. */
static long gc_pack_area(int direct, long lanes, long width, long cap, long K)
{
    const long depth = (K + GC_GEMM_PACK_CHUNK - 1) / GC_GEMM_PACK_CHUNK * GC_GEMM_PACK_CHUNK;
    const long kc = depth < GC_KC ? depth : GC_KC;
    long rows = width;
    if (!direct) {
        rows = (lanes + width - 1) / width * width;
        cap = (cap + width - 1) / width * width;
        if (rows > cap) rows = cap;
    }
    return rows * kc;
}

/* Whether a product takes the tiny path (plain loops, no packing): few multiply-adds, few
   rows of C with a row-major operand, or a matrix-vector or outer product (a dimension of
   1: a batch of one row), where a packed panel would be used once. */
static int gc_is_small(int ta, int tb, long M, long N, long K)
{
    return K <= 0 || M * N * K < GC_GEMM_SMALL_WORK || ((!tb || !ta) && M <= GC_GEMM_SMALL_ROWS)
           || M == 1 || N == 1 || K == 1;
}

/* Elements of `pack` one thread's part of a (not tiny) product needs: the largest over the
   four register tiles (plain C, AVX2, AVX-512, NEON) of its A area plus its B area (part 3's
   gc_blocked). */
static long gc_pack_thread_elems(int ta, int tb, long M, long N, long K, int direct)
{
#if GC_REAL_IS_DOUBLE
    static const long tiles[4][2] = { { GC_GEMM_MR_0, GC_GEMM_NV_0 }, { GC_GEMM_MR_1, GC_GEMM_NV_1 },
                                      { GC_GEMM_MR_2, GC_GEMM_NV_2 }, { GC_GEMM_MR_3D, GC_GEMM_NV_3D } };
#else
    static const long tiles[4][2] = { { GC_GEMM_MR_0, GC_GEMM_NV_0 }, { GC_GEMM_MR_1, GC_GEMM_NV_1 },
                                      { GC_GEMM_MR_2, GC_GEMM_NV_2 }, { GC_GEMM_MR_3F, GC_GEMM_NV_3F } };
#endif
    const long widths[4] = {1, 32 / (long)sizeof(gc_real), 64 / (long)sizeof(gc_real), 16 / (long)sizeof(gc_real)};
    const int direct_a = (direct & GC_GEMM_DIRECT_A) != 0, direct_b = (direct & GC_GEMM_DIRECT_B) != 0 && !tb;
    long need = 0;
    int kind;
    (void)ta;
    for (kind = 0; kind < 4; ++kind) {
        const long mr = tiles[kind][0], nr = tiles[kind][1] * widths[kind];
        const long elems = gc_pack_area(direct_a, M, mr, mr * GC_GEMM_MC_PANELS, K)
                           + gc_pack_area(direct_b, N, nr, GC_GEMM_NC, K);
        if (elems > need) need = elems;
    }
    return need;
}

/* Which operands a (not tiny) product reads in place: GC_GEMM_DIRECT_A and _B bits. */
static int gc_direct_flags(int ta, long M, long N, long K)
{
    int direct = 0;
    if (M * N * K <= GC_GEMM_DIRECT_WORK) direct = GC_GEMM_DIRECT_A | GC_GEMM_DIRECT_B;
    if (!ta && GC_GEMM_A_ROWS_IN_PLACE) direct |= GC_GEMM_DIRECT_A;
    return direct;
}

/* The kernels, once per instruction set (part 3). */
#define GC_KERNELS_ISA_PASS 1
#ifdef GC_GEMM_HAVE_AVX512
#define GC_ISA avx512
#define GC_ISA_KIND 2
#define GC_ISA_ATTR GC_GEMM_TARGET_AVX512
#include "graphc_kernels.c"
#undef GC_ISA_ATTR
#undef GC_ISA_KIND
#undef GC_ISA
#endif
#ifdef GC_GEMM_HAVE_AVX2
#define GC_ISA avx2
#define GC_ISA_KIND 1
#define GC_ISA_ATTR GC_GEMM_TARGET_AVX2
#include "graphc_kernels.c"
#undef GC_ISA_ATTR
#undef GC_ISA_KIND
#undef GC_ISA
#endif
#ifdef GC_GEMM_HAVE_GENERIC
#define GC_ISA generic
#define GC_ISA_KIND 0
#define GC_ISA_ATTR
#include "graphc_kernels.c"
#undef GC_ISA_ATTR
#undef GC_ISA_KIND
#undef GC_ISA
#endif
#undef GC_KERNELS_ISA_PASS

/* The threads that may share a product (each with its own part of `pack`). */
static int gc_team_bound(int threads, long M, long N, long K)
{
    /* Counted the same without OpenMP (one thread then runs): a size does not depend on
       how the library was compiled. */
    return threads > 1 && M * N * K >= GC_GEMM_PARALLEL_WORK ? threads : 1;
}

GC_KERNELS_API long gc_gemm_pack_elems_T(int ta, int tb, long M, long N, long K, int threads)
{
    if (M <= 0 || N <= 0 || gc_is_small(ta, tb, M, N, K)) return 0;
    return (long)gc_team_bound(threads, M, N, K) * gc_pack_thread_elems(ta, tb, M, N, K, gc_direct_flags(ta, M, N, K));
}

static void gc_small_isa(int isa, int ta, int tb, long M, long N, long K,
                         const gc_real *A, long lda, const gc_real *B, long ldb,
                         int beta, gc_real *C, long ldc, const gc_epilogue *ep)
{
#ifdef GC_GEMM_HAVE_AVX512
    if (isa == 2) {
        GC_ISA_TYPED(gemm_small, avx512)(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep);
        return;
    }
#endif
#ifdef GC_GEMM_HAVE_AVX2
    if (isa == 1) {
        GC_ISA_TYPED(gemm_small, avx2)(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep);
        return;
    }
#endif
#ifdef GC_GEMM_HAVE_GENERIC
    GC_ISA_TYPED(gemm_small, generic)(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep);
#endif
    (void)isa;
}

static void gc_part_isa(int isa, long part, long parts, int ta, int tb, long M, long N, long K,
                        const gc_real *A, long lda, const gc_real *B, long ldb,
                        int beta, gc_real *C, long ldc,
                        const gc_epilogue *ep, gc_real *pack, int direct)
{
#ifdef GC_GEMM_HAVE_AVX512
    if (isa == 2) {
        GC_ISA_TYPED(gemm_part, avx512)(part, parts, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep, pack,
                                        direct);
        return;
    }
#endif
#ifdef GC_GEMM_HAVE_AVX2
    if (isa == 1) {
        GC_ISA_TYPED(gemm_part, avx2)(part, parts, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep, pack,
                                      direct);
        return;
    }
#endif
#ifdef GC_GEMM_HAVE_GENERIC
    GC_ISA_TYPED(gemm_part, generic)(part, parts, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep, pack,
                                     direct);
#endif
    (void)isa;
}

/* ---------------------------------------------------------------------- */
/* Entry points                                                           */
/* ---------------------------------------------------------------------- */

GC_KERNELS_API void gc_gemm_ex_T(int ta, int tb, long M, long N, long K,
                                 const gc_real *A, long lda, const gc_real *B, long ldb,
                                 int beta, gc_real *C, long ldc, gc_real *pack, int threads,
                                 const gc_epilogue *ep)
{
    const int isa = gc_kernels_isa_now();
    int direct;
    (void)threads;
    if (M <= 0 || N <= 0) return;
    if (gc_is_small(ta, tb, M, N, K)) {
        gc_small_isa(isa, ta, tb, M, N, K > 0 ? K : 0, A, lda, B, ldb, beta, C, ldc, ep);
        return;
    }
    direct = gc_direct_flags(ta, M, N, K);
#ifdef _OPENMP
    if (gc_team_bound(threads, M, N, K) > 1) {
        const int team = gc_kernels_threads(threads);
        if (team > 1) {
            const int fine = gc_by_columns(M, N, ep) && (direct & GC_GEMM_DIRECT_A);
            const long parts = (long)team * (fine ? GC_GEMM_PARTS_PER_THREAD : 1);
            /* each thread's part of pack: what the whole product would need (a part needs no more) */
            const long share = gc_pack_thread_elems(ta, tb, M, N, K, direct);
            const double forked = omp_get_wtime();
            double first_done = forked, late = 0.0;
#pragma omp parallel num_threads(team) reduction(max: late)
            {
                const int me = omp_get_thread_num();
                gc_real *thread_pack = pack + (long)me * share;
                long part;
                if (me != 0) late = omp_get_wtime() - forked;   /* how late this thread started */
#pragma omp for schedule(dynamic, 1) nowait
                for (part = 0; part < parts; ++part)
                    gc_part_isa(isa, part, parts, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc,
                                ep, thread_pack, direct);
                if (me == 0) first_done = omp_get_wtime();
            }
            {
                const double joined = omp_get_wtime(), end_wait = joined - first_done;
                gc_note_wait(end_wait > late ? end_wait : late, joined - forked);
            }
            return;
        }
    }
#endif
    gc_part_isa(isa, 0, 1, ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, ep, pack, direct);
}

GC_KERNELS_API void gc_gemm_bias_act_T(int ta, int tb, long M, long N, long K,
                                       const gc_real *A, long lda, const gc_real *B, long ldb,
                                       int beta, gc_real *C, long ldc, gc_real *pack, int threads,
                                       const gc_real *bias, int act)
{
    gc_epilogue ep;
    ep.bias = bias;
    ep.relu = act == 1;
    ep.mask = 0;
    ep.ldm = 0;
    ep.colsum = 0;
    ep.update = 0;
    ep.ldu = 0;
    ep.rate = 0;
    gc_gemm_ex_T(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, threads, bias || act == 1 ? &ep : 0);
}

GC_KERNELS_API void gc_gemm_T(int ta, int tb, long M, long N, long K,
                              const gc_real *A, long lda, const gc_real *B, long ldb,
                              int beta, gc_real *C, long ldc, gc_real *pack, int threads)
{
    gc_gemm_ex_T(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc, pack, threads, 0);
}

/* An index i of logits[0..V-1] drawn with probability softmax(logits / temperature)_i: with m the
   largest logit and e_i = exp((l_i - m) / temperature), the first i whose running sum of e exceeds
   u * (the sum of all e), u = gc_random_bits(seed, step, 0) / 2^32. temperature <= 0 (or V = 1):
   the argmax, the first on a tie. graphc/core/random.py's sample_index is the same in NumPy. */
GC_KERNELS_API long gc_sample_T(const gc_real *logits, long V, double temperature,
                                unsigned long seed, unsigned long step)
{
    long i, best = 0;
    double top, total = 0.0, acc = 0.0, u;
    for (i = 1; i < V; ++i) {
        if (logits[i] > logits[best]) best = i;
    }
    if (!(temperature > 0.0) || V <= 1) return best;
    top = (double)logits[best];
    for (i = 0; i < V; ++i) total += exp(((double)logits[i] - top) / temperature);
    u = (double)gc_random_bits(seed, step, 0) / 4294967296.0 * total;
    for (i = 0; i < V; ++i) {
        acc += exp(((double)logits[i] - top) / temperature);
        if (acc > u) return i;
    }
    return best;
}

#undef GC_KC
#undef gc_sample_T
#undef gc_gemm_pack_elems_T
#undef gc_gemm_bias_act_T
#undef gc_gemm_T
#undef gc_gemm_ex_T
#undef gc_part_isa
#undef gc_small_isa
#undef gc_pack_thread_elems
#undef gc_pack_area
#undef gc_is_small
#undef gc_direct_flags
#undef gc_team_bound
#undef gc_by_columns
#undef gc_epilogue_at
#undef gc_epilogue

#elif !defined(GC_KERNELS_TILE_PASS)    /* part 3 */
/* ======================================================================
 * Part 3: the GEMM of one element type and instruction set (GC_ISA)
 * ====================================================================== */
#define GC_IN_ISA(stem) GC_ISA_TYPED(stem, GC_ISA)
#define gc_micro_kernel GC_IN_ISA(gemm_micro_kernel)
#define gc_micro_kernel_narrow GC_IN_ISA(gemm_micro_kernel_narrow)
#define gc_micro_kernel_edge1 GC_IN_ISA(GC_CAT(gemm_micro_kernel_r, GC_GEMM_EDGE1))
#define gc_micro_kernel_edge2 GC_IN_ISA(GC_CAT(gemm_micro_kernel_r, GC_GEMM_EDGE2))
#define gc_pack_copy GC_IN_ISA(gemm_pack_copy)
#define gc_pack_transpose GC_IN_ISA(gemm_pack_transpose)
#define gc_pack_a GC_IN_ISA(gemm_pack_a)
#define gc_pack_b GC_IN_ISA(gemm_pack_b)
#define gc_epilogue_row GC_IN_ISA(gemm_epilogue_row)
#define gc_store_edge GC_IN_ISA(gemm_store_edge)
#define gc_blocked GC_IN_ISA(gemm_blocked)
#define gc_dot GC_IN_ISA(gemm_dot)
#define gc_small GC_IN_ISA(gemm_small)
#define gc_part GC_IN_ISA(gemm_part)

/* The vector layer: gc_vec holds GC_VEC_WIDTH values of gc_real. */
#if GC_ISA_KIND == 2 && GC_REAL_IS_DOUBLE
#define gc_vec __m512d
#define GC_VEC_WIDTH 8
#define gc_vec_zero() _mm512_setzero_pd()
#define gc_vec_loadu(p) _mm512_loadu_pd(p)
#define gc_vec_storeu(p, x) _mm512_storeu_pd((p), (x))
#define gc_vec_set1(s) _mm512_set1_pd(s)
#define gc_vec_fma(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define gc_vec_fnma(a, b, c) _mm512_fnmadd_pd((a), (b), (c))
#define gc_vec_add(a, b) _mm512_add_pd((a), (b))
#define gc_vec_relu(x) _mm512_max_pd(_mm512_setzero_pd(), (x))  /* NaN stays NaN */
#define gc_vec_mul(a, b) _mm512_mul_pd((a), (b))
#define gc_vec_sgn(x) _mm512_sub_pd(_mm512_maskz_mov_pd(_mm512_cmp_pd_mask((x), _mm512_setzero_pd(), _CMP_GT_OQ), _mm512_set1_pd(1.0)), \
                                    _mm512_maskz_mov_pd(_mm512_cmp_pd_mask((x), _mm512_setzero_pd(), _CMP_LT_OQ), _mm512_set1_pd(1.0)))
#elif GC_ISA_KIND == 2
#define gc_vec __m512
#define GC_VEC_WIDTH 16
#define gc_vec_zero() _mm512_setzero_ps()
#define gc_vec_loadu(p) _mm512_loadu_ps(p)
#define gc_vec_storeu(p, x) _mm512_storeu_ps((p), (x))
#define gc_vec_set1(s) _mm512_set1_ps(s)
#define gc_vec_fma(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define gc_vec_fnma(a, b, c) _mm512_fnmadd_ps((a), (b), (c))
#define gc_vec_add(a, b) _mm512_add_ps((a), (b))
#define gc_vec_relu(x) _mm512_max_ps(_mm512_setzero_ps(), (x))  /* NaN stays NaN */
#define gc_vec_mul(a, b) _mm512_mul_ps((a), (b))
#define gc_vec_sgn(x) _mm512_sub_ps(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask((x), _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f)), \
                                    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask((x), _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_set1_ps(1.0f)))
#elif GC_ISA_KIND == 1 && GC_REAL_IS_DOUBLE
#define gc_vec __m256d
#define GC_VEC_WIDTH 4
#define gc_vec_zero() _mm256_setzero_pd()
#define gc_vec_loadu(p) _mm256_loadu_pd(p)
#define gc_vec_storeu(p, x) _mm256_storeu_pd((p), (x))
#define gc_vec_set1(s) _mm256_set1_pd(s)
#define gc_vec_fma(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define gc_vec_fnma(a, b, c) _mm256_fnmadd_pd((a), (b), (c))
#define gc_vec_add(a, b) _mm256_add_pd((a), (b))
#define gc_vec_relu(x) _mm256_max_pd(_mm256_setzero_pd(), (x))  /* NaN stays NaN */
#define gc_vec_mul(a, b) _mm256_mul_pd((a), (b))
#define gc_vec_sgn(x) _mm256_sub_pd(_mm256_and_pd(_mm256_cmp_pd((x), _mm256_setzero_pd(), _CMP_GT_OQ), _mm256_set1_pd(1.0)), \
                                    _mm256_and_pd(_mm256_cmp_pd((x), _mm256_setzero_pd(), _CMP_LT_OQ), _mm256_set1_pd(1.0)))
#elif GC_ISA_KIND == 1
#define gc_vec __m256
#define GC_VEC_WIDTH 8
#define gc_vec_zero() _mm256_setzero_ps()
#define gc_vec_loadu(p) _mm256_loadu_ps(p)
#define gc_vec_storeu(p, x) _mm256_storeu_ps((p), (x))
#define gc_vec_set1(s) _mm256_set1_ps(s)
#define gc_vec_fma(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define gc_vec_fnma(a, b, c) _mm256_fnmadd_ps((a), (b), (c))
#define gc_vec_add(a, b) _mm256_add_ps((a), (b))
#define gc_vec_relu(x) _mm256_max_ps(_mm256_setzero_ps(), (x))  /* NaN stays NaN */
#define gc_vec_mul(a, b) _mm256_mul_ps((a), (b))
#define gc_vec_sgn(x) _mm256_sub_ps(_mm256_and_ps(_mm256_cmp_ps((x), _mm256_setzero_ps(), _CMP_GT_OQ), _mm256_set1_ps(1.0f)), \
                                    _mm256_and_ps(_mm256_cmp_ps((x), _mm256_setzero_ps(), _CMP_LT_OQ), _mm256_set1_ps(1.0f)))
#elif defined(GC_GEMM_NEON) && GC_REAL_IS_DOUBLE
/* AArch64 NEON (the portable slot on that architecture). vmaxq is FMAX: NaN stays NaN. */
#define gc_vec float64x2_t
#define GC_VEC_WIDTH 2
#define gc_vec_zero() vdupq_n_f64(0.0)
#define gc_vec_loadu(p) vld1q_f64(p)
#define gc_vec_storeu(p, x) vst1q_f64((p), (x))
#define gc_vec_set1(s) vdupq_n_f64(s)
#define gc_vec_fma(a, b, c) vfmaq_f64((c), (a), (b))
#define gc_vec_fnma(a, b, c) vfmsq_f64((c), (a), (b))
#define gc_vec_add(a, b) vaddq_f64((a), (b))
#define gc_vec_relu(x) vmaxq_f64(vdupq_n_f64(0.0), (x))
#define gc_vec_mul(a, b) vmulq_f64((a), (b))
#define GC_NEON_ONES(m) vreinterpretq_f64_u64(vandq_u64((m), vreinterpretq_u64_f64(vdupq_n_f64(1.0))))
#define gc_vec_sgn(x) vsubq_f64(GC_NEON_ONES(vcgtq_f64((x), vdupq_n_f64(0.0))), \
                                GC_NEON_ONES(vcltq_f64((x), vdupq_n_f64(0.0))))
#elif defined(GC_GEMM_NEON)
#define gc_vec float32x4_t
#define GC_VEC_WIDTH 4
#define gc_vec_zero() vdupq_n_f32(0.0f)
#define gc_vec_loadu(p) vld1q_f32(p)
#define gc_vec_storeu(p, x) vst1q_f32((p), (x))
#define gc_vec_set1(s) vdupq_n_f32(s)
#define gc_vec_fma(a, b, c) vfmaq_f32((c), (a), (b))
#define gc_vec_fnma(a, b, c) vfmsq_f32((c), (a), (b))
#define gc_vec_add(a, b) vaddq_f32((a), (b))
#define gc_vec_relu(x) vmaxq_f32(vdupq_n_f32(0.0f), (x))
#define gc_vec_mul(a, b) vmulq_f32((a), (b))
#define GC_NEON_ONES(m) vreinterpretq_f32_u32(vandq_u32((m), vreinterpretq_u32_f32(vdupq_n_f32(1.0f))))
#define gc_vec_sgn(x) vsubq_f32(GC_NEON_ONES(vcgtq_f32((x), vdupq_n_f32(0.0f))), \
                                GC_NEON_ONES(vcltq_f32((x), vdupq_n_f32(0.0f))))
#else
/* Portable C99: a "vector" is one scalar; the tile is still register-sized
   and fully unrolled, which -O3 vectorises reasonably. */
#define gc_vec gc_real
#define GC_VEC_WIDTH 1
#define gc_vec_zero() ((gc_real)0)
#define gc_vec_loadu(p) (*(p))
#define gc_vec_storeu(p, x) (*(p) = (x))
#define gc_vec_set1(s) (s)
#define gc_vec_fma(a, b, c) ((a) * (b) + (c))
#define gc_vec_fnma(a, b, c) ((c) - (a) * (b))
#define gc_vec_add(a, b) ((a) + (b))
#define gc_vec_relu(x) ((x) <= 0 ? (gc_real)0 : (x))
#define gc_vec_mul(a, b) ((a) * (b))
#define gc_vec_sgn(x) GC_GEMM_SGN(x)
#endif

/* MR x NR: register tile (MR rows, GC_GEMM_NV vectors per row), and the edge row
   counts with a micro-kernel of their own (M = 128, 256, 512, 1000, 4096 leave 8 or 4
   rows past a multiple of 12, and 2 or 4 past a multiple of 6): the full tile on a
   zero-padded panel would spend the missing rows' FMAs on nothing and add its result
   through the scalar edge store (measured 2-4 % of M = 128 and 256 products).
   KC: depth of a packed panel; the MR x KC A panel must sit in L1.
   NC: width of the packed KC x NC B block, which must sit in L2.
   MC: height of the packed A block (a multiple of MR; bounds the scratch). */
#if GC_ISA_KIND == 2
#define GC_GEMM_MR GC_GEMM_MR_2
#define GC_GEMM_NV GC_GEMM_NV_2
#define GC_GEMM_EDGE1 8
#define GC_GEMM_EDGE2 4
#elif GC_ISA_KIND == 1
#define GC_GEMM_MR GC_GEMM_MR_1
#define GC_GEMM_NV GC_GEMM_NV_1
#define GC_GEMM_EDGE1 4
#define GC_GEMM_EDGE2 2
#elif defined(GC_GEMM_NEON) && GC_REAL_IS_DOUBLE
#define GC_GEMM_MR GC_GEMM_MR_3D
#define GC_GEMM_NV GC_GEMM_NV_3D
#elif defined(GC_GEMM_NEON)
#define GC_GEMM_MR GC_GEMM_MR_3F
#define GC_GEMM_NV GC_GEMM_NV_3F
#else
#define GC_GEMM_MR GC_GEMM_MR_0
#define GC_GEMM_NV GC_GEMM_NV_0
#endif
#define GC_GEMM_NR (GC_GEMM_NV * GC_VEC_WIDTH)
#define GC_GEMM_MC (GC_GEMM_MR * GC_GEMM_MC_PANELS)

/* The micro-kernels (part 4): the full tile; the same one vector wide, for products at
   most one vector wide (h U^T with 10 classes: half the work of the full tile there, and
   the same bits); and the edge row counts, which read the full tile's zero-padded A
   panel (the same bits too). */
#define GC_KERNELS_TILE_PASS 1
#define GC_TILE_NAME gc_micro_kernel
#define GC_TILE_ROWS GC_GEMM_MR
#define GC_TILE_VECS GC_GEMM_NV
#include "graphc_kernels.c"
#undef GC_TILE_VECS
#undef GC_TILE_ROWS
#undef GC_TILE_NAME
#define GC_TILE_NAME gc_micro_kernel_narrow
#define GC_TILE_ROWS GC_GEMM_MR
#define GC_TILE_VECS 1
#include "graphc_kernels.c"
#undef GC_TILE_VECS
#undef GC_TILE_ROWS
#undef GC_TILE_NAME
#ifdef GC_GEMM_EDGE1
#define GC_TILE_NAME gc_micro_kernel_edge1
#define GC_TILE_ROWS GC_GEMM_EDGE1
#define GC_TILE_VECS GC_GEMM_NV
#include "graphc_kernels.c"
#undef GC_TILE_VECS
#undef GC_TILE_ROWS
#undef GC_TILE_NAME
#define GC_TILE_NAME gc_micro_kernel_edge2
#define GC_TILE_ROWS GC_GEMM_EDGE2
#define GC_TILE_VECS GC_GEMM_NV
#include "graphc_kernels.c"
#undef GC_TILE_VECS
#undef GC_TILE_ROWS
#undef GC_TILE_NAME
#endif
#undef GC_KERNELS_TILE_PASS

/* Both operands are packed into panels of `width` (MR or NR) lanes stored
   k-major: panel[k * width + lane].  Lanes past the edge of the matrix are
   zero.  Two source layouts occur:

   pack_copy: lane l of step k is src[k * ld + l] (a row of the source per k):
   contiguous copies.

   pack_transpose: lane l of step k is src[l * ld + k] (a row of the source
   per lane), the layout of x W^T's W.  It goes in chunks of GC_GEMM_PACK_CHUNK
   steps so that the few destination lines being scattered into stay in L1
   while each source row is read one cache line at a time; with AVX, groups of
   whole lanes are transposed in registers (8 x 8 floats, 4 x 4 doubles). */
GC_ISA_ATTR static void gc_pack_copy(long kc, long lanes, long width, const gc_real *src, long ld,
                                     gc_real *panel)
{
    long k, l;
    for (k = 0; k < kc; ++k) {
        const gc_real *row = src + k * ld;
        for (l = 0; l < lanes; ++l) panel[k * width + l] = row[l];
        for (; l < width; ++l) panel[k * width + l] = 0;
    }
}

GC_ISA_ATTR static void gc_pack_transpose(long kc, long lanes, long width, const gc_real *src, long ld,
                                          gc_real *panel)
{
    long k0, k, l = 0;
#if GC_ISA_KIND != 0
    /* In-register transposes of GROUP lanes x GROUP steps; the remaining
       steps and lanes go through the scalar loops below. */
#if GC_REAL_IS_DOUBLE
#define GC_GEMM_GROUP 4
#else
#define GC_GEMM_GROUP 8
#endif
    const long kv = kc / GC_GEMM_GROUP * GC_GEMM_GROUP;
    for (; l + GC_GEMM_GROUP <= lanes; l += GC_GEMM_GROUP) {
        const gc_real *s = src + l * ld;
        gc_real *p = panel + l;
        for (k = 0; k < kv; k += GC_GEMM_GROUP) {
#if GC_REAL_IS_DOUBLE
            const __m256d r0 = _mm256_loadu_pd(s + 0 * ld + k), r1 = _mm256_loadu_pd(s + 1 * ld + k);
            const __m256d r2 = _mm256_loadu_pd(s + 2 * ld + k), r3 = _mm256_loadu_pd(s + 3 * ld + k);
            const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
            const __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
            _mm256_storeu_pd(p + (k + 0) * width, _mm256_permute2f128_pd(t0, t2, 0x20));
            _mm256_storeu_pd(p + (k + 1) * width, _mm256_permute2f128_pd(t1, t3, 0x20));
            _mm256_storeu_pd(p + (k + 2) * width, _mm256_permute2f128_pd(t0, t2, 0x31));
            _mm256_storeu_pd(p + (k + 3) * width, _mm256_permute2f128_pd(t1, t3, 0x31));
#else
            /* Rows l..l+3 in the low halves, l+4..l+7 in the high halves (loads, no
               lane-crossing shuffle), then two in-lane 4 x 4 transposes at once. */
#define GC_GEMM_LOAD2(r, o) _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + (r) * ld + k + (o))), \
                                                 _mm_loadu_ps(s + ((r) + 4) * ld + k + (o)), 1)
            int h;
            for (h = 0; h < 8; h += 4) {
                const __m256 r0 = GC_GEMM_LOAD2(0, h), r1 = GC_GEMM_LOAD2(1, h);
                const __m256 r2 = GC_GEMM_LOAD2(2, h), r3 = GC_GEMM_LOAD2(3, h);
                const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                _mm256_storeu_ps(p + (k + h + 0) * width, _mm256_shuffle_ps(t0, t2, 0x44));
                _mm256_storeu_ps(p + (k + h + 1) * width, _mm256_shuffle_ps(t0, t2, 0xEE));
                _mm256_storeu_ps(p + (k + h + 2) * width, _mm256_shuffle_ps(t1, t3, 0x44));
                _mm256_storeu_ps(p + (k + h + 3) * width, _mm256_shuffle_ps(t1, t3, 0xEE));
            }
#undef GC_GEMM_LOAD2
#endif
        }
        for (; k < kc; ++k) {
            long g;
            for (g = 0; g < GC_GEMM_GROUP; ++g) p[k * width + g] = s[g * ld + k];
        }
    }
#undef GC_GEMM_GROUP
#endif
    for (k0 = 0; k0 < kc; k0 += GC_GEMM_PACK_CHUNK) {
        const long k1 = kc - k0 < GC_GEMM_PACK_CHUNK ? kc : k0 + GC_GEMM_PACK_CHUNK;
        long j;
        for (j = l; j < lanes; ++j) {
            const gc_real *row = src + j * ld;
            for (k = k0; k < k1; ++k) panel[k * width + j] = row[k];
        }
        for (j = lanes; j < width; ++j)
            for (k = k0; k < k1; ++k) panel[k * width + j] = 0;
    }
}

/* op(A)[0:mc, 0:kc] -> MR-lane panels, one per MR rows of C.
   op(A)[i][k] is A[i*lda + k] (ta = 0) or A[k*lda + i] (ta = 1). */
GC_ISA_ATTR static void gc_pack_a(int ta, long mc, long kc, const gc_real *A, long lda, gc_real *packed)
{
    long i0;
    for (i0 = 0; i0 < mc; i0 += GC_GEMM_MR) {
        const long rows = mc - i0 < GC_GEMM_MR ? mc - i0 : GC_GEMM_MR;
        if (ta)
            gc_pack_copy(kc, rows, GC_GEMM_MR, A + i0, lda, packed);
        else
            gc_pack_transpose(kc, rows, GC_GEMM_MR, A + i0 * lda, lda, packed);
        packed += GC_GEMM_MR * kc;
    }
}

/* op(B)[0:kc, 0:nc] -> nr-lane panels (nr = NR, or one vector), one per nr
   columns of C.  op(B)[k][j] is B[k*ldb + j] (tb = 0) or B[j*ldb + k] (tb = 1). */
GC_ISA_ATTR static void gc_pack_b(int tb, long kc, long nc, long nr, const gc_real *B, long ldb,
                                  gc_real *packed)
{
    long j0, k0;
    if (tb) {
        for (j0 = 0; j0 < nc; j0 += nr) {
            const long cols = nc - j0 < nr ? nc - j0 : nr;
            gc_pack_transpose(kc, cols, nr, B + j0 * ldb, ldb, packed + j0 * kc);
        }
        return;
    }
    /* tb = 0: GC_GEMM_PACK_B_ROWS rows of B at a time across all panels, so the
       source is read row by row (one panel at a time would touch a page per row
       of a wide B); measured 1.3-1.5x faster than panel by panel. */
    for (k0 = 0; k0 < kc; k0 += GC_GEMM_PACK_B_ROWS) {
        const long steps = kc - k0 < GC_GEMM_PACK_B_ROWS ? kc - k0 : GC_GEMM_PACK_B_ROWS;
        for (j0 = 0; j0 < nc; j0 += nr) {
            const long cols = nc - j0 < nr ? nc - j0 : nr;
            gc_pack_copy(steps, cols, nr, B + k0 * ldb + j0, ldb, packed + j0 * kc + k0 * nr);
        }
    }
}

/* The epilogue of `count` values of row i of C from column j0 on (edge tiles, tiny
   products), field by field: each value sees the same operations in the same order as
   in the micro-kernels' vectors (the update is one fused multiply-add there, and here
   when the compiler contracts a - b * c, as graphc's builds let it), and each loop is a
   plain vectorizable pass. */
GC_ISA_ATTR static void gc_epilogue_row(const gc_epilogue *ep, long i, long j0, long count,
                                        gc_real *restrict values)
{
    long j;
    if (ep->bias)
        for (j = 0; j < count; ++j) values[j] = values[j] + ep->bias[j0 + j];
    if (ep->relu)
        for (j = 0; j < count; ++j) values[j] = values[j] <= 0 ? (gc_real)0 : values[j];
    if (ep->mask) {
        const gc_real *mask = ep->mask + i * ep->ldm + j0;
        for (j = 0; j < count; ++j) values[j] = values[j] * GC_GEMM_SGN(mask[j]);
    }
    if (ep->update) {
        gc_real *restrict update = ep->update + i * ep->ldu + j0;
        for (j = 0; j < count; ++j) update[j] = update[j] - ep->rate * values[j];
    }
    if (ep->colsum) {
        gc_real *restrict colsum = ep->colsum + j0;
        for (j = 0; j < count; ++j) colsum[j] = colsum[j] + values[j];
    }
}

/* Adds the valid rows x cols corner of a full scratch tile into C, with the
   micro-kernel's order of operations: (C + acc), then the epilogue. */
GC_ISA_ATTR static void gc_store_edge(long rows, long cols, gc_real *tile, int beta, gc_real *C, long ldc,
                                      const gc_epilogue *ep, long row, long col)
{
    long i, j;
    for (i = 0; i < rows; ++i) {
        gc_real *values = tile + i * GC_GEMM_NR;
        if (beta)
            for (j = 0; j < cols; ++j) values[j] = C[i * ldc + j] + values[j];
        if (ep) gc_epilogue_row(ep, row + i, col, cols, values);
        if (!ep || !ep->update)
            for (j = 0; j < cols; ++j) C[i * ldc + j] = values[j];
    }
}

/* The blocked product of one part of C (see the scheme at the top of this file).
   direct & GC_GEMM_DIRECT_A: the micro-kernel reads op(A) where it lies
   instead of a packed copy (only an edge strip of fewer than MR rows is
   packed, zero-padded); direct & GC_GEMM_DIRECT_B, with tb = 0: the same for
   op(B) (only an edge panel of fewer than NR columns is packed).  Small
   products skip the packing this way; large ones pack, for unit-stride,
   cache-resident panels.  A part at most one vector wide uses panels of one
   vector and the narrow micro-kernel.
   `pack` holds the A area, then the B area (gc_pack_area of part 2: a part
   needs no more than the whole product).  C = NULL (an epilogue that updates,
   and nothing else): C is neither read nor written, and each K block applies
   the update with its own partial product. */
GC_ISA_ATTR static void gc_blocked(int ta, int tb, long M, long N, long K,
                                   const gc_real *A, long lda, const gc_real *B, long ldb,
                                   int beta, gc_real *C, long ldc,
                                   const gc_epilogue *ep, gc_real *pack, int direct)
{
    const int direct_a = (direct & GC_GEMM_DIRECT_A) != 0;
    const int direct_b = (direct & GC_GEMM_DIRECT_B) != 0 && !tb;
    gc_real *packed_a = pack;
    gc_real *packed_b = pack + gc_pack_area(direct_a, M, GC_GEMM_MR, GC_GEMM_MC, K);
    const int no_c = C == 0;
    /* op(A)[i][k] = A[i * a_rs + k * a_ks] */
    const long a_rs = ta ? 1 : lda, a_ks = ta ? lda : 1;
    const int narrow = N <= GC_VEC_WIDTH;
    const long nr = narrow ? GC_VEC_WIDTH : GC_GEMM_NR;   /* panel width */
    /* K blocks of equal depth (a multiple of a cache line) rather than KC, KC, ...
       and a thin remainder (784 = 3 x 256 + 16): a thin last block costs a whole
       pass over C and a B pack for few FMAs.  Depends on K only, so the blocks are
       the same for every part, thread count and path. */
    const long k_blocks = (K + GC_KC - 1) / GC_KC;
    const long k_even = ((K + k_blocks - 1) / k_blocks + GC_GEMM_PACK_CHUNK - 1) / GC_GEMM_PACK_CHUNK
                        * GC_GEMM_PACK_CHUNK;
    const long k_step = k_even < GC_KC ? k_even : GC_KC;   /* the pack holds KC */
    long jc, pc, ic, ir, jr;

    for (jc = 0; jc < N; jc += GC_GEMM_NC) {
        const long nc = N - jc < GC_GEMM_NC ? N - jc : GC_GEMM_NC;
        const long nc_full = nc / nr * nr;   /* columns in whole panels */
        for (pc = 0; pc < K; pc += k_step) {
            const long kc = K - pc < k_step ? K - pc : k_step;
            /* First K block applies the caller's beta, later ones accumulate;
               the epilogue belongs to the last K block only (its column sums
               then see every column's rows in order: ic and ir ascend). */
            const int beta_block = no_c ? 0 : pc == 0 ? beta : 1;
            const gc_epilogue *ep_block = pc + kc == K || no_c ? ep : 0;
            const gc_real *b_block = tb ? B + jc * ldb + pc : B + pc * ldb + jc;

            if (!direct_b)
                gc_pack_b(tb, kc, nc, nr, b_block, ldb, packed_b);
            else if (nc_full < nc)   /* only the edge panel, at the start of the B area */
                gc_pack_copy(kc, nc - nc_full, nr, b_block + nc_full, ldb, packed_b);

            for (ic = 0; ic < M; ic += GC_GEMM_MC) {
                const long mc = M - ic < GC_GEMM_MC ? M - ic : GC_GEMM_MC;
                const gc_real *a_block = ta ? A + pc * lda + ic : A + ic * lda + pc;
                if (!direct_a)
                    gc_pack_a(ta, mc, kc, a_block, lda, packed_a);

                for (ir = 0; ir < mc; ir += GC_GEMM_MR) {
                    const long rows = mc - ir < GC_GEMM_MR ? mc - ir : GC_GEMM_MR;
                    const gc_real *a_panel = packed_a + ir * kc;
                    long rs = 1, ks = GC_GEMM_MR;
                    if (direct_a && rows == GC_GEMM_MR) {
                        a_panel = a_block + ir * a_rs;
                        rs = a_rs;
                        ks = a_ks;
                    } else if (direct_a) {
                        gc_pack_a(ta, rows, kc, a_block + ir * a_rs, lda, packed_a);
                        a_panel = packed_a;
                    }
                    for (jr = 0; jr < nc; jr += nr) {
                        const long cols = nc - jr < nr ? nc - jr : nr;
                        const gc_real *b_panel = packed_b + jr * kc;
                        long b_ks = nr;
                        gc_real *c_tile = no_c ? C : C + (ic + ir) * ldc + jc + jr;
                        if (direct_b && cols == nr) {
                            b_panel = b_block + jr;
                            b_ks = ldb;
                        } else if (direct_b) {
                            b_panel = packed_b;
                        }
                        if (rows == GC_GEMM_MR && cols == nr) {
                            if (narrow)
                                gc_micro_kernel_narrow(kc, a_panel, rs, ks, b_panel, b_ks, beta_block,
                                                       c_tile, ldc, ep_block, ic + ir, jc + jr);
                            else
                                gc_micro_kernel(kc, a_panel, rs, ks, b_panel, b_ks, beta_block,
                                                c_tile, ldc, ep_block, ic + ir, jc + jr);
#ifdef GC_GEMM_EDGE1
                        } else if (rows == GC_GEMM_EDGE1 && cols == nr && !narrow) {
                            gc_micro_kernel_edge1(kc, a_panel, rs, ks, b_panel, b_ks, beta_block,
                                                  c_tile, ldc, ep_block, ic + ir, jc + jr);
                        } else if (rows == GC_GEMM_EDGE2 && cols == nr && !narrow) {
                            gc_micro_kernel_edge2(kc, a_panel, rs, ks, b_panel, b_ks, beta_block,
                                                  c_tile, ldc, ep_block, ic + ir, jc + jr);
#endif
                        } else {
                            gc_real tile[GC_GEMM_MR * GC_GEMM_NR];
                            if (narrow)
                                gc_micro_kernel_narrow(kc, a_panel, rs, ks, b_panel, b_ks, 0,
                                                       tile, GC_GEMM_NR, 0, 0, 0);
                            else
                                gc_micro_kernel(kc, a_panel, rs, ks, b_panel, b_ks, 0,
                                                tile, GC_GEMM_NR, 0, 0, 0);
                            gc_store_edge(rows, cols, tile, beta_block, c_tile, ldc, ep_block, ic + ir, jc + jr);
                        }
                    }
                }
            }
        }
    }
}

/* Dot product of a row of op(A) (stride a_step) with a contiguous row of B.
   Four partial sums break the dependency chain (no -ffast-math needed). */
GC_ISA_ATTR static gc_real gc_dot(long K, const gc_real *a, long a_step, const gc_real *b)
{
    gc_real sum0 = 0, sum1 = 0, sum2 = 0, sum3 = 0;
    long k = 0;
    if (a_step == 1 && K >= GC_GEMM_DOT_LANES) {
        /* Contiguous rows (x W^T with few rows of x): GC_GEMM_DOT_LANES independent
           partial sums, whose fixed-size inner loop the compiler turns into vector
           FMAs, then a fixed pairwise reduction: fast, and the same bits every call. */
        gc_real acc[GC_GEMM_DOT_LANES] = {0};
        int l;
        for (; k + GC_GEMM_DOT_LANES <= K; k += GC_GEMM_DOT_LANES) {
            for (l = 0; l < GC_GEMM_DOT_LANES; ++l) acc[l] += a[k + l] * b[k + l];
        }
        /* fewer than GC_GEMM_DOT_LANES are left; the bound on l says so to the compiler,
           which otherwise warns that a later iteration would write past acc */
        for (l = 0; l < GC_GEMM_DOT_LANES && k < K; ++k, ++l) acc[l] += a[k] * b[k];
        for (l = GC_GEMM_DOT_LANES / 2; l > 0; l /= 2) {
            int i;
            for (i = 0; i < l; ++i) acc[i] += acc[i + l];
        }
        return acc[0];
    }
    for (; k + 4 <= K; k += 4) {
        sum0 += a[k * a_step] * b[k];
        sum1 += a[(k + 1) * a_step] * b[k + 1];
        sum2 += a[(k + 2) * a_step] * b[k + 2];
        sum3 += a[(k + 3) * a_step] * b[k + 3];
    }
    for (; k < K; ++k) sum0 += a[k * a_step] * b[k];
    return (sum0 + sum1) + (sum2 + sum3);
}

/* Tiny products: plain loops, unit stride innermost, no packing.  A column of B that is
   contiguous (N = 1, ldb = 1: a matrix-vector product) is read as a row, one dot product
   per element.  C = NULL (an epilogue that updates, and nothing else): each row is
   computed GC_GEMM_SMALL_CHUNK columns at a time on the stack, for the epilogue. */
GC_ISA_ATTR static void gc_small(int ta, int tb, long M, long N, long K,
                                 const gc_real *A, long lda, const gc_real *B, long ldb,
                                 int beta, gc_real *C, long ldc, const gc_epilogue *ep)
{
    /* op(A)[i][k] = A[i * a_row + k * a_step] */
    const long a_row = ta ? 1 : lda, a_step = ta ? lda : 1;
    const int dot = tb || (N == 1 && ldb == 1);
    const long chunk = C ? N : GC_GEMM_SMALL_CHUNK;
    gc_real scratch[GC_GEMM_SMALL_CHUNK];
    long i, j, j0, k;
    for (i = 0; i < M; ++i) {
        const gc_real *a_row_i = A + i * a_row;
        for (j0 = 0; j0 < N; j0 += chunk) {
            const long count = N - j0 < chunk ? N - j0 : chunk;
            gc_real *restrict c_row = C ? C + i * ldc + j0 : scratch;
            if (!beta || !C)
                for (j = 0; j < count; ++j) c_row[j] = 0;
            if (!dot) {
                /* op(B) rows are contiguous: C row += op(A)[i][k] * B row k. */
                for (k = 0; k < K; ++k) {
                    const gc_real a = a_row_i[k * a_step];
                    const gc_real *restrict b_row = B + k * ldb + j0;
                    for (j = 0; j < count; ++j) c_row[j] += a * b_row[j];
                }
            } else {
                /* op(B) columns are rows of B: one dot product per element. */
                for (j = 0; j < count; ++j)
                    c_row[j] += gc_dot(K, a_row_i, a_step, tb ? B + (j0 + j) * ldb : B);
            }
            if (ep) gc_epilogue_row(ep, i, j0, count, c_row);
        }
    }
}

/* Part `part` of `parts` of the product: a contiguous range of whole NR
   columns of C (see gc_by_columns), or of whole MR rows.  Splitting N
   makes every part read all of op(A) and splitting M all of op(B), so the
   split duplicates the smaller operand.  Each C element is computed the same
   way whichever part holds it. */
GC_ISA_ATTR static void gc_part(long part, long parts, int ta, int tb, long M, long N, long K,
                                const gc_real *A, long lda, const gc_real *B, long ldb,
                                int beta, gc_real *C, long ldc,
                                const gc_epilogue *ep, gc_real *pack, int direct)
{
    gc_epilogue shifted;
    if (gc_by_columns(M, N, ep)) {
        const long tiles = (N + GC_GEMM_NR - 1) / GC_GEMM_NR;
        const long j0 = tiles * part / parts * GC_GEMM_NR;
        long j1 = tiles * (part + 1) / parts * GC_GEMM_NR;
        if (j1 > N) j1 = N;
        if (j1 <= j0) return;
        gc_blocked(ta, tb, M, j1 - j0, K, A, lda, tb ? B + j0 * ldb : B + j0, ldb, beta, C ? C + j0 : C, ldc,
                   gc_epilogue_at(ep, 0, j0, &shifted), pack, direct);
    } else {
        const long tiles = (M + GC_GEMM_MR - 1) / GC_GEMM_MR;
        const long i0 = tiles * part / parts * GC_GEMM_MR;
        long i1 = tiles * (part + 1) / parts * GC_GEMM_MR;
        if (i1 > M) i1 = M;
        if (i1 <= i0) return;
        gc_blocked(ta, tb, i1 - i0, N, K, ta ? A + i0 : A + i0 * lda, lda, B, ldb, beta, C ? C + i0 * ldc : C, ldc,
                   gc_epilogue_at(ep, i0, 0, &shifted), pack, direct);
    }
}

#undef GC_GEMM_MC
#undef GC_GEMM_NR
#undef GC_GEMM_EDGE2
#undef GC_GEMM_EDGE1
#undef GC_GEMM_NV
#undef GC_GEMM_MR
#undef GC_NEON_ONES
#undef gc_vec_sgn
#undef gc_vec_mul
#undef gc_vec_relu
#undef gc_vec_add
#undef gc_vec_fnma
#undef gc_vec_fma
#undef gc_vec_set1
#undef gc_vec_storeu
#undef gc_vec_loadu
#undef gc_vec_zero
#undef GC_VEC_WIDTH
#undef gc_vec
#undef gc_part
#undef gc_small
#undef gc_dot
#undef gc_blocked
#undef gc_store_edge
#undef gc_epilogue_row
#undef gc_pack_b
#undef gc_pack_a
#undef gc_pack_transpose
#undef gc_pack_copy
#undef gc_micro_kernel_edge2
#undef gc_micro_kernel_edge1
#undef gc_micro_kernel_narrow
#undef gc_micro_kernel
#undef GC_IN_ISA

#else                                   /* part 4 */
/* ======================================================================
 * Part 4: one micro-kernel, GC_TILE_NAME: a tile of GC_TILE_ROWS rows and
 * GC_TILE_VECS vectors (of the instruction set of part 3)
 * ====================================================================== */
/* C[ROWS x VECS*GC_VEC_WIDTH] = beta*C + op(A) op(B) over kc steps, then the epilogue.
   Step k reads op(A)[r][k] = a[r * a_rs + k * a_ks] (r < ROWS) and the VECS vectors of
   op(B)[k][0:NR] at b + k * b_ks.  A packed panel has a_rs = 1, a_ks = MR and b_ks = NR; the
   unpacked operands of small products pass their own strides.
   Accumulation starts from zero and C is added afterwards, so a full tile and
   an edge tile (computed into a scratch tile, then added in scalar code), and a
   packed and an unpacked operand, give bit-identical results.  `ep` (NULL: none)
   is the epilogue of the last K block; the tile is C's rows row.. and columns
   col.. in the coordinates of ep's arrays. */
GC_ISA_ATTR static void GC_TILE_NAME(long kc, const gc_real *a, long a_rs, long a_ks,
                                     const gc_real *b, long b_ks, int beta, gc_real *C, long ldc,
                                     const gc_epilogue *ep, long row, long col)
{
    GC_TILE_EACH(GC_TILE_ZERO)
    /* One pointer per 3 rows of A, the rows at p, p + a_rs, p + 2 a_rs (x86 base +
       index * 4 or 8): 12 rows take 4 pointers and one index register; 12 row
       offsets did not fit in registers and were reloaded from the stack every step. */
    GC_TILE_EACH_GROUP(GC_TILE_A_POINTER)
    long k = 0;

#if GC_ISA_KIND == 1 && GC_GEMM_AVX2_UNROLL
    /* AVX2 (16 ymm registers; the 4-wide front ends of Haswell and Zen): 4 steps per
       iteration, as BLIS's Haswell kernel does, with the steps of the two common layouts as
       constants (op(A) read in place, ta = 0: a_ks = 1; packed: MR; op(B) packed: the panel
       width), so that the loads take fixed offsets and the pointer updates, the count and the
       branch are paid once per 4 steps: 21 instructions a step instead of 25, under the 24
       that feed the two FMA units. The C tile is fetched into L1 meanwhile (its 6 rows are
       6 cache misses at the write-back otherwise). The same operations per accumulator in
       the same order as the plain loop below: the same bits. */
    if (C) {
        GC_TILE_EACH_ROW(GC_TILE_PREFETCH_C)
    }
#define GC_TILE_BKS (GC_TILE_VECS * GC_VEC_WIDTH)
    if (a_ks == 1 && b_ks == GC_TILE_BKS) {
#define GC_TILE_AKS 1
        for (; k + 4 <= kc; k += 4) GC_TILE_STEP4
#undef GC_TILE_AKS
    } else if (a_ks == GC_GEMM_MR && b_ks == GC_TILE_BKS) {
#define GC_TILE_AKS GC_GEMM_MR
        for (; k + 4 <= kc; k += 4) GC_TILE_STEP4
#undef GC_TILE_AKS
    }
#undef GC_TILE_BKS
#endif
#define GC_TILE_AKS a_ks
#define GC_TILE_BKS b_ks
    for (; k < kc; ++k) GC_TILE_STEP
#undef GC_TILE_BKS
#undef GC_TILE_AKS

    /* Write-back, in the same order of operations as gc_store_edge:
       (C + acc), then the epilogue (see gc_gemm_epilogue_f). */
    if (beta) {
        GC_TILE_EACH(GC_TILE_ADD_C)
    }
    if (ep && ep->bias) {
        GC_TILE_EACH_VEC(GC_TILE_LOAD_BIAS)
        GC_TILE_EACH(GC_TILE_ADD_BIAS)
    }
    if (ep && ep->relu) {
        GC_TILE_EACH(GC_TILE_RELU)
    }
    if (ep && ep->mask) {
        const gc_real *mask = ep->mask + row * ep->ldm + col;
        GC_TILE_EACH(GC_TILE_MASK)
    }
    if (ep && ep->update) {   /* update -= rate * value; C is not written */
        gc_real *update = ep->update + row * ep->ldu + col;
        const gc_vec rate = gc_vec_set1(ep->rate);
        GC_TILE_EACH(GC_TILE_UPDATE)
    } else {
        GC_TILE_EACH(GC_TILE_STORE)
    }
    if (ep && ep->colsum) {   /* this tile's rows, in order, into each column's sum */
        GC_TILE_EACH_VEC(GC_TILE_LOAD_SUM)
        GC_TILE_EACH(GC_TILE_ADD_SUM)
        GC_TILE_EACH_VEC(GC_TILE_STORE_SUM)
    }
}
#endif                                  /* parts 1-4 */
