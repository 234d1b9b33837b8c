/* The fp32/fp64 SIMD micro-tile, written once with GCC vector extensions (plain C, no
   intrinsics) and compiled per instruction set by avx2.c and avx512.c: 6 rows x 2
   vectors = 12 accumulator registers + 2 for B + 1 broadcast of A.  The same loops over
   a T acc[6][NR] array were left in memory by GCC 12 (7 GFLOP/s against 77): the vector
   types make the register tile explicit. */
#include <string.h>
#include "kp_gemm.h"

#define KP_SIMD_TILE(NAME, T, V, L)                                                   \
void NAME(KP_TILE_ARGS(T)) {                                                          \
    /* ap (kc, 6), bp (kc, 2 L) packed -> c (mr, nr) */                               \
    V acc[6][2], b0, b1;                                                              \
    T out[6][2 * L];                                                                  \
    ptrdiff_t i, k;                                                                   \
    for (i = 0; i < 6; i++) acc[i][0] = acc[i][1] = (V){0};                           \
    for (k = 0; k < kc; k++) {                                                        \
        memcpy(&b0, bp, sizeof(V));                                                   \
        memcpy(&b1, bp + L, sizeof(V));                                               \
        for (i = 0; i < 6; i++) {                                                     \
            /* scalar * vector broadcasts the scalar; (V){0} + ap[i] would add a zero  \
               first (x + 0 is not x for -0.0, so GCC keeps the add in the chain) */  \
            acc[i][0] += ap[i] * b0;                                                  \
            acc[i][1] += ap[i] * b1;                                                  \
        }                                                                             \
        ap += 6;                                                                      \
        bp += 2 * L;                                                                  \
    }                                                                                 \
    memcpy(out, acc, sizeof(out));                                                    \
    KP_STORE_TILE(out);                                                               \
}

/* The narrow tile, for outputs of at most one vector of columns (N <= 16 fp32 with
   AVX-512: the 10 classes of a classifier's last layer): 12 rows x 1 vector, so the
   FMAs are not spent on the zero padding of a 2-vector tile (10 of 32 columns useful).
   Each element sums its products in the same order as the wide tile, so both give the
   same bits. */
#define KP_SIMD_TILE_NARROW(NAME, T, V, L)                                            \
void NAME(KP_TILE_ARGS(T)) {                                                          \
    /* ap (kc, 12), bp (kc, L) packed -> c (mr, nr) */                                \
    V acc[12], b0;                                                                    \
    T out[12][L];                                                                     \
    ptrdiff_t i, k;                                                                   \
    for (i = 0; i < 12; i++) acc[i] = (V){0};                                         \
    for (k = 0; k < kc; k++) {                                                        \
        memcpy(&b0, bp, sizeof(V));                                                   \
        for (i = 0; i < 12; i++) acc[i] += ap[i] * b0;                                \
        ap += 12;                                                                     \
        bp += L;                                                                      \
    }                                                                                 \
    memcpy(out, acc, sizeof(out));                                                    \
    KP_STORE_TILE(out);                                                               \
}
