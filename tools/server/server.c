/*
 * server.c - `idefics serve`: an OpenAI-compatible local HTTP server (docs/SERVER.md).
 *
 * HTTP is libmicrohttpd's, in thread-per-connection mode: each connection's
 * handler may block (waiting in the queue, generating). JSON is cJSON's. The
 * model is used only through include/idefics.h.
 *
 * Slots: --parallel N sessions of one shared model. A request takes a free
 * slot (or waits in a queue of --queue places; a full queue gets 429) and
 * generates on its connection's thread; a streaming request generates on a
 * thread of its own while libmicrohttpd sends the chunks. Generation is
 * batched (batcher.c: one idefics_batch steps every busy slot in one pass over
 * the weights); with --no-batch each slot generates on its own thread.
 *
 * Reuse: each slot remembers which messages its session holds, as a chain of
 * keyed hashes (request.c). A request whose messages extend a slot's goes to
 * that slot and only its new messages are added; the library keeps the KV
 * cache and the encoded images of the common prefix. Conversations with images
 * are also kept as snapshots (idefics_session_snapshot) in a bounded LRU keyed
 * the same way, so a follow-up that finds its slot taken by someone else is
 * restored instead of re-encoding its images.
 */
#include "server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "batcher.h"
#include "cli_faults.h" /* tools/cli: the SIGBUS watch shared by every command */
#include "embedded.h"
#include "idefics.h"
#include "options.h"
#include "request.h"

#define MAX_CACHE 256


/* ------------------------------------------------------------------- state */

typedef struct snap_ref {
    void *snap; /* idefics_snapshot * (API14) */
    size_t bytes;
    int refs;
} snap_ref;

typedef struct cache_entry {
    uint64_t key; /* chain hash of the first n messages */
    int n;
    snap_ref *ref;
    uint64_t used;
} cache_entry;

typedef struct slot {
    int id;
    idefics_session *s;
    bool busy;
    int n_rec;         /* messages the session holds (0: empty, -1: unknown, reset first) */
    uint64_t rec;      /* chain hash of those messages */
    bool has_image;
    uint64_t used;
} slot;

typedef struct metrics {
    uint64_t http[600];
    uint64_t completions, prompt_tokens, prompt_evaluated, completion_tokens, images_added, images_encoded_ms_x1000,
        reuse_slot, reuse_snapshot, cancelled, disconnects;
    double decode_s, prefill_s;
} metrics;

typedef struct server {
    srv_opts o;
    char allow_dir[PATH_MAX];
    idefics_model *model;
    char model_id[128];
    atomic_int state; /* 0 loading, 1 ready, 2 failed */
    bool snapshots;   /* the library can snapshot a session (probed at load) */
    srv_batcher *batcher; /* batched generation; NULL with --no-batch */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    slot slots[MAX_SLOTS];
    int n_slots, waiting;
    cache_entry cache[MAX_CACHE];
    int n_cache;
    size_t cache_bytes;
    uint64_t tick;
    metrics m;
    uint8_t hkey[16];
    atomic_ulong next_id;
    srv_limits lim;
    time_t started;
} server;

static void srv_log(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("idefics serve: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void lib_log(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "idefics: %s: %s\n", names[level >= 0 && level <= 3 ? level : 0], msg);
}

/* ---------------------------------------------------------------- responses */

typedef struct conn_ctx {
    char *body;
    size_t len, cap;
    bool too_big;
    int fd;
} conn_ctx;

static void add_common_headers(server *sv, struct MHD_Response *r) {
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (sv->o.cors) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", sv->o.cors);
        MHD_add_response_header(r, "Vary", "Origin");
    }
}

static enum MHD_Result send_buf(server *sv, struct MHD_Connection *c, unsigned status, const char *ctype,
                                const void *data, size_t len, bool copy) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)data,
                                                             copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    add_common_headers(sv, r);
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    pthread_mutex_lock(&sv->mu);
    sv->m.http[status < 600 ? status : 599]++;
    pthread_mutex_unlock(&sv->mu);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static const char *err_type(unsigned status) {
    switch (status) {
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_exceeded";
    case 503: return "server_unavailable";
    case 500: return "server_error";
    default: return "invalid_request_error";
    }
}

/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}. */
static cJSON *error_json(unsigned status, const char *msg, const char *param, const char *code) {
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", err_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    return root;
}

static enum MHD_Result send_json(server *sv, struct MHD_Connection *c, unsigned status, cJSON *j) {
    char *s = j ? cJSON_PrintUnformatted(j) : NULL;
    cJSON_Delete(j);
    if (!s) return send_buf(sv, c, 500, "application/json", "{\"error\":{\"message\":\"out of memory\"}}", 37, false);
    enum MHD_Result r = send_buf(sv, c, status, "application/json", s, strlen(s), true);
    free(s);
    return r;
}

static enum MHD_Result send_error(server *sv, struct MHD_Connection *c, unsigned status, const char *param,
                                  const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (sv->o.verbose || status >= 500) srv_log("%u: %s", status, msg);
    return send_json(sv, c, status, error_json(status, msg, param, code));
}

/* ---------------------------------------------------------------- helpers */

/* Constant-time comparison: the time does not depend on where a and b differ. */
static bool key_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++) d |= (unsigned char)((i < la ? (unsigned char)a[i] : 0) ^ (unsigned char)b[i]);
    return d == 0;
}

/* true when the peer has closed its end (a read would return 0). */
static bool peer_gone(int fd) {
    if (fd < 0) return false;
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static uint64_t random_u64(void) {
    uint64_t v = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &v, sizeof v) != (ssize_t)sizeof v) v = 0;
        close(fd);
    }
    if (!v) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 32;
    }
    return v;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static unsigned status_http(idefics_status st) {
    switch (st) {
    case IDEFICS_ERR_IMAGE_TOO_LARGE: return 413;
    case IDEFICS_ERR_INVALID_ARG:
    case IDEFICS_ERR_IMAGE_DECODE:
    case IDEFICS_ERR_EMPTY_PROMPT:
    case IDEFICS_ERR_UNSUPPORTED:
    case IDEFICS_ERR_CONTEXT_FULL: return 400;
    case IDEFICS_ERR_OUT_OF_MEMORY: return 503;
    default: return 500;
    }
}

/* ------------------------------------------------------- snapshot cache (LRU) */

static void snap_unref(snap_ref *r) {
    if (!r || --r->refs > 0) return;
    idefics_snapshot_free(r->snap);
    free(r);
}

static void cache_drop(server *sv, int i) {
    sv->cache_bytes -= sv->cache[i].ref->bytes;
    snap_unref(sv->cache[i].ref);
    sv->cache[i] = sv->cache[--sv->n_cache];
}

