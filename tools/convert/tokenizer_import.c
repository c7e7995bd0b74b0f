/*
 * tokenizer_import.c - tokenizer.json / tokenizer.model -> idf_tok_vocab ->
 * tokenizer.* metadata keys (tokenizer_import.h).
 *
 * tokenizer.json is parsed with cJSON. Only what reproduces the legacy LLaMA
 * pipeline is accepted: a BPE model, a normaliser made of Prepend("▁") and
 * Replace(" " -> "▁") or a non-splitting Metaspace pre-tokenizer; anything
 * else would tokenize differently at run time, so it is rejected by name.
 *
 * tokenizer.model is a SentencePiece ModelProto, decoded here by hand from the
 * protobuf wire format (no protobuf dependency for one message type):
 *   ModelProto     1: repeated SentencePiece, 2: TrainerSpec, 3: NormalizerSpec
 *   SentencePiece  1: piece (bytes), 2: score (fixed32 float), 3: type (enum, default NORMAL)
 *   TrainerSpec    3: model_type (BPE = 2), 24: treat_whitespace_as_suffix,
 *                  35: byte_fallback, 40..43: unk/bos/eos/pad id (int32)
 *   NormalizerSpec 3: add_dummy_prefix (default true)
 * The bytes are untrusted: every length is checked against the remaining input.
 */
#include "tokenizer_import.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idfx_format.h"
#include "platform.h"
#include "idfx_keys.h"

#define IMP_MAX_VOCAB  (1u << 24)
#define IMP_MAX_MERGES (1u << 24)
#define IMP_MAX_PIECE  65536u
#define IMP_MAX_FILE   (1ull << 31) /* 2 GiB: far above any tokenizer file */

static const char SPACE_MARK[] = "\xE2\x96\x81"; /* U+2581 "▁" */

static int fail(char *err, size_t errsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errsz, const char *fmt, ...) {
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------ owned vocab */

void idf_tok_vocab_owned_free(idf_tok_vocab_owned *o) {
    if (!o)
        return;
    for (uint32_t i = 0; i < o->v.n_vocab; i++)
        free(o->pieces[i]);
    for (uint32_t i = 0; i < o->v.n_merges; i++)
        free(o->merges[i]);
    free(o->pieces);
    free(o->piece_lens);
    free(o->scores);
    free(o->types);
    free(o->merges);
    free(o->merge_lens);
    memset(o, 0, sizeof *o);
}

static void sync_view(idf_tok_vocab_owned *o) {
    o->v.pieces = (const char **)o->pieces;
    o->v.piece_lens = o->piece_lens;
    o->v.scores = o->scores;
    o->v.types = o->types;
    o->v.merges = (const char **)o->merges;
    o->v.merge_lens = o->merge_lens;
}

static int reserve_pieces(idf_tok_vocab_owned *o, uint32_t n) {
    if (n <= o->cap)
        return 0;
    if (n > IMP_MAX_VOCAB)
        return -1;
    uint32_t cap = o->cap ? o->cap : 256;
    while (cap < n)
        cap *= 2;
    char **p = realloc(o->pieces, cap * sizeof *p);
    if (p)
        o->pieces = p;
    uint32_t *l = realloc(o->piece_lens, cap * sizeof *l);
    if (l)
        o->piece_lens = l;
    float *s = realloc(o->scores, cap * sizeof *s);
    if (s)
        o->scores = s;
    uint32_t *t = realloc(o->types, cap * sizeof *t);
    if (t)
        o->types = t;
    if (!p || !l || !s || !t)
        return -1;
    o->cap = cap;
    sync_view(o);
    return 0;
}

static int push_piece(idf_tok_vocab_owned *o, const char *s, size_t n, float score, uint32_t type) {
    if (reserve_pieces(o, o->v.n_vocab + 1) != 0)
        return -1;
    char *c = malloc(n + 1);
    if (!c)
        return -1;
    memcpy(c, s, n);
    c[n] = '\0';
    uint32_t i = o->v.n_vocab++;
    o->pieces[i] = c;
    o->piece_lens[i] = (uint32_t)n;
    o->scores[i] = score;
    o->types[i] = type;
    return 0;
}

static int push_merge(idf_tok_vocab_owned *o, const char *l, size_t ln, const char *r, size_t rn) {
    if (o->v.n_merges >= o->merge_cap) {
        uint32_t cap = o->merge_cap ? o->merge_cap * 2 : 1024;
        char **m = realloc(o->merges, cap * sizeof *m);
        if (m)
            o->merges = m;
        uint32_t *ml = realloc(o->merge_lens, cap * sizeof *ml);
        if (ml)
            o->merge_lens = ml;
        if (!m || !ml)
            return -1;
        o->merge_cap = cap;
    }
    char *c = malloc(ln + rn + 2);
    if (!c)
        return -1;
    memcpy(c, l, ln);
    c[ln] = ' ';
    memcpy(c + ln + 1, r, rn);
    c[ln + 1 + rn] = '\0';
    o->merges[o->v.n_merges] = c;
    o->merge_lens[o->v.n_merges] = (uint32_t)(ln + 1 + rn);
    o->v.n_merges++;
    sync_view(o);
    return 0;
}

int idf_tok_vocab_add_token(idf_tok_vocab_owned *o, const char *content, uint32_t type, char *err, size_t errsz) {
    if (!o || !content || !content[0])
        return fail(err, errsz, "added token: empty content");
    if (type < IDFX_TOKEN_NORMAL || type > IDFX_TOKEN_BYTE)
        return fail(err, errsz, "added token \"%s\": unknown type %u", content, type);
    if (push_piece(o, content, strlen(content), 0.0f, type) != 0)
        return fail(err, errsz, "added token \"%s\": out of memory or vocabulary too large", content);
    return 0;
}

/* Id of the piece equal to s, or -1 (linear: used for a handful of names). */
static int32_t find_linear(const idf_tok_vocab_owned *o, const char *s) {
    size_t n = strlen(s);
    for (uint32_t i = 0; i < o->v.n_vocab; i++)
        if (o->piece_lens[i] == n && memcmp(o->pieces[i], s, n) == 0)
            return (int32_t)i;
    return -1;
}

static bool is_byte_piece(const char *s, size_t n) {
    static const char hex[] = "0123456789ABCDEFabcdef";
    return n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>' && s[3] && s[4] && strchr(hex, s[3]) &&
           strchr(hex, s[4]);
}

/* ------------------------------------------------------------------ files */

/* Read a whole file. Returns 0, 1 when it does not exist, -1 on error. */
static int read_file(const char *path, char **data, size_t *size, char *err, size_t errsz) {
    *data = NULL;
    *size = 0;
    int oe = 0;
    FILE *f = idf_fopen_regular(path, &oe); /* regular files only: a FIFO would block */
    if (!f) {
        if (oe == ENOENT)
            return 1;
        return fail(err, errsz, "%s: %s", path, idf_open_strerror(oe));
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= IMP_MAX_FILE) {
                free(buf);
                fclose(f);
                return fail(err, errsz, "%s: larger than %llu bytes", path, (unsigned long long)IMP_MAX_FILE);
            }
            cap = cap ? cap * 2 : 1 << 16;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return fail(err, errsz, "%s: out of memory", path);
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return fail(err, errsz, "%s: read error", path);
    }
    buf[n] = '\0';
    *data = buf;
    *size = n;
    return 0;
}

