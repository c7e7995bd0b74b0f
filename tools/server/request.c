/*
 * request.c - OpenAI Chat Completions request bodies -> srv_request (request.h).
 * JSON is parsed by cJSON (Debian libcjson); this file only walks the tree,
 * checks types, counts and sizes, and decodes data: URIs. Everything here is
 * untrusted input: every size is checked before it is used.
 */
#include "request.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ base64 */

/* 0..63 for alphabet characters, 64 for '=', 255 for anything else */
static unsigned char b64_value(unsigned char c) {
    if (c >= 'A' && c <= 'Z') return (unsigned char)(c - 'A');
    if (c >= 'a' && c <= 'z') return (unsigned char)(c - 'a' + 26);
    if (c >= '0' && c <= '9') return (unsigned char)(c - '0' + 52);
    if (c == '+') return 62;
    if (c == '/') return 63;
    if (c == '=') return 64;
    return 255;
}

bool srv_base64_decode(const char *in, size_t len, unsigned char *out, size_t *n) {
    *n = 0;
    if (len % 4 != 0) return false;
    size_t o = 0;
    for (size_t i = 0; i < len; i += 4) {
        unsigned char v[4];
        for (int k = 0; k < 4; k++) v[k] = b64_value((unsigned char)in[i + k]);
        bool last = i + 4 == len;
        if (v[0] > 63 || v[1] > 63) return false;
        /* '=' only at the end: "xx==" or "xxx=" */
        if (v[2] == 64) {
            if (!last || v[3] != 64) return false;
            if (v[1] & 0x0f) return false; /* non-canonical: stray bits in the padding */
            out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
            break;
        }
        if (v[2] > 63) return false;
        if (v[3] == 64) {
            if (!last) return false;
            if (v[2] & 0x03) return false;
            out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
            out[o++] = (unsigned char)(v[1] << 4 | v[2] >> 2);
            break;
        }
        if (v[3] > 63) return false;
        out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        out[o++] = (unsigned char)(v[1] << 4 | v[2] >> 2);
        out[o++] = (unsigned char)(v[2] << 6 | v[3]);
    }
    *n = o;
    return true;
}

static int fail(char *err, size_t err_size, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (err && err_size) vsnprintf(err, err_size, fmt, ap);
    va_end(ap);
    return status;
}

