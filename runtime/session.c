/*
 * session.c - the session half of the public API (include/idefics.h): building
 * the conversation, generating, cancelling, and the public tokenizer wrappers.
 *
 * The conversation is kept as text (prompt.c) and tokenized whole, as the HF
 * processor does, so item boundaries tokenize exactly as in Python. The KV
 * cache (forward.h) holds the tokens already evaluated; each generate call
 * re-uses the longest prefix whose ids and visible images are unchanged and
 * evaluates the rest. Generated tokens are appended to the ids as sampled and
 * to the text as decoded; when a later turn's re-tokenization of that text
 * differs, only the differing tail is re-evaluated.
 *
 * Every add_* prepares its edit aside (image decoded, text re-tokenized,
 * context checked) and swaps it in only when everything succeeded.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "forward.h"
#include "image.h"
#include "model.h"
#include "prompt.h"
#include "sampling.h"
#include "tokenizer.h"

#define PIECE_MAX 512

struct idefics_session {
    idefics_model *model;
    const idf_alloc *al;
    idf_err err;
    idf_state *st;
    int n_ctx, n_vocab;
    idf_image_limits lim;
    int last_img_w, last_img_h; /* idefics_session_last_image_size; 0 = none */

    idf_prompt prompt;  /* the conversation text */
    idf_prompt edit;    /* an add_* builds its edit here, then swaps */

    /* Tokens of the conversation: the tokenization of prompt.text, with the
     * tokens generated since appended as sampled. Capacity n_ctx + 1: the last
     * sampled token is appended before it is evaluated. */
    int32_t *ids, *img;
    int n_ids;
    int32_t *tmp_ids, *tmp_img; /* the next tokenization, swapped in on commit */
    int tmp_n;
    /* What the KV cache holds (positions 0 .. n_eval-1). */
    int32_t *ev_ids, *ev_img;
    int n_eval;

    /* Images in order of addition; pixels are freed once encoded. Image i of
     * the text (the i-th <image> token) is forward-state slot i. */
    float **px;
    int n_px, cap_px, n_encoded;

    float *logits;      /* raw logits of position n_eval - 1 when logits_ok */
    bool logits_ok;
    float *work;        /* logits after the processors */
    idf_cand *cand;
    uint8_t *seen;

    int32_t special[8]; /* decode to "" in the stream (skip_special_tokens) */
    int n_special;
    int32_t byte_id[256]; /* the <0xNN> byte-fallback tokens, -1 when absent */

    atomic_int cancel; /* set from any thread (idefics_session_cancel); read by forward.c per layer */
    idefics_timings tm;
    idefics_finish_reason finish; /* of the last generate */
    idefics_kv_type kv_type;
};

/* ---------------------------------------------------------------- helpers */

static const idf_config *cfg_of(const idefics_session *s) { return &s->model->cfg; }

static bool is_special(const idefics_session *s, int32_t id) {
    for (int i = 0; i < s->n_special; i++)
        if (s->special[i] == id) return true;
    return false;
}

/* Tokenize p's text into tmp_ids/tmp_img, checking it fits the context. */
static idefics_status tokenize_into_tmp(idefics_session *s, const idf_prompt *p, const char *what) {
    int n = 0;
    idefics_status st = idf_tokenize_spans(s->model->tok, p->text, p->len, p->sp, p->n_sp, false, s->tmp_ids,
                                           s->n_ctx, &n, &s->err);
    if (st != IDEFICS_OK) return st;
    if (n > s->n_ctx)
        return idf_errf(&s->err, IDEFICS_ERR_CONTEXT_FULL,
                        "%s: the prompt would be %d tokens, more than the context of %d (session n_ctx)", what, n,
                        s->n_ctx);
    idf_scan_state sc;
    idf_image_scan_init(&sc);
    idf_image_scan(&sc, s->tmp_ids, n, cfg_of(s)->tok_image, cfg_of(s)->tok_eos, p->n_images, s->tmp_img);
    s->tmp_n = n;
    return IDEFICS_OK;
}

/* Make tmp the tokens of the conversation. Cannot fail. */
static void commit_tokens(idefics_session *s) {
    int32_t *t = s->ids;
    s->ids = s->tmp_ids;
    s->tmp_ids = t;
    t = s->img;
    s->img = s->tmp_img;
    s->tmp_img = t;
    s->n_ids = s->tmp_n;
}

/* Make s->edit the conversation and tmp its tokens. Cannot fail. */
static void commit_edit(idefics_session *s) {
    idf_prompt_swap(&s->prompt, &s->edit);
    commit_tokens(s);
}

static idefics_status begin_edit(idefics_session *s, const char *what) {
    idf_err_clear(&s->err);
    if (idf_prompt_copy(&s->edit, &s->prompt) != IDEFICS_OK)
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory copying the prompt", what);
    return IDEFICS_OK;
}

/* --------------------------------------------------------------- lifetime */

idefics_session_params idefics_session_default_params(void) {
    return (idefics_session_params){
        .n_ctx = 0,
        .n_threads = 0,
        .kv_type = IDEFICS_KV_F16,
        .max_image_pixels = 40 * 1000 * 1000,
        .max_image_bytes = 64 * 1024 * 1024,
        .exif_orientation = true,
    };
}

/* The processor writes special tokens as text; check the tokenizer turns each
 * back into the id the config names, so prompt text and ids cannot disagree. */
static idefics_status check_special(idefics_session *s, const char *text, int32_t want, const char *key) {
    int32_t ids[4];
    int n = 0;
    IDF_FORWARD(idf_tokenize(s->model->tok, text, strlen(text), false, ids, 4, &n, &s->err));
    if (n != 1 || ids[0] != want)
        return idf_errf(&s->err, IDEFICS_ERR_BAD_CONFIG,
                        "session: the tokenizer encodes \"%s\" as %d token(s) starting with %d, but the config's %s "
                        "is %d",
                        text, n, n > 0 ? ids[0] : -1, key, want);
    return IDEFICS_OK;
}

