/*
 * caption_html.c - `idefics caption --html PAGE`: one self-contained static
 * page for reviewing OUT's captions before they are published.
 *
 * Each record is a <figure>: a thumbnail (JPEG, at most 240 pixels a side,
 * embedded as a data: URI, made with idefics_image_thumbnail and libjpeg)
 * whose alt is the caption, an editable caption (a labelled textarea; editing
 * updates the alt), and approve / flag radio buttons in a fieldset whose
 * legend names the file. A button exports the reviewed captions as JSONL
 * ({"path", "path_b64"?, "caption", "review", "edited"}), downloaded and also
 * shown in a read-only text box. Everything is a native control, so it works
 * with the keyboard alone and with screen readers; focus is always visible.
 * No network: no external script, style, font or image.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if CAPTION_HAVE_JPEG
#include <jpeglib.h>
#endif

#include "caption.h"
#include "idefics.h"

#define THUMB_SIDE 240

static void html_text(cap_buf *b, const char *s, size_t n) {
    bool utf8 = utf8_valid(s, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '&') cb_str(b, "&amp;");
        else if (c == '<') cb_str(b, "&lt;");
        else if (c == '>') cb_str(b, "&gt;");
        else if (c == '"') cb_str(b, "&quot;");
        else if (c == '\'') cb_str(b, "&#39;");
        else if (c < 0x20 && c != '\n' && c != '\t') cb_str(b, "\xEF\xBF\xBD");
        else if (!utf8 && c >= 0x80) cb_str(b, "\xEF\xBF\xBD"); /* the raw name is in data-path-b64 */
        else cb_add(b, s + i, 1);
    }
}

#if CAPTION_HAVE_JPEG
/* JPEG-encodes an RGB thumbnail into b as base64. */
static bool jpeg_b64(cap_buf *b, const uint8_t *rgb, int w, int h) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e); /* encoding our own buffer cannot hit libjpeg's fatal errors */
    jpeg_create_compress(&c);
    unsigned char *mem = NULL;
    unsigned long len = 0;
    jpeg_mem_dest(&c, &mem, &len);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 80, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * (size_t)w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    if (!mem) return false;
    cb_base64(b, mem, len);
    free(mem);
    return true;
}
#endif

/* A thumbnail data URI for the image at path, or false. */
static bool thumbnail(cap_buf *b, const char *path, int64_t max_bytes, int *tw, int *th) {
#if CAPTION_HAVE_JPEG
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0 || st.st_size > max_bytes) {
        close(fd);
        return false;
    }
    size_t n = (size_t)st.st_size, got = 0;
    uint8_t *d = malloc(n);
    while (d && got < n) {
        ssize_t k = read(fd, d + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    static uint8_t rgb[THUMB_SIDE * THUMB_SIDE * 3];
    bool ok = d && got == n &&
              idefics_image_thumbnail(d, n, THUMB_SIDE, 0, true, rgb, tw, th, NULL, 0) == IDEFICS_OK;
    free(d);
    if (!ok) return false;
    cb_str(b, "data:image/jpeg;base64,");
    return jpeg_b64(b, rgb, *tw, *th);
#else
    (void)b, (void)path, (void)max_bytes, (void)tw, (void)th;
    return false; /* no encoder: the page shows the caption without a picture */
#endif
}

typedef struct page {
    cap_buf b;
    size_t n;
    int64_t max_bytes;
} page;

static void add_figure(void *ud, cap_prev *r) {
    page *p = ud;
    size_t i = ++p->n;
    cap_buf *b = &p->b;
    bool utf8 = utf8_valid(r->path, r->path_len);
    cb_printf(b, "<figure id=\"f%zu\" data-path=\"", i);
    html_text(b, r->path, r->path_len);
    cb_str(b, "\"");
    if (!utf8) {
        cb_str(b, " data-path-b64=\"");
        cb_base64(b, (const uint8_t *)r->path, r->path_len);
        cb_str(b, "\"");
    }
    cb_printf(b, " data-ok=\"%d\">\n", r->ok);
    const char *cap = r->ok && r->caption ? r->caption : "";
    cap_buf uri = {0};
    int tw = 0, th = 0;
    if (thumbnail(&uri, r->path, p->max_bytes, &tw, &th) && !uri.oom) {
        cb_printf(b, "<img src=\"%s\" width=\"%d\" height=\"%d\" alt=\"", uri.s, tw, th);
        html_text(b, cap, strlen(cap));
        cb_str(b, "\">\n");
    } else {
        cb_str(b, "<div class=\"nothumb\">No preview</div>\n");
    }
    cb_free(&uri);
    cb_str(b, "<figcaption>\n<p class=\"name\">");
    html_text(b, r->path, r->path_len);
    cb_str(b, "</p>\n");
    if (!r->ok) cb_str(b, "<p class=\"error\">This image could not be captioned; see the output file.</p>\n");
    cb_printf(b, "<label for=\"c%zu\">Caption</label>\n<textarea id=\"c%zu\" rows=\"3\" data-original=\"", i, i);
    html_text(b, cap, strlen(cap));
    cb_str(b, "\">");
    html_text(b, cap, strlen(cap));
    cb_printf(b, "</textarea>\n<fieldset><legend>Review of ");
    html_text(b, r->path, r->path_len);
    cb_printf(b,
              "</legend>\n"
              "<label><input type=\"radio\" name=\"r%zu\" value=\"approved\"> Approve</label>\n"
              "<label><input type=\"radio\" name=\"r%zu\" value=\"flagged\"> Flag</label>\n"
              "</fieldset>\n</figcaption>\n</figure>\n",
              i, i);
    cap_prev_free(r);
}

static const char head[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>Caption review</title>\n<style>\n"
    "body{font:16px/1.5 system-ui,sans-serif;margin:1rem;color:#111;background:#fff}\n"
    "main{max-width:70rem}\n"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(16rem,1fr));gap:1rem}\n"
    "figure{margin:0;padding:.75rem;border:1px solid #666;border-radius:.5rem}\n"
    "figure img{max-width:100%;height:auto;display:block;margin:0 auto .5rem}\n"
    ".nothumb{padding:2rem;text-align:center;background:#eee}\n"
    ".name{font-size:.85rem;word-break:break-all;margin:.25rem 0}\n"
    ".error{color:#a00000;font-weight:bold}\n"
    "textarea{width:100%;box-sizing:border-box;font:inherit}\n"
    "fieldset{border:0;padding:0;margin:.5rem 0 0}\nlegend{font-size:.85rem}\n"
    "label{margin-right:1rem}\nbutton{font:inherit;padding:.4rem .8rem}\n"
    ":focus{outline:3px solid #1a5fb4;outline-offset:2px}\n"
    "figure[data-review=approved]{border-color:#1e7b34;border-width:3px}\n"
    "figure[data-review=flagged]{border-color:#a00000;border-width:3px}\n"
    "</style>\n</head>\n<body>\n<main>\n<h1>Caption review</h1>\n"
    "<p>Edit a caption in its box; the picture's alt text follows it. Mark each one Approve or Flag, then "
    "export. Tab moves between controls, arrow keys choose a mark.</p>\n"
    "<p><button type=\"button\" id=\"export\">Export reviewed captions as JSONL</button></p>\n"
    "<label for=\"exported\">Exported JSONL</label>\n"
    "<textarea id=\"exported\" rows=\"4\" readonly></textarea>\n"
    "<p id=\"status\" role=\"status\" aria-live=\"polite\"></p>\n"
    "<section aria-label=\"Images\" class=\"grid\">\n";