static char *path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p)
        return NULL;
    memcpy(p, dir, a);
    size_t n = a;
    if (n && p[n - 1] != '/')
        p[n++] = '/';
    memcpy(p + n, name, b + 1);
    return p;
}

static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        return strdup(".");
    size_t n = (size_t)(slash - path);
    char *d = malloc(n + 2);
    if (!d)
        return NULL;
    if (n == 0)
        n = 1; /* "/file" */
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

/* Parse dir/name as JSON; *out = NULL when the file is absent. */
static int load_json(const char *dir, const char *name, cJSON **out, char *err, size_t errsz) {
    *out = NULL;
    char *path = path_join(dir, name), *data;
    size_t size;
    if (!path)
        return fail(err, errsz, "out of memory");
    int r = read_file(path, &data, &size, err, errsz);
    if (r != 0) {
        free(path);
        return r > 0 ? 0 : -1;
    }
    const char *end = NULL;
    *out = cJSON_ParseWithLengthOpts(data, size, &end, false);
    if (!*out) {
        size_t at = end ? (size_t)(end - data) : 0;
        free(data);
        r = fail(err, errsz, "%s: invalid JSON near byte %zu", path, at);
        free(path);
        return r;
    }
    free(data);
    free(path);
    return 0;
}

/* A token given as "text", {"content": "text", ...} or null. */
static const char *token_text(const cJSON *item) {
    if (cJSON_IsString(item))
        return item->valuestring;
    if (cJSON_IsObject(item)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(item, "content");
        if (cJSON_IsString(c))
            return c->valuestring;
    }
    return NULL;
}

/* ----------------------------------------------------- tokenizer.model (protobuf) */

typedef struct pbuf {
    const uint8_t *p, *end;
} pbuf;

static bool pb_varint(pbuf *b, uint64_t *v) {
    uint64_t r = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p >= b->end)
            return false;
        uint8_t c = *b->p++;
        r |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *v = r;
            return true;
        }
    }
    return false; /* more than 10 bytes */
}

/* Next field of a message: 1 = got one, 0 = end of message, -1 = malformed.
 * Length-delimited fields come back in *sub, the others in *val. */
static int pb_next(pbuf *b, uint32_t *field, uint32_t *wire, uint64_t *val, pbuf *sub) {
    if (b->p >= b->end)
        return 0;
    uint64_t key;
    if (!pb_varint(b, &key))
        return -1;
    if ((key >> 3) == 0 || (key >> 3) > 0x1FFFFFFF)
        return -1;
    *field = (uint32_t)(key >> 3);
    *wire = (uint32_t)(key & 7);
    switch (*wire) {
    case 0:
        return pb_varint(b, val) ? 1 : -1;
    case 1:
        if (b->end - b->p < 8)
            return -1;
        *val = 0;
        for (int i = 7; i >= 0; i--)
            *val = (*val << 8) | b->p[i];
        b->p += 8;
        return 1;
    case 2: {
        uint64_t len;
        if (!pb_varint(b, &len) || len > (uint64_t)(b->end - b->p))
            return -1;
        sub->p = b->p;
        sub->end = b->p + len;
        b->p += len;
        return 1;
    }
    case 5:
        if (b->end - b->p < 4)
            return -1;
        *val = (uint64_t)b->p[0] | (uint64_t)b->p[1] << 8 | (uint64_t)b->p[2] << 16 | (uint64_t)b->p[3] << 24;
        b->p += 4;
        return 1;
    default:
        return -1; /* groups (3, 4) are not used by sentencepiece.proto */
    }
}

