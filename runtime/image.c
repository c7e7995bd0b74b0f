/*
 * image.c - image decoding and the IDEFICS image processor (runtime/image.h).
 *
 * Reproduces what transformers 4.46.3's IdeficsImageProcessor does with PIL:
 *   convert_to_rgb: RGB passes through untouched; any other mode is converted
 *     to RGBA and Image.alpha_composite'd over opaque white, then to RGB;
 *   Image.resize((S, S), BICUBIC, reducing_gap=None): Pillow's two-pass
 *     fixed-point resampler, antialiased when shrinking;
 *   rescale float64(x) * (1/255) -> float32, normalise (x - mean) / std in
 *   float32, CHW.
 * docs/IMAGES.md records where each rule comes from and the known gaps.
 *
 * Decoding uses Debian's libstb (stb_image v2.27), only for PNG, JPEG, GIF
 * (first frame), BMP and binary PNM: the formats PIL also opens, so parity
 * with the HF path can be tested; stb's other loaders (PSD, HDR, PIC, TGA)
 * are refused. stb allocates with malloc; its output is converted at once
 * into idf_alloc memory and freed, so callers only ever see user-allocator
 * memory. stb's process-global settings (flip, unpremultiply, iphone) are
 * never touched.
 *
 * JPEG goes through libjpeg(-turbo) when the build has it (IDF_HAVE_LIBJPEG,
 * meson option -Djpeg): the decoder Pillow uses, configured as Pillow's
 * JpegDecode.c leaves it (ISLOW IDCT, fancy upsampling, libjpeg's colour
 * space guess), so decodes match PIL's exactly. Without it stb decodes JPEG
 * too, within a few levels of PIL (docs/IMAGES.md).
 */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <stb_image.h>

#if IDF_HAVE_LIBJPEG
#include <setjmp.h>
/* jpeglib.h needs size_t and FILE declared first (stddef.h, stdio.h above). */
#include <jpeglib.h>
#include <jerror.h>
#endif

#include "image.h"
#include "image_formats.h"

/* Pillow's coefficients are computed in double without fused multiply-add
 * (x86-64 wheels); contracting a*b+c into an fma could move a coefficient
 * across a rounding boundary. GCC keeps contraction off in ISO C mode
 * (-std=c11); clang needs to be told. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

/* ------------------------------------------------------------ helpers */

typedef enum { FMT_UNKNOWN, FMT_PNG, FMT_JPEG, FMT_GIF, FMT_BMP, FMT_PNM, FMT_WEBP, FMT_HEIF, FMT_TIFF } img_format;

static const char *format_name(img_format f) {
    switch (f) {
    case FMT_PNG: return "PNG";
    case FMT_JPEG: return "JPEG";
    case FMT_GIF: return "GIF";
    case FMT_BMP: return "BMP";
    case FMT_PNM: return "PNM";
    case FMT_WEBP: return "WebP";
    case FMT_HEIF: return "HEIF";
    case FMT_TIFF: return "TIFF";
    default: return "unknown";
    }
}

/* The magic numbers of the formats we accept (stb's would also take TGA,
 * which has no magic, so an unknown blob could otherwise decode as noise). */
static img_format sniff(const uint8_t *d, size_t n) {
    if (n >= 8 && memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return FMT_PNG;
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return FMT_JPEG;
    if (n >= 6 && (memcmp(d, "GIF87a", 6) == 0 || memcmp(d, "GIF89a", 6) == 0)) return FMT_GIF;
    if (n >= 2 && d[0] == 'B' && d[1] == 'M') return FMT_BMP;
    /* stb reads binary PNM only: P5 (gray) and P6 (RGB). */
    if (n >= 3 && d[0] == 'P' && (d[1] == '5' || d[1] == '6') &&
        (d[2] == ' ' || d[2] == '\t' || d[2] == '\n' || d[2] == '\r' || d[2] == '#'))
        return FMT_PNM;
    if (n >= 12 && memcmp(d, "RIFF", 4) == 0 && memcmp(d + 8, "WEBP", 4) == 0) return FMT_WEBP;
    if (n >= 4 && (memcmp(d, "II*\0", 4) == 0 || memcmp(d, "MM\0*", 4) == 0)) return FMT_TIFF;
    /* ISO BMFF: a leading ftyp box naming a HEIF brand (libheif decides the rest). */
    if (n >= 12 && memcmp(d + 4, "ftyp", 4) == 0) {
        static const char *brands[] = {"heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1"};
        for (size_t i = 0; i < sizeof brands / sizeof brands[0]; i++)
            if (memcmp(d + 8, brands[i], 4) == 0) return FMT_HEIF;
    }
    return FMT_UNKNOWN;
}

/* Width and height straight from the header, so an oversized image is
 * IDEFICS_ERR_IMAGE_TOO_LARGE before stb sees it: stb refuses big headers
 * itself, but stbi_info then reports the last format it tried ("unknown image
 * type"), which would turn a size problem into a decode error. false when the
 * header is too short or malformed; stb then gives the decode error. */
static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | be16(p + 2); }

static bool pnm_int(const uint8_t *d, size_t n, size_t *i, uint64_t *v) {
    for (;;) { /* whitespace and # comments */
        while (*i < n && (d[*i] == ' ' || d[*i] == '\t' || d[*i] == '\n' || d[*i] == '\r')) (*i)++;
        if (*i < n && d[*i] == '#') {
            while (*i < n && d[*i] != '\n') (*i)++;
            continue;
        }
        break;
    }
    if (*i >= n || d[*i] < '0' || d[*i] > '9') return false;
    *v = 0;
    while (*i < n && d[*i] >= '0' && d[*i] <= '9') {
        *v = *v * 10 + (uint64_t)(d[*i] - '0');
        if (*v > UINT32_MAX) return false;
        (*i)++;
    }
    return true;
}

