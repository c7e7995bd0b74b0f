/*
 * prompt.c - the IDEFICS processor's text assembly and image-mask scan
 * (prompt.h). Mirrors transformers' IdeficsProcessor.__call__ for one sample
 * and image_attention_mask_for_packed_input_ids; the tokenizer is applied by
 * the caller to the whole text. Also the streaming decoder of generated
 * tokens (idf_stream).
 */
#include <stdio.h>
#include <string.h>

#include "prompt.h"

static const size_t bos_len = sizeof IDF_PROMPT_BOS - 1;

static idefics_status reserve(idf_prompt *p, size_t extra) {
    size_t need;
    if (!idf_add_size(p->len, extra, &need) || !idf_add_size(need, 1, &need)) return IDEFICS_ERR_OUT_OF_MEMORY;
    if (need <= p->cap) return IDEFICS_OK;
    size_t cap = p->cap ? p->cap : 256;
    while (cap < need) {
        if (!idf_mul_size(cap, 2, &cap)) return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    /* malloc + copy rather than realloc: a user allocator may lack realloc */
    char *t = idf_malloc(p->al, cap);
    if (!t) return IDEFICS_ERR_OUT_OF_MEMORY;
    if (p->text) memcpy(t, p->text, p->len + 1);
    idf_free(p->al, p->text);
    p->text = t;
    p->cap = cap;
    return IDEFICS_OK;
}

static idefics_status append(idf_prompt *p, const char *s, size_t n) {
    IDF_FORWARD(reserve(p, n));
    memcpy(p->text + p->len, s, n);
    p->len += n;
    p->text[p->len] = '\0';
    return IDEFICS_OK;
}


/* Mark [start, end) as a special span, merged with the last span when they touch. */
static idefics_status mark(idf_prompt *p, size_t start, size_t end) {
    if (start >= end) return IDEFICS_OK;
    if (p->n_sp > 0 && p->sp[p->n_sp - 1].end == start) {
        p->sp[p->n_sp - 1].end = end;
        return IDEFICS_OK;
    }
    if (p->n_sp == p->cap_sp) {
        int cap = p->cap_sp ? p->cap_sp * 2 : 16;
        if (cap <= p->cap_sp) return IDEFICS_ERR_OUT_OF_MEMORY;
        idf_span *n = idf_calloc(p->al, (size_t)cap, sizeof *n);
        if (!n) return IDEFICS_ERR_OUT_OF_MEMORY;
        if (p->sp) memcpy(n, p->sp, (size_t)p->n_sp * sizeof *n);
        idf_free(p->al, p->sp);
        p->sp = n;
        p->cap_sp = cap;
    }
    p->sp[p->n_sp++] = (idf_span){start, end};
    return IDEFICS_OK;
}

/* Append structure: text the processor or the template writes (special span). */
static idefics_status append_special(idf_prompt *p, const char *s, size_t n) {
    size_t start = p->len;
    IDF_FORWARD(append(p, s, n));
    return mark(p, start, p->len);
}

static idefics_status append_special_str(idf_prompt *p, const char *s) { return append_special(p, s, strlen(s)); }

/* Cut the text back to len bytes, and the spans with it. */
static void truncate_to(idf_prompt *p, size_t len) {
    p->len = len;
    p->text[len] = '\0';
    while (p->n_sp > 0 && p->sp[p->n_sp - 1].start >= len) p->n_sp--;
    if (p->n_sp > 0 && p->sp[p->n_sp - 1].end > len) p->sp[p->n_sp - 1].end = len;
}

idefics_status idf_prompt_init(idf_prompt *p, const idf_alloc *al, bool auto_eou) {
    memset(p, 0, sizeof *p);
    p->al = al;
    p->auto_eou = auto_eou;
    idefics_status st = reserve(p, bos_len);
    if (st == IDEFICS_OK) st = mark(p, 0, 1); /* allocates the span array for clear's BOS span */
    if (st != IDEFICS_OK) {
        idf_prompt_free(p);
        return st;
    }
    idf_prompt_clear(p);
    return IDEFICS_OK;
}

void idf_prompt_free(idf_prompt *p) {
    if (!p) return;
    idf_free(p->al, p->text);
    idf_free(p->al, p->sp);
    p->text = NULL;
    p->sp = NULL;
    p->len = p->cap = 0;
    p->n_sp = p->cap_sp = 0;
}

void idf_prompt_clear(idf_prompt *p) {
    /* the buffer always holds at least "<s>" (init reserved it) */
    memcpy(p->text, IDF_PROMPT_BOS, bos_len + 1);
    p->len = bos_len;
    /* the BOS span: init reserved the span array, so this cannot fail */
    p->n_sp = 0;
    if (p->cap_sp > 0) p->sp[p->n_sp++] = (idf_span){0, bos_len};
    p->turn_open = p->turn_fresh = p->answer_fresh = false;
    p->last = IDF_ITEM_NONE;
    p->n_images = 0;
    p->run_start = 0;
    p->run_prev = IDF_ITEM_NONE;
    p->run_images = 0;
}

idefics_status idf_prompt_copy(idf_prompt *dst, const idf_prompt *src) {
    char *keep = dst->text;
    size_t keep_cap = dst->cap;
    idf_span *keep_sp = dst->sp;
    int keep_cap_sp = dst->cap_sp;
    const idf_alloc *al = dst->al ? dst->al : src->al;
    if (keep_cap < src->len + 1) {
        char *t = idf_malloc(al, src->cap);
        if (!t) return IDEFICS_ERR_OUT_OF_MEMORY;
        idf_free(al, keep);
        keep = t;
        keep_cap = src->cap;
    }
    if (keep_cap_sp < src->n_sp || keep_cap_sp == 0) {
        int cap = src->cap_sp > 0 ? src->cap_sp : 16;
        idf_span *n = idf_calloc(al, (size_t)cap, sizeof *n);
        if (!n) {
            /* keep what dst owns consistent: the (maybe new) text buffer stays dst's */
            dst->text = keep;
            dst->cap = keep_cap;
            return IDEFICS_ERR_OUT_OF_MEMORY;
        }
        idf_free(al, keep_sp);
        keep_sp = n;
        keep_cap_sp = cap;
    }
    *dst = *src;
    dst->al = al;
    dst->text = keep;
    dst->cap = keep_cap;
    dst->sp = keep_sp;
    dst->cap_sp = keep_cap_sp;
    memcpy(dst->text, src->text, src->len + 1);
    if (src->n_sp > 0) memcpy(dst->sp, src->sp, (size_t)src->n_sp * sizeof *dst->sp);
    return IDEFICS_OK;
}

void idf_prompt_swap(idf_prompt *a, idf_prompt *b) {
    idf_prompt t = *a;
    *a = *b;
    *b = t;
}

static void note_text(idf_prompt *p) {
    p->last = IDF_ITEM_TEXT;
    p->run_images = 0;
}

idefics_status idf_prompt_add_text(idf_prompt *p, const char *s, size_t len, bool special) {
    /* str.strip(" "): spaces only, so "\nAssistant:" keeps its newline */
    while (len > 0 && s[0] == ' ') s++, len--;
    while (len > 0 && s[len - 1] == ' ') len--;
    /* the processor inserts the EOU between consecutive text items, even empty ones */
    if (p->auto_eou && p->last == IDF_ITEM_TEXT) IDF_FORWARD(append_special_str(p, IDF_PROMPT_EOU));
    /* the first text of an interleaved turn: "User: text", as add_user_turn
     * writes it; the first after a turn, the answer: "Assistant: text" */
    if ((p->turn_fresh || p->answer_fresh) && len > 0) IDF_FORWARD(append_special(p, " ", 1));
    IDF_FORWARD(special ? append_special(p, s, len) : append(p, s, len));
    if (len > 0) p->turn_fresh = p->answer_fresh = false;
    note_text(p);
    return IDEFICS_OK;
}

idefics_status idf_prompt_add_generated(idf_prompt *p, const char *s, size_t len, bool special) {
    IDF_FORWARD(special ? append_special(p, s, len) : append(p, s, len));
    p->answer_fresh = false;
    note_text(p);
    return IDEFICS_OK;
}

idefics_status idf_prompt_add_image(idf_prompt *p) {
    size_t start = p->len;
    idf_item_kind prev = p->last;
    if (p->last == IDF_ITEM_IMAGE) {
        /* adjacent images share the fake token between them */
        IDF_FORWARD(append_special_str(p, IDF_PROMPT_IMAGE IDF_PROMPT_FAKE));
    } else {
        IDF_FORWARD(append_special_str(p, IDF_PROMPT_FAKE IDF_PROMPT_IMAGE IDF_PROMPT_FAKE));
    }
    p->turn_fresh = p->answer_fresh = false;
    if (p->run_images == 0) {
        p->run_start = start;
        p->run_prev = prev;
    }
    p->run_images++;
    p->n_images++;
    p->last = IDF_ITEM_IMAGE;
    return IDEFICS_OK;
}

static bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

idefics_status idf_prompt_add_user_turn(idf_prompt *p, const char *question, size_t qlen, bool instruct,
                                        idf_err *err) {
    if (!question) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "add_user_turn: question is NULL");
    if (p->turn_open)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG,
                        "add_user_turn: a turn opened by begin_user_turn is still open; end it first");
    while (qlen > 0 && is_ws(question[0])) question++, qlen--;
    while (qlen > 0 && is_ws(question[qlen - 1])) qlen--;
    if (qlen == 0) return idf_errf(err, IDEFICS_ERR_EMPTY_PROMPT, "add_user_turn: the question is empty");

    /* Take the trailing images out; they are re-appended inside the turn. The
     * edit happens on a copy so that an allocation failure changes nothing. */
    idf_prompt q = {0};
    q.al = p->al;
    idefics_status st = idf_prompt_copy(&q, p);
    if (st != IDEFICS_OK) return idf_errf(err, st, "add_user_turn: out of memory");
    int n_img = q.run_images;
    if (n_img > 0) {
        truncate_to(&q, q.run_start);
        q.last = q.run_prev;
        q.n_images -= n_img;
        q.run_images = 0;
    }
    bool auto_eou = q.auto_eou;
    q.auto_eou = false; /* the template writes its own EOUs */
    const char *nl = (q.len > bos_len && q.text[q.len - 1] != '\n') ? "\n" : "";

    /* "User: " + q as one item: separate items would be joined without a space */
    char head[8];
    bool q_in_head = instruct || n_img == 0;
    snprintf(head, sizeof head, "%sUser:%s", nl, q_in_head ? " " : "");
    /* the template is structure (special spans), the question plain text */
    st = append_special_str(&q, head);
    if (st == IDEFICS_OK && q_in_head) st = append(&q, question, qlen);
    if (st == IDEFICS_OK) note_text(&q);
    for (int i = 0; i < n_img && st == IDEFICS_OK; i++) st = idf_prompt_add_image(&q);
    if (st == IDEFICS_OK && !q_in_head) st = idf_prompt_add_text(&q, question, qlen, false);
    if (st == IDEFICS_OK && instruct) st = idf_prompt_add_text(&q, IDF_PROMPT_EOU, sizeof IDF_PROMPT_EOU - 1, true);
    if (st == IDEFICS_OK) st = idf_prompt_add_text(&q, "\nAssistant:", 11, true);
    if (st != IDEFICS_OK) {
        idf_prompt_free(&q);
        return idf_errf(err, st, "add_user_turn: out of memory");
    }
    q.auto_eou = auto_eou;
    q.answer_fresh = true;
    idf_prompt_swap(p, &q);
    idf_prompt_free(&q);
    return IDEFICS_OK;
}

