/* GEMM micro-kernels of the cython backend (pyx/matmul.pyx drives them).

   One translation unit per instruction set, each compiled by setup.py with its own -m
   flags, so the rest of the build stays baseline x86-64 (or any other architecture):
       avx2.c         fp32/fp64 6 x 2 ymm, 12 x 1 ymm (narrow)   -mavx2 -mfma
       avx512.c       fp32/fp64 6 x 2 zmm, 12 x 1 zmm (narrow)   -mavx512f -mfma
       avx512_bf16.c  bf16 pairs -> fp32 6 x 32  -mavx512f -mavx512bf16
       amx_bf16.c     bf16 -> fp32 32 x 32 AMX   -mamx-tile -mamx-bf16 (UNTESTED)
   setup.py defines KP_HAVE_<ISA> for matmul.pyx exactly when that unit compiled; a unit
   the compiler could not build becomes an empty stub here and is never selected.  At run
   time kp_cpu_has() says what the CPU (and the OS, for the zmm state) allows.

   Every tile: ap (kc, 6) packed A sliver, bp (kc, NR) packed B sliver -> c (mr, nr)
   with row stride ldc, written or (accumulate) added to; only the valid mr x nr part
   is stored.  For bf16, kc counts pairs of k: each 32-bit word of a sliver holds two
   bf16 values (k even in the low half), see matmul.pyx's _pack_*_bf16. */
#ifndef KP_GEMM_H
#define KP_GEMM_H

#include <stddef.h>
#include <stdint.h>

#define KP_TILE_ARGS(T) \
    ptrdiff_t kc, const T *ap, const T *bp, T *c, ptrdiff_t ldc, ptrdiff_t mr, ptrdiff_t nr, \
    int accumulate

/* The end of every tile: its registers, stored to the 2-D array OUT, go into the mr x nr
   corner of C that is real, added to C when accumulating over K blocks (two loops: the
   branch stays out of them, and a stored -0.0 stays -0.0). */
#define KP_STORE_TILE(OUT)                                                   \
    do {                                                                     \
        ptrdiff_t i_, j_;                                                    \
        if (accumulate) {                                                    \
            for (i_ = 0; i_ < mr; i_++)                                      \
                for (j_ = 0; j_ < nr; j_++) c[i_ * ldc + j_] += OUT[i_][j_]; \
        } else {                                                             \
            for (i_ = 0; i_ < mr; i_++)                                      \
                for (j_ = 0; j_ < nr; j_++) c[i_ * ldc + j_] = OUT[i_][j_];  \
        }                                                                    \
    } while (0)

#if defined(__GNUC__) || defined(__clang__)
#define KP_UNUSED __attribute__((unused))
#define KP_HIDDEN __attribute__((visibility("hidden")))
#else
#define KP_UNUSED
#define KP_HIDDEN
#endif

/* A unit that was built: its declaration; one that was not: a stub never called. */
#define KP_DECLARE_TILE(HAVE, NAME, T) \
    HAVE_##HAVE(KP_HIDDEN void NAME(KP_TILE_ARGS(T));, KP_UNUSED static void NAME(KP_TILE_ARGS(T)) { \
        (void)kc; (void)ap; (void)bp; (void)c; (void)ldc; (void)mr; (void)nr; (void)accumulate; })

#ifdef KP_HAVE_AVX2
#define HAVE_AVX2(yes, no) yes
#else
#define HAVE_AVX2(yes, no) no
#endif
#ifdef KP_HAVE_AVX512
#define HAVE_AVX512(yes, no) yes
#else
#define HAVE_AVX512(yes, no) no
#endif
#ifdef KP_HAVE_AVX512_BF16
#define HAVE_AVX512_BF16(yes, no) yes
#else
#define HAVE_AVX512_BF16(yes, no) no
#endif
/* the AMX tile needs the AVX512_BF16 unit too: its packing lives there */
#if defined(KP_HAVE_AMX_BF16) && defined(KP_HAVE_AVX512_BF16)
#define HAVE_AMX_BF16(yes, no) yes
#else
#define HAVE_AMX_BF16(yes, no) no
#endif

