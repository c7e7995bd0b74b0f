/*
 * tokenizer.c - the LLaMA SentencePiece-BPE tokenizer (tokenizer.h).
 *
 * Encoding reproduces Hugging Face LlamaTokenizerFast in legacy mode, which is
 * what IDEFICS uses:
 *   1. added/special tokens (types CONTROL, USER_DEFINED, UNKNOWN: HF registers
 *      <unk>, <s>, </s> and IDEFICS's <image> etc. as added tokens) are split
 *      out first, leftmost-longest, on the raw text;
 *   2. each non-empty segment between them is normalised: "▁" prepended (when
 *      add_dummy_prefix) and every " " replaced by "▁";
 *   3. the segment is split into UTF-8 characters; a character that is not a
 *      piece becomes its <0xNN> byte pieces (or <unk>, fused, without them);
 *   4. adjacent symbols are merged, best pair first and leftmost on ties. With
 *      merges (tokenizer.json) "best" is the lowest merge rank, as in HF
 *      tokenizers' BPE; without (tokenizer.model) it is the highest score of the
 *      merged piece, as in SentencePiece's BPE. A binary heap of candidate pairs
 *      over a linked list of symbols keeps this O(n log n) on long inputs.
 * Both priorities become one uint32 "prio" (lower is better) in a pair table
 * built at create, so the merge loop is the same for both.
 *
 * Decoding follows HF's decoder chain for LLaMA: "▁" -> " ", runs of byte
 * pieces joined and emitted when they form valid UTF-8 (else one U+FFFD per
 * byte), and one leading space of the whole text dropped.
 */
#include "tokenizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "idfx_format.h"
#include "idfx_keys.h"
#include "idfx_reader.h"

/* Far above any real vocabulary; keeps every index and offset in 32 bits. */
#define TOK_MAX_VOCAB  (1u << 24)
#define TOK_MAX_MERGES (1u << 24)
#define TOK_MAX_TEXT   (1u << 30) /* total bytes of all pieces */

static const char SPACE_MARK[3] = {'\xE2', '\x96', '\x81'}; /* U+2581 "▁" */

typedef struct pair_entry {
    uint64_t key;   /* (left id << 32) | right id */
    uint32_t prio;  /* lower merges first */
    int32_t result; /* merged piece id; -1 marks an empty slot */
} pair_entry;

struct idf_tokenizer {
    idf_alloc alloc;
    uint32_t n_vocab;
    char *text;     /* all pieces, each NUL-terminated */
    uint32_t *off;  /* [n_vocab] into text */
    uint32_t *len;  /* [n_vocab] */
    uint8_t *type;  /* [n_vocab] idfx_token_type */
    int32_t *table; /* piece -> id, open addressing, -1 = empty */
    uint32_t table_mask;
    pair_entry *pairs;
    uint32_t pairs_mask;
    int32_t byte_id[256]; /* <0xNN> piece of each byte, -1 if none */
    bool byte_fallback;   /* every byte has a piece */
    int32_t *specials;    /* ids split out before BPE, by first byte then longest first */
    uint32_t n_specials;
    uint32_t special_at[257]; /* specials[special_at[b] .. special_at[b+1]) start with byte b */
    uint32_t bos, eos, unk, pad;
    bool add_dummy_prefix;
};

/* ------------------------------------------------------------------ helpers */

static uint32_t pow2_above(uint64_t n) {
    uint64_t c = 16;
    while (c < n)
        c <<= 1;
    return (uint32_t)c;
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static int32_t find_piece(const idf_tokenizer *t, const char *s, size_t n) {
    uint32_t h = (uint32_t)XXH3_64bits(s, n) & t->table_mask;
    for (;;) {
        int32_t id = t->table[h];
        if (id < 0)
            return -1;
        if (t->len[id] == n && memcmp(t->text + t->off[id], s, n) == 0)
            return id;
        h = (h + 1) & t->table_mask;
    }
}

static const pair_entry *find_pair(const idf_tokenizer *t, int32_t l, int32_t r) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t h = (uint32_t)mix64(key) & t->pairs_mask;
    for (;;) {
        const pair_entry *e = &t->pairs[h];
        if (e->result < 0)
            return NULL;
        if (e->key == key)
            return e;
        h = (h + 1) & t->pairs_mask;
    }
}

/* Insert or update. keep_best: keep the lower prio on a duplicate (score mode);
 * otherwise the later entry wins, as in HF where merges are collected into a map. */