idefics_status idf_prompt_begin_turn(idf_prompt *p, idf_err *err) {
    if (p->turn_open) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "begin_user_turn: a user turn is already open");
    size_t len0 = p->len;
    int n_sp0 = p->n_sp;
    size_t end0 = n_sp0 > 0 ? p->sp[n_sp0 - 1].end : 0;
    const char *nl = (p->len > bos_len && p->text[p->len - 1] != '\n') ? "\n" : "";
    char head[8];
    snprintf(head, sizeof head, "%sUser:", nl);
    idefics_status st = append_special_str(p, head);
    if (st != IDEFICS_OK) {
        /* append may have grown the buffer but not the text; the span array is
         * what mark() could not grow: put both back */
        p->len = len0;
        p->text[len0] = '\0';
        p->n_sp = n_sp0;
        if (n_sp0 > 0) p->sp[n_sp0 - 1].end = end0;
        return idf_errf(err, st, "begin_user_turn: out of memory");
    }
    note_text(p);
    p->turn_open = p->turn_fresh = true;
    p->answer_fresh = false;
    return IDEFICS_OK;
}

idefics_status idf_prompt_end_turn(idf_prompt *p, bool instruct, idf_err *err) {
    if (!p->turn_open) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "end_user_turn: no user turn is open");
    if (p->turn_fresh)
        return idf_errf(err, IDEFICS_ERR_EMPTY_PROMPT, "end_user_turn: the turn is empty; add text or an image");
    bool auto_eou = p->auto_eou;
    p->auto_eou = false; /* the template writes its own EOU */
    idefics_status st = IDEFICS_OK;
    if (instruct) st = idf_prompt_add_text(p, IDF_PROMPT_EOU, sizeof IDF_PROMPT_EOU - 1, true);
    if (st == IDEFICS_OK) st = idf_prompt_add_text(p, "\nAssistant:", 11, true);
    p->auto_eou = auto_eou;
    if (st != IDEFICS_OK) return idf_errf(err, st, "end_user_turn: out of memory");
    p->turn_open = false;
    p->answer_fresh = true;
    return IDEFICS_OK;
}

