/*
 * cpu_features.h - what the CPU this process runs on can execute, asked of the
 * hardware/OS at run time (cpuid + xgetbv on x86-64, getauxval(AT_HWCAP) on
 * AArch64), so one binary carries every SIMD path and picks the best one that
 * the machine and the OS (register state saving) allow. No cached global: the
 * caller keeps the struct (the CPU backend keeps it in its context).
 */
#ifndef IDF_CPU_FEATURES_H
#define IDF_CPU_FEATURES_H

#include <stdbool.h>

typedef struct idf_cpu_features {
    /* x86-64 */
    bool avx2, fma, f16c;       /* with OS support for ymm state */
    bool avx_vnni;              /* VEX vpdpbusd on ymm */
    bool avx512f, avx512bw, avx512vl, avx512_vnni; /* with OS support for zmm/opmask state */
    /* AArch64 */
    bool neon;                  /* always on AArch64 */
    bool dotprod;               /* sdot/udot (asimddp) */
    bool i8mm;                  /* smmla/usdot */
} idf_cpu_features;

/* Fills *f with the features of the current CPU (all false elsewhere). */
void idf_cpu_detect(idf_cpu_features *f);

#endif /* IDF_CPU_FEATURES_H */