static void put_pair(idf_tokenizer *t, int32_t l, int32_t r, uint32_t prio, int32_t result, bool keep_best) {
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    uint32_t h = (uint32_t)mix64(key) & t->pairs_mask;
    for (;;) {
        pair_entry *e = &t->pairs[h];
        if (e->result < 0 || e->key == key) {
            if (e->result >= 0 && keep_best && e->prio <= prio)
                return;
            e->key = key;
            e->prio = prio;
            e->result = result;
            return;
        }
        h = (h + 1) & t->pairs_mask;
    }
}

/* Streaming UTF-8 validation (RFC 3629: no overlongs, surrogates or values
 * above U+10FFFF). Returns false on a byte that cannot continue the sequence. */
typedef struct utf8_state {
    int need;
    uint8_t lo, hi;
} utf8_state;

static bool utf8_step(utf8_state *st, uint8_t b) {
    if (st->need > 0) {
        if (b < st->lo || b > st->hi)
            return false;
        st->need--;
        st->lo = 0x80;
        st->hi = 0xBF;
        return true;
    }
    st->lo = 0x80;
    st->hi = 0xBF;
    if (b < 0x80)
        return true;
    if (b >= 0xC2 && b <= 0xDF)
        st->need = 1;
    else if (b == 0xE0)
        st->need = 2, st->lo = 0xA0;
    else if (b == 0xED)
        st->need = 2, st->hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF)
        st->need = 2;
    else if (b == 0xF0)
        st->need = 3, st->lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3)
        st->need = 3;
    else if (b == 0xF4)
        st->need = 3, st->hi = 0x8F;
    else
        return false;
    return true;
}

/* Length of the valid UTF-8 character at s (1..4), or 1 for an invalid byte,
 * which then goes through the byte fallback on its own. */
static size_t utf8_char_len(const uint8_t *s, size_t n) {
    utf8_state st = {0, 0x80, 0xBF};
    if (!utf8_step(&st, s[0]))
        return 1;
    size_t k = 1;
    while (st.need > 0) {
        if (k >= n || !utf8_step(&st, s[k]))
            return 1;
        k++;
    }
    return k;
}

static int parse_hex_digit(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" -> NN, else -1. */
static int byte_piece_value(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>')
        return -1;
    int hi = parse_hex_digit(s[3]), lo = parse_hex_digit(s[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

static bool is_special_type(uint32_t type) {
    return type == IDFX_TOKEN_CONTROL || type == IDFX_TOKEN_USER_DEFINED || type == IDFX_TOKEN_UNKNOWN;
}

/* ------------------------------------------------------------------- create */

typedef struct special_key {
    uint8_t first;
    uint32_t len;
    int32_t id;
} special_key;

static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1; /* longest first */
    return x->id < y->id ? -1 : (x->id > y->id);
}

static int cmp_float_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return x > y ? -1 : (x < y);
}

/* Index of score s in the descending, de-duplicated array u[n] (s is present). */
static uint32_t score_rank(const float *u, uint32_t n, float s) {
    uint32_t lo = 0, hi = n;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (u[mid] > s)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static idefics_status build_specials(idf_tokenizer *t, idf_err *err) {
    uint32_t n = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->type[i]))
            n++;
    special_key *keys = idf_calloc(&t->alloc, n ? n : 1, sizeof *keys);
    t->specials = idf_calloc(&t->alloc, n ? n : 1, sizeof *t->specials);
    if (!keys || !t->specials) {
        idf_free(&t->alloc, keys);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: special token index");
    }
    n = 0;
    for (uint32_t i = 0; i < t->n_vocab; i++)
        if (is_special_type(t->type[i]))
            keys[n++] = (special_key){(uint8_t)t->text[t->off[i]], t->len[i], (int32_t)i};
    qsort(keys, n, sizeof *keys, cmp_special);
    uint32_t k = 0;
    for (uint32_t b = 0; b <= 256; b++) {
        while (k < n && keys[k].first < b)
            k++;
        t->special_at[b] = k;
    }
    t->special_at[256] = n;
    for (uint32_t i = 0; i < n; i++)
        t->specials[i] = keys[i].id;
    t->n_specials = n;
    idf_free(&t->alloc, keys);
    return IDEFICS_OK;
}

/* Split a stored merge "left right" at the first space where both sides are
 * pieces (a piece could in principle contain a space). */
static bool split_merge(const idf_tokenizer *t, const char *m, size_t n, int32_t *l, int32_t *r) {
    for (size_t i = 1; i + 1 < n; i++) {
        if (m[i] != ' ')
            continue;
        int32_t a = find_piece(t, m, i), b = find_piece(t, m + i + 1, n - i - 1);
        if (a >= 0 && b >= 0) {
            *l = a;
            *r = b;
            return true;
        }
    }
    return false;
}

static idefics_status build_pairs_from_merges(idf_tokenizer *t, const idf_tok_vocab *v, idf_err *err) {
    if (v->n_merges > TOK_MAX_MERGES)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.merges: %u merges (max %u)", v->n_merges,
                        TOK_MAX_MERGES);
    if (!v->merges || !v->merge_lens)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tokenizer.merges: NULL");
    t->pairs_mask = pow2_above((uint64_t)v->n_merges * 2) - 1;
    t->pairs = idf_calloc(&t->alloc, (size_t)t->pairs_mask + 1, sizeof *t->pairs);
    if (!t->pairs)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: merge table");
    for (uint32_t i = 0; i <= t->pairs_mask; i++)
        t->pairs[i].result = -1;
    char *cat = NULL;
    size_t cat_cap = 0;
    idefics_status st = IDEFICS_OK;
    for (uint32_t i = 0; i < v->n_merges && st == IDEFICS_OK; i++) {
        const char *m = v->merges[i];
        uint32_t n = v->merge_lens[i];
        int32_t l, r;
        if (!m || !split_merge(t, m, n, &l, &r)) {
            st =
                idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.merges[%u] \"%.*s\": not two pieces of the vocabulary",
                         i, (int)(n > 64 ? 64 : n), m ? m : "");
            break;
        }
        size_t need = (size_t)t->len[l] + t->len[r];
        if (need > cat_cap) {
            idf_free(&t->alloc, cat);
            cat_cap = need * 2;
            cat = idf_malloc(&t->alloc, cat_cap);
            if (!cat) {
                st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: merge scratch");
                break;
            }
        }
        memcpy(cat, t->text + t->off[l], t->len[l]);
        memcpy(cat + t->len[l], t->text + t->off[r], t->len[r]);
        int32_t res = find_piece(t, cat, need);
        if (res < 0) {
            st = idf_errf(err, IDEFICS_ERR_BAD_CONFIG,
                          "tokenizer.merges[%u]: the merged piece is not in the vocabulary", i);
            break;
        }
        put_pair(t, l, r, i, res, false);
    }
    idf_free(&t->alloc, cat);
    return st;
}