static bool peek_dims(img_format fmt, const uint8_t *d, size_t n, uint64_t *w, uint64_t *h) {
    switch (fmt) {
    case FMT_PNG:
        if (n < 24 || memcmp(d + 12, "IHDR", 4) != 0) return false;
        *w = be32(d + 16);
        *h = be32(d + 20);
        return true;
    case FMT_GIF:
        if (n < 10) return false;
        *w = idf_rd16(d + 6);
        *h = idf_rd16(d + 8);
        return true;
    case FMT_BMP: {
        if (n < 26) return false;
        if (idf_rd32(d + 14) == 12) { /* OS/2 core header: 16-bit sizes */
            *w = idf_rd16(d + 18);
            *h = idf_rd16(d + 20);
        } else {
            int64_t sw = (int32_t)idf_rd32(d + 18), sh = (int32_t)idf_rd32(d + 22);
            *w = (uint64_t)(sw < 0 ? -sw : sw);
            *h = (uint64_t)(sh < 0 ? -sh : sh); /* negative height = top-down rows */
        }
        return true;
    }
    case FMT_JPEG: {
        /* Walk the marker segments to the first start-of-frame. */
        size_t i = 2;
        while (i + 4 <= n) {
            if (d[i] != 0xFF) return false;
            uint8_t m = d[i + 1];
            if (m == 0xFF) { /* fill byte */
                i++;
                continue;
            }
            if (m == 0x01 || (m >= 0xD0 && m <= 0xD8)) { /* no length */
                i += 2;
                continue;
            }
            size_t len = be16(d + i + 2);
            if (len < 2) return false;
            if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
                if (len < 7 || i + 9 > n) return false;
                *h = be16(d + i + 5);
                *w = be16(d + i + 7);
                return true;
            }
            i += 2 + len;
        }
        return false;
    }
    case FMT_PNM: {
        size_t i = 2;
        return pnm_int(d, n, &i, w) && pnm_int(d, n, &i, h);
    }
    default: return false;
    }
}

/* stb refuses PNGs over 2^30 decoded bytes and JPEGs over 2^31; 2^28 pixels
 * (16384 x 16384) is the most this file promises to decode, whatever the
 * caller's limit, so oversized headers always come back as TOO_LARGE. */
#define DECODE_MAX_PIXELS ((int64_t)1 << 28)

/* A limit <= 0 (or no limits struct) means "no caller limit". */
/* PNM is accepted only with maxval 255. PIL rescales every other maxval to
 * 0..255 while stb keeps the raw samples (8-bit) or mishandles them: stb 2.27
 * converts 16-bit PNM samples as if they were 8-bit before narrowing them,
 * reading past its own buffer (found by tests/fuzz/fuzz_image.c). The pixel
 * data must also be complete: on a short file stb returns the image anyway,
 * with the missing samples left as uninitialised heap memory. */
static idefics_status pnm_check(const uint8_t *d, size_t n, idf_err *err) {
    size_t i = 2;
    uint64_t w, h, maxval, need;
    if (!pnm_int(d, n, &i, &w) || !pnm_int(d, n, &i, &h) || !pnm_int(d, n, &i, &maxval) || i >= n)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: PNM header is malformed");
    if (maxval != 255)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: PNM maxval %llu unsupported (only 255)",
                        (unsigned long long)maxval);
    i++; /* exactly one whitespace byte ends the header */
    if (!idf_mul_u64(w, h, &need) || !idf_mul_u64(need, d[1] == '6' ? 3 : 1, &need) || need > n - i)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: PNM pixel data is truncated (%zu of %llu bytes)", n - i,
                        (unsigned long long)need);
    return IDEFICS_OK;
}

static int64_t lim_pixels(const idf_image_limits *lim) {
    return lim && lim->max_pixels > 0 ? lim->max_pixels : INT64_MAX;
}
static int64_t lim_decode_pixels(const idf_image_limits *lim) {
    int64_t m = lim_pixels(lim);
    return m < DECODE_MAX_PIXELS ? m : DECODE_MAX_PIXELS;
}
static int64_t lim_bytes(const idf_image_limits *lim) {
    return lim && lim->max_bytes > 0 ? lim->max_bytes : INT64_MAX;
}

/* The most pixels an encoded image of `size` bytes may decode to (issue 15,
 * point 5): the caller's limit, and, above a 4-megapixel floor, no more than
 * IDEFICS_IMAGE_MAX_RATIO times its encoded size in RGB bytes. Real photos
 * compress 3-15:1; a small file declaring a huge canvas is a bomb. A JPEG over
 * the budget is decoded at a reduced DCT scale; other formats are refused. */
#define BOMB_FLOOR_PIXELS ((int64_t)4 * 1000 * 1000)
int64_t idf_image_budget(const idf_image_limits *lim, size_t size) {
    int64_t m = lim_decode_pixels(lim);
    uint64_t r = (uint64_t)size * IDEFICS_IMAGE_MAX_RATIO / 3;
    int64_t ratio = r > (uint64_t)BOMB_FLOOR_PIXELS ? (r > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)r)
                                                     : BOMB_FLOOR_PIXELS;
    return ratio < m ? ratio : m;
}

/* w*h*3 bytes for an RGB image, after checking the pixel limit. */
static idefics_status check_dims(int w, int h, const idf_image_limits *lim, size_t *rgb_bytes, idf_err *err) {
    if (w <= 0 || h <= 0) return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: invalid size %dx%d", w, h);
    uint64_t px;
    if (!idf_mul_u64((uint64_t)w, (uint64_t)h, &px) || px > (uint64_t)lim_pixels(lim))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: %dx%d pixels exceeds max_pixels %lld", w, h,
                        (long long)lim_pixels(lim));
    size_t n;
    if (!idf_mul_size((size_t)w, (size_t)h, &n) || !idf_mul_size(n, 3, &n))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: %dx%d does not fit in memory", w, h);
    *rgb_bytes = n;
    return IDEFICS_OK;
}

