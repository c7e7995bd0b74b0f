/*
 * image.h - image decoding and the IDEFICS image processor (PIL path):
 * decode (libjpeg-turbo for JPEG when built with it, stb_image otherwise) ->
 * RGB, alpha composited over white -> bicubic resize to
 * image_size x image_size exactly as Pillow's Image.resize(BICUBIC) (which
 * antialiases when shrinking) -> rescale 1/255 -> normalise (x - mean) / std,
 * laid out CHW.
 *
 * Images are untrusted: sizes are checked against caller limits before any
 * allocation, and decode failures give IDEFICS_ERR_IMAGE_DECODE with the decoder's reason.
 */
#ifndef IDF_IMAGE_H
#define IDF_IMAGE_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

typedef struct idf_image {
    int w, h;
    int src_w, src_h; /* the size the file declares, after EXIF orientation (0 = w, h) */
    uint8_t *rgb; /* [h][w][3], allocated with the idf_alloc given to the producer */
} idf_image;

typedef struct idf_image_limits {
    int64_t max_pixels; /* w*h */
    int64_t max_bytes;  /* encoded size */
    bool exif_orientation; /* turn the decoded image upright by its EXIF Orientation tag */
} idf_image_limits;

/* The EXIF Orientation (1..8) of an encoded image, 1 when it has none or the
 * build has no EXIF reader (libexif). Exposed for tests and the fuzz target. */
int idf_image_exif_orientation(const void *data, size_t size);
/* Rotate / mirror an RGB image in place (new buffer) as Orientation o asks. */
idefics_status idf_image_orient(idf_image *img, int o, const idf_alloc *al, idf_err *err);

idefics_status idf_image_load_file(const char *path, const idf_image_limits *lim, const idf_alloc *al,
                                   idf_image *out, idf_err *err);
idefics_status idf_image_load_memory(const void *data, size_t size, const idf_image_limits *lim,
                                     const idf_alloc *al, idf_image *out, idf_err *err);
/* From caller pixels: channels 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA);
 * alpha is composited over opaque white. */
idefics_status idf_image_from_pixels(const uint8_t *px, int w, int h, int channels, size_t stride,
                                     const idf_image_limits *lim, const idf_alloc *al, idf_image *out,
                                     idf_err *err);
void idf_image_free(idf_image *img, const idf_alloc *al);

/* Pillow-exact BICUBIC resize of an RGB8 image to ow x oh. */
idefics_status idf_image_resize_bicubic(const idf_image *in, int ow, int oh, const idf_alloc *al, idf_image *out,
                                        idf_err *err);

/* Which JPEG decoder this build uses: "libjpeg-turbo X.Y.Z" (or "libjpeg")
 * when built with -Djpeg, bit-exact with Pillow; "stb_image" otherwise, within
 * a few levels (docs/IMAGES.md). A static string. */
const char *idf_image_jpeg_decoder(void);
/* x/255 then (x - mean[c]) / std[c], written as CHW floats [3][h][w]. */
void idf_image_normalize(const idf_image *img, const float mean[3], const float std[3], float *chw);

#endif /* IDF_IMAGE_H */