/* SentencePiece BPE: every split of a NORMAL piece into two pieces is a pair;
 * its priority is the rank of the merged piece's score (equal scores share a
 * priority, so ties go to the leftmost pair as in SentencePiece). */
static idefics_status build_pairs_from_scores(idf_tokenizer *t, const float *scores, idf_err *err) {
    uint64_t n_pairs = 0;
    uint32_t n_norm = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != IDFX_TOKEN_NORMAL)
            continue;
        n_norm++;
        const char *p = t->text + t->off[id];
        for (uint32_t k = 1; k < t->len[id]; k++)
            if (find_piece(t, p, k) >= 0 && find_piece(t, p + k, t->len[id] - k) >= 0)
                n_pairs++;
    }
    if (n_pairs > (1u << 28))
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.tokens: too many merge pairs");
    float *u = idf_calloc(&t->alloc, n_norm ? n_norm : 1, sizeof *u);
    t->pairs_mask = pow2_above(n_pairs * 2) - 1;
    t->pairs = idf_calloc(&t->alloc, (size_t)t->pairs_mask + 1, sizeof *t->pairs);
    if (!u || !t->pairs) {
        idf_free(&t->alloc, u);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: merge table");
    }
    for (uint32_t i = 0; i <= t->pairs_mask; i++)
        t->pairs[i].result = -1;
    uint32_t n = 0;
    for (uint32_t id = 0; id < t->n_vocab; id++)
        if (t->type[id] == IDFX_TOKEN_NORMAL)
            u[n++] = scores[id];
    qsort(u, n, sizeof *u, cmp_float_desc);
    uint32_t n_u = 0;
    for (uint32_t i = 0; i < n; i++)
        if (n_u == 0 || u[n_u - 1] != u[i])
            u[n_u++] = u[i];
    for (uint32_t id = 0; id < t->n_vocab; id++) {
        if (t->type[id] != IDFX_TOKEN_NORMAL)
            continue;
        const char *p = t->text + t->off[id];
        uint32_t prio = score_rank(u, n_u, scores[id]);
        for (uint32_t k = 1; k < t->len[id]; k++) {
            int32_t l = find_piece(t, p, k), r = find_piece(t, p + k, t->len[id] - k);
            if (l >= 0 && r >= 0)
                put_pair(t, l, r, prio, (int32_t)id, true);
        }
    }
    idf_free(&t->alloc, u);
    return IDEFICS_OK;
}

