/*
 * platform_posix.c - POSIX (Linux, Android, macOS) implementation of platform.h.
 */
#define _GNU_SOURCE
#include "platform.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ mapping */

static int not_regular_code(mode_t mode) {
    if (S_ISFIFO(mode)) return IDF_ENOTREG_FIFO;
    if (S_ISDIR(mode)) return IDF_ENOTREG_DIR;
    if (S_ISCHR(mode)) return IDF_ENOTREG_CHR;
    if (S_ISBLK(mode)) return IDF_ENOTREG_BLK;
    if (S_ISSOCK(mode)) return IDF_ENOTREG_SOCK;
    return IDF_ENOTREG_OTHER;
}

const char *idf_open_strerror(int e) {
    switch (e) {
    case IDF_ENOTREG_FIFO: return "it is a FIFO (named pipe), not a regular file";
    case IDF_ENOTREG_DIR: return "it is a directory, not a regular file";
    case IDF_ENOTREG_CHR: return "it is a character device, not a regular file";
    case IDF_ENOTREG_BLK: return "it is a block device, not a regular file";
    case IDF_ENOTREG_SOCK: return "it is a socket, not a regular file";
    case IDF_ENOTREG_OTHER: return "it is not a regular file";
    default: return strerror(e);
    }
}

/* open + fstat on the same descriptor (no check-then-open race). O_NONBLOCK
 * makes open() of a FIFO return at once instead of waiting for a writer. */
static int open_regular(const char *path, struct stat *st, int *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        /* opening a socket gives ENXIO; say what it is when stat can tell */
        int e = errno ? errno : EIO;
        struct stat ls;
        if (e == ENXIO && stat(path, &ls) == 0 && !S_ISREG(ls.st_mode)) e = not_regular_code(ls.st_mode);
        *err = e;
        return -1;
    }
    if (fstat(fd, st) != 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        *err = not_regular_code(st->st_mode);
        close(fd);
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    return fd;
}

int idf_open_regular(const char *path, uint64_t *size, int *err) {
    struct stat st;
    int e = 0, fd = open_regular(path, &st, &e);
    if (err) *err = e;
    if (fd >= 0 && size) *size = (uint64_t)st.st_size;
    return fd;
}

void *idf_fopen_regular(const char *path, int *err) {
    int e = 0, fd = idf_open_regular(path, NULL, &e);
    if (fd < 0) {
        if (err) *err = e;
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        if (err) *err = errno;
        close(fd);
    }
    return f;
}

/* idf_map_make_private (use_mmap = false): copy the mapped file into anonymous
 * memory, in 64 MB slices across the pool. Each slice of the mapping is
 * dropped from this process (MADV_DONTNEED: the pages stay in the page cache)
 * as soon as it is copied, so peak RSS is the copy, not the copy plus the
 * file (9B file: 9.9 GB peak before, 5.1 GB after). On the Zen 4 host pread()
 * from the page cache ran at 0.45-0.9 GB/s, a memcpy from the mapping at
 * 1.8 GB/s per thread. The copy asks for huge pages: in small ones the 9B
 * decode gained 3% over the mapped file, in huge ones 18% (docs/CPU.md "Where
 * the weights live"), though this VM took 6.8-11.7 s to fault 5 GB of huge
 * pages against 2.7-3.0 s of small ones. */
typedef struct copy_job {
    const uint8_t *src;
    uint8_t *dst;
    uint64_t size;
} copy_job;

#define COPY_SLICE ((uint64_t)64 << 20)

static void copy_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    const copy_job *j = ctx;
    const uint64_t off = (uint64_t)i * COPY_SLICE;
    const size_t n = (size_t)(j->size - off < COPY_SLICE ? j->size - off : COPY_SLICE);
    memcpy(j->dst + off, j->src + off, n);
    madvise((void *)(j->src + off), n, MADV_DONTNEED); /* off is a multiple of the page size */
}

