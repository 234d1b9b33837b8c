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
    ptrdiff_t i, p;
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
    KP_STORE_TILE(out);
}

/* --- packing into bf16 pair layout (run only with the kernel above) ------------------
   Integer round-to-nearest-even on the float32 bits, 16 lanes at a time: add 0x7FFF plus
   the lowest kept bit, keep the high half; a NaN becomes the quiet NaN 0x7FC0 (its
   payload could otherwise round up to inf).  Not vcvtne2ps2bf16: it flushes subnormals,
   which the "bf16" reference keeps.  Lanes past the data are loaded as 0, which packs
   as bf16 zero: the zero padding of edge slivers and of an odd K's last pair. */

static inline __m512i kp_rne16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
    return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q),
                                 _mm512_set1_epi32(0x7FC0));
}

static inline __mmask16 kp_first(ptrdiff_t n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
}

static inline uint32_t kp_bf16_scalar(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
}

/* bf16 pair word of (x[0], x[step]) with x[step] taken as 0 when !has_hi */
static inline uint32_t kp_pair_scalar(const float *x, ptrdiff_t step, int has_hi) {
    return kp_bf16_scalar(x[0]) | ((has_hi ? kp_bf16_scalar(x[step]) : 0u) << 16);
}

#define KP_MAX_KC 1024

/* x (n,) contiguous, n <= KP_MAX_KC -> dst as (n + 1) / 2 pair words */
static void kp_bf16_run(const float *x, ptrdiff_t n, uint32_t *dst) {
    uint16_t half[KP_MAX_KC + 32];
    ptrdiff_t i;
    for (i = 0; i < n; i += 16) {
        __m512i r = kp_rne16(_mm512_maskz_loadu_ps(kp_first(n - i), x + i));
        _mm256_storeu_si256((__m256i *)(half + i), _mm512_cvtepi32_epi16(r));
    }
    half[n] = 0;  /* the odd K's missing partner */
    memcpy(dst, half, (size_t)((n + 1) / 2) * 4);
}