void idf_image_scan_init(idf_scan_state *sc) {
    sc->cnt = -1;
    sc->seen_eod = false;
}

void idf_image_scan(idf_scan_state *sc, const int32_t *ids, int n, int32_t tok_image, int32_t tok_eos, int n_images,
                    int32_t *img) {
    for (int i = 0; i < n; i++) {
        int32_t v;
        if (ids[i] == tok_image) {
            sc->cnt++;
            sc->seen_eod = false;
        }
        v = sc->cnt;
        if (sc->seen_eod) v = -1;
        /* </s> hides images from the next token on; the </s> itself keeps its value */
        if (ids[i] == tok_eos) sc->seen_eod = true;
        if (v >= n_images) v = -1;
        img[i] = v;
    }
}

/* ---------------------------------------------------------------- stream */

void idf_stream_byte_ids(const idf_tokenizer *tok, int32_t byte_id[256]) {
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        byte_id[b] = idf_tokenizer_find(tok, name);
    }
}

void idf_stream_init(idf_stream *o, const idf_tokenizer *tok, const int32_t *byte_id) {
    memset(o, 0, sizeof *o);
    o->tok = tok;
    o->byte_id = byte_id;
    o->strip = true;
}

/* Strict UTF-8 (RFC 3629: no overlongs, surrogates or code points past U+10FFFF). */
static bool utf8_valid(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return false;
        }
        if (n - i - 1 < need) return false;
        for (size_t k = 1; k <= need; k++) {
            unsigned b = p[i + k];
            if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
        }
        i += need + 1;
    }
    return true;
}

