/* AVX-512F micro-tiles (compiled with -mavx512f -mfma by setup.py): 6 x 32 fp32, 6 x 16
   fp64.  12 of the 32 zmm registers hold accumulators: enough independent FMA chains
   for two FMA pipes of latency 4 (Zen 4/5, Intel server cores). */
#include "simd_tile.h"

typedef float kp_v16f __attribute__((vector_size(64)));
typedef double kp_v8d __attribute__((vector_size(64)));
KP_SIMD_TILE(kp_tile_avx512_f, float, kp_v16f, 16)
KP_SIMD_TILE(kp_tile_avx512_d, double, kp_v8d, 8)
KP_SIMD_TILE_NARROW(kp_tile_avx512_narrow_f, float, kp_v16f, 16)
KP_SIMD_TILE_NARROW(kp_tile_avx512_narrow_d, double, kp_v8d, 8)
