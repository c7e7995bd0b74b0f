/*
 * model.c - opening a model: map the .idfx file, validate and materialise it,
 * read the config from its metadata, build the tokenizer and bind every weight
 * tensor to its role (model.h) after checking its shape against the config.
 * Implements the idefics_model_* functions of the public API.
 *
 * The file is untrusted: the container reader has already bounded every offset;
 * here every config value is range-checked before it sizes anything, and every
 * tensor's presence and shape is checked before the forward pass can touch it,
 * so forward.c may index weights without further checks.
 */
#include <math.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack (idefics_model_identity) */
#include <xxhash.h>

#include "idfx_keys.h"
#include "integrity.h"
#include "model.h"
#ifdef IDF_HAVE_OPENCL
#include "backend_opencl.h"
#endif
#include "quant.h"

/* ================================================================ config */

static idefics_status cfg_u32(const idfx_file *f, const char *key, uint32_t lo, uint32_t hi, uint32_t *out,
                              idf_err *err) {
    IDF_FORWARD(idfx_get_u32(f, key, out, err));
    if (*out < lo || *out > hi)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s = %u is out of range [%u, %u]", key, *out, lo, hi);
    return IDEFICS_OK;
}

/* eps-like values: finite, in (lo, hi). */
static idefics_status cfg_f32(const idfx_file *f, const char *key, float lo, float hi, float *out, idf_err *err) {
    IDF_FORWARD(idfx_get_f32(f, key, out, err));
    if (!isfinite(*out) || *out <= lo || *out >= hi)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s = %g is out of range (%g, %g)", key, (double)*out,
                        (double)lo, (double)hi);
    return IDEFICS_OK;
}

static bool str_is(const char *s, uint32_t len, const char *lit) {
    return len == strlen(lit) && memcmp(s, lit, len) == 0;
}

