/*
 * test_image_bounds.c - bounded image decoding, EXIF orientation and the
 * optional formats (issues 12 and 15):
 *
 *   test_image_bounds SCRATCH_DIR
 *     bombs:  small files that declare huge canvases (PNG, JPEG baseline and
 *             progressive, a patched JPEG, GIF, BMP, WebP, TIFF) are decoded
 *             and resized to 224x224 exactly as a session does, each in a
 *             fresh process (this program re-run as "decode FILE"), whose
 *             peak RSS must stay under 64 MiB with the default limits; each
 *             must be refused (IMAGE_TOO_LARGE) or decoded at reduced scale.
 *             Prints "FIGURE: bomb NAME: BYTES bytes, declares WxH: STATUS,
 *             peak RSS N MiB".
 *     exif:   a JPEG with an APP1 Exif Orientation and a PNG with an eXIf
 *             chunk come out turned (or not, with the flag off); the eight
 *             orientations move pixels as PIL's exif_transpose does.
 *     formats: WebP and TIFF written with their libraries decode to the exact
 *             pixels; HEIF when an HEVC encoder is there; without a feature
 *             the error names it.
 *   test_image_bounds decode FILE   (internal: one decode, prints status and RSS)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <jpeglib.h>

#if IDF_HAVE_WEBP
#include <webp/encode.h>
#endif
#if IDF_HAVE_TIFF
#include <tiffio.h>
#endif
#if IDF_HAVE_HEIF
#include <libheif/heif.h>
#endif

#include "check.h"
#define CK(c) CHECK(c, "%s", "")
#include "idefics.h"
#include "image.h"
#include "image_formats.h"

static char g_dir[1024];
static const char *g_self;

static void path_of(char *buf, size_t n, const char *name) { snprintf(buf, n, "%s/%s", g_dir, name); }

static bool write_file(const char *name, const void *d, size_t n) {
    char p[1200];
    path_of(p, sizeof p, name);
    FILE *f = fopen(p, "wb");
    if (!f) return false;
    bool ok = fwrite(d, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

/* ---- a minimal PNG writer (zlib), for bombs and the eXIf case */

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

typedef struct mem {
    uint8_t *d;
    size_t n, cap;
} mem;

static void mem_add(mem *m, const void *p, size_t n) {
    if (m->n + n > m->cap) {
        m->cap = (m->n + n) * 2;
        m->d = realloc(m->d, m->cap);
        if (!m->d) abort();
    }
    memcpy(m->d + m->n, p, n);
    m->n += n;
}

static void png_chunk(mem *m, const char *type, const uint8_t *data, uint32_t len) {
    uint8_t h[8];
    put32(h, len);
    memcpy(h + 4, type, 4);
    mem_add(m, h, 8);
    if (len) mem_add(m, data, len);
    uint32_t crc = (uint32_t)crc32(0, (const Bytef *)type, 4);
    if (len) crc = (uint32_t)crc32(crc, data, len);
    uint8_t c[4];
    put32(c, crc);
    mem_add(m, c, 4);
}

/* RGB8 PNG of w x h; rgb NULL = all black (streamed, so huge flat images are cheap). */
static mem png_make(uint32_t w, uint32_t h, const uint8_t *rgb, const uint8_t *exif, uint32_t exif_len) {
    mem m = {0};
    mem_add(&m, "\x89PNG\r\n\x1a\n", 8);
    uint8_t ihdr[13];
    put32(ihdr, w);
    put32(ihdr + 4, h);
    ihdr[8] = 8, ihdr[9] = 2, ihdr[10] = 0, ihdr[11] = 0, ihdr[12] = 0;
    png_chunk(&m, "IHDR", ihdr, 13);
    if (exif) png_chunk(&m, "eXIf", exif, exif_len);
    z_stream z;
    memset(&z, 0, sizeof z);
    deflateInit(&z, 9);
    size_t row = (size_t)w * 3 + 1;
    uint8_t *line = calloc(1, row);
    mem idat = {0};
    uint8_t out[65536];
    for (uint32_t y = 0; y < h; y++) {
        if (rgb) memcpy(line + 1, rgb + (size_t)y * w * 3, (size_t)w * 3);
        z.next_in = line;
        z.avail_in = (uInt)row;
        int flush = y + 1 == h ? Z_FINISH : Z_NO_FLUSH;
        do {
            z.next_out = out;
            z.avail_out = sizeof out;
            deflate(&z, flush);
            mem_add(&idat, out, sizeof out - z.avail_out);
        } while (z.avail_out == 0 || (flush == Z_FINISH && z.avail_in));
    }
    deflateEnd(&z);
    free(line);
    png_chunk(&m, "IDAT", idat.d, (uint32_t)idat.n);
    free(idat.d);
    png_chunk(&m, "IEND", NULL, 0);
    return m;
}