idefics_status idf_tokenizer_create(const idf_tok_vocab *v, const idf_alloc *alloc, idf_tokenizer **out, idf_err *err) {
    if (!v || !out)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_tokenizer_create: NULL argument");
    *out = NULL;
    if (v->n_vocab == 0 || v->n_vocab > TOK_MAX_VOCAB)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.tokens: %u pieces (expected 1..%u)", v->n_vocab,
                        TOK_MAX_VOCAB);
    if (!v->pieces || !v->piece_lens || !v->types)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_tokenizer_create: pieces, lengths and types are required");
    if (v->n_merges == 0 && !v->scores)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.scores: required when there are no merges");
    const uint32_t ids[4] = {v->bos_id, v->eos_id, v->unk_id, v->pad_id};
    const char *id_keys[4] = {IDFX_KEY_TOK_BOS, IDFX_KEY_TOK_EOS, IDFX_KEY_TOK_UNK, IDFX_KEY_TOK_PAD};
    for (int i = 0; i < 4; i++)
        if (ids[i] >= v->n_vocab)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "%s: %u is not below the vocabulary size %u", id_keys[i],
                            ids[i], v->n_vocab);
    uint64_t total = 0;
    for (uint32_t i = 0; i < v->n_vocab; i++) {
        if (!v->pieces[i] || v->piece_lens[i] == 0)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.tokens[%u]: empty piece", i);
        if (v->types[i] < IDFX_TOKEN_NORMAL || v->types[i] > IDFX_TOKEN_BYTE)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.token_type[%u]: unknown type %u", i, v->types[i]);
        if (v->scores && !isfinite(v->scores[i]))
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.scores[%u]: not finite", i);
        if (!idf_add_u64(total, (uint64_t)v->piece_lens[i] + 1, &total) || total > TOK_MAX_TEXT)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.tokens: more than %u bytes of pieces",
                            TOK_MAX_TEXT);
    }

    idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    idf_tokenizer *t = idf_calloc(&al, 1, sizeof *t);
    if (!t)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer");
    t->alloc = al;
    t->n_vocab = v->n_vocab;
    t->bos = v->bos_id;
    t->eos = v->eos_id;
    t->unk = v->unk_id;
    t->pad = v->pad_id;
    t->add_dummy_prefix = v->add_dummy_prefix;
    t->table_mask = pow2_above((uint64_t)v->n_vocab * 2) - 1;
    t->text = idf_malloc(&al, (size_t)total);
    t->off = idf_calloc(&al, v->n_vocab, sizeof *t->off);
    t->len = idf_calloc(&al, v->n_vocab, sizeof *t->len);
    t->type = idf_calloc(&al, v->n_vocab, sizeof *t->type);
    t->table = idf_calloc(&al, (size_t)t->table_mask + 1, sizeof *t->table);
    idefics_status st = IDEFICS_OK;
    if (!t->text || !t->off || !t->len || !t->type || !t->table) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: vocabulary of %u pieces", v->n_vocab);
        goto fail;
    }
    for (uint32_t i = 0; i <= t->table_mask; i++)
        t->table[i] = -1;
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = -1;
    uint32_t pos = 0;
    for (uint32_t i = 0; i < v->n_vocab; i++) {
        uint32_t n = v->piece_lens[i];
        memcpy(t->text + pos, v->pieces[i], n);
        t->text[pos + n] = '\0';
        t->off[i] = pos;
        t->len[i] = n;
        t->type[i] = (uint8_t)v->types[i];
        pos += n + 1;
        /* Duplicates keep the lowest id. */
        if (find_piece(t, t->text + t->off[i], n) < 0) {
            uint32_t h = (uint32_t)XXH3_64bits(t->text + t->off[i], n) & t->table_mask;
            while (t->table[h] >= 0)
                h = (h + 1) & t->table_mask;
            t->table[h] = (int32_t)i;
        }
        if (t->type[i] == IDFX_TOKEN_BYTE) {
            int b = byte_piece_value(t->text + t->off[i], n);
            if (b < 0) {
                st = idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "tokenizer.tokens[%u]: BYTE piece \"%.*s\" is not <0xNN>", i,
                              (int)(n > 32 ? 32 : n), t->text + t->off[i]);
                goto fail;
            }
            if (t->byte_id[b] < 0)
                t->byte_id[b] = (int32_t)i;
        }
    }
    t->byte_fallback = true;
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] < 0)
            t->byte_fallback = false;
    st = build_specials(t, err);
    if (st != IDEFICS_OK)
        goto fail;
    st = v->n_merges ? build_pairs_from_merges(t, v, err) : build_pairs_from_scores(t, v->scores, err);
    if (st != IDEFICS_OK)
        goto fail;
    *out = t;
    return IDEFICS_OK;
fail:
    idf_tokenizer_free(t);
    return st;
}