static idefics_status read_config(idefics_model *m, idf_err *err) {
    const idfx_file *f = &m->file;
    idf_config *c = &m->cfg;
    const char *s;
    uint32_t len;

    IDF_FORWARD(idfx_get_str(f, IDFX_KEY_ARCH, &s, &len, err));
    /* "llama": the text-only LLaMA decoder (for comparisons on the same decoder) */
    c->text_only = str_is(s, len, "llama");
    if (!c->text_only && !str_is(s, len, "idefics"))
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s is \"%.*s\", expected \"idefics\" or \"llama\"",
                        IDFX_KEY_ARCH, (int)(len > 64 ? 64 : len), s);
    if (idfx_get_str(f, IDFX_KEY_NAME, &s, &len, NULL) == IDEFICS_OK)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(len < sizeof m->name ? len : sizeof m->name - 1), s);

    /* ---- text. The bounds are far above any IDEFICS size; they exist so
     * that products of these values cannot overflow when sizing buffers. */
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_VOCAB_SIZE, 1, 1u << 20, &c->vocab_size, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_ADDITIONAL_VOCAB, 0, 1024, &c->additional_vocab, err));
    c->n_vocab = c->vocab_size + c->additional_vocab;
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_HIDDEN_SIZE, 1, 65536, &c->hidden, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_INTERMEDIATE_SIZE, 1, 262144, &c->intermediate, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_N_LAYERS, 1, 1024, &c->n_layers, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_N_HEADS, 1, 1024, &c->n_heads, err));
    if (c->hidden % c->n_heads)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s = %u is not a multiple of %s = %u",
                        IDFX_KEY_HIDDEN_SIZE, c->hidden, IDFX_KEY_N_HEADS, c->n_heads);
    c->head_dim = c->hidden / c->n_heads;
    if (c->head_dim % 2) /* rotate-half RoPE pairs dim d with d + head_dim/2 */
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "head dim %s / %s = %u must be even for RoPE",
                        IDFX_KEY_HIDDEN_SIZE, IDFX_KEY_N_HEADS, c->head_dim);
    IDF_FORWARD(cfg_f32(f, IDFX_KEY_RMS_EPS, 0.0f, 1.0f, &c->rms_eps, err));
    c->rope_theta = 10000.0f; /* hard-coded in HF; the key is written by our converter but optional */
    if (idfx_find_kv(f, IDFX_KEY_ROPE_THETA))
        IDF_FORWARD(cfg_f32(f, IDFX_KEY_ROPE_THETA, 1.0f, 1e9f, &c->rope_theta, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_MAX_POS, 1, 1u << 20, &c->max_pos, err));
    if (c->text_only) {
        if (c->additional_vocab)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s must be 0 for a llama model",
                            IDFX_KEY_ADDITIONAL_VOCAB);
        IDF_FORWARD(idfx_get_str(f, IDFX_KEY_HIDDEN_ACT, &s, &len, err));
        if (!str_is(s, len, "silu"))
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s is \"%.*s\", only \"silu\" is supported",
                            IDFX_KEY_HIDDEN_ACT, (int)(len > 64 ? 64 : len), s);
        c->cross_interval = c->n_cross = 0; /* no vision keys are read: everything image-related stays 0 */
        m->n_img_tokens = 0;
        return IDEFICS_OK;
    }
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_CROSS_INTERVAL, 1, c->n_layers, &c->cross_interval, err));
    c->n_cross = (c->n_layers + c->cross_interval - 1) / c->cross_interval;
    IDF_FORWARD(idfx_get_bool(f, IDFX_KEY_QK_LAYER_NORMS, &c->qk_layer_norms, err));
    IDF_FORWARD(idfx_get_bool(f, IDFX_KEY_USE_RESAMPLER, &c->use_resampler, err));
    IDF_FORWARD(idfx_get_str(f, IDFX_KEY_HIDDEN_ACT, &s, &len, err));
    if (!str_is(s, len, "silu"))
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s is \"%.*s\", only \"silu\" is supported",
                        IDFX_KEY_HIDDEN_ACT, (int)(len > 64 ? 64 : len), s);

    /* ---- vision */
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_EMBED_DIM, 1, 65536, &c->v_dim, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_IMAGE_SIZE, 1, 4096, &c->v_image_size, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_PATCH_SIZE, 1, c->v_image_size, &c->v_patch, err));
    if (c->v_image_size % c->v_patch)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s = %u is not a multiple of %s = %u",
                        IDFX_KEY_V_IMAGE_SIZE, c->v_image_size, IDFX_KEY_V_PATCH_SIZE, c->v_patch);
    const uint32_t grid = c->v_image_size / c->v_patch;
    c->v_n_patches = grid * grid; /* <= 4096^2: no overflow */
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_N_LAYERS, 1, 1024, &c->v_layers, err));
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_N_HEADS, 1, 1024, &c->v_heads, err));
    if (c->v_dim % c->v_heads)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s = %u is not a multiple of %s = %u",
                        IDFX_KEY_V_EMBED_DIM, c->v_dim, IDFX_KEY_V_N_HEADS, c->v_heads);
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_INTERMEDIATE, 1, 262144, &c->v_intermediate, err));
    IDF_FORWARD(cfg_f32(f, IDFX_KEY_V_LN_EPS, 0.0f, 1.0f, &c->v_ln_eps, err));
    IDF_FORWARD(idfx_get_str(f, IDFX_KEY_V_HIDDEN_ACT, &s, &len, err));
    if (str_is(s, len, "gelu"))
        c->v_gelu_exact = true;
    else if (str_is(s, len, "quick_gelu"))
        c->v_gelu_exact = false;
    else
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s is \"%.*s\", expected \"gelu\" or \"quick_gelu\"",
                        IDFX_KEY_V_HIDDEN_ACT, (int)(len > 64 ? 64 : len), s);
    IDF_FORWARD(cfg_u32(f, IDFX_KEY_V_N_CHANNELS, 1, 3, &c->v_channels, err));
    const char *arr_keys[2] = {IDFX_KEY_V_IMAGE_MEAN, IDFX_KEY_V_IMAGE_STD};
    float *arr_out[2] = {c->image_mean, c->image_std};
    for (int a = 0; a < 2; a++) {
        const idfx_kv *kv;
        IDF_FORWARD(idfx_get_arr(f, arr_keys[a], IDFX_KV_F32, &kv, err));
        if (kv->count != c->v_channels)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s has %llu values, expected %s = %u", arr_keys[a],
                            (unsigned long long)kv->count, IDFX_KEY_V_N_CHANNELS, c->v_channels);
        for (uint32_t i = 0; i < c->v_channels; i++) {
            arr_out[a][i] = idfx_arr_f32(kv, i);
            /* std divides the pixels; a zero or negative one is a broken file */
            if (!isfinite(arr_out[a][i]) || (a == 1 && arr_out[a][i] <= 0.0f))
                return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s[%u] = %g is invalid", arr_keys[a], i,
                                (double)arr_out[a][i]);
        }
    }

    /* ---- perceiver */
    if (c->use_resampler) {
        IDF_FORWARD(cfg_u32(f, IDFX_KEY_P_DEPTH, 1, 1024, &c->p_depth, err));
        IDF_FORWARD(cfg_u32(f, IDFX_KEY_P_N_LATENTS, 1, 65536, &c->p_latents, err));
        IDF_FORWARD(cfg_u32(f, IDFX_KEY_P_N_HEADS, 1, 1024, &c->p_heads, err));
        IDF_FORWARD(cfg_u32(f, IDFX_KEY_P_HEAD_DIM, 1, 4096, &c->p_head_dim, err));
        IDF_FORWARD(idfx_get_bool(f, IDFX_KEY_P_QK_LAYER_NORMS, &c->p_qk_norms, err));
        m->n_img_tokens = c->p_latents;
    } else {
        m->n_img_tokens = c->v_n_patches + 1;
    }
    return IDEFICS_OK;
}

/* Special tokens come from the tokenizer's vocabulary, stop tokens from the
 * chat metadata (defaulting to </s>, plus <end_of_utterance> when present). */
static idefics_status read_tokens(idefics_model *m, idf_err *err) {
    idf_config *c = &m->cfg;
    c->tok_bos = (int32_t)idf_tokenizer_bos(m->tok);
    c->tok_eos = (int32_t)idf_tokenizer_eos(m->tok);
    c->tok_fake_image = idf_tokenizer_find(m->tok, "<fake_token_around_image>");
    c->tok_image = idf_tokenizer_find(m->tok, "<image>");
    c->tok_end_of_utterance = idf_tokenizer_find(m->tok, "<end_of_utterance>");
    c->is_instruct = c->tok_end_of_utterance >= 0;
    if (idf_tokenizer_n_vocab(m->tok) != c->n_vocab)
        idf_logf(&m->log, IDEFICS_LOG_WARN, "tokenizer has %u tokens but the model %u (vocab_size + additional)",
                 idf_tokenizer_n_vocab(m->tok), c->n_vocab);

    c->n_stop_ids = 0;
    const idfx_kv *kv;
    if (idfx_find_kv(&m->file, IDFX_KEY_CHAT_STOP_TOKENS)) {
        IDF_FORWARD(idfx_get_arr(&m->file, IDFX_KEY_CHAT_STOP_TOKENS, IDFX_KV_U32, &kv, err));
        const int cap = (int)(sizeof c->stop_ids / sizeof c->stop_ids[0]);
        if (kv->count > (uint64_t)cap)
            return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s has %llu ids, at most %d are supported",
                            IDFX_KEY_CHAT_STOP_TOKENS, (unsigned long long)kv->count, cap);
        for (uint64_t i = 0; i < kv->count; i++) {
            const uint32_t id = idfx_arr_u32(kv, i);
            if (id >= c->n_vocab)
                return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata %s[%llu] = %u is not below n_vocab %u",
                                IDFX_KEY_CHAT_STOP_TOKENS, (unsigned long long)i, id, c->n_vocab);
            c->stop_ids[c->n_stop_ids++] = (int32_t)id;
        }
    } else {
        if (c->tok_eos >= 0)
            c->stop_ids[c->n_stop_ids++] = c->tok_eos;
        if (c->tok_end_of_utterance >= 0)
            c->stop_ids[c->n_stop_ids++] = c->tok_end_of_utterance;
    }
    return IDEFICS_OK;
}