static idefics_status session_init(idefics_session *s, idefics_model *model, const idefics_session_params *p) {
    const idf_config *c = &model->cfg;
    if (!model->tok) return idf_errf(&s->err, IDEFICS_ERR_BAD_CONFIG, "session: the model has no tokenizer");
    /* A text-only (llama) model needs no image tokens: its prompts never hold images. */
    if (c->tok_bos < 0 || (!c->text_only && (c->tok_image < 0 || c->tok_fake_image < 0)))
        return idf_errf(&s->err, IDEFICS_ERR_BAD_CONFIG,
                        "session: the model lacks a special token id (bos %d, <image> %d, "
                        "<fake_token_around_image> %d)",
                        c->tok_bos, c->tok_image, c->tok_fake_image);
    if (c->n_vocab == 0 || c->n_vocab > (1u << 24) ||
        (!c->text_only && (c->v_image_size == 0 || c->v_image_size > 4096 || c->v_channels != 3)))
        return idf_errf(&s->err, IDEFICS_ERR_BAD_CONFIG,
                        "session: unsupported config (n_vocab %u, vision.image_size %u, vision.num_channels %u)",
                        c->n_vocab, c->v_image_size, c->v_channels);
    IDF_FORWARD(check_special(s, IDF_PROMPT_BOS, c->tok_bos, "bos token id"));
    if (!c->text_only) {
        IDF_FORWARD(check_special(s, IDF_PROMPT_IMAGE, c->tok_image, "<image> id"));
        IDF_FORWARD(check_special(s, IDF_PROMPT_FAKE, c->tok_fake_image, "<fake_token_around_image> id"));
    }
    if (c->is_instruct) {
        if (c->tok_end_of_utterance < 0)
            return idf_errf(&s->err, IDEFICS_ERR_BAD_CONFIG, "session: instruct model without <end_of_utterance>");
        IDF_FORWARD(check_special(s, IDF_PROMPT_EOU, c->tok_end_of_utterance, "<end_of_utterance> id"));
    }

    int n_ctx = p->n_ctx > 0 ? p->n_ctx : (int)c->max_pos;
    if (n_ctx <= 0 || n_ctx > (1 << 24))
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "session: n_ctx %d out of range", n_ctx);
    IDF_FORWARD(idf_state_create(model, n_ctx, p->kv_type, p->n_threads, &s->st, &s->err));
    s->kv_type = p->kv_type;
    idf_state_set_cancel_flag(s->st, &s->cancel);
    s->n_ctx = idf_state_n_ctx(s->st);
    s->n_vocab = (int)c->n_vocab;
    s->lim.max_pixels = p->max_image_pixels;
    s->lim.max_bytes = p->max_image_bytes;
    s->lim.exif_orientation = p->exif_orientation;

    size_t cap = (size_t)s->n_ctx + 1;
    int32_t **bufs[] = {&s->ids, &s->img, &s->tmp_ids, &s->tmp_img, &s->ev_ids, &s->ev_img};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        *bufs[i] = idf_calloc(s->al, cap, sizeof(int32_t));
        if (!*bufs[i]) return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "session: out of memory (token buffers)");
    }
    s->logits = idf_calloc(s->al, (size_t)s->n_vocab, sizeof(float));
    s->work = idf_calloc(s->al, (size_t)s->n_vocab, sizeof(float));
    s->cand = idf_calloc(s->al, (size_t)s->n_vocab, sizeof(idf_cand));
    s->seen = idf_calloc(s->al, (size_t)s->n_vocab, 1);
    if (!s->logits || !s->work || !s->cand || !s->seen)
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "session: out of memory (logit buffers)");
    if (idf_prompt_init(&s->prompt, s->al, false) != IDEFICS_OK ||
        idf_prompt_init(&s->edit, s->al, false) != IDEFICS_OK)
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "session: out of memory (prompt)");

    int32_t sp[] = {c->tok_bos, c->tok_eos, c->tok_fake_image, c->tok_image, c->tok_end_of_utterance,
                    idf_tokenizer_find(model->tok, "<unk>"), idf_tokenizer_find(model->tok, "<pad>")};
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++)
        if (sp[i] >= 0) s->special[s->n_special++] = sp[i];

    idf_stream_byte_ids(model->tok, s->byte_id);

    IDF_FORWARD(tokenize_into_tmp(s, &s->prompt, "session"));
    commit_tokens(s);
    return IDEFICS_OK;
}

idefics_status idefics_session_create(idefics_model *model, const idefics_session_params *params,
                                      idefics_session **out, char *errbuf, size_t errbuf_size) {
    if (out) *out = NULL;
    if (!model || !out) {
        if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "idefics_session_create: model and out are required");
        return IDEFICS_ERR_INVALID_ARG;
    }
    idefics_session_params p = params ? *params : idefics_session_default_params();
    idefics_session *s = idf_calloc(&model->alloc, 1, sizeof *s);
    if (!s) {
        if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "idefics_session_create: out of memory");
        return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    s->model = model;
    s->al = &model->alloc;
    idefics_status st = session_init(s, model, &p);
    if (st != IDEFICS_OK) {
        idf_err_copy(&s->err, errbuf, errbuf_size);
        idefics_session_free(s);
        return st;
    }
    *out = s;
    return IDEFICS_OK;
}

static void free_pixels(idefics_session *s) {
    for (int i = 0; i < s->n_px; i++) {
        idf_free(s->al, s->px[i]);
        s->px[i] = NULL;
    }
    s->n_px = 0;
    s->n_encoded = 0;
}

void idefics_session_free(idefics_session *s) {
    if (!s) return;
    if (s->st) idf_state_free(s->st);
    free_pixels(s);
    idf_free(s->al, s->px);
    idf_prompt_free(&s->prompt);
    idf_prompt_free(&s->edit);
    void *bufs[] = {s->ids, s->img, s->tmp_ids, s->tmp_img, s->ev_ids, s->ev_img,
                    s->logits, s->work, s->cand, s->seen};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) idf_free(s->al, bufs[i]);
    idf_free(s->al, s);
}

void idefics_session_reset(idefics_session *s) {
    if (!s) return;
    idf_state_reset(s->st);
    free_pixels(s);
    idf_prompt_clear(&s->prompt);
    /* "<s>" is a single special token: no tokenizer call needed */
    s->ids[0] = cfg_of(s)->tok_bos;
    s->img[0] = -1;
    s->n_ids = 1;
    s->n_eval = 0;
    s->logits_ok = false;
    s->last_img_w = s->last_img_h = 0;
    memset(&s->tm, 0, sizeof s->tm);
    s->finish = IDEFICS_FINISH_NONE;
    idf_err_clear(&s->err);
}

const char *idefics_session_last_error(const idefics_session *s) { return s ? s->err.msg : ""; }

const char *idf_session_text(const idefics_session *s) { return s ? s->prompt.text : ""; }

/* ------------------------------------------------------------- prompt items */

/* Resize and normalise a decoded image, then add it to the prompt. */
static idefics_status add_decoded_image(idefics_session *s, idf_image *im, const char *what) {
    const idf_config *c = cfg_of(s);
    int sz = (int)c->v_image_size;
    idf_image rs = {0};
    float *chw = NULL;
    int src_w = im->src_w > 0 ? im->src_w : im->w, src_h = im->src_h > 0 ? im->src_h : im->h;
    idefics_status st = idf_image_resize_bicubic(im, sz, sz, s->al, &rs, &s->err);
    idf_image_free(im, s->al);
    if (st != IDEFICS_OK) return st;
    chw = idf_malloc(s->al, (size_t)3 * (size_t)sz * (size_t)sz * sizeof(float));
    if (!chw) {
        idf_image_free(&rs, s->al);
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory for the pixels", what);
    }
    idf_image_normalize(&rs, c->image_mean, c->image_std, chw);
    idf_image_free(&rs, s->al);

    /* room for the pointer first, so nothing can fail after the commit */
    if (s->n_px == s->cap_px) {
        int ncap = s->cap_px ? s->cap_px * 2 : 4;
        float **np = idf_calloc(s->al, (size_t)ncap, sizeof *np);
        if (!np) {
            idf_free(s->al, chw);
            return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
        }
        if (s->px) memcpy(np, s->px, (size_t)s->n_px * sizeof *np);
        idf_free(s->al, s->px);
        s->px = np;
        s->cap_px = ncap;
    }
    st = begin_edit(s, what);
    if (st == IDEFICS_OK && idf_prompt_add_image(&s->edit) != IDEFICS_OK)
        st = idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
    if (st == IDEFICS_OK) st = tokenize_into_tmp(s, &s->edit, what);
    if (st != IDEFICS_OK) {
        idf_free(s->al, chw);
        return st;
    }
    commit_edit(s);
    s->px[s->n_px++] = chw;
    s->last_img_w = src_w;
    s->last_img_h = src_h;
    return IDEFICS_OK;
}