/* Under sv->mu. Takes over one reference of ref. */
static void cache_put(server *sv, uint64_t key, int n, snap_ref *ref) {
    size_t cap = (size_t)sv->o.cache_mb << 20;
    for (int i = 0; i < sv->n_cache; i++)
        if (sv->cache[i].key == key && sv->cache[i].n == n) cache_drop(sv, i--);
    if (ref->bytes > cap) {
        snap_unref(ref);
        return;
    }
    while (sv->n_cache > 0 && (sv->n_cache == MAX_CACHE || sv->cache_bytes + ref->bytes > cap)) {
        int lru = 0;
        for (int i = 1; i < sv->n_cache; i++)
            if (sv->cache[i].used < sv->cache[lru].used) lru = i;
        cache_drop(sv, lru);
    }
    sv->cache[sv->n_cache++] = (cache_entry){key, n, ref, ++sv->tick};
    sv->cache_bytes += ref->bytes;
}

/* --------------------------------------------------------- slots and queue */

/* chain[i]: keyed hash of messages 0..i, each message's hash chained on the last */
static void chain_hashes(server *sv, const srv_request *r, uint64_t *chain) {
    uint64_t h = 0x636861696e;
    for (int i = 0; i < r->n_msgs; i++) {
        h = srv_siphash(sv->hkey, &r->msgs[i].hash, sizeof r->msgs[i].hash, h);
        chain[i] = h;
    }
}

typedef struct plan {
    slot *sl;
    int keep;          /* messages already in the session (after restore) */
    snap_ref *restore; /* restore this first (a reference is held), or NULL */
} plan;

/* Under sv->mu: the free slot to use and how much of the conversation it can keep. */
static bool pick_slot(server *sv, const uint64_t *chain, int n, plan *p) {
    slot *best = NULL, *lru = NULL;
    int best_k = 0;
    for (int i = 0; i < sv->n_slots; i++) {
        slot *s = &sv->slots[i];
        if (s->busy) continue;
        if (!lru || s->used < lru->used) lru = s;
        if (s->n_rec > 0 && s->n_rec < n && chain[s->n_rec - 1] == s->rec && s->n_rec > best_k) {
            best = s;
            best_k = s->n_rec;
        }
    }
    if (!lru) return false;
    int ci = -1, cache_k = 0;
    for (int i = 0; i < sv->n_cache; i++) {
        cache_entry *e = &sv->cache[i];
        if (e->n < n && e->n > cache_k && chain[e->n - 1] == e->key) {
            ci = i;
            cache_k = e->n;
        }
    }
    *p = (plan){0};
    if (best && best_k >= cache_k) {
        p->sl = best;
        p->keep = best_k;
    } else {
        p->sl = lru;
        if (ci >= 0) {
            sv->cache[ci].used = ++sv->tick;
            p->restore = sv->cache[ci].ref;
            p->restore->refs++;
            p->keep = cache_k;
        }
    }
    p->sl->busy = true;
    return true;
}

static void release_slot(server *sv, slot *sl) {
    pthread_mutex_lock(&sv->mu);
    sl->busy = false;
    sl->used = ++sv->tick;
    pthread_cond_broadcast(&sv->cv);
    pthread_mutex_unlock(&sv->mu);
}

/* ----------------------------------------------------- building the prompt */


typedef struct build_err {
    unsigned status;
    char msg[400];
    const char *code;
} build_err;

static bool lib_fail(build_err *e, idefics_session *s, idefics_status st, int mi) {
    e->status = status_http(st);
    e->code = st == IDEFICS_ERR_CONTEXT_FULL ? "context_length_exceeded" : NULL;
    snprintf(e->msg, sizeof e->msg, "messages[%d]: %s (%s)", mi, idefics_session_last_error(s), idefics_status_str(st));
    return false;
}

static bool add_text_plain(idefics_session *s, const char *t, size_t n, build_err *e, int mi) {
    idefics_status st = idefics_add_text_n(s, t, n, 0);
    return st == IDEFICS_OK || lib_fail(e, s, st, mi);
}

static bool add_user(server *sv, idefics_session *s, const srv_message *m, int mi, int *n_img, build_err *e) {
    /* the template's own order (texts, then images) uses add_user_turn, the
     * call `idefics ask` makes; other orders are interleaved turns */
    bool simple = true, seen_img = false;
    size_t tl = 0;
    for (int k = 0; k < m->n_parts; k++) {
        if (m->parts[k].kind == SRV_PART_IMAGE) seen_img = true;
        else {
            if (seen_img) simple = false;
            tl += m->parts[k].len + 1;
        }
    }
    idefics_status st;
    if (simple && tl > 0) {
        char *q = malloc(tl + 1);
        if (!q) return lib_fail(e, s, IDEFICS_ERR_OUT_OF_MEMORY, mi);
        size_t o = 0;
        for (int k = 0; k < m->n_parts; k++) {
            if (m->parts[k].kind != SRV_PART_TEXT) continue;
            if (o) q[o++] = '\n';
            memcpy(q + o, m->parts[k].text, m->parts[k].len);
            o += m->parts[k].len;
        }
        q[o] = '\0';
        for (int k = 0; k < m->n_parts; k++) {
            if (m->parts[k].kind != SRV_PART_IMAGE) continue;
            st = idefics_add_image_memory(s, m->parts[k].data, m->parts[k].size);
            if (st != IDEFICS_OK) {
                free(q);
                return lib_fail(e, s, st, mi);
            }
            (*n_img)++;
        }
        st = idefics_add_user_turn_n(s, q, o);
        free(q);
        return st == IDEFICS_OK || lib_fail(e, s, st, mi);
    }
    if ((st = idefics_begin_user_turn(s)) != IDEFICS_OK) return lib_fail(e, s, st, mi);
    for (int k = 0; k < m->n_parts; k++) {
        const srv_part *p = &m->parts[k];
        if (p->kind == SRV_PART_TEXT) {
            if (!add_text_plain(s, p->text, p->len, e, mi)) return false;
        } else {
            if ((st = idefics_add_image_memory(s, p->data, p->size)) != IDEFICS_OK) return lib_fail(e, s, st, mi);
            (*n_img)++;
        }
    }
    st = idefics_end_user_turn(s);
    return st == IDEFICS_OK || lib_fail(e, s, st, mi);
}

/* An earlier answer the client sends back: its text, then the end of the turn. */
static bool add_assistant(server *sv, idefics_session *s, const srv_message *m, int mi, build_err *e) {
    for (int k = 0; k < m->n_parts; k++)
        if (!add_text_plain(s, m->parts[k].text, m->parts[k].len, e, mi)) return false;
    idefics_model_info info;
    idefics_model_get_info(sv->model, &info);
    idefics_status st = info.is_instruct ? idefics_add_text_n(s, "<end_of_utterance>", 18, IDEFICS_TEXT_SPECIAL)
                                         : IDEFICS_OK;
    return st == IDEFICS_OK || lib_fail(e, s, st, mi);
}