typedef struct spm_info {
    uint64_t model_type;
    bool byte_fallback, suffix_ws, add_dummy_prefix;
    int32_t unk_id, bos_id, eos_id, pad_id;
} spm_info;

static int spm_piece(pbuf m, idf_tok_vocab_owned *o, char *err, size_t errsz) {
    const uint8_t *piece = NULL;
    size_t len = 0;
    float score = 0.0f;
    uint64_t type = IDFX_TOKEN_NORMAL, val = 0;
    uint32_t field, wire, idx = o->v.n_vocab;
    pbuf sub;
    int r;
    while ((r = pb_next(&m, &field, &wire, &val, &sub)) > 0) {
        if (field == 1) {
            if (wire != 2)
                return fail(err, errsz, "tokenizer.model: piece %u: field 'piece' has wire type %u", idx, wire);
            piece = sub.p;
            len = (size_t)(sub.end - sub.p);
        } else if (field == 2) {
            if (wire != 5)
                return fail(err, errsz, "tokenizer.model: piece %u: field 'score' has wire type %u", idx, wire);
            uint32_t bits = (uint32_t)val;
            memcpy(&score, &bits, 4);
        } else if (field == 3) {
            if (wire != 0)
                return fail(err, errsz, "tokenizer.model: piece %u: field 'type' has wire type %u", idx, wire);
            type = val;
        }
    }
    if (r < 0)
        return fail(err, errsz, "tokenizer.model: piece %u: truncated or malformed protobuf", idx);
    if (!piece || len == 0)
        return fail(err, errsz, "tokenizer.model: piece %u: empty or missing 'piece'", idx);
    if (len > IMP_MAX_PIECE)
        return fail(err, errsz, "tokenizer.model: piece %u: %zu bytes long", idx, len);
    if (!isfinite(score))
        return fail(err, errsz, "tokenizer.model: piece %u: score is not finite", idx);
    if (type < IDFX_TOKEN_NORMAL || type > IDFX_TOKEN_BYTE)
        return fail(err, errsz, "tokenizer.model: piece %u: unknown type %llu", idx, (unsigned long long)type);
    if (idx >= IMP_MAX_VOCAB)
        return fail(err, errsz, "tokenizer.model: more than %u pieces", IMP_MAX_VOCAB);
    if (push_piece(o, (const char *)piece, len, score, (uint32_t)type) != 0)
        return fail(err, errsz, "tokenizer.model: out of memory at piece %u", idx);
    return 0;
}

static int spm_spec(pbuf m, bool trainer, spm_info *info, char *err, size_t errsz) {
    const char *what = trainer ? "trainer_spec" : "normalizer_spec";
    uint32_t field, wire;
    uint64_t val = 0;
    pbuf sub;
    int r;
    while ((r = pb_next(&m, &field, &wire, &val, &sub)) > 0) {
        bool known = trainer ? (field == 3 || field == 24 || field == 35 || (field >= 40 && field <= 43)) : field == 3;
        if (!known)
            continue;
        if (wire != 0)
            return fail(err, errsz, "tokenizer.model: %s field %u has wire type %u", what, field, wire);
        if (!trainer) {
            info->add_dummy_prefix = val != 0;
            continue;
        }
        switch (field) {
        case 3:
            info->model_type = val;
            break;
        case 24:
            info->suffix_ws = val != 0;
            break;
        case 35:
            info->byte_fallback = val != 0;
            break;
        case 40:
            info->unk_id = (int32_t)(uint32_t)val;
            break; /* int32 varints carry negatives in 64 bits */
        case 41:
            info->bos_id = (int32_t)(uint32_t)val;
            break;
        case 42:
            info->eos_id = (int32_t)(uint32_t)val;
            break;
        case 43:
            info->pad_id = (int32_t)(uint32_t)val;
            break;
        }
    }
    if (r < 0)
        return fail(err, errsz, "tokenizer.model: %s: truncated or malformed protobuf", what);
    return 0;
}

/* Fill the special ids from the trainer spec (ids outside the vocabulary mean
 * "none": -1 is the protobuf default for pad). */
static int spm_parse(const uint8_t *data, size_t size, idf_tok_vocab_owned *out, spm_info *info, char *err,
                     size_t errsz) {
    memset(out, 0, sizeof *out);
    *info = (spm_info){.model_type = 1, .add_dummy_prefix = true, .unk_id = 0, .bos_id = 1, .eos_id = 2, .pad_id = -1};
    if (!data || size == 0)
        return fail(err, errsz, "tokenizer.model: empty file");
    pbuf b = {data, data + size}, sub;
    uint32_t field, wire;
    uint64_t val;
    int r;
    while ((r = pb_next(&b, &field, &wire, &val, &sub)) > 0) {
        if (field < 1 || field > 3)
            continue;
        if (wire != 2) {
            idf_tok_vocab_owned_free(out);
            return fail(err, errsz, "tokenizer.model: top-level field %u has wire type %u (not a ModelProto?)", field,
                        wire);
        }
        int e = field == 1 ? spm_piece(sub, out, err, errsz) : spm_spec(sub, field == 2, info, err, errsz);
        if (e != 0) {
            idf_tok_vocab_owned_free(out);
            return -1;
        }
    }
    if (r < 0) {
        idf_tok_vocab_owned_free(out);
        return fail(err, errsz, "tokenizer.model: truncated or malformed protobuf at byte %zu of %zu",
                    (size_t)(b.p - data), size);
    }
    const char *why = NULL;
    if (out->v.n_vocab == 0)
        why = "no pieces";
    else if (info->model_type != 2)
        why = "trainer_spec.model_type is not BPE (only LLaMA-style BPE is supported)";
    else if (info->suffix_ws)
        why = "trainer_spec.treat_whitespace_as_suffix is not supported";
    if (why) {
        idf_tok_vocab_owned_free(out);
        return fail(err, errsz, "tokenizer.model: %s", why);
    }
    out->v.add_dummy_prefix = info->add_dummy_prefix;
    return 0;
}