/* ========================================================= weight binding */

/* fp32 copies owned by the model, chained so one walk frees them all. */
typedef union own_hdr {
    union own_hdr *next;
    max_align_t align;
} own_hdr;

static float *own_floats(idefics_model *m, uint64_t n) {
    size_t bytes;
    if (n > SIZE_MAX / sizeof(float) || !idf_add_size(sizeof(own_hdr), (size_t)n * sizeof(float), &bytes))
        return NULL;
    own_hdr *h = idf_malloc(&m->alloc, bytes);
    if (!h)
        return NULL;
    h->next = m->w->owned;
    m->w->owned = h;
    return (float *)(h + 1);
}

static void fmt_dims(const idfx_tensor *t, char *buf, size_t size) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, size - o, "[");
    for (uint32_t d = 0; d < t->n_dims && o < size; d++)
        o += (size_t)snprintf(buf + o, size - o, "%s%llu", d ? ", " : "", (unsigned long long)t->dims[d]);
    if (o < size)
        snprintf(buf + o, size - o, "]");
}

static idefics_status find(idefics_model *m, const char *name, const idfx_tensor **out, idf_err *err) {
    *out = idfx_find_tensor(&m->file, name);
    if (!*out)
        return idf_errf(err, IDEFICS_ERR_MISSING_TENSOR, "tensor %s is missing", name);
    if (!(*out)->data)
        return idf_errf(err, IDEFICS_ERR_INTERNAL, "tensor %s was not materialised", name);
    return IDEFICS_OK;
}

/* true when t's dims are exactly dims[0..n). */
static bool dims_are(const idfx_tensor *t, uint32_t n, const uint64_t *dims) {
    if (t->n_dims != n)
        return false;
    for (uint32_t d = 0; d < n; d++)
        if (t->dims[d] != dims[d])
            return false;
    return true;
}

static idefics_status bad_shape(const idfx_tensor *t, const char *expected, idf_err *err) {
    char got[96];
    fmt_dims(t, got, sizeof got);
    return idf_errf(err, IDEFICS_ERR_BAD_SHAPE, "tensor %s has shape %s, expected %s", t->name, got, expected);
}

static void weight_from(const idfx_tensor *t, uint64_t rows, uint64_t cols, idf_weight *w) {
    *w = (idf_weight){
        .name = t->name,
        .data = t->data,
        .type = t->type,
        .layout = t->layout,
        .tile_rows = idfx_layout_tiled(t->layout) ? t->layout_param : 0,
        .rows = (int64_t)rows,
        .cols = (int64_t)cols,
    };
}

/* A matrix used through matmul/get_rows: must be exactly [rows, cols]. */
static idefics_status bind_mat(idefics_model *m, const char *name, uint64_t rows, uint64_t cols, idf_weight *w,
                               idf_err *err) {
    const idfx_tensor *t;
    IDF_FORWARD(find(m, name, &t, err));
    const uint64_t want[2] = {rows, cols};
    if (!dims_are(t, 2, want)) {
        char exp[64];
        snprintf(exp, sizeof exp, "[%llu, %llu]", (unsigned long long)rows, (unsigned long long)cols);
        return bad_shape(t, exp, err);
    }
    weight_from(t, rows, cols, w);
    return IDEFICS_OK;
}

/* A tensor read elementwise: copied to fp32 whatever its stored type. */
static idefics_status to_f32(idefics_model *m, const idfx_tensor *t, const float **out, idf_err *err) {
    float *dst = own_floats(m, t->n_elements);
    if (!dst)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory copying tensor %s", t->name);
    if (idfx_layout_tiled(t->layout)) {
        /* the tiled layouts are 2-D [rows, k] by construction (reader) */
        const int64_t rows = (int64_t)t->dims[0], k = (int64_t)t->dims[1];
        for (int64_t r = 0; r < rows; r++)
            idfx_dequant_row_layout_ref(t->type, t->layout, t->data, r, k, t->layout_param, dst + r * k);
    } else if (t->type == IDFX_TYPE_F32) {
        memcpy(dst, t->data, (size_t)t->n_elements * sizeof(float));
    } else if (t->type == IDFX_TYPE_F16) {
        const uint8_t *p = t->data;
        for (uint64_t i = 0; i < t->n_elements; i++)
            dst[i] = idfx_fp16_to_fp32(idf_rd16(p + 2 * i));
    } else {
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "tensor %s has type %s, which cannot be read elementwise",
                        t->name, idfx_type_name(t->type));
    }
    *out = dst;
    return IDEFICS_OK;
}

/* A vector [n]. */
static idefics_status bind_vec(idefics_model *m, const char *name, uint64_t n, const float **out, idf_err *err) {
    const idfx_tensor *t;
    IDF_FORWARD(find(m, name, &t, err));
    if (!dims_are(t, 1, &n)) {
        char exp[32];
        snprintf(exp, sizeof exp, "[%llu]", (unsigned long long)n);
        return bad_shape(t, exp, err);
    }
    return to_f32(m, t, out, err);
}