/* Add messages [from, n) to the session. */
static bool build_prompt(server *sv, idefics_session *s, const srv_request *r, int from, int *n_img, build_err *e) {
    bool seen_turn = from > 0;
    for (int i = from; i < r->n_msgs; i++) {
        const srv_message *m = &r->msgs[i];
        if (m->role == SRV_ROLE_SYSTEM) {
            if (seen_turn) {
                e->status = 400;
                e->code = NULL;
                snprintf(e->msg, sizeof e->msg, "messages[%d]: system messages must come before the first user turn",
                         i);
                return false;
            }
            for (int k = 0; k < m->n_parts; k++)
                if (!add_text_plain(s, m->parts[k].text, m->parts[k].len, e, i)) return false;
        } else if (m->role == SRV_ROLE_USER) {
            seen_turn = true;
            if (!add_user(sv, s, m, i, n_img, e)) return false;
        } else {
            seen_turn = true;
            if (!add_assistant(sv, s, m, i, e)) return false;
        }
    }
    return true;
}

/* ----------------------------------------------------------- generation */

typedef struct gen_ctx {
    server *sv;
    slot *sl;
    srv_request req;
    uint64_t *chain;
    int fd;
    char id[40];
    time_t created;
    idefics_generate_params gp;
    int prompt_tokens, n_img;
    /* the answer: out[0..len) generated, sent[0..sent) delivered */
    char *out;
    size_t len, cap, sent;
    bool stopped_by_string;
    int32_t last_tok;
    int n_tok;
    atomic_int abort;
    atomic_int gone; /* the client disconnect was counted */
    /* streaming: chunks for libmicrohttpd's reader */
    bool stream;
    pthread_t th;
    bool th_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *sbuf;
    size_t slen, scap, soff;
    bool sdone, gen_done, batch_done;
    /* result */
    idefics_status st;
    const char *finish;
    idefics_timings tm;
} gen_ctx;

static bool buf_append(char **b, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 1024) + n;
        char *t = realloc(*b, nc);
        if (!t) return false;
        *b = t;
        *cap = nc;
    }
    memcpy(*b + *len, s, n);
    *len += n;
    (*b)[*len] = '\0';
    return true;
}

static void stream_push(gen_ctx *g, const char *s, size_t n) {
    pthread_mutex_lock(&g->mu);
    buf_append(&g->sbuf, &g->slen, &g->scap, s, n);
    pthread_cond_broadcast(&g->cv); /* the reader, and (batched) the generating thread, wait here */
    pthread_mutex_unlock(&g->mu);
}

static void stream_event(gen_ctx *g, cJSON *j) {
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s) return;
    stream_push(g, "data: ", 6);
    stream_push(g, s, strlen(s));
    stream_push(g, "\n\n", 2);
    free(s);
}

static cJSON *chunk_json(gen_ctx *g, const char *content, size_t n, const char *finish, bool role) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", g->id);
    cJSON_AddStringToObject(j, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(j, "created", (double)g->created);
    cJSON_AddStringToObject(j, "model", g->sv->model_id);
    cJSON *ch = cJSON_AddArrayToObject(j, "choices"), *c0 = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c0);
    cJSON_AddNumberToObject(c0, "index", 0);
    cJSON *d = cJSON_AddObjectToObject(c0, "delta");
    if (role) cJSON_AddStringToObject(d, "role", "assistant");
    if (content) {
        char *t = strndup(content, n);
        cJSON_AddStringToObject(d, "content", t ? t : "");
        free(t);
    }
    if (finish) cJSON_AddStringToObject(c0, "finish_reason", finish);
    else cJSON_AddNullToObject(c0, "finish_reason");
    return j;
}

/* Deliver out[sent..upto) as a chunk. */
static void emit(gen_ctx *g, size_t upto) {
    if (upto <= g->sent) return;
    if (g->stream) stream_event(g, chunk_json(g, g->out + g->sent, upto - g->sent, NULL, false));
    g->sent = upto;
}

static void note_disconnect(gen_ctx *g) {
    if (atomic_exchange(&g->gone, 1)) return;
    pthread_mutex_lock(&g->sv->mu);
    g->sv->m.disconnects++;
    pthread_mutex_unlock(&g->sv->mu);
}

static bool on_token(void *ud, int32_t tok, const char *piece) {
    gen_ctx *g = ud;
    g->last_tok = tok;
    g->n_tok++;
    size_t pl = strlen(piece);
    if (pl && !buf_append(&g->out, &g->len, &g->cap, piece, pl)) return false;
    /* a stop string ends the answer before it; text that may begin one is held back */
    size_t hold = 0;
    for (int i = 0; i < g->req.n_stop; i++) {
        size_t sl = strlen(g->req.stop[i]);
        size_t from = g->sent > sl ? g->sent - sl : 0;
        char *hit = g->out ? strstr(g->out + from, g->req.stop[i]) : NULL;
        if (hit) {
            g->len = (size_t)(hit - g->out);
            g->out[g->len] = '\0';
            g->stopped_by_string = true;
        }
        if (sl - 1 > hold) hold = sl - 1;
    }
    if (g->stopped_by_string) {
        emit(g, g->len);
        return false;
    }
    size_t upto = g->len > hold ? g->len - hold : 0;
    while (upto > g->sent && upto < g->len && ((unsigned char)g->out[upto] & 0xc0) == 0x80) upto--;
    emit(g, upto);
    if (g->sv->o.slow_ms > 0) usleep((useconds_t)g->sv->o.slow_ms * 1000);
    if (!atomic_load(&g->abort) && peer_gone(g->fd)) {
        note_disconnect(g);
        atomic_store(&g->abort, 1);
    }
    if (atomic_load(&g->abort)) return false;
    return true;
}

static const char *finish_reason(gen_ctx *g) {
    if (g->stopped_by_string) return "stop";
    switch (idefics_session_finish_reason(g->sl->s)) {
    case IDEFICS_FINISH_STOP: return "stop";
    case IDEFICS_FINISH_LENGTH:
    case IDEFICS_FINISH_CONTEXT_FULL: return "length";
    default: return NULL;
    }
}