int idf_tokenizer_parse_spm(const uint8_t *data, size_t size, idf_tok_vocab_owned *out, char *err, size_t errsz) {
    spm_info info;
    if (spm_parse(data, size, out, &info, err, errsz) != 0)
        return -1;
    uint32_t n = out->v.n_vocab;
    const int32_t ids[3] = {info.unk_id, info.bos_id, info.eos_id};
    const char *names[3] = {"unk_id", "bos_id", "eos_id"};
    for (int i = 0; i < 3; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= n) {
            int e =
                fail(err, errsz, "tokenizer.model: trainer_spec.%s %d is outside the %u pieces", names[i], ids[i], n);
            idf_tok_vocab_owned_free(out);
            return e;
        }
    }
    out->v.unk_id = (uint32_t)info.unk_id;
    out->v.bos_id = (uint32_t)info.bos_id;
    out->v.eos_id = (uint32_t)info.eos_id;
    /* No pad piece (LLaMA: -1): pad with <unk>, as IDEFICS's config does (pad_token_id 0). */
    out->v.pad_id = (info.pad_id >= 0 && (uint32_t)info.pad_id < n) ? (uint32_t)info.pad_id : out->v.unk_id;
    return 0;
}

/* ------------------------------------------------------ tokenizer.json (cJSON) */

typedef struct prefix_flags {
    bool prefix, replace;
} prefix_flags;

static int check_normalizer(const cJSON *n, prefix_flags *pf, char *err, size_t errsz) {
    if (!n || cJSON_IsNull(n))
        return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(n, "type");
    if (!cJSON_IsString(type))
        return fail(err, errsz, "tokenizer.json: normalizer without a type");
    const char *t = type->valuestring;
    if (!strcmp(t, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers"), *it;
        if (!cJSON_IsArray(list))
            return fail(err, errsz, "tokenizer.json: normalizer Sequence without 'normalizers'");
        cJSON_ArrayForEach(it, list) if (check_normalizer(it, pf, err, errsz) != 0) return -1;
        return 0;
    }
    if (!strcmp(t, "Prepend")) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
        if (!cJSON_IsString(p) || strcmp(p->valuestring, SPACE_MARK) != 0)
            return fail(err, errsz, "tokenizer.json: normalizer Prepend of something other than \"\xE2\x96\x81\"");
        pf->prefix = true;
        return 0;
    }
    if (!strcmp(t, "Replace")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(pat, "String");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(n, "content");
        if (!cJSON_IsString(s) || strcmp(s->valuestring, " ") != 0 || !cJSON_IsString(c) ||
            strcmp(c->valuestring, SPACE_MARK) != 0)
            return fail(err, errsz, "tokenizer.json: normalizer Replace other than \" \" -> \"\xE2\x96\x81\"");
        pf->replace = true;
        return 0;
    }
    return fail(err, errsz, "tokenizer.json: normalizer type \"%s\" is not supported", t);
}

static int check_pre_tokenizer(const cJSON *p, prefix_flags *pf, char *err, size_t errsz) {
    if (!p || cJSON_IsNull(p))
        return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "Metaspace") != 0)
        return fail(err, errsz, "tokenizer.json: pre_tokenizer type \"%s\" is not supported (LLaMA BPE has none)",
                    cJSON_IsString(type) ? type->valuestring : "?");
    const cJSON *rep = cJSON_GetObjectItemCaseSensitive(p, "replacement");
    const cJSON *split = cJSON_GetObjectItemCaseSensitive(p, "split");
    const cJSON *scheme = cJSON_GetObjectItemCaseSensitive(p, "prepend_scheme");
    const cJSON *aps = cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space");
    if (!cJSON_IsString(rep) || strcmp(rep->valuestring, SPACE_MARK) != 0)
        return fail(err, errsz, "tokenizer.json: pre_tokenizer Metaspace replacement is not \"\xE2\x96\x81\"");
    if (!cJSON_IsFalse(split))
        return fail(err, errsz, "tokenizer.json: pre_tokenizer Metaspace with split (word-level BPE) is not supported");
    pf->replace = true;
    if (cJSON_IsString(scheme)) {
        if (!strcmp(scheme->valuestring, "always"))
            pf->prefix = true;
        else if (strcmp(scheme->valuestring, "never") != 0)
            return fail(err, errsz,
                        "tokenizer.json: pre_tokenizer Metaspace prepend_scheme \"%s\" (non-legacy) is not "
                        "supported",
                        scheme->valuestring);
    } else if (cJSON_IsBool(aps)) {
        pf->prefix = cJSON_IsTrue(aps);
    }
    return 0;
}