/* PIL's Image.alpha_composite(opaque white, (r,g,b,a)) for one channel value.
 * With an opaque destination Pillow's integer path reduces to: coef1 = a*128,
 * coef2 = (255-a)*128 (7 fractional bits), tmp = v*coef1 + 255*coef2, then a
 * rounded divide by 255 via ((t >> 8) + t) >> 8 on tmp + (128 << 7), and the
 * 7 extra bits dropped. a == 0 copies the destination (white) outright. */
static inline uint8_t over_white(unsigned v, unsigned a) {
    if (a == 0) return 255;
    uint32_t t = (v * a + 255u * (255u - a)) * 128u + (128u << 7);
    return (uint8_t)((((t >> 8) + t) >> 8) >> 7);
}

/* Four source layouts into RGB. Gray replicates (PIL's L -> RGBA); any alpha
 * is composited over white (convert_to_rgb); channels = 3 is copied. */
static void to_rgb_row(uint8_t *dst, const uint8_t *src, int w, int channels) {
    switch (channels) {
    case 1:
        for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = src[x];
        break;
    case 2:
        for (int x = 0; x < w; x++) dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = over_white(src[2 * x], src[2 * x + 1]);
        break;
    case 3: memcpy(dst, src, (size_t)w * 3); break;
    default:
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++) dst[3 * x + c] = over_white(src[4 * x + c], src[4 * x + 3]);
        break;
    }
}

/* ------------------------------------------------------------ decoding */

/* stb's 8-bit loader keeps the high byte of 16-bit samples, as PIL does for
 * RGB/RGBA/LA 16-bit PNGs. 16-bit gray is the exception: PIL opens it as mode
 * I;16 and its convert() to RGBA *clips* values above 255 (it does not scale),
 * keeping the tRNS key as alpha 0. Reproduce that from stb's 16-bit output. */
static idefics_status decode_gray16(const uint8_t *data, int len, int w, int h, size_t rgb_bytes,
                                    const idf_alloc *al, idf_image *out, idf_err *err) {
    int dw = 0, dh = 0, dc = 0;
    /* req 2: gray + alpha; stb turns a tRNS key into alpha 0 and sets 65535 elsewhere. */
    stbi_us *px = stbi_load_16_from_memory(data, len, &dw, &dh, &dc, 2);
    if (!px) return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: 16-bit PNG decode failed: %s", stbi_failure_reason());
    if (dw != w || dh != h) {
        stbi_image_free(px);
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: decoded size %dx%d differs from header %dx%d", dw, dh, w, h);
    }
    uint8_t *rgb = idf_malloc(al, rgb_bytes);
    if (!rgb) {
        stbi_image_free(px);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for %dx%d RGB", w, h);
    }
    size_t n = (size_t)w * (size_t)h;
    for (size_t i = 0; i < n; i++) {
        unsigned g = px[2 * i] > 255 ? 255 : px[2 * i];
        uint8_t v = px[2 * i + 1] == 0 ? 255 : (uint8_t)g; /* alpha is 0 or 65535: over white */
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = v;
    }
    stbi_image_free(px);
    out->w = w;
    out->h = h;
    out->rgb = rgb;
    return IDEFICS_OK;
}

#if IDF_HAVE_LIBJPEG
/* libjpeg(-turbo), set up as Pillow 13's JpegDecode.c + JpegImagePlugin.py
 * leave it: dct_method JDCT_ISLOW and do_fancy_upsampling TRUE (libjpeg's
 * defaults; Pillow changes them only in draft mode, which HF does not use),
 * jpeg_color_space as libjpeg guesses it from JFIF/Adobe markers, and
 * out_color_space by component count: 1 -> GRAYSCALE (mode L), 3 -> RGB,
 * 4 -> CMYK, which Pillow always reads as Adobe-inverted ("CMYK;I") and
 * converts to RGB with its cmyk2rgb. Other counts and precisions PIL refuses.
 *
 * libjpeg's default error handler exit()s and its warnings go to stderr: the
 * error manager below longjmps back instead and keeps every message silent.
 * Warnings about corrupt data are ignored as Pillow ignores them, except
 * "premature end of file" (the input ran out): PIL reports a truncated file
 * there, so it is IMAGE_DECODE here. libjpeg allocates with malloc in its own
 * pools (freed by jpeg_destroy_decompress); only the RGB result comes from
 * the caller's allocator. */

/* A progressive file may carry any number of scans, each a pass over the
 * whole coefficient buffer; real files have about 10. libjpeg-turbo's own
 * tools cap this against hostile inputs; so do we. */
#define JPEG_MAX_SCANS 1000

typedef struct jpeg_ctx {
    struct jpeg_error_mgr pub; /* first: libjpeg passes &pub as cinfo->err */
    struct jpeg_progress_mgr progress;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr c) {
    jpeg_ctx *x = (jpeg_ctx *)c->err;
    (*c->err->format_message)(c, x->msg);
    longjmp(x->jb, 1);
}

static void jpeg_on_output(j_common_ptr c) { (void)c; /* never print */ }

static void jpeg_on_emit(j_common_ptr c, int level) {
    if (level >= 0) return; /* trace messages */
    c->err->num_warnings++;
    if (c->err->msg_code == JWRN_JPEG_EOF) jpeg_on_error(c); /* truncated input */
}

static void jpeg_on_progress(j_common_ptr c) {
    if (!c->is_decompressor) return;
    j_decompress_ptr d = (j_decompress_ptr)c;
    if (d->input_scan_number > JPEG_MAX_SCANS) {
        jpeg_ctx *x = (jpeg_ctx *)c->err;
        snprintf(x->msg, sizeof x->msg, "more than %d scans", JPEG_MAX_SCANS);
        longjmp(x->jb, 1);
    }
}

