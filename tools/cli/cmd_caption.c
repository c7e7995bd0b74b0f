/*
 * cmd_caption.c - `idefics caption`: alt text for a photo library, written so
 * that it can be trusted with one (issue 12; docs/CAPTIONING.md).
 *
 * Each input (files, folders, -r, --files-from) is captioned in a fresh
 * conversation with the model's caption prompt (metadata chat.caption_prompt,
 * else "Describe the image."; -p overrides). Every input ends as one record
 * in OUT (-o; caption_out.c) or on stdout: ok with the caption, or the error.
 * Rerunning into the same OUT resumes: inputs whose record is ok for the same
 * content hash, model identity and prompt are skipped (--force redoes all,
 * --retry-errors redoes failures).
 *
 * Files are read here, not by the library: opened with O_NONBLOCK and checked
 * with fstat, so a FIFO or device never blocks, and hashed (XXH3-128) from the
 * same bytes that are decoded. A worker thread reads and hashes the next
 * inputs while the model works on the current one.
 *
 * Signals: SIGINT/SIGTERM finish the current record, sync OUT, print the
 * summary and exit 130/143; a second one cancels the current image at once.
 * SIGXFSZ and SIGPIPE are ignored so that a size limit or a closed pipe is a
 * write error with a message, not a silent death.
 *
 * Exit status: 0 all inputs captioned (now or in an earlier run), 1 some
 * failed (their error records are in OUT) or OUT could not be written,
 * 2 usage error, 130 SIGINT, 143 SIGTERM.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "caption.h"
#include "cli.h"
#include "cli_faults.h"
#include "idefics.h"

#define CAPTION_DEFAULT_PROMPT "Describe the image."
#define CAPTION_DEFAULT_TOKENS 48

typedef struct caption_opts {
    const char *model, *prompt, *out, *html, *board, *device;
    char **inputs;
    int n_inputs;
    int n_predict, n_threads, n_ctx, parallel;
    bool set_threads, set_ctx, set_backend, set_format;
    float temperature;
    uint64_t seed;
    bool set_seed;
    idefics_backend backend;
    cap_format format;
    bool json, verbose, force, retry_errors, low_memory, no_mmap, no_exif;
    int64_t max_image_pixels; /* 0 = the profile's / library's default */
    bool sidecar;
    cap_sidecar_name sidecar_name;
    cap_find_opts find;
} caption_opts;

static volatile sig_atomic_t g_signal;
/* The run's sessions, for a second signal; set before the handler can see them. */
static idefics_session *const *volatile g_sessions;
static volatile int g_n_sessions;

static void on_signal(int sig) {
    if (g_signal) { /* a second signal: stop the current images now (idefics_session_cancel is a flag store) */
        idefics_session *const *v = g_sessions;
        for (int i = 0; v && i < g_n_sessions; i++)
            if (v[i]) idefics_session_cancel(v[i]);
    }
    g_signal = sig;
}

static bool load_progress(void *ud, float fraction) {
    (void)ud, (void)fraction;
    return !g_signal; /* a signal during the load cancels it */
}

