/*
 * q4_neon.c - NEON kernels for ARMv8.0 (no dot product instructions): int8
 * products with smull/smlal2 into int16 (two products of |values| <= 127 fit),
 * pairwise-accumulated into int32 with sadalp. See q4_neon.inc for the layout
 * and work mapping.
 */
#include <arm_neon.h>

static inline __attribute__((always_inline)) int32x4_t dot_acc_v80(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    p = vmlal_high_s8(p, a, b);
    return vpadalq_s16(acc, p);
}
#define DOT_ACC dot_acc_v80
#define NAME idf_cpu_kernels_neon
#define NAME_STR "neon"
#include "q4_neon.inc"