static const char tail[] =
    "</section>\n</main>\n<script>\n"
    "'use strict';\n"
    "for (const f of document.querySelectorAll('figure')) {\n"
    "  const t = f.querySelector('textarea'), img = f.querySelector('img');\n"
    "  t.addEventListener('input', () => { if (img) img.alt = t.value; });\n"
    "  for (const r of f.querySelectorAll('input[type=radio]'))\n"
    "    r.addEventListener('change', () => { f.dataset.review = r.value; });\n"
    "}\n"
    "document.getElementById('export').addEventListener('click', () => {\n"
    "  const lines = [];\n"
    "  for (const f of document.querySelectorAll('figure')) {\n"
    "    const t = f.querySelector('textarea'), r = f.querySelector('input[type=radio]:checked');\n"
    "    const o = {path: f.dataset.path};\n"
    "    if (f.dataset.pathB64) o.path_b64 = f.dataset.pathB64;\n"
    "    o.caption = t.value; o.review = r ? r.value : 'unreviewed'; o.edited = t.value !== t.dataset.original;\n"
    "    lines.push(JSON.stringify(o));\n"
    "  }\n"
    "  const text = lines.join('\\n') + '\\n';\n"
    "  document.getElementById('exported').value = text;\n"
    "  const a = document.createElement('a');\n"
    "  a.href = URL.createObjectURL(new Blob([text], {type: 'application/x-ndjson'}));\n"
    "  a.download = 'reviewed-captions.jsonl'; a.click();\n"
    "  document.getElementById('status').textContent = 'Exported ' + lines.length + ' captions.';\n"
    "});\n"
    "</script>\n</body>\n</html>\n";

int cap_html_write(const char *html_path, const char *out_path, cap_format fmt, int64_t max_thumb_bytes, char *msg,
                   size_t msg_size) {
    (void)max_thumb_bytes;
    int fd = open(out_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(msg, msg_size, "cannot read %s: %s", out_path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    size_t n = (size_t)st.st_size, got = 0;
    char *data = malloc(n + 1);
    while (data && got < n) {
        ssize_t k = read(fd, data + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (!data || got != n) {
        free(data);
        snprintf(msg, msg_size, "cannot read %s", out_path);
        return -1;
    }
    page p = {.max_bytes = 64 << 20};
    cb_str(&p.b, head);
    size_t end;
    cap_parse_records(data, n, fmt, &end, add_figure, &p);
    free(data);
    cb_str(&p.b, tail);
    if (p.b.oom) {
        cb_free(&p.b);
        snprintf(msg, msg_size, "out of memory building the page");
        return -1;
    }
    /* write then rename: a reader never sees half a page */
    size_t tl = strlen(html_path) + 32;
    char *tmp = malloc(tl);
    int rc = -1;
    if (!tmp) goto done;
    snprintf(tmp, tl, "%s.tmp.%ld", html_path, (long)getpid());
    int tfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (tfd < 0) {
        snprintf(msg, msg_size, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    int werr = 0;
    for (size_t off = 0; off < p.b.len && !werr;) {
        ssize_t k = write(tfd, p.b.s + off, p.b.len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) werr = k < 0 ? errno : EIO;
        else off += (size_t)k;
    }
    if (!werr && fdatasync(tfd) != 0) werr = errno;
    if (close(tfd) != 0 && !werr) werr = errno;
    if (!werr && rename(tmp, html_path) != 0) werr = errno;
    if (werr) {
        unlink(tmp);
        snprintf(msg, msg_size, "cannot write %s: %s", html_path, strerror(werr));
        goto done;
    }
    rc = 0;
done:
    free(tmp);
    cb_free(&p.b);
    return rc;
}