void kp_pack_a_bf16(const float *a, ptrdiff_t sa0, ptrdiff_t sa1, ptrdiff_t mc, ptrdiff_t kc,
                    ptrdiff_t mr, float *out_) {
    /* a (mc, kc) any strides -> out (ceil(mc / mr), ceil(kc / 2), mr) pair words */
    uint32_t *out = (uint32_t *)out_;
    uint32_t words[KP_MAX_KC / 2 + 16];
    ptrdiff_t nw = (kc + 1) / 2, s, i, p;
    for (s = 0; s * mr < mc; s++, out += nw * mr) {
        ptrdiff_t rows = mc - s * mr < mr ? mc - s * mr : mr;
        const float *as = a + s * mr * sa0;
        if (sa1 == 1 && kc <= KP_MAX_KC) {
            /* rows contiguous in k: each row converted as a run, then spread */
            for (i = 0; i < mr; i++) {
                if (i < rows) kp_bf16_run(as + i * sa0, kc, words);
                else memset(words, 0, (size_t)nw * 4);
                for (p = 0; p < nw; p++) out[p * mr + i] = words[p];
            }
        } else if (sa0 == 1 && mr <= 16) {
            /* transposed A: the sliver's rows are contiguous at each k */
            __mmask16 m = kp_first(rows);
            for (p = 0; p < nw; p++) {
                __m512i lo = kp_rne16(_mm512_maskz_loadu_ps(m, as + 2 * p * sa1));
                __m512i hi = 2 * p + 1 < kc
                    ? kp_rne16(_mm512_maskz_loadu_ps(m, as + (2 * p + 1) * sa1))
                    : _mm512_setzero_si512();
                _mm512_mask_storeu_epi32(out + p * mr, kp_first(mr),
                                         _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        } else {
            for (p = 0; p < nw; p++)
                for (i = 0; i < mr; i++)
                    out[p * mr + i] = i < rows
                        ? kp_pair_scalar(as + i * sa0 + 2 * p * sa1, sa1, 2 * p + 1 < kc) : 0u;
        }
    }
}

void kp_pack_b_bf16(const float *b, ptrdiff_t sb0, ptrdiff_t sb1, ptrdiff_t kc, ptrdiff_t cols,
                    ptrdiff_t nr, float *out_) {
    /* b (kc, cols) any strides, cols <= nr -> out (ceil(kc / 2), nr) pair words */
    uint32_t *out = (uint32_t *)out_;
    uint32_t words[KP_MAX_KC / 2 + 16];
    ptrdiff_t nw = (kc + 1) / 2, j, p, j0;
    if (sb1 == 1 && nr % 16 == 0) {
        /* rows contiguous in j: two rows of 16 columns make 16 pair words */
        for (p = 0; p < nw; p++)
            for (j0 = 0; j0 < nr; j0 += 16) {
                __mmask16 m = kp_first(cols - j0);
                __m512i lo = kp_rne16(_mm512_maskz_loadu_ps(m, b + 2 * p * sb0 + j0));
                __m512i hi = 2 * p + 1 < kc
                    ? kp_rne16(_mm512_maskz_loadu_ps(m, b + (2 * p + 1) * sb0 + j0))
                    : _mm512_setzero_si512();
                _mm512_storeu_si512((void *)(out + p * nr + j0),
                                    _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
    } else if (sb0 == 1 && kc <= KP_MAX_KC) {
        /* transposed B (w.T): columns contiguous in k, converted as runs, then spread */
        for (j = 0; j < nr; j++) {
            if (j < cols) kp_bf16_run(b + j * sb1, kc, words);
            else memset(words, 0, (size_t)nw * 4);
            for (p = 0; p < nw; p++) out[p * nr + j] = words[p];
        }
    } else {
        for (p = 0; p < nw; p++)
            for (j = 0; j < nr; j++)
                out[p * nr + j] = j < cols
                    ? kp_pair_scalar(b + 2 * p * sb0 + j * sb1, sb0, 2 * p + 1 < kc) : 0u;
    }
}

/* --- the AMX layouts (for amx_bf16.c; packed here, where the RNE code lives) ---------
   An AMX A tile is 16 rows of 64 bytes (16 pair words of one row), loaded with a row
   stride, so an A sliver is row-major: (mr rows, wpad words); a B tile is 16 pair rows
   of 16 columns, which the B sliver layout above already is (row stride nr words).  K
   is zero-padded to wpad = a multiple of 16 words (32 k), a whole tile. */

static inline ptrdiff_t kp_amx_words(ptrdiff_t kc) {
    return ((kc + 1) / 2 + 15) / 16 * 16;
}

void kp_pack_a_amx(const float *a, ptrdiff_t sa0, ptrdiff_t sa1, ptrdiff_t mc, ptrdiff_t kc,
                   ptrdiff_t mr, float *out_) {
    /* a (mc, kc) any strides -> out (ceil(mc / mr) mr, wpad) pair words, zero-padded */
    uint32_t *out = (uint32_t *)out_;
    ptrdiff_t nw = (kc + 1) / 2, wpad = kp_amx_words(kc), rows = (mc + mr - 1) / mr * mr;
    ptrdiff_t i, p;
    for (i = 0; i < rows; i++, out += wpad) {
        const float *row = a + i * sa0;
        if (i >= mc) {
            memset(out, 0, (size_t)wpad * 4);
            continue;
        }
        if (sa1 == 1 && kc <= KP_MAX_KC) {
            kp_bf16_run(row, kc, out);
        } else {
            for (p = 0; p < nw; p++) out[p] = kp_pair_scalar(row + 2 * p * sa1, sa1, 2 * p + 1 < kc);
        }
        memset(out + nw, 0, (size_t)(wpad - nw) * 4);
    }
}

void kp_pack_b_amx(const float *b, ptrdiff_t sb0, ptrdiff_t sb1, ptrdiff_t kc, ptrdiff_t cols,
                   ptrdiff_t nr, float *out) {
    /* b (kc, cols) -> out (wpad, nr) pair words: the bf16 sliver, then zero pair rows */
    ptrdiff_t nw = (kc + 1) / 2;
    kp_pack_b_bf16(b, sb0, sb1, kc, cols, nr, out);
    memset(out + nw * nr, 0, (size_t)((kp_amx_words(kc) - nw) * nr) * 4);
}