/* ---- JPEG writer (libjpeg), optionally progressive, with an optional Exif APP1 */

static mem jpeg_make(int w, int h, const uint8_t *rgb, bool progressive, const uint8_t *app1, unsigned app1_len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &buf, &len);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    if (progressive) jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    if (app1) jpeg_write_marker(&c, JPEG_APP0 + 1, app1, app1_len);
    uint8_t *line = calloc((size_t)w, 3);
    while (c.next_scanline < c.image_height) {
        JSAMPROW r = rgb ? (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)w * 3) : line;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    free(line);
    mem m = {buf, len, len};
    return m;
}

/* "Exif\0\0" + a little-endian TIFF with IFD0 holding Orientation = o. */
static unsigned exif_block(uint8_t *b, int o, bool with_header) {
    static const uint8_t tiff[] = {'I', 'I', 42, 0, 8, 0, 0, 0, /* IFD0 at 8 */
                                   1, 0,                        /* one entry */
                                   0x12, 0x01, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, /* 0x0112 SHORT x1 = o */
                                   0, 0, 0, 0};                 /* no next IFD */
    unsigned n = 0;
    if (with_header) memcpy(b, "Exif\0\0", 6), n = 6;
    memcpy(b + n, tiff, sizeof tiff);
    b[n + 18] = (uint8_t)o;
    return n + (unsigned)sizeof tiff;
}

/* ---- the child: one decode + resize as a session does, then RSS */