int srv_data_uri_decode(const char *uri, size_t len, size_t max_bytes, unsigned char **data, size_t *size, char *err,
                        size_t err_size) {
    *data = NULL;
    *size = 0;
    if (len < 5 || strncmp(uri, "data:", 5) != 0) return fail(err, err_size, 400, "not a data: URI");
    const char *comma = memchr(uri, ',', len);
    if (!comma) return fail(err, err_size, 400, "data: URI without a comma");
    size_t head = (size_t)(comma - uri); /* "data:image/png;base64" */
    if (head < 5 + 6 || strncasecmp(uri + 5, "image/", 6) != 0)
        return fail(err, err_size, 400, "data: URI is not an image/* media type");
    if (head < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
        return fail(err, err_size, 400, "data: URI is not base64-encoded (;base64, expected)");
    const char *b = comma + 1;
    size_t blen = len - head - 1;
    if (blen == 0) return fail(err, err_size, 400, "data: URI has no data");
    size_t cap = blen / 4 * 3;
    if (cap > max_bytes + 2)
        return fail(err, err_size, 413, "image of about %zu bytes is over the limit of %zu bytes", cap, max_bytes);
    unsigned char *buf = malloc(cap ? cap : 1);
    if (!buf) return fail(err, err_size, 500, "out of memory for an image");
    size_t n = 0;
    if (!srv_base64_decode(b, blen, buf, &n)) {
        free(buf);
        return fail(err, err_size, 400, "data: URI has invalid base64");
    }
    if (n > max_bytes) {
        free(buf);
        return fail(err, err_size, 413, "image of %zu bytes is over the limit of %zu bytes", n, max_bytes);
    }
    *data = buf;
    *size = n;
    return 0;
}

/* file:///abs/path, only inside allow_dir after resolving symlinks. */
static int file_uri_read(const char *uri, const srv_limits *lim, unsigned char **data, size_t *size, char *err,
                         size_t err_size) {
    *data = NULL;
    *size = 0;
    if (!lim->allow_dir)
        return fail(err, err_size, 400, "file:// image URLs are disabled (start the server with --allow-local-files DIR)");
    const char *path = uri + 7;
    if (path[0] != '/') return fail(err, err_size, 400, "file:// URL needs an absolute path (file:///...)");
    char real[PATH_MAX];
    if (!realpath(path, real)) return fail(err, err_size, 400, "file:// image not found or not readable");
    size_t dl = strlen(lim->allow_dir);
    bool inside = strncmp(real, lim->allow_dir, dl) == 0 && (real[dl] == '/' || (dl == 1 && lim->allow_dir[0] == '/'));
    if (!inside) return fail(err, err_size, 400, "file:// image is outside the --allow-local-files folder");
    int fd = open(real, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return fail(err, err_size, 400, "file:// image cannot be opened");
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(err, err_size, 400, "file:// image is not a regular file");
    }
    if ((uint64_t)st.st_size > (uint64_t)lim->max_image_bytes || st.st_size == 0) {
        close(fd);
        return fail(err, err_size, st.st_size ? 413 : 400, "file:// image of %lld bytes is empty or over the limit of %zu",
                    (long long)st.st_size, lim->max_image_bytes);
    }
    size_t n = (size_t)st.st_size, got = 0;
    unsigned char *buf = malloc(n);
    if (!buf) {
        close(fd);
        return fail(err, err_size, 500, "out of memory for an image");
    }
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (got != n) {
        free(buf);
        return fail(err, err_size, 400, "file:// image could not be read whole");
    }
    *data = buf;
    *size = n;
    return 0;
}

/* ---------------------------------------------------------------- parsing */

static int json_depth(const cJSON *j, int limit, int d) {
    if (d > limit) return d;
    int m = d;
    for (const cJSON *c = j->child; c; c = c->next) {
        int cd = json_depth(c, limit, d + 1);
        if (cd > m) m = cd;
        if (m > limit) break;
    }
    return m;
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

typedef struct parse_ctx {
    const srv_limits *lim;
    srv_request *r;
    size_t text_bytes;
    char *err;
    size_t err_size;
    const char **param;
} parse_ctx;

static int add_part(parse_ctx *c, srv_message *m, srv_part p) {
    srv_part *np = realloc(m->parts, (size_t)(m->n_parts + 1) * sizeof *np);
    if (!np) {
        free(p.text);
        free(p.data);
        return fail(c->err, c->err_size, 500, "out of memory");
    }
    m->parts = np;
    m->parts[m->n_parts++] = p;
    return 0;
}

static int add_text_part(parse_ctx *c, srv_message *m, const char *s, const char *what) {
    size_t n = strlen(s);
    if (n > c->lim->max_text_bytes || c->text_bytes + n > c->lim->max_text_bytes) {
        if (c->param) *c->param = what;
        return fail(c->err, c->err_size, 413, "the request's text is over the limit of %zu bytes",
                    c->lim->max_text_bytes);
    }
    c->text_bytes += n;
    srv_part p = {SRV_PART_TEXT, dup_n(s, n), n, NULL, 0};
    if (!p.text) return fail(c->err, c->err_size, 500, "out of memory");
    return add_part(c, m, p);
}

static int add_image_part(parse_ctx *c, srv_message *m, const cJSON *part, int mi, int pi) {
    if (c->param) *c->param = "messages";
    if (m->role != SRV_ROLE_USER)
        return fail(c->err, c->err_size, 400, "messages[%d]: only user messages may contain images", mi);
    const cJSON *iu = cJSON_GetObjectItemCaseSensitive(part, "image_url");
    const cJSON *url = cJSON_IsObject(iu) ? cJSON_GetObjectItemCaseSensitive(iu, "url") : iu;
    if (!cJSON_IsString(url) || !url->valuestring)
        return fail(c->err, c->err_size, 400, "messages[%d].content[%d].image_url.url must be a string", mi, pi);
    if (c->r->n_images >= c->lim->max_images)
        return fail(c->err, c->err_size, 413, "more than %d images in one request", c->lim->max_images);
    const char *u = url->valuestring;
    size_t ul = strlen(u);
    srv_part p = {SRV_PART_IMAGE, NULL, 0, NULL, 0};
    int st;
    char sub[200];
    if (ul >= 5 && strncmp(u, "data:", 5) == 0)
        st = srv_data_uri_decode(u, ul, c->lim->max_image_bytes, &p.data, &p.size, sub, sizeof sub);
    else if (ul >= 7 && strncmp(u, "file://", 7) == 0)
        st = file_uri_read(u, c->lim, &p.data, &p.size, sub, sizeof sub);
    else
        st = fail(sub, sizeof sub, 400, "only data:image/...;base64, URIs%s are accepted (no network fetches)",
                  c->lim->allow_dir ? " and file:// URLs" : "");
    if (st) return fail(c->err, c->err_size, st, "messages[%d].content[%d]: %s", mi, pi, sub);
    c->r->n_images++;
    return add_part(c, m, p);
}

static int parse_message(parse_ctx *c, const cJSON *jm, int mi) {
    if (c->param) *c->param = "messages";
    if (!cJSON_IsObject(jm)) return fail(c->err, c->err_size, 400, "messages[%d] must be an object", mi);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(jm, "role");
    if (!cJSON_IsString(role)) return fail(c->err, c->err_size, 400, "messages[%d].role must be a string", mi);
    srv_message *m = &c->r->msgs[c->r->n_msgs];
    memset(m, 0, sizeof *m);
    const char *rs = role->valuestring;
    if (!strcmp(rs, "system") || !strcmp(rs, "developer")) m->role = SRV_ROLE_SYSTEM;
    else if (!strcmp(rs, "user")) m->role = SRV_ROLE_USER;
    else if (!strcmp(rs, "assistant")) m->role = SRV_ROLE_ASSISTANT;
    else
        return fail(c->err, c->err_size, 400, "messages[%d].role \"%.40s\" is not system, user or assistant", mi, rs);
    c->r->n_msgs++; /* counted now so that srv_request_free frees its parts */
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(jm, "content");
    if (cJSON_IsString(content)) return add_text_part(c, m, content->valuestring, "messages");
    if (cJSON_IsNull(content) || !content) {
        if (m->role == SRV_ROLE_ASSISTANT) return 0; /* an assistant turn with no text */
        return fail(c->err, c->err_size, 400, "messages[%d].content is missing", mi);
    }
    if (!cJSON_IsArray(content))
        return fail(c->err, c->err_size, 400, "messages[%d].content must be a string or an array of parts", mi);
    int pi = 0;
    for (const cJSON *part = content->child; part; part = part->next, pi++) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        if (!cJSON_IsObject(part) || !cJSON_IsString(type))
            return fail(c->err, c->err_size, 400, "messages[%d].content[%d] needs a string \"type\"", mi, pi);
        int st;
        if (!strcmp(type->valuestring, "text")) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(t))
                return fail(c->err, c->err_size, 400, "messages[%d].content[%d].text must be a string", mi, pi);
            st = add_text_part(c, m, t->valuestring, "messages");
        } else if (!strcmp(type->valuestring, "image_url")) {
            st = add_image_part(c, m, part, mi, pi);
        } else {
            st = fail(c->err, c->err_size, 400, "messages[%d].content[%d].type \"%.40s\" is not text or image_url", mi,
                      pi, type->valuestring);
        }
        if (st) return st;
    }
    return 0;
}

