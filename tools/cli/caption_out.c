/*
 * caption_out.c - records, the output file and resume for `idefics caption`.
 *
 * Safety rules (issue 12):
 *   - a record is formatted in memory and appended with one write() loop, no
 *     stdio buffer, so a kill loses at most the record being written;
 *   - a failed write cuts the file back to its last complete record, so an
 *     error never leaves half a line behind; every write, sync and close is
 *     checked;
 *   - fdatasync every SYNC_EVERY records or SYNC_MS, and at the end;
 *   - on open, the previous records are parsed; a cut last record (no final
 *     newline, or an unterminated CSV quote) is removed;
 *   - a path with more than one record (a retry, --force, a changed file)
 *     is compacted at close: the latest record of each path is kept, written
 *     to OUT.tmp.PID, synced and renamed over OUT, then the folder is synced.
 *
 * Formats: jsonl (one JSON object per line; "path_b64" holds the raw name when
 * it is not UTF-8), csv (RFC 4180, header line, quoted fields may hold
 * newlines), tsv (header line; \\, \t, \n, \r escaped), txt ("PATH: CAPTION"
 * or "PATH:! STATUS: message", the path with \xNN escapes; resume matches the
 * path only, as txt holds no hash).
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if CAPTION_HAVE_CJSON
#include <cjson/cJSON.h>
#endif

#include "caption.h"

#define SYNC_EVERY 16
#define SYNC_MS 5000.0

/* ------------------------------------------------------------ buffers */

void cb_add(cap_buf *b, const void *p, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = true;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

void cb_str(cap_buf *b, const char *s) { cb_add(b, s, strlen(s)); }

void cb_printf(cap_buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof tmp) {
        cb_add(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    cb_add(b, big, (size_t)n);
    free(big);
}

void cb_free(cap_buf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

/* Length of the UTF-8 sequence at p (1..4), 0 when invalid (overlongs,
 * surrogates and values above U+10FFFF are invalid). */
static size_t utf8_seq(const unsigned char *p, size_t n) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t k;
    unsigned min;
    if (c >= 0xC2 && c <= 0xDF) k = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) k = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) k = 4, min = 0x10000;
    else return 0;
    if (n < k) return 0;
    unsigned v = c & (0x3F >> (k - 1));
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    return k;
}

bool utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k) return false;
        i += k;
    }
    return true;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void cb_base64(cap_buf *b, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {b64[v >> 18 & 63], b64[v >> 12 & 63], i + 1 < n ? b64[v >> 6 & 63] : '=',
                     i + 2 < n ? b64[v & 63] : '='};
        cb_add(b, q, 4);
    }
}

bool base64_decode(const char *s, size_t n, char **out, size_t *out_len) {
    if (n % 4) return false;
    char *o = malloc(n / 4 * 3 + 1);
    if (!o) return false;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            const char *c = s[i + j] == '=' ? NULL : strchr(b64, s[i + j]);
            if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!c || !s[i + j] || pad) {
                free(o);
                return false;
            }
            v = v << 6 | (uint32_t)(c - b64);
        }
        o[k++] = (char)(v >> 16);
        if (pad < 2) o[k++] = (char)(v >> 8 & 255);
        if (pad < 1) o[k++] = (char)(v & 255);
    }
    o[k] = '\0';
    *out = o;
    *out_len = k;
    return true;
}

void cb_path_escaped(cap_buf *b, const char *s, size_t n, bool escape_colon) {
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == 1 && (p[i] < 0x20 || p[i] == 0x7F || p[i] == '\\' || (escape_colon && p[i] == ':'))) k = 0;
        if (k == 0) {
            cb_printf(b, "\\x%02x", p[i]);
            i++;
        } else {
            cb_add(b, p + i, k);
            i += k;
        }
    }
}

/* ------------------------------------------------------------ formats */

bool cap_format_parse(const char *s, cap_format *f) {
    static const char *names[] = {"jsonl", "csv", "tsv", "txt"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, names[i])) {
            *f = (cap_format)i;
            return true;
        }
    if (!strcmp(s, "json")) {
        *f = CAP_JSONL;
        return true;
    }
    return false;
}