int idf_map_make_private(idf_mapping *m, idf_pool *pool) {
    if (!m->data || m->anon) return 0;
    void *p = mmap(NULL, (size_t)m->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return errno ? errno : ENOMEM;
#ifdef MADV_HUGEPAGE
    madvise(p, (size_t)m->size, MADV_HUGEPAGE);
#endif
    copy_job j = {m->data, p, m->size};
    idf_pool_run(pool, (int64_t)((m->size + COPY_SLICE - 1) / COPY_SLICE), copy_task, &j);
    /* read-only from here on, like the file mapping: a stray write faults */
    mprotect(p, (size_t)m->size, PROT_READ);
    munmap((void *)m->data, (size_t)m->size);
    m->data = p;
    m->anon = true;
    return 0;
}

int idf_map_file_ex(const char *path, idf_mapping *m, unsigned flags) {
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    struct stat st;
    int e = 0;
    int fd = open_regular(path, &st, &e);
    if (fd < 0) return e ? e : EIO;
    if (st.st_size > 0 && (uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return EFBIG;
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            e = errno;
            close(fd);
            return e;
        }
#ifdef MADV_HUGEPAGE
        /* Page cache filled through a huge-page mapping is kept in 2 MB folios
         * where the kernel and file system can (Linux 6.x ext4/xfs): on the
         * Zen 4 host, weights in such a cache streamed at 34 GB/s against 28
         * from a 4 KB-page cache. Pages already cached stay as they are. */
        if (flags & IDF_MAP_HUGE) madvise(p, (size_t)st.st_size, MADV_HUGEPAGE);
#endif
        m->data = p;
    }
    m->size = (uint64_t)st.st_size;
    m->fd = fd;
    m->dev = (uint64_t)st.st_dev;
    m->ino = (uint64_t)st.st_ino;
#ifdef __APPLE__
    m->mtime_ns = (int64_t)st.st_mtimespec.tv_sec * 1000000000 + st.st_mtimespec.tv_nsec;
#else
    m->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
#endif
    return 0;
}

int idf_map_file(const char *path, idf_mapping *m) { return idf_map_file_ex(path, m, 0); }

bool idf_user_cache_dir(char *buf, size_t size) {
    const char *d = getenv("IDEFICS_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    int n;
    if (d && d[0]) n = snprintf(buf, size, "%s", d);
    else if (x && x[0]) n = snprintf(buf, size, "%s/idefics", x);
    else if (h && h[0]) n = snprintf(buf, size, "%s/.cache/idefics", h);
    else return false;
    if (n <= 0 || (size_t)n >= size) return false;
    return idf_make_dirs(buf);
}

bool idf_make_dirs(const char *path) {
    char buf[4096];
    if (!path[0] || snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return false;
    for (char *s = buf + 1;; s++) { /* each prefix in turn; folders that exist are fine */
        if (*s == '/' || *s == '\0') {
            const char c = *s;
            *s = '\0';
            mkdir(buf, 0755);
            *s = c;
            if (!c) break;
        }
    }
    struct stat st;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
}

bool idf_write_file_atomic(const char *path, const void *data, size_t len) {
    char tmp[4096];
    const int n = snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    if (n <= 0 || (size_t)n >= sizeof tmp) return false;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    bool ok = write(fd, data, len) == (ssize_t)len;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return false;
    }
    return true;
}

long idf_read_small_file(const char *path, char *buf, size_t size) {
    int e;
    uint64_t sz = 0;
    int fd = idf_open_regular(path, &sz, &e);
    if (fd < 0) return -1;
    long r = -1;
    if (size > 0 && sz < size) {
        ssize_t got = read(fd, buf, size - 1);
        if (got >= 0) {
            buf[got] = '\0';
            r = (long)got;
        }
    }
    close(fd);
    return r;
}

void idf_unmap_file(idf_mapping *m) {
    if (m->data) munmap((void *)m->data, (size_t)m->size);
    if (m->fd >= 0) close(m->fd);
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

static void advise(const idf_mapping *m, uint64_t off, uint64_t len, int advice) {
    /* never on a copy: MADV_DONTNEED would zero anonymous memory */
    if (!m->data || m->anon || !idf_range_ok(off, len, m->size) || len == 0) return;
    long pg = sysconf(_SC_PAGESIZE);
    uint64_t start = off & ~(uint64_t)(pg - 1);
    madvise((void *)(m->data + start), (size_t)(off + len - start), advice);
}

void idf_map_advise_willneed(const idf_mapping *m, uint64_t off, uint64_t len) { advise(m, off, len, MADV_WILLNEED); }
void idf_map_advise_dontneed(const idf_mapping *m, uint64_t off, uint64_t len) { advise(m, off, len, MADV_DONTNEED); }

/* -------------------------------------------------------------------- pool */

struct idf_pool {
    int n_threads; /* including the caller */
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv_start, cv_done;
    /* the current job; generation changes once per idf_pool_run (written under
     * mu; atomic so waiting threads may poll it without the lock) */
    atomic_uint_fast64_t generation;
    idf_task_fn fn;
    void *ctx;
    int64_t n;
    atomic_int_fast64_t next;
    atomic_int active; /* workers still inside the current job (written under mu) */
    bool quit;
    void (*dealloc)(void *, void *);
    void *alloc_ud;
};

typedef struct worker_arg {
    idf_pool *pool;
    int id;
} worker_arg;

/* A worker polls for the next job, and the caller for the workers' end, for up
 * to POOL_SPIN_US before sleeping on the condition variable. A decode step is
 * ~280 pool jobs back to back with a few microseconds of serial work between
 * them, and a sleeping thread takes 10-50 us to wake: with a 5 us spin the
 * worker slept before 89% of the jobs and 9B decode ran at 7.1-7.4 tok/s;
 * with ~190 us it slept before 0.2% of them and decode ran at 7.7 (2 threads,
 * Zen 5). The spin yields the core every 64 pauses (sched_yield), so on a busy
 * machine another runnable thread gets it at once rather than after our slice
 * (a plain 47 us pause loop had cost 7% of decode at load average 2.8), and an
 * idle pool sleeps once the bound passes. */
#ifndef POOL_SPIN_US
#define POOL_SPIN_US 250
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static uint64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000u + (uint64_t)t.tv_nsec / 1000u;
}

/* One step of a bounded spin; false once POOL_SPIN_US have passed since *t0
 * (set on the first call, when *t0 is 0). */
static inline bool spin_step(int *s, uint64_t *t0) {
    cpu_relax();
    if (++*s % 64)
        return true;
    sched_yield();
    const uint64_t t = now_us();
    if (!*t0)
        *t0 = t;
    return t - *t0 < POOL_SPIN_US;
}

static void run_share(idf_pool *p, int tid) {
    for (;;) {
        int64_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n) break;
        p->fn(p->ctx, i, tid);
    }
}

static void *worker_main(void *arg) {
    idf_pool *p = ((worker_arg *)arg)->pool;
    int id = ((worker_arg *)arg)->id;
    uint64_t seen = 0;
    for (;;) {
        int s = 0;
        uint64_t t0 = 0;
        while (atomic_load_explicit(&p->generation, memory_order_acquire) == seen && spin_step(&s, &t0)) {
        }
        pthread_mutex_lock(&p->mu);
        while (!p->quit && atomic_load(&p->generation) == seen) pthread_cond_wait(&p->cv_start, &p->mu);
        if (p->quit) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        seen = atomic_load(&p->generation);
        pthread_mutex_unlock(&p->mu);
        run_share(p, id);
        pthread_mutex_lock(&p->mu);
        if (atomic_fetch_sub(&p->active, 1) == 1) pthread_cond_signal(&p->cv_done);
        pthread_mutex_unlock(&p->mu);
    }
}

idf_pool *idf_pool_create(int n_threads, void *(*alloc)(void *, size_t), void (*dealloc)(void *, void *),
                          void *alloc_ud) {
    if (n_threads <= 0) n_threads = idf_cpu_count();
    if (n_threads > 256) n_threads = 256;
    size_t bytes = sizeof(idf_pool) + (size_t)n_threads * (sizeof(pthread_t) + sizeof(worker_arg));
    idf_pool *p = alloc ? alloc(alloc_ud, bytes) : malloc(bytes);
    if (!p) return NULL;
    memset(p, 0, bytes);
    p->n_threads = n_threads;
    p->threads = (pthread_t *)(p + 1);
    worker_arg *args = (worker_arg *)(p->threads + n_threads);
    p->dealloc = dealloc;
    p->alloc_ud = alloc_ud;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv_start, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    for (int i = 1; i < n_threads; i++) {
        args[i].pool = p;
        args[i].id = i;
        if (pthread_create(&p->threads[i], NULL, worker_main, &args[i]) != 0) {
            p->n_threads = i; /* run with the workers we got */
            break;
        }
    }
    return p;
}

void idf_pool_free(idf_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = true;
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv_start);
    pthread_cond_destroy(&p->cv_done);
    if (p->dealloc)
        p->dealloc(p->alloc_ud, p);
    else
        free(p);
}