void idf_tokenizer_free(idf_tokenizer *t) {
    if (!t)
        return;
    idf_alloc al = t->alloc;
    idf_free(&al, t->text);
    idf_free(&al, t->off);
    idf_free(&al, t->len);
    idf_free(&al, t->type);
    idf_free(&al, t->table);
    idf_free(&al, t->pairs);
    idf_free(&al, t->specials);
    idf_free(&al, t);
}

/* --------------------------------------------------------------- from IDFX */

idefics_status idf_tokenizer_from_idfx(const idfx_file *f, const idf_alloc *alloc, idf_tokenizer **out, idf_err *err) {
    const idfx_kv *ktok, *kscore, *ktype, *kmerge = NULL;
    IDF_FORWARD(idfx_get_arr(f, IDFX_KEY_TOK_TOKENS, IDFX_KV_STR, &ktok, err));
    IDF_FORWARD(idfx_get_arr(f, IDFX_KEY_TOK_SCORES, IDFX_KV_F32, &kscore, err));
    IDF_FORWARD(idfx_get_arr(f, IDFX_KEY_TOK_TYPES, IDFX_KV_U32, &ktype, err));
    if (idfx_find_kv(f, IDFX_KEY_TOK_MERGES))
        IDF_FORWARD(idfx_get_arr(f, IDFX_KEY_TOK_MERGES, IDFX_KV_STR, &kmerge, err));
    if (ktok->count == 0 || ktok->count > TOK_MAX_VOCAB)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "%s: %llu pieces (expected 1..%u)", IDFX_KEY_TOK_TOKENS,
                        (unsigned long long)ktok->count, TOK_MAX_VOCAB);
    if (kscore->count != ktok->count || ktype->count != ktok->count)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "%s / %s: %llu / %llu entries for %llu tokens",
                        IDFX_KEY_TOK_SCORES, IDFX_KEY_TOK_TYPES, (unsigned long long)kscore->count,
                        (unsigned long long)ktype->count, (unsigned long long)ktok->count);
    if (kmerge && kmerge->count > TOK_MAX_MERGES)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "%s: %llu merges (max %u)", IDFX_KEY_TOK_MERGES,
                        (unsigned long long)kmerge->count, TOK_MAX_MERGES);
    idf_tok_vocab v = {0};
    v.n_vocab = (uint32_t)ktok->count;
    v.n_merges = kmerge ? (uint32_t)kmerge->count : 0;
    IDF_FORWARD(idfx_get_u32(f, IDFX_KEY_TOK_BOS, &v.bos_id, err));
    IDF_FORWARD(idfx_get_u32(f, IDFX_KEY_TOK_EOS, &v.eos_id, err));
    IDF_FORWARD(idfx_get_u32(f, IDFX_KEY_TOK_UNK, &v.unk_id, err));
    IDF_FORWARD(idfx_get_u32(f, IDFX_KEY_TOK_PAD, &v.pad_id, err));
    IDF_FORWARD(idfx_get_bool(f, IDFX_KEY_TOK_ADD_PREFIX, &v.add_dummy_prefix, err));

    idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    const char **pieces = idf_calloc(&al, v.n_vocab, sizeof *pieces);
    uint32_t *lens = idf_calloc(&al, v.n_vocab, sizeof *lens);
    float *scores = idf_calloc(&al, v.n_vocab, sizeof *scores);
    uint32_t *types = idf_calloc(&al, v.n_vocab, sizeof *types);
    const char **merges = idf_calloc(&al, v.n_merges ? v.n_merges : 1, sizeof *merges);
    uint32_t *mlens = idf_calloc(&al, v.n_merges ? v.n_merges : 1, sizeof *mlens);
    idefics_status st = IDEFICS_OK;
    if (!pieces || !lens || !scores || !types || !merges || !mlens) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenizer: %u pieces", v.n_vocab);
        goto done;
    }
    uint64_t pos = 0;
    for (uint32_t i = 0; i < v.n_vocab; i++) {
        if (!idfx_arr_next_str(ktok, &pos, &pieces[i], &lens[i])) {
            st = idf_errf(err, IDEFICS_ERR_CORRUPT, "%s: element %u missing", IDFX_KEY_TOK_TOKENS, i);
            goto done;
        }
        scores[i] = idfx_arr_f32(kscore, i);
        types[i] = idfx_arr_u32(ktype, i);
    }
    pos = 0;
    for (uint32_t i = 0; i < v.n_merges; i++) {
        if (!idfx_arr_next_str(kmerge, &pos, &merges[i], &mlens[i])) {
            st = idf_errf(err, IDEFICS_ERR_CORRUPT, "%s: element %u missing", IDFX_KEY_TOK_MERGES, i);
            goto done;
        }
    }
    v.pieces = pieces;
    v.piece_lens = lens;
    v.scores = scores;
    v.types = types;
    v.merges = merges;
    v.merge_lens = mlens;
    st = idf_tokenizer_create(&v, &al, out, err);