cap_format cap_format_for_path(const char *path) {
    const char *dot = path ? strrchr(path, '.') : NULL;
    cap_format f;
    if (dot && strchr(dot, '/') == NULL && cap_format_parse(dot + 1, &f)) return f;
    return CAP_JSONL;
}

enum { N_COLUMNS = 13 };

const char *cap_format_header(cap_format fmt) {
    if (fmt == CAP_CSV) return "path,path_b64,status,error,caption,width,height,hash,model,model_id,prompt,ms,time\n";
    if (fmt == CAP_TSV)
        return "path\tpath_b64\tstatus\terror\tcaption\twidth\theight\thash\tmodel\tmodel_id\tprompt\tms\ttime\n";
    return "";
}

/* JSON string: the bytes as UTF-8, with invalid bytes as U+FFFD (the raw
 * name is then in path_b64). */
static void json_str(cap_buf *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s;
    cb_add(b, "\"", 1);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == 0) {
            cb_str(b, "\\ufffd");
            i++;
            continue;
        }
        unsigned c = p[i];
        if (k == 1 && (c == '"' || c == '\\')) cb_printf(b, "\\%c", c);
        else if (k == 1 && c == '\n') cb_str(b, "\\n");
        else if (k == 1 && c == '\r') cb_str(b, "\\r");
        else if (k == 1 && c == '\t') cb_str(b, "\\t");
        else if (k == 1 && (c < 0x20 || c == 0x7F)) cb_printf(b, "\\u%04x", c);
        else cb_add(b, p + i, k);
        i += k;
    }
    cb_add(b, "\"", 1);
}

static void csv_field(cap_buf *b, const char *s, size_t n) {
    /* Quote always: one rule for every field; "" doubles a quote. Text that
     * is not UTF-8 (only a path can be) is escaped; path_b64 is lossless. */
    cb_add(b, "\"", 1);
    bool utf8 = utf8_valid(s, n);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') cb_add(b, "\"\"", 2);
        else if (!utf8 && ((unsigned char)s[i] >= 0x80)) cb_printf(b, "\\x%02x", (unsigned char)s[i]);
        else cb_add(b, s + i, 1);
    }
    cb_add(b, "\"", 1);
}

static void tsv_field(cap_buf *b, const char *s, size_t n) {
    bool utf8 = utf8_valid(s, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') cb_str(b, "\\\\");
        else if (c == '\t') cb_str(b, "\\t");
        else if (c == '\n') cb_str(b, "\\n");
        else if (c == '\r') cb_str(b, "\\r");
        else if (!utf8 && c >= 0x80) cb_printf(b, "\\x%02x", c);
        else cb_add(b, s + i, 1);
    }
}