/* Pillow's cmyk2rgb after its "CMYK;I" unpack (v = 255 - sample):
 * out = nk - v * nk / 255 (rounded as MULDIV255), nk = 255 - k. */
static inline uint8_t cmyk_channel(unsigned inv_v, unsigned inv_k) {
    unsigned v = 255u - inv_v, nk = inv_k; /* nk = 255 - (255 - inv_k) */
    unsigned t = v * nk + 128u;
    return (uint8_t)(nk - (((t >> 8) + t) >> 8));
}

/* Everything between setjmp and the end lives in *cinfo / *x or is volatile,
 * so a longjmp from libjpeg leaves nothing indeterminate. */
/* libjpeg's own pools (the coefficient buffer of a progressive file is the
 * whole image, 2 bytes per sample) are capped too: without a backing store
 * libjpeg-turbo then fails with "Backing store not supported". */
#define JPEG_MIN_POOL_BYTES ((long)48 * 1024 * 1024)
static long jpeg_pool_max(size_t n) {
    return n < (size_t)(LONG_MAX / 32) && (long)n * 32 > JPEG_MIN_POOL_BYTES ? (long)n * 32 : JPEG_MIN_POOL_BYTES;
}

static idefics_status decode_jpeg(const uint8_t *d, size_t n, const idf_image_limits *lim, const idf_alloc *al,
                                  idf_image *out, idf_err *err) {
    struct jpeg_decompress_struct cinfo;
    jpeg_ctx x;
    memset(&cinfo, 0, sizeof cinfo); /* destroy is safe even if create fails early */
    memset(&x, 0, sizeof x);
    uint8_t *volatile rgb = NULL;
    int64_t budget = idf_image_budget(lim, n);
    volatile idefics_status st = IDEFICS_OK;
    cinfo.err = jpeg_std_error(&x.pub);
    x.pub.error_exit = jpeg_on_error;
    x.pub.output_message = jpeg_on_output;
    x.pub.emit_message = jpeg_on_emit;
    if (setjmp(x.jb)) {
        jpeg_destroy_decompress(&cinfo);
        idf_free(al, rgb);
        if (st != IDEFICS_OK) return st; /* ours, already described */
        if (x.pub.msg_code == JERR_NO_BACKING_STORE)
            return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                            "image: progressive JPEG needs more than %ld MiB of decoder memory", jpeg_pool_max(n) / 1048576);
        return idf_errf(err, x.pub.msg_code == JERR_OUT_OF_MEMORY ? IDEFICS_ERR_OUT_OF_MEMORY : IDEFICS_ERR_IMAGE_DECODE,
                        "image: JPEG decode failed: %s", x.msg);
    }
    jpeg_create_decompress(&cinfo);
    cinfo.mem->max_memory_to_use = jpeg_pool_max(n);
    x.progress.progress_monitor = jpeg_on_progress;
    cinfo.progress = &x.progress;
    jpeg_mem_src(&cinfo, d, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);

    /* The header, now parsed by libjpeg itself, against the limits before
     * anything is decompressed or allocated for pixels. */
    if (cinfo.image_width > INT_MAX || cinfo.image_height > INT_MAX || cinfo.image_width == 0 ||
        cinfo.image_height == 0) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: JPEG %ux%u is out of range",
                      (unsigned)cinfo.image_width, (unsigned)cinfo.image_height);
        longjmp(x.jb, 1);
    }
    int nc = cinfo.num_components;
    if (cinfo.data_precision != 8 || (nc != 1 && nc != 3 && nc != 4)) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: JPEG with %d components of %d bits unsupported", nc,
                      cinfo.data_precision);
        longjmp(x.jb, 1);
    }
    cinfo.out_color_space = nc == 1 ? JCS_GRAYSCALE : nc == 3 ? JCS_RGB : JCS_CMYK;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    /* Full scale (Pillow's decode, bit-exact) when it fits the budget; else the
     * largest DCT scale M/8 that does. The result is then resized to the
     * model's 224 pixels anyway, so the loss is a slightly different
     * antialiasing, not a visible one. */
    uint64_t px = 0;
    for (int m = 8; m >= 1; m--) {
        cinfo.scale_num = (unsigned)m;
        cinfo.scale_denom = 8;
        jpeg_calc_output_dimensions(&cinfo);
        if (idf_mul_u64(cinfo.output_width, cinfo.output_height, &px) && px <= (uint64_t)budget) break;
        px = 0;
    }
    if (px == 0) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                      "image: JPEG %ux%u is over the decode budget of %lld pixels even at 1/8 scale",
                      (unsigned)cinfo.image_width, (unsigned)cinfo.image_height, (long long)budget);
        longjmp(x.jb, 1);
    }
    int w = (int)cinfo.output_width, h = (int)cinfo.output_height;
    size_t rgb_bytes;
    if ((st = check_dims(w, h, lim, &rgb_bytes, err)) != IDEFICS_OK) longjmp(x.jb, 1);
    jpeg_start_decompress(&cinfo);
    if ((int)cinfo.output_width != w || (int)cinfo.output_height != h || cinfo.output_components != nc) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: JPEG output %ux%ux%d differs from header %dx%dx%d",
                      (unsigned)cinfo.output_width, (unsigned)cinfo.output_height, cinfo.output_components, w, h, nc);
        longjmp(x.jb, 1);
    }
    if (!(rgb = idf_malloc(al, rgb_bytes))) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for %dx%d RGB", w, h);
        longjmp(x.jb, 1);
    }
    /* RGB rows are decoded in place; gray and CMYK through one pool row. */
    JSAMPARRAY row = nc == 3 ? NULL : (*cinfo.mem->alloc_sarray)((j_common_ptr)&cinfo, JPOOL_IMAGE,
                                                                 (JDIMENSION)w * (JDIMENSION)nc, 1);
    while (cinfo.output_scanline < cinfo.output_height) {
        uint8_t *o = rgb + (size_t)cinfo.output_scanline * (size_t)w * 3;
        JSAMPROW dst = nc == 3 ? o : row[0];
        if (jpeg_read_scanlines(&cinfo, &dst, 1) != 1) { /* cannot happen with a memory source */
            st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: JPEG decoder stalled at row %u",
                          (unsigned)cinfo.output_scanline);
            longjmp(x.jb, 1);
        }
        const uint8_t *s = row ? row[0] : NULL;
        if (nc == 1) {
            for (int i = 0; i < w; i++) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = s[i];
        } else if (nc == 4) {
            for (int i = 0; i < w; i++)
                for (int c = 0; c < 3; c++) o[3 * i + c] = cmyk_channel(s[4 * i + c], s[4 * i + 3]);
        }
    }
    jpeg_finish_decompress(&cinfo);
    out->src_w = (int)cinfo.image_width;
    out->src_h = (int)cinfo.image_height;
    jpeg_destroy_decompress(&cinfo);
    out->w = w;
    out->h = h;
    out->rgb = rgb;
    return IDEFICS_OK;
}
#endif

