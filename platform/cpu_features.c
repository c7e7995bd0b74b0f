/*
 * cpu_features.c - run-time CPU feature detection (cpu_features.h).
 *
 * x86-64: a feature counts only when both cpuid reports it and xgetbv says the
 * OS saves the registers it uses (XCR0 bits: SSE|AVX for ymm, plus opmask,
 * ZMM_Hi256 and Hi16_ZMM for AVX-512); otherwise the instructions fault.
 * AArch64: getauxval(AT_HWCAP) bits, which the kernel sets only for features
 * it supports (FEAT_DotProd = HWCAP_ASIMDDP, FEAT_I8MM = HWCAP2_I8MM).
 */
#include "cpu_features.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static unsigned long long xgetbv0(void) {
    unsigned int lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}

void idf_cpu_detect(idf_cpu_features *f) {
    memset(f, 0, sizeof *f);
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    const bool osxsave = (c >> 27) & 1, has_avx = (c >> 28) & 1;
    const bool has_fma = (c >> 12) & 1, has_f16c = (c >> 29) & 1;
    if (!osxsave || !has_avx)
        return;
    const unsigned long long xcr0 = xgetbv0();
    const bool ymm_ok = (xcr0 & 0x6) == 0x6;
    const bool zmm_ok = ymm_ok && (xcr0 & 0xe0) == 0xe0;
    if (!ymm_ok)
        return;
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    f->avx2 = (b >> 5) & 1;
    f->fma = has_fma;
    f->f16c = has_f16c;
    if (zmm_ok) {
        f->avx512f = (b >> 16) & 1;
        f->avx512bw = (b >> 30) & 1;
        f->avx512vl = (b >> 31) & 1;
        f->avx512_vnni = (c >> 11) & 1;
    }
    __cpuid_count(7, 1, a, b, c, d);
    f->avx_vnni = (a >> 4) & 1;
}

#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>

#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#ifndef HWCAP2_I8MM
#define HWCAP2_I8MM (1UL << 13)
#endif

void idf_cpu_detect(idf_cpu_features *f) {
    memset(f, 0, sizeof *f);
    f->neon = true;
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    f->dotprod = (hw & HWCAP_ASIMDDP) != 0;
    f->i8mm = (hw2 & HWCAP2_I8MM) != 0;
}

#elif defined(__aarch64__)
/* Other AArch64 OSes (Apple, Android without auxv): NEON is architectural;
 * dotprod is assumed only when the compiler was told the target has it. */
void idf_cpu_detect(idf_cpu_features *f) {
    memset(f, 0, sizeof *f);
    f->neon = true;
#ifdef __ARM_FEATURE_DOTPROD
    f->dotprod = true;
#endif
}

#else
void idf_cpu_detect(idf_cpu_features *f) {
    memset(f, 0, sizeof *f);
}
#endif
