/*
 * image_formats.c - optional decoders and EXIF orientation (image_formats.h).
 *
 * All parsing is done by Debian's libraries: libwebp (+ libwebpdemux for the
 * EXIF chunk), libheif, libtiff, libexif. The only byte walking here is the
 * PNG chunk list, to hand an eXIf chunk to libexif, bounded by the buffer.
 * None of these libraries prints: libtiff's messages go to per-handle
 * handlers (TIFFOpenOptions, libtiff >= 4.5) that keep the text for the error,
 * so no process-global handler is touched.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image_formats.h"

#if IDF_HAVE_WEBP
#include <webp/decode.h>
#include <webp/demux.h>
#endif
#if IDF_HAVE_HEIF
#include <libheif/heif.h>
#endif
#if IDF_HAVE_TIFF
#include <tiffio.h>
#endif
#if IDF_HAVE_EXIF
#include <libexif/exif-data.h>
#endif

const char *idf_image_features(void) {
    return "jpeg"
#if IDF_HAVE_WEBP
           " webp"
#endif
#if IDF_HAVE_HEIF
           " heif"
#endif
#if IDF_HAVE_TIFF
           " tiff"
#endif
#if IDF_HAVE_EXIF
           " exif"
#endif
        ;
}

/* Used by whichever decoders this build has: a build with none of the
 * optional libraries (e.g. the aarch64 cross build) has no caller. */
#if IDF_HAVE_WEBP || IDF_HAVE_HEIF || IDF_HAVE_TIFF
static idefics_status over_budget(idf_err *err, const char *fmt, uint64_t w, uint64_t h, int64_t budget) {
    return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                    "image: %s declares %llux%llu, over the decode budget of %lld pixels (max_pixels, or more than "
                    "%d:1 compression above 4 megapixels)",
                    fmt, (unsigned long long)w, (unsigned long long)h, (long long)budget, IDEFICS_IMAGE_MAX_RATIO);
}

static bool fits(uint64_t w, uint64_t h, int64_t budget) {
    uint64_t px;
    return w > 0 && h > 0 && w <= INT_MAX && h <= INT_MAX && idf_mul_u64(w, h, &px) && px <= (uint64_t)budget;
}
#endif

/* ------------------------------------------------------------------ WebP */

idefics_status idf_decode_webp(const uint8_t *d, size_t n, int64_t budget, const idf_alloc *al, idf_image *out,
                               idf_err *err) {
#if IDF_HAVE_WEBP
    WebPBitstreamFeatures ft;
    if (WebPGetFeatures(d, n, &ft) != VP8_STATUS_OK)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: WebP header is malformed");
    if (!fits((uint64_t)ft.width, (uint64_t)ft.height, budget))
        return over_budget(err, "WebP", (uint64_t)ft.width, (uint64_t)ft.height, budget);
    if (ft.has_animation) /* PIL opens the first frame; libwebp's simple API refuses animations */
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "image: animated WebP is not supported");
    int w = 0, h = 0;
    uint8_t *px = ft.has_alpha ? WebPDecodeRGBA(d, n, &w, &h) : WebPDecodeRGB(d, n, &w, &h);
    if (!px) return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: WebP decode failed");
    idefics_status st = IDEFICS_OK;
    if (w != ft.width || h != ft.height)
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: WebP decoded %dx%d, header said %dx%d", w, h, ft.width,
                      ft.height);
    else st = idf_image_from_pixels(px, w, h, ft.has_alpha ? 4 : 3, 0, NULL, al, out, err);
    WebPFree(px);
    return st;
#else
    (void)d, (void)n, (void)budget, (void)al, (void)out;
    return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "image: WebP support is not built (meson feature 'webp', libwebp-dev)");
#endif
}

/* ------------------------------------------------------------------ HEIF */