static int get_number(parse_ctx *c, const cJSON *root, const char *key, double lo, double hi, bool *has, double *v) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!j || cJSON_IsNull(j)) return 0;
    if (c->param) *c->param = key;
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble < lo || j->valuedouble > hi)
        return fail(c->err, c->err_size, 400, "%s must be a number in [%g, %g]", key, lo, hi);
    *has = true;
    *v = j->valuedouble;
    return 0;
}

static int parse_fields(parse_ctx *c, const cJSON *root) {
    srv_request *r = c->r;
    double v;
    bool has = false;
    int st;
    const char *keys[2] = {"max_completion_tokens", "max_tokens"};
    for (int i = 0; i < 2 && !r->has_max_tokens; i++) {
        if ((st = get_number(c, root, keys[i], 1, 1e9, &has, &v))) return st;
        if (has) {
            if (v != floor(v)) return fail(c->err, c->err_size, 400, "%s must be an integer", keys[i]);
            r->has_max_tokens = true;
            r->max_tokens = (long)v;
        }
    }
    if ((st = get_number(c, root, "temperature", 0, 2, &r->has_temperature, &r->temperature))) return st;
    if ((st = get_number(c, root, "top_p", 0, 1, &r->has_top_p, &r->top_p))) return st;
    if (r->has_top_p && r->top_p <= 0) return fail(c->err, c->err_size, 400, "top_p must be greater than 0");
    has = false;
    if ((st = get_number(c, root, "seed", -9.2e18, 1.8e19, &has, &v))) return st;
    if (has) {
        if (v != floor(v)) return fail(c->err, c->err_size, 400, "seed must be an integer");
        r->has_seed = true;
        r->seed = v < 0 ? (uint64_t)(int64_t)v : (uint64_t)v;
    }
    has = false;
    if ((st = get_number(c, root, "n", 1, 1, &has, &v))) {
        return fail(c->err, c->err_size, 400, "only n = 1 is supported");
    }
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (j && !cJSON_IsNull(j)) {
        if (!cJSON_IsBool(j)) return fail(c->err, c->err_size, 400, "stream must be true or false");
        r->stream = cJSON_IsTrue(j);
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (cJSON_IsObject(j)) r->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "include_usage"));
    j = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsString(j)) r->model = dup_n(j->valuestring, strnlen(j->valuestring, 256));
    j = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (j && !cJSON_IsNull(j)) {
        if (c->param) *c->param = "stop";
        const cJSON *one = cJSON_IsString(j) ? j : NULL;
        if (!one && (!cJSON_IsArray(j) || cJSON_GetArraySize(j) > SRV_MAX_STOP))
            return fail(c->err, c->err_size, 400, "stop must be a string or an array of up to %d strings",
                        SRV_MAX_STOP);
        for (const cJSON *s = one ? one : j->child; s; s = one ? NULL : s->next) {
            if (!cJSON_IsString(s) || !s->valuestring[0] || strlen(s->valuestring) > 256)
                return fail(c->err, c->err_size, 400, "each stop string must be 1 to 256 bytes");
            if (!(r->stop[r->n_stop] = dup_n(s->valuestring, strlen(s->valuestring))))
                return fail(c->err, c->err_size, 500, "out of memory");
            r->n_stop++;
        }
    }
    return 0;
}

