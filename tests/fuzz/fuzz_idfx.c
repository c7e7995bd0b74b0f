/*
 * fuzz_idfx.c - libFuzzer target for the IDFX reader: idfx_open, then
 * idfx_materialize with verify, then idfx_close, on the raw input. A second
 * run recomputes the header and index checksums first (when the header is
 * long enough), so mutations reach the structural checks and the zstd/unshuffle
 * decoders instead of stopping at a checksum; that run materializes without
 * verify so chunk payloads are decoded even when their checksums are stale.
 *
 * Build: CC=clang meson setup build-fuzz . -Dfuzz=true && ninja -C build-fuzz tests/fuzz_idfx
 * Run:   mkdir -p /tmp/idfx-corpus && build-fuzz/tests/fuzz_idfx /tmp/idfx-corpus tests/corrupt
 *        (the first directory receives new inputs; tests/corrupt is the seed corpus:
 *        the corrupt files plus valid.idfx)
 */
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "idfx_reader.h"

/* Decoded bytes above this are skipped: the fuzzer's memory limit is not the
 * reader's bug (the reader itself bounds raw sizes by what zstd can expand to). */
#define FUZZ_MAX_ARENA (256u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void run(const uint8_t *p, size_t size, bool verify) {
    idfx_file f;
    idf_err e;
    if (idfx_open(&f, p, size, NULL, &e) != IDEFICS_OK) return;
    uint64_t total = 0;
    for (uint32_t i = 0; i < f.n_tensors; i++) total += f.tensors[i].nbytes;
    if (total <= FUZZ_MAX_ARENA && idfx_materialize(&f, NULL, verify, &e) == IDEFICS_OK) {
        /* touch every tensor so a wrong pointer shows up under ASan */
        volatile uint8_t sink = 0;
        for (uint32_t i = 0; i < f.n_tensors; i++) {
            const uint8_t *d = f.tensors[i].data;
            sink ^= d[0] ^ d[f.tensors[i].nbytes - 1];
        }
        (void)sink;
    }
    idfx_close(&f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* a private copy: the reader must not depend on the caller's buffer slack */
    uint8_t *p = malloc(size ? size : 1);
    if (!p) return 0;
    memcpy(p, data, size);
    run(p, size, true);
    if (size >= IDFX_HEADER_SIZE) {
        uint64_t mo = idf_rd64(p + IDFX_OFF_META_OFFSET), ms = idf_rd64(p + IDFX_OFF_META_SIZE);
        uint64_t d0 = idf_rd64(p + IDFX_OFF_DIR_OFFSET), ds = idf_rd64(p + IDFX_OFF_DIR_SIZE);
        if (idf_range_ok(mo, ms, size) && idf_range_ok(d0, ds, size)) {
            XXH3_state_t *s = XXH3_createState();
            if (s) {
                XXH3_64bits_reset(s);
                XXH3_64bits_update(s, p + mo, (size_t)ms);
                XXH3_64bits_update(s, p + d0, (size_t)ds);
                idf_wr64(p + IDFX_OFF_INDEX_CHECKSUM, XXH3_64bits_digest(s));
                XXH3_freeState(s);
            }
        }
        idf_wr64(p + IDFX_OFF_HEADER_CHECKSUM, XXH3_64bits(p, IDFX_OFF_HEADER_CHECKSUM));
        run(p, size, false);
    }
    free(p);
    return 0;
}
