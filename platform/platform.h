/*
 * platform.h - the only place that talks to the operating system: file mapping,
 * threads, clocks, memory statistics, dynamic loading. Depends on libc and the
 * OS only (docs/ARCHITECTURE.md). Nothing here keeps global state.
 */
#ifndef IDF_PLATFORM_H
#define IDF_PLATFORM_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

/* ---- overflow-checked arithmetic on sizes read from untrusted files ---- */

/* Each returns false (and leaves *out unspecified) on overflow. */
static inline bool idf_add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool idf_mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline bool idf_add_size(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }
static inline bool idf_mul_size(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
/* true when [off, off + len) lies inside [0, total). */
static inline bool idf_range_ok(uint64_t off, uint64_t len, uint64_t total) {
    uint64_t end;
    return idf_add_u64(off, len, &end) && end <= total;
}

/* ---- little-endian field access (the format is little-endian on every host) ---- */

static inline uint16_t idf_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t idf_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t idf_rd64(const uint8_t *p) { return (uint64_t)idf_rd32(p) | ((uint64_t)idf_rd32(p + 4) << 32); }
static inline void idf_wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void idf_wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static inline void idf_wr64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- file mapping ---- */

typedef struct idf_mapping {
    const uint8_t *data; /* NULL for an empty file */
    uint64_t size;
    int fd;              /* kept open for madvise/reads; -1 when closed */
    /* identity of the mapped file (fstat of fd), for the verification stamp */
    uint64_t dev, ino;
    int64_t mtime_ns;
    bool anon;           /* idf_map_make_private: data is anonymous memory holding a copy */
} idf_mapping;

/* Map a whole file read-only. Returns 0, or an errno value, or one of the
 * IDF_ENOTREG_* codes below (the file is not touched and *m is zeroed on
 * failure); idf_open_strerror() turns either into text. */
int idf_map_file(const char *path, idf_mapping *m);
/* The same with flags: IDF_MAP_HUGE asks for huge pages on the mapping
 * (MADV_HUGEPAGE where the OS has it). */
#define IDF_MAP_HUGE 1u
int idf_map_file_ex(const char *path, idf_mapping *m, unsigned flags);

/* ---- opening only regular files (issue 15) ----
 * A FIFO would block open() or read() forever, a device may never end, a
 * directory "reads" as a huge or failing file. Every file the runtime and the
 * tools read from a path is opened with O_NONBLOCK (so a FIFO cannot block the
 * open), checked with fstat and refused unless it is a regular file; the
 * flag is then cleared. The codes are negative so they never clash with errno. */
#define IDF_ENOTREG_FIFO (-1001)
#define IDF_ENOTREG_DIR (-1002)
#define IDF_ENOTREG_CHR (-1003)
#define IDF_ENOTREG_BLK (-1004)
#define IDF_ENOTREG_SOCK (-1005)
#define IDF_ENOTREG_OTHER (-1006)
/* Returns an fd (>= 0, O_CLOEXEC, blocking) or -1 with *err set to an errno
 * value or an IDF_ENOTREG_* code. size (may be NULL) receives st_size. */
int idf_open_regular(const char *path, uint64_t *size, int *err);
/* The same as a stdio stream ("rb"); NULL with *err set on failure. */
void *idf_fopen_regular(const char *path, int *err); /* returns FILE * */
/* "it is a FIFO (named pipe), not a regular file", ..., or strerror(e). */
const char *idf_open_strerror(int e);

/* The per-user cache folder, created if needed: $IDEFICS_CACHE_DIR, else
 * $XDG_CACHE_HOME/idefics, else $HOME/.cache/idefics (the same folder the
 * OpenCL program cache uses). false when none can be made. */
bool idf_user_cache_dir(char *buf, size_t size);
/* mkdir -p; true when path is a folder afterwards. */
bool idf_make_dirs(const char *path);
/* Write a small file whole: a temporary next to it, then rename. */
bool idf_write_file_atomic(const char *path, const void *data, size_t len);
/* Read a small regular file into buf (NUL-terminated); -1 when absent,
 * unreadable or larger than size - 1, else the byte count. */
long idf_read_small_file(const char *path, char *buf, size_t size);
void idf_unmap_file(idf_mapping *m);
/* Hints for a byte range of a mapping: will be needed soon / may be dropped. */
void idf_map_advise_willneed(const idf_mapping *m, uint64_t off, uint64_t len);
void idf_map_advise_dontneed(const idf_mapping *m, uint64_t off, uint64_t len);

/* ---- threads ---- */

/* A persistent pool: worker threads are created once and reused by every
 * parallel_for, so no op pays for thread creation. */
typedef struct idf_pool idf_pool;

typedef void (*idf_task_fn)(void *ctx, int64_t index, int thread_id);

/* n_threads <= 0 means idf_cpu_count(). The calling thread takes part, so a
 * pool of n threads starts n - 1 workers. alloc/free may be NULL (libc). */
idf_pool *idf_pool_create(int n_threads, void *(*alloc)(void *, size_t), void (*dealloc)(void *, void *),
                          void *alloc_ud);
void idf_pool_free(idf_pool *pool);
int idf_pool_size(const idf_pool *pool);
/* Run fn(ctx, i, thread_id) for every i in [0, n), sharing indices dynamically
 * among the threads; returns when all are done. Not reentrant: one call at a
 * time per pool. A NULL pool runs serially on the caller. */
void idf_pool_run(idf_pool *pool, int64_t n, idf_task_fn fn, void *ctx);

/* Replace a file mapping by a private copy of it in anonymous memory (huge
 * pages where the OS gives them), copied across the pool, and unmap the file
 * (llama.cpp's --no-mmap: the process owns its pages, at the cost of RSS equal
 * to the file and one copy of it). The fd stays open. 0 or an errno value (the
 * mapping is left as it was). */
int idf_map_make_private(idf_mapping *m, idf_pool *pool);

int idf_cpu_count(void);

/* ---- clocks and memory ---- */

double idf_time_ms(void);          /* monotonic milliseconds */
int64_t idf_rss_bytes(void);       /* current resident set, -1 if unknown */
int64_t idf_peak_rss_bytes(void);  /* peak resident set (VmHWM), -1 if unknown */
int64_t idf_anon_rss_bytes(void);  /* anonymous (not file-backed) resident memory, -1 if unknown */

/* ---- dynamic loading ---- */

void *idf_dlopen(const char *path);   /* NULL when absent */
void *idf_dlsym(void *lib, const char *name);
void idf_dlclose(void *lib);

/* true when stderr/stdout is a terminal (progress bars in tools) */
bool idf_isatty(int fd);

#endif /* IDF_PLATFORM_H */