static void on_batch_done(void *ud, idefics_session *s, idefics_status st) {
    (void)s;
    gen_ctx *g = ud;
    pthread_mutex_lock(&g->mu);
    g->st = st;
    g->batch_done = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Generate on the slot (record_generation does the bookkeeping after).
 * Batched: the batcher's thread generates (on_token runs there) while this
 * thread waits; the result is the same as idefics_generate's. */
static void run_generation(gen_ctx *g) {
    server *sv = g->sv;
    idefics_session *s = g->sl->s;
    if (sv->batcher) {
        srv_batcher_submit(sv->batcher, s, &g->gp, on_token, on_batch_done, g);
        pthread_mutex_lock(&g->mu);
        while (!g->batch_done) pthread_cond_wait(&g->cv, &g->mu);
        pthread_mutex_unlock(&g->mu);
    } else {
        g->st = idefics_generate(s, &g->gp, on_token, g);
    }
    idefics_session_get_timings(s, &g->tm);
    bool aborted = atomic_load(&g->abort);
    if (g->st == IDEFICS_OK && !aborted) {
        g->finish = finish_reason(g);
        emit(g, g->len);
    }
}

/* After an answer: the slot's record, the snapshot cache and the metrics. */
static void record_generation(gen_ctx *g) {
    server *sv = g->sv;
    idefics_session *s = g->sl->s;
    bool aborted = atomic_load(&g->abort);
    /* The session now holds the request's messages plus the answer. Record it
     * (as the assistant message a client will send back) only when the answer
     * ended at a stop token: otherwise the session holds text the client does not. */
    bool clean = g->st == IDEFICS_OK && !aborted && !g->stopped_by_string && g->finish && !strcmp(g->finish, "stop");
    uint64_t rec = 0;
    int n_rec = -1;
    if (clean) {
        srv_part part = {SRV_PART_TEXT, g->out ? g->out : "", g->len, NULL, 0};
        srv_message am = {SRV_ROLE_ASSISTANT, &part, g->len ? 1 : 0, 0};
        srv_request one = {.msgs = &am, .n_msgs = 1};
        srv_request_hash_messages(&one, sv->hkey);
        rec = srv_siphash(sv->hkey, &am.hash, sizeof am.hash, g->chain[g->req.n_msgs - 1]);
        n_rec = g->req.n_msgs + 1;
    }
    snap_ref *ref = NULL;
    if (clean && sv->snapshots && (g->sl->has_image || g->n_img > 0) && sv->o.cache_mb > 0) {
        idefics_snapshot *snap = NULL;
        if (idefics_session_snapshot(s, &snap) == IDEFICS_OK) {
            ref = calloc(1, sizeof *ref);
            if (ref) *ref = (snap_ref){snap, idefics_snapshot_bytes(snap), 1};
            else idefics_snapshot_free(snap);
        }
    }
    pthread_mutex_lock(&sv->mu);
    g->sl->n_rec = n_rec;
    g->sl->rec = rec;
    g->sl->has_image = g->sl->has_image || g->n_img > 0;
    if (ref) cache_put(sv, rec, n_rec, ref);
    sv->m.completions++;
    sv->m.prompt_tokens += (uint64_t)g->prompt_tokens;
    sv->m.prompt_evaluated += (uint64_t)g->tm.n_prompt_tokens;
    sv->m.completion_tokens += (uint64_t)g->tm.n_generated;
    sv->m.decode_s += g->tm.decode_ms / 1000.0;
    sv->m.prefill_s += g->tm.prefill_ms / 1000.0;
    sv->m.images_encoded_ms_x1000 += (uint64_t)(g->tm.image_encode_ms * 1000.0);
    if (aborted) sv->m.cancelled++;
    pthread_mutex_unlock(&sv->mu);
}

static cJSON *usage_json(gen_ctx *g) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", g->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", g->tm.n_generated);
    cJSON_AddNumberToObject(u, "total_tokens", g->prompt_tokens + g->tm.n_generated);
    cJSON *d = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(d, "cached_tokens", g->prompt_tokens - g->tm.n_prompt_tokens);
    return u;
}

static void gen_free(gen_ctx *g) {
    srv_request_free(&g->req);
    free(g->chain);
    free(g->out);
    free(g->sbuf);
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
}

static void *stream_thread(void *arg) {
    gen_ctx *g = arg;
    run_generation(g);
    char msg[300] = "";
    if ((g->st != IDEFICS_OK || !g->finish) && !atomic_load(&g->abort))
        snprintf(msg, sizeof msg, "generation failed: %s (%s)", idefics_session_last_error(g->sl->s),
                 idefics_status_str(g->st));
    record_generation(g);
    /* The slot is free before the client sees [DONE]: a client that sends its
     * follow-up at once finds its conversation's slot (or snapshot) ready.
     * From here on the slot may serve someone else: stream_free must not cancel it. */
    pthread_mutex_lock(&g->mu);
    g->gen_done = true;
    pthread_mutex_unlock(&g->mu);
    release_slot(g->sv, g->sl);
    if (g->st == IDEFICS_OK && g->finish) {
        stream_event(g, chunk_json(g, NULL, 0, g->finish, false));
        if (g->req.include_usage) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "id", g->id);
            cJSON_AddStringToObject(j, "object", "chat.completion.chunk");
            cJSON_AddNumberToObject(j, "created", (double)g->created);
            cJSON_AddStringToObject(j, "model", g->sv->model_id);
            cJSON_AddArrayToObject(j, "choices");
            cJSON_AddItemToObject(j, "usage", usage_json(g));
            stream_event(g, j);
        }
    } else if (msg[0]) {
        stream_event(g, error_json(500, msg, NULL, NULL));
    }
    stream_push(g, "data: [DONE]\n\n", 14);
    pthread_mutex_lock(&g->mu);
    g->sdone = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    gen_ctx *g = cls;
    pthread_mutex_lock(&g->mu);
    while (g->soff == g->slen && !g->sdone) pthread_cond_wait(&g->cv, &g->mu);
    ssize_t n;
    if (g->soff == g->slen) {
        n = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        size_t k = g->slen - g->soff < max ? g->slen - g->soff : max;
        memcpy(buf, g->sbuf + g->soff, k);
        g->soff += k;
        n = (ssize_t)k;
    }
    pthread_mutex_unlock(&g->mu);
    return n;
}

/* libmicrohttpd is done with the response: finished, or the client went away. */
static void stream_free(void *cls) {
    gen_ctx *g = cls;
    pthread_mutex_lock(&g->mu);
    bool done = g->gen_done;
    if (!done) {
        atomic_store(&g->abort, 1);
        idefics_session_cancel(g->sl->s);
    }
    pthread_mutex_unlock(&g->mu);
    if (!done) note_disconnect(g);
    if (g->th_started) pthread_join(g->th, NULL);
    gen_free(g);
}

/* ------------------------------------------------------- chat completions */