idefics_status idefics_session_last_image_size(const idefics_session *s, int *width, int *height) {
    if (!s || s->last_img_w <= 0) return IDEFICS_ERR_INVALID_ARG;
    if (width) *width = s->last_img_w;
    if (height) *height = s->last_img_h;
    return IDEFICS_OK;
}

/* Images on a text-only model: refused before any decoding work. */
static idefics_status refuse_text_only(idefics_session *s, const char *what) {
    if (!cfg_of(s)->text_only) return IDEFICS_OK;
    return idf_errf(&s->err, IDEFICS_ERR_UNSUPPORTED,
                    "%s: this model is text-only (general.architecture \"llama\") and takes no images", what);
}

idefics_status idefics_add_image_file(idefics_session *s, const char *path) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    IDF_FORWARD(refuse_text_only(s, "add_image_file"));
    if (!path) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_image_file: path is NULL");
    idf_image im = {0};
    idefics_status st = idf_image_load_file(path, &s->lim, s->al, &im, &s->err);
    if (st != IDEFICS_OK) return st;
    return add_decoded_image(s, &im, "add_image_file");
}

idefics_status idefics_add_image_memory(idefics_session *s, const void *data, size_t size) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    IDF_FORWARD(refuse_text_only(s, "add_image_memory"));
    if (!data || size == 0) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_image_memory: no data");
    idf_image im = {0};
    idefics_status st = idf_image_load_memory(data, size, &s->lim, s->al, &im, &s->err);
    if (st != IDEFICS_OK) return st;
    return add_decoded_image(s, &im, "add_image_memory");
}

idefics_status idefics_add_image_pixels(idefics_session *s, const uint8_t *pixels, int width, int height,
                                        int channels, size_t stride_bytes) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    IDF_FORWARD(refuse_text_only(s, "add_image_pixels"));
    if (!pixels || width <= 0 || height <= 0 || channels < 1 || channels > 4)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG,
                        "add_image_pixels: need pixels, width > 0, height > 0 and 1..4 channels (got %dx%d, %d)",
                        width, height, channels);
    idf_image im = {0};
    idefics_status st =
        idf_image_from_pixels(pixels, width, height, channels, stride_bytes, &s->lim, s->al, &im, &s->err);
    if (st != IDEFICS_OK) return st;
    return add_decoded_image(s, &im, "add_image_pixels");
}

/* Text from outside: a length, and no NUL inside it (never silently cut). */
static idefics_status check_text(idefics_session *s, const char *text, size_t len, const char *what) {
    if (!text && len > 0) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "%s: text is NULL", what);
    if (len > 0 && memchr(text, '\0', len))
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "%s: the text holds a NUL byte at offset %zu", what,
                        (size_t)((const char *)memchr(text, '\0', len) - text));
    return IDEFICS_OK;
}

idefics_status idefics_add_text_n(idefics_session *s, const char *text, size_t len, unsigned flags) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    if (!text) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_text: text is NULL");
    if (flags & ~IDEFICS_TEXT_SPECIAL)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_text: unknown flags 0x%x", flags);
    IDF_FORWARD(check_text(s, text, len, "add_text"));
    IDF_FORWARD(begin_edit(s, "add_text"));
    if (idf_prompt_add_text(&s->edit, text, len, (flags & IDEFICS_TEXT_SPECIAL) != 0) != IDEFICS_OK)
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "add_text: out of memory");
    IDF_FORWARD(tokenize_into_tmp(s, &s->edit, "add_text"));
    commit_edit(s);
    return IDEFICS_OK;
}

idefics_status idefics_add_text(idefics_session *s, const char *text) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    if (!text) {
        idf_err_clear(&s->err);
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_text: text is NULL");
    }
    return idefics_add_text_n(s, text, strlen(text), 0);
}

idefics_status idefics_add_user_turn_n(idefics_session *s, const char *question, size_t len) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    if (!question) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_user_turn: question is NULL");
    IDF_FORWARD(check_text(s, question, len, "add_user_turn"));
    IDF_FORWARD(begin_edit(s, "add_user_turn"));
    IDF_FORWARD(idf_prompt_add_user_turn(&s->edit, question, len, cfg_of(s)->is_instruct, &s->err));
    IDF_FORWARD(tokenize_into_tmp(s, &s->edit, "add_user_turn"));
    commit_edit(s);
    return IDEFICS_OK;
}

idefics_status idefics_add_user_turn(idefics_session *s, const char *question) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    if (!question) {
        idf_err_clear(&s->err);
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_user_turn: question is NULL");
    }
    return idefics_add_user_turn_n(s, question, strlen(question));
}

idefics_status idefics_begin_user_turn(idefics_session *s) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    IDF_FORWARD(begin_edit(s, "begin_user_turn"));
    IDF_FORWARD(idf_prompt_begin_turn(&s->edit, &s->err));
    IDF_FORWARD(tokenize_into_tmp(s, &s->edit, "begin_user_turn"));
    commit_edit(s);
    return IDEFICS_OK;
}

idefics_status idefics_end_user_turn(idefics_session *s) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    IDF_FORWARD(begin_edit(s, "end_user_turn"));
    IDF_FORWARD(idf_prompt_end_turn(&s->edit, cfg_of(s)->is_instruct, &s->err));
    IDF_FORWARD(tokenize_into_tmp(s, &s->edit, "end_user_turn"));
    commit_edit(s);
    return IDEFICS_OK;
}

/* generate and eval inside an open turn would answer half a question */
static idefics_status check_no_turn(idefics_session *s, const char *what) {
    if (!s->prompt.turn_open) return IDEFICS_OK;
    return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG,
                    "%s: a user turn is open (idefics_begin_user_turn); end it with idefics_end_user_turn first", what);
}

/* ------------------------------------------------------------- generation */

idefics_generate_params idefics_generate_default_params(void) {
    return (idefics_generate_params){
        .max_new_tokens = 64,
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .repetition_penalty = 1.0f,
        .seed = 0,
        .stop_at_eos = true,
    };
}

static bool is_stop(const idefics_session *s, int32_t id, bool stop_at_eos) {
    const idf_config *c = cfg_of(s);
    if (id == c->tok_eos) return stop_at_eos;
    if (c->is_instruct && id == c->tok_end_of_utterance) return true;
    for (int i = 0; i < c->n_stop_ids && i < 8; i++)
        if (c->stop_ids[i] == id) return true;
    return false;
}