static bool json_id(const cJSON *v, uint32_t *id) {
    if (!cJSON_IsNumber(v))
        return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < IMP_MAX_VOCAB) || d != floor(d))
        return false;
    *id = (uint32_t)d;
    return true;
}

static int cmp_bytes(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : (an < bn ? -1 : an > bn);
}

/* Sorted index over piece strings, for the merge-result lookups. qsort has no
 * context argument, so each element carries its own string pointer. */
typedef struct sort_item {
    const char *s;
    uint32_t n, id;
} sort_item;

static int cmp_item(const void *a, const void *b) {
    const sort_item *x = a, *y = b;
    int c = cmp_bytes(x->s, x->n, y->s, y->n);
    return c ? c : (x->id < y->id ? -1 : x->id > y->id);
}

static int32_t find_sorted(const sort_item *items, uint32_t n, const char *s, size_t len) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (cmp_bytes(items[mid].s, items[mid].n, s, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return (lo < n && cmp_bytes(items[lo].s, items[lo].n, s, len) == 0) ? (int32_t)items[lo].id : -1;
}

/* Scores for a vocabulary that has merges instead: the piece a merge of rank r
 * creates scores -r (first creating merge), other NORMAL pieces -(n_merges + id),
 * the rest 0. Merging by these scores then mirrors merging by rank. */
static int scores_from_merges(idf_tok_vocab_owned *o, char *err, size_t errsz) {
    uint32_t n = o->v.n_vocab;
    sort_item *items = malloc((size_t)n * sizeof *items);
    bool *done = calloc(n, 1);
    if (!items || !done) {
        free(items);
        free(done);
        return fail(err, errsz, "tokenizer.json: out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        items[i] = (sort_item){o->pieces[i], o->piece_lens[i], i};
        o->scores[i] = o->types[i] == IDFX_TOKEN_NORMAL ? -(float)((double)o->v.n_merges + i) : 0.0f;
    }
    qsort(items, n, sizeof *items, cmp_item);
    int rc = 0;
    for (uint32_t r = 0; r < o->v.n_merges; r++) {
        /* The result is the merge string without its separating space. */
        const char *m = o->merges[r];
        size_t ml = o->merge_lens[r];
        const char *sp = memchr(m, ' ', ml);
        char small[256], *cat = ml <= sizeof small ? small : malloc(ml);
        if (!cat || !sp) {
            rc = fail(err, errsz, "tokenizer.json: merges[%u]: out of memory", r);
            break;
        }
        size_t ln = (size_t)(sp - m);
        memcpy(cat, m, ln);
        memcpy(cat + ln, sp + 1, ml - ln - 1);
        int32_t id = find_sorted(items, n, cat, ml - 1);
        if (cat != small)
            free(cat);
        if (id < 0) {
            rc = fail(err, errsz, "tokenizer.json: merges[%u] \"%.60s\": merged piece not in the vocabulary", r, m);
            break;
        }
        if (!done[id]) {
            done[id] = true;
            o->scores[id] = -(float)r;
        }
    }
    free(items);
    free(done);
    return rc;
}

static int json_merges(const cJSON *merges, idf_tok_vocab_owned *o, char *err, size_t errsz) {
    if (!merges || cJSON_IsNull(merges))
        return 0;
    if (!cJSON_IsArray(merges))
        return fail(err, errsz, "tokenizer.json: model.merges is not an array");
    int count = cJSON_GetArraySize(merges);
    if (count < 0 || (uint32_t)count > IMP_MAX_MERGES)
        return fail(err, errsz, "tokenizer.json: model.merges has %d entries", count);
    uint32_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, merges) {
        const char *l, *r;
        size_t ln, rn;
        if (cJSON_IsString(m)) {
            /* "left right", exactly one space (as HF tokenizers requires). */
            const char *s = m->valuestring, *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == s || !sp[1])
                return fail(err, errsz, "tokenizer.json: model.merges[%u] \"%.60s\" is not \"left right\"", i, s);
            l = s;
            ln = (size_t)(sp - s);
            r = sp + 1;
            rn = strlen(r);
        } else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(cJSON_GetArrayItem(m, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(m, 1))) {
            l = cJSON_GetArrayItem(m, 0)->valuestring;
            r = cJSON_GetArrayItem(m, 1)->valuestring;
            ln = strlen(l);
            rn = strlen(r);
            if (ln == 0 || rn == 0 || memchr(l, ' ', ln))
                return fail(err, errsz, "tokenizer.json: model.merges[%u]: empty side or a space in the left piece", i);
        } else {
            return fail(err, errsz, "tokenizer.json: model.merges[%u] is neither \"a b\" nor [\"a\", \"b\"]", i);
        }
        if (push_merge(o, l, ln, r, rn) != 0)
            return fail(err, errsz, "tokenizer.json: out of memory at merge %u", i);
        i++;
    }
    return 0;
}