static enum MHD_Result chat_completions(server *sv, struct MHD_Connection *c, conn_ctx *cc) {
    gen_ctx *g = calloc(1, sizeof *g);
    if (!g) return send_error(sv, c, 500, NULL, NULL, "out of memory");
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->sv = sv;
    g->fd = cc->fd;
    char err[400];
    const char *param = NULL;
    int hs = srv_request_parse(cc->body, cc->len, &sv->lim, &g->req, err, sizeof err, &param);
    if (hs) {
        gen_free(g);
        return send_error(sv, c, (unsigned)hs, param, NULL, "%s", err);
    }
    srv_request *r = &g->req;
    if (r->msgs[r->n_msgs - 1].role != SRV_ROLE_USER) {
        gen_free(g);
        return send_error(sv, c, 400, "messages", NULL, "the last message must be a user message");
    }
    if (r->has_max_tokens && r->max_tokens > sv->o.max_tokens) {
        long asked = r->max_tokens;
        gen_free(g);
        return send_error(sv, c, 400, "max_tokens", NULL, "max_tokens %ld is over this server's limit of %d", asked,
                          sv->o.max_tokens);
    }
    g->gp = idefics_generate_default_params();
    g->gp.max_new_tokens = r->has_max_tokens ? (int)r->max_tokens : sv->o.max_tokens;
    g->gp.temperature = r->has_temperature ? (float)r->temperature : sv->o.temperature;
    g->gp.top_p = r->has_top_p ? (float)r->top_p : 1.0f;
    g->gp.seed = r->has_seed ? r->seed : random_u64();
    g->stream = r->stream;
    srv_request_hash_messages(r, sv->hkey);
    g->chain = malloc((size_t)r->n_msgs * sizeof *g->chain);
    if (!g->chain) {
        gen_free(g);
        return send_error(sv, c, 500, NULL, NULL, "out of memory");
    }
    chain_hashes(sv, r, g->chain);

    /* a slot, or a place in the queue */
    plan p;
    pthread_mutex_lock(&sv->mu);
    bool queued = false;
    while (!pick_slot(sv, g->chain, r->n_msgs, &p)) {
        if (!queued) {
            if (sv->waiting >= sv->o.queue) {
                pthread_mutex_unlock(&sv->mu);
                gen_free(g);
                return send_error(sv, c, 429, NULL, "queue_full", "all %d slots are busy and the queue of %d is full",
                                  sv->n_slots, sv->o.queue);
            }
            sv->waiting++;
            queued = true;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&sv->cv, &sv->mu, &ts);
        if (peer_gone(cc->fd)) { /* gave up waiting */
            sv->waiting--;
            sv->m.disconnects++;
            pthread_mutex_unlock(&sv->mu);
            gen_free(g);
            return MHD_NO;
        }
    }
    if (queued) sv->waiting--;
    if (p.keep > 0 && !p.restore) sv->m.reuse_slot++;
    if (p.restore) sv->m.reuse_snapshot++;
    pthread_mutex_unlock(&sv->mu);
    g->sl = p.sl;
    idefics_session *s = g->sl->s;

    int from = p.keep;
    if (p.restore) {
        idefics_status rs = idefics_session_restore(s, p.restore->snap);
        if (rs != IDEFICS_OK) from = 0;
        else g->sl->has_image = true;
        pthread_mutex_lock(&sv->mu);
        snap_unref(p.restore);
        pthread_mutex_unlock(&sv->mu);
    }
    if (from == 0) {
        idefics_session_reset(s);
        g->sl->has_image = false;
    }
    if (sv->o.verbose) srv_log("slot %d: %d of %d messages reused%s", g->sl->id, from, r->n_msgs,
                               p.restore ? " (snapshot)" : "");
    build_err be = {0};
    if (!build_prompt(sv, s, r, from, &g->n_img, &be)) {
        g->sl->n_rec = -1;
        release_slot(sv, g->sl);
        gen_free(g);
        return send_error(sv, c, be.status, "messages", be.code, "%s", be.msg);
    }
    g->prompt_tokens = idefics_session_get_tokens(s, NULL);
    if (sv->o.verbose) { /* the conversation as the tokenizer sees it, for checking the chat format */
        char text[1024];
        size_t tl = 0;
        if (idefics_session_render_prompt(s, text, sizeof text, &tl) == IDEFICS_OK)
            srv_log("slot %d prompt (%zu bytes): %s", g->sl->id, tl, text);
    }
    pthread_mutex_lock(&sv->mu);
    sv->m.images_added += (uint64_t)g->n_img;
    pthread_mutex_unlock(&sv->mu);
    g->created = time(NULL);
    snprintf(g->id, sizeof g->id, "chatcmpl-%016llx", (unsigned long long)(random_u64() ^ atomic_fetch_add(&sv->next_id, 1)));

    if (g->stream) {
        stream_event(g, chunk_json(g, "", 0, NULL, true));
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, g,
                                                                      stream_free);
        if (!resp || pthread_create(&g->th, NULL, stream_thread, g) != 0) {
            slot *sl = g->sl;
            sl->n_rec = -1;
            if (resp) MHD_destroy_response(resp); /* frees g via stream_free */
            else gen_free(g);
            release_slot(sv, sl);
            return send_error(sv, c, 500, NULL, NULL, "cannot start streaming");
        }
        g->th_started = true;
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        add_common_headers(sv, resp);
        pthread_mutex_lock(&sv->mu);
        sv->m.http[200]++;
        pthread_mutex_unlock(&sv->mu);
        enum MHD_Result ret = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        return ret;
    }

    run_generation(g);
    char fail_msg[300] = ""; /* read before the slot (and its session) goes to someone else */
    if (g->st != IDEFICS_OK || !g->finish)
        snprintf(fail_msg, sizeof fail_msg, "generation failed: %s (%s)", idefics_session_last_error(s),
                 idefics_status_str(g->st));
    record_generation(g);
    release_slot(sv, g->sl);
    if (atomic_load(&g->abort)) {
        gen_free(g);
        return MHD_NO; /* the client is gone: close */
    }
    if (fail_msg[0]) {
        unsigned fail_status = status_http(g->st);
        gen_free(g);
        return send_error(sv, c, fail_status, NULL, NULL, "%s", fail_msg);
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "id", g->id);
    cJSON_AddStringToObject(j, "object", "chat.completion");
    cJSON_AddNumberToObject(j, "created", (double)g->created);
    cJSON_AddStringToObject(j, "model", sv->model_id);
    cJSON *ch = cJSON_AddArrayToObject(j, "choices"), *c0 = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c0);
    cJSON_AddNumberToObject(c0, "index", 0);
    cJSON *msg = cJSON_AddObjectToObject(c0, "message");
    cJSON_AddStringToObject(msg, "role", "assistant");
    cJSON_AddStringToObject(msg, "content", g->out ? g->out : "");
    cJSON_AddStringToObject(c0, "finish_reason", g->finish);
    cJSON_AddItemToObject(j, "usage", usage_json(g));
    gen_free(g);
    return send_json(sv, c, 200, j);
}