/* The text a token adds to the conversation, such that re-tokenizing the text
 * gives the token back: after a special token a new segment starts, and the
 * tokenizer's dummy prefix will supply the leading space again. */
static int conversation_piece(const idefics_session *s, int32_t prev, int32_t id, char *buf) {
    int32_t p = (prev < 0 || is_special(s, prev)) ? -1 : prev;
    return idf_token_to_piece(s->model->tok, p, id, buf, PIECE_MAX);
}

/* Append a generated token's text to the conversation. */
static idefics_status add_generated(idefics_session *s, int32_t tok, const char *piece, size_t n) {
    /* a generated special token stays one on re-tokenization; generated text
     * that merely spells one ("<" "image" ">") stays text */
    return idf_prompt_add_generated(&s->prompt, piece, n, idf_tokenizer_is_special(s->model->tok, tok));
}

/* Evaluate ids[from..n_ids) after the cache; on failure the cache is put back. */
static idefics_status eval_tail(idefics_session *s, int from) {
    int n = s->n_ids - from;
    idefics_status st = idf_state_eval(s->st, s->ids + from, s->img + from, n, s->logits, false, &s->err);
    if (st != IDEFICS_OK) {
        idf_state_truncate(s->st, from);
        s->n_eval = from;
        s->logits_ok = false;
        if (st == IDEFICS_ERR_CANCELLED && !s->err.msg[0]) idf_errf(&s->err, st, "generate: cancelled");
        return st;
    }
    memcpy(s->ev_ids + from, s->ids + from, (size_t)n * sizeof(int32_t));
    memcpy(s->ev_img + from, s->img + from, (size_t)n * sizeof(int32_t));
    s->n_eval = s->n_ids;
    s->logits_ok = true;
    return IDEFICS_OK;
}

static idefics_status check_gen_params(idefics_session *s, const idefics_generate_params *p) {
    if (p->max_new_tokens < 0)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "generate: max_new_tokens %d < 0", p->max_new_tokens);
    if (!(p->temperature >= 0) || isinf(p->temperature))
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "generate: temperature %g must be >= 0 and finite",
                        (double)p->temperature);
    if (p->top_k < 0) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "generate: top_k %d < 0", p->top_k);
    if (!(p->top_p > 0 && p->top_p <= 1))
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "generate: top_p %g must be in (0, 1]", (double)p->top_p);
    if (!(p->repetition_penalty > 0) || isinf(p->repetition_penalty))
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "generate: repetition_penalty %g must be > 0",
                        (double)p->repetition_penalty);
    return IDEFICS_OK;
}

/* Encode the images added since the last call, in order. */
/* The images the state holds past n_encoded were encoded (their slots
 * follow the images in order): their pixels are done with. */
static void sync_encoded(idefics_session *s) {
    const int held = idf_state_n_images(s->st);
    while (s->n_encoded < held && s->n_encoded < s->n_px) {
        idf_free(s->al, s->px[s->n_encoded]);
        s->px[s->n_encoded] = NULL;
        s->n_encoded++;
    }
}

/* All pending images in one call: idf_state_add_images stacks them in chunks
 * of IDF_VISION_BATCH, so a prompt with several images runs each weight
 * matmul of the image path once per chunk instead of once per image. After a
 * failure the images of the finished chunks stay encoded. */
static idefics_status encode_images(idefics_session *s) {
    const int n = s->n_px - s->n_encoded;
    if (n <= 0) return IDEFICS_OK;
    if (idf_state_n_images(s->st) != s->n_encoded)
        return idf_errf(&s->err, IDEFICS_ERR_INTERNAL, "generate: %d images encoded, the state holds %d",
                        s->n_encoded, idf_state_n_images(s->st));
    double t0 = idf_time_ms();
    const idefics_status st =
        idf_state_add_images(s->st, (const float *const *)(s->px + s->n_encoded), n, NULL, &s->err);
    s->tm.image_encode_ms += idf_time_ms() - t0;
    sync_encoded(s);
    return st;
}

/* Keep the longest evaluated prefix the conversation's tokens still agree
 * with (ids and visible image), dropping the cache past it; the last token is
 * evaluated again when its logits are not at hand. Returns the tokens kept. */
static int keep_evaluated_prefix(idefics_session *s) {
    int keep = 0;
    while (keep < s->n_eval && keep < s->n_ids && s->ev_ids[keep] == s->ids[keep] && s->ev_img[keep] == s->img[keep])
        keep++;
    if (keep == s->n_ids && !(s->logits_ok && s->n_eval == s->n_ids)) keep--; /* re-run the last for its logits */
    if (keep < s->n_eval) {
        idf_state_truncate(s->st, keep);
        s->n_eval = keep;
        s->logits_ok = false;
    }
    return keep;
}

/* Encode the new images and prefill the conversation, keeping the longest
 * evaluated prefix; afterwards s->logits hold the last position's logits. */
static idefics_status prepare(idefics_session *s, const char *what) {
    IDF_FORWARD(check_no_turn(s, what));
    if (s->n_ids <= 1)
        return idf_errf(&s->err, IDEFICS_ERR_EMPTY_PROMPT,
                        "%s: the conversation is empty; add a user turn, text or an image first", what);
    if (s->n_ids > s->n_ctx)
        return idf_errf(&s->err, IDEFICS_ERR_CONTEXT_FULL,
                        "%s: the conversation is %d tokens, more than the context of %d; reset the session", what,
                        s->n_ids, s->n_ctx);

    IDF_FORWARD(encode_images(s));

    const int keep = keep_evaluated_prefix(s);
    double t0 = idf_time_ms();
    if (keep < s->n_ids) {
        s->tm.n_prompt_tokens = s->n_ids - keep;
        IDF_FORWARD(eval_tail(s, keep));
    }
    s->tm.prefill_ms = idf_time_ms() - t0;
    return IDEFICS_OK;
}

idefics_status idefics_session_eval(idefics_session *s) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    s->finish = IDEFICS_FINISH_NONE;
    atomic_store(&s->cancel, 0);
    memset(&s->tm, 0, sizeof s->tm);
    return prepare(s, "eval");
}

