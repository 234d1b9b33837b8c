/* AMX-BF16 micro-tile (compiled with -mamx-tile -mamx-bf16 by setup.py): bf16 operands,
   fp32 accumulation, 32 x 32 of C in four 16 x 16 tiles (2 A tiles x 2 B tiles: one
   tile load per tdpbf16ps, as oneDNN's brgemm and libxsmm block it).

   UNTESTED: written on an AMD Zen 5 without AMX.  It is never chosen by the selection
   rule, only by name (select_kernel("bf16", "amx_bf16") or
   KERNPROP_CYTHON_GEMM_KERNEL=bf16=amx_bf16), and then only after it passes the
   self-check against the bf16 reference; kp_cpu_has() reports it only where CPUID shows
   AMX-TILE and AMX-BF16 and Linux granted the tile data (arch_prctl
   ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).

   Layouts (avx512_bf16.c packs them): ap (32 rows, kc words) row-major pair words, bp
   (kc, 32) pair words; kc a multiple of 16 words (32 k), zero-padded.  Like vdpbf16ps,
   tdpbf16ps treats bf16 subnormal inputs as zero. */
#include <immintrin.h>
#include <string.h>
#include "kp_gemm.h"

struct kp_tilecfg {
    uint8_t palette_id;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

void kp_tile_amx_bf16(KP_TILE_ARGS(float)) {
    struct kp_tilecfg cfg;
    float out[32][32];
    const uint32_t *aw = (const uint32_t *)ap, *bw = (const uint32_t *)bp;
    const ptrdiff_t astride = kc * 4;  /* bytes per A row */
    ptrdiff_t i, p;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette_id = 1;
    /* tiles 0-3: C (16 rows of 16 fp32); 4-5: A (16 rows of 16 pairs); 6-7: B */
    for (i = 0; i < 8; i++) {
        cfg.rows[i] = 16;
        cfg.colsb[i] = 64;
    }
    _tile_loadconfig(&cfg);
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (p = 0; p < kc; p += 16) {
        _tile_loadd(4, aw + p, astride);
        _tile_loadd(5, aw + 16 * kc + p, astride);
        _tile_loadd(6, bw + p * 32, 128);
        _tile_loadd(7, bw + p * 32 + 16, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, &out[0][0], 128);
    _tile_stored(1, &out[0][16], 128);
    _tile_stored(2, &out[16][0], 128);
    _tile_stored(3, &out[16][16], 128);
    _tile_release();
    KP_STORE_TILE(out);
}