/* ------------------------------------------------------ other endpoints */

static enum MHD_Result get_models(server *sv, struct MHD_Connection *c) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "object", "list");
    cJSON *d = cJSON_AddArrayToObject(j, "data"), *m = cJSON_CreateObject();
    cJSON_AddItemToArray(d, m);
    cJSON_AddStringToObject(m, "id", sv->model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)sv->started);
    cJSON_AddStringToObject(m, "owned_by", "idefics-edge");
    idefics_model_info info;
    idefics_model_get_info(sv->model, &info);
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddNumberToObject(meta, "n_params", (double)info.n_params);
    cJSON_AddNumberToObject(meta, "n_ctx_max", info.n_ctx_max);
    cJSON_AddNumberToObject(meta, "image_size", info.image_size);
    cJSON_AddBoolToObject(meta, "instruct", info.is_instruct);
    cJSON_AddStringToObject(meta, "backend", info.backend ? info.backend : "");
    cJSON_AddStringToObject(meta, "device", info.device ? info.device : "");
    return send_json(sv, c, 200, j);
}

static enum MHD_Result get_metrics(server *sv, struct MHD_Connection *c) {
    char *b = NULL;
    size_t len = 0, cap = 0;
    char line[256];
#define PUT(...) (snprintf(line, sizeof line, __VA_ARGS__), buf_append(&b, &len, &cap, line, strlen(line)))
    pthread_mutex_lock(&sv->mu);
    metrics m = sv->m;
    int busy = 0;
    for (int i = 0; i < sv->n_slots; i++) busy += sv->slots[i].busy;
    int waiting = sv->waiting, n_cache = sv->n_cache;
    size_t cache_bytes = sv->cache_bytes;
    pthread_mutex_unlock(&sv->mu);
    PUT("# HELP idefics_http_requests_total HTTP responses by status code.\n"
        "# TYPE idefics_http_requests_total counter\n");
    for (int i = 100; i < 600; i++)
        if (m.http[i]) PUT("idefics_http_requests_total{code=\"%d\"} %llu\n", i, (unsigned long long)m.http[i]);
    PUT("# TYPE idefics_chat_completions_total counter\nidefics_chat_completions_total %llu\n",
        (unsigned long long)m.completions);
    PUT("# HELP idefics_prompt_tokens_total Prompt tokens of the requests.\n# TYPE idefics_prompt_tokens_total counter\n"
        "idefics_prompt_tokens_total %llu\n", (unsigned long long)m.prompt_tokens);
    PUT("# HELP idefics_prompt_tokens_evaluated_total Prompt tokens evaluated (the rest came from reuse).\n"
        "# TYPE idefics_prompt_tokens_evaluated_total counter\nidefics_prompt_tokens_evaluated_total %llu\n",
        (unsigned long long)m.prompt_evaluated);
    PUT("# TYPE idefics_completion_tokens_total counter\nidefics_completion_tokens_total %llu\n",
        (unsigned long long)m.completion_tokens);
    PUT("# HELP idefics_tokens_per_second Generated tokens per second of decoding, over the server's life.\n"
        "# TYPE idefics_tokens_per_second gauge\nidefics_tokens_per_second %.3f\n",
        m.decode_s > 0 ? (double)m.completion_tokens / m.decode_s : 0.0);
    PUT("# TYPE idefics_prefill_seconds_total counter\nidefics_prefill_seconds_total %.6f\n", m.prefill_s);
    PUT("# HELP idefics_image_encodes_total Images added to a session (each is encoded once there).\n"
        "# TYPE idefics_image_encodes_total counter\nidefics_image_encodes_total %llu\n",
        (unsigned long long)m.images_added);
    PUT("# TYPE idefics_image_encode_seconds_total counter\nidefics_image_encode_seconds_total %.6f\n",
        (double)m.images_encoded_ms_x1000 / 1e6);
    PUT("# HELP idefics_prefix_reuse_total Requests that continued a slot's conversation.\n"
        "# TYPE idefics_prefix_reuse_total counter\nidefics_prefix_reuse_total %llu\n",
        (unsigned long long)m.reuse_slot);
    PUT("# HELP idefics_snapshot_restores_total Requests that continued a cached snapshot.\n"
        "# TYPE idefics_snapshot_restores_total counter\nidefics_snapshot_restores_total %llu\n",
        (unsigned long long)m.reuse_snapshot);
    PUT("# TYPE idefics_snapshot_cache_entries gauge\nidefics_snapshot_cache_entries %d\n", n_cache);
    PUT("# TYPE idefics_snapshot_cache_bytes gauge\nidefics_snapshot_cache_bytes %zu\n", cache_bytes);
    PUT("# TYPE idefics_cancelled_total counter\nidefics_cancelled_total %llu\n", (unsigned long long)m.cancelled);
    PUT("# HELP idefics_client_disconnects_total Clients that went away before their answer was complete.\n"
        "# TYPE idefics_client_disconnects_total counter\nidefics_client_disconnects_total %llu\n",
        (unsigned long long)m.disconnects);
    PUT("# TYPE idefics_queue_depth gauge\nidefics_queue_depth %d\n", waiting);
    PUT("# TYPE idefics_slots_busy gauge\nidefics_slots_busy %d\n", busy);
    PUT("# TYPE idefics_slots_total gauge\nidefics_slots_total %d\n", sv->n_slots);
#undef PUT
    if (!b) return send_error(sv, c, 500, NULL, NULL, "out of memory");
    enum MHD_Result r = send_buf(sv, c, 200, "text/plain; version=0.0.4", b, len, true);
    free(b);
    return r;
}

static enum MHD_Result get_static(server *sv, struct MHD_Connection *c, const char *url) {
    static const struct {
        const char *url, *name, *ctype;
    } files[] = {
        {"/", "index.html", "text/html; charset=utf-8"},
        {"/index.html", "index.html", "text/html; charset=utf-8"},
        {"/app.js", "app.js", "text/javascript; charset=utf-8"},
        {"/app.css", "app.css", "text/css; charset=utf-8"},
        {"/sample.png", "sample.png", "image/png"},
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        if (strcmp(url, files[i].url)) continue;
        for (unsigned k = 0; k < idf_embedded_files_count; k++) {
            const idf_embedded_file *f = &idf_embedded_files[k];
            if (strcmp(f->name, files[i].name) || !f->bytes) continue;
            struct MHD_Response *r = MHD_create_response_from_buffer(f->len, (void *)f->bytes, MHD_RESPMEM_PERSISTENT);
            if (!r) return MHD_NO;
            MHD_add_response_header(r, "Content-Type", files[i].ctype);
            MHD_add_response_header(r, "Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
                                    "frame-ancestors 'none'");
            add_common_headers(sv, r);
            pthread_mutex_lock(&sv->mu);
            sv->m.http[200]++;
            pthread_mutex_unlock(&sv->mu);
            enum MHD_Result ret = MHD_queue_response(c, 200, r);
            MHD_destroy_response(r);
            return ret;
        }
    }
    return send_error(sv, c, 404, NULL, NULL, "no such page: %.100s", url);
}

