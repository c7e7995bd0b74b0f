/*
 * hf_config.c - config.json -> idf_hf_config and the architecture's expected
 * tensor list (hf_config.h). Tensor names and shapes follow transformers'
 * IdeficsForVisionText2Text state dict (checked against a saved model, see
 * tests/fixtures/convert/make_tiny_hf.py).
 */
#include "hf_config.h"
#include "platform.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"

/* Sizes above this are refused: no IDEFICS dimension is near it, and it keeps
 * every product of a few of them far from overflow. */
#define HF_MAX_DIM (1u << 24)

static const float clip_mean[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float clip_std[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static int fail(char *err, size_t errsz, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errsz, int status, const char *fmt, ...) {
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return status;
}

char *idf_read_text_file(const char *path, size_t max, size_t *len) {
    /* regular files only (a FIFO would block); on failure errno holds an errno
     * value or an IDF_ENOTREG_* code for idf_open_strerror() */
    int oe = 0;
    FILE *fp = idf_fopen_regular(path, &oe);
    if (!fp) {
        errno = oe;
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    int ok = 1;
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                ok = 0; /* larger than max */
                break;
            }
            cap = cap ? cap * 2 : 16384;
            if (cap > max) cap = max;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                ok = 0;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) break;
    }
    ok = ok && buf && !ferror(fp);
    fclose(fp);
    if (!ok) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

typedef struct reader {
    const cJSON *obj;
    const char *prefix; /* "" or "vision_config." for messages */
    char *err;
    size_t errsz;
    int st;
} reader;

/* An unsigned integer key in [lo, HF_MAX_DIM], or dflt when absent. */
static uint32_t get_u32(reader *r, const char *key, uint32_t dflt, uint32_t lo) {
    const cJSON *j = r->obj ? cJSON_GetObjectItemCaseSensitive(r->obj, key) : NULL;
    if (!j || cJSON_IsNull(j)) return dflt;
    double v = cJSON_IsNumber(j) ? j->valuedouble : -1;
    if (!cJSON_IsNumber(j) || v != floor(v) || v < lo || v > HF_MAX_DIM) {
        if (!r->st)
            r->st = fail(r->err, r->errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: %s%s must be an integer in [%u, %u]",
                         r->prefix, key, lo, HF_MAX_DIM);
        return dflt;
    }
    return (uint32_t)v;
}

static float get_f32(reader *r, const char *key, float dflt) {
    const cJSON *j = r->obj ? cJSON_GetObjectItemCaseSensitive(r->obj, key) : NULL;
    if (!j || cJSON_IsNull(j)) return dflt;
    if (!cJSON_IsNumber(j) || !(j->valuedouble > 0) || !(j->valuedouble < 1)) {
        if (!r->st)
            r->st = fail(r->err, r->errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: %s%s must be a number in (0, 1)",
                         r->prefix, key);
        return dflt;
    }
    return (float)j->valuedouble;
}

static bool get_bool(reader *r, const char *key, bool dflt) {
    const cJSON *j = r->obj ? cJSON_GetObjectItemCaseSensitive(r->obj, key) : NULL;
    if (!j || cJSON_IsNull(j)) return dflt;
    if (!cJSON_IsBool(j)) {
        if (!r->st)
            r->st = fail(r->err, r->errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: %s%s must be true or false", r->prefix,
                         key);
        return dflt;
    }
    return cJSON_IsTrue(j);
}

static void get_str(reader *r, const char *key, const char *dflt, char *out, size_t outsz) {
    const cJSON *j = r->obj ? cJSON_GetObjectItemCaseSensitive(r->obj, key) : NULL;
    if (j && !cJSON_IsNull(j) && (!cJSON_IsString(j) || strlen(j->valuestring) >= outsz)) {
        if (!r->st)
            r->st = fail(r->err, r->errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: %s%s must be a string of < %zu bytes",
                         r->prefix, key, outsz);
        j = NULL;
    }
    snprintf(out, outsz, "%s", j && cJSON_IsString(j) ? j->valuestring : dflt);
}

static int check_arch(const cJSON *root, idf_hf_config *c, char *err, size_t errsz) {
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    const cJSON *list = cJSON_IsArray(archs) ? archs : NULL, *a;
    cJSON_ArrayForEach(a, list) {
        if (cJSON_IsString(a) && !strcmp(a->valuestring, "IdeficsForVisionText2Text")) {
            snprintf(c->arch, sizeof c->arch, "%s", a->valuestring);
            return 0;
        }
        /* the text-only LLaMA, for comparisons with other runtimes on the same decoder */
        if (cJSON_IsString(a) && !strcmp(a->valuestring, "LlamaForCausalLM")) {
            snprintf(c->arch, sizeof c->arch, "%s", a->valuestring);
            c->text_only = true;
            return 0;
        }
    }
    if (cJSON_IsString(mt) && !strcmp(mt->valuestring, "idefics")) {
        snprintf(c->arch, sizeof c->arch, "idefics");
        return 0;
    }
    char found[160] = "";
    cJSON_ArrayForEach(a, list) {
        size_t l = strlen(found);
        if (cJSON_IsString(a) && l < sizeof found - 2)
            snprintf(found + l, sizeof found - l, "%s%s", l ? ", " : "", a->valuestring);
    }
    return fail(err, errsz, IDEFICS_ERR_UNSUPPORTED,
                "config.json: architecture [%s] with model_type '%s' is not IDEFICS "
                "(need IdeficsForVisionText2Text, LlamaForCausalLM or model_type \"idefics\")",
                found, cJSON_IsString(mt) ? mt->valuestring : "(none)");
}

static int parse_preproc(const char *text, size_t len, idf_hf_config *c, char *err, size_t errsz) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "preprocessor_config.json: not a JSON object");
    }
    static const char *keys[2] = {"image_mean", "image_std"};
    float *dst[2] = {c->image_mean, c->image_std};
    int st = 0;
    for (int k = 0; k < 2 && !st; k++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
        /* Absent or null (what transformers writes by default): the processor
         * uses the CLIP constants, which are already set. */
        if (!a || cJSON_IsNull(a)) continue;
        if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != 3) {
            st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "preprocessor_config.json: %s must be 3 numbers or null",
                      keys[k]);
            break;
        }
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, a) {
            if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || (k == 1 && !(v->valuedouble > 0))) {
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                          "preprocessor_config.json: %s[%d] must be a finite number%s", keys[k], i,
                          k ? " > 0" : "");
                break;
            }
            dst[k][i++] = (float)v->valuedouble;
        }
    }
    cJSON_Delete(root);
    return st;
}