idefics_status idefics_generate(idefics_session *s, const idefics_generate_params *params, idefics_token_fn on_token,
                                void *user_data) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    s->finish = IDEFICS_FINISH_NONE;
    idefics_generate_params gp = params ? *params : idefics_generate_default_params();
    IDF_FORWARD(check_gen_params(s, &gp));
    atomic_store(&s->cancel, 0);
    memset(&s->tm, 0, sizeof s->tm);
    const idf_config *c = cfg_of(s);

    idefics_status st = prepare(s, "generate");
    if (st != IDEFICS_OK) {
        if (st == IDEFICS_ERR_CANCELLED) s->finish = IDEFICS_FINISH_CANCELLED;
        return st;
    }
    double t1 = idf_time_ms();

    idf_sampling sp = {gp.temperature, gp.top_k, gp.top_p, gp.repetition_penalty};
    idf_rng rng;
    idf_rng_seed(&rng, gp.seed);
    int32_t bad[2] = {c->tok_image, c->tok_fake_image};
    int32_t gen_img = s->img[s->n_ids - 1]; /* generated tokens see what the last prompt token saw (§3.7) */
    char conv[PIECE_MAX];
    idf_stream so;
    idf_stream_init(&so, s->model->tok, s->byte_id);
    if (gp.max_new_tokens == 0) s->finish = IDEFICS_FINISH_LENGTH;

    for (int i = 0; i < gp.max_new_tokens; i++) {
        memcpy(s->work, s->logits, (size_t)s->n_vocab * sizeof(float));
        idf_penalize_repetition(s->work, s->n_vocab, s->ids, s->n_ids, gp.repetition_penalty, s->seen);
        idf_ban_tokens(s->work, s->n_vocab, bad, 2);
        int32_t tok = idf_sample_token(s->work, s->n_vocab, &sp, s->cand, &rng);
        if (tok < 0) {
            st = idf_errf(&s->err, IDEFICS_ERR_BACKEND, "generate: no finite logit to choose a token from");
            break;
        }

        /* the conversation: ids as sampled, text as decoded */
        int32_t prev = s->ids[s->n_ids - 1];
        s->ids[s->n_ids] = tok;
        s->img[s->n_ids] = gen_img;
        s->n_ids++;
        s->tm.n_generated++;
        int nc = conversation_piece(s, prev, tok, conv);
        if (nc < 0 || add_generated(s, tok, conv, (size_t)nc) != IDEFICS_OK) {
            st = idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "generate: cannot append token %d to the text", tok);
            break;
        }

        bool stop = is_stop(s, tok, gp.stop_at_eos);
        bool full = s->n_eval >= s->n_ctx;
        bool last = stop || i + 1 == gp.max_new_tokens || full;

        const char *piece = idf_stream_token(&so, tok, is_special(s, tok), last);
        bool go_on = on_token ? on_token(user_data, tok, piece) : true;

        if (!go_on || last) {
            /* one reason, most specific first: a stop token ends the answer whatever else holds */
            s->finish = stop     ? IDEFICS_FINISH_STOP
                        : !go_on ? IDEFICS_FINISH_CALLBACK
                        : full   ? IDEFICS_FINISH_CONTEXT_FULL
                                 : IDEFICS_FINISH_LENGTH;
            if (full && !stop)
                idf_logf(&s->model->log, IDEFICS_LOG_INFO, "generate: stopped at the end of the context (%d tokens)",
                         s->n_ctx);
            break;
        }
        if (atomic_load(&s->cancel)) {
            st = idf_errf(&s->err, IDEFICS_ERR_CANCELLED, "generate: cancelled after %d tokens", s->tm.n_generated);
            break;
        }
        st = eval_tail(s, s->n_ids - 1);
        if (st != IDEFICS_OK) break;
    }
    if (st == IDEFICS_ERR_CANCELLED) s->finish = IDEFICS_FINISH_CANCELLED;
    else if (st != IDEFICS_OK) s->finish = IDEFICS_FINISH_NONE;
    s->tm.decode_ms = idf_time_ms() - t1;
    return st;
}

idefics_finish_reason idefics_session_finish_reason(const idefics_session *s) {
    return s ? s->finish : IDEFICS_FINISH_NONE;
}

idefics_status idefics_session_render_prompt(const idefics_session *s, char *buf, size_t size, size_t *len) {
    if (!s || (size > 0 && !buf)) return IDEFICS_ERR_INVALID_ARG;
    const idf_prompt *p = &s->prompt;
    if (size > 0) {
        size_t k = p->len < size ? p->len : size - 1;
        memcpy(buf, p->text, k);
        buf[k] = '\0';
    }
    if (len) *len = p->len;
    return IDEFICS_OK;
}

void idefics_session_cancel(idefics_session *s) {
    if (s) atomic_store(&s->cancel, 1);
}

void idefics_session_get_timings(const idefics_session *s, idefics_timings *t) {
    if (!t) return;
    if (!s) {
        memset(t, 0, sizeof *t);
        return;
    }
    *t = s->tm;
}

int idefics_session_get_tokens(const idefics_session *s, const int32_t **ids) {
    if (!s) {
        if (ids) *ids = NULL;
        return 0;
    }
    if (ids) *ids = s->ids;
    return s->n_ids;
}

const float *idefics_session_get_logits(const idefics_session *s) {
    return (s && s->logits_ok) ? s->logits : NULL;
}

/* -------------------------------------------------------- tokenizer (public) */

/* The model is shared and otherwise immutable; its error text is the one
 * field these calls write (the header's per-handle error contract). */
idefics_status idefics_tokenize(const idefics_model *model, const char *text, bool add_bos, int32_t *ids, int max_ids,
                                int *n_ids) {
    if (!model) return IDEFICS_ERR_INVALID_ARG;
    idf_err *err = idf_model_err(model);
    idf_err_clear(err);
    if (!text || !n_ids || max_ids < 0 || (max_ids > 0 && !ids))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_tokenize: need text, n_ids, and ids when max_ids > 0");
    if (!model->tok) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "idefics_tokenize: the model has no tokenizer");
    return idf_tokenize(model->tok, text, strlen(text), add_bos, ids, max_ids, n_ids, err);
}

idefics_status idefics_tokenize_n(const idefics_model *model, const char *text, size_t len, unsigned flags,
                                  bool add_bos, int32_t *ids, int max_ids, int *n_ids) {
    static const idf_span none = {0, 0};
    if (!model) return IDEFICS_ERR_INVALID_ARG;
    idf_err *err = idf_model_err(model);
    idf_err_clear(err);
    if ((!text && len > 0) || !n_ids || max_ids < 0 || (max_ids > 0 && !ids))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_tokenize_n: need text, n_ids, and ids when max_ids > 0");
    if (flags & ~IDEFICS_TEXT_SPECIAL)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_tokenize_n: unknown flags 0x%x", flags);
    if (len > 0 && memchr(text, '\0', len))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_tokenize_n: the text holds a NUL byte at offset %zu",
                        (size_t)((const char *)memchr(text, '\0', len) - text));
    if (!model->tok) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "idefics_tokenize_n: the model has no tokenizer");
    if (flags & IDEFICS_TEXT_SPECIAL) return idf_tokenize(model->tok, text, len, add_bos, ids, max_ids, n_ids, err);
    return idf_tokenize_spans(model->tok, text, len, &none, 0, add_bos, ids, max_ids, n_ids, err);
}

int idefics_token_to_text(const idefics_model *model, int32_t prev, int32_t id, char *buf, size_t buf_size) {
    if (!model || !buf || buf_size == 0) return IDEFICS_ERR_INVALID_ARG;
    idf_err *err = idf_model_err(model);
    idf_err_clear(err);
    if (!model->tok) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "idefics_token_to_text: the model has no tokenizer");
    uint32_t nv = idf_tokenizer_n_vocab(model->tok);
    if (id < 0 || (uint32_t)id >= nv || prev < -1 || (prev >= 0 && (uint32_t)prev >= nv))
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_token_to_text: token %d (prev %d) outside the %u ids",
                        id, prev, nv);
    int n = idf_token_to_piece(model->tok, prev, id, buf, buf_size);
    if (n < 0)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idefics_token_to_text: buffer of %zu bytes too small for token %d",
                        buf_size, id);
    return n;
}