void cap_format_record(cap_buf *b, cap_format fmt, const cap_record *r) {
    bool ok = !strcmp(r->status, "ok");
    bool utf8 = utf8_valid(r->path, r->path_len);
    const char *caption = ok && r->caption ? r->caption : "";
    const char *error = !ok && r->error ? r->error : "";
    if (fmt == CAP_TXT) {
        cb_path_escaped(b, r->path, r->path_len, true);
        if (ok) {
            cb_str(b, ": ");
            for (const char *c = caption; *c; c++) cb_add(b, *c == '\n' || *c == '\r' ? " " : c, 1);
        } else {
            cb_printf(b, ":! %s: ", r->status);
            for (const char *c = error; *c; c++) cb_add(b, *c == '\n' || *c == '\r' ? " " : c, 1);
        }
        cb_add(b, "\n", 1);
        return;
    }
    char w[16], h[16], ms[32];
    snprintf(w, sizeof w, "%d", r->width);
    snprintf(h, sizeof h, "%d", r->height);
    snprintf(ms, sizeof ms, "%.1f", r->ms);
    cap_buf p64 = {0};
    if (!utf8) cb_base64(&p64, (const uint8_t *)r->path, r->path_len);
    if (fmt == CAP_JSONL) {
        cb_str(b, "{\"path\":");
        json_str(b, r->path, r->path_len);
        if (!utf8) {
            cb_str(b, ",\"path_b64\":\"");
            cb_add(b, p64.s ? p64.s : "", p64.len);
            cb_str(b, "\"");
        }
        cb_str(b, ",\"status\":");
        json_str(b, r->status, strlen(r->status));
        if (!ok) {
            cb_str(b, ",\"error\":");
            json_str(b, error, strlen(error));
        } else {
            cb_str(b, ",\"caption\":");
            json_str(b, caption, strlen(caption));
        }
        if (r->width > 0) cb_printf(b, ",\"width\":%d,\"height\":%d", r->width, r->height);
        if (r->hash && *r->hash) cb_printf(b, ",\"hash\":\"%s\"", r->hash);
        cb_str(b, ",\"model\":");
        json_str(b, r->model ? r->model : "", r->model ? strlen(r->model) : 0);
        cb_printf(b, ",\"model_id\":\"%s\",\"prompt\":", r->model_id ? r->model_id : "");
        json_str(b, r->prompt ? r->prompt : "", r->prompt ? strlen(r->prompt) : 0);
        if (ok && r->finish) cb_printf(b, ",\"finish\":\"%s\"", r->finish);
        cb_printf(b, ",\"ms\":%s,\"time\":\"%s\"}\n", ms, r->time ? r->time : "");
    } else {
        const char *f[N_COLUMNS] = {r->path, p64.s ? p64.s : "", r->status, error, caption,
                                    r->width > 0 ? w : "", r->width > 0 ? h : "", r->hash ? r->hash : "",
                                    r->model ? r->model : "", r->model_id ? r->model_id : "",
                                    r->prompt ? r->prompt : "", ms, r->time ? r->time : ""};
        for (int i = 0; i < N_COLUMNS; i++) {
            if (i) cb_add(b, fmt == CAP_CSV ? "," : "\t", 1);
            size_t n = i == 0 ? r->path_len : strlen(f[i]);
            if (fmt == CAP_CSV) csv_field(b, f[i], n);
            else tsv_field(b, f[i], n);
        }
        cb_add(b, "\n", 1);
    }
    cb_free(&p64);
}

/* ------------------------------------------------------------ parsing */

void cap_prev_free(cap_prev *p) {
    free(p->path);
    free(p->hash);
    free(p->model_id);
    free(p->prompt);
    free(p->caption);
    memset(p, 0, sizeof *p);
}

static char *dupn(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* The raw path of a record: path_b64 when present, else the text. */
static void set_path(cap_prev *r, const char *text, size_t tn, const char *b64s, size_t bn) {
    char *raw;
    size_t rl;
    if (b64s && bn && base64_decode(b64s, bn, &raw, &rl)) {
        r->path = raw;
        r->path_len = rl;
    } else {
        r->path = dupn(text, tn);
        r->path_len = r->path ? tn : 0;
    }
}

/* Unescapes tsv (\\ \t \n \r \xNN) or txt (\xNN) text in place; returns the new length. */
static size_t unescape(char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char c = s[i + 1];
            if (c == '\\') s[k++] = '\\', i++;
            else if (c == 't') s[k++] = '\t', i++;
            else if (c == 'n') s[k++] = '\n', i++;
            else if (c == 'r') s[k++] = '\r', i++;
            else if (c == 'x' && i + 3 < n + 0 && i + 3 <= n - 1) {
                unsigned v;
                char hx[3] = {s[i + 2], s[i + 3], 0};
                if (sscanf(hx, "%2x", &v) == 1) {
                    s[k++] = (char)v;
                    i += 3;
                } else s[k++] = s[i];
            } else s[k++] = s[i];
        } else s[k++] = s[i];
    }
    return k;
}

/* One CSV record starting at data[i]: fields into f (malloc'd, unquoted).
 * Returns the offset after its newline, or 0 when the record is incomplete. */