const char *idf_image_jpeg_decoder(void) {
#if IDF_HAVE_LIBJPEG && defined(LIBJPEG_TURBO_VERSION)
#define IDF_STR2(x) #x
#define IDF_STR(x) IDF_STR2(x)
    return "libjpeg-turbo " IDF_STR(LIBJPEG_TURBO_VERSION);
#elif IDF_HAVE_LIBJPEG
    return "libjpeg";
#else
    return "stb_image";
#endif
}

static idefics_status decode_any(const void *data, size_t size, const idf_image_limits *lim, const idf_alloc *al,
                                 idf_image *out, idf_err *err);

/* Decode, then turn upright by the EXIF Orientation when asked. */
idefics_status idf_image_load_memory(const void *data, size_t size, const idf_image_limits *lim,
                                     const idf_alloc *al, idf_image *out, idf_err *err) {
    if (!out) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: out is NULL");
    memset(out, 0, sizeof *out);
    IDF_FORWARD(decode_any(data, size, lim, al, out, err));
    if (out->src_w <= 0) {
        out->src_w = out->w;
        out->src_h = out->h;
    }
    if (lim && lim->exif_orientation) {
        int o = idf_image_exif_orientation(data, size);
        if (o >= 5) { /* the declared size turns too */
            int t = out->src_w;
            out->src_w = out->src_h;
            out->src_h = t;
        }
        idefics_status st = idf_image_orient(out, o, al, err);
        if (st != IDEFICS_OK) {
            idf_image_free(out, al);
            return st;
        }
    }
    return IDEFICS_OK;
}

static idefics_status decode_any(const void *data, size_t size, const idf_image_limits *lim, const idf_alloc *al,
                                 idf_image *out, idf_err *err) {
    if (!data && size) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: data is NULL with size %zu", size);
    if (size == 0) return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: empty input (0 bytes)");
    if ((uint64_t)size > (uint64_t)lim_bytes(lim))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: %zu encoded bytes exceeds max_bytes %lld", size,
                        (long long)lim_bytes(lim));
    if (size > (size_t)INT_MAX) /* stb takes an int length */
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: %zu encoded bytes exceeds the 2 GiB decoder limit",
                        size);
    const uint8_t *d = data;
    int len = (int)size;
    img_format fmt = sniff(d, size);
    if (fmt == FMT_UNKNOWN)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE,
                        "image: unrecognised format (first bytes %02x %02x %02x %02x; expected PNG, JPEG, GIF, BMP, "
                        "binary PNM, WebP, HEIC/HEIF, TIFF)",
                        d[0], size > 1 ? d[1] : 0, size > 2 ? d[2] : 0, size > 3 ? d[3] : 0);

    /* Header only: dimensions before any pixel allocation. */
    uint64_t pw, ph, ppx;
    bool jpeg_scaled = false; /* libjpeg decodes over-budget JPEGs at reduced scale */
#if IDF_HAVE_LIBJPEG
    jpeg_scaled = fmt == FMT_JPEG;
#endif
    /* A JPEG that even 1/8 scale cannot fit is refused here, before libjpeg
     * (whose own ceiling, 65500, would make it a decode error). */
    if (jpeg_scaled && peek_dims(fmt, d, size, &pw, &ph) &&
        ((pw + 7) / 8) * ((ph + 7) / 8) > (uint64_t)idf_image_budget(lim, size))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                        "image: JPEG header says %llux%llu, over the decode budget of %lld pixels even at 1/8 scale",
                        (unsigned long long)pw, (unsigned long long)ph, (long long)idf_image_budget(lim, size));
    bool peeked = !jpeg_scaled && peek_dims(fmt, d, size, &pw, &ph) && pw > 0 && ph > 0;
    if (peeked && (!idf_mul_u64(pw, ph, &ppx) || ppx > (uint64_t)lim_decode_pixels(lim) || pw > INT_MAX || ph > INT_MAX))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                        "image: %s header says %llux%llu, over the pixel limit %lld (max_pixels %lld, decoder %lld)",
                        format_name(fmt), (unsigned long long)pw, (unsigned long long)ph,
                        (long long)lim_decode_pixels(lim), (long long)lim_pixels(lim), (long long)DECODE_MAX_PIXELS);
    if (peeked && ppx > (uint64_t)idf_image_budget(lim, size))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE,
                        "image: %s header says %llux%llu from only %zu bytes: more than %d:1 is not a plausible "
                        "compression ratio above %lld pixels (a decompression bomb?)",
                        format_name(fmt), (unsigned long long)pw, (unsigned long long)ph, size,
                        IDEFICS_IMAGE_MAX_RATIO, (long long)BOMB_FLOOR_PIXELS);
    if (fmt == FMT_PNM) IDF_FORWARD(pnm_check(d, size, err));