static int child_decode(const char *file) {
    idefics_session_params sp = idefics_session_default_params();
    idf_image_limits lim = {sp.max_image_pixels, sp.max_image_bytes, sp.exif_orientation};
    idf_image im = {0}, rs = {0};
    idf_err err;
    idf_err_clear(&err);
    idefics_status st = idf_image_load_file(file, &lim, NULL, &im, &err);
    if (st == IDEFICS_OK) st = idf_image_resize_bicubic(&im, 224, 224, NULL, &rs, &err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%s %ld %d %d %d %d\n", idefics_status_str(st), ru.ru_maxrss, im.w, im.h, im.src_w, im.src_h);
    if (st != IDEFICS_OK) fprintf(stderr, "  (%s)\n", err.msg);
    idf_image_free(&im, NULL);
    idf_image_free(&rs, NULL);
    return 0;
}

/* Runs "self decode FILE" and parses its line. */
static bool run_child(const char *file, char *status, size_t sn, long *rss_kb, int wh[4]) {
    int fds[2];
    if (pipe(fds) != 0) return false;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(g_self, g_self, "decode", file, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[512] = "";
    ssize_t k = read(fds[0], line, sizeof line - 1);
    close(fds[0]);
    int ws;
    waitpid(pid, &ws, 0);
    if (k <= 0) return false;
    line[k] = '\0';
    char st[64];
    if (sscanf(line, "%63s %ld %d %d %d %d", st, rss_kb, &wh[0], &wh[1], &wh[2], &wh[3]) != 6) return false;
    snprintf(status, sn, "%s", st);
    return WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
}

static long g_max_rss_kb;

/* expect: "TOO_LARGE", "OK" or "ANY" (refused or decoded; never more than 64 MiB). */
static void bomb(const char *name, const mem *m, unsigned dw, unsigned dh, const char *expect) {
    CK(write_file(name, m->d, m->n));
    char p[1200], st[64];
    path_of(p, sizeof p, name);
    long rss = 0;
    int wh[4] = {0};
    CK(run_child(p, st, sizeof st, &rss, wh));
    printf("FIGURE: bomb %s: %zu bytes, declares %ux%u: %s, decoded %dx%d, peak RSS %.1f MiB\n", name, m->n, dw, dh,
           st, wh[0], wh[1], rss / 1024.0);
    if (rss > g_max_rss_kb) g_max_rss_kb = rss;
    CK(rss < 64 * 1024);
    if (!strcmp(expect, "TOO_LARGE")) CK(!strcmp(st, "IDEFICS_ERR_IMAGE_TOO_LARGE"));
    if (!strcmp(expect, "OK")) CK(!strcmp(st, "IDEFICS_OK"));
    if (!strcmp(expect, "ANY"))
        CK(!strcmp(st, "IDEFICS_OK") || !strcmp(st, "IDEFICS_ERR_IMAGE_TOO_LARGE") ||
              !strcmp(st, "IDEFICS_ERR_IMAGE_DECODE"));
    if (!strcmp(st, "IDEFICS_OK")) CK(wh[2] == (int)dw && wh[3] == (int)dh); /* the declared size is reported */
}

static void test_bombs(void) {
    mem m;
    m = png_make(6400, 6250, NULL, NULL, 0); /* issue 15's case: a ~116 KB PNG declaring 40 MP */
    bomb("flat-40mp.png", &m, 6400, 6250, "TOO_LARGE");
    free(m.d);
    m = png_make(2000, 2000, NULL, NULL, 0); /* 4 MP flat: under the floor, decoded */
    bomb("flat-4mp.png", &m, 2000, 2000, "OK");
    free(m.d);
    { /* about the densest PNG near 1 MB that the ratio rule lets through: ~6.6 MP at ~20:1 */
        const uint32_t w = 2580, h = 2580;
        uint8_t *px = calloc((size_t)w * h, 3);
        uint32_t r = 12345;
        for (size_t y = 0; y < h; y++) /* the first 4.9% of each row random, the rest black */
            for (size_t x = 0; x < (size_t)w * 3 * 49 / 1000; x++) {
                r = r * 1103515245u + 12345u;
                px[y * w * 3 + x] = (uint8_t)(r >> 16);
            }
        m = png_make(w, h, px, NULL, 0);
        free(px);
        bomb("dense-6mp.png", &m, w, h, m.n < 1000000 ? "ANY" : "OK");
        free(m.d);
    }
    m = jpeg_make(8000, 5000, NULL, false, NULL, 0); /* 40 MP baseline: reduced-scale decode */
    bomb("flat-40mp.jpg", &m, 8000, 5000, "OK");
    free(m.d);
    m = jpeg_make(8000, 5000, NULL, true, NULL, 0); /* progressive: the coefficient buffer is the limit */
    bomb("flat-40mp-progressive.jpg", &m, 8000, 5000, "ANY");
    free(m.d);
    m = jpeg_make(64, 64, NULL, false, NULL, 0);
    for (size_t i = 2; i + 9 < m.n; i++) /* patch SOF0 to 65500 x 65500 */
        if (m.d[i] == 0xFF && m.d[i + 1] == 0xC0) {
            m.d[i + 5] = 0xFF, m.d[i + 6] = 0xDC, m.d[i + 7] = 0xFF, m.d[i + 8] = 0xDC;
            break;
        }
    bomb("patched-65500.jpg", &m, 65500, 65500, "TOO_LARGE");
    free(m.d);
    /* GIF header + logical screen 65535 x 65535, no image data */
    uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, ';'};
    m = (mem){gif, sizeof gif, sizeof gif};
    bomb("huge.gif", &m, 65535, 65535, "TOO_LARGE");
    /* BMP declaring 30000 x 30000 x 24 bits with 1 KB of data */
    uint8_t bmp[1078] = {'B', 'M'};
    uint32_t v;
    v = sizeof bmp, memcpy(bmp + 2, &v, 4);
    v = 54, memcpy(bmp + 10, &v, 4);
    v = 40, memcpy(bmp + 14, &v, 4);
    v = 30000, memcpy(bmp + 18, &v, 4), memcpy(bmp + 22, &v, 4);
    bmp[26] = 1, bmp[28] = 24;
    m = (mem){bmp, sizeof bmp, sizeof bmp};
    bomb("huge.bmp", &m, 30000, 30000, "TOO_LARGE");
#if IDF_HAVE_WEBP
    { /* a 16x16 lossless WebP whose VP8L header is patched to 16384 x 16384 */
        uint8_t px[16 * 16 * 3] = {0};
        uint8_t *out = NULL;
        size_t n = WebPEncodeLosslessRGB(px, 16, 16, 48, &out);
        CK(n > 25 && !memcmp(out + 12, "VP8L", 4));
        if (n > 25) {
            uint32_t bits = (16383u) | (16383u << 14); /* width-1, height-1; alpha and version 0 */
            out[21] = (uint8_t)bits, out[22] = (uint8_t)(bits >> 8), out[23] = (uint8_t)(bits >> 16),
            out[24] = (uint8_t)(bits >> 24);
            m = (mem){out, n, n};
            bomb("patched-16384.webp", &m, 16384, 16384, "TOO_LARGE");
        }
        WebPFree(out);
    }
#endif
#if IDF_HAVE_TIFF
    { /* 20000 x 20000 declared, one tiny strip */
        char p[1200];
        path_of(p, sizeof p, "huge.tif");
        TIFF *t = TIFFOpen(p, "w");
        CK(t != NULL);
        if (t) {
            TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 20000);
            TIFFSetField(t, TIFFTAG_IMAGELENGTH, 20000);
            TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
            TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
            TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
            TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
            TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE);
            TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 20000);
            uint8_t junk[64] = {0x78, 0x9c, 3, 0};
            TIFFWriteRawStrip(t, 0, junk, sizeof junk);
            TIFFClose(t);
            FILE *f = fopen(p, "rb");
            static uint8_t buf[4096];
            size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
            if (f) fclose(f);
            m = (mem){buf, n, n};
            bomb("huge.tif", &m, 20000, 20000, "TOO_LARGE");
        }
    }