int idf_hf_config_parse(const char *config_json, size_t len, const char *preproc_json, size_t preproc_len,
                        idf_hf_config *c, char *err, size_t errsz) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_ParseWithLength(config_json, len);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "config.json: not a JSON object");
    }
    int st = check_arch(root, c, err, errsz);
    if (st) {
        cJSON_Delete(root);
        return st;
    }
    reader r = {.obj = root, .prefix = "", .err = err, .errsz = errsz};
    c->vocab_size = get_u32(&r, "vocab_size", 32000, 1);
    c->additional_vocab_size = get_u32(&r, "additional_vocab_size", 0, 0);
    c->hidden_size = get_u32(&r, "hidden_size", 4096, 1);
    c->intermediate_size = get_u32(&r, "intermediate_size", 11008, 1);
    c->num_hidden_layers = get_u32(&r, "num_hidden_layers", 32, 1);
    c->num_attention_heads = get_u32(&r, "num_attention_heads", 32, 1);
    c->max_position_embeddings = get_u32(&r, "max_position_embeddings", 2048, 1);
    c->cross_layer_interval = get_u32(&r, "cross_layer_interval", 1, 1);
    c->rms_norm_eps = get_f32(&r, "rms_norm_eps", 1e-6f);
    c->qk_layer_norms = get_bool(&r, "qk_layer_norms", false);
    c->use_resampler = get_bool(&r, "use_resampler", false);
    get_str(&r, "hidden_act", "silu", c->hidden_act, sizeof c->hidden_act);
    c->bos_token_id = get_u32(&r, "bos_token_id", 1, 0);
    c->eos_token_id = get_u32(&r, "eos_token_id", 2, 0);
    c->pad_token_id = get_u32(&r, "pad_token_id", 0, 0);
    char alpha_type[16];
    get_str(&r, "alpha_type", "float", alpha_type, sizeof alpha_type);
    if (!r.st && strcmp(alpha_type, "float"))
        r.st = fail(err, errsz, IDEFICS_ERR_UNSUPPORTED, "config.json: alpha_type '%s' (only \"float\" gates)",
                    alpha_type);

    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    if (!r.st && vc && !cJSON_IsObject(vc))
        r.st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: vision_config is not an object");
    r.obj = cJSON_IsObject(vc) ? vc : NULL;
    r.prefix = "vision_config.";
    /* transformers' IdeficsVisionConfig calls the width embed_dim; accept hidden_size as well */
    c->v_embed_dim = get_u32(&r, "embed_dim", get_u32(&r, "hidden_size", 768, 1), 1);
    c->v_image_size = get_u32(&r, "image_size", 224, 1);
    c->v_patch_size = get_u32(&r, "patch_size", 14, 1);
    c->v_num_hidden_layers = get_u32(&r, "num_hidden_layers", 32, 1);
    c->v_num_attention_heads = get_u32(&r, "num_attention_heads", 16, 1);
    c->v_intermediate_size = get_u32(&r, "intermediate_size", 5120, 1);
    c->v_num_channels = get_u32(&r, "num_channels", 3, 1);
    c->v_layer_norm_eps = get_f32(&r, "layer_norm_eps", 1e-5f);
    get_str(&r, "hidden_act", "gelu", c->v_hidden_act, sizeof c->v_hidden_act);

    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(root, "perceiver_config");
    if (!r.st && pc && !cJSON_IsObject(pc))
        r.st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: perceiver_config is not an object");
    r.obj = cJSON_IsObject(pc) ? pc : NULL;
    r.prefix = "perceiver_config.";
    c->p_depth = get_u32(&r, "resampler_depth", 6, 1);
    c->p_n_latents = get_u32(&r, "resampler_n_latents", 64, 1);
    c->p_n_heads = get_u32(&r, "resampler_n_heads", 16, 1);
    c->p_head_dim = get_u32(&r, "resampler_head_dim", 96, 1);
    c->p_qk_layer_norms = get_bool(&r, "qk_layer_norms_perceiver", false);
    c->rope_theta = 10000.f;
    if (c->text_only) {
        /* LLaMA: no vision, perceiver or cross blocks; a few decoder options
         * IDEFICS does not have, accepted only where they mean the same model */
        r.obj = root;
        r.prefix = "";
        const cJSON *rt = cJSON_GetObjectItemCaseSensitive(root, "rope_theta"); /* get_f32 is for eps in (0, 1) */
        if (cJSON_IsNumber(rt))
            c->rope_theta = (float)rt->valuedouble;
        else if (rt && !cJSON_IsNull(rt) && !r.st)
            r.st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: rope_theta must be a number");
        const uint32_t kvh = get_u32(&r, "num_key_value_heads", c->num_attention_heads, 1);
        if (!r.st && kvh != c->num_attention_heads)
            r.st = fail(err, errsz, IDEFICS_ERR_UNSUPPORTED, "config.json: num_key_value_heads %u != "
                        "num_attention_heads %u (grouped-query attention is not supported)", kvh,
                        c->num_attention_heads);
        if (!r.st && get_bool(&r, "tie_word_embeddings", false))
            r.st = fail(err, errsz, IDEFICS_ERR_UNSUPPORTED, "config.json: tie_word_embeddings is not supported");
        if (!r.st && !(c->rope_theta >= 1.f && c->rope_theta <= 1e9f))
            r.st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: rope_theta %g is out of range",
                        (double)c->rope_theta);
        c->cross_layer_interval = 1; /* unused; keeps the divisibility check below trivially true */
        c->additional_vocab_size = 0;
        c->use_resampler = false;
        c->qk_layer_norms = false;
    }
    cJSON_Delete(root);
    st = r.st;

    /* shapes the model splits or divides */
    if (!st && c->hidden_size % c->num_attention_heads)
        st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: hidden_size %u is not a multiple of "
                  "num_attention_heads %u", c->hidden_size, c->num_attention_heads);
    if (!st && c->num_hidden_layers % c->cross_layer_interval)
        st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: num_hidden_layers %u is not a multiple of "
                  "cross_layer_interval %u", c->num_hidden_layers, c->cross_layer_interval);
    if (!st && c->v_image_size % c->v_patch_size)
        st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: vision_config.image_size %u is not a multiple "
                  "of patch_size %u", c->v_image_size, c->v_patch_size);
    if (!st && c->v_embed_dim % c->v_num_attention_heads)
        st = fail(err, errsz, IDEFICS_ERR_BAD_CONFIG, "config.json: vision_config.embed_dim %u is not a multiple "
                  "of num_attention_heads %u", c->v_embed_dim, c->v_num_attention_heads);
    if (!st && c->v_num_channels != 3)
        st = fail(err, errsz, IDEFICS_ERR_UNSUPPORTED, "config.json: vision_config.num_channels %u (only RGB, 3)",
                  c->v_num_channels);
    if (st) return st;

    memcpy(c->image_mean, clip_mean, sizeof clip_mean);
    memcpy(c->image_std, clip_std, sizeof clip_std);
    if (preproc_json) {
        st = parse_preproc(preproc_json, preproc_len, c, err, errsz);
        c->have_preprocessor = st == 0;
    }
    return st;
}