#if IDF_HAVE_LIBJPEG
    if (fmt == FMT_JPEG) return decode_jpeg(d, size, lim, al, out, err);
#endif
    if (fmt == FMT_WEBP) return idf_decode_webp(d, size, idf_image_budget(lim, size), al, out, err);
    if (fmt == FMT_HEIF)
        return idf_decode_heif(d, size, idf_image_budget(lim, size), lim && lim->exif_orientation, al, out, err);
    if (fmt == FMT_TIFF) return idf_decode_tiff(d, size, idf_image_budget(lim, size), al, out, err);
    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(d, len, &w, &h, &comp)) {
        const char *why = stbi_failure_reason();
        /* stb refuses headers whose w*h*channels passes ~2^30 with "too large". */
        if (why && strcmp(why, "too large") == 0)
            return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: %s header: too large for the decoder",
                            format_name(fmt));
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: %s header: %s", format_name(fmt), why ? why : "?");
    }
    size_t rgb_bytes;
    IDF_FORWARD(check_dims(w, h, lim, &rgb_bytes, err));

    if (fmt == FMT_PNG && comp == 1 && stbi_is_16_bit_from_memory(d, len))
        return decode_gray16(d, len, w, h, rgb_bytes, al, out, err);

    /* Always ask for RGBA: with req 0 stb may return more channels than it
     * reports (a tRNS key adds alpha yet *comp keeps the file's count). */
    int dw = 0, dh = 0, dc = 0;
    uint8_t *px = stbi_load_from_memory(d, len, &dw, &dh, &dc, 4);
    if (!px)
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: %s decode failed: %s", format_name(fmt),
                        stbi_failure_reason() ? stbi_failure_reason() : "?");
    if (dw != w || dh != h) {
        stbi_image_free(px);
        return idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: %s decoded size %dx%d differs from header %dx%d",
                        format_name(fmt), dw, dh, w, h);
    }
    uint8_t *rgb = idf_malloc(al, rgb_bytes);
    if (!rgb) {
        stbi_image_free(px);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for %dx%d RGB", w, h);
    }
    /* comp (from the header scan, before any tRNS chunk) is the file's own
     * layout. 3 means PIL opens it as mode RGB, which convert_to_rgb passes
     * through untouched: a PNG tRNS colour key that stb turned into alpha must
     * be ignored (stb's load reports 4 for it, hence not dc). Everything else
     * (gray with or without a tRNS key, gray+alpha, RGBA, palette with tRNS
     * (info says 4), GIF (always 4)) goes through RGBA and over white. */
    bool keep_alpha = comp != 3;
    size_t n = (size_t)w * (size_t)h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *s = px + 4 * i;
        uint8_t *o = rgb + 3 * i;
        if (keep_alpha) {
            o[0] = over_white(s[0], s[3]);
            o[1] = over_white(s[1], s[3]);
            o[2] = over_white(s[2], s[3]);
        } else {
            o[0] = s[0];
            o[1] = s[1];
            o[2] = s[2];
        }
    }
    stbi_image_free(px);
    out->w = w;
    out->h = h;
    out->rgb = rgb;
    return IDEFICS_OK;
}

/* A missing or unreadable file is IDEFICS_ERR_IO (the file, not its content,
 * is at fault); a file that reads but does not decode is IMAGE_DECODE. The
 * size is checked against max_bytes before anything is read. */
idefics_status idf_image_load_file(const char *path, const idf_image_limits *lim, const idf_alloc *al,
                                   idf_image *out, idf_err *err) {
    if (!out) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: out is NULL");
    memset(out, 0, sizeof *out);
    if (!path) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: path is NULL");
    /* regular files only: a FIFO would block, a directory has no size (issue 15) */
    int oe = 0;
    FILE *f = idf_fopen_regular(path, &oe);
    if (!f) return idf_errf(err, IDEFICS_ERR_IO, "image: cannot open '%s': %s", path, idf_open_strerror(oe));
    idefics_status st = IDEFICS_OK;
    uint8_t *buf = NULL;
    off_t end = -1;
    if (fseeko(f, 0, SEEK_END) == 0) end = ftello(f);
    if (end < 0 || fseeko(f, 0, SEEK_SET) != 0) {
        st = idf_errf(err, IDEFICS_ERR_IO, "image: cannot get the size of '%s'", path);
        goto done;
    }
    if ((uint64_t)end > (uint64_t)lim_bytes(lim) || (uint64_t)end > (uint64_t)SIZE_MAX) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: '%s' is %lld bytes, over max_bytes %lld", path,
                      (long long)end, (long long)lim_bytes(lim));
        goto done;
    }
    size_t size = (size_t)end;
    if (size == 0) {
        st = idf_errf(err, IDEFICS_ERR_IMAGE_DECODE, "image: '%s' is empty", path);
        goto done;
    }
    buf = idf_malloc(al, size);
    if (!buf) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory reading %zu bytes of '%s'", size, path);
        goto done;
    }
    if (fread(buf, 1, size, f) != size) {
        st = idf_errf(err, IDEFICS_ERR_IO, "image: short read of '%s' (expected %zu bytes)", path, size);
        goto done;
    }
    st = idf_image_load_memory(buf, size, lim, al, out, err);
    if (st != IDEFICS_OK) {
        /* Name the file in front of the decoder's reason. */
        char why[IDF_ERRMSG_SIZE];
        idf_err_copy(err, why, sizeof why);
        idf_errf(err, st, "'%s': %s", path, why);
    }
done:
    idf_free(al, buf);
    fclose(f);
    return st;
}

