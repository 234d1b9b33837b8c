/* AVX512_BF16 micro-tile (compiled with -mavx512f -mavx512bf16 by setup.py): bf16
   operands, fp32 accumulation, 6 rows x 32 columns in 12 zmm accumulators.

   vdpbf16ps multiplies pairs of bf16 and adds both products to each fp32 lane:
   acc[j] += a[2p] b[2p][j] + a[2p+1] b[2p+1][j].  A sliver word p of row i holds the
   pair (a[i, 2p], a[i, 2p+1]), broadcast to all lanes; a B sliver row p holds, for 16
   columns per zmm, the pairs (b[2p, j], b[2p+1, j]).  The products of bf16 values are
   exact in fp32; the instruction treats bf16 subnormal inputs (below 1.2e-38) as zero,
   the only departure from the "bf16" reference.  Measured on AMD EPYC Zen 5: twice the
   fp32 FMA's FLOP rate (92 against 45 GFLOP/s in a register-only loop on one loaded
   core), so it runs the "bf16" precision where the CPU has it. */
#include <immintrin.h>
#include <string.h>
#include "kp_gemm.h"

void kp_tile_avx512_bf16(KP_TILE_ARGS(float)) {
    __m512 acc[6][2];
    float out[6][32];
    const uint32_t *aw = (const uint32_t *)ap;
    ptrdiff_t i, j, p;
    for (i = 0; i < 6; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (p = 0; p < kc; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)bp);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(bp + 16));
        for (i = 0; i < 6; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)aw[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], a, b1);
        }
        aw += 6;
        bp += 32;
    }
    for (i = 0; i < 6; i++) {
        _mm512_storeu_ps(out[i], acc[i][0]);
        _mm512_storeu_ps(out[i] + 16, acc[i][1]);
    }
    if (accumulate) {
        for (i = 0; i < mr; i++)
            for (j = 0; j < nr; j++) c[i * ldc + j] += out[i][j];
    } else {
        for (i = 0; i < mr; i++)
            for (j = 0; j < nr; j++) c[i * ldc + j] = out[i][j];
    }
}