const char *idf_tensor_role_name(idf_tensor_role role) {
    static const char *names[IDF_ROLE_COUNT] = {
        [IDF_ROLE_TEXT_LINEAR] = "text linear",   [IDF_ROLE_XATTN_LINEAR] = "cross-attn linear",
        [IDF_ROLE_PERCEIVER_LINEAR] = "perceiver linear", [IDF_ROLE_VISION_LINEAR] = "vision linear",
        [IDF_ROLE_EMBED] = "embedding",           [IDF_ROLE_HEAD] = "lm head",
        [IDF_ROLE_PATCH] = "patch conv",          [IDF_ROLE_SMALL] = "small",
    };
    return (unsigned)role < IDF_ROLE_COUNT ? names[role] : "?";
}

/* ---------------------------------------------------------- tensor list */

typedef struct list {
    idf_expected_tensor *v;
    uint32_t n, cap;
    int oom;
} list;

static void add(list *l, idf_tensor_role role, bool optional, uint32_t n_dims, const uint64_t *shape,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void add(list *l, idf_tensor_role role, bool optional, uint32_t n_dims, const uint64_t *shape,
                const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 256;
        idf_expected_tensor *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            l->oom = 1;
            return;
        }
        l->v = nv;
        l->cap = cap;
    }
    idf_expected_tensor *t = &l->v[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->n_dims = n_dims;
    memcpy(t->shape, shape, n_dims * sizeof *shape);
    t->role = role;
    t->optional = optional;
}