/* A matrix read elementwise (position embeddings, latents). */
static idefics_status bind_mat_f32(idefics_model *m, const char *name, uint64_t rows, uint64_t cols, const float **out,
                                   idf_err *err) {
    const idfx_tensor *t;
    IDF_FORWARD(find(m, name, &t, err));
    const uint64_t want[2] = {rows, cols};
    if (!dims_are(t, 2, want)) {
        char exp[64];
        snprintf(exp, sizeof exp, "[%llu, %llu]", (unsigned long long)rows, (unsigned long long)cols);
        return bad_shape(t, exp, err);
    }
    return to_f32(m, t, out, err);
}

/* A gate alpha: alpha_type "float" stores [1], "vector" [1, 1, hidden]. Either
 * way the model keeps tanh(alpha) broadcast to [hidden]. */
static idefics_status bind_gate(idefics_model *m, const char *name, uint32_t hidden, const float **out, idf_err *err) {
    const idfx_tensor *t;
    IDF_FORWARD(find(m, name, &t, err));
    const uint64_t d1 = 1, d3[3] = {1, 1, hidden};
    if (!dims_are(t, 1, &d1) && !dims_are(t, 3, d3)) {
        char exp[64];
        snprintf(exp, sizeof exp, "[1] or [1, 1, %u]", hidden);
        return bad_shape(t, exp, err);
    }
    const float *a;
    IDF_FORWARD(to_f32(m, t, &a, err));
    float *g = own_floats(m, hidden);
    if (!g)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for gate %s", name);
    for (uint32_t i = 0; i < hidden; i++)
        g[i] = tanhf(t->n_elements == 1 ? a[0] : a[i]);
    *out = g;
    return IDEFICS_OK;
}

/* Names are built into one buffer; every name in spec §2 fits in 128 bytes. */
#define NM(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)

static idefics_status bind_vision(idefics_model *m, idf_err *err) {
    const idf_config *c = &m->cfg;
    idf_weights *w = m->w;
    char nm[160];
    const uint64_t kdim = (uint64_t)c->v_channels * c->v_patch * c->v_patch;

    /* The patch conv kernel [v_dim, C, P, P] is read as the matrix [v_dim, C*P*P]
     * (same bytes, row-major); a converter may also store it flattened. */
    const idfx_tensor *t;
    IDF_FORWARD(find(m, NM("model.vision_model.embeddings.patch_embedding.weight"), &t, err));
    const uint64_t d4[4] = {c->v_dim, c->v_channels, c->v_patch, c->v_patch}, d2[2] = {c->v_dim, kdim};
    if (!dims_are(t, 4, d4) && !dims_are(t, 2, d2)) {
        char exp[96];
        snprintf(exp, sizeof exp, "[%u, %u, %u, %u]", c->v_dim, c->v_channels, c->v_patch, c->v_patch);
        return bad_shape(t, exp, err);
    }
    weight_from(t, c->v_dim, kdim, &w->patch);

    IDF_FORWARD(bind_vec(m, NM("model.vision_model.embeddings.class_embedding"), c->v_dim, &w->class_emb, err));
    IDF_FORWARD(bind_mat_f32(m, NM("model.vision_model.embeddings.position_embedding.weight"),
                             (uint64_t)c->v_n_patches + 1, c->v_dim, &w->pos_emb, err));
    IDF_FORWARD(bind_vec(m, NM("model.vision_model.pre_layrnorm.weight"), c->v_dim, &w->pre_ln_w, err));
    IDF_FORWARD(bind_vec(m, NM("model.vision_model.pre_layrnorm.bias"), c->v_dim, &w->pre_ln_b, err));

    w->vl = idf_calloc(&m->alloc, c->v_layers, sizeof *w->vl);
    if (!w->vl)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for vision layers");
    for (uint32_t l = 0; l < c->v_layers; l++) {
        idf_vision_layer *L = &w->vl[l];
        const char *p = "model.vision_model.encoder.layers";
        struct {
            const char *part;
            idf_weight *wt;
            const float **b;
            uint64_t rows, cols;
        } mats[] = {
            {"self_attn.q_proj", &L->q, &L->q_b, c->v_dim, c->v_dim},
            {"self_attn.k_proj", &L->k, &L->k_b, c->v_dim, c->v_dim},
            {"self_attn.v_proj", &L->v, &L->v_b, c->v_dim, c->v_dim},
            {"self_attn.out_proj", &L->o, &L->o_b, c->v_dim, c->v_dim},
            {"mlp.fc1", &L->fc1, &L->fc1_b, c->v_intermediate, c->v_dim},
            {"mlp.fc2", &L->fc2, &L->fc2_b, c->v_dim, c->v_intermediate},
        };
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) {
            IDF_FORWARD(
                bind_mat(m, NM("%s.%u.%s.weight", p, l, mats[i].part), mats[i].rows, mats[i].cols, mats[i].wt, err));
            IDF_FORWARD(bind_vec(m, NM("%s.%u.%s.bias", p, l, mats[i].part), mats[i].rows, mats[i].b, err));
        }
        IDF_FORWARD(bind_vec(m, NM("%s.%u.layer_norm1.weight", p, l), c->v_dim, &L->ln1_w, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.layer_norm1.bias", p, l), c->v_dim, &L->ln1_b, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.layer_norm2.weight", p, l), c->v_dim, &L->ln2_w, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.layer_norm2.bias", p, l), c->v_dim, &L->ln2_b, err));
    }
    return IDEFICS_OK;
}