idefics_status idf_decode_heif(const uint8_t *d, size_t n, int64_t budget, bool upright, const idf_alloc *al,
                               idf_image *out, idf_err *err) {
#if IDF_HAVE_HEIF
    struct heif_context *ctx = heif_context_alloc();
    struct heif_image_handle *hd = NULL;
    struct heif_image *img = NULL;
    struct heif_decoding_options *opt = NULL;
    idefics_status st = IDEFICS_OK;
    if (!ctx) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for a HEIF context");
    heif_context_set_maximum_image_size_limit(ctx, 1 << 16);
    struct heif_error he = heif_context_read_from_memory_without_copy(ctx, d, n, NULL);
    if (he.code == heif_error_Ok) he = heif_context_get_primary_image_handle(ctx, &hd);
    if (he.code != heif_error_Ok) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: HEIF: %s", he.message ? he.message : "unreadable");
        goto done;
    }
    int w = heif_image_handle_get_width(hd), h = heif_image_handle_get_height(hd);
    if (!fits((uint64_t)(w > 0 ? w : 0), (uint64_t)(h > 0 ? h : 0), budget)) {
        st = over_budget(err, "HEIF", (uint64_t)(w > 0 ? w : 0), (uint64_t)(h > 0 ? h : 0), budget);
        goto done;
    }
    bool alpha = heif_image_handle_has_alpha_channel(hd);
    opt = heif_decoding_options_alloc();
    if (opt) opt->ignore_transformations = upright ? 0 : 1;
    he = heif_decode_image(hd, &img, heif_colorspace_RGB,
                           alpha ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB, opt);
    if (he.code != heif_error_Ok) {
        st = idf_errf(err, he.code == heif_error_Unsupported_feature || he.code == heif_error_Unsupported_filetype
                               ? IDEFICS_ERR_UNSUPPORTED
                               : IDEFICS_ERR_IMAGE_DECODE,
                      "image: HEIF decode failed: %s", he.message ? he.message : "?");
        goto done;
    }
    int stride = 0;
    const uint8_t *px = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
    int iw = heif_image_get_width(img, heif_channel_interleaved), ih = heif_image_get_height(img, heif_channel_interleaved);
    if (!px || stride <= 0 || !fits((uint64_t)(iw > 0 ? iw : 0), (uint64_t)(ih > 0 ? ih : 0), budget)) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: HEIF decoder returned no usable plane (%dx%d)", iw, ih);
        goto done;
    }
    st = idf_image_from_pixels(px, iw, ih, alpha ? 4 : 3, (size_t)stride, NULL, al, out, err);
done:
    heif_decoding_options_free(opt);
    heif_image_release(img);
    heif_image_handle_release(hd);
    heif_context_free(ctx);
    return st;
#else
    (void)d, (void)n, (void)budget, (void)upright, (void)al, (void)out;
    return idf_errf(err, IDEFICS_ERR_UNSUPPORTED,
                    "image: HEIC/HEIF support is not built (meson feature 'heif', libheif-dev)");
#endif
}

/* ------------------------------------------------------------------ TIFF */

#if IDF_HAVE_TIFF
typedef struct tiff_mem {
    const uint8_t *d;
    toff_t n, pos;
    char msg[256];
} tiff_mem;

static tmsize_t tm_read(thandle_t h, void *buf, tmsize_t size) {
    tiff_mem *m = (tiff_mem *)h;
    if (size < 0 || m->pos >= m->n) return 0;
    toff_t left = m->n - m->pos, k = (toff_t)size < left ? (toff_t)size : left;
    memcpy(buf, m->d + m->pos, (size_t)k);
    m->pos += k;
    return (tmsize_t)k;
}
static tmsize_t tm_write(thandle_t h, void *buf, tmsize_t size) {
    (void)h, (void)buf, (void)size;
    return -1;
}
static toff_t tm_seek(thandle_t h, toff_t off, int whence) {
    tiff_mem *m = (tiff_mem *)h;
    toff_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->n : 0;
    if (off > UINT64_MAX - base) return (toff_t)-1;
    m->pos = base + off;
    return m->pos;
}
static int tm_close(thandle_t h) {
    (void)h;
    return 0;
}
static toff_t tm_size(thandle_t h) { return ((tiff_mem *)h)->n; }
static int tm_map(thandle_t h, void **base, toff_t *size) {
    (void)h, (void)base, (void)size;
    return 0;
}
static void tm_unmap(thandle_t h, void *base, toff_t size) { (void)h, (void)base, (void)size; }
static int tm_error(TIFF *t, void *ud, const char *module, const char *fmt, va_list ap) {
    (void)t, (void)module;
    tiff_mem *m = ud;
    if (m && !m->msg[0]) vsnprintf(m->msg, sizeof m->msg, fmt, ap);
    return 1; /* handled: the global handler (stderr) is not called */
}
static int tm_warning(TIFF *t, void *ud, const char *module, const char *fmt, va_list ap) {
    (void)t, (void)ud, (void)module, (void)fmt, (void)ap;
    return 1;
}

static TIFF *tiff_open(tiff_mem *m) {
    TIFFOpenOptions *o = TIFFOpenOptionsAlloc();
    if (!o) return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(o, tm_error, m);
    TIFFOpenOptionsSetWarningHandlerExtR(o, tm_warning, m);
    TIFFOpenOptionsSetMaxSingleMemAlloc(o, (tmsize_t)256 << 20);
    TIFF *t = TIFFClientOpenExt("image", "rm", (thandle_t)m, tm_read, tm_write, tm_seek, tm_close, tm_size, tm_map,
                                tm_unmap, o);
    TIFFOpenOptionsFree(o);
    return t;
}
#endif