int idf_pool_size(const idf_pool *p) { return p ? p->n_threads : 1; }

void idf_pool_run(idf_pool *p, int64_t n, idf_task_fn fn, void *ctx) {
    if (n <= 0) return;
    if (!p || p->n_threads == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    atomic_store(&p->next, 0);
    atomic_store(&p->active, p->n_threads - 1);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv_start);
    pthread_mutex_unlock(&p->mu);
    run_share(p, 0);
    int s = 0;
    uint64_t t0 = 0;
    while (atomic_load_explicit(&p->active, memory_order_acquire) > 0 && spin_step(&s, &t0)) {
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->active) > 0) pthread_cond_wait(&p->cv_done, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int idf_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

/* ---------------------------------------------------------- clocks, memory */

double idf_time_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Reads "Key:   N kB" from /proc/self/status. */
static int64_t proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    size_t kl = strlen(key);
    int64_t v = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtoll(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

int64_t idf_rss_bytes(void) {
    int64_t kb = proc_status_kb("VmRSS");
    return kb < 0 ? -1 : kb * 1024;
}

int64_t idf_peak_rss_bytes(void) {
    int64_t kb = proc_status_kb("VmHWM");
    if (kb >= 0) return kb * 1024;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) return (int64_t)ru.ru_maxrss * 1024;
    return -1;
}

int64_t idf_anon_rss_bytes(void) {
    int64_t kb = proc_status_kb("RssAnon");
    return kb < 0 ? -1 : kb * 1024;
}

/* ---------------------------------------------------------------- dlopen */

void *idf_dlopen(const char *path) { return dlopen(path, RTLD_NOW | RTLD_LOCAL); }
void *idf_dlsym(void *lib, const char *name) { return lib ? dlsym(lib, name) : NULL; }
void idf_dlclose(void *lib) {
    if (lib) dlclose(lib);
}

bool idf_isatty(int fd) { return isatty(fd) == 1; }