idefics_status idf_image_from_pixels(const uint8_t *px, int w, int h, int channels, size_t stride,
                                     const idf_image_limits *lim, const idf_alloc *al, idf_image *out,
                                     idf_err *err) {
    if (!out) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: out is NULL");
    memset(out, 0, sizeof *out);
    if (!px) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: pixels is NULL");
    if (channels < 1 || channels > 4)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: channels = %d (expected 1, 2, 3 or 4)", channels);
    if (w <= 0 || h <= 0) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: invalid size %dx%d", w, h);
    size_t rgb_bytes, row;
    IDF_FORWARD(check_dims(w, h, lim, &rgb_bytes, err));
    if (!idf_mul_size((size_t)w, (size_t)channels, &row))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: row of %d x %d channels overflows", w, channels);
    if (stride == 0) stride = row;
    if (stride < row)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image: stride %zu is less than width * channels = %zu", stride,
                        row);
    uint8_t *rgb = idf_malloc(al, rgb_bytes);
    if (!rgb) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for %dx%d RGB", w, h);
    for (int y = 0; y < h; y++) to_rgb_row(rgb + (size_t)y * (size_t)w * 3, px + (size_t)y * stride, w, channels);
    out->w = w;
    out->h = h;
    out->rgb = rgb;
    return IDEFICS_OK;
}

void idf_image_free(idf_image *img, const idf_alloc *al) {
    if (!img) return;
    idf_free(al, img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

/* ------------------------------------------------------------ resize */

/* Pillow's fixed point: 32 bits minus 8 for the value minus 2 because the
 * bicubic kernel's negative lobes can push a sum below 0 or above 1. */
#define RS_BITS 22

/* Keys' cubic with a = -0.5 (Pillow's BICUBIC), support 2. The expression is
 * evaluated in the same order as Pillow's so the doubles round the same. */
static double cubic(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* One axis of the resample: output o reads taps [first[o], first[o] + count[o])
 * of the input with fixed-point weights k[o * ksize + j]. */
typedef struct axis {
    int ksize;
    int *first, *count;
    int32_t *k;
} axis;

static void axis_free(axis *ax, const idf_alloc *al) {
    idf_free(al, ax->first);
    idf_free(al, ax->count);
    idf_free(al, ax->k);
    memset(ax, 0, sizeof *ax);
}

/* Pillow's precompute_coeffs + normalize_coeffs_8bpc for box (0, in_size):
 * sample centres at (o + 0.5) * scale; when shrinking the kernel is widened
 * by scale (antialias); each tap window is rounded with (int)(x + 0.5), which
 * truncates toward zero, then clamped to the image; weights are divided by
 * their sum and rounded half away from zero to RS_BITS fractional bits. The
 * box edges are floats in Pillow; integer sizes below 2^24 are exact there. */
static idefics_status axis_init(axis *ax, int in_size, int out_size, const idf_alloc *al, idf_err *err) {
    memset(ax, 0, sizeof *ax);
    double scale = (double)in_size / out_size;
    double fscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * fscale;
    double ks = ceil(support) * 2 + 1;
    size_t nk;
    if (ks > (double)INT_MAX / 8 || !idf_mul_size((size_t)out_size, (size_t)ks, &nk) || nk > SIZE_MAX / sizeof(double))
        return idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image: resize %d -> %d needs too many coefficients", in_size,
                        out_size);
    ax->ksize = (int)ks;
    ax->first = idf_calloc(al, (size_t)out_size, sizeof(int));
    ax->count = idf_calloc(al, (size_t)out_size, sizeof(int));
    ax->k = idf_calloc(al, nk, sizeof(int32_t));
    double *w = idf_malloc(al, (size_t)ax->ksize * sizeof(double));
    if (!ax->first || !ax->count || !ax->k || !w) {
        idf_free(al, w);
        axis_free(ax, al);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image: out of memory for resize coefficients");
    }
    double ss = 1.0 / fscale;
    for (int o = 0; o < out_size; o++) {
        double center = (o + 0.5) * scale;
        int lo = (int)(center - support + 0.5);
        if (lo < 0) lo = 0;
        int hi = (int)(center + support + 0.5);
        if (hi > in_size) hi = in_size;
        int n = hi - lo;
        if (n > ax->ksize) n = ax->ksize; /* cannot happen: the window is 2*support+1 wide */
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            w[j] = cubic((j + lo - center + 0.5) * ss);
            sum += w[j];
        }
        int32_t *k = ax->k + (size_t)o * (size_t)ax->ksize;
        for (int j = 0; j < n; j++) {
            double v = sum != 0.0 ? w[j] / sum : w[j];
            k[j] = v < 0 ? (int32_t)(-0.5 + v * (1 << RS_BITS)) : (int32_t)(0.5 + v * (1 << RS_BITS));
        }
        ax->first[o] = lo;
        ax->count[o] = n;
    }
    idf_free(al, w);
    return IDEFICS_OK;
}

/* Pillow's clip8: sum >> RS_BITS clamped to 0..255 (its lookup table spans
 * -640..639; a negative sum always lands on 0). The sum starts at half a unit
 * so the shift rounds. */
static inline uint8_t clip8(int32_t s) {
    if (s < 0) return 0;
    s >>= RS_BITS;
    return s > 255 ? 255 : (uint8_t)s;
}

/* Horizontal pass over rows [y0, y0 + rows) of src (width sw) into dst (width ax out). */
static void pass_h(uint8_t *dst, int dw, const uint8_t *src, int sw, int y0, int rows, const axis *ax) {
    for (int y = 0; y < rows; y++) {
        const uint8_t *srow = src + (size_t)(y0 + y) * (size_t)sw * 3;
        uint8_t *drow = dst + (size_t)y * (size_t)dw * 3;
        for (int o = 0; o < dw; o++) {
            const int32_t *k = ax->k + (size_t)o * (size_t)ax->ksize;
            const uint8_t *p = srow + (size_t)ax->first[o] * 3;
            int32_t s0 = 1 << (RS_BITS - 1), s1 = s0, s2 = s0;
            for (int j = 0; j < ax->count[o]; j++) {
                s0 += p[3 * j] * k[j];
                s1 += p[3 * j + 1] * k[j];
                s2 += p[3 * j + 2] * k[j];
            }
            drow[3 * o] = clip8(s0);
            drow[3 * o + 1] = clip8(s1);
            drow[3 * o + 2] = clip8(s2);
        }
    }
}

/* Vertical pass: dst row o mixes src rows first[o] - y_shift ... (src is the
 * horizontally resampled band that starts at input row y_shift). */
static void pass_v(uint8_t *dst, int dh, const uint8_t *src, int w, int y_shift, const axis *ax) {
    size_t row = (size_t)w * 3;
    for (int o = 0; o < dh; o++) {
        const int32_t *k = ax->k + (size_t)o * (size_t)ax->ksize;
        const uint8_t *base = src + (size_t)(ax->first[o] - y_shift) * row;
        uint8_t *drow = dst + (size_t)o * row;
        for (size_t x = 0; x < row; x++) {
            int32_t s = 1 << (RS_BITS - 1);
            for (int j = 0; j < ax->count[o]; j++) s += base[(size_t)j * row + x] * k[j];
            drow[x] = clip8(s);
        }
    }
}

/* Pass order. Pillow <= 12 always ran the horizontal pass first. Pillow 13
 * (PR #9549) runs the vertical pass first when the height shrinks by more
 * than twice as many pixels as the width does; the rule below was pinned down
 * against Pillow 13.0.0 on 160 random size pairs (docs/IMAGES.md). The order
 * changes the rounding of the 8-bit intermediate, so it decides bit-exactness. */
static bool vertical_first(int in_w, int in_h, int ow, int oh) {
    return in_h > oh && (int64_t)in_h - oh > 2 * ((int64_t)in_w - ow);
}

static uint8_t *alloc_rgb(const idf_alloc *al, int w, int h, idf_err *err, idefics_status *st) {
    size_t n;
    if (!idf_mul_size((size_t)w, (size_t)h, &n) || !idf_mul_size(n, 3, &n)) {
        *st = idf_errf(err, IDEFICS_ERR_IMAGE_TOO_LARGE, "image resize: %dx%d intermediate too large", w, h);
        return NULL;
    }
    uint8_t *p = idf_malloc(al, n);
    if (!p) *st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "image resize: out of memory for %dx%d", w, h);
    return p;
}