KP_DECLARE_TILE(AVX2, kp_tile_avx2_f, float)
KP_DECLARE_TILE(AVX2, kp_tile_avx2_d, double)
KP_DECLARE_TILE(AVX512, kp_tile_avx512_f, float)
KP_DECLARE_TILE(AVX512, kp_tile_avx512_d, double)
/* 12 rows x 1 vector, for N of at most one vector */
KP_DECLARE_TILE(AVX2, kp_tile_avx2_narrow_f, float)
KP_DECLARE_TILE(AVX2, kp_tile_avx2_narrow_d, double)
KP_DECLARE_TILE(AVX512, kp_tile_avx512_narrow_f, float)
KP_DECLARE_TILE(AVX512, kp_tile_avx512_narrow_d, double)
/* bf16 pairs in, fp32 out: ap and bp hold pairs of bf16 as 32-bit words */
KP_DECLARE_TILE(AVX512_BF16, kp_tile_avx512_bf16, float)
/* 32 x 32 on AMX tiles; kc counts pair words, a multiple of 16 */
KP_DECLARE_TILE(AMX_BF16, kp_tile_amx_bf16, float)

/* float32 -> bf16 pair layout with integer round-to-nearest-even (avx512_bf16.c), for
   the bf16 kernel only: a (mc, kc) -> (ceil(mc / mr), ceil(kc / 2), mr) words and
   b (kc, cols) -> (ceil(kc / 2), nr) words, zero-padded; kc <= 1024 for the fast paths. */
#define KP_PACK_A_ARGS \
    const float *a, ptrdiff_t sa0, ptrdiff_t sa1, ptrdiff_t mc, ptrdiff_t kc, ptrdiff_t mr, \
    float *out
#define KP_PACK_B_ARGS \
    const float *b, ptrdiff_t sb0, ptrdiff_t sb1, ptrdiff_t kc, ptrdiff_t cols, ptrdiff_t nr, \
    float *out
HAVE_AVX512_BF16(KP_HIDDEN void kp_pack_a_bf16(KP_PACK_A_ARGS);,
    KP_UNUSED static void kp_pack_a_bf16(KP_PACK_A_ARGS) {
        (void)a; (void)sa0; (void)sa1; (void)mc; (void)kc; (void)mr; (void)out; })
HAVE_AVX512_BF16(KP_HIDDEN void kp_pack_b_bf16(KP_PACK_B_ARGS);,
    KP_UNUSED static void kp_pack_b_bf16(KP_PACK_B_ARGS) {
        (void)b; (void)sb0; (void)sb1; (void)kc; (void)cols; (void)nr; (void)out; })

/* the AMX layouts, packed in avx512_bf16.c too */
HAVE_AVX512_BF16(KP_HIDDEN void kp_pack_a_amx(KP_PACK_A_ARGS);,
    KP_UNUSED static void kp_pack_a_amx(KP_PACK_A_ARGS) {
        (void)a; (void)sa0; (void)sa1; (void)mc; (void)kc; (void)mr; (void)out; })
HAVE_AVX512_BF16(KP_HIDDEN void kp_pack_b_amx(KP_PACK_B_ARGS);,
    KP_UNUSED static void kp_pack_b_amx(KP_PACK_B_ARGS) {
        (void)b; (void)sb0; (void)sb1; (void)kc; (void)cols; (void)nr; (void)out; })

/* Which kernels the CPU and OS run: bit 0 avx2+fma, bit 1 avx512f, bit 2 avx512_bf16,
   bit 3 amx_bf16 (its tile data granted by Linux, asked for here once per process);
   only units that were compiled are reported. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <cpuid.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
static inline int kp_cpu_has(void) {
    unsigned int eax, ebx, ecx, edx;
    int bits = 0;
    __builtin_cpu_init();
    /* __builtin_cpu_supports checks the OS saves the ymm/zmm state (XCR0) too */
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) bits |= 1;
    if ((bits & 1) && __builtin_cpu_supports("avx512f")) bits |= 2;
    /* AVX512_BF16: CPUID leaf 7 subleaf 1, EAX bit 5 (older compilers lack the name) */
    if ((bits & 2) && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)))
        bits |= 4;
#if defined(__linux__) && defined(KP_HAVE_AMX_BF16)
    /* AMX-BF16 and AMX-TILE: leaf 7 subleaf 0, EDX bits 22 and 24; then the tile data
       permission (arch_prctl ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18):
       without it the first tile instruction kills the process (SIGILL) */
    if ((bits & 4) && __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)
            && (edx & (1u << 22)) && (edx & (1u << 24))
            && syscall(SYS_arch_prctl, 0x1023, 18) == 0)
        bits |= 8;
#endif
    return bits & (HAVE_AVX2(1, 0) | HAVE_AVX512(2, 0) | HAVE_AVX512_BF16(4, 0)
                   | HAVE_AMX_BF16(8, 0));
}
#else
static inline int kp_cpu_has(void) { return 0; }
#endif

#endif