int idf_tokenizer_parse_json(const char *text, size_t len, idf_tok_vocab_owned *out, char *err, size_t errsz) {
    memset(out, 0, sizeof *out);
    const char *end = NULL;
    cJSON *root = text ? cJSON_ParseWithLengthOpts(text, len, &end, false) : NULL;
    if (!root)
        return fail(err, errsz, "tokenizer.json: invalid JSON near byte %zu", end && text ? (size_t)(end - text) : 0);
    int rc = -1;
    const char **slot = NULL; /* content of each id while collecting */
    uint32_t *slot_type = NULL;
    uint32_t n = 0;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    const cJSON *bf = cJSON_GetObjectItemCaseSensitive(model, "byte_fallback");
    const cJSON *ign = cJSON_GetObjectItemCaseSensitive(model, "ignore_merges");
    const cJSON *csp = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
    const cJSON *eow = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
    const cJSON *it;
    if (!cJSON_IsObject(model)) {
        fail(err, errsz, "tokenizer.json: no 'model' object");
        goto done;
    }
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") != 0) {
        fail(err, errsz, "tokenizer.json: model.type is \"%s\", not \"BPE\"",
             cJSON_IsString(type) ? type->valuestring : "?");
        goto done;
    }
    if (!cJSON_IsObject(vocab)) {
        fail(err, errsz, "tokenizer.json: model.vocab is not an object");
        goto done;
    }
    if (cJSON_IsTrue(ign) || (cJSON_IsString(csp) && csp->valuestring[0]) ||
        (cJSON_IsString(eow) && eow->valuestring[0])) {
        fail(err, errsz,
             "tokenizer.json: model.ignore_merges / continuing_subword_prefix / end_of_word_suffix are not "
             "supported");
        goto done;
    }
    if (added && !cJSON_IsArray(added) && !cJSON_IsNull(added)) {
        fail(err, errsz, "tokenizer.json: added_tokens is not an array");
        goto done;
    }
    prefix_flags pf = {false, false};
    if (check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &pf, err, errsz) != 0 ||
        check_pre_tokenizer(cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &pf, err, errsz) != 0)
        goto done;
    if (!pf.replace) {
        fail(err, errsz,
             "tokenizer.json: neither a Replace(\" \" -> \"\xE2\x96\x81\") normalizer nor a Metaspace "
             "pre_tokenizer: not a LLaMA tokenizer");
        goto done;
    }

    /* Size: the largest id of the vocabulary and the added tokens. */
    cJSON_ArrayForEach(it, vocab) {
        uint32_t id;
        if (!json_id(it, &id)) {
            fail(err, errsz, "tokenizer.json: model.vocab[\"%.60s\"] is not an id", it->string ? it->string : "");
            goto done;
        }
        if (id + 1 > n)
            n = id + 1;
    }
    if (cJSON_IsArray(added)) {
        cJSON_ArrayForEach(it, added) {
            uint32_t id;
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "content");
            if (!json_id(cJSON_GetObjectItemCaseSensitive(it, "id"), &id) || !cJSON_IsString(c) || !c->valuestring[0]) {
                fail(err, errsz, "tokenizer.json: an added_tokens entry lacks a valid id or content");
                goto done;
            }
            if (id + 1 > n)
                n = id + 1;
        }
    }
    if (n == 0) {
        fail(err, errsz, "tokenizer.json: empty vocabulary");
        goto done;
    }
    slot = calloc(n, sizeof *slot);
    slot_type = calloc(n, sizeof *slot_type);
    if (!slot || !slot_type) {
        fail(err, errsz, "tokenizer.json: out of memory for %u ids", n);
        goto done;
    }
    bool byte_fallback = cJSON_IsTrue(bf);
    const char *unk_name = cJSON_IsString(unk) ? unk->valuestring : NULL;
    cJSON_ArrayForEach(it, vocab) {
        uint32_t id = (uint32_t)it->valuedouble;
        const char *s = it->string ? it->string : "";
        if (!s[0]) {
            fail(err, errsz, "tokenizer.json: model.vocab has an empty piece (id %u)", id);
            goto done;
        }
        if (slot[id] && strcmp(slot[id], s) != 0) {
            fail(err, errsz, "tokenizer.json: id %u is both \"%.40s\" and \"%.40s\"", id, slot[id], s);
            goto done;
        }
        slot[id] = it->string;
        slot_type[id] = (unk_name && !strcmp(s, unk_name))               ? IDFX_TOKEN_UNKNOWN
                        : (byte_fallback && is_byte_piece(s, strlen(s))) ? IDFX_TOKEN_BYTE
                                                                         : IDFX_TOKEN_NORMAL;
    }
    if (cJSON_IsArray(added)) {
        cJSON_ArrayForEach(it, added) {
            uint32_t id = (uint32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
            const char *s = cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring;
            if (slot[id] && strcmp(slot[id], s) != 0) {
                fail(err, errsz, "tokenizer.json: added token id %u \"%.40s\" is already \"%.40s\"", id, s, slot[id]);
                goto done;
            }
            slot[id] = s;
            bool special = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "special"));
            slot_type[id] = (unk_name && !strcmp(s, unk_name)) ? IDFX_TOKEN_UNKNOWN
                            : special                          ? IDFX_TOKEN_CONTROL
                                                               : IDFX_TOKEN_USER_DEFINED;
        }
    }
    for (uint32_t id = 0; id < n; id++) {
        if (!slot[id]) {
            fail(err, errsz, "tokenizer.json: token id %u is missing (ids must be 0..%u without holes)", id, n - 1);
            goto done;
        }
        if (push_piece(out, slot[id], strlen(slot[id]), 0.0f, slot_type[id]) != 0) {
            fail(err, errsz, "tokenizer.json: out of memory");
            goto done;
        }
    }
    if (json_merges(cJSON_GetObjectItemCaseSensitive(model, "merges"), out, err, errsz) != 0)
        goto done;
    if (out->v.n_merges == 0) {
        /* A BPE without merges cannot merge anything; scores alone would not say how. */
        fail(err, errsz, "tokenizer.json: model.merges is empty");
        goto done;
    }
    if (scores_from_merges(out, err, errsz) != 0)
        goto done;
    out->v.add_dummy_prefix = pf.prefix;
    /* Defaults; the side files may name other tokens. */
    int32_t u = unk_name ? find_linear(out, unk_name) : find_linear(out, "<unk>");
    int32_t b = find_linear(out, "<s>"), e = find_linear(out, "</s>");
    out->v.unk_id = u >= 0 ? (uint32_t)u : 0;
    out->v.bos_id = b >= 0 ? (uint32_t)b : 0;
    out->v.eos_id = e >= 0 ? (uint32_t)e : 0;
    out->v.pad_id = out->v.unk_id;
    rc = 0;