static idefics_status bind_perceiver(idefics_model *m, idf_err *err) {
    const idf_config *c = &m->cfg;
    idf_weights *w = m->w;
    char nm[160];
    const char *p = "model.perceiver_resampler";
    const uint64_t inner = (uint64_t)c->p_heads * c->p_head_dim, mlp = 4ull * c->v_dim;

    IDF_FORWARD(bind_mat_f32(m, NM("%s.latents", p), c->p_latents, c->v_dim, &w->latents, err));
    IDF_FORWARD(bind_vec(m, NM("%s.layer_norm.weight", p), c->v_dim, &w->p_ln_w, err));
    IDF_FORWARD(bind_vec(m, NM("%s.layer_norm.bias", p), c->v_dim, &w->p_ln_b, err));
    w->pb = idf_calloc(&m->alloc, c->p_depth, sizeof *w->pb);
    if (!w->pb)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for perceiver blocks");
    for (uint32_t b = 0; b < c->p_depth; b++) {
        idf_perceiver_block *B = &w->pb[b];
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.context_layer_norm.weight", p, b), c->v_dim, &B->ctx_ln_w, err));
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.context_layer_norm.bias", p, b), c->v_dim, &B->ctx_ln_b, err));
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.latents_layer_norm.weight", p, b), c->v_dim, &B->lat_ln_w, err));
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.latents_layer_norm.bias", p, b), c->v_dim, &B->lat_ln_b, err));
        if (c->p_qk_norms) {
            IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.q_layer_norm.weight", p, b), c->p_head_dim, &B->q_ln_w, err));
            IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.q_layer_norm.bias", p, b), c->p_head_dim, &B->q_ln_b, err));
            IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.k_layer_norm.weight", p, b), c->p_head_dim, &B->k_ln_w, err));
            IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.0.k_layer_norm.bias", p, b), c->p_head_dim, &B->k_ln_b, err));
        }
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.0.q_proj.weight", p, b), inner, c->v_dim, &B->q, err));
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.0.k_proj.weight", p, b), inner, c->v_dim, &B->k, err));
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.0.v_proj.weight", p, b), inner, c->v_dim, &B->v, err));
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.0.output_proj.weight", p, b), c->v_dim, inner, &B->o, err));
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.1.ln.weight", p, b), c->v_dim, &B->mlp_ln_w, err));
        IDF_FORWARD(bind_vec(m, NM("%s.blocks.%u.1.ln.bias", p, b), c->v_dim, &B->mlp_ln_b, err));
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.1.fc.weight", p, b), mlp, c->v_dim, &B->fc, err));
        IDF_FORWARD(bind_mat(m, NM("%s.blocks.%u.1.c_proj.weight", p, b), c->v_dim, mlp, &B->c_proj, err));
    }
    return IDEFICS_OK;
}

static idefics_status bind_text(idefics_model *m, idf_err *err) {
    const idf_config *c = &m->cfg;
    idf_weights *w = m->w;
    char nm[160];
    const uint32_t H = c->hidden, I = c->intermediate, A = c->additional_vocab;

    IDF_FORWARD(bind_mat(m, NM("model.embed_tokens.weight"), c->vocab_size, H, &w->embed, err));
    IDF_FORWARD(bind_mat(m, NM("lm_head.weight"), c->vocab_size, H, &w->lm_head, err));
    if (A > 0) {
        IDF_FORWARD(bind_mat(m, NM("model.embed_tokens.additional_embedding.weight"), A, H, &w->embed_add, err));
        IDF_FORWARD(bind_mat(m, NM("lm_head.additional_fc.weight"), A, H, &w->lm_add, err));
    }
    IDF_FORWARD(bind_vec(m, NM("model.norm.weight"), H, &w->norm, err));

    w->dl = idf_calloc(&m->alloc, c->n_layers, sizeof *w->dl);
    w->xb = c->n_cross ? idf_calloc(&m->alloc, c->n_cross, sizeof *w->xb) : NULL;
    if (!w->dl || (c->n_cross && !w->xb))
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for decoder layers");
    for (uint32_t l = 0; l < c->n_layers; l++) {
        idf_decoder_layer *L = &w->dl[l];
        const char *p = "model.layers";
        IDF_FORWARD(bind_vec(m, NM("%s.%u.input_layernorm.weight", p, l), H, &L->ln_in, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.post_attention_layernorm.weight", p, l), H, &L->ln_post, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.self_attn.q_proj.weight", p, l), H, H, &L->q, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.self_attn.k_proj.weight", p, l), H, H, &L->k, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.self_attn.v_proj.weight", p, l), H, H, &L->v, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.self_attn.o_proj.weight", p, l), H, H, &L->o, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.gate_proj.weight", p, l), I, H, &L->gate, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.up_proj.weight", p, l), I, H, &L->up, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.down_proj.weight", p, l), H, I, &L->down, err));
    }
    for (uint32_t j = 0; j < c->n_cross; j++) {
        idf_cross_block *B = &w->xb[j];
        const char *p = "model.gated_cross_attn_layers";
        IDF_FORWARD(bind_gate(m, NM("%s.%u.alpha_cross_attn", p, j), H, &B->gate_attn, err));
        IDF_FORWARD(bind_gate(m, NM("%s.%u.alpha_dense", p, j), H, &B->gate_dense, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.input_layernorm.weight", p, j), H, &B->ln_in, err));
        IDF_FORWARD(bind_vec(m, NM("%s.%u.post_attention_layernorm.weight", p, j), H, &B->ln_post, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.cross_attn.q_proj.weight", p, j), H, H, &B->q, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.cross_attn.k_proj.weight", p, j), H, c->v_dim, &B->k, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.cross_attn.v_proj.weight", p, j), H, c->v_dim, &B->v, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.cross_attn.o_proj.weight", p, j), H, H, &B->o, err));
        if (c->qk_layer_norms) {
            IDF_FORWARD(bind_vec(m, NM("%s.%u.cross_attn.q_layer_norm.weight", p, j), c->head_dim, &B->q_norm, err));
            IDF_FORWARD(bind_vec(m, NM("%s.%u.cross_attn.k_layer_norm.weight", p, j), c->head_dim, &B->k_norm, err));
        }
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.gate_proj.weight", p, j), I, H, &B->gate, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.up_proj.weight", p, j), I, H, &B->up, err));
        IDF_FORWARD(bind_mat(m, NM("%s.%u.mlp.down_proj.weight", p, j), H, I, &B->down, err));
    }
    return IDEFICS_OK;
}