idefics_status idf_decode_tiff(const uint8_t *d, size_t n, int64_t budget, const idf_alloc *al, idf_image *out,
                               idf_err *err) {
#if IDF_HAVE_TIFF
    tiff_mem m = {.d = d, .n = n};
    TIFF *t = tiff_open(&m);
    if (!t) return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: TIFF: %s", m.msg[0] ? m.msg : "unreadable");
    uint32_t w = 0, h = 0;
    uint16_t orient = ORIENTATION_TOPLEFT;
    TIFFGetField(t, TIFFTAG_IMAGEWIDTH, &w);
    TIFFGetField(t, TIFFTAG_IMAGELENGTH, &h);
    TIFFGetFieldDefaulted(t, TIFFTAG_ORIENTATION, &orient);
    idefics_status st = IDEFICS_OK;
    uint32_t *raster = NULL;
    if (!fits(w, h, budget)) {
        st = over_budget(err, "TIFF", w, h, budget);
        goto done;
    }
    /* Read as stored (the requested orientation is the file's own, so libtiff
     * flips nothing); the EXIF step of idf_image_load_memory turns it. */
    TIFFRGBAImage img;
    char emsg[1024] = "";
    if (!TIFFRGBAImageOK(t, emsg) || !TIFFRGBAImageBegin(&img, t, 0, emsg)) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: TIFF: %s", emsg[0] ? emsg : m.msg);
        goto done;
    }
    img.req_orientation = orient;
    raster = _TIFFmalloc((tmsize_t)((size_t)w * h * sizeof(uint32_t)));
    if (!raster) {
        TIFFRGBAImageEnd(&img);
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for a %ux%u TIFF", w, h);
        goto done;
    }
    int ok = TIFFRGBAImageGet(&img, raster, w, h);
    TIFFRGBAImageEnd(&img);
    if (!ok) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: TIFF decode failed: %s", m.msg[0] ? m.msg : "?");
        goto done;
    }
    /* Packed ABGR words: R in the low byte. Repack as RGBA bytes in place. */
    for (size_t i = 0; i < (size_t)w * h; i++) {
        uint32_t v = raster[i];
        uint8_t *p = (uint8_t *)&raster[i];
        p[0] = (uint8_t)TIFFGetR(v);
        p[1] = (uint8_t)TIFFGetG(v);
        p[2] = (uint8_t)TIFFGetB(v);
        p[3] = (uint8_t)TIFFGetA(v);
    }
    st = idf_image_from_pixels((const uint8_t *)raster, (int)w, (int)h, 4, 0, NULL, al, out, err);
done:
    _TIFFfree(raster);
    TIFFClose(t);
    return st;
#else
    (void)d, (void)n, (void)budget, (void)al, (void)out;
    return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "image: TIFF support is not built (meson feature 'tiff', libtiff-dev)");
#endif
}

/* ------------------------------------------------------------------ EXIF */

#if IDF_HAVE_EXIF
/* Orientation from an EXIF block: a JPEG (libexif finds its APP1 segment) or
 * "Exif\0\0" followed by a TIFF structure. */
