/*
 * fuzz_image.c - libFuzzer target for image decoding and preprocessing:
 * idf_image_load_memory on arbitrary bytes, then (when it decodes) the
 * bicubic resize to a small square and normalisation, as the runtime would.
 * Covers WebP, HEIF and TIFF (runtime/image_formats.c) in builds that have
 * them, and the EXIF orientation readers.
 * Built only with meson -Dfuzz=true and CC=clang.
 */
#include <stddef.h>
#include <stdint.h>

#include "image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* Small limits keep each run fast and find size-check bugs sooner. */
    /* EXIF orientation on: the tag readers (libexif, the PNG chunk walk, WebP demux, libtiff) are fuzzed too */
    idf_image_limits lim = {.max_pixels = 1 << 20, .max_bytes = 1 << 20, .exif_orientation = true};
    idf_alloc al = {{0}};
    idf_err err;
    idf_image img;
    if (idf_image_load_memory(data, size, &lim, &al, &img, &err) != IDEFICS_OK) return 0;
    idf_image small;
    if (idf_image_resize_bicubic(&img, 30, 30, &al, &small, &err) == IDEFICS_OK) {
        static const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
        static const float std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
        float chw[3 * 30 * 30];
        idf_image_normalize(&small, mean, std, chw);
        idf_image_free(&small, &al);
    }
    idf_image_free(&img, &al);
    return 0;
}