/* ------------------------------------------------------------ dispatcher */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    server *sv = cls;
    conn_ctx *cc = *con_cls;
    if (!cc) {
        if (!(cc = calloc(1, sizeof *cc))) return MHD_NO;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cc->fd = ci ? ci->connect_fd : -1;
        *con_cls = cc;
        /* checks that need no body answer at once; the body is then not read */
        if (!strcmp(method, "OPTIONS") && sv->o.cors) {
            struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
            MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(r, "Access-Control-Allow-Headers", "Authorization, Content-Type");
            MHD_add_response_header(r, "Access-Control-Max-Age", "600");
            add_common_headers(sv, r);
            enum MHD_Result ret = MHD_queue_response(c, 204, r);
            MHD_destroy_response(r);
            return ret;
        }
        bool protected_path = !strncmp(url, "/v1/", 4) || !strcmp(url, "/metrics");
        if (protected_path && sv->o.api_key) {
            const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
            if (!auth || strncmp(auth, "Bearer ", 7) || !key_equal(auth + 7, sv->o.api_key))
                return send_error(sv, c, 401, NULL, "invalid_api_key",
                                  "missing or wrong API key (send Authorization: Bearer KEY)");
        }
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > (unsigned long long)sv->o.max_body)
            return send_error(sv, c, 413, NULL, NULL, "the request body is over the limit of %lld bytes",
                              sv->o.max_body);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!cc->too_big) {
            if (cc->len + *upload_size > (size_t)sv->o.max_body) {
                cc->too_big = true;
                free(cc->body);
                cc->body = NULL;
                cc->len = cc->cap = 0;
            } else if (!buf_append(&cc->body, &cc->len, &cc->cap, upload, *upload_size)) {
                cc->too_big = true;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (cc->too_big)
        return send_error(sv, c, 413, NULL, NULL, "the request body is over the limit of %lld bytes", sv->o.max_body);

    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    int state = atomic_load(&sv->state);
    if (!strcmp(url, "/health")) {
        if (!get) return send_error(sv, c, 405, NULL, NULL, "use GET for %s", url);
        if (state != 1)
            return send_json(sv, c, 503, error_json(503, state ? "the model failed to load" : "loading the model",
                                                    NULL, "model_loading"));
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "status", "ok");
        cJSON_AddStringToObject(j, "model", sv->model_id);
        cJSON_AddNumberToObject(j, "slots", sv->n_slots);
        cJSON_AddBoolToObject(j, "snapshots", sv->snapshots);
        cJSON_AddBoolToObject(j, "batched", sv->batcher != NULL);
        return send_json(sv, c, 200, j);
    }
    if (!strcmp(url, "/metrics")) {
        if (!get) return send_error(sv, c, 405, NULL, NULL, "use GET for %s", url);
        return get_metrics(sv, c);
    }
    bool is_models = !strcmp(url, "/v1/models"), is_chat = !strcmp(url, "/v1/chat/completions");
    if (is_models || is_chat) {
        if (state != 1) return send_error(sv, c, 503, NULL, "model_loading", "the model is not loaded yet");
        if (is_models) return get ? get_models(sv, c) : send_error(sv, c, 405, NULL, NULL, "use GET for %s", url);
        if (!post) return send_error(sv, c, 405, NULL, NULL, "use POST for %s", url);
        return chat_completions(sv, c, cc);
    }
    if (get && strncmp(url, "/v1/", 4)) return get_static(sv, c, url);
    return send_error(sv, c, 404, NULL, NULL, "no endpoint %s %.100s", method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)c, (void)toe;
    conn_ctx *cc = *con_cls;
    if (cc) {
        free(cc->body);
        free(cc);
    }
    *con_cls = NULL;
}

/* ------------------------------------------------------------- start-up */

static const char *boards_dir(void) {
    const char *e = getenv("IDEFICS_BOARDS_DIR");
    if (e && *e) return e;
#ifdef IDF_BOARDS_INSTALL_DIR
    if (access(IDF_BOARDS_INSTALL_DIR "/memory-profiles.ini", R_OK) == 0) return IDF_BOARDS_INSTALL_DIR;
#endif
#ifdef IDF_BOARDS_SOURCE_DIR
    return IDF_BOARDS_SOURCE_DIR;
#else
    return "boards";
#endif
}

typedef struct loader {
    server *sv;
    idefics_model_params mp;
    idefics_session_params sp;
    atomic_int quit;
} loader;

static bool load_progress(void *ud, float f) {
    (void)f;
    return !atomic_load(&((loader *)ud)->quit);
}

static void *load_thread(void *arg) {
    loader *ld = arg;
    server *sv = ld->sv;
    char err[512] = "";
    ld->mp.progress = load_progress;
    ld->mp.progress_user_data = ld;
    /* Test hook (tests/test_server.sh): hold the load back for a while so the
     * "503 while loading" answers can be checked on a small model that would
     * otherwise load in milliseconds. Bounded, and a signal still stops it. */
    const char *delay = getenv("IDEFICS_SERVE_TEST_LOAD_DELAY_MS");
    for (long ms = delay ? strtol(delay, NULL, 10) : 0; ms > 0 && ms <= 60000 && !atomic_load(&ld->quit); ms -= 50)
        usleep(50 * 1000);
    double t0 = now_s();
    idefics_status st = idefics_model_load(sv->o.model_path, &ld->mp, &sv->model, err, sizeof err);
    if (st != IDEFICS_OK) {
        srv_log("cannot load %s: %s (%s)", sv->o.model_path, err, idefics_status_str(st));
        atomic_store(&sv->state, 2);
        kill(getpid(), SIGTERM);
        return NULL;
    }
    /* a model file truncated or overwritten while mapped: a message and exit 74, not a bare SIGBUS */
    cli_sigbus_watch(sv->model);
    for (int i = 0; i < sv->o.parallel; i++) {
        st = idefics_session_create(sv->model, &ld->sp, &sv->slots[i].s, err, sizeof err);
        if (st != IDEFICS_OK) {
            srv_log("cannot create slot %d: %s (%s)", i, err, idefics_status_str(st));
            atomic_store(&sv->state, 2);
            kill(getpid(), SIGTERM);
            return NULL;
        }
        sv->slots[i].id = i;
    }
    sv->n_slots = sv->o.parallel;
    idefics_snapshot *probe = NULL;
    sv->snapshots = idefics_session_snapshot(sv->slots[0].s, &probe) == IDEFICS_OK;
    idefics_snapshot_free(probe);
    if (!sv->o.no_batch) {
        st = srv_batcher_start(sv->model, sv->n_slots, ld->sp.n_threads, &sv->batcher, err, sizeof err);
        if (st != IDEFICS_OK) {
            srv_log("cannot start batched generation: %s (%s)", err, idefics_status_str(st));
            atomic_store(&sv->state, 2);
            kill(getpid(), SIGTERM);
            return NULL;
        }
    }
    if (!sv->snapshots) srv_log("snapshots are not available in this library: follow-ups reuse their own slot only");
    atomic_store(&sv->state, 1);
    srv_log("model %s loaded in %.1f s; %d slot(s) ready%s", sv->model_id, now_s() - t0, sv->n_slots,
            sv->batcher ? ", batched generation" : ", each generating on its own thread");
    return NULL;
}

