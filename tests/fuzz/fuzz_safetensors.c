/*
 * fuzz_safetensors.c - libFuzzer target for the converter's safetensors header
 * parser (tools/convert/safetensors.h). Any input must either parse into
 * tensors whose byte ranges lie inside the input and do not overlap, or be
 * refused with IDEFICS_ERR_BAD_CHECKPOINT; nothing may read out of bounds
 * (ASan) or overflow (UBSan).
 *
 * Build: CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz
 * Run:   build-fuzz/tests/fuzz_safetensors -max_total_time=600 CORPUS_DIR
 * Seeds: any .safetensors file, e.g. tests/fixtures/convert/tiny-hf/.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    idf_st_file f;
    char err[256];
    int st = idf_st_parse(data, size, "fuzz", &f, err, sizeof err);
    if (st == 0) {
        for (uint32_t i = 0; i < f.n_tensors; i++) {
            const idf_st_tensor *t = &f.tensors[i];
            if (t->offset < f.data_start || t->offset + t->nbytes > size) abort();
            if (idf_st_find(&f, t->name) != t) abort();
            /* touch the first and last byte of the range: ASan catches any lie left */
            if (t->nbytes) {
                volatile uint8_t x = idf_st_data(&f, t)[0];
                x = idf_st_data(&f, t)[t->nbytes - 1];
                (void)x;
            }
        }
        idf_st_close(&f);
    } else if (st != IDEFICS_ERR_BAD_CHECKPOINT && st != IDEFICS_ERR_OUT_OF_MEMORY) {
        abort();
    }
    return 0;
}