static size_t csv_record(const char *d, size_t n, size_t i, char **f, size_t *fl, int max_f, int *nf) {
    *nf = 0;
    cap_buf cur = {0};
    for (;;) {
        cur.len = 0;
        if (cur.s) cur.s[0] = '\0';
        if (i < n && d[i] == '"') {
            i++;
            for (;;) {
                if (i >= n) goto cut;
                if (d[i] == '"') {
                    if (i + 1 < n && d[i + 1] == '"') {
                        cb_add(&cur, "\"", 1);
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                cb_add(&cur, d + i, 1);
                i++;
            }
        } else {
            while (i < n && d[i] != ',' && d[i] != '\n') cb_add(&cur, d + i++, 1);
        }
        if (*nf < max_f) {
            f[*nf] = dupn(cur.s ? cur.s : "", cur.len);
            fl[*nf] = cur.len;
            (*nf)++;
        }
        if (i >= n) goto cut;
        if (d[i] == ',') {
            i++;
            continue;
        }
        if (d[i] == '\n') {
            cb_free(&cur);
            return i + 1;
        }
        goto cut; /* junk after a closing quote */
    }
cut:
    cb_free(&cur);
    for (int k = 0; k < *nf; k++) free(f[k]);
    *nf = 0;
    return 0;
}

static void from_columns(cap_prev *r, char **f, size_t *fl, int nf) {
    /* columns: path path_b64 status error caption width height hash model model_id prompt ms time */
    set_path(r, f[0], fl[0], nf > 1 ? f[1] : NULL, nf > 1 ? fl[1] : 0);
    r->ok = nf > 2 && !strcmp(f[2], "ok");
    r->caption = nf > 4 ? dupn(f[4], fl[4]) : NULL;
    r->hash = nf > 7 ? dupn(f[7], fl[7]) : NULL;
    r->model_id = nf > 9 ? dupn(f[9], fl[9]) : NULL;
    r->prompt = nf > 10 ? dupn(f[10], fl[10]) : NULL;
}

size_t cap_parse_records(const char *d, size_t n, cap_format fmt, size_t *complete_end, cap_prev_fn fn, void *ud) {
    size_t i = 0, count = 0;
    *complete_end = 0;
    if (fmt == CAP_CSV || fmt == CAP_TSV) { /* the header line */
        const char *nl = memchr(d, '\n', n);
        if (!nl) return 0;
        i = (size_t)(nl - d) + 1;
        *complete_end = i;
    }
    while (i < n) {
        cap_prev r = {0};
        r.off = (off_t)i;
        size_t next;
        if (fmt == CAP_CSV) {
            char *f[N_COLUMNS];
            size_t fl[N_COLUMNS];
            int nf;
            next = csv_record(d, n, i, f, fl, N_COLUMNS, &nf);
            if (!next) break;
            if (nf >= 3) from_columns(&r, f, fl, nf);
            for (int k = 0; k < nf; k++) free(f[k]);
        } else {
            const char *nl = memchr(d + i, '\n', n - i);
            if (!nl) break; /* a cut last line */
            next = (size_t)(nl - d) + 1;
            size_t len = next - 1 - i;
            char *line = dupn(d + i, len);
            if (!line) break;
            if (fmt == CAP_TSV) {
                char *f[N_COLUMNS];
                size_t fl[N_COLUMNS];
                int nf = 0;
                char *s = line;
                while (nf < N_COLUMNS) {
                    char *tab = strchr(s, '\t');
                    if (tab) *tab = '\0';
                    f[nf] = s;
                    fl[nf] = unescape(s, strlen(s));
                    f[nf][fl[nf]] = '\0';
                    nf++;
                    if (!tab) break;
                    s = tab + 1;
                }
                if (nf >= 3) from_columns(&r, f, fl, nf);
            } else if (fmt == CAP_TXT) {
                char *sep = strstr(line, ": ");
                char *bang = strstr(line, ":! ");
                char *cut = bang && (!sep || bang < sep) ? bang : sep;
                if (cut) {
                    size_t pl = unescape(line, (size_t)(cut - line));
                    r.path = dupn(line, pl);
                    r.path_len = r.path ? pl : 0;
                    r.ok = cut == sep;
                    if (r.ok) r.caption = strdup(cut + 2);
                }
            } else {
#if CAPTION_HAVE_CJSON
                cJSON *j = cJSON_ParseWithLength(line, len);
                const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "path");
                const cJSON *p64 = cJSON_GetObjectItemCaseSensitive(j, "path_b64");
                const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
                if (cJSON_IsString(p) && cJSON_IsString(st)) {
                    set_path(&r, p->valuestring, strlen(p->valuestring), cJSON_IsString(p64) ? p64->valuestring : NULL,
                             cJSON_IsString(p64) ? strlen(p64->valuestring) : 0);
                    r.ok = !strcmp(st->valuestring, "ok");
                    const char *keys[] = {"hash", "model_id", "prompt", "caption"};
                    char **dst[] = {&r.hash, &r.model_id, &r.prompt, &r.caption};
                    for (int k = 0; k < 4; k++) {
                        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
                        if (cJSON_IsString(v)) *dst[k] = strdup(v->valuestring);
                    }
                }
                cJSON_Delete(j);
#endif
            }
            free(line);
        }
        r.end = (off_t)next;
        r.seq = count;
        *complete_end = next;
        i = next;
        if (r.path) {
            count++;
            if (fn) fn(ud, &r);
            else cap_prev_free(&r);
        } else cap_prev_free(&r); /* a line we do not understand is kept, not matched */
    }
    return count;
}

/* ------------------------------------------------------------ the file */

static double mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (k == 0) {
            errno = EIO;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

typedef struct prev_vec {
    cap_prev *v;
    size_t n, cap;
    bool oom;
} prev_vec;

static void collect(void *ud, cap_prev *r) {
    prev_vec *pv = ud;
    if (pv->n == pv->cap) {
        size_t cap = pv->cap ? pv->cap * 2 : 64;
        cap_prev *v = realloc(pv->v, cap * sizeof *v);
        if (!v) {
            pv->oom = true;
            cap_prev_free(r);
            return;
        }
        pv->v = v;
        pv->cap = cap;
    }
    pv->v[pv->n++] = *r;
}

static int cmp_path(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an < bn ? -1 : an > bn);
}

static int cmp_prev(const void *x, const void *y) {
    const cap_prev *a = x, *b = y;
    int c = cmp_path(a->path, a->path_len, b->path, b->path_len);
    return c ? c : (a->seq < b->seq ? -1 : a->seq > b->seq);
}

int cap_out_open(cap_out *o, const char *path, cap_format fmt, bool fresh, char *msg, size_t msg_size) {
    memset(o, 0, sizeof *o);
    o->fd = -1;
    o->path = path;
    o->fmt = fmt;
#if !CAPTION_HAVE_CJSON
    if (fmt == CAP_JSONL && !fresh) {
        /* reading JSON back needs cJSON; without it a jsonl OUT is only written */
    }
#endif
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | (fresh ? O_TRUNC : 0), 0644);
    if (fd < 0) {
        snprintf(msg, msg_size, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(msg, msg_size, "%s is not a regular file", path);
        close(fd);
        return -1;
    }
    /* One writer per OUT: a second run appending (or compacting) at the same
     * time would interleave records or drop the other's. The lock goes with the
     * process, so a killed run never leaves it behind. */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(msg, msg_size, "%s is in use by another idefics caption run (%s)", path,
                 errno == EWOULDBLOCK ? "locked" : strerror(errno));
        close(fd);
        return -1;
    }
    o->fd = fd;
    size_t n = (size_t)st.st_size;
    char *data = NULL;
    if (n) {
        data = malloc(n);
        if (!data) {
            snprintf(msg, msg_size, "out of memory reading %s (%zu bytes)", path, n);
            return -1;
        }
        size_t got = 0;
        while (got < n) {
            ssize_t k = pread(fd, data + got, n - got, (off_t)got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                snprintf(msg, msg_size, "cannot read %s: %s", path, k < 0 ? strerror(errno) : "file shrank");
                free(data);
                return -1;
            }
            got += (size_t)k;
        }
        const char *hdr = cap_format_header(fmt);
        if (*hdr && (n < strlen(hdr) || memcmp(data, hdr, strlen(hdr)) != 0) && memchr(data, '\n', n)) {
            snprintf(msg, msg_size, "%s does not start with the %s header this version writes; give another -o "
                                    "or --force to start it over", path, fmt == CAP_CSV ? "CSV" : "TSV");
            free(data);
            return -1;
        }
        prev_vec pv = {0};
        size_t end = 0;
        cap_parse_records(data, n, fmt, &end, collect, &pv);
        free(data);
        if (pv.oom) {
            snprintf(msg, msg_size, "out of memory reading the records of %s", path);
            for (size_t i = 0; i < pv.n; i++) cap_prev_free(&pv.v[i]);
            free(pv.v);
            return -1;
        }
        if (end < n) { /* a cut last record: remove it, and make that durable before appending */
            if (ftruncate(fd, (off_t)end) != 0 || fdatasync(fd) != 0) {
                snprintf(msg, msg_size, "cannot cut the partial last record of %s: %s", path, strerror(errno));
                return -1;
            }
            o->repaired_bytes = n - end;
        }
        o->size = (off_t)end;
        o->header_end = *hdr ? (off_t)strlen(hdr) : 0;
        o->n_records = pv.n;
        o->n_synced = pv.n;
        if (pv.n) qsort(pv.v, pv.n, sizeof *pv.v, cmp_prev);
        for (size_t i = 1; i < pv.n; i++)
            if (!cmp_path(pv.v[i].path, pv.v[i].path_len, pv.v[i - 1].path, pv.v[i - 1].path_len)) o->superseded = true;
        o->prev = pv.v;
        o->n_prev = pv.n;
    }
    if (o->size == 0 && *cap_format_header(fmt)) {
        const char *hdr = cap_format_header(fmt);
        if (ftruncate(fd, 0) != 0 || write_all(fd, hdr, strlen(hdr)) != 0) {
            int e = errno;
            if (ftruncate(fd, 0) != 0) { /* best effort: an empty file, not half a header */
            }
            snprintf(msg, msg_size, "cannot write the header of %s: %s", path, strerror(e));
            return -1;
        }
        o->size = o->header_end = (off_t)strlen(hdr);
    }
    if (lseek(fd, o->size, SEEK_SET) < 0) {
        snprintf(msg, msg_size, "cannot seek in %s: %s", path, strerror(errno));
        return -1;
    }
    o->last_sync_ms = mono_ms();
    return 0;
}