#undef NM

static void free_weights(idefics_model *m) {
    idf_weights *w = m->w;
    if (!w)
        return;
    for (own_hdr *h = w->owned; h;) {
        own_hdr *next = h->next;
        idf_free(&m->alloc, h);
        h = next;
    }
    idf_free(&m->alloc, w->vl);
    idf_free(&m->alloc, w->pb);
    idf_free(&m->alloc, w->dl);
    idf_free(&m->alloc, w->xb);
    idf_free(&m->alloc, w);
    m->w = NULL;
}

static idefics_status bind_weights(idefics_model *m, idf_err *err) {
    m->w = idf_calloc(&m->alloc, 1, sizeof *m->w);
    if (!m->w)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the weight table");
    if (m->cfg.text_only)
        return bind_text(m, err);
    IDF_FORWARD(bind_vision(m, err));
    if (m->cfg.use_resampler)
        IDF_FORWARD(bind_perceiver(m, err));
    return bind_text(m, err);
}

/* ============================================================ public API */

idefics_model_params idefics_model_default_params(void) {
    return (idefics_model_params){
        .allocator = {0},
        .log = NULL,
        .log_user_data = NULL,
        .log_level = IDEFICS_LOG_INFO,
        .progress = NULL,
        .progress_user_data = NULL,
        .n_threads = 0,
        .backend = IDEFICS_BACKEND_AUTO,
        .device = NULL,
        .verify_checksums = false,
        .low_memory = false,
        .verify = IDEFICS_VERIFY_AUTO,
        .verify_cache_dir = NULL,
        .use_mmap = true,
    };
}

static bool progress(const idefics_model_params *p, float f) {
    return !p->progress || p->progress(p->progress_user_data, f);
}

/* The backend a model's sessions will use. CPU and AUTO get the fast CPU
 * backend (backend_cpu.c), CPU_REF the reference; OpenCL is refused rather
 * than silently replaced, since the caller asked for a device explicitly. */
static idefics_status pick_backend(idefics_model *m, idefics_backend want, const char *device, idf_err *err) {
#ifdef IDF_HAVE_OPENCL
    /* OpenCL first for AUTO and OPENCL: the device is opened, its program built
     * (or loaded from the cache) and self-tested here, once per model. AUTO
     * falls through to the CPU with one INFO line saying why; OPENCL fails. */
    if (want == IDEFICS_BACKEND_AUTO || want == IDEFICS_BACKEND_OPENCL) {
        idf_err oerr;
        idf_err_clear(&oerr);
        const idefics_status st =
            idf_ocl_device_open(device, want == IDEFICS_BACKEND_AUTO, &m->alloc, &m->log, &m->ocl, &oerr);
        if (st == IDEFICS_OK) {
            m->backend = IDEFICS_BACKEND_OPENCL;
            m->backend_name = "opencl";
            idf_logf(&m->log, IDEFICS_LOG_INFO, "opencl: using %s (%s)", idf_ocl_device_probe(m->ocl)->device,
                     idf_ocl_device_tuning(m->ocl)->file);
            return IDEFICS_OK;
        }
        if (want == IDEFICS_BACKEND_OPENCL)
            return idf_errf(err, st == IDEFICS_ERR_OUT_OF_MEMORY ? st : IDEFICS_ERR_NO_DEVICE,
                            "backend opencl is not usable: %s", oerr.msg);
        idf_logf(&m->log, IDEFICS_LOG_INFO, "opencl: not used (%s); running on the CPU", oerr.msg);
    }
#else
    (void)device;
#endif
    switch (want) {
    case IDEFICS_BACKEND_AUTO:
    case IDEFICS_BACKEND_CPU:
        m->backend = IDEFICS_BACKEND_CPU;
        m->backend_name = "cpu";
        return IDEFICS_OK;
    case IDEFICS_BACKEND_CPU_REF:
        m->backend = IDEFICS_BACKEND_CPU_REF;
        m->backend_name = "cpu-ref";
        return IDEFICS_OK;
    case IDEFICS_BACKEND_OPENCL: /* reached only in a build without CL/cl.h */
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "backend opencl is not available in this build");
    }
    return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "params.backend = %d is not a known backend", (int)want);
}

/* Verify (integrity.c) when the mode and the stamp say so, then materialise.
 * Checksums come before decoding, so a damaged zstd frame is reported as a
 * checksum failure rather than whatever the decompressor makes of it. */