static int exif_orientation_of(const uint8_t *d, size_t n) {
    if (n > UINT_MAX) return 1;
    ExifData *ed = exif_data_new();
    if (!ed) return 1;
    exif_data_unset_option(ed, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION); /* read, never "repair" */
    exif_data_set_option(ed, EXIF_DATA_OPTION_DONT_CHANGE_MAKER_NOTE);
    exif_data_load_data(ed, d, (unsigned)n);
    int o = 1;
    ExifEntry *e = exif_content_get_entry(ed->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
    if (e && e->format == EXIF_FORMAT_SHORT && e->components >= 1 && e->data && e->size >= 2) {
        int v = exif_get_short(e->data, exif_data_get_byte_order(ed));
        if (v >= 1 && v <= 8) o = v;
    }
    exif_data_unref(ed);
    return o;
}

static int exif_payload_orientation(const uint8_t *p, size_t n) {
    if (n >= 6 && memcmp(p, "Exif\0\0", 6) == 0) return exif_orientation_of(p, n);
    if (n > (1u << 24)) return 1;
    uint8_t *b = malloc(n + 6); /* libexif wants the APP1 header in front of the TIFF data */
    if (!b) return 1;
    memcpy(b, "Exif\0\0", 6);
    memcpy(b + 6, p, n);
    int o = exif_orientation_of(b, n + 6);
    free(b);
    return o;
}
#endif

int idf_image_exif_orientation(const void *data, size_t size) {
    const uint8_t *d = data;
    if (!d || size < 12) return 1;
#if IDF_HAVE_EXIF
    if (d[0] == 0xFF && d[1] == 0xD8) return exif_orientation_of(d, size);
    if (memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) {
        /* PNG chunks: length (BE32), type, data, CRC. eXIf holds a TIFF structure. */
        size_t i = 8;
        while (size - i >= 12) {
            uint32_t len = (uint32_t)d[i] << 24 | (uint32_t)d[i + 1] << 16 | (uint32_t)d[i + 2] << 8 | d[i + 3];
            if (len > size - i - 12) break;
            if (memcmp(d + i + 4, "eXIf", 4) == 0) return exif_payload_orientation(d + i + 8, len);
            if (memcmp(d + i + 4, "IEND", 4) == 0) break;
            i += 12 + (size_t)len;
        }
        return 1;
    }
#endif
#if IDF_HAVE_EXIF && IDF_HAVE_WEBP
    if (memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) {
        WebPData wd = {d, size};
        WebPDemuxer *dm = WebPDemux(&wd);
        int o = 1;
        WebPChunkIterator it;
        if (dm && WebPDemuxGetChunk(dm, "EXIF", 1, &it)) {
            o = exif_payload_orientation(it.chunk.bytes, it.chunk.size);
            WebPDemuxReleaseChunkIterator(&it);
        }
        WebPDemuxDelete(dm);
        return o;
    }
#endif
#if IDF_HAVE_TIFF
    if (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0) {
        tiff_mem m = {.d = d, .n = size};
        TIFF *t = tiff_open(&m);
        uint16_t o = 1;
        if (t) {
            TIFFGetFieldDefaulted(t, TIFFTAG_ORIENTATION, &o);
            TIFFClose(t);
        }
        return o >= 1 && o <= 8 ? o : 1;
    }
#endif
    return 1; /* HEIF: libheif applies the container's transforms itself */
}

/* Output pixel (x, y) of the turned image reads input (sx, sy); orientations
 * as PIL's ImageOps.exif_transpose: 2 mirror, 3 rotate 180, 4 flip, 5
 * transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise. */
idefics_status idf_image_orient(idf_image *img, int o, const idf_alloc *al, idf_err *err) {
    if (o < 2 || o > 8 || !img->rgb) return IDEFICS_OK;
    int W = img->w, H = img->h;
    bool swap = o >= 5;
    int ow = swap ? H : W, oh = swap ? W : H;
    uint8_t *dst = idf_malloc(al, (size_t)W * (size_t)H * 3);
    if (!dst) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory turning a %dx%d image", W, H);
    for (int y = 0; y < oh; y++)
        for (int x = 0; x < ow; x++) {
            int sx, sy;
            switch (o) {
            case 2: sx = W - 1 - x, sy = y; break;
            case 3: sx = W - 1 - x, sy = H - 1 - y; break;
            case 4: sx = x, sy = H - 1 - y; break;
            case 5: sx = y, sy = x; break;
            case 6: sx = y, sy = H - 1 - x; break;
            case 7: sx = W - 1 - y, sy = H - 1 - x; break;
            default: sx = W - 1 - y, sy = x; break;
            }
            memcpy(dst + ((size_t)y * (size_t)ow + (size_t)x) * 3, img->rgb + ((size_t)sy * (size_t)W + (size_t)sx) * 3, 3);
        }
    idf_free(al, img->rgb);
    img->rgb = dst;
    img->w = ow;
    img->h = oh;
    return IDEFICS_OK;
}

/* ------------------------------------------------------------ thumbnails */

idefics_status idefics_image_thumbnail(const void *data, size_t size, int max_side, int64_t max_pixels,
                                       bool exif_orientation, uint8_t *rgb, int *width, int *height, char *errbuf,
                                       size_t errbuf_size) {
    idf_err err;
    idf_err_clear(&err);
    idefics_status st = IDEFICS_OK;
    if (!data || !size || max_side <= 0 || max_side > 4096 || !rgb || !width || !height) {
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "image_thumbnail: need data, 1 <= max_side <= 4096, rgb, sizes");
    } else {
        idf_image_limits lim = {.max_pixels = max_pixels > 0 ? max_pixels : 40 * 1000 * 1000,
                                .max_bytes = 0,
                                .exif_orientation = exif_orientation};
        idf_image im = {0}, sm = {0};
        st = idf_image_load_memory(data, size, &lim, NULL, &im, &err);
        if (st == IDEFICS_OK) {
            int w = im.w, h = im.h;
            if (w > max_side || h > max_side) {
                if (w >= h) h = (int)((int64_t)h * max_side / w), w = max_side;
                else w = (int)((int64_t)w * max_side / h), h = max_side;
                if (w < 1) w = 1;
                if (h < 1) h = 1;
            }
            st = idf_image_resize_bicubic(&im, w, h, NULL, &sm, &err);
            if (st == IDEFICS_OK) {
                memcpy(rgb, sm.rgb, (size_t)w * (size_t)h * 3);
                *width = w;
                *height = h;
            }
        }
        idf_image_free(&sm, NULL);
        idf_image_free(&im, NULL);
    }
    if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "%s", st == IDEFICS_OK ? "" : err.msg);
    return st;
}
