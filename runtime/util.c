/*
 * util.c - allocation, logging, error text and status names (internal.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *idf_malloc(const idf_alloc *al, size_t size) {
    if (size == 0) size = 1;
    if (al && al->a.malloc_fn) return al->a.malloc_fn(al->a.user_data, size);
    return malloc(size);
}

void *idf_calloc(const idf_alloc *al, size_t n, size_t size) {
    size_t bytes;
    if (!idf_mul_size(n, size, &bytes)) return NULL;
    void *p = idf_malloc(al, bytes);
    if (p) memset(p, 0, bytes ? bytes : 1);
    return p;
}

void *idf_realloc(const idf_alloc *al, void *p, size_t size) {
    if (size == 0) size = 1;
    if (al && al->a.realloc_fn) return al->a.realloc_fn(al->a.user_data, p, size);
    if (al && al->a.malloc_fn) return NULL; /* a custom malloc without realloc: callers must not realloc */
    return realloc(p, size);
}

void idf_free(const idf_alloc *al, void *p) {
    if (!p) return;
    if (al && al->a.free_fn)
        al->a.free_fn(al->a.user_data, p);
    else
        free(p);
}

void *idf_malloc_cb(void *ud, size_t size) { return idf_malloc((const idf_alloc *)ud, size); }
void idf_free_cb(void *ud, void *p) { idf_free((const idf_alloc *)ud, p); }

void idf_logf(const idf_log *log, idefics_log_level level, const char *fmt, ...) {
    if (!log || !log->fn || level > log->level) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log->fn(log->ud, level, buf);
}

idefics_status idf_errf(idf_err *err, idefics_status st, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return st;
}

void idf_err_clear(idf_err *err) {
    if (err) err->msg[0] = '\0';
}

void idf_err_copy(const idf_err *err, char *buf, size_t size) {
    if (!buf || size == 0) return;
    snprintf(buf, size, "%s", err ? err->msg : "");
}

const char *idefics_status_str(idefics_status st) {
    switch (st) {
#define S(x) \
    case x: return #x;
        S(IDEFICS_OK)
        S(IDEFICS_ERR_INVALID_ARG)
        S(IDEFICS_ERR_OUT_OF_MEMORY)
        S(IDEFICS_ERR_IO)
        S(IDEFICS_ERR_UNSUPPORTED)
        S(IDEFICS_ERR_INTERNAL)
        S(IDEFICS_ERR_BAD_MAGIC)
        S(IDEFICS_ERR_BAD_VERSION)
        S(IDEFICS_ERR_TRUNCATED)
        S(IDEFICS_ERR_CORRUPT)
        S(IDEFICS_ERR_CHECKSUM)
        S(IDEFICS_ERR_DECOMPRESS)
        S(IDEFICS_ERR_MISSING_TENSOR)
        S(IDEFICS_ERR_BAD_SHAPE)
        S(IDEFICS_ERR_BAD_CONFIG)
        S(IDEFICS_ERR_BAD_CHECKPOINT)
        S(IDEFICS_ERR_IMAGE_DECODE)
        S(IDEFICS_ERR_IMAGE_TOO_LARGE)
        S(IDEFICS_ERR_CONTEXT_FULL)
        S(IDEFICS_ERR_EMPTY_PROMPT)
        S(IDEFICS_ERR_CANCELLED)
        S(IDEFICS_ERR_BACKEND)
        S(IDEFICS_ERR_NO_DEVICE)
#undef S
    }
    return "IDEFICS_ERR_UNKNOWN";
}

const char *idefics_version_string(void) { return IDEFICS_VERSION_STRING; }