static void log_stderr(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "idefics: %s: %s\n", names[level >= 0 && level <= 3 ? level : 0], msg);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: idefics caption -m MODEL [options] IMAGE|DIR ... [-o OUT]\n\n"
            "Writes alt text for each image, one record per input, to OUT (or stdout).\n"
            "Rerunning with the same OUT resumes where it stopped.\n\n"
            "Inputs:\n"
            "  -r, --recursive         enter subfolders (symlink loops are detected)\n"
            "      --files-from LIST   read names from LIST, one per line ('-' = stdin)\n"
            "  -0, --null              names in LIST end with NUL, not newline\n"
            "      --hidden            include hidden files and folders (names starting with '.')\n"
            "Output:\n"
            "  -o, --output OUT        append records to OUT; resume from the records it holds\n"
            "      --format F          jsonl | csv | tsv | txt (default: OUT's extension, else jsonl;\n"
            "                          txt on stdout)\n"
            "      --json              same as --format jsonl\n"
            "      --force             caption everything again (OUT is started over)\n"
            "      --retry-errors      caption again the inputs whose record is an error\n"
            "      --sidecar xmp       write IPTC alt text into an XMP sidecar next to each image\n"
            "      --sidecar-name N    full (IMG.jpg.xmp, default) | stem (IMG.xmp, as Lightroom)\n"
            "      --html PAGE         write a review page for OUT's records (self-contained HTML)\n"
            "Model and generation:\n"
            "  -m, --model PATH        model file (.idfx)\n"
            "  -p, --prompt TEXT       the caption question (default: the model's caption\n"
            "                          prompt, else \"" CAPTION_DEFAULT_PROMPT "\")\n"
            "  -n, --n-predict N       most tokens per caption (default %d)\n"
            "      --temp T            temperature; 0 = greedy (default)\n"
            "      --seed S            sampling seed (default: random, printed with -v)\n"
            "  -c, --ctx-size N        context length (default: the board's, else 512: captions are short)\n"
            "  -t, --threads N         compute threads (default: all cores)\n"
            "      --parallel N        caption N images at once in one batch (idefics_batch; default 1)\n"
            "      --board NAME        defaults for a board or memory profile (boards/; env IDEFICS_BOARD)\n"
            "      --low-memory        page the weights in per layer (small-RAM boards)\n"
            "      --no-mmap           read the weights into memory instead of mapping the file\n"
            "      --backend NAME      auto | cpu | cpu-ref | opencl (default auto)\n"
            "      --device D          OpenCL device: index or name substring\n"
            "      --max-image-pixels N  decode limit in pixels (default: the board's, else 40000000);\n"
            "                          larger JPEGs are decoded at reduced scale, others refused\n"
            "      --no-exif-orientation  do not turn images upright by their EXIF tag\n"
            "  -v, --verbose           log every image, skipped file and timing to stderr\n\n"
            "Exit status: 0 all inputs captioned, 1 some failed (error records in OUT) or OUT\n"
            "could not be written, 2 usage error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).\n",
            CAPTION_DEFAULT_TOKENS);
}

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* Returns 0 when parsed, 1 when help was printed, 2 on a usage error. */
static int parse_opts(int argc, char **argv, caption_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = CAPTION_DEFAULT_TOKENS;
    o->backend = IDEFICS_BACKEND_AUTO;
    o->parallel = 1;
    o->inputs = calloc((size_t)argc + 1, sizeof *o->inputs);
    if (!o->inputs) {
        fprintf(stderr, "idefics caption: out of memory\n");
        return 2;
    }
    static const char *flags[] = {"--json", "-v", "--verbose", "--force", "--retry-errors", "-r", "--recursive",
                                  "-0", "--null", "--hidden", "--low-memory", "--no-mmap", "--no-exif-orientation", "-h",
                                  "--help"};
    bool only_paths = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_paths || a[0] != '-' || !a[1]) {
            o->inputs[o->n_inputs++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_paths = true;
            continue;
        }
        bool is_flag = false;
        for (size_t k = 0; k < sizeof flags / sizeof flags[0]; k++) is_flag |= !strcmp(a, flags[k]);
        if (is_flag) {
            if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
                usage(stdout);
                return 1;
            }
            if (!strcmp(a, "--json")) o->json = true;
            else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) o->verbose = o->find.verbose = true;
            else if (!strcmp(a, "--force")) o->force = true;
            else if (!strcmp(a, "--retry-errors")) o->retry_errors = true;
            else if (!strcmp(a, "-r") || !strcmp(a, "--recursive")) o->find.recursive = true;
            else if (!strcmp(a, "-0") || !strcmp(a, "--null")) o->find.null_sep = true;
            else if (!strcmp(a, "--hidden")) o->find.hidden = true;
            else if (!strcmp(a, "--low-memory")) o->low_memory = true;
            else if (!strcmp(a, "--no-mmap")) o->no_mmap = true;
            else if (!strcmp(a, "--no-exif-orientation")) o->no_exif = true;
            continue;
        }
        static const char *valued[] = {"-m", "--model", "-p", "--prompt", "-n", "--n-predict", "-t", "--threads",
                                       "-c", "--ctx-size", "--temp", "--seed", "--parallel", "--board", "--backend",
                                       "--device", "--max-image-pixels", "-o", "--output", "--format",
                                       "--files-from", "--sidecar", "--sidecar-name", "--html"};
        bool known = false;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) known |= !strcmp(a, valued[k]);
        if (!known) {
            fprintf(stderr, "idefics caption: unknown option %s\n\n", a);
            usage(stderr);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "idefics caption: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) o->prompt = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) ok = parse_int(v, 1, INT_MAX, &o->n_predict);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) ok = parse_int(v, 0, 4096, &o->n_threads), o->set_threads = true;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) ok = parse_int(v, 0, 1 << 24, &o->n_ctx), o->set_ctx = true;
        else if (!strcmp(a, "--parallel")) ok = parse_int(v, 1, 256, &o->parallel);
        else if (!strcmp(a, "--temp")) {
            char *end;
            errno = 0;
            o->temperature = strtof(v, &end);
            ok = !errno && end != v && !*end && o->temperature >= 0;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            o->seed = strtoull(v, &end, 0);
            ok = !errno && end != v && !*end;
            o->set_seed = true;
        } else if (!strcmp(a, "--board")) o->board = v;
        else if (!strcmp(a, "--device")) o->device = v;
        else if (!strcmp(a, "--backend")) {
            o->set_backend = true;
            if (!strcmp(v, "auto")) o->backend = IDEFICS_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = IDEFICS_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref")) o->backend = IDEFICS_BACKEND_CPU_REF;
            else if (!strcmp(v, "opencl")) o->backend = IDEFICS_BACKEND_OPENCL;
            else ok = false;
        } else if (!strcmp(a, "--max-image-pixels")) {
            char *end;
            errno = 0;
            long long px = strtoll(v, &end, 10);
            ok = !errno && end != v && !*end && px > 0;
            o->max_image_pixels = px;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o->out = v;
        else if (!strcmp(a, "--format")) ok = cap_format_parse(v, &o->format), o->set_format = true;
        else if (!strcmp(a, "--files-from")) o->find.files_from = v;
        else if (!strcmp(a, "--sidecar")) ok = !strcmp(v, "xmp"), o->sidecar = true;
        else if (!strcmp(a, "--sidecar-name")) {
            if (!strcmp(v, "full")) o->sidecar_name = CAP_SIDECAR_FULL;
            else if (!strcmp(v, "stem")) o->sidecar_name = CAP_SIDECAR_STEM;
            else ok = false;
        } else if (!strcmp(a, "--html")) o->html = v;
        if (!ok) {
            fprintf(stderr, "idefics caption: bad value for %s: '%s'\n", a, v);
            return 2;
        }
    }
    if (!o->model) {
        fprintf(stderr, "idefics caption: -m MODEL is required\n\n");
        usage(stderr);
        return 2;
    }
    if (o->n_inputs == 0 && !o->find.files_from) {
        fprintf(stderr, "idefics caption: give at least one image or folder (or --files-from)\n\n");
        usage(stderr);
        return 2;
    }
    if (o->json) o->format = CAP_JSONL, o->set_format = true;
    if (!o->set_format) o->format = o->out ? cap_format_for_path(o->out) : CAP_TXT;
    if (o->sidecar && !cap_xmp_available()) {
        fprintf(stderr, "idefics caption: --sidecar xmp needs libxml2; this build has none (meson feature 'xmp')\n");
        return 2;
    }
    if (o->html && !o->out) {
        fprintf(stderr, "idefics caption: --html needs -o OUT (the page is made from OUT's records)\n");
        return 2;
    }
    if (o->out && o->find.files_from && !strcmp(o->find.files_from, "-") && !strcmp(o->out, "-")) {
        fprintf(stderr, "idefics caption: stdin cannot be both LIST and OUT\n");
        return 2;
    }
    return 0;
}