#define V1(a) ((const uint64_t[]){(a)})
#define V2(a, b) ((const uint64_t[]){(a), (b)})
#define ADD1(l, role, n, ...) add(l, role, false, 1, V1(n), __VA_ARGS__)
#define ADD2(l, role, r, k, ...) add(l, role, false, 2, V2(r, k), __VA_ARGS__)

/* LayerNorm weight and bias (vision and perceiver). */
static void add_ln(list *l, bool optional, uint64_t n, const char *base) {
    add(l, IDF_ROLE_SMALL, optional, 1, V1(n), "%s.weight", base);
    add(l, IDF_ROLE_SMALL, optional, 1, V1(n), "%s.bias", base);
}

int idf_hf_expected_tensors(const idf_hf_config *c, idf_expected_tensor **out, uint32_t *n) {
    list l = {0};
    const uint64_t H = c->hidden_size, I = c->intermediate_size, A = c->additional_vocab_size;
    const uint64_t VE = c->v_embed_dim, VI = c->v_intermediate_size, P = c->v_patch_size;
    const uint64_t grid = c->v_image_size / c->v_patch_size;
    const uint64_t PI = (uint64_t)c->p_n_heads * c->p_head_dim;
    const uint64_t hd = H / c->num_attention_heads;
    char b[96];

    ADD2(&l, IDF_ROLE_EMBED, c->vocab_size, H, "model.embed_tokens.weight");
    if (A) ADD2(&l, IDF_ROLE_EMBED, A, H, "model.embed_tokens.additional_embedding.weight");
    if (c->text_only)
        goto decoder;

    /* vision tower */
    ADD1(&l, IDF_ROLE_SMALL, VE, "model.vision_model.embeddings.class_embedding");
    add(&l, IDF_ROLE_PATCH, false, 4, (const uint64_t[]){VE, c->v_num_channels, P, P},
        "model.vision_model.embeddings.patch_embedding.weight");
    ADD2(&l, IDF_ROLE_SMALL, grid * grid + 1, VE, "model.vision_model.embeddings.position_embedding.weight");
    add_ln(&l, false, VE, "model.vision_model.pre_layrnorm");
    for (uint32_t i = 0; i < c->v_num_hidden_layers; i++) {
        static const char *proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int p = 0; p < 4; p++) {
            snprintf(b, sizeof b, "model.vision_model.encoder.layers.%u.self_attn.%s", i, proj[p]);
            ADD2(&l, IDF_ROLE_VISION_LINEAR, VE, VE, "%s.weight", b);
            ADD1(&l, IDF_ROLE_SMALL, VE, "%s.bias", b);
        }
        snprintf(b, sizeof b, "model.vision_model.encoder.layers.%u.layer_norm1", i);
        add_ln(&l, false, VE, b);
        ADD2(&l, IDF_ROLE_VISION_LINEAR, VI, VE, "model.vision_model.encoder.layers.%u.mlp.fc1.weight", i);
        ADD1(&l, IDF_ROLE_SMALL, VI, "model.vision_model.encoder.layers.%u.mlp.fc1.bias", i);
        ADD2(&l, IDF_ROLE_VISION_LINEAR, VE, VI, "model.vision_model.encoder.layers.%u.mlp.fc2.weight", i);
        ADD1(&l, IDF_ROLE_SMALL, VE, "model.vision_model.encoder.layers.%u.mlp.fc2.bias", i);
        snprintf(b, sizeof b, "model.vision_model.encoder.layers.%u.layer_norm2", i);
        add_ln(&l, false, VE, b);
    }
    /* applied only to the pooled output, which IDEFICS discards: kept if present (docs/QUANT.md) */
    add_ln(&l, true, VE, "model.vision_model.post_layernorm");

    if (c->use_resampler) {
        ADD2(&l, IDF_ROLE_SMALL, c->p_n_latents, VE, "model.perceiver_resampler.latents");
        for (uint32_t i = 0; i < c->p_depth; i++) {
            snprintf(b, sizeof b, "model.perceiver_resampler.blocks.%u.0.context_layer_norm", i);
            add_ln(&l, false, VE, b);
            snprintf(b, sizeof b, "model.perceiver_resampler.blocks.%u.0.latents_layer_norm", i);
            add_ln(&l, false, VE, b);
            if (c->p_qk_layer_norms) {
                snprintf(b, sizeof b, "model.perceiver_resampler.blocks.%u.0.q_layer_norm", i);
                add_ln(&l, false, c->p_head_dim, b);
                snprintf(b, sizeof b, "model.perceiver_resampler.blocks.%u.0.k_layer_norm", i);
                add_ln(&l, false, c->p_head_dim, b);
            }
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, PI, VE, "model.perceiver_resampler.blocks.%u.0.q_proj.weight", i);
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, PI, VE, "model.perceiver_resampler.blocks.%u.0.k_proj.weight", i);
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, PI, VE, "model.perceiver_resampler.blocks.%u.0.v_proj.weight", i);
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, VE, PI, "model.perceiver_resampler.blocks.%u.0.output_proj.weight",
                 i);
            snprintf(b, sizeof b, "model.perceiver_resampler.blocks.%u.1.ln", i);
            add_ln(&l, false, VE, b);
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, 4 * VE, VE, "model.perceiver_resampler.blocks.%u.1.fc.weight", i);
            ADD2(&l, IDF_ROLE_PERCEIVER_LINEAR, VE, 4 * VE, "model.perceiver_resampler.blocks.%u.1.c_proj.weight",
                 i);
        }
        add_ln(&l, false, VE, "model.perceiver_resampler.layer_norm");
    }

