/*
 * image_formats.h - the optional decoders (WebP via libwebp, HEIC/HEIF via
 * libheif, TIFF via libtiff) and the EXIF Orientation reader (libexif), each
 * a meson feature (-Dwebp, -Dheif, -Dtiff, -Dexif). A decoder the build lacks
 * returns IDEFICS_ERR_UNSUPPORTED naming the missing feature.
 *
 * budget is the most pixels the decode may produce (idf_image_budget): the
 * declared size is checked against it before any pixel memory is allocated.
 * Results are RGB in idf_alloc memory, alpha composited over white as
 * convert_to_rgb does.
 */
#ifndef IDF_IMAGE_FORMATS_H
#define IDF_IMAGE_FORMATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* Pixels an encoded image of size bytes may decode to under lim (image.c). */
int64_t idf_image_budget(const idf_image_limits *lim, size_t size);

idefics_status idf_decode_webp(const uint8_t *d, size_t n, int64_t budget, const idf_alloc *al, idf_image *out,
                               idf_err *err);
/* HEIF orientation lives in the container (irot/imir boxes): libheif applies
 * it unless upright is false. */
idefics_status idf_decode_heif(const uint8_t *d, size_t n, int64_t budget, bool upright, const idf_alloc *al,
                               idf_image *out, idf_err *err);
idefics_status idf_decode_tiff(const uint8_t *d, size_t n, int64_t budget, const idf_alloc *al, idf_image *out,
                               idf_err *err);

/* "webp heif tiff exif" as built, for messages and `idefics devices`-style reports. */
const char *idf_image_features(void);

#endif /* IDF_IMAGE_FORMATS_H */