/* ---- reading the inputs, one worker thread ahead of the model */

typedef struct job {
    uint8_t *data;
    size_t size;
    char hash[48];
    idefics_status st; /* IDEFICS_OK, or why the file could not be read */
    char err[512];
    idefics_image *img;      /* decoded and resized on the reader thread */
    idefics_status prep_st;  /* why it could not be (then err holds the message) */
} job;

static void job_free(job *j) {
    free(j->data);
    j->data = NULL;
    idefics_image_free(j->img);
    j->img = NULL;
}

/* Opens without blocking (a FIFO or device never blocks), refuses anything
 * but a regular file, then reads it whole. */
static void read_input(const char *path, int64_t max_bytes, job *j) {
    memset(j, 0, sizeof *j);
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        j->st = IDEFICS_ERR_IO;
        snprintf(j->err, sizeof j->err, "cannot open: %s", strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        j->st = IDEFICS_ERR_IO;
        snprintf(j->err, sizeof j->err, "cannot stat: %s", strerror(errno));
        close(fd);
        return;
    }
    if (!S_ISREG(st.st_mode)) {
        const char *what = S_ISDIR(st.st_mode)    ? "a folder"
                           : S_ISFIFO(st.st_mode) ? "a FIFO (named pipe)"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                           : S_ISCHR(st.st_mode)  ? "a character device"
                           : S_ISBLK(st.st_mode)  ? "a block device"
                                                  : "a special file";
        j->st = IDEFICS_ERR_IO;
        snprintf(j->err, sizeof j->err, "it is %s, not a regular file; not read", what);
        close(fd);
        return;
    }
    if (st.st_size == 0) {
        j->st = IDEFICS_ERR_IMAGE_DECODE;
        snprintf(j->err, sizeof j->err, "empty file");
        close(fd);
        return;
    }
    if ((int64_t)st.st_size > max_bytes) {
        j->st = IDEFICS_ERR_IMAGE_TOO_LARGE;
        snprintf(j->err, sizeof j->err, "%lld bytes, over the %lld-byte limit", (long long)st.st_size,
                 (long long)max_bytes);
        close(fd);
        return;
    }
    j->size = (size_t)st.st_size;
    j->data = malloc(j->size);
    if (!j->data) {
        j->st = IDEFICS_ERR_OUT_OF_MEMORY;
        snprintf(j->err, sizeof j->err, "out of memory for %zu bytes", j->size);
        close(fd);
        return;
    }
    size_t got = 0;
    while (got < j->size) {
        ssize_t k = read(fd, j->data + got, j->size - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            j->st = IDEFICS_ERR_IO;
            snprintf(j->err, sizeof j->err, "read failed: %s", k < 0 ? strerror(errno) : "the file shrank");
            break;
        }
        got += (size_t)k;
    }
    close(fd);
    if (j->st != IDEFICS_OK) {
        free(j->data);
        j->data = NULL;
        return;
    }
    XXH128_hash_t h = XXH3_128bits(j->data, j->size);
    snprintf(j->hash, sizeof j->hash, "xxh128:%016llx%016llx", (unsigned long long)h.high64,
             (unsigned long long)h.low64);
}