/* ------------------------------------------------------- snapshot / restore */

/* Everything a session's conversation is, copied: restoring it gives a session
 * indistinguishable from the one snapshotted (timings and finish reason aside). */
struct idefics_snapshot {
    const idefics_model *model;
    const idf_alloc *al;
    idefics_kv_type kv_type;
    idf_prompt prompt;
    int32_t *ids, *img; /* [n_ids] */
    int n_ids;
    int32_t *ev_ids, *ev_img; /* [n_eval] */
    int n_eval;
    float **px; /* [n_px]: NULL for encoded images, else the pending pixels */
    int n_px, n_encoded;
    float *logits; /* [n_vocab] when logits_ok */
    bool logits_ok;
    void *state; /* idf_state_save: KV rows, image slots */
    size_t state_bytes;
    int st_n_past, st_n_img;
    size_t bytes; /* all of the above, for idefics_snapshot_bytes */
};

static size_t px_floats(const idefics_session *s) {
    size_t sz = cfg_of(s)->v_image_size;
    return 3 * sz * sz; /* v_image_size <= 4096 (session_init) */
}

void idefics_snapshot_free(idefics_snapshot *snap) {
    if (!snap) return;
    const idf_alloc *al = snap->al;
    idf_prompt_free(&snap->prompt);
    for (int i = 0; snap->px && i < snap->n_px; i++) idf_free(al, snap->px[i]);
    void *bufs[] = {snap->ids, snap->img, snap->ev_ids, snap->ev_img, snap->px, snap->logits, snap->state};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) idf_free(al, bufs[i]);
    idf_free(al, snap);
}

size_t idefics_snapshot_bytes(const idefics_snapshot *snap) { return snap ? snap->bytes : 0; }

/* A copy of n int32s (n may be 0). */
static int32_t *dup_ids(const idf_alloc *al, const int32_t *src, int n) {
    int32_t *d = idf_calloc(al, (size_t)(n > 0 ? n : 1), sizeof(int32_t));
    if (d && n > 0) memcpy(d, src, (size_t)n * sizeof(int32_t));
    return d;
}

idefics_status idefics_session_snapshot(const idefics_session *cs, idefics_snapshot **out) {
    if (out) *out = NULL;
    if (!cs) return IDEFICS_ERR_INVALID_ARG;
    /* The snapshot changes nothing in the session; the state is only written
     * through to host memory where a device backend keeps it (host_access). */
    idefics_session *s = (idefics_session *)cs;
    idf_err_clear(&s->err);
    if (!out) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "snapshot: out is NULL");
    const idf_alloc *al = s->al;
    idefics_snapshot *snap = idf_calloc(al, 1, sizeof *snap);
    if (!snap) return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "snapshot: out of memory");
    snap->model = s->model;
    snap->al = al;
    snap->kv_type = s->kv_type;
    snap->n_ids = s->n_ids;
    snap->n_eval = s->n_eval;
    snap->n_px = s->n_px;
    snap->n_encoded = s->n_encoded;
    snap->logits_ok = s->logits_ok;
    snap->st_n_past = idf_state_n_past(s->st);
    snap->st_n_img = idf_state_n_images(s->st);
    snap->state_bytes = idf_state_save_bytes(s->st);
    snap->prompt.al = al;
    idefics_status st = idf_prompt_copy(&snap->prompt, &s->prompt);
    snap->ids = dup_ids(al, s->ids, s->n_ids);
    snap->img = dup_ids(al, s->img, s->n_ids);
    snap->ev_ids = dup_ids(al, s->ev_ids, s->n_eval);
    snap->ev_img = dup_ids(al, s->ev_img, s->n_eval);
    snap->px = idf_calloc(al, (size_t)(s->n_px > 0 ? s->n_px : 1), sizeof(float *));
    snap->logits = s->logits_ok ? idf_malloc(al, (size_t)s->n_vocab * sizeof(float)) : NULL;
    snap->state = idf_malloc(al, snap->state_bytes > 0 ? snap->state_bytes : 1);
    bool ok = st == IDEFICS_OK && snap->ids && snap->img && snap->ev_ids && snap->ev_img && snap->px && snap->state &&
              (snap->logits || !s->logits_ok);
    const size_t npx = px_floats(s);
    size_t bytes = sizeof *snap + snap->prompt.cap + (size_t)snap->prompt.cap_sp * sizeof(idf_span) +
                   (size_t)(2 * s->n_ids + 2 * s->n_eval) * sizeof(int32_t) + (size_t)s->n_px * sizeof(float *) +
                   snap->state_bytes + (s->logits_ok ? (size_t)s->n_vocab * sizeof(float) : 0);
    for (int i = s->n_encoded; ok && i < s->n_px; i++) {
        snap->px[i] = idf_malloc(al, npx * sizeof(float));
        ok = snap->px[i] != NULL;
        if (ok) memcpy(snap->px[i], s->px[i], npx * sizeof(float));
        bytes += npx * sizeof(float);
    }
    if (!ok) {
        idefics_snapshot_free(snap);
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "snapshot: out of memory (%zu bytes)", bytes);
    }
    if (s->logits_ok) memcpy(snap->logits, s->logits, (size_t)s->n_vocab * sizeof(float));
    st = idf_state_save(s->st, snap->state, snap->state_bytes, &s->err);
    if (st != IDEFICS_OK) {
        idefics_snapshot_free(snap);
        return st;
    }
    snap->bytes = bytes;
    *out = snap;
    return IDEFICS_OK;
}

static const char *kv_name(idefics_kv_type t) {
    return t == IDEFICS_KV_F32 ? "f32" : t == IDEFICS_KV_F16 ? "f16" : t == IDEFICS_KV_Q8 ? "q8" : "?";
}