idefics_status idf_image_resize_bicubic(const idf_image *in, int ow, int oh, const idf_alloc *al, idf_image *out,
                                        idf_err *err) {
    if (!out) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image resize: out is NULL");
    memset(out, 0, sizeof *out);
    if (!in || !in->rgb || in->w <= 0 || in->h <= 0)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image resize: empty input image");
    if (ow <= 0 || oh <= 0) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "image resize: target %dx%d", ow, oh);

    bool need_h = ow != in->w, need_v = oh != in->h;
    axis ax_h = {0}, ax_v = {0};
    uint8_t *tmp = NULL, *dst = NULL;
    idefics_status st = IDEFICS_OK;
    if (need_v && (st = axis_init(&ax_v, in->h, oh, al, err)) != IDEFICS_OK) goto done;
    if (need_h && (st = axis_init(&ax_h, in->w, ow, al, err)) != IDEFICS_OK) goto done;
    if (!(dst = alloc_rgb(al, ow, oh, err, &st))) goto done;

    if (!need_h && !need_v) {
        memcpy(dst, in->rgb, (size_t)ow * (size_t)oh * 3); /* Pillow returns a copy */
    } else if (!need_v) {
        pass_h(dst, ow, in->rgb, in->w, 0, oh, &ax_h);
    } else if (!need_h) {
        pass_v(dst, oh, in->rgb, in->w, 0, &ax_v);
    } else if (vertical_first(in->w, in->h, ow, oh)) {
        if (!(tmp = alloc_rgb(al, in->w, oh, err, &st))) goto done;
        pass_v(tmp, oh, in->rgb, in->w, 0, &ax_v);
        pass_h(dst, ow, tmp, in->w, 0, oh, &ax_h);
    } else {
        /* Horizontal pass only over the input rows the vertical pass reads. */
        int y_first = ax_v.first[0];
        int y_last = ax_v.first[oh - 1] + ax_v.count[oh - 1];
        if (!(tmp = alloc_rgb(al, ow, y_last - y_first, err, &st))) goto done;
        pass_h(tmp, ow, in->rgb, in->w, y_first, y_last - y_first, &ax_h);
        pass_v(dst, oh, tmp, ow, y_first, &ax_v);
    }
    out->w = ow;
    out->h = oh;
    out->rgb = dst;
    dst = NULL;
done:
    idf_free(al, dst);
    idf_free(al, tmp);
    axis_free(&ax_h, al);
    axis_free(&ax_v, al);
    return st;
}

/* ------------------------------------------------------------ normalise */

/* HF's rescale multiplies in float64 by 1/255 and casts to float32; normalise
 * then subtracts and divides in float32. Each channel has only 256 possible
 * inputs, so a table computed with that exact arithmetic is bit-identical. */
void idf_image_normalize(const idf_image *img, const float mean[3], const float std[3], float *chw) {
    size_t plane = (size_t)img->w * (size_t)img->h;
    for (int c = 0; c < 3; c++) {
        float lut[256];
        for (int v = 0; v < 256; v++) {
            float x = (float)((double)v * (1.0 / 255.0));
            float d = x - mean[c];
            lut[v] = d / std[c];
        }
        float *o = chw + (size_t)c * plane;
        const uint8_t *p = img->rgb + c;
        for (size_t i = 0; i < plane; i++) o[i] = lut[p[3 * i]];
    }
}
