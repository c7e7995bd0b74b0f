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

int idf_map_file(const char *path, idf_mapping *m) {
    memset(m, 0, sizeof(*m));
    m->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno ? errno : EIO;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return e;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return EINVAL;
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return e;
        }
        m->data = p;
    }
    m->size = (uint64_t)st.st_size;
    m->fd = fd;
    return 0;
}

void idf_unmap_file(idf_mapping *m) {
    if (m->data) munmap((void *)m->data, (size_t)m->size);
    if (m->fd >= 0) close(m->fd);
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

static void advise(const idf_mapping *m, uint64_t off, uint64_t len, int advice) {
    if (!m->data || !idf_range_ok(off, len, m->size) || len == 0) return;
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
