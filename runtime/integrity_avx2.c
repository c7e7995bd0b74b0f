/*
 * integrity_avx2.c - XXH3-64 over a chunk in slices, built with -mavx2 (issue 15).
 * Debian's libxxhash is built for baseline x86-64 (SSE2): 5 GB/s per core in
 * cache, which made it the bottleneck of load-time verification; the inlined
 * AVX2 path runs at twice that. integrity.c picks this on CPUs with AVX2.
 * Same bytes in, same hash out as the library (XXH3 is one algorithm).
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "integrity.h"

uint64_t idf_hash_slices_avx2(const uint8_t *src, uint64_t size, uint64_t slice, idf_slice_fn fn, void *ud) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (uint64_t off = 0; off < size; off += slice) {
        const uint64_t n = size - off < slice ? size - off : slice;
        XXH3_64bits_update(&st, src + off, (size_t)n);
        if (fn) fn(ud, src + off, off, n);
    }
    return XXH3_64bits_digest(&st);
}