static idefics_status load_verify_materialize(idefics_model *m, const idefics_model_params *p, const char *path,
                                              idf_pool *pool, idf_err *err) {
    const int mode = p->verify_checksums ? IDEFICS_VERIFY_ALWAYS : p->verify;
    idf_stamp stamp;
    bool need = mode == IDEFICS_VERIFY_ALWAYS;
    if (mode == IDEFICS_VERIFY_AUTO) {
        idf_stamp_init(&stamp, p->verify_cache_dir, &m->map);
        need = !idf_stamp_present(&stamp);
        if (!need)
            idf_logf(&m->log, IDEFICS_LOG_INFO, "verify: %s was verified before (stamp %s); skipped", path,
                     stamp.path);
    }
    if (need) {
        const idfx_verify_opts vo = {.checksums = true, .scales = true};
        idfx_verify_stats vs;
        IDF_FORWARD(idfx_verify(&m->file, pool, &vo, NULL, NULL, &vs, err));
        idf_logf(&m->log, IDEFICS_LOG_INFO, "verify: %llu chunks, %.1f MiB in %.1f ms (%.2f GB/s, %d threads)",
                 (unsigned long long)vs.chunks, (double)vs.bytes / (1024.0 * 1024.0), vs.ms,
                 vs.ms > 0 ? (double)vs.bytes / vs.ms / 1e6 : 0.0, vs.threads);
    }
    IDF_FORWARD(idfx_materialize(&m->file, pool, false, err));
    if (need) {
        IDF_FORWARD(idfx_verify_decoded_scales(&m->file, err));
        if (mode == IDEFICS_VERIFY_ALWAYS) idf_stamp_init(&stamp, p->verify_cache_dir, &m->map);
        if (!idf_stamp_write(&stamp))
            idf_logf(&m->log, IDEFICS_LOG_DEBUG, "verify: cannot write a stamp under %s; the next load verifies again",
                     stamp.path[0] ? stamp.path : "the cache folder");
    }
    return IDEFICS_OK;
}

idefics_status idefics_model_load(const char *path, const idefics_model_params *params, idefics_model **out,
                                  char *errbuf, size_t errbuf_size) {
    idf_err err;
    idf_err_clear(&err);
    if (out)
        *out = NULL;
    if (errbuf && errbuf_size)
        errbuf[0] = '\0';
    if (!path || !out) {
        idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "idefics_model_load: path and out must not be NULL");
        idf_err_copy(&err, errbuf, errbuf_size);
        return IDEFICS_ERR_INVALID_ARG;
    }
    const idefics_model_params p = params ? *params : idefics_model_default_params();
    const double t0 = idf_time_ms();
    const idf_alloc al = {p.allocator};
    idefics_model *m = idf_calloc(&al, 1, sizeof *m);
    if (!m) {
        idf_errf(&err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the model");
        idf_err_copy(&err, errbuf, errbuf_size);
        return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    m->alloc = al;
    m->log = (idf_log){p.log, p.log_user_data, p.log_level};
    m->map.fd = -1;

    idefics_status st = pick_backend(m, p.backend, p.device, &err);
    if (st == IDEFICS_OK && !progress(&p, 0.0f))
        st = idf_errf(&err, IDEFICS_ERR_CANCELLED, "model load cancelled by the progress callback");
    if (st == IDEFICS_OK && !p.use_mmap && p.low_memory)
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG,
                      "low_memory pages the weights through the file mapping: it cannot be combined with "
                      "use_mmap = false (--no-mmap)");
    /* The load's threads: the use_mmap = false copy, then verification and decompression. */
    idf_pool *pool = NULL;
    if (st == IDEFICS_OK && !(pool = idf_pool_create(p.n_threads, idf_malloc_cb, idf_free_cb, &m->alloc)))
        st = idf_errf(&err, IDEFICS_ERR_OUT_OF_MEMORY, "cannot create a pool of %d threads", p.n_threads);
    if (st == IDEFICS_OK) {
        /* Huge pages for the page cache, except with low_memory, which gives
         * pages back per layer (a 2 MB page would come back whole). */
        const int e = idf_map_file_ex(path, &m->map, p.low_memory ? 0u : IDF_MAP_HUGE);
        if (e)
            st = idf_errf(&err, IDEFICS_ERR_IO, "cannot open %s: %s", path, idf_open_strerror(e));
    }
    if (st == IDEFICS_OK && !p.use_mmap) {
        const int e = idf_map_make_private(&m->map, pool);
        if (e)
            st = idf_errf(&err, e == ENOMEM ? IDEFICS_ERR_OUT_OF_MEMORY : IDEFICS_ERR_IO,
                          "cannot copy %s into memory (use_mmap = false; %.1f GB): %s", path,
                          (double)m->map.size / 1e9, strerror(e));
    }
    if (st == IDEFICS_OK) {
        /* Without low_memory every weight is read soon anyway: ask for read-ahead. */
        if (!p.low_memory)
            idf_map_advise_willneed(&m->map, 0, m->map.size);
        st = idfx_open(&m->file, m->map.data, m->map.size, &m->alloc, &err);
    }
    if (st == IDEFICS_OK && !progress(&p, 0.1f))
        st = idf_errf(&err, IDEFICS_ERR_CANCELLED, "model load cancelled by the progress callback");
    if (st == IDEFICS_OK && p.verify != IDEFICS_VERIFY_AUTO && p.verify != IDEFICS_VERIFY_ALWAYS &&
        p.verify != IDEFICS_VERIFY_NEVER)
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "params.verify = %d is not an idefics_verify_mode", p.verify);
    if (st == IDEFICS_OK)
        st = load_verify_materialize(m, &p, path, pool, &err);
    idf_pool_free(pool);
    if (st == IDEFICS_OK && !progress(&p, 0.9f))
        st = idf_errf(&err, IDEFICS_ERR_CANCELLED, "model load cancelled by the progress callback");
    if (st == IDEFICS_OK)
        st = read_config(m, &err);
    if (st == IDEFICS_OK)
        st = idf_tokenizer_from_idfx(&m->file, &m->alloc, &m->tok, &err);
    if (st == IDEFICS_OK)
        st = read_tokens(m, &err);
    if (st == IDEFICS_OK)
        st = bind_weights(m, &err);