#endif
    printf("FIGURE: largest bomb-decode RSS %.1f MiB (goal < 64 MiB)\n", g_max_rss_kb / 1024.0);
}

/* ---- EXIF */

static void test_orient_table(void) {
    /* 3x2 image, pixel value = index; orientations as PIL's exif_transpose */
    uint8_t px[6 * 3];
    for (int i = 0; i < 6; i++) px[3 * i] = px[3 * i + 1] = px[3 * i + 2] = (uint8_t)i;
    /* expected first row of each result (0 1 2 / 3 4 5 input) */
    static const int want[9][3] = {{0}, {0, 1, 2}, {2, 1, 0}, {5, 4, 3}, {3, 4, 5},
                                   {0, 3, -1}, {3, 0, -1}, {5, 2, -1}, {2, 5, -1}};
    for (int o = 1; o <= 8; o++) {
        idf_image im = {0};
        idf_err err;
        CK(idf_image_from_pixels(px, 3, 2, 3, 0, NULL, NULL, &im, &err) == IDEFICS_OK);
        CK(idf_image_orient(&im, o, NULL, &err) == IDEFICS_OK);
        CK(im.w == (o >= 5 ? 2 : 3) && im.h == (o >= 5 ? 3 : 2));
        for (int x = 0; x < im.w; x++) CK(im.rgb[3 * x] == want[o][x]);
        idf_image_free(&im, NULL);
    }
}