int srv_request_parse(const char *body, size_t len, const srv_limits *lim, srv_request *out, char *err,
                      size_t err_size, const char **param) {
    memset(out, 0, sizeof *out);
    if (param) *param = NULL;
    if (!body || len == 0) return fail(err, err_size, 400, "the request body is empty (JSON expected)");
    /* cJSON strings are C strings: an escaped NUL would silently cut the text */
    for (size_t i = 0; i + 6 <= len; i++)
        if (body[i] == '\\' && body[i + 1] == 'u' && !memcmp(body + i + 2, "0000", 4))
            return fail(err, err_size, 400, "NUL characters (\\u0000) are not accepted");
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, false);
    if (!root) return fail(err, err_size, 400, "the request body is not valid JSON");
    int st = 0;
    parse_ctx c = {lim, out, 0, err, err_size, param};
    if (json_depth(root, lim->max_json_depth, 1) > lim->max_json_depth) {
        st = fail(err, err_size, 400, "the JSON body is nested deeper than %d levels", lim->max_json_depth);
        goto done;
    }
    if (!cJSON_IsObject(root)) {
        st = fail(err, err_size, 400, "the request body must be a JSON object");
        goto done;
    }
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    int nm = cJSON_IsArray(msgs) ? cJSON_GetArraySize(msgs) : -1;
    if (param) *param = "messages";
    if (nm < 1) {
        st = fail(err, err_size, 400, "messages must be a non-empty array");
        goto done;
    }
    if (nm > lim->max_messages) {
        st = fail(err, err_size, 413, "more than %d messages in one request", lim->max_messages);
        goto done;
    }
    out->msgs = calloc((size_t)nm, sizeof *out->msgs);
    if (!out->msgs) {
        st = fail(err, err_size, 500, "out of memory");
        goto done;
    }
    int mi = 0;
    for (const cJSON *jm = msgs->child; jm && !st; jm = jm->next, mi++) st = parse_message(&c, jm, mi);
    if (!st) st = parse_fields(&c, root);
done:
    cJSON_Delete(root);
    if (st) srv_request_free(out);
    return st;
}

void srv_request_free(srv_request *r) {
    if (!r) return;
    for (int i = 0; i < r->n_msgs; i++) {
        for (int k = 0; k < r->msgs[i].n_parts; k++) {
            free(r->msgs[i].parts[k].text);
            free(r->msgs[i].parts[k].data);
        }
        free(r->msgs[i].parts);
    }
    free(r->msgs);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->model);
    memset(r, 0, sizeof *r);
}

/* ---------------------------------------------------------------- hashing */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                   \
    do {                                                                                                           \
        v0 += v1, v1 = ROTL(v1, 13), v1 ^= v0, v0 = ROTL(v0, 32);                                                  \
        v2 += v3, v3 = ROTL(v3, 16), v3 ^= v2;                                                                     \
        v0 += v3, v3 = ROTL(v3, 21), v3 ^= v0;                                                                     \
        v2 += v1, v1 = ROTL(v1, 17), v1 ^= v2, v2 = ROTL(v2, 32);                                                  \
    } while (0)

static uint64_t le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* SipHash-2-4 (Aumasson and Bernstein); seed is mixed into the key so one
 * message hash can chain the previous one. */
uint64_t srv_siphash(const uint8_t key[16], const void *data, size_t len, uint64_t seed) {
    const uint8_t *in = data;
    uint64_t k0 = le64(key) ^ seed, k1 = le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = le64(in + i);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < (len & 7); i++) b |= (uint64_t)in[full + i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

void srv_request_hash_messages(srv_request *r, const uint8_t key[16]) {
    for (int i = 0; i < r->n_msgs; i++) {
        srv_message *m = &r->msgs[i];
        uint64_t h = srv_siphash(key, &m->role, sizeof m->role, 0x6d7367);
        for (int k = 0; k < m->n_parts; k++) {
            const srv_part *p = &m->parts[k];
            h = srv_siphash(key, &p->kind, sizeof p->kind, h);
            h = p->kind == SRV_PART_TEXT ? srv_siphash(key, p->text, p->len, h) : srv_siphash(key, p->data, p->size, h);
        }
        m->hash = h;
    }
}