#ifdef IDF_HAVE_OPENCL
    if (st == IDEFICS_OK && m->ocl) {
        st = idf_ocl_bind_weights(m->ocl, m, &err);
        if (st != IDEFICS_OK && p.backend == IDEFICS_BACKEND_AUTO) {
            /* AUTO promised a working model: drop the device, run on the CPU */
            idf_logf(&m->log, IDEFICS_LOG_INFO, "opencl: not used (%s); running on the CPU", err.msg);
            idf_ocl_unbind_weights(m->ocl, m);
            idf_ocl_device_free(m->ocl);
            m->ocl = NULL;
            idf_err_clear(&err);
            st = pick_backend(m, IDEFICS_BACKEND_CPU, NULL, &err);
        }
    }
#endif
    if (st == IDEFICS_OK && !progress(&p, 1.0f))
        st = idf_errf(&err, IDEFICS_ERR_CANCELLED, "model load cancelled by the progress callback");
    if (st != IDEFICS_OK) {
        /* A caller with an errbuf prints the error itself; logging it at ERROR
         * too made every CLI print it twice (known bug). */
        idf_logf(&m->log, errbuf && errbuf_size ? IDEFICS_LOG_DEBUG : IDEFICS_LOG_ERROR, "%s", err.msg);
        idf_err_copy(&err, errbuf, errbuf_size);
        idefics_model_free(m);
        return st;
    }
    m->load_ms = idf_time_ms() - t0;
    /* low_memory: whatever load touched (checksums, table reads) need not stay
     * resident; forward.c pages layers in as it reaches them. */
    m->low_memory = p.low_memory;
    if (m->low_memory)
        idf_map_advise_dontneed(&m->map, 0, m->map.size);
    idf_logf(&m->log, IDEFICS_LOG_INFO, "loaded %s (%s): %u tensors, %.1f MiB, %u layers, backend %s, in %.1f ms", path,
             m->name[0] ? m->name : "unnamed", m->file.n_tensors, (double)m->map.size / (1024.0 * 1024.0),
             m->cfg.n_layers, m->backend_name, m->load_ms);
    *out = m;
    return IDEFICS_OK;
}

void idefics_model_free(idefics_model *m) {
    if (!m)
        return;
    const idf_alloc al = m->alloc;
    free_weights(m);
#ifdef IDF_HAVE_OPENCL
    idf_ocl_device_free(m->ocl); /* before the unmap: weight buffers may wrap the mapping */
#endif
    idf_tokenizer_free(m->tok);
    idfx_close(&m->file);
    idf_unmap_file(&m->map);
    idf_free(&al, m);
}

bool idefics_model_contains_address(const idefics_model *m, const void *addr) {
    /* async-signal-safe: two loads and compares, nothing else */
    if (!m || !m->map.data || !addr) return false;
    const uintptr_t a = (uintptr_t)addr, b = (uintptr_t)m->map.data;
    return a >= b && a - b < m->map.size;
}

/* The last error of a call on a model, kept per calling thread (like errno):
 * a model is shared by any number of threads, and one buffer in the model
 * written by all of them was a data race (TSan, issue 15). Thread-local
 * storage is not shared state, so the "no mutable globals" rule holds. */
static _Thread_local struct {
    const idefics_model *model;
    idf_err err;
} tls_model_err;

idf_err *idf_model_err(const idefics_model *m) {
    tls_model_err.model = m;
    return &tls_model_err.err;
}

const char *idefics_model_last_error(const idefics_model *m) {
    return m && tls_model_err.model == m ? tls_model_err.err.msg : "";
}

void idefics_model_get_info(const idefics_model *m, idefics_model_info *info) {
    if (!info)
        return;
    memset(info, 0, sizeof *info);
    info->name = "";
    info->backend = "";
    info->device = "";
    if (!m)
        return;
    int64_t n_params = 0;
    for (uint32_t i = 0; i < m->file.n_tensors; i++)
        n_params += (int64_t)m->file.tensors[i].n_elements;
    info->name = m->name;
    info->n_params = n_params;
    info->file_bytes = (int64_t)m->map.size;
    info->n_vocab = (int)m->cfg.n_vocab;
    info->n_ctx_max = (int)m->cfg.max_pos;
    info->image_size = (int)m->cfg.v_image_size;
    info->n_latents = (int)m->n_img_tokens;
    info->is_instruct = m->cfg.is_instruct;
    info->backend = m->backend_name;
    info->mmap = !m->map.anon;
#ifdef IDF_HAVE_OPENCL
    if (m->ocl)
        info->device = idf_ocl_device_probe(m->ocl)->device;
#endif
}

/* Identity for caption records (issue 12): everything but the data section,
 * i.e. header, metadata and tensor index. The index holds each chunk's
 * checksum, so this changes with any weight, yet costs no pass over 5 GB. */
idefics_status idefics_model_identity(const idefics_model *m, char *buf, size_t size, size_t *len) {
    if (!m || !buf || size < 22) return IDEFICS_ERR_INVALID_ARG;
    const idfx_file *f = &m->file;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    uint64_t head = f->data_offset <= f->size ? f->data_offset : f->size;
    XXH3_64bits_update(&st, f->base, (size_t)head);
    uint64_t tail = f->data_offset + f->data_size;
    if (tail < f->size) XXH3_64bits_update(&st, f->base + tail, (size_t)(f->size - tail));
    int n = snprintf(buf, size, "xxh3:%016llx", (unsigned long long)XXH3_64bits_digest(&st));
    if (len) *len = (size_t)n;
    return IDEFICS_OK;
}