static void test_exif(void) {
    test_orient_table();
    /* 32x16: left half red, right half blue; Orientation 6 = rotate 90 clockwise */
    uint8_t rgb[32 * 16 * 3];
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 32; x++) {
            uint8_t *p = rgb + (y * 32 + x) * 3;
            p[0] = x < 16 ? 255 : 0, p[1] = 0, p[2] = x < 16 ? 0 : 255;
        }
    uint8_t ex[64];
    unsigned en = exif_block(ex, 6, true);
    mem j = jpeg_make(32, 16, rgb, false, ex, en);
    CK(idf_image_exif_orientation(j.d, j.n) == 6);
    for (int on = 0; on <= 1; on++) {
        idf_image_limits lim = {0, 0, on == 1};
        idf_image im = {0};
        idf_err err;
        CK(idf_image_load_memory(j.d, j.n, &lim, NULL, &im, &err) == IDEFICS_OK);
        if (on) {
            CK(im.w == 16 && im.h == 32 && im.src_w == 16 && im.src_h == 32);
            CK(im.rgb[(2 * 16 + 8) * 3] > 200 && im.rgb[(2 * 16 + 8) * 3 + 2] < 60);  /* top: red */
            CK(im.rgb[(29 * 16 + 8) * 3] < 60 && im.rgb[(29 * 16 + 8) * 3 + 2] > 200); /* bottom: blue */
        } else {
            CK(im.w == 32 && im.h == 16);
        }
        idf_image_free(&im, NULL);
    }
    free(j.d);
    /* PNG eXIf (a bare TIFF block), Orientation 8 */
    en = exif_block(ex, 8, false);
    mem p = png_make(32, 16, rgb, ex, en);
    CK(idf_image_exif_orientation(p.d, p.n) == 8);
    idf_image_limits lim = {0, 0, true};
    idf_image im = {0};
    idf_err err;
    CK(idf_image_load_memory(p.d, p.n, &lim, NULL, &im, &err) == IDEFICS_OK);
    /* rotate 90 anticlockwise: the right half (blue) comes to the top */
    CK(im.w == 16 && im.h == 32 && im.rgb[2] == 255 && im.rgb[0] == 0);
    idf_image_free(&im, NULL);
    free(p.d);
    /* a file without the tag, and garbage, are orientation 1 */
    uint8_t junk[64] = {0xFF, 0xD8, 0xFF, 0xE1, 0, 10, 'E', 'x', 'i', 'f', 0, 0, 'M', 'M'};
    CK(idf_image_exif_orientation(junk, sizeof junk) == 1);
}

/* ---- formats */

static void test_formats(void) {
    uint8_t rgb[7 * 5 * 3];
    for (size_t i = 0; i < sizeof rgb; i++) rgb[i] = (uint8_t)(i * 37 + 11);
    idf_image_limits lim = {0, 0, true};
    printf("image features: %s\n", idf_image_features());
#if IDF_HAVE_WEBP
    {
        uint8_t *out = NULL;
        size_t n = WebPEncodeLosslessRGB(rgb, 7, 5, 21, &out);
        idf_image im = {0};
        idf_err err;
        CK(idf_image_load_memory(out, n, &lim, NULL, &im, &err) == IDEFICS_OK);
        CK(im.w == 7 && im.h == 5 && !memcmp(im.rgb, rgb, sizeof rgb));
        idf_image_free(&im, NULL);
        CK(idf_image_load_memory(out, n / 2, &lim, NULL, &im, &err) == IDEFICS_ERR_IMAGE_DECODE);
        WebPFree(out);
        printf("webp: lossless round trip exact\n");
    }
#else
    {
        static const uint8_t riff[] = "RIFF\x20\0\0\0WEBPVP8L";
        idf_image im = {0};
        idf_err err;
        CK(idf_image_load_memory(riff, sizeof riff, &lim, NULL, &im, &err) == IDEFICS_ERR_UNSUPPORTED);
        CK(strstr(err.msg, "'webp'") != NULL);
    }
#endif
#if IDF_HAVE_TIFF
    {
        char p[1200];
        path_of(p, sizeof p, "small.tif");
        TIFF *t = TIFFOpen(p, "w");
        CK(t != NULL);
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 7);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, 5);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 3);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_RGB);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG);
        TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_LZW);
        TIFFSetField(t, TIFFTAG_ORIENTATION, ORIENTATION_TOPLEFT);
        for (uint32_t y = 0; y < 5; y++) TIFFWriteScanline(t, rgb + y * 21, y, 0);
        TIFFClose(t);
        idf_image im = {0};
        idf_err err;
        CK(idf_image_load_file(p, &lim, NULL, &im, &err) == IDEFICS_OK);
        CK(im.w == 7 && im.h == 5 && !memcmp(im.rgb, rgb, sizeof rgb));
        idf_image_free(&im, NULL);
        printf("tiff: LZW round trip exact\n");
    }