decoder:
    for (uint32_t i = 0; i < c->num_hidden_layers; i++) {
        if (!c->text_only && i % c->cross_layer_interval == 0) {
            uint32_t j = i / c->cross_layer_interval;
            snprintf(b, sizeof b, "model.gated_cross_attn_layers.%u", j);
            ADD1(&l, IDF_ROLE_SMALL, 1, "%s.alpha_cross_attn", b);
            ADD1(&l, IDF_ROLE_SMALL, 1, "%s.alpha_dense", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, H, H, "%s.cross_attn.q_proj.weight", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, H, VE, "%s.cross_attn.k_proj.weight", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, H, VE, "%s.cross_attn.v_proj.weight", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, H, H, "%s.cross_attn.o_proj.weight", b);
            if (c->qk_layer_norms) {
                ADD1(&l, IDF_ROLE_SMALL, hd, "%s.cross_attn.q_layer_norm.weight", b);
                ADD1(&l, IDF_ROLE_SMALL, hd, "%s.cross_attn.k_layer_norm.weight", b);
            }
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, I, H, "%s.mlp.gate_proj.weight", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, I, H, "%s.mlp.up_proj.weight", b);
            ADD2(&l, IDF_ROLE_XATTN_LINEAR, H, I, "%s.mlp.down_proj.weight", b);
            ADD1(&l, IDF_ROLE_SMALL, H, "%s.input_layernorm.weight", b);
            ADD1(&l, IDF_ROLE_SMALL, H, "%s.post_attention_layernorm.weight", b);
        }
        snprintf(b, sizeof b, "model.layers.%u", i);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, H, H, "%s.self_attn.q_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, H, H, "%s.self_attn.k_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, H, H, "%s.self_attn.v_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, H, H, "%s.self_attn.o_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, I, H, "%s.mlp.gate_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, I, H, "%s.mlp.up_proj.weight", b);
        ADD2(&l, IDF_ROLE_TEXT_LINEAR, H, I, "%s.mlp.down_proj.weight", b);
        ADD1(&l, IDF_ROLE_SMALL, H, "%s.input_layernorm.weight", b);
        ADD1(&l, IDF_ROLE_SMALL, H, "%s.post_attention_layernorm.weight", b);
    }
    ADD1(&l, IDF_ROLE_SMALL, H, "model.norm.weight");
    ADD2(&l, IDF_ROLE_HEAD, c->vocab_size, H, "lm_head.weight");
    if (A) ADD2(&l, IDF_ROLE_HEAD, A, H, "lm_head.additional_fc.weight");
    if (l.oom) {
        free(l.v);
        return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    *out = l.v;
    *n = l.n;
    return 0;
}