done:
    idf_free(&al, pieces);
    idf_free(&al, lens);
    idf_free(&al, scores);
    idf_free(&al, types);
    idf_free(&al, merges);
    idf_free(&al, mlens);
    return st;
}

/* ------------------------------------------------------------------- encode */

typedef struct sym {
    int32_t id; /* -1 once merged into its left neighbour */
    int32_t prev, next;
} sym;

typedef struct cand {
    uint32_t prio;
    uint32_t pos; /* index of the left symbol: lower = further left */
    int32_t left, right;
} cand;

/* Scratch buffers of one idf_tokenize call, grown on demand. */
typedef struct scratch {
    const idf_alloc *al;
    char *norm;
    size_t norm_cap;
    sym *syms;
    size_t syms_cap;
    cand *heap;
    size_t heap_cap, heap_n;
    /* output */
    int32_t *ids;
    int max_ids;
    size_t n_out;
} scratch;

static bool grow(const idf_alloc *al, void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return true;
    size_t n = *cap ? *cap : 64, bytes;
    while (n < need) {
        if (!idf_mul_size(n, 2, &n))
            return false;
    }
    if (!idf_mul_size(n, elem, &bytes))
        return false;
    void *q = idf_malloc(al, bytes);
    if (!q)
        return false;
    if (*p)
        memcpy(q, *p, *cap * elem);
    idf_free(al, *p);
    *p = q;
    *cap = n;
    return true;
}

static bool cand_less(const cand *a, const cand *b) {
    return a->prio != b->prio ? a->prio < b->prio : a->pos < b->pos;
}

static bool heap_push(scratch *s, cand c) {
    if (!grow(s->al, (void **)&s->heap, &s->heap_cap, s->heap_n + 1, sizeof *s->heap))
        return false;
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&c, &s->heap[p]))
            break;
        s->heap[i] = s->heap[p];
        i = p;
    }
    s->heap[i] = c;
    return true;
}