const cap_prev *cap_out_find(const cap_out *o, const char *path, size_t len) {
    size_t lo = 0, hi = o->n_prev;
    while (lo < hi) { /* the last record of the path: upper bound, then step back */
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_path(o->prev[mid].path, o->prev[mid].path_len, path, len) <= 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return NULL;
    const cap_prev *p = &o->prev[lo - 1];
    return cmp_path(p->path, p->path_len, path, len) == 0 ? p : NULL;
}

int cap_out_sync(cap_out *o) {
    if (o->fd < 0) return 0;
    if (fdatasync(o->fd) != 0) return -1;
    o->n_synced = o->n_records;
    o->last_sync_ms = mono_ms();
    return 0;
}

int cap_out_write(cap_out *o, const cap_record *r) {
    cap_buf b = {0};
    cap_format_record(&b, o->fmt, r);
    if (b.oom) {
        cb_free(&b);
        errno = ENOMEM;
        return -1;
    }
    if (write_all(o->fd, b.s, b.len) != 0) {
        int e = errno;
        /* Cut back to the last complete record; the position goes with it. */
        if (ftruncate(o->fd, o->size) == 0) lseek(o->fd, o->size, SEEK_SET);
        cb_free(&b);
        errno = e;
        return -1;
    }
    o->size += (off_t)b.len;
    cb_free(&b);
    if (cap_out_find(o, r->path, r->path_len)) o->superseded = true;
    o->n_records++;
    o->n_new++;
    if (o->n_records - o->n_synced >= SYNC_EVERY || mono_ms() - o->last_sync_ms >= SYNC_MS) return cap_out_sync(o);
    return 0;
}

/* Keeps the latest record of each path, in file order: copy those byte ranges
 * to OUT.tmp.PID, sync, rename, sync the folder. */
static int compact(cap_out *o, char *msg, size_t msg_size) {
    size_t n = (size_t)o->size;
    char *data = malloc(n ? n : 1);
    if (!data) {
        snprintf(msg, msg_size, "out of memory compacting %s", o->path);
        return -1;
    }
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(o->fd, data + got, n - got, (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            snprintf(msg, msg_size, "cannot read %s back: %s", o->path, k < 0 ? strerror(errno) : "short");
            free(data);
            return -1;
        }
        got += (size_t)k;
    }
    prev_vec pv = {0};
    size_t end;
    cap_parse_records(data, n, o->fmt, &end, collect, &pv);
    if (pv.oom) {
        snprintf(msg, msg_size, "out of memory compacting %s", o->path);
        free(data);
        for (size_t i = 0; i < pv.n; i++) cap_prev_free(&pv.v[i]);
        free(pv.v);
        return -1;
    }
    qsort(pv.v, pv.n, sizeof *pv.v, cmp_prev);
    /* keep[i]: the record is the last of its path */
    bool *keep = calloc(pv.n ? pv.n : 1, 1);
    size_t *order = calloc(pv.n ? pv.n : 1, sizeof *order);
    int rc = -1;
    char *tmp = NULL;
    int tfd = -1;
    if (!keep || !order) {
        snprintf(msg, msg_size, "out of memory compacting %s", o->path);
        goto done;
    }
    for (size_t i = 0; i < pv.n; i++)
        keep[i] = i + 1 == pv.n || cmp_path(pv.v[i].path, pv.v[i].path_len, pv.v[i + 1].path, pv.v[i + 1].path_len);
    /* back to file order */
    for (size_t i = 0; i < pv.n; i++) order[pv.v[i].seq] = i;
    size_t tl = strlen(o->path) + 32;
    tmp = malloc(tl);
    if (!tmp) goto done;
    snprintf(tmp, tl, "%s.tmp.%ld", o->path, (long)getpid());
    tfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (tfd < 0) {
        snprintf(msg, msg_size, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    int werr = 0;
    if (o->header_end && write_all(tfd, data, (size_t)o->header_end) != 0) werr = errno;
    for (size_t s = 0; s < pv.n && !werr; s++) {
        const cap_prev *p = &pv.v[order[s]];
        if (keep[order[s]] && write_all(tfd, data + p->off, (size_t)(p->end - p->off)) != 0) werr = errno;
    }
    /* bytes past the last parsed record (lines we do not understand) stay */
    if (!werr && end < n && write_all(tfd, data + end, n - end) != 0) werr = errno;
    size_t kept = 0;
    for (size_t i = 0; i < pv.n; i++) kept += keep[i];
    if (!werr && fdatasync(tfd) != 0) werr = errno;
    if (close(tfd) != 0 && !werr) werr = errno;
    tfd = -1;
    if (werr) {
        snprintf(msg, msg_size, "cannot write %s: %s (%s is unchanged)", tmp, strerror(werr), o->path);
        unlink(tmp);
        goto done;
    }
    if (rename(tmp, o->path) != 0) {
        snprintf(msg, msg_size, "cannot rename %s over %s: %s", tmp, o->path, strerror(errno));
        unlink(tmp);
        goto done;
    }
    o->n_records = o->n_synced = kept;
    char *dcopy = strdup(o->path);
    if (dcopy) {
        int dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd); /* the rename itself; some file systems refuse fsync on a folder */
            close(dfd);
        }
        free(dcopy);
    }
    rc = 0;
done:
    if (tfd >= 0) close(tfd);
    free(tmp);
    free(keep);
    free(order);
    free(data);
    for (size_t i = 0; i < pv.n; i++) cap_prev_free(&pv.v[i]);
    free(pv.v);
    return rc;
}

int cap_out_close(cap_out *o, char *msg, size_t msg_size) {
    int rc = 0;
    if (o->fd >= 0) {
        if (cap_out_sync(o) != 0) {
            snprintf(msg, msg_size, "cannot sync %s: %s", o->path, strerror(errno));
            rc = -1;
        }
        if (rc == 0 && o->superseded && compact(o, msg, msg_size) != 0) rc = -1;
        if (close(o->fd) != 0 && rc == 0) {
            snprintf(msg, msg_size, "cannot close %s: %s", o->path, strerror(errno));
            rc = -1;
        }
        o->fd = -1;
    }
    for (size_t i = 0; i < o->n_prev; i++) cap_prev_free(&o->prev[i]);
    free(o->prev);
    o->prev = NULL;
    o->n_prev = 0;
    return rc;
}