idefics_status idefics_session_restore(idefics_session *s, const idefics_snapshot *snap) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    if (!snap) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "restore: snapshot is NULL");
    if (snap->model != s->model)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG,
                        "restore: the snapshot was taken from a session of another model handle");
    if (snap->kv_type != s->kv_type)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG,
                        "restore: the snapshot's KV cache is %s, this session's is %s (session kv_type)",
                        kv_name(snap->kv_type), kv_name(s->kv_type));
    /* ids hold up to n_ctx + 1 tokens (the last sampled one is not evaluated yet) */
    if (snap->n_ids > s->n_ctx + 1 || snap->n_eval > s->n_ctx || snap->st_n_past > s->n_ctx)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG,
                        "restore: the snapshot holds %d tokens, more than this session's context of %d (n_ctx)",
                        snap->n_ids, s->n_ctx);

    /* Everything that can fail comes first, so that a failure changes nothing:
     * the prompt copy, pixel copies and pointer array, the state's image slots. */
    const idf_alloc *al = s->al;
    const size_t npx = px_floats(s);
    idefics_status st = idf_prompt_copy(&s->edit, &snap->prompt);
    int cap = snap->n_px > 4 ? snap->n_px : 4;
    float **px = st == IDEFICS_OK ? idf_calloc(al, (size_t)cap, sizeof *px) : NULL;
    bool ok = px != NULL;
    for (int i = snap->n_encoded; ok && i < snap->n_px; i++) {
        px[i] = idf_malloc(al, npx * sizeof(float));
        ok = px[i] != NULL;
        if (ok) memcpy(px[i], snap->px[i], npx * sizeof(float));
    }
    if (ok) st = idf_state_load(s->st, snap->state, snap->state_bytes, snap->st_n_past, snap->st_n_img, &s->err);
    if (!ok || st != IDEFICS_OK) {
        for (int i = 0; px && i < snap->n_px; i++) idf_free(al, px[i]);
        idf_free(al, px);
        if (st == IDEFICS_OK || st == IDEFICS_ERR_OUT_OF_MEMORY)
            return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "restore: out of memory");
        /* a device failure while loading: the cache and image slots are gone,
         * so the session cannot continue its conversation; start it afresh */
        char msg[sizeof s->err.msg];
        memcpy(msg, s->err.msg, sizeof msg);
        idefics_session_reset(s);
        memcpy(s->err.msg, msg, sizeof msg);
        return st;
    }

    /* commit: nothing below fails */
    idf_prompt_swap(&s->prompt, &s->edit);
    free_pixels(s);
    idf_free(al, s->px);
    s->px = px;
    s->cap_px = cap;
    s->n_px = snap->n_px;
    s->n_encoded = snap->n_encoded;
    memcpy(s->ids, snap->ids, (size_t)snap->n_ids * sizeof(int32_t));
    memcpy(s->img, snap->img, (size_t)snap->n_ids * sizeof(int32_t));
    s->n_ids = snap->n_ids;
    memcpy(s->ev_ids, snap->ev_ids, (size_t)snap->n_eval * sizeof(int32_t));
    memcpy(s->ev_img, snap->ev_img, (size_t)snap->n_eval * sizeof(int32_t));
    s->n_eval = snap->n_eval;
    s->logits_ok = snap->logits_ok;
    if (snap->logits_ok) memcpy(s->logits, snap->logits, (size_t)s->n_vocab * sizeof(float));
    memset(&s->tm, 0, sizeof s->tm);
    s->finish = IDEFICS_FINISH_NONE;
    return IDEFICS_OK;
}

/* ------------------------------------------------- prepared images (issue 12) */

struct idefics_image {
    const idefics_model *model;
    int side, src_w, src_h;
    uint8_t *rgb; /* side x side x 3, the processor's resize already done */
};

idefics_status idefics_image_prepare(const idefics_model *m, const void *data, size_t size,
                                     const idefics_session_params *p, idefics_image **out, char *errbuf,
                                     size_t errbuf_size) {
    idf_err err;
    idf_err_clear(&err);
    idefics_status st = IDEFICS_OK;
    if (out) *out = NULL;
    idefics_session_params dp = idefics_session_default_params();
    if (!p) p = &dp;
    idf_image im = {0}, rs = {0};
    idefics_image *img = NULL;
    if (!m || !out || !data || size == 0) {
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "image_prepare: need a model, data and out");
        goto done;
    }
    if (m->cfg.text_only) {
        st = idf_errf(&err, IDEFICS_ERR_UNSUPPORTED, "image_prepare: this model is text-only and takes no images");
        goto done;
    }
    idf_image_limits lim = {p->max_image_pixels, p->max_image_bytes, p->exif_orientation};
    int sz = (int)m->cfg.v_image_size;
    if ((st = idf_image_load_memory(data, size, &lim, &m->alloc, &im, &err)) != IDEFICS_OK) goto done;
    if ((st = idf_image_resize_bicubic(&im, sz, sz, &m->alloc, &rs, &err)) != IDEFICS_OK) goto done;
    img = idf_calloc(&m->alloc, 1, sizeof *img);
    if (!img) {
        st = idf_errf(&err, IDEFICS_ERR_OUT_OF_MEMORY, "image_prepare: out of memory");
        goto done;
    }
    img->model = m;
    img->side = sz;
    img->src_w = im.src_w > 0 ? im.src_w : im.w;
    img->src_h = im.src_h > 0 ? im.src_h : im.h;
    img->rgb = rs.rgb;
    rs.rgb = NULL;
    *out = img;
done:
    idf_image_free(&im, m ? &m->alloc : NULL);
    idf_image_free(&rs, m ? &m->alloc : NULL);
    if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "%s", st == IDEFICS_OK ? "" : err.msg);
    return st;
}

idefics_status idefics_add_image_prepared(idefics_session *s, const idefics_image *img) {
    if (!s) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&s->err);
    if (!img || !img->rgb) return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_image_prepared: no image");
    if (img->model != s->model)
        return idf_errf(&s->err, IDEFICS_ERR_INVALID_ARG, "add_image_prepared: the image was prepared for another model");
    IDF_FORWARD(refuse_text_only(s, "add_image_prepared"));
    idf_image im = {0};
    /* a copy at the model's size: the resize in add_decoded_image is then an exact copy */
    idefics_status st = idf_image_from_pixels(img->rgb, img->side, img->side, 3, 0, NULL, s->al, &im, &s->err);
    if (st != IDEFICS_OK) return st;
    im.src_w = img->src_w;
    im.src_h = img->src_h;
    return add_decoded_image(s, &im, "add_image_prepared");
}

void idefics_image_free(idefics_image *img) {
    if (!img) return;
    const idf_alloc *al = &img->model->alloc;
    idf_free(al, img->rgb);
    idf_free(al, img);
}
/* ------------------------------------------------ batched generation steps
 *
 * The batch scheduler (batch.c, batch.h) runs a session's generation as the
 * loop of idefics_generate cut into steps, with the evaluation of each new
 * token done by a batched pass over several sessions. */

#include "batch.h"

struct idf_gen {
    idefics_generate_params gp;
    idefics_token_fn on_token;
    void *ud;
    idf_sampling sp;
    idf_rng rng;
    idf_stream so;
    int32_t gen_img;
    int n_new;        /* tokens sampled */
    bool decoding;    /* the first token was sampled */
    double t_prefill; /* start of the prefill */
    double t_decode;  /* the first sample */
};