static void stream_put(idf_stream *o, char c) {
    if (o->strip) {
        o->strip = false;
        if (c == ' ') return;
    }
    if (o->n_out + 1 < sizeof o->out) o->out[o->n_out++] = c;
}

static void stream_flush_run(idf_stream *o) {
    if (utf8_valid((const unsigned char *)o->run, o->n_run)) {
        for (size_t i = 0; i < o->n_run; i++) stream_put(o, o->run[i]);
    } else {
        for (size_t i = 0; i < o->n_run; i++) {
            stream_put(o, '\xEF');
            stream_put(o, '\xBF');
            stream_put(o, '\xBD');
        }
    }
    o->n_run = 0;
}

const char *idf_stream_token(idf_stream *o, int32_t tok, bool special, bool last) {
    o->n_out = 0;
    if (!special) {
        char piece[IDF_STREAM_PIECE_MAX];
        /* prev 0 (any id >= 0): the raw piece with its leading space; stream_put strips */
        int n = idf_token_to_piece(o->tok, 0, tok, piece, sizeof piece);
        if (n < 0) n = 0;
        if (n == 1 && o->byte_id && o->byte_id[(unsigned char)piece[0]] == tok) {
            if (o->n_run == IDF_STREAM_RUN_MAX) stream_flush_run(o);
            o->run[o->n_run++] = piece[0];
        } else {
            stream_flush_run(o);
            for (int i = 0; i < n; i++) stream_put(o, piece[i]);
        }
    }
    if (last) stream_flush_run(o);
    o->out[o->n_out] = '\0';
    return o->out;
}