done:
    free(slot);
    free(slot_type);
    cJSON_Delete(root);
    if (rc != 0)
        idf_tok_vocab_owned_free(out);
    return rc;
}

/* ------------------------------------------------------------- side files */

typedef struct side_files {
    cJSON *config; /* tokenizer_config.json */
    cJSON *map;    /* special_tokens_map.json */
    cJSON *added;  /* added_tokens.json */
} side_files;

static void side_free(side_files *s) {
    cJSON_Delete(s->config);
    cJSON_Delete(s->map);
    cJSON_Delete(s->added);
}

static const char *side_token(const side_files *s, const char *field) {
    const char *t = token_text(cJSON_GetObjectItemCaseSensitive(s->config, field));
    return t ? t : token_text(cJSON_GetObjectItemCaseSensitive(s->map, field));
}

static bool in_token_list(const cJSON *list, const char *content) {
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        const char *t = token_text(it);
        if (t && !strcmp(t, content))
            return true;
    }
    return false;
}

/* Is an added token special per the side files? */
static bool side_special(const side_files *s, const char *content, uint32_t id) {
    static const char *fields[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (int i = 0; i < 4; i++) {
        const char *t = side_token(s, fields[i]);
        if (t && !strcmp(t, content))
            return true;
    }
    if (in_token_list(cJSON_GetObjectItemCaseSensitive(s->map, "additional_special_tokens"), content) ||
        in_token_list(cJSON_GetObjectItemCaseSensitive(s->config, "additional_special_tokens"), content))
        return true;
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(s->config, "added_tokens_decoder");
    char key[16];
    snprintf(key, sizeof key, "%u", id);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(dec, key);
    const char *t = token_text(e);
    return t && !strcmp(t, content) && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special"));
}

/* added_tokens.json {"content": id, ...}: ids must continue the vocabulary. */
static int apply_added_tokens(idf_tok_vocab_owned *o, const side_files *s, char *err, size_t errsz) {
    if (!s->added)
        return 0;
    if (!cJSON_IsObject(s->added))
        return fail(err, errsz, "added_tokens.json: not an object");
    int count = cJSON_GetArraySize(s->added);
    if (count <= 0)
        return 0;
    uint32_t base = o->v.n_vocab, n_new = 0;
    const cJSON **by_id = calloc((size_t)count, sizeof *by_id);
    if (!by_id)
        return fail(err, errsz, "added_tokens.json: out of memory");
    const cJSON *it;
    int rc = 0;
    cJSON_ArrayForEach(it, s->added) {
        uint32_t id;
        if (!it->string || !it->string[0] || !json_id(it, &id)) {
            rc = fail(err, errsz, "added_tokens.json: \"%.40s\" has no valid id", it->string ? it->string : "");
            break;
        }
        if (id < base) { /* an existing piece: must be the same text */
            if (strcmp(o->pieces[id], it->string) != 0) {
                rc = fail(err, errsz, "added_tokens.json: \"%.40s\" has id %u, which is \"%.40s\"", it->string, id,
                          o->pieces[id]);
                break;
            }
            continue;
        }
        if (id - base >= (uint32_t)count) { /* past the end: some id below it is missing (reported below) */
            n_new = (uint32_t)count;
            continue;
        }
        if (by_id[id - base]) {
            rc = fail(err, errsz, "added_tokens.json: id %u is given twice", id);
            break;
        }
        by_id[id - base] = it;
        if (id - base + 1 > n_new)
            n_new = id - base + 1;
    }
    for (uint32_t k = 0; rc == 0 && k < n_new; k++) {
        if (!by_id[k]) {
            rc = fail(err, errsz, "added_tokens.json: token id %u is missing (ids must follow %u without holes)",
                      base + k, base - 1);
            break;
        }
        const char *c = by_id[k]->string;
        uint32_t type = side_special(s, c, base + k) ? IDFX_TOKEN_CONTROL : IDFX_TOKEN_USER_DEFINED;
        if (push_piece(o, c, strlen(c), 0.0f, type) != 0)
            rc = fail(err, errsz, "added_tokens.json: out of memory");
    }
    free(by_id);
    return rc;
}

static int apply_named_ids(idf_tok_vocab_owned *o, const side_files *s, char *err, size_t errsz) {
    static const char *fields[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    uint32_t *dst[] = {&o->v.bos_id, &o->v.eos_id, &o->v.unk_id, &o->v.pad_id};
    for (int i = 0; i < 4; i++) {
        const char *name = side_token(s, fields[i]);
        if (!name)
            continue;
        int32_t id = find_linear(o, name);
        if (id < 0)
            return fail(err, errsz, "tokenizer side files: %s \"%.40s\" is not in the vocabulary", fields[i], name);
        *dst[i] = (uint32_t)id;
    }
    return 0;
}

static bool looks_like_json(const char *data, size_t size) {
    for (size_t i = 0; i < size; i++) {
        if (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r')
            continue;
        return data[i] == '{';
    }
    return false;
}

int idf_tokenizer_import_file(const char *path, idf_tok_vocab_owned *out, char *err, size_t errsz) {
    memset(out, 0, sizeof *out);
    char *data;
    size_t size;
    int r = read_file(path, &data, &size, err, errsz);
    if (r != 0)
        return r > 0 ? fail(err, errsz, "%s: no such file", path) : -1;
    bool json = looks_like_json(data, size);
    r = json ? idf_tokenizer_parse_json(data, size, out, err, errsz)
             : idf_tokenizer_parse_spm((const uint8_t *)data, size, out, err, errsz);
    free(data);
    if (r != 0)
        return -1;
    char *dir = dir_of(path);
    side_files s = {0};
    if (!dir)
        r = fail(err, errsz, "out of memory");
    if (r == 0)
        r = load_json(dir, "tokenizer_config.json", &s.config, err, errsz);
    if (r == 0)
        r = load_json(dir, "special_tokens_map.json", &s.map, err, errsz);
    /* tokenizer.json already lists the added tokens; added_tokens.json is for tokenizer.model. */
    if (r == 0 && !json)
        r = load_json(dir, "added_tokens.json", &s.added, err, errsz);
    if (r == 0)
        r = apply_added_tokens(out, &s, err, errsz);
    if (r == 0)
        r = apply_named_ids(out, &s, err, errsz);
    side_free(&s);
    free(dir);
    if (r != 0)
        idf_tok_vocab_owned_free(out);
    return r;
}

int idf_tokenizer_import_dir(const char *model_dir, idf_tok_vocab_owned *out, char *err, size_t errsz) {
    memset(out, 0, sizeof *out);
    char *json = path_join(model_dir, "tokenizer.json"), *spm = path_join(model_dir, "tokenizer.model");
    int r;
    if (!json || !spm)
        r = fail(err, errsz, "out of memory");
    else if (access(json, F_OK) == 0)
        r = idf_tokenizer_import_file(json, out, err, errsz);
    else if (access(spm, F_OK) == 0)
        r = idf_tokenizer_import_file(spm, out, err, errsz);
    else
        r = fail(err, errsz, "%s: neither tokenizer.json nor tokenizer.model found", model_dir);
    free(json);
    free(spm);
    return r;
}

int idf_tokenizer_write_keys(const idf_tok_vocab *v, idfx_writer *w, char *err, size_t errsz) {
    uint32_t n = v->n_vocab;
    if (idfx_writer_kv_str(w, IDFX_KEY_TOK_MODEL, "llama", 5) != 0 ||
        idfx_writer_kv_arr_str(w, IDFX_KEY_TOK_TOKENS, v->pieces, v->piece_lens, n) != 0 ||
        idfx_writer_kv_arr_f32(w, IDFX_KEY_TOK_SCORES, v->scores, n) != 0 ||
        idfx_writer_kv_arr_u32(w, IDFX_KEY_TOK_TYPES, v->types, n) != 0 ||
        (v->n_merges && idfx_writer_kv_arr_str(w, IDFX_KEY_TOK_MERGES, v->merges, v->merge_lens, v->n_merges) != 0) ||
        idfx_writer_kv_u32(w, IDFX_KEY_TOK_BOS, v->bos_id) != 0 ||
        idfx_writer_kv_u32(w, IDFX_KEY_TOK_EOS, v->eos_id) != 0 ||
        idfx_writer_kv_u32(w, IDFX_KEY_TOK_UNK, v->unk_id) != 0 ||
        idfx_writer_kv_u32(w, IDFX_KEY_TOK_PAD, v->pad_id) != 0 ||
        idfx_writer_kv_bool(w, IDFX_KEY_TOK_ADD_PREFIX, v->add_dummy_prefix) != 0)
        return fail(err, errsz, "writing the tokenizer keys: %s", idfx_writer_error(w));
    return 0;
}

int idf_tokenizer_import(const char *model_dir, idfx_writer *w, char *err, size_t errsz) {
    idf_tok_vocab_owned o;
    if (idf_tokenizer_import_dir(model_dir, &o, err, errsz) != 0)
        return -1;
    /* Build the runtime tokenizer once, so a vocabulary it would reject (bad
     * merges, ids out of range) fails the conversion rather than the load. */
    idf_tokenizer *t = NULL;
    idf_err e = {{0}};
    int rc = 0;
    if (idf_tokenizer_create(&o.v, NULL, &t, &e) != IDEFICS_OK)
        rc = fail(err, errsz, "tokenizer: %s", e.msg);
    idf_tokenizer_free(t);
    if (rc == 0)
        rc = idf_tokenizer_write_keys(&o.v, w, err, errsz);
    idf_tok_vocab_owned_free(&o);
    return rc;
}
