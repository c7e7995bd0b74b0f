/*
 * meta.c - the small public getters of issue 14 that need no session state:
 * the numeric version, finish-reason names, and the model's metadata rendered
 * as text (include/idefics.h, "integrators' API").
 *
 * Metadata values are read from the parsed container (idfx_reader.h), whose
 * open already checked that every value lies inside the file; rendering only
 * formats them. The model's key strings are copies owned by the file, so the
 * pointers handed out live as long as the model.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "idfx_format.h"
#include "idfx_reader.h"
#include "model.h"

uint32_t idefics_version(void) { return IDEFICS_VERSION_NUMBER; }

const char *idefics_finish_reason_str(idefics_finish_reason r) {
    switch (r) {
    case IDEFICS_FINISH_NONE: return "none";
    case IDEFICS_FINISH_STOP: return "stop";
    case IDEFICS_FINISH_LENGTH: return "length";
    case IDEFICS_FINISH_CONTEXT_FULL: return "context_full";
    case IDEFICS_FINISH_CANCELLED: return "cancelled";
    case IDEFICS_FINISH_CALLBACK: return "callback";
    }
    return "unknown";
}

int idefics_model_meta_count(const idefics_model *m) { return m ? (int)m->file.n_kv : 0; }

const char *idefics_model_meta_key(const idefics_model *m, int i) {
    if (!m || i < 0 || (uint32_t)i >= m->file.n_kv) return NULL;
    return m->file.kv[i].key;
}

/* A bounded writer that counts everything (snprintf semantics for the whole value). */
typedef struct out {
    char *buf;
    size_t size, len;
} out;

static void put(out *o, const char *s, size_t n) {
    if (o->buf && o->len < o->size) {
        size_t room = o->size - 1 - o->len, k = n < room ? n : room;
        memcpy(o->buf + o->len, s, k);
    }
    o->len += n;
}

static void putf(out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(out *o, const char *fmt, ...) {
    char t[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    if (n > 0) put(o, t, (size_t)n < sizeof t ? (size_t)n : sizeof t - 1);
}

/* One scalar of type t at p (its encoded bytes, already bounds-checked). */
static void put_scalar(out *o, int t, const uint8_t *p) {
    switch (t) {
    case IDFX_KV_U8: putf(o, "%u", (unsigned)p[0]); break;
    case IDFX_KV_BOOL: putf(o, "%s", p[0] ? "true" : "false"); break;
    case IDFX_KV_U32: putf(o, "%" PRIu32, idf_rd32(p)); break;
    case IDFX_KV_I32: putf(o, "%" PRId32, (int32_t)idf_rd32(p)); break;
    case IDFX_KV_F32: {
        uint32_t bits = idf_rd32(p);
        float f;
        memcpy(&f, &bits, 4);
        putf(o, "%.9g", (double)f);
        break;
    }
    case IDFX_KV_U64: {
        putf(o, "%" PRIu64, idf_rd64(p));
        break;
    }
    default: put(o, "?", 1); break;
    }
}

/* A string inside an array, as a JSON string. */
static void put_json_str(out *o, const char *s, uint32_t n) {
    put(o, "\"", 1);
    for (uint32_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            put(o, e, 2);
        } else if (c < 0x20) {
            putf(o, "\\u%04x", c);
        } else {
            put(o, (const char *)&c, 1);
        }
    }
    put(o, "\"", 1);
}

static size_t scalar_size(int t) { return t == IDFX_KV_U64 ? 8 : t <= IDFX_KV_BOOL ? 1 : 4; }

idefics_status idefics_model_meta(const idefics_model *m, const char *key, char *buf, size_t size, size_t *len) {
    if (!m) return IDEFICS_ERR_INVALID_ARG;
    /* the model's error text, as idefics_tokenize keeps it (one place to change
     * when that becomes per thread: issue-faults' idf_model_err) */
    idf_err *err = (idf_err *)&m->err;
    idf_err_clear(err);
    if (!key || (size > 0 && !buf))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_model_meta: need a key, and buf when size > 0");
    const idfx_kv *kv = idfx_find_kv(&m->file, key);
    if (!kv) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_model_meta: no metadata key \"%s\"", key);
    out o = {buf, size, 0};
    if (kv->type == IDFX_KV_STR) {
        put(&o, (const char *)kv->value, (size_t)kv->count);
    } else if (kv->type == IDFX_KV_ARR) {
        put(&o, "[", 1);
        if (kv->elem_type == IDFX_KV_STR) {
            uint64_t pos = 0;
            const char *s;
            uint32_t n;
            for (uint64_t i = 0; idfx_arr_next_str(kv, &pos, &s, &n); i++) {
                if (i) put(&o, ", ", 2);
                put_json_str(&o, s, n);
            }
        } else {
            size_t es = scalar_size(kv->elem_type);
            for (uint64_t i = 0; i < kv->count; i++) {
                if (i) put(&o, ", ", 2);
                put_scalar(&o, kv->elem_type, kv->value + i * es);
            }
        }
        put(&o, "]", 1);
    } else {
        put_scalar(&o, kv->type, kv->value);
    }
    if (buf && size > 0) buf[o.len < size ? o.len : size - 1] = '\0';
    if (len) *len = o.len;
    return IDEFICS_OK;
}