#endif
#if IDF_HAVE_HEIF
    {
        struct heif_context *ctx = heif_context_alloc();
        struct heif_encoder *enc = NULL;
        struct heif_error he = heif_context_get_encoder_for_format(ctx, heif_compression_HEVC, &enc);
        if (he.code != heif_error_Ok) {
            printf("heif: no HEVC encoder in this libheif; decode path not exercised\n");
        } else {
            struct heif_image *img = NULL;
            heif_image_create(64, 48, heif_colorspace_RGB, heif_chroma_interleaved_RGB, &img);
            heif_image_add_plane(img, heif_channel_interleaved, 64, 48, 8);
            int stride;
            uint8_t *pl = heif_image_get_plane(img, heif_channel_interleaved, &stride);
            for (int y = 0; y < 48; y++)
                for (int x = 0; x < 64; x++) {
                    uint8_t *q = pl + y * stride + x * 3;
                    q[0] = x < 32 ? 230 : 20, q[1] = 40, q[2] = x < 32 ? 20 : 230;
                }
            heif_encoder_set_lossy_quality(enc, 90);
            he = heif_context_encode_image(ctx, img, enc, NULL, NULL);
            CK(he.code == heif_error_Ok);
            char p[1200];
            path_of(p, sizeof p, "small.heic");
            he = heif_context_write_to_file(ctx, p);
            CK(he.code == heif_error_Ok);
            heif_image_release(img);
            heif_encoder_release(enc);
            idf_image im = {0};
            idf_err err;
            idefics_status st = idf_image_load_file(p, &lim, NULL, &im, &err);
            if (st != IDEFICS_OK) printf("heif: %s\n", err.msg);
            CK(st == IDEFICS_OK);
            if (st == IDEFICS_OK) {
                CK(im.w == 64 && im.h == 48);
                CK(im.rgb[(10 * 64 + 5) * 3] > 180 && im.rgb[(10 * 64 + 5) * 3 + 2] < 80);
                CK(im.rgb[(10 * 64 + 60) * 3] < 80 && im.rgb[(10 * 64 + 60) * 3 + 2] > 180);
                printf("heif: HEVC round trip within tolerance\n");
            }
            idf_image_free(&im, NULL);
        }
        heif_context_free(ctx);
    }
#endif
}

int main(int argc, char **argv) {
    g_self = argv[0];
    if (argc == 3 && !strcmp(argv[1], "decode")) return child_decode(argv[2]);
    if (argc == 3 && !strcmp(argv[1], "write-exif-fixture")) {
        /* regenerates tests/fixtures/images/exif-orientation-6.jpg (committed): 32x16, left red,
         * right blue, EXIF Orientation 6 (shown upright it is 16x32, red on top) */
        uint8_t rgb[32 * 16 * 3], ex[64];
        for (int i = 0; i < 32 * 16; i++) {
            int x = i % 32;
            rgb[3 * i] = x < 16 ? 255 : 0, rgb[3 * i + 1] = 0, rgb[3 * i + 2] = x < 16 ? 0 : 255;
        }
        mem j = jpeg_make(32, 16, rgb, false, ex, exif_block(ex, 6, true));
        FILE *f = fopen(argv[2], "wb");
        bool ok = f && fwrite(j.d, 1, j.n, f) == j.n;
        if (f) ok = fclose(f) == 0 && ok;
        free(j.d);
        return ok ? 0 : 1;
    }
    if (argc != 2) {
        fprintf(stderr, "usage: test_image_bounds SCRATCH_DIR\n");
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", g_dir);
    if (system(cmd) != 0) return 1;
    test_exif();
    test_formats();
    test_bombs();
    if (failures) fprintf(stderr, "image_bounds: %d check(s) failed\n", failures);
    else printf("image_bounds: all checks passed\n");
    return failures != 0;
}