int cmd_serve(int argc, char **argv) {
    server *sv = calloc(1, sizeof *sv);
    if (!sv) return 1;
    int rc = srv_parse_args(argc, argv, &sv->o);
    if (rc) {
        free(sv);
        return rc == 1 ? 0 : 2;
    }
    srv_opts *o = &sv->o;
    if (!o->api_key) {
        const char *k = getenv("IDEFICS_API_KEY");
        if (k && *k) o->api_key = k;
    }
    if (o->api_key && !*o->api_key) o->api_key = NULL;
    if (o->allow_dir_arg && !realpath(o->allow_dir_arg, sv->allow_dir)) {
        fprintf(stderr, "idefics serve: --allow-local-files %s: %s\n", o->allow_dir_arg, strerror(errno));
        free(sv);
        return 2;
    }
    sv->lim = (srv_limits){.max_images = o->max_images, .max_messages = 256, .max_json_depth = 16,
                           .max_image_bytes = (size_t)o->max_body, .max_text_bytes = 1 << 20,
                           .allow_dir = o->allow_dir_arg ? sv->allow_dir : NULL};
    /* the model's name for "model" fields: the file name without .idfx */
    const char *base = strrchr(o->model_path, '/');
    snprintf(sv->model_id, sizeof sv->model_id, "%s", base ? base + 1 : o->model_path);
    char *dot = strrchr(sv->model_id, '.');
    if (dot && !strcmp(dot, ".idfx")) *dot = '\0';

    loader ld = {.sv = sv, .mp = idefics_model_default_params(), .sp = idefics_session_default_params()};
    ld.mp.log = lib_log;
    ld.mp.log_level = o->verbose ? IDEFICS_LOG_INFO : IDEFICS_LOG_WARN;
    const char *board = o->board ? o->board : getenv("IDEFICS_BOARD");
    char err[512];
    if (board && *board) {
        idefics_status bs = idefics_board_apply(boards_dir(), board, &ld.mp, &ld.sp, err, sizeof err);
        if (bs != IDEFICS_OK) {
            fprintf(stderr, "idefics serve: --board %s: %s (%s)\n", board, err, idefics_status_str(bs));
            free(sv);
            return 2;
        }
    } else {
        board = NULL;
    }
    if (o->set_threads || !board) ld.mp.n_threads = ld.sp.n_threads = o->n_threads;
    if (o->no_mmap) ld.mp.use_mmap = false;
    if (o->set_ctx || !board) ld.sp.n_ctx = o->n_ctx;
    ld.sp.max_image_pixels = o->max_pixels;
    ld.sp.max_image_bytes = o->max_body;

    /* listening address: numeric IPv4 or IPv6 ("localhost" is 127.0.0.1) */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
    const char *host = strcmp(o->host, "localhost") ? o->host : "127.0.0.1";
    bool loopback;
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)o->port);
        loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)o->port);
        loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        flags |= MHD_USE_IPv6;
    } else {
        fprintf(stderr, "idefics serve: --host %s is not a numeric IPv4 or IPv6 address\n", o->host);
        free(sv);
        return 2;
    }
    if (!loopback)
        srv_log("warning: listening on %s, reachable from other machines%s", host,
                o->api_key ? "" : ", with no --api-key");

    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    bool keyed = fd >= 0 && read(fd, sv->hkey, sizeof sv->hkey) == (ssize_t)sizeof sv->hkey;
    if (fd >= 0) close(fd);
    if (!keyed) {
        for (int i = 0; i < 16; i += 8) {
            uint64_t r = random_u64();
            memcpy(sv->hkey + i, &r, 8);
        }
    }
    pthread_mutex_init(&sv->mu, NULL);
    pthread_cond_init(&sv->cv, NULL);
    sv->started = time(NULL);

    /* signals: block them in every thread; the main thread waits for one */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, sv, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, sv, MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->queue + 64),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 * 1024),
        MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "idefics serve: cannot listen on %s port %d (in use, or not an address of this machine)\n",
                host, o->port);
        free(sv);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    int port = di ? di->port : o->port;
    srv_log("listening on http://%s%s%s:%d/ (loading %s)", strchr(host, ':') ? "[" : "", host,
            strchr(host, ':') ? "]" : "", port, o->model_path);

    pthread_t lt;
    bool lt_ok = pthread_create(&lt, NULL, load_thread, &ld) == 0;
    if (!lt_ok) atomic_store(&sv->state, 2);
    int sig = 0;
    if (lt_ok) sigwait(&sigs, &sig);
    atomic_store(&ld.quit, 1);
    if (lt_ok && atomic_load(&sv->state) == 0) {
        /* still loading (a slow disk, or a file that blocks in open): the loader
         * may not notice the request to stop soon, so leave without it */
        srv_log("signal %d while loading: stopping", sig);
        MHD_stop_daemon(d);
        fflush(stderr);
        _exit(0);
    }
    if (lt_ok) pthread_join(lt, NULL);
    bool failed = atomic_load(&sv->state) == 2;
    if (!failed) srv_log("signal %d: stopping", sig);
    /* cancel what is generating so the connection threads finish */
    pthread_mutex_lock(&sv->mu);
    for (int i = 0; i < sv->n_slots; i++)
        if (sv->slots[i].busy) idefics_session_cancel(sv->slots[i].s);
    pthread_mutex_unlock(&sv->mu);
    MHD_stop_daemon(d);
    srv_batcher_stop(sv->batcher);
    for (int i = 0; i < sv->n_cache; i++) snap_unref(sv->cache[i].ref);
    for (int i = 0; i < MAX_SLOTS; i++) idefics_session_free(sv->slots[i].s);
    cli_sigbus_watch(NULL);
    idefics_model_free(sv->model);
    pthread_mutex_destroy(&sv->mu);
    pthread_cond_destroy(&sv->cv);
    free(sv);
    return failed ? 1 : 0;
}
