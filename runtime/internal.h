/*
 * internal.h - helpers shared by every runtime/ file: allocation through the
 * user's allocator, per-handle error text, logging. Private: not installed.
 *
 * Naming: private symbols shared across runtime files are idf_*; anything else
 * is static. Public symbols are idefics_* (include/idefics.h).
 */
#ifndef IDF_INTERNAL_H
#define IDF_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "idefics.h"
#include "platform.h"

#define IDF_ERRMSG_SIZE 512

/* Allocation context: the user's allocator (NULL members = libc). Every heap
 * allocation in the library goes through these. */
typedef struct idf_alloc {
    idefics_allocator a;
} idf_alloc;

void *idf_malloc(const idf_alloc *al, size_t size);
void *idf_calloc(const idf_alloc *al, size_t n, size_t size); /* overflow-checked, zeroed */
void *idf_realloc(const idf_alloc *al, void *p, size_t size);
void idf_free(const idf_alloc *al, void *p); /* NULL is fine */
/* Adapters with the signature platform.h's pool expects (ud = const idf_alloc *). */
void *idf_malloc_cb(void *ud, size_t size);
void idf_free_cb(void *ud, void *p);

/* Logging sink: callback + level threshold. */
typedef struct idf_log {
    idefics_log_fn fn;
    void *ud;
    idefics_log_level level;
} idf_log;

void idf_logf(const idf_log *log, idefics_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Error text kept in a handle. idf_errf formats the message and returns the
 * status, so callers write: return idf_errf(err, IDEFICS_ERR_CORRUPT, "...", ...); */
typedef struct idf_err {
    char msg[IDF_ERRMSG_SIZE];
} idf_err;

idefics_status idf_errf(idf_err *err, idefics_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void idf_err_clear(idf_err *err);
/* Copy err->msg into a caller buffer (NULL buf is fine). */
void idf_err_copy(const idf_err *err, char *buf, size_t size);

#define IDF_FORWARD(expr)                          \
    do {                                           \
        idefics_status idf_st_ = (expr);           \
        if (idf_st_ != IDEFICS_OK) return idf_st_; \
    } while (0)

#endif /* IDF_INTERNAL_H */
