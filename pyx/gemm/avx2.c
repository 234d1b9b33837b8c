/* AVX2+FMA micro-tiles (compiled with -mavx2 -mfma by setup.py): 6 x 16 fp32, 6 x 8 fp64. */
#include "simd_tile.h"

typedef float kp_v8f __attribute__((vector_size(32)));
typedef double kp_v4d __attribute__((vector_size(32)));
KP_SIMD_TILE(kp_tile_avx2_f, float, kp_v8f, 8)
KP_SIMD_TILE(kp_tile_avx2_d, double, kp_v4d, 4)
KP_SIMD_TILE_NARROW(kp_tile_avx2_narrow_f, float, kp_v8f, 8)
KP_SIMD_TILE_NARROW(kp_tile_avx2_narrow_d, double, kp_v4d, 4)