idefics_status idf_gen_begin(idefics_session *s, const idefics_generate_params *params, idefics_token_fn on_token,
                             void *user_data, idf_gen **out) {
    *out = NULL;
    idf_err_clear(&s->err);
    s->finish = IDEFICS_FINISH_NONE;
    idefics_generate_params gp = params ? *params : idefics_generate_default_params();
    IDF_FORWARD(check_gen_params(s, &gp));
    IDF_FORWARD(check_no_turn(s, "generate"));
    if (s->n_ids <= 1)
        return idf_errf(&s->err, IDEFICS_ERR_EMPTY_PROMPT,
                        "generate: the conversation is empty; add a user turn, text or an image first");
    if (s->n_ids > s->n_ctx)
        return idf_errf(&s->err, IDEFICS_ERR_CONTEXT_FULL,
                        "generate: the conversation is %d tokens, more than the context of %d; reset the session",
                        s->n_ids, s->n_ctx);
    idf_gen *g = idf_calloc(s->al, 1, sizeof *g);
    if (!g) return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "generate: out of memory");
    atomic_store(&s->cancel, 0);
    memset(&s->tm, 0, sizeof s->tm);
    g->gp = gp;
    g->on_token = on_token;
    g->ud = user_data;
    g->sp = (idf_sampling){gp.temperature, gp.top_k, gp.top_p, gp.repetition_penalty};
    idf_rng_seed(&g->rng, gp.seed);
    idf_stream_init(&g->so, s->model->tok, s->byte_id);
    g->t_prefill = idf_time_ms();
    *out = g;
    return IDEFICS_OK;
}

idefics_status idf_gen_prepare(idefics_session *s, idf_gen *g) {
    IDF_FORWARD(encode_images(s));
    const int keep = keep_evaluated_prefix(s);
    s->tm.n_prompt_tokens = s->n_ids - keep;
    g->gen_img = s->img[s->n_ids - 1]; /* generated tokens see what the last prompt token saw (§3.7) */
    g->t_prefill = idf_time_ms();
    return IDEFICS_OK;
}

int idf_gen_pending_images(idefics_session *s, const float *const **px) {
    *px = (const float *const *)(s->px + s->n_encoded);
    /* a state out of step with the session encodes nothing here; encode_images reports it */
    return idf_state_n_images(s->st) == s->n_encoded ? s->n_px - s->n_encoded : 0;
}

void idf_gen_images_encoded(idefics_session *s, double ms) {
    s->tm.image_encode_ms += ms;
    sync_encoded(s);
}

idefics_status idf_gen_prefill(idefics_session *s, idf_gen *g) {
    (void)g;
    if (s->n_eval < s->n_ids) IDF_FORWARD(eval_tail(s, s->n_eval));
    return IDEFICS_OK;
}

int idf_gen_pending(const idefics_session *s, const int32_t **ids, const int32_t **img) {
    *ids = s->ids + s->n_eval;
    *img = s->img + s->n_eval;
    return s->n_ids - s->n_eval;
}

bool idf_gen_ready(const idefics_session *s) { return s->logits_ok && s->n_eval == s->n_ids; }

float *idf_gen_logits_buf(idefics_session *s) { return s->logits; }
idf_state *idf_session_state(idefics_session *s) { return s->st; }
const idefics_model *idf_session_model(const idefics_session *s) { return s->model; }
bool idf_session_cancelled(const idefics_session *s) { return atomic_load(&((idefics_session *)s)->cancel) != 0; }

void idf_gen_evaluated(idefics_session *s, int n, bool logits_valid) {
    const int from = s->n_eval;
    memcpy(s->ev_ids + from, s->ids + from, (size_t)n * sizeof(int32_t));
    memcpy(s->ev_img + from, s->img + from, (size_t)n * sizeof(int32_t));
    s->n_eval += n;
    s->logits_ok = logits_valid && s->n_eval == s->n_ids;
}

void idf_gen_failed(idefics_session *s, idefics_status st, const char *msg) {
    idf_state_truncate(s->st, s->n_eval);
    s->logits_ok = false;
    if (st != IDEFICS_OK && msg) idf_errf(&s->err, st, "%s", msg);
}

/* One iteration of idefics_generate's loop, up to (not including) the eval. */
idefics_status idf_gen_sample(idefics_session *s, idf_gen *g, bool *done) {
    *done = true;
    if (!g->decoding) {
        g->decoding = true;
        g->t_decode = idf_time_ms();
        s->tm.prefill_ms = g->t_decode - g->t_prefill;
    }
    if (g->n_new >= g->gp.max_new_tokens) {
        s->finish = IDEFICS_FINISH_LENGTH;
        return IDEFICS_OK;
    }
    const idf_config *c = cfg_of(s);
    memcpy(s->work, s->logits, (size_t)s->n_vocab * sizeof(float));
    idf_penalize_repetition(s->work, s->n_vocab, s->ids, s->n_ids, g->gp.repetition_penalty, s->seen);
    int32_t bad[2] = {c->tok_image, c->tok_fake_image};
    idf_ban_tokens(s->work, s->n_vocab, bad, 2);
    int32_t tok = idf_sample_token(s->work, s->n_vocab, &g->sp, s->cand, &g->rng);
    if (tok < 0) return idf_errf(&s->err, IDEFICS_ERR_BACKEND, "generate: no finite logit to choose a token from");

    int32_t prev = s->ids[s->n_ids - 1];
    s->ids[s->n_ids] = tok;
    s->img[s->n_ids] = g->gen_img;
    s->n_ids++;
    s->tm.n_generated++;
    g->n_new++;
    char conv[PIECE_MAX];
    int nc = conversation_piece(s, prev, tok, conv);
    if (nc < 0 || add_generated(s, tok, conv, (size_t)nc) != IDEFICS_OK)
        return idf_errf(&s->err, IDEFICS_ERR_OUT_OF_MEMORY, "generate: cannot append token %d to the text", tok);

    bool stop = is_stop(s, tok, g->gp.stop_at_eos);
    bool full = s->n_eval >= s->n_ctx;
    bool last = stop || g->n_new == g->gp.max_new_tokens || full;
    const char *piece = idf_stream_token(&g->so, tok, is_special(s, tok), last);
    bool go_on = g->on_token ? g->on_token(g->ud, tok, piece) : true;
    if (!go_on || last) {
        /* as idefics_generate: one reason, most specific first */
        s->finish = stop     ? IDEFICS_FINISH_STOP
                    : !go_on ? IDEFICS_FINISH_CALLBACK
                    : full   ? IDEFICS_FINISH_CONTEXT_FULL
                             : IDEFICS_FINISH_LENGTH;
        if (full && !stop)
            idf_logf(&s->model->log, IDEFICS_LOG_INFO, "generate: stopped at the end of the context (%d tokens)",
                     s->n_ctx);
        return IDEFICS_OK;
    }
    if (idf_session_cancelled(s))
        return idf_errf(&s->err, IDEFICS_ERR_CANCELLED, "generate: cancelled after %d tokens", s->tm.n_generated);
    *done = false;
    return IDEFICS_OK;
}

void idf_gen_end(idefics_session *s, idf_gen *g, idefics_status st) {
    if (st == IDEFICS_ERR_CANCELLED) s->finish = IDEFICS_FINISH_CANCELLED;
    else if (st != IDEFICS_OK) s->finish = IDEFICS_FINISH_NONE;
    if (g && g->decoding) s->tm.decode_ms = idf_time_ms() - g->t_decode;
    else if (g) s->tm.prefill_ms = idf_time_ms() - g->t_prefill;
    idf_free(s->al, g);
}