static cand heap_pop(scratch *s) {
    cand top = s->heap[0], last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && cand_less(&s->heap[c + 1], &s->heap[c]))
            c++;
        if (!cand_less(&s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

static bool push_pair(const idf_tokenizer *t, scratch *s, int32_t l) {
    if (l < 0)
        return true;
    int32_t r = s->syms[l].next;
    if (r < 0)
        return true;
    const pair_entry *e = find_pair(t, s->syms[l].id, s->syms[r].id);
    if (!e)
        return true;
    return heap_push(s, (cand){e->prio, (uint32_t)l, s->syms[l].id, s->syms[r].id});
}

static idefics_status emit(scratch *s, int32_t id, idf_err *err) {
    if (s->n_out >= (size_t)INT32_MAX)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tokenize: more than %d tokens", INT32_MAX);
    if (s->ids && s->n_out < (size_t)s->max_ids)
        s->ids[s->n_out] = id;
    s->n_out++;
    return IDEFICS_OK;
}

static idefics_status encode_segment(const idf_tokenizer *t, scratch *s, const char *seg, size_t len, idf_err *err) {
    if (len == 0)
        return IDEFICS_OK; /* HF's Prepend normaliser leaves empty text empty */
    /* Normalise: prefix "▁", spaces -> "▁". At most 3 bytes per input byte + 3. */
    size_t cap, n = 0;
    if (!idf_mul_size(len, 3, &cap) || !idf_add_size(cap, 3, &cap))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tokenize: text too long");
    if (!grow(s->al, (void **)&s->norm, &s->norm_cap, cap, 1))
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenize: %zu bytes of scratch", cap);
    if (t->add_dummy_prefix) {
        memcpy(s->norm, SPACE_MARK, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (seg[i] == ' ') {
            memcpy(s->norm + n, SPACE_MARK, 3);
            n += 3;
        } else {
            s->norm[n++] = seg[i];
        }
    }
    /* Initial symbols: one per character, or per byte through the fallback. */
    if (!grow(s->al, (void **)&s->syms, &s->syms_cap, n, sizeof *s->syms))
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenize: %zu symbols", n);
    if (n > (size_t)INT32_MAX)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tokenize: text too long");
    int32_t n_sym = 0;
    const uint8_t *u = (const uint8_t *)s->norm;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_char_len(u + i, n - i);
        int32_t id = find_piece(t, s->norm + i, cl);
        if (id >= 0) {
            s->syms[n_sym++].id = id;
        } else if (t->byte_fallback) {
            for (size_t k = 0; k < cl; k++)
                s->syms[n_sym++].id = t->byte_id[u[i + k]];
        } else if (n_sym == 0 || s->syms[n_sym - 1].id != (int32_t)t->unk) {
            s->syms[n_sym++].id = (int32_t)t->unk; /* consecutive unknowns fuse (HF fuse_unk, SentencePiece) */
        }
        i += cl;
    }
    for (int32_t i = 0; i < n_sym; i++) {
        s->syms[i].prev = i - 1;
        s->syms[i].next = i + 1 < n_sym ? i + 1 : -1;
    }
    s->heap_n = 0;
    for (int32_t i = 0; i + 1 < n_sym; i++)
        if (!push_pair(t, s, i))
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenize: merge heap");
    while (s->heap_n > 0) {
        cand c = heap_pop(s);
        sym *l = &s->syms[c.pos];
        /* Stale candidates: one side has been merged since it was pushed. */
        if (l->id != c.left || l->next < 0)
            continue;
        sym *r = &s->syms[l->next];
        if (r->id != c.right)
            continue;
        const pair_entry *e = find_pair(t, c.left, c.right);
        l->id = e->result;
        l->next = r->next;
        if (r->next >= 0)
            s->syms[r->next].prev = (int32_t)c.pos;
        r->id = -1;
        if (!push_pair(t, s, l->prev) || !push_pair(t, s, (int32_t)c.pos))
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tokenize: merge heap");
    }
    for (int32_t i = n_sym > 0 ? 0 : -1; i >= 0; i = s->syms[i].next)
        IDF_FORWARD(emit(s, s->syms[i].id, err));
    return IDEFICS_OK;
}

/* Longest special token starting at text[i] and ending by text[limit], or -1. */
static int32_t match_special(const idf_tokenizer *t, const char *text, size_t limit, size_t i) {
    uint8_t b = (uint8_t)text[i];
    for (uint32_t k = t->special_at[b]; k < t->special_at[b + 1]; k++) {
        int32_t id = t->specials[k];
        if (t->len[id] <= limit - i && memcmp(text + i, t->text + t->off[id], t->len[id]) == 0)
            return id;
    }
    return -1;
}

/* spans NULL: the whole text may hold special tokens (idf_tokenize). */
static idefics_status tokenize(const idf_tokenizer *t, const char *text, size_t len, const idf_span *spans,
                               int n_spans, bool add_bos, int32_t *ids, int max_ids, int *n_ids, idf_err *err) {
    if (!t || (!text && len > 0) || !n_ids || max_ids < 0 || (max_ids > 0 && !ids) || n_spans < 0 ||
        (n_spans > 0 && !spans))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_tokenize: NULL or negative argument");
    *n_ids = 0;
    scratch s = {.al = &t->alloc, .ids = ids, .max_ids = max_ids};
    idefics_status st = IDEFICS_OK;
    if (add_bos)
        st = emit(&s, (int32_t)t->bos, err);
    size_t seg = 0;
    int k = 0; /* the first span that does not end at or before i */
    for (size_t i = 0; i < len && st == IDEFICS_OK;) {
        size_t limit = len;
        if (spans) {
            while (k < n_spans && spans[k].end <= i)
                k++;
            if (k == n_spans)
                break; /* no span left: the rest is one plain segment */
            if (spans[k].start > i) {
                i = spans[k].start; /* plain text: no match can start before the span */
                continue;
            }
            limit = spans[k].end < len ? spans[k].end : len;
        }
        int32_t id = t->n_specials ? match_special(t, text, limit, i) : -1;
        if (id < 0) {
            i++;
            continue;
        }
        st = encode_segment(t, &s, text + seg, i - seg, err);
        if (st == IDEFICS_OK)
            st = emit(&s, id, err);
        i += t->len[id];
        seg = i;
    }
    if (st == IDEFICS_OK)
        st = encode_segment(t, &s, text + seg, len - seg, err);
    if (st == IDEFICS_OK)
        *n_ids = (int)s.n_out;
    idf_free(s.al, s.norm);
    idf_free(s.al, s.syms);
    idf_free(s.al, s.heap);
    return st;
}

idefics_status idf_tokenize(const idf_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t *ids,
                            int max_ids, int *n_ids, idf_err *err) {
    return tokenize(t, text, len, NULL, 0, add_bos, ids, max_ids, n_ids, err);
}

idefics_status idf_tokenize_spans(const idf_tokenizer *t, const char *text, size_t len, const idf_span *spans,
                                  int n_spans, bool add_bos, int32_t *ids, int max_ids, int *n_ids, idf_err *err) {
    static const idf_span none = {0, 0};
    return tokenize(t, text, len, n_spans > 0 ? spans : &none, n_spans, add_bos, ids, max_ids, n_ids, err);
}

bool idf_tokenizer_is_special(const idf_tokenizer *t, int32_t id) {
    return t && id >= 0 && (uint32_t)id < t->n_vocab && is_special_type(t->type[id]);
}

/* ------------------------------------------------------------------- decode */

/* Output with truncation: writes what fits (keeping room for the NUL) and
 * counts everything; drops the first byte when it is a space and strip is set. */
typedef struct out_buf {
    char *buf;
    size_t size, n;
    bool strip;
} out_buf;

static void put_byte(out_buf *o, char c) {
    if (o->strip) {
        o->strip = false;
        if (c == ' ')
            return;
    }
    if (o->buf && o->n + 1 < o->size)
        o->buf[o->n] = c;
    o->n++;
}

static void put_piece(const idf_tokenizer *t, out_buf *o, int32_t id) {
    const char *p = t->text + t->off[id];
    uint32_t n = t->len[id];
    for (uint32_t i = 0; i < n; i++) {
        if (i + 3 <= n && memcmp(p + i, SPACE_MARK, 3) == 0) {
            put_byte(o, ' ');
            i += 2;
        } else {
            put_byte(o, p[i]);
        }
    }
}

static void finish(out_buf *o) {
    if (!o->buf || o->size == 0)
        return;
    o->buf[o->n < o->size ? o->n : o->size - 1] = '\0';
}

static int byte_of(const idf_tokenizer *t, int32_t id) {
    return byte_piece_value(t->text + t->off[id], t->len[id]);
}

int idf_token_to_piece(const idf_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t size) {
    if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
        return -1;
    out_buf o = {buf, size, 0, prev < 0};
    if (t->type[id] == IDFX_TOKEN_BYTE) {
        put_byte(&o, (char)byte_of(t, id));
    } else {
        put_piece(t, &o, id);
    }
    if (!buf || o.n >= size)
        return -1;
    finish(&o);
    return (int)o.n;
}

static bool is_skipped(const idf_tokenizer *t, int32_t id, bool skip_special) {
    if (id < 0 || (uint32_t)id >= t->n_vocab)
        return true;
    return skip_special && (t->type[id] == IDFX_TOKEN_CONTROL || t->type[id] == IDFX_TOKEN_UNKNOWN);
}

size_t idf_detokenize(const idf_tokenizer *t, const int32_t *ids, int n, bool skip_special, char *buf, size_t size) {
    out_buf o = {buf, size, 0, true};
    if (!t || (!ids && n > 0)) {
        finish(&o);
        return 0;
    }
    for (int i = 0; i < n;) {
        int32_t id = ids[i];
        if (is_skipped(t, id, skip_special)) {
            i++;
            continue;
        }
        if (t->type[id] != IDFX_TOKEN_BYTE) {
            put_piece(t, &o, id);
            i++;
            continue;
        }
        /* A run of byte pieces (skipped ids in between do not end it, as in HF
         * where they are removed before the decoder): valid UTF-8 as is, else
         * one U+FFFD per byte. */
        utf8_state st = {0, 0x80, 0xBF};
        bool ok = true;
        int j = i;
        for (; j < n; j++) {
            if (is_skipped(t, ids[j], skip_special))
                continue;
            if (t->type[ids[j]] != IDFX_TOKEN_BYTE)
                break;
            if (ok)
                ok = utf8_step(&st, (uint8_t)byte_of(t, ids[j]));
        }
        ok = ok && st.need == 0;
        for (int k = i; k < j; k++) {
            if (is_skipped(t, ids[k], skip_special))
                continue;
            if (ok) {
                put_byte(&o, (char)byte_of(t, ids[k]));
            } else {
                put_byte(&o, '\xEF');
                put_byte(&o, '\xBF');
                put_byte(&o, '\xBD');
            }
        }
        i = j;
    }
    finish(&o);
    return o.n;
}

/* ---------------------------------------------------------------- lookups */

int32_t idf_tokenizer_find(const idf_tokenizer *t, const char *piece) {
    if (!t || !piece)
        return -1;
    return find_piece(t, piece, strlen(piece));
}

const char *idf_tokenizer_piece(const idf_tokenizer *t, int32_t id, uint32_t *len) {
    if (!t || id < 0 || (uint32_t)id >= t->n_vocab)
        return NULL;
    if (len)
        *len = t->len[id];
    return t->text + t->off[id];
}

uint32_t idf_tokenizer_n_vocab(const idf_tokenizer *t) {
    return t ? t->n_vocab : 0;
}
uint32_t idf_tokenizer_bos(const idf_tokenizer *t) {
    return t ? t->bos : 0;
}
uint32_t idf_tokenizer_eos(const idf_tokenizer *t) {
    return t ? t->eos : 0;
}
