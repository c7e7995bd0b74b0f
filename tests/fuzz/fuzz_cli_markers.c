/*
 * fuzz_cli_markers.c - libFuzzer target for cli_split_markers (tools/cli/cli_common.c),
 * the <img:PATH> marker split of `idefics ask --raw` prompts, which come from users'
 * files. Property: the pieces, with each image written back as "<img:PATH>", rebuild
 * the input exactly; no text piece is empty; no path is empty or holds '>'.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=true; run: build-fuzz/tests/fuzz_cli_markers
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli_common.h"

typedef struct rebuild {
    char *buf;
    size_t len;
} rebuild;

static int on_text(void *ud, const char *p, size_t n) {
    rebuild *r = ud;
    if (n == 0) abort();
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    return 0;
}

static int on_image(void *ud, const char *path) {
    rebuild *r = ud;
    size_t n = strlen(path);
    if (n == 0 || strchr(path, '>')) abort();
    memcpy(r->buf + r->len, "<img:", 5);
    memcpy(r->buf + r->len + 5, path, n);
    r->buf[r->len + 5 + n] = '>';
    r->len += n + 6;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    rebuild r = {malloc(size + 1), 0};
    if (!text || !r.buf) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    size_t len = strlen(text); /* the CLI's text never holds a NUL (refused when read) */
    if (cli_split_markers(text, on_text, on_image, &r) != 0) abort();
    if (r.len != len || memcmp(r.buf, text, len) != 0) abort();
    free(text);
    free(r.buf);
    return 0;
}
