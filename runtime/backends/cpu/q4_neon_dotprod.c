/*
 * q4_neon_dotprod.c - NEON kernels for ARMv8.2+ with FEAT_DotProd (sdot: four
 * int8 products summed into each int32 lane). Built with
 * -march=armv8.2-a+dotprod (runtime/meson.build) and called only when
 * getauxval reports asimddp. See q4_neon.inc for the layout and work mapping.
 */
#include <arm_neon.h>

#define DOT_ACC vdotq_s32
#define NAME idf_cpu_kernels_neon_dotprod
#define NAME_STR "neon-dotprod"
#include "q4_neon.inc"