/* Same-content, same-model, same-prompt: the resume rule. txt records hold no
 * hash or model, so there the path alone decides. */
static bool same_work(const cap_prev *p, const char *hash, const char *model_id, const char *prompt) {
    if (!p->hash && !p->model_id) return true;
    return p->hash && !strcmp(p->hash, hash) && p->model_id && !strcmp(p->model_id, model_id) && p->prompt &&
           !strcmp(p->prompt, prompt);
}

/* What resume needs to decide; the previous records are read-only while the
 * run goes, so the reader thread may decide too (and not decode skipped files). */
typedef struct skip_ctx {
    const cap_out *out; /* NULL without -o or with --force */
    bool retry_errors;
    const char *model_id, *prompt;
} skip_ctx;

/* The previous record that makes this input already done, or NULL. */
static const cap_prev *done_before(const skip_ctx *c, const cap_input *ip, const job *j) {
    const cap_prev *prev = c->out ? cap_out_find(c->out, ip->path, ip->len) : NULL;
    if (!prev) return NULL;
    /* a file read now is matched by content; one unreadable now and before (no hash) by its path */
    bool same = j->st == IDEFICS_OK ? same_work(prev, j->hash, c->model_id, c->prompt)
                                    : !prev->ok && (!prev->hash || !*prev->hash);
    return same && (prev->ok || !c->retry_errors) ? prev : NULL;
}

enum { AHEAD = 2 };

typedef struct reader {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    const cap_inputs *in;
    int64_t max_bytes;
    const idefics_model *model;         /* for idefics_image_prepare; NULL = decode in the session */
    const idefics_session_params *sp;
    const skip_ctx *skip;
    job ring[AHEAD];
    size_t produced, consumed;
    bool stop;
} reader;

static void *reader_main(void *arg) {
    reader *r = arg;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        while (!r->stop && r->produced - r->consumed == AHEAD) pthread_cond_wait(&r->cv, &r->mu);
        bool stop = r->stop;
        size_t i = r->produced;
        pthread_mutex_unlock(&r->mu);
        if (stop || i >= r->in->n) return NULL;
        job j;
        read_input(r->in->v[i].path, r->max_bytes, &j);
        /* decode and resize here too, overlapped with the model's work on the previous image */
        if (j.st == IDEFICS_OK && r->model && !done_before(r->skip, &r->in->v[i], &j))
            j.prep_st = idefics_image_prepare(r->model, j.data, j.size, r->sp, &j.img, j.err, sizeof j.err);
        pthread_mutex_lock(&r->mu);
        r->ring[i % AHEAD] = j;
        r->produced++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
    }
}

