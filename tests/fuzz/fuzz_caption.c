/*
 * fuzz_caption.c - libFuzzer target for the parsers of `idefics caption`
 * (tools/cli/caption_out.c, caption_xmp.c): the first byte picks one of
 *   0-3  the record reader used by resume, on a JSONL / CSV / TSV / TXT file
 *        (cut-record detection, CSV quotes across lines, escapes, base64);
 *   4    the XMP sidecar merge (libxml2) into an existing sidecar;
 * and checks what it can: the complete-record end lies inside the input, a
 * merged sidecar is non-empty and merging it again succeeds.
 * Built only with meson -Dfuzz=true and CC=clang. Seeds: any caption output
 * (tests/test_caption.sh writes all four formats) and XMP files.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "caption.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void drop(void *ud, cap_prev *r) {
    size_t *n = ud;
    (*n)++;
    if (r->path_len && !r->path) abort();
    cap_prev_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t sel = data[0] % 5;
    const char *d = (const char *)data + 1;
    size_t n = size - 1;
    if (sel < 4) {
        size_t end = 0, seen = 0;
        size_t count = cap_parse_records(d, n, (cap_format)sel, &end, drop, &seen);
        if (end > n || count != seen) abort();
    } else {
        char msg[512];
        size_t len = 0;
        char *doc = cap_xmp_merge(d, n, "A caption with <markup> & \"quotes\".", "idefics-edge fuzz", &len, msg,
                                  sizeof msg);
        if (doc) {
            if (len == 0) abort();
            size_t len2 = 0;
            char *again = cap_xmp_merge(doc, len, "second", "idefics-edge fuzz", &len2, msg, sizeof msg);
            if (!again) abort(); /* our own output must merge */
            free(again);
            free(doc);
        }
    }
    return 0;
}