/* The job of input i (in order); the caller frees j->data. */
static void reader_take(reader *r, job *j) {
    pthread_mutex_lock(&r->mu);
    while (r->produced == r->consumed) pthread_cond_wait(&r->cv, &r->mu);
    *j = r->ring[r->consumed % AHEAD];
    r->consumed++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void reader_stop(reader *r) {
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    for (size_t i = r->consumed; i < r->produced; i++) job_free(&r->ring[i % AHEAD]);
}

/* ---- progress (stderr, terminal only) */

typedef struct progress {
    bool on;
    size_t total, done, failed, captioned;
    double t0;
} progress;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void progress_clear(const progress *p) {
    if (p->on) fputs("\r\033[K", stderr);
}

static void progress_draw(const progress *p) {
    if (!p->on) return;
    double min = (now_ms() - p->t0) / 60000.0;
    double rate = min > 0 && p->captioned ? p->captioned / min : 0;
    fprintf(stderr, "\r\033[K%zu/%zu", p->done, p->total);
    if (rate > 0) {
        double eta = (double)(p->total - p->done) / rate;
        fprintf(stderr, "  %.1f images/min  ETA %dh%02dm", rate, (int)(eta / 60), (int)eta % 60);
    }
    if (p->failed) fprintf(stderr, "  %zu failed", p->failed);
    fflush(stderr);
}

/* ---- captioning one image */


static void trim(cap_buf *t) {
    if (!t->s) return;
    size_t a = 0, b = t->len;
    while (a < b && (t->s[a] == ' ' || t->s[a] == '\n' || t->s[a] == '\t' || t->s[a] == '\r')) a++;
    while (b > a && (t->s[b - 1] == ' ' || t->s[b - 1] == '\n' || t->s[b - 1] == '\t' || t->s[b - 1] == '\r')) b--;
    memmove(t->s, t->s + a, b - a);
    t->len = b - a;
    t->s[t->len] = '\0';
}

static void utc_now(char *buf, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* One session of the run: the image it captions and what came back. */
typedef struct slot {
    idefics_session *s;
    bool busy, finished;
    idefics_status st; /* of the generation */
    size_t input;
    char hash[48];
    cap_buf text;
    double t0;
    int w, h;
} slot;

typedef struct run_ctx {
    const caption_opts *o;
    cap_out *out; /* NULL: stdout */
    progress *bar;
    const char *prompt, *model_id, *model_name;
    size_t n_ok, n_failed;
    bool write_failed;
    int write_errno;
} run_ctx;

static bool slot_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    slot *sl = ud;
    cb_str(&sl->text, piece);
    return !sl->text.oom;
}

static void slot_done(void *ud, idefics_session *s, idefics_status st) {
    (void)s;
    slot *sl = ud;
    sl->st = st;
    sl->finished = true;
}

/* A fresh conversation with the image and the caption question. */
static idefics_status slot_start(slot *sl, const job *j, const char *prompt) {
    sl->text.len = 0;
    sl->text.oom = false;
    if (sl->text.s) sl->text.s[0] = '\0';
    sl->w = sl->h = 0;
    sl->st = IDEFICS_OK;
    sl->finished = false;
    idefics_session_reset(sl->s);
    idefics_status st = j->img ? idefics_add_image_prepared(sl->s, j->img) : idefics_add_image_memory(sl->s, j->data, j->size);
    if (st == IDEFICS_OK) idefics_session_last_image_size(sl->s, &sl->w, &sl->h);
    if (st == IDEFICS_OK) st = idefics_add_user_turn(sl->s, prompt);
    return st;
}

static int write_stdout(const char *p, size_t n);

/* One record: the sidecar first (its failure makes the record an error), the
 * message on stderr, then OUT or stdout. */
static void emit(run_ctx *R, const cap_input *ip, const char *hash, const char *status, const char *errmsg,
                 const char *caption, int w, int h, double ms, const char *finish) {
    char errtext[768];
    bool ok = !strcmp(status, "ok");
    if (ok && R->o->sidecar &&
        cap_xmp_write(ip->path, R->o->sidecar_name, caption ? caption : "", R->model_name, errtext, sizeof errtext) != 0) {
        status = "sidecar_error";
        errmsg = errtext;
        ok = false;
    }
    char when[32];
    utc_now(when, sizeof when);
    cap_record r = {.path = ip->path, .path_len = ip->len, .status = status, .error = errmsg,
                    .caption = caption ? caption : "", .width = w, .height = h, .hash = hash,
                    .model = R->model_name, .model_id = R->model_id, .prompt = R->prompt, .ms = ms, .time = when,
                    .finish = finish};
    progress_clear(R->bar);
    if (!ok || R->o->verbose) {
        cap_buf m = {0};
        cb_path_escaped(&m, ip->path, ip->len, false); /* the library's message never repeats the path */
        if (ok) fprintf(stderr, "idefics caption: %s: %.1f ms\n", m.s ? m.s : "", ms);
        else fprintf(stderr, "idefics caption: %s: %s (%s)\n", m.s ? m.s : "", errmsg ? errmsg : "", status);
        cb_free(&m);
    }
    int wr;
    if (R->out) wr = cap_out_write(R->out, &r);
    else {
        cap_buf b = {0};
        cap_format_record(&b, R->o->format, &r);
        wr = b.oom ? -1 : write_stdout(b.s, b.len);
        if (b.oom) errno = ENOMEM;
        cb_free(&b);
    }
    if (wr != 0) {
        R->write_failed = true;
        R->write_errno = errno;
        return;
    }
    if (ok) R->n_ok++;
    else R->n_failed++;
    R->bar->done++;
    R->bar->captioned += ok;
    R->bar->failed = R->n_failed;
    progress_draw(R->bar);
}

/* A slot's generation ended: its record, unless a second signal cancelled it. */
static void slot_finish(run_ctx *R, slot *sl, const cap_inputs *in) {
    sl->busy = false;
    sl->finished = false;
    idefics_status st = sl->st;
    if (st == IDEFICS_OK && sl->text.oom) st = IDEFICS_ERR_OUT_OF_MEMORY;
    if (st == IDEFICS_ERR_CANCELLED && g_signal) return; /* interrupted: no record, redone on resume */
    if (st == IDEFICS_OK) trim(&sl->text);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", idefics_session_last_error(sl->s));
    idefics_finish_reason fr = idefics_session_finish_reason(sl->s);
    emit(R, &in->v[sl->input], sl->hash, st == IDEFICS_OK ? "ok" : idefics_status_str(st), msg,
         sl->text.s ? sl->text.s : "", sl->w, sl->h, now_ms() - sl->t0,
         fr != IDEFICS_FINISH_NONE ? idefics_finish_reason_str(fr) : NULL);
}

/* -p, else the model's chat.caption_prompt, else the default. */
static char *caption_prompt(const caption_opts *o, const idefics_model *model) {
    if (o->prompt) return strdup(o->prompt);
    size_t len = 0;
    if (idefics_model_meta(model, "chat.caption_prompt", NULL, 0, &len) == IDEFICS_OK && len > 0) {
        char *p = malloc(len + 1);
        if (p && idefics_model_meta(model, "chat.caption_prompt", p, len + 1, NULL) == IDEFICS_OK) return p;
        free(p);
    }
    return strdup(CAPTION_DEFAULT_PROMPT);
}


static int write_stdout(const char *p, size_t n) {
    while (n) {
        ssize_t k = write(STDOUT_FILENO, p, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static const char *boards_dir(void) {
    const char *e = getenv("IDEFICS_BOARDS_DIR");
    if (e && *e) return e;
    if (access(IDF_BOARDS_INSTALL_DIR "/memory-profiles.ini", R_OK) == 0) return IDF_BOARDS_INSTALL_DIR;
    return IDF_BOARDS_SOURCE_DIR;
}

int cmd_caption(int argc, char **argv) {
    caption_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) {
        free(o.inputs);
        return rc == 1 ? 0 : rc;
    }
    cap_inputs in;
    bool found = cap_find(o.inputs, o.n_inputs, &o.find, &in);
    free(o.inputs);
    if (!found) {
        cap_inputs_free(&in);
        return 1;
    }
    if (in.n_non_images || in.n_hidden || in.n_loops || in.n_unreadable) {
        fprintf(stderr, "idefics caption: %zu input(s);", in.n);
        if (in.n_non_images) fprintf(stderr, " %zu file(s) without an image name not read (-v lists them);", in.n_non_images);
        if (in.n_hidden) fprintf(stderr, " %zu hidden entr%s skipped (--hidden);", in.n_hidden, in.n_hidden == 1 ? "y" : "ies");
        if (in.n_loops) fprintf(stderr, " %zu folder(s) already visited (symlink loop);", in.n_loops);
        if (in.n_unreadable) fprintf(stderr, " %zu unreadable folder(s);", in.n_unreadable);
        fputc('\n', stderr);
    }
    if (in.n == 0 && !o.html) {
        fprintf(stderr, "idefics caption: nothing to caption\n");
        cap_inputs_free(&in);
        return 1;
    }

    /* the model and the session, board defaults first, explicit flags win */
    idefics_model_params mp = idefics_model_default_params();
    idefics_session_params sp = idefics_session_default_params();
    char err[512];
    const char *board = o.board ? o.board : getenv("IDEFICS_BOARD");
    if (board && *board) {
        idefics_status bs = idefics_board_apply(boards_dir(), board, &mp, &sp, err, sizeof err);
        if (bs != IDEFICS_OK) {
            fprintf(stderr, "idefics caption: --board %s: %s (%s)\n", board, err, idefics_status_str(bs));
            cap_inputs_free(&in);
            return 2;
        }
    } else board = NULL;
    mp.log = log_stderr;
    mp.progress = load_progress;
    mp.log_level = o.verbose ? IDEFICS_LOG_INFO : IDEFICS_LOG_WARN;
    mp.device = o.device;
    if (o.set_threads || !board) mp.n_threads = sp.n_threads = o.n_threads;
    if (o.set_backend || !board) mp.backend = o.backend;
    if (o.set_ctx || !board) sp.n_ctx = o.n_ctx;
    /* --low-memory pages through the mapping: it wins over a board's use_mmap = 0 */
    if (o.low_memory) mp.low_memory = mp.use_mmap = true;
    if (o.no_mmap) mp.use_mmap = false;
    if (o.max_image_pixels > 0) sp.max_image_pixels = o.max_image_pixels;
    sp.exif_orientation = !o.no_exif;

    /* signals: finish the record, sync, summarise; during the model load, stop it */
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    g_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);

    /* OUT first: a bad OUT is reported before minutes of model loading */
    cap_out out = {.fd = -1};
    bool use_out = o.out != NULL;
    if (use_out && cap_out_open(&out, o.out, o.format, o.force, err, sizeof err) != 0) {
        fprintf(stderr, "idefics caption: %s\n", err);
        cap_out_close(&out, err, sizeof err);
        cap_inputs_free(&in);
        return 1;
    }
    if (use_out && out.repaired_bytes)
        fprintf(stderr, "idefics caption: %s: removed a cut last record (%zu bytes) left by an interrupted run\n",
                o.out, out.repaired_bytes);

    idefics_model *model = NULL;
    idefics_status st = in.n ? idefics_model_load(o.model, &mp, &model, err, sizeof err) : IDEFICS_OK;
    if (st != IDEFICS_OK) {
        if (g_signal) fprintf(stderr, "idefics caption: interrupted while loading the model\n");
        else fprintf(stderr, "idefics caption: cannot load %s: %s (%s)\n", o.model, err, idefics_status_str(st));
        cap_out_close(&out, err, sizeof err);
        cap_inputs_free(&in);
        return g_signal ? 128 + (int)g_signal : 1;
    }
    idefics_model_info info = {0};
    char model_id[64] = "";
    if (model) {
        /* a model file truncated or overwritten while mapped: a message and exit 74 (cli_faults.h),
         * not a bare SIGBUS; the records already written are in the file */
        cli_sigbus_watch(model);
        idefics_model_get_info(model, &info);
        idefics_model_identity(model, model_id, sizeof model_id, NULL);
    }
    /* A caption needs ~64 prompt tokens plus -n: a 512-token context (when no
     * -c or board says otherwise) keeps each session's KV cache small, which
     * is what lets --parallel hold several. */
    if (!o.set_ctx && !board) sp.n_ctx = info.n_ctx_max > 512 && o.n_predict < 400 ? 512 : 0;
    int n_slots = in.n ? o.parallel : 0;
    slot *slots = calloc((size_t)(n_slots ? n_slots : 1), sizeof *slots);
    idefics_batch *batch = NULL;
    if (!slots) st = IDEFICS_ERR_OUT_OF_MEMORY, snprintf(err, sizeof err, "out of memory");
    for (int k = 0; k < n_slots && st == IDEFICS_OK; k++)
        st = idefics_session_create(model, &sp, &slots[k].s, err, sizeof err);
    if (st == IDEFICS_OK && n_slots > 1) {
        idefics_batch_params bp = idefics_batch_default_params();
        bp.max_sessions = n_slots;
        bp.n_threads = mp.n_threads;
        st = idefics_batch_create(model, &bp, &batch, err, sizeof err);
    }
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics caption: cannot create %d session(s)%s: %s (%s)\n", n_slots,
                n_slots > 1 ? " and a batch (try a smaller --parallel)" : "", err, idefics_status_str(st));
        for (int k = 0; slots && k < n_slots; k++) idefics_session_free(slots[k].s);
        free(slots);
        cli_sigbus_watch(NULL);
        idefics_model_free(model);
        cap_out_close(&out, err, sizeof err);
        cap_inputs_free(&in);
        return 1;
    }
    char *prompt = model ? caption_prompt(&o, model) : strdup("");
    idefics_generate_params gen = idefics_generate_default_params();
    gen.max_new_tokens = o.n_predict;
    gen.temperature = o.temperature;
    if (o.set_seed) gen.seed = o.seed;
    else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        gen.seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid();
    }
    if (o.verbose)
        fprintf(stderr, "idefics caption: %zu input(s), prompt \"%s\", model %s (%s), seed %llu\n", in.n,
                prompt ? prompt : "", info.name ? info.name : "", model_id, (unsigned long long)gen.seed);

    skip_ctx skip = {use_out && !o.force ? &out : NULL, o.retry_errors, model_id, prompt ? prompt : ""};
    reader rd = {.skip = &skip, .in = &in, .max_bytes = sp.max_image_bytes > 0 ? sp.max_image_bytes : INT64_MAX, .model = model,
                 .sp = &sp};
    pthread_mutex_init(&rd.mu, NULL);
    pthread_cond_init(&rd.cv, NULL);
    bool threaded = in.n > 0 && pthread_create(&rd.thread, NULL, reader_main, &rd) == 0;

    idefics_session **all = calloc((size_t)(n_slots ? n_slots : 1), sizeof *all);
    for (int k = 0; all && k < n_slots; k++) all[k] = slots[k].s;
    g_n_sessions = all ? n_slots : 0;
    g_sessions = all;
    progress bar = {.on = isatty(STDERR_FILENO) && !o.verbose, .total = in.n, .t0 = now_ms()};
    run_ctx rc_ = {.o = &o, .out = use_out ? &out : NULL, .bar = &bar, .prompt = prompt, .model_id = model_id,
                   .model_name = info.name};
    run_ctx *R = &rc_;
    size_t n_done_before = 0, n_failed_before = 0;
    size_t next = 0;
    for (;;) {
        /* fill the free slots with the next inputs */
        while (!g_signal && !R->write_failed && next < in.n && prompt) {
            slot *sl = NULL;
            for (int k = 0; k < n_slots && !sl; k++)
                if (!slots[k].busy) sl = &slots[k];
            if (!sl) break;
            const cap_input *ip = &in.v[next];
            job j;
            if (threaded) reader_take(&rd, &j);
            else read_input(ip->path, rd.max_bytes, &j);
            const cap_prev *prev = done_before(&skip, ip, &j);
            if (prev) {
                if (prev->ok) n_done_before++;
                else n_failed_before++;
                job_free(&j);
                bar.done++;
                next++;
                continue;
            }
            progress_draw(&bar);
            sl->input = next++;
            sl->t0 = now_ms();
            snprintf(sl->hash, sizeof sl->hash, "%s", j.hash);
            if (j.st != IDEFICS_OK || j.prep_st != IDEFICS_OK) {
                emit(R, ip, j.hash, idefics_status_str(j.st != IDEFICS_OK ? j.st : j.prep_st), j.err, NULL, 0, 0, 0,
                     NULL);
                job_free(&j);
                continue;
            }
            idefics_status gst = slot_start(sl, &j, prompt);
            job_free(&j);
            if (gst == IDEFICS_OK) {
                if (batch) gst = idefics_batch_add(batch, sl->s, &gen, slot_token, slot_done, sl);
                else {
                    sl->st = idefics_generate(sl->s, &gen, slot_token, sl);
                    sl->finished = true;
                }
            }
            if (gst != IDEFICS_OK) { /* refused before generating: the session's message */
                sl->st = gst;
                sl->finished = true;
            }
            sl->busy = true;
            if (sl->finished) slot_finish(R, sl, &in);
        }
        int busy = 0;
        for (int k = 0; k < n_slots; k++) busy += slots[k].busy;
        if (!busy) break;
        if (batch) {
            idefics_batch_step(batch);
            for (int k = 0; k < n_slots; k++)
                if (slots[k].busy && slots[k].finished) slot_finish(R, &slots[k], &in);
        }
        if (R->write_failed && batch) { /* stop: the records that cannot be written are not waited for */
            for (int k = 0; k < n_slots; k++)
                if (slots[k].busy) {
                    idefics_batch_remove(batch, slots[k].s);
                    slots[k].busy = false;
                }
        }
    }
    size_t n_ok = R->n_ok, n_failed = R->n_failed;
    bool write_failed = R->write_failed;
    int write_errno = R->write_errno;
    g_sessions = NULL;
    g_n_sessions = 0;
    free(all);
    if (threaded) reader_stop(&rd);
    pthread_mutex_destroy(&rd.mu);
    pthread_cond_destroy(&rd.cv);
    progress_clear(&bar);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);

    int exit_code = 0;
    char cerr[600] = "";
    if (write_failed) {
        /* what is on disk: the records already synced, or all of them if a sync now succeeds */
        size_t safe = out.n_synced;
        if (use_out && cap_out_sync(&out) == 0) safe = out.n_records;
        fprintf(stderr, "idefics caption: cannot write %s: %s; %zu record(s) are safely in it\n",
                use_out ? o.out : "stdout", strerror(write_errno), use_out ? safe : n_ok + n_failed);
        exit_code = 1;
    }
    if (use_out && cap_out_close(&out, cerr, sizeof cerr) != 0) {
        fprintf(stderr, "idefics caption: %s; %zu record(s) were synced before\n", cerr, out.n_synced);
        exit_code = 1;
    }
    fprintf(stderr, "idefics caption: %zu captioned, %zu failed", n_ok, n_failed);
    if (n_done_before || n_failed_before)
        fprintf(stderr, ", %zu already done%s", n_done_before + n_failed_before,
                n_failed_before ? " (some as errors: --retry-errors retries them)" : "");
    if (in.n_non_images) fprintf(stderr, ", %zu non-image file(s) not read", in.n_non_images);
    if (g_signal)
        fprintf(stderr, "; %s after %zu of %zu input(s)", g_signal == SIGTERM ? "terminated" : "interrupted",
                (size_t)bar.done, in.n);
    if (use_out) fprintf(stderr, "; %s holds %zu record(s)", o.out, out.n_records);
    fputc('\n', stderr);

    if (!write_failed && o.html && exit_code == 0 && !g_signal) {
        if (cap_html_write(o.html, o.out, o.format, 1 << 20, cerr, sizeof cerr) != 0) {
            fprintf(stderr, "idefics caption: --html %s: %s\n", o.html, cerr);
            exit_code = 1;
        } else if (o.verbose) fprintf(stderr, "idefics caption: review page %s\n", o.html);
    }
    bool have_prompt = prompt != NULL;
    free(prompt);
    idefics_batch_free(batch);
    for (int k = 0; k < n_slots; k++) {
        idefics_session_free(slots[k].s);
        cb_free(&slots[k].text);
    }
    free(slots);
    cli_sigbus_watch(NULL);
    idefics_model_free(model);
    cap_inputs_free(&in);
    if (g_signal) return 128 + (int)g_signal;
    if (exit_code) return exit_code;
    if (!have_prompt) return 1;
    return n_failed || n_failed_before ? 1 : 0; /* earlier error records still stand */
}
