/*
 * test_forward.c - model loading and the forward pass, end to end.
 *
 *   test_forward synth OUT_DIR
 *     Writes small synthetic IDEFICS-shaped .idfx files with the IDFX writer and
 *     checks: a good file loads and reports its config; a missing tensor, a
 *     wrong shape and bad config values fail with the right status and a message
 *     naming the tensor or key; the forward pass is self-consistent (one call vs
 *     chunks vs token by token through the KV cache, truncate and redo, image
 *     slots, rows without an image independent of every image, F16 KV cache,
 *     Q8 weights, context-full, cancellation and argument checks).
 *
 *   test_forward fixtures CONVERTER OUT_DIR
 *     For every tiny Hugging Face reference model in tests/fixtures/models:
 *     converts it with the idefics-convert binary at F32, feeds each recorded
 *     case's input_ids, image mask (as per-token image slots) and pixel_values
 *     straight into the forward pass (no tokenizer, no image preprocessing) and
 *     compares the logits at every position (max|diff| <= 1e-3 max|logit|), the
 *     perceiver output, and the 32-token greedy continuation. Then converts at Q8
 *     and Q4, requires each to equal an F32 model holding its dequantised weights,
 *     and measures top-1 agreement with the F32 logits over every recorded position:
 *     Q8 >= 85% for all models; Q4 >= 95% for the trained model (tiny-trained),
 *     reported only for the random ones (near-tie logits, see variants[]).
 *     Prints a table of the differences and the reference path's speed.
 *     Skips (77) when the fixtures or the converter are absent.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "forward.h"
#include "idefics.h"
#include "idfx_keys.h"
#include "idfx_writer.h"
#include "model.h"
#include "quant.h"
#ifdef HAVE_FIXTURE_IO
#include "fixture_io.h"
#endif

static int n_fail = 0, n_pass = 0;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    ok ? n_pass++ : n_fail++;
}

static void log_cb(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    fprintf(stderr, "[log %d] %s\n", (int)level, msg);
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* max |a - b| over n, and max |b| */
static double max_diff(const float *a, const float *b, size_t n, double *max_ref) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)a[i] - b[i]);
        if (!(e <= d))
            d = e; /* NaN propagates as a failure */
        if (fabs(b[i]) > r)
            r = fabs(b[i]);
    }
    if (max_ref)
        *max_ref = r;
    return d;
}

static int argmax(const float *x, int n, const int32_t *skip, int n_skip) {
    int best = -1;
    for (int i = 0; i < n; i++) {
        bool s = false;
        for (int j = 0; j < n_skip; j++)
            s = s || skip[j] == i;
        if (!s && (best < 0 || x[i] > x[best]))
            best = i;
    }
    return best;
}

/* IDEFICS_TEST_BACKEND=cpu runs everything on the fast CPU backend (the
 * forward_*_cpu tests); unset, on the reference backend. */
static bool fast_backend(void) {
    const char *b = getenv("IDEFICS_TEST_BACKEND");
    return b && !strcmp(b, "cpu");
}

/* Quantised vs dequantised-F32 model: the reference computes both in fp32
 * (equal up to rounding); the fast backend quantizes activations to int8 for
 * Q4/Q8 weights only (NMSE ~1.5e-5 per matmul, tests/test_ops.c), so the two
 * runs differ by that rounding compounded through the untrained random
 * layers: up to ~15% of the largest logit on these tiny models (measured). */
static double qdeq_tol(void) {
    return fast_backend() ? 0.25 : 1e-4;
}

static idefics_model *load(const char *path, idefics_status *st, char *errbuf, size_t errsz) {
    idefics_model_params p = idefics_model_default_params();
    p.backend = fast_backend() ? IDEFICS_BACKEND_CPU : IDEFICS_BACKEND_CPU_REF;
    p.log = log_cb;
    p.log_level = IDEFICS_LOG_WARN;
    p.n_threads = 2;
    p.verify_checksums = true;
    idefics_model *m = NULL;
    *st = idefics_model_load(path, &p, &m, errbuf, errsz);
    return m;
}

/* ================================================== synthetic model files */

/* Small enough to write in milliseconds, but with every structural feature:
 * several layers, cross blocks before layers 0 and 2, multi-head everything,
 * additional vocabulary, a perceiver with qk norms. Inner dims are multiples
 * of 32 so the matrices can be stored as Q8. */
enum {
    S_V = 40,
    S_A = 2,
    S_H = 32,
    S_NH = 2,
    S_I = 64,
    S_NL = 3,
    S_XI = 2,
    S_MAXPOS = 160,
    S_VD = 32,
    S_IMG = 14,
    S_P = 7,
    S_VL = 2,
    S_VH = 2,
    S_VI = 64,
    S_C = 3,
    S_PD = 2,
    S_PL = 3,
    S_PH = 2,
    S_PHD = 16,
};

typedef struct synth_opts {
    int wtype;           /* IDFX_TYPE_F32 or IDFX_TYPE_Q8 for matrices */
    const char *skip;    /* a tensor left out */
    const char *reshape; /* a tensor written with one extra row */
    const char *cfg_key; /* a u32 config key written as cfg_val */
    uint32_t cfg_val;
} synth_opts;

typedef struct synth {
    idfx_writer *w;
    const synth_opts *o;
    int failed;
} synth;

static uint64_t name_seed(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

typedef enum { K_MAT, K_NORM, K_BIAS, K_EMB, K_ALPHA } tkind;

/* Values depend only on the tensor's name, so every variant file holds the
 * same weights and a Q8 file quantises exactly the F32 file's values. */
static void emit(synth *s, const char *name, tkind kind, uint32_t n_dims, uint64_t d0, uint64_t d1, uint64_t d2,
                 uint64_t d3) {
    if (s->failed || (s->o->skip && !strcmp(s->o->skip, name)))
        return;
    uint64_t dims[4] = {d0, d1, d2, d3};
    if (s->o->reshape && !strcmp(s->o->reshape, name))
        dims[0]++;
    uint64_t n = 1;
    for (uint32_t i = 0; i < n_dims; i++)
        n *= dims[i];
    float *v = xmalloc(n * sizeof(float));
    uint64_t r = name_seed(name);
    const uint64_t cols = dims[n_dims - 1];
    for (uint64_t i = 0; i < n; i++) {
        r ^= r >> 12, r ^= r << 25, r ^= r >> 27;
        const double u = (double)((r * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
        switch (kind) {
        case K_MAT:
            v[i] = (float)(u * 1.7 / sqrt((double)cols));
            break;
        case K_NORM:
            v[i] = (float)(1.0 + 0.2 * u);
            break;
        case K_BIAS:
            v[i] = (float)(0.1 * u);
            break;
        case K_EMB:
            v[i] = (float)u;
            break;
        case K_ALPHA:
            v[i] = (float)(0.6 + 0.3 * u);
            break;
        }
    }
    int rc;
    if (kind == K_MAT && n_dims == 2 && s->o->wtype == IDFX_TYPE_Q8 && cols % 32 == 0) {
        uint64_t nbytes, unit;
        idfx_tensor_nbytes(IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 4, 2, dims, &nbytes, &unit);
        void *q = xmalloc(nbytes);
        idfx_quantize_q8_ref(v, (int64_t)dims[0], (int64_t)cols, 4, 0, q);
        rc = idfx_writer_add_tensor(s->w, name, IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 4, 2, dims, q, nbytes);
        free(q);
    } else {
        rc = idfx_writer_add_tensor(s->w, name, IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, n_dims, dims, v,
                                    n * sizeof(float));
    }
    if (rc) {
        fprintf(stderr, "writer: %s: %s\n", name, idfx_writer_error(s->w));
        s->failed = 1;
    }
    free(v);
}

#define E1(kind, d0, ...)     (snprintf(nm, sizeof nm, __VA_ARGS__), emit(s, nm, kind, 1, d0, 1, 1, 1))
#define E2(kind, d0, d1, ...) (snprintf(nm, sizeof nm, __VA_ARGS__), emit(s, nm, kind, 2, d0, d1, 1, 1))

static void emit_tensors(synth *s) {
    char nm[160];
    const char *v = "model.vision_model";
    snprintf(nm, sizeof nm, "%s.embeddings.patch_embedding.weight", v);
    emit(s, nm, K_MAT, 4, S_VD, S_C, S_P, S_P);
    E1(K_EMB, S_VD, "%s.embeddings.class_embedding", v);
    E2(K_EMB, (S_IMG / S_P) * (S_IMG / S_P) + 1, S_VD, "%s.embeddings.position_embedding.weight", v);
    E1(K_NORM, S_VD, "%s.pre_layrnorm.weight", v);
    E1(K_BIAS, S_VD, "%s.pre_layrnorm.bias", v);
    E1(K_NORM, S_VD, "%s.post_layernorm.weight", v); /* present in checkpoints, unused */
    E1(K_BIAS, S_VD, "%s.post_layernorm.bias", v);
    for (int l = 0; l < S_VL; l++) {
        const char *proj[4] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"};
        for (int i = 0; i < 4; i++) {
            E2(K_MAT, S_VD, S_VD, "%s.encoder.layers.%d.%s.weight", v, l, proj[i]);
            E1(K_BIAS, S_VD, "%s.encoder.layers.%d.%s.bias", v, l, proj[i]);
        }
        E2(K_MAT, S_VI, S_VD, "%s.encoder.layers.%d.mlp.fc1.weight", v, l);
        E1(K_BIAS, S_VI, "%s.encoder.layers.%d.mlp.fc1.bias", v, l);
        E2(K_MAT, S_VD, S_VI, "%s.encoder.layers.%d.mlp.fc2.weight", v, l);
        E1(K_BIAS, S_VD, "%s.encoder.layers.%d.mlp.fc2.bias", v, l);
        for (int i = 1; i <= 2; i++) {
            E1(K_NORM, S_VD, "%s.encoder.layers.%d.layer_norm%d.weight", v, l, i);
            E1(K_BIAS, S_VD, "%s.encoder.layers.%d.layer_norm%d.bias", v, l, i);
        }
    }
    const char *p = "model.perceiver_resampler";
    E2(K_EMB, S_PL, S_VD, "%s.latents", p);
    for (int b = 0; b < S_PD; b++) {
        const char *lns[2] = {"context_layer_norm", "latents_layer_norm"};
        for (int i = 0; i < 2; i++) {
            E1(K_NORM, S_VD, "%s.blocks.%d.0.%s.weight", p, b, lns[i]);
            E1(K_BIAS, S_VD, "%s.blocks.%d.0.%s.bias", p, b, lns[i]);
        }
        E1(K_NORM, S_PHD, "%s.blocks.%d.0.q_layer_norm.weight", p, b);
        E1(K_BIAS, S_PHD, "%s.blocks.%d.0.q_layer_norm.bias", p, b);
        E1(K_NORM, S_PHD, "%s.blocks.%d.0.k_layer_norm.weight", p, b);
        E1(K_BIAS, S_PHD, "%s.blocks.%d.0.k_layer_norm.bias", p, b);
        E2(K_MAT, S_PH * S_PHD, S_VD, "%s.blocks.%d.0.q_proj.weight", p, b);
        E2(K_MAT, S_PH * S_PHD, S_VD, "%s.blocks.%d.0.k_proj.weight", p, b);
        E2(K_MAT, S_PH * S_PHD, S_VD, "%s.blocks.%d.0.v_proj.weight", p, b);
        E2(K_MAT, S_VD, S_PH * S_PHD, "%s.blocks.%d.0.output_proj.weight", p, b);
        E1(K_NORM, S_VD, "%s.blocks.%d.1.ln.weight", p, b);
        E1(K_BIAS, S_VD, "%s.blocks.%d.1.ln.bias", p, b);
        E2(K_MAT, 4 * S_VD, S_VD, "%s.blocks.%d.1.fc.weight", p, b);
        E2(K_MAT, S_VD, 4 * S_VD, "%s.blocks.%d.1.c_proj.weight", p, b);
    }
    E1(K_NORM, S_VD, "%s.layer_norm.weight", p);
    E1(K_BIAS, S_VD, "%s.layer_norm.bias", p);

    E2(K_EMB, S_V, S_H, "model.embed_tokens.weight");
    E2(K_EMB, S_A, S_H, "model.embed_tokens.additional_embedding.weight");
    E1(K_NORM, S_H, "model.norm.weight");
    E2(K_MAT, S_V, S_H, "lm_head.weight");
    E2(K_MAT, S_A, S_H, "lm_head.additional_fc.weight");
    for (int l = 0; l < S_NL; l++) {
        const char *q[4] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        for (int i = 0; i < 4; i++)
            E2(K_MAT, S_H, S_H, "model.layers.%d.self_attn.%s.weight", l, q[i]);
        E2(K_MAT, S_I, S_H, "model.layers.%d.mlp.gate_proj.weight", l);
        E2(K_MAT, S_I, S_H, "model.layers.%d.mlp.up_proj.weight", l);
        E2(K_MAT, S_H, S_I, "model.layers.%d.mlp.down_proj.weight", l);
        E1(K_NORM, S_H, "model.layers.%d.input_layernorm.weight", l);
        E1(K_NORM, S_H, "model.layers.%d.post_attention_layernorm.weight", l);
    }
    const char *g = "model.gated_cross_attn_layers";
    for (int j = 0; j < (S_NL + S_XI - 1) / S_XI; j++) {
        E1(K_ALPHA, 1, "%s.%d.alpha_cross_attn", g, j);
        E1(K_ALPHA, 1, "%s.%d.alpha_dense", g, j);
        E2(K_MAT, S_H, S_H, "%s.%d.cross_attn.q_proj.weight", g, j);
        E2(K_MAT, S_H, S_VD, "%s.%d.cross_attn.k_proj.weight", g, j);
        E2(K_MAT, S_H, S_VD, "%s.%d.cross_attn.v_proj.weight", g, j);
        E2(K_MAT, S_H, S_H, "%s.%d.cross_attn.o_proj.weight", g, j);
        E1(K_NORM, S_H / S_NH, "%s.%d.cross_attn.q_layer_norm.weight", g, j);
        E1(K_NORM, S_H / S_NH, "%s.%d.cross_attn.k_layer_norm.weight", g, j);
        E2(K_MAT, S_I, S_H, "%s.%d.mlp.gate_proj.weight", g, j);
        E2(K_MAT, S_I, S_H, "%s.%d.mlp.up_proj.weight", g, j);
        E2(K_MAT, S_H, S_I, "%s.%d.mlp.down_proj.weight", g, j);
        E1(K_NORM, S_H, "%s.%d.input_layernorm.weight", g, j);
        E1(K_NORM, S_H, "%s.%d.post_attention_layernorm.weight", g, j);
    }
}

static int kv_u32(synth *s, const char *key, uint32_t v) {
    if (s->o->cfg_key && !strcmp(s->o->cfg_key, key))
        v = s->o->cfg_val;
    return idfx_writer_kv_u32(s->w, key, v);
}

static bool write_synth(const char *path, const synth_opts *o) {
    char err[256];
    idfx_writer_opts wo = idfx_writer_default_opts();
    wo.n_threads = 1;
    wo.zstd_level = 1;
    synth s = {idfx_writer_open(path, &wo, err, sizeof err), o, 0};
    if (!s.w) {
        fprintf(stderr, "cannot write %s: %s\n", path, err);
        return false;
    }
    int rc = 0;
    idfx_writer *w = s.w;
    rc |= idfx_writer_kv_str(w, IDFX_KEY_ARCH, "idefics", 7);
    rc |= idfx_writer_kv_str(w, IDFX_KEY_NAME, "synthetic", 9);
    rc |= kv_u32(&s, IDFX_KEY_VOCAB_SIZE, S_V);
    rc |= kv_u32(&s, IDFX_KEY_ADDITIONAL_VOCAB, S_A);
    rc |= kv_u32(&s, IDFX_KEY_HIDDEN_SIZE, S_H);
    rc |= kv_u32(&s, IDFX_KEY_INTERMEDIATE_SIZE, S_I);
    rc |= kv_u32(&s, IDFX_KEY_N_LAYERS, S_NL);
    rc |= kv_u32(&s, IDFX_KEY_N_HEADS, S_NH);
    rc |= idfx_writer_kv_f32(w, IDFX_KEY_RMS_EPS, 1e-6f);
    rc |= idfx_writer_kv_f32(w, IDFX_KEY_ROPE_THETA, 10000.0f);
    rc |= kv_u32(&s, IDFX_KEY_MAX_POS, S_MAXPOS);
    rc |= kv_u32(&s, IDFX_KEY_CROSS_INTERVAL, S_XI);
    rc |= idfx_writer_kv_bool(w, IDFX_KEY_QK_LAYER_NORMS, 1);
    rc |= idfx_writer_kv_bool(w, IDFX_KEY_USE_RESAMPLER, 1);
    rc |= idfx_writer_kv_str(w, IDFX_KEY_HIDDEN_ACT, "silu", 4);
    rc |= kv_u32(&s, IDFX_KEY_V_EMBED_DIM, S_VD);
    rc |= kv_u32(&s, IDFX_KEY_V_IMAGE_SIZE, S_IMG);
    rc |= kv_u32(&s, IDFX_KEY_V_PATCH_SIZE, S_P);
    rc |= kv_u32(&s, IDFX_KEY_V_N_LAYERS, S_VL);
    rc |= kv_u32(&s, IDFX_KEY_V_N_HEADS, S_VH);
    rc |= kv_u32(&s, IDFX_KEY_V_INTERMEDIATE, S_VI);
    rc |= idfx_writer_kv_f32(w, IDFX_KEY_V_LN_EPS, 1e-5f);
    rc |= idfx_writer_kv_str(w, IDFX_KEY_V_HIDDEN_ACT, "gelu", 4);
    rc |= kv_u32(&s, IDFX_KEY_V_N_CHANNELS, S_C);
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, std[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    rc |= idfx_writer_kv_arr_f32(w, IDFX_KEY_V_IMAGE_MEAN, mean, 3);
    rc |= idfx_writer_kv_arr_f32(w, IDFX_KEY_V_IMAGE_STD, std, 3);
    rc |= kv_u32(&s, IDFX_KEY_P_DEPTH, S_PD);
    rc |= kv_u32(&s, IDFX_KEY_P_N_LATENTS, S_PL);
    rc |= kv_u32(&s, IDFX_KEY_P_N_HEADS, S_PH);
    rc |= kv_u32(&s, IDFX_KEY_P_HEAD_DIM, S_PHD);
    rc |= idfx_writer_kv_bool(w, IDFX_KEY_P_QK_LAYER_NORMS, 1);

    /* tokenizer: <unk> <s> </s>, "▁", a-z, 0-9, then the two image tokens */
    const char *pieces[S_V + S_A];
    char store[S_V][8];
    float scores[S_V + S_A];
    uint32_t types[S_V + S_A];
    for (int i = 0; i < S_V + S_A; i++) {
        scores[i] = (float)-i;
        types[i] = IDFX_TOKEN_NORMAL;
        if (i < S_V) {
            if (i < 3)
                snprintf(store[i], sizeof store[i], "%s", i == 0 ? "<unk>" : i == 1 ? "<s>" : "</s>");
            else if (i == 3)
                snprintf(store[i], sizeof store[i], "\xe2\x96\x81");
            else if (i < 30)
                snprintf(store[i], sizeof store[i], "%c", 'a' + (i - 4));
            else
                snprintf(store[i], sizeof store[i], "%c", '0' + (i - 30));
            pieces[i] = store[i];
        }
    }
    types[0] = IDFX_TOKEN_UNKNOWN;
    types[1] = types[2] = IDFX_TOKEN_CONTROL;
    pieces[S_V] = "<fake_token_around_image>";
    pieces[S_V + 1] = "<image>";
    types[S_V] = types[S_V + 1] = IDFX_TOKEN_USER_DEFINED;
    rc |= idfx_writer_kv_str(w, IDFX_KEY_TOK_MODEL, "llama", 5);
    rc |= idfx_writer_kv_arr_str(w, IDFX_KEY_TOK_TOKENS, pieces, NULL, S_V + S_A);
    rc |= idfx_writer_kv_arr_f32(w, IDFX_KEY_TOK_SCORES, scores, S_V + S_A);
    rc |= idfx_writer_kv_arr_u32(w, IDFX_KEY_TOK_TYPES, types, S_V + S_A);
    rc |= idfx_writer_kv_u32(w, IDFX_KEY_TOK_BOS, 1);
    rc |= idfx_writer_kv_u32(w, IDFX_KEY_TOK_EOS, 2);
    rc |= idfx_writer_kv_u32(w, IDFX_KEY_TOK_UNK, 0);
    rc |= idfx_writer_kv_u32(w, IDFX_KEY_TOK_PAD, 0);
    rc |= idfx_writer_kv_bool(w, IDFX_KEY_TOK_ADD_PREFIX, 1);
    if (rc) {
        fprintf(stderr, "writer metadata: %s\n", idfx_writer_error(w));
        idfx_writer_abort(w);
        return false;
    }
    emit_tensors(&s);
    if (s.failed) {
        idfx_writer_abort(w);
        return false;
    }
    if (idfx_writer_close(w, err, sizeof err)) {
        fprintf(stderr, "writer close: %s\n", err);
        return false;
    }
    return true;
}

/* ---- synthetic checks */

static void expect_load_error(const char *dir, const char *label, const synth_opts *o, idefics_status want,
                              const char *must_name) {
    char path[1024], errbuf[512];
    snprintf(path, sizeof path, "%s/synth-%s.idfx", dir, label);
    if (!write_synth(path, o)) {
        check(false, "write %s", path);
        return;
    }
    idefics_status st;
    idefics_model *m = load(path, &st, errbuf, sizeof errbuf);
    check(st == want && !m && strstr(errbuf, must_name) != NULL, "%s: %s (want %s), message names \"%s\": %s", label,
          idefics_status_str(st), idefics_status_str(want), must_name, errbuf);
    idefics_model_free(m);
    unlink(path);
}

static void random_pixels(float *px, uint64_t seed) {
    for (int i = 0; i < S_C * S_IMG * S_IMG; i++) {
        seed ^= seed >> 12, seed ^= seed << 25, seed ^= seed >> 27;
        px[i] = (float)((double)((seed * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    }
}

/* A state with the given images (in order) added. */
static idf_state *new_state(const idefics_model *m, int n_ctx, idefics_kv_type kv, const float *const *imgs,
                            int n_imgs) {
    idf_err err;
    idf_state *s = NULL;
    if (idf_state_create(m, n_ctx, kv, 2, &s, &err) != IDEFICS_OK) {
        fprintf(stderr, "state: %s\n", err.msg);
        exit(1);
    }
    for (int i = 0; i < n_imgs; i++) {
        int slot = -1;
        if (idf_state_add_image(s, imgs[i], &slot, &err) != IDEFICS_OK || slot != i) {
            fprintf(stderr, "add_image: %s\n", err.msg);
            exit(1);
        }
    }
    return s;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double ref;
    const double d = max_diff(a, b, n, &ref);
    return d / (ref > 0 ? ref : 1);
}

static int run_synth(const char *dir) {
    char path[1024], errbuf[512];
    const synth_opts base = {.wtype = IDFX_TYPE_F32};
    snprintf(path, sizeof path, "%s/synth-f32.idfx", dir);
    if (!write_synth(path, &base))
        return 1;
    idefics_status st;
    idefics_model *m = load(path, &st, errbuf, sizeof errbuf);
    check(st == IDEFICS_OK && m, "load synthetic f32 model: %s %s", idefics_status_str(st), errbuf);
    if (!m)
        return 1;

    idefics_model_info info;
    idefics_model_get_info(m, &info);
    check(info.n_vocab == S_V + S_A && info.image_size == S_IMG && info.n_latents == S_PL && !info.is_instruct &&
              info.n_ctx_max == S_MAXPOS && info.n_params > 0 && !strcmp(info.backend, fast_backend() ? "cpu" : "cpu-ref") &&
              info.device && !info.device[0] && info.mmap && !strcmp(info.name, "synthetic"),
          "model info: n_vocab %d, image %d, latents %d, n_ctx_max %d, params %lld, backend %s, name %s", info.n_vocab,
          info.image_size, info.n_latents, info.n_ctx_max, (long long)info.n_params, info.backend, info.name);
    check(m->cfg.tok_image == S_V + 1 && m->cfg.tok_fake_image == S_V && m->cfg.n_cross == 2 &&
              m->cfg.head_dim == S_H / S_NH,
          "config: <image> %d, <fake_token_around_image> %d, %u cross blocks, head_dim %u", m->cfg.tok_image,
          m->cfg.tok_fake_image, m->cfg.n_cross, m->cfg.head_dim);

    /* ---- load failures, each naming what is wrong */
    synth_opts o = base;
    o.skip = "model.layers.1.mlp.up_proj.weight";
    expect_load_error(dir, "missing", &o, IDEFICS_ERR_MISSING_TENSOR, o.skip);
    o = base;
    o.skip = "model.perceiver_resampler.blocks.1.0.k_layer_norm.bias";
    expect_load_error(dir, "missing-qknorm", &o, IDEFICS_ERR_MISSING_TENSOR, o.skip);
    o = base;
    o.reshape = "model.gated_cross_attn_layers.1.cross_attn.k_proj.weight";
    expect_load_error(dir, "shape", &o, IDEFICS_ERR_BAD_SHAPE, o.reshape);
    o = base;
    o.reshape = "model.vision_model.embeddings.position_embedding.weight";
    expect_load_error(dir, "shape-pos", &o, IDEFICS_ERR_BAD_SHAPE, "[5, 32]");
    o = base;
    o.cfg_key = IDFX_KEY_N_HEADS, o.cfg_val = 3;
    expect_load_error(dir, "heads", &o, IDEFICS_ERR_BAD_CONFIG, IDFX_KEY_N_HEADS);
    o = base;
    o.cfg_key = IDFX_KEY_V_PATCH_SIZE, o.cfg_val = 5;
    expect_load_error(dir, "patch", &o, IDEFICS_ERR_BAD_CONFIG, IDFX_KEY_V_PATCH_SIZE);
    o = base;
    o.cfg_key = IDFX_KEY_N_LAYERS, o.cfg_val = 0;
    expect_load_error(dir, "layers", &o, IDEFICS_ERR_BAD_CONFIG, IDFX_KEY_N_LAYERS);
    o = base;
    o.cfg_key = IDFX_KEY_CROSS_INTERVAL, o.cfg_val = 9;
    expect_load_error(dir, "interval", &o, IDEFICS_ERR_BAD_CONFIG, IDFX_KEY_CROSS_INTERVAL);
    /* a consistent but different config: the tensors no longer match it */
    o = base;
    o.cfg_key = IDFX_KEY_INTERMEDIATE_SIZE, o.cfg_val = 96;
    expect_load_error(dir, "intermediate", &o, IDEFICS_ERR_BAD_SHAPE, "model.layers.0.mlp.gate_proj.weight");
    {
        idefics_model *none = NULL;
        snprintf(path, sizeof path, "%s/does-not-exist.idfx", dir);
        st = idefics_model_load(path, NULL, &none, errbuf, sizeof errbuf);
        check(st == IDEFICS_ERR_IO && !none && strstr(errbuf, "does-not-exist"), "absent file: %s: %s",
              idefics_status_str(st), errbuf);
    }

    /* ---- the forward pass */
    enum { N = 100 };
    float *img_x = xmalloc(S_C * S_IMG * S_IMG * sizeof(float)), *img_y = xmalloc(S_C * S_IMG * S_IMG * sizeof(float));
    float *img_z = xmalloc(S_C * S_IMG * S_IMG * sizeof(float));
    random_pixels(img_x, 11);
    random_pixels(img_y, 22);
    random_pixels(img_z, 33);
    int32_t ids[N], img[N], img_swapped[N];
    uint64_t r = 5;
    for (int i = 0; i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = i == 0 ? 1 : 3 + (int32_t)((r >> 33) % (S_V - 3));
        img[i] = i < 10 ? -1 : i < 60 ? 0 : 1;
        img_swapped[i] = img[i] < 0 ? -1 : 1 - img[i];
    }
    ids[9] = S_V, ids[10] = S_V + 1, ids[11] = S_V; /* <fake><image><fake> around the first image */
    const size_t V = S_V + S_A;
    float *full = xmalloc(N * V * sizeof(float)), *part = xmalloc(N * V * sizeof(float));
    float *tmp = xmalloc(N * V * sizeof(float));
    idf_err err;

    const float *xy[2] = {img_x, img_y}, *yx[2] = {img_y, img_x}, *zy[2] = {img_z, img_y};
    idf_state *a = new_state(m, S_MAXPOS, IDEFICS_KV_F32, xy, 2);
    st = idf_state_eval(a, ids, img, N, full, true, &err);
    check(st == IDEFICS_OK && idf_state_n_past(a) == N, "eval %d tokens in one call (chunked internally): %s %s", N,
          idefics_status_str(st), err.msg);
    bool finite = true;
    for (size_t i = 0; i < N * V; i++)
        finite = finite && isfinite(full[i]);
    check(finite, "all logits finite");
    const float *lat = idf_state_image_latents(a, 1);
    check(lat && !idf_state_image_latents(a, 2) && idf_state_n_images(a) == 2, "image latents of slots 0..1 only");

    /* the same tokens in pieces: 37, then one at a time through the KV cache */
    idf_state *b = new_state(m, S_MAXPOS, IDEFICS_KV_F32, xy, 2);
    st = idf_state_eval(b, ids, img, 37, part, true, &err);
    for (int i = 37; i < N && st == IDEFICS_OK; i++)
        st = idf_state_eval(b, ids + i, img + i, 1, part + i * V, false, &err);
    check(st == IDEFICS_OK && rel_diff(part, full, N * V) < 1e-5, "37 + 1 x 63 tokens == one call: rel diff %.2g",
          rel_diff(part, full, N * V));
    /* truncate and redo the tail */
    idf_state_truncate(b, 50);
    st = idf_state_eval(b, ids + 50, img + 50, N - 50, tmp, true, &err);
    check(st == IDEFICS_OK && idf_state_n_past(b) == N && rel_diff(tmp, full + 50 * V, (N - 50) * V) < 1e-5,
          "truncate to 50 and re-evaluate: rel diff %.2g", rel_diff(tmp, full + 50 * V, (N - 50) * V));
    /* context full: the state is unchanged */
    st = idf_state_eval(b, ids, img, 61, tmp, true, &err);
    check(st == IDEFICS_ERR_CONTEXT_FULL && idf_state_n_past(b) == N, "context full: %s, n_past %d",
          idefics_status_str(st), idf_state_n_past(b));
    /* cancellation: refused, state unchanged */
    atomic_int flag = 1;
    idf_state_set_cancel_flag(b, &flag);
    st = idf_state_eval(b, ids, img, 5, tmp, true, &err);
    check(st == IDEFICS_ERR_CANCELLED && idf_state_n_past(b) == N, "cancelled: %s, n_past %d", idefics_status_str(st),
          idf_state_n_past(b));
    idf_state_set_cancel_flag(b, NULL);
    /* bad arguments */
    const int32_t bad_id = (int32_t)V, bad_img = 2;
    st = idf_state_eval(b, &bad_id, NULL, 1, tmp, true, &err);
    check(st == IDEFICS_ERR_INVALID_ARG && strstr(err.msg, "vocabulary"), "token id %d refused: %s", bad_id, err.msg);
    st = idf_state_eval(b, ids, &bad_img, 1, tmp, true, &err);
    check(st == IDEFICS_ERR_INVALID_ARG && idf_state_n_past(b) == N, "image slot 2 refused: %s", err.msg);
    /* reset keeps working buffers: a reset state reproduces the first call */
    idf_state_reset(b);
    check(idf_state_n_past(b) == 0 && idf_state_n_images(b) == 0, "reset empties the state");
    int slot = -1;
    idf_state_add_image(b, img_x, &slot, &err);
    idf_state_add_image(b, img_y, &slot, &err);
    st = idf_state_eval(b, ids, img, N, tmp, true, &err);
    check(st == IDEFICS_OK && slot == 1 && rel_diff(tmp, full, N * V) < 1e-6, "after reset: same logits (rel %.2g)",
          rel_diff(tmp, full, N * V));

    /* rows without an image do not depend on any image (their cross-attention
     * output is zero); rows with one depend on their own image only */
    idf_state *c = new_state(m, S_MAXPOS, IDEFICS_KV_F32, NULL, 0);
    st = idf_state_eval(c, ids, NULL, 10, tmp, true, &err);
    check(st == IDEFICS_OK && rel_diff(tmp, full, 10 * V) < 1e-6,
          "rows before the first image match a session with no images: rel %.2g", rel_diff(tmp, full, 10 * V));
    idf_state *d = new_state(m, S_MAXPOS, IDEFICS_KV_F32, yx, 2);
    st = idf_state_eval(d, ids, img_swapped, N, tmp, true, &err);
    check(st == IDEFICS_OK && rel_diff(tmp, full, N * V) < 1e-6, "image slots follow img[]: rel %.2g",
          rel_diff(tmp, full, N * V));
    idf_state *e = new_state(m, S_MAXPOS, IDEFICS_KV_F32, zy, 2);
    st = idf_state_eval(e, ids, img, N, tmp, true, &err);
    const double d_pre = rel_diff(tmp, full, 10 * V), d_img = rel_diff(tmp + 10 * V, full + 10 * V, V);
    check(st == IDEFICS_OK && d_pre < 1e-6 && d_img > 1e-3,
          "another first image: rows before it unchanged (rel %.2g), its rows change (rel %.2g)", d_pre, d_img);

    /* F16 KV cache: close to F32 */
    idf_state *f = new_state(m, S_MAXPOS, IDEFICS_KV_F16, xy, 2);
    st = idf_state_eval(f, ids, img, N, tmp, true, &err);
    check(st == IDEFICS_OK && rel_diff(tmp, full, N * V) < 2e-3, "F16 KV cache vs F32: rel %.2g",
          rel_diff(tmp, full, N * V));

    idf_state *g = NULL;
    st = idf_state_create(m, S_MAXPOS + 1, IDEFICS_KV_F32, 1, &g, &err);
    check(st == IDEFICS_ERR_INVALID_ARG && !g, "n_ctx above max_position_embeddings refused: %s", err.msg);

    /* Q8 KV cache (self-attention and image K/V): close to F32, same top-1.
     * int8 with a scale per 32 elements adds relative noise of about 0.5% per
     * element on K and V (F16: 0.03%), compounded through random layers;
     * measured rel 0.016 here, held to 0.04. */
    idf_state *q8 = new_state(m, S_MAXPOS, IDEFICS_KV_Q8, xy, 2);
    st = q8 ? idf_state_eval(q8, ids, img, N, tmp, true, &err) : IDEFICS_ERR_BACKEND;
    {
        int agree = 0;
        for (int i = 0; i < N; i++)
            agree += argmax(tmp + i * V, (int)V, NULL, 0) == argmax(full + i * V, (int)V, NULL, 0);
        check(st == IDEFICS_OK && rel_diff(tmp, full, N * V) < 0.04 && agree == N,
              "Q8 KV cache vs F32: rel %.2g, top-1 agreement %d/%d", rel_diff(tmp, full, N * V), agree, N);
    }
    idf_state_free(q8);

    /* Q8 matrices: close to F32 */
    o = base;
    o.wtype = IDFX_TYPE_Q8;
    snprintf(path, sizeof path, "%s/synth-q8.idfx", dir);
    idefics_model *mq = write_synth(path, &o) ? load(path, &st, errbuf, sizeof errbuf) : NULL;
    check(mq != NULL, "load synthetic q8 model: %s", errbuf);
    if (mq) {
        idf_state *q = new_state(mq, S_MAXPOS, IDEFICS_KV_F32, xy, 2);
        st = idf_state_eval(q, ids, img, N, tmp, true, &err);
        int agree = 0;
        for (int i = 0; i < N; i++)
            agree += argmax(tmp + i * V, (int)V, NULL, 0) == argmax(full + i * V, (int)V, NULL, 0);
        check(st == IDEFICS_OK && rel_diff(tmp, full, N * V) < 0.05 && agree >= 90,
              "Q8 weights vs F32: rel %.2g, top-1 agreement %d/%d", rel_diff(tmp, full, N * V), agree, N);
        idf_state_free(q);
        idefics_model_free(mq);
    }
    unlink(path);

    idf_state_free(a);
    idf_state_free(b);
    idf_state_free(c);
    idf_state_free(d);
    idf_state_free(e);
    idf_state_free(f);
    idefics_model_free(m);
    snprintf(path, sizeof path, "%s/synth-f32.idfx", dir);
    unlink(path);
    free(img_x);
    free(img_y);
    free(img_z);
    free(full);
    free(part);
    free(tmp);
    return 0;
}

/* ======================================================== HF fixtures */

#ifdef HAVE_FIXTURE_IO

static bool convert(const char *converter, const char *quant, const char *in_dir, const char *out) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' -o '%s' --quant %s -j 2 > '%s.log' 2>&1", converter, in_dir, out, quant, out);
    const int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "conversion failed (%d): %s (see %s.log)\n", rc, cmd, out);
    return rc == 0;
}

typedef struct case_run {
    int n;         /* prompt tokens evaluated */
    float *logits; /* [n, n_vocab] */
    double encode_ms, prefill_ms;
} case_run;

/* Feeds the case's prompt to a fresh state: images, then every real token
 * (left padding skipped) with its visible image slot from the processor mask. */
static idefics_status run_prompt(const idefics_model *m, const idf_fixture_case *fc, int extra_ctx,
                                 idefics_kv_type kv, idf_state **out, int32_t **img_out, case_run *cr, idf_err *err) {
    int p0 = 0;
    while (p0 < fc->seq_len && fc->attention_mask[p0] == 0)
        p0++;
    const int n = fc->seq_len - p0;
    int n_ctx = n + extra_ctx;
    if ((uint32_t)n_ctx > m->cfg.max_pos)
        n_ctx = (int)m->cfg.max_pos;
    idf_state *s = NULL;
    IDF_FORWARD(idf_state_create(m, n_ctx, kv, 2, &s, err));
    const size_t img_elems = (size_t)3 * fc->image_size * fc->image_size;
    double t0 = idf_time_ms();
    idefics_status st = IDEFICS_OK;
    /* Images up to the last one any token sees (a text-only case carries one
     * all-zero image that nothing sees: it is not encoded). */
    int n_used = 0;
    for (size_t e = 0; e < (size_t)fc->seq_len * fc->num_images; e++)
        if (fc->image_attention_mask[e] && (int)(e % fc->num_images) + 1 > n_used)
            n_used = (int)(e % fc->num_images) + 1;
    for (int i = 0; i < n_used && st == IDEFICS_OK; i++) {
        int slot;
        st = idf_state_add_image(s, fc->pixel_values.data + (size_t)i * img_elems, &slot, err);
    }
    cr->encode_ms = idf_time_ms() - t0;
    int32_t *img = xmalloc((size_t)fc->seq_len * sizeof(int32_t));
    for (int t = 0; t < fc->seq_len; t++) {
        img[t] = -1;
        for (int i = 0; i < fc->num_images; i++)
            if (fc->image_attention_mask[(size_t)t * fc->num_images + i])
                img[t] = i;
    }
    cr->n = n;
    cr->logits = xmalloc((size_t)n * m->cfg.n_vocab * sizeof(float));
    t0 = idf_time_ms();
    if (st == IDEFICS_OK)
        st = idf_state_eval(s, fc->input_ids + p0, img + p0, n, cr->logits, true, err);
    cr->prefill_ms = idf_time_ms() - t0;
    if (st != IDEFICS_OK) {
        idf_state_free(s);
        free(img);
        return st;
    }
    *out = s;
    *img_out = img;
    return IDEFICS_OK;
}

/* An F32 copy of a quantised model: every tensor dequantised with the quant/
 * reference routines, the metadata copied verbatim. Its logits are exactly what
 * the quantised file must produce, which separates the runtime's handling of
 * Q4/Q8 (must match) from the accuracy quantisation itself costs (reported). */
static bool write_dequantized(const idefics_model *mq, const char *out) {
    char err[256];
    idfx_writer_opts wo = idfx_writer_default_opts();
    wo.codec = IDFX_CODEC_RAW;
    wo.n_threads = 1;
    idfx_writer *w = idfx_writer_open(out, &wo, err, sizeof err);
    if (!w) {
        fprintf(stderr, "%s: %s\n", out, err);
        return false;
    }
    int rc = 0;
    for (uint32_t i = 0; i < mq->file.n_kv && !rc; i++) {
        const idfx_kv *kv = &mq->file.kv[i];
        rc = idfx_writer_kv_raw(w, kv->key, kv->type, kv->elem_type, kv->count, kv->value, kv->value_size);
    }
    for (uint32_t i = 0; i < mq->file.n_tensors && !rc; i++) {
        const idfx_tensor *t = &mq->file.tensors[i];
        float *v = xmalloc((size_t)t->n_elements * sizeof(float));
        if (idfx_layout_tiled(t->layout)) {
            for (uint64_t r = 0; r < t->dims[0]; r++)
                idfx_dequant_row_layout_ref(t->type, t->layout, t->data, (int64_t)r, (int64_t)t->dims[1],
                                            t->layout_param, v + r * t->dims[1]);
        } else if (t->type == IDFX_TYPE_F16) {
            const uint8_t *p = t->data;
            for (uint64_t e = 0; e < t->n_elements; e++)
                v[e] = idfx_fp16_to_fp32((uint16_t)(p[2 * e] | p[2 * e + 1] << 8));
        } else {
            memcpy(v, t->data, (size_t)t->n_elements * sizeof(float));
        }
        rc = idfx_writer_add_tensor(w, t->name, IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, t->n_dims, t->dims, v,
                                    t->n_elements * sizeof(float));
        free(v);
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", out, idfx_writer_error(w));
        idfx_writer_abort(w);
        return false;
    }
    if (idfx_writer_close(w, err, sizeof err)) {
        fprintf(stderr, "%s: %s\n", out, err);
        return false;
    }
    return true;
}

/* Quantised conversions checked against the F32 run. min_top1: required top-1
 * agreement (percent of positions) with the F32 logits. */
static const struct {
    const char *quant;
    double min_top1;
    const char *why;
} variants[] = {
    /* The tiny fixtures are random-weight models with near-flat logits (median
     * top-1/top-2 gap ~0.3 on a max of ~5). Quantisation noise alone flips many
     * of those near-ties: transformers itself, run on the dequantised Q4
     * weights of tiny-base, agrees with its F32 run at ~40% (logit RMS change
     * 0.7), and Q8 reaches 88-95%. So correctness is gated by the exact
     * dequantised-equivalence check, Q8 agreement by a floor above which only
     * rounding can explain the flips, and Q4 agreement is reported: the 95%
     * target is for a trained model, not these fixtures. */
    {"q8", 85.0, NULL},
    {"q4", 0.0, "reported only: near-tie logits of the random tiny models"},
};
#define N_VARIANTS ((int)(sizeof variants / sizeof variants[0]))

/* Fixture models trained on a toy task (tools/reference/train_tiny_fixture.py): their
 * logits are confident like a real model's, so the Q4 requirement applies to
 * them as a hard gate: top-1 agreement with the F32 logits at >= 95% of all recorded
 * positions of all cases. The model must be present: losing it fails the test. */
static const char *const q4_gated_models[] = {"tiny-trained"};
#define N_Q4_GATED ((int)(sizeof q4_gated_models / sizeof q4_gated_models[0]))
#define Q4_GATE_MIN_TOP1 95.0

static bool q4_gated(const char *name) {
    for (int i = 0; i < N_Q4_GATED; i++)
        if (!strcmp(name, q4_gated_models[i]))
            return true;
    return false;
}

static int run_fixtures(const char *converter, const char *dir) {
    char root[1024], err[IDF_FIXTURE_ERR_LEN];
    idf_fixture_models_root(root, sizeof root);
    idf_fixture_manifest man;
    if (idf_fixture_manifest_load(root, &man, err, sizeof err) != 0) {
        printf("SKIP: no model fixtures (%s)\n", err);
        return 77;
    }
    if (access(converter, X_OK) != 0) {
        printf("SKIP: converter %s is not built\n", converter);
        idf_fixture_manifest_free(&man);
        return 77;
    }
    char summary[8192] = "";
    printf("%-17s %-16s %4s %10s %9s %9s %10s %7s %7s %7s %9s\n", "model", "case", "tok", "max|dlog|", "max|log|",
           "ratio", "max|dlat|", "greedy", "q8top1", "q4top1", "q/deq");
    for (int mi = 0; mi < man.n_models; mi++) {
        const idf_fixture_model *fm = &man.models[mi];
        char path[1200], errbuf[512];
        idefics_status st;
        idefics_model *m = NULL, *mq[N_VARIANTS] = {0}, *md[N_VARIANTS] = {0};
        snprintf(path, sizeof path, "%s/%s.f32.idfx", dir, fm->name);
        if (convert(converter, "f32", fm->dir, path))
            m = load(path, &st, errbuf, sizeof errbuf);
        bool ok = m != NULL;
        for (int v = 0; v < N_VARIANTS && ok; v++) {
            snprintf(path, sizeof path, "%s/%s.%s.idfx", dir, fm->name, variants[v].quant);
            if (convert(converter, variants[v].quant, fm->dir, path))
                mq[v] = load(path, &st, errbuf, sizeof errbuf);
            snprintf(path, sizeof path, "%s/%s.%s-dequant.idfx", dir, fm->name, variants[v].quant);
            if (mq[v] && write_dequantized(mq[v], path))
                md[v] = load(path, &st, errbuf, sizeof errbuf);
            ok = mq[v] && md[v];
        }
        check(ok, "%s: convert (f32, q8, q4) and load: %s", fm->name, errbuf);
        if (!ok)
            goto next_model;

        const int V = (int)m->cfg.n_vocab;
        int agree_sum[N_VARIANTS] = {0}, n_pos = 0, gen_tokens = 0, n_enc = 0, n_pre = 0;
        double enc_ms = 0, pre_ms = 0, dec_ms = 0;
        for (int ci = 0; ci < fm->n_cases; ci++) {
            idf_fixture_case fc;
            if (idf_fixture_case_load(fm->case_paths[ci], &fc, err, sizeof err) != 0) {
                check(false, "%s: %s", fm->case_paths[ci], err);
                continue;
            }
            if (fc.batch != 1 || fc.vocab_total != V) {
                check(false, "%s/%s: batch %d, vocab %d (model %d)", fm->name, fc.case_name, fc.batch, fc.vocab_total,
                      V);
                idf_fixture_case_free(&fc);
                continue;
            }
            idf_state *s = NULL;
            int32_t *img = NULL;
            case_run cr = {0};
            idf_err e;
            st = run_prompt(m, &fc, fc.n_new + 4, IDEFICS_KV_F32, &s, &img, &cr, &e);
            if (st != IDEFICS_OK) {
                check(false, "%s/%s: %s %s", fm->name, fc.case_name, idefics_status_str(st), e.msg);
                free(cr.logits);
                idf_fixture_case_free(&fc);
                continue;
            }
            enc_ms += cr.encode_ms, n_enc += idf_state_n_images(s), pre_ms += cr.prefill_ms, n_pre += cr.n;
            const int p0 = fc.seq_len - cr.n;
            double ref_max;
            const double dl = max_diff(cr.logits, fc.logits.data + (size_t)p0 * V, (size_t)cr.n * V, &ref_max);
            check(dl <= 1e-3 * ref_max, "%s/%s: logits at all %d positions, max|diff| %.3g <= 1e-3 * %.3g", fm->name,
                  fc.case_name, cr.n, dl, ref_max);

            /* perceiver output (or vision output without a resampler) of every image the prompt uses */
            double dlat = 0, lat_ref = 0;
            if (fc.image_hidden_states.data && idf_state_n_images(s) > 0) {
                const size_t per = fc.image_hidden_states.count / (size_t)fc.num_images;
                for (int i = 0; i < idf_state_n_images(s); i++) {
                    double r;
                    const double d =
                        max_diff(idf_state_image_latents(s, i), fc.image_hidden_states.data + i * per, per, &r);
                    if (d > dlat || isnan(d))
                        dlat = d;
                    if (r > lat_ref)
                        lat_ref = r;
                }
                check(dlat <= 1e-3 * lat_ref, "%s/%s: image hidden states max|diff| %.3g <= 1e-3 * %.3g", fm->name,
                      fc.case_name, dlat, lat_ref);
            }

            /* greedy continuation: the fixture's suppressed ids (bad words, and
             * eos held off by min_new_tokens) masked; generated tokens see the
             * last prompt token's image (spec §3.7) */
            int match = 0;
            if (fc.gen_tokens) {
                const float *last = cr.logits + (size_t)(cr.n - 1) * V;
                float *step = xmalloc((size_t)V * sizeof(float));
                const int32_t vis = img[fc.seq_len - 1];
                const double t0 = idf_time_ms();
                for (int k = 0; k < fc.n_new; k++) {
                    const int32_t tok = argmax(last, V, fc.suppressed, fc.n_suppressed);
                    if (tok != fc.gen_tokens[k])
                        break;
                    match++;
                    if (k + 1 < fc.n_new) {
                        if (idf_state_eval(s, &tok, &vis, 1, step, false, &e) != IDEFICS_OK)
                            break;
                        last = step;
                        gen_tokens++;
                    }
                }
                dec_ms += idf_time_ms() - t0;
                free(step);
                check(match == fc.n_new, "%s/%s: greedy %d/%d tokens match", fm->name, fc.case_name, match, fc.n_new);
            }

            /* Q8 KV cache on the same F32 model: logits close to the F32
             * cache's (int8 per 32 elements, compounded through untrained
             * random layers: measured up to 0.063 x max|logit| on these
             * fixtures, held to 0.1) and the same greedy tokens where the gaps
             * allow: a different token fails only when the fixture's token
             * trails it by more than twice the logit tolerance (a closer call
             * is within the noise, and the continuations diverge there). */
            {
                idf_state *s8 = NULL;
                int32_t *i8 = NULL;
                case_run r8 = {0};
                if (run_prompt(m, &fc, fc.n_new + 4, IDEFICS_KV_Q8, &s8, &i8, &r8, &e) != IDEFICS_OK) {
                    check(false, "%s/%s: Q8 KV cache: %s", fm->name, fc.case_name, e.msg);
                } else {
                    double r;
                    const double d = max_diff(r8.logits, cr.logits, (size_t)cr.n * V, &r);
                    check(d <= 0.1 * r, "%s/%s: Q8 KV cache logits vs F32 cache, max|diff| %.3g <= 0.1 * %.3g",
                          fm->name, fc.case_name, d, r);
                    int m8 = 0;
                    bool close_call = false;
                    if (fc.gen_tokens) {
                        const float *last = r8.logits + (size_t)(r8.n - 1) * V;
                        float *step = xmalloc((size_t)V * sizeof(float));
                        const int32_t vis = i8[fc.seq_len - 1];
                        for (int k = 0; k < fc.n_new; k++) {
                            const int32_t tok = argmax(last, V, fc.suppressed, fc.n_suppressed);
                            if (tok != fc.gen_tokens[k]) {
                                close_call = last[tok] - last[fc.gen_tokens[k]] <= 2 * 0.1 * r;
                                break;
                            }
                            m8++;
                            if (k + 1 < fc.n_new) {
                                if (idf_state_eval(s8, &tok, &vis, 1, step, false, &e) != IDEFICS_OK)
                                    break;
                                last = step;
                            }
                        }
                        free(step);
                        check(m8 == fc.n_new || close_call,
                              "%s/%s: Q8 KV cache greedy %d/%d tokens match%s", fm->name, fc.case_name, m8,
                              fc.n_new, m8 < fc.n_new ? " (then a close call)" : "");
                    }
                }
                idf_state_free(s8);
                free(i8);
                free(r8.logits);
            }

            /* quantised: equal to the dequantised F32 model; top-1 vs the F32 run */
            int agree[N_VARIANTS] = {0};
            double qdeq = 0;
            for (int v = 0; v < N_VARIANTS; v++) {
                idf_state *sq = NULL, *sd = NULL;
                int32_t *iq = NULL, *id = NULL;
                case_run rq = {0}, rd = {0};
                if (run_prompt(mq[v], &fc, 1, IDEFICS_KV_F32, &sq, &iq, &rq, &e) != IDEFICS_OK ||
                    run_prompt(md[v], &fc, 1, IDEFICS_KV_F32, &sd, &id, &rd, &e) != IDEFICS_OK) {
                    check(false, "%s/%s %s: %s", fm->name, fc.case_name, variants[v].quant, e.msg);
                } else {
                    double r;
                    const double d = max_diff(rq.logits, rd.logits, (size_t)cr.n * V, &r);
                    check(d <= qdeq_tol() * r,
                          "%s/%s %s: logits equal the dequantised-F32 model's, max|diff| %.3g <= %g * %.3g", fm->name,
                          fc.case_name, variants[v].quant, d, qdeq_tol(), r);
                    if (d / (r > 0 ? r : 1) > qdeq || isnan(d))
                        qdeq = d / (r > 0 ? r : 1);
                    for (int t = 0; t < cr.n; t++)
                        agree[v] += argmax(rq.logits + (size_t)t * V, V, NULL, 0) ==
                                    argmax(cr.logits + (size_t)t * V, V, NULL, 0);
                    agree_sum[v] += agree[v];
                }
                idf_state_free(sq);
                idf_state_free(sd);
                free(iq);
                free(id);
                free(rq.logits);
                free(rd.logits);
            }
            n_pos += cr.n;
            printf("%-17s %-16s %4d %10.3g %9.3g %9.2g %10.3g %4d/%-2d %3d/%-3d %3d/%-3d %9.2g\n", fm->name,
                   fc.case_name, cr.n, dl, ref_max, dl / (ref_max > 0 ? ref_max : 1), dlat, match, fc.n_new, agree[0],
                   cr.n, agree[N_VARIANTS - 1], cr.n, qdeq);
            idf_state_free(s);
            free(img);
            free(cr.logits);
            idf_fixture_case_free(&fc);
        }
        char line[512];
        int o = snprintf(line, sizeof line, "%-17s image encode %.2f ms/image, prefill %.0f tok/s, decode %.0f tok/s",
                         fm->name, n_enc ? enc_ms / n_enc : 0.0, pre_ms > 0 ? 1000.0 * n_pre / pre_ms : 0.0,
                         dec_ms > 0 ? 1000.0 * gen_tokens / dec_ms : 0.0);
        for (int v = 0; v < N_VARIANTS; v++) {
            const double pct = n_pos ? 100.0 * agree_sum[v] / n_pos : 0.0;
            if (!strcmp(variants[v].quant, "q4") && q4_gated(fm->name))
                check(n_pos > 0 && pct >= Q4_GATE_MIN_TOP1,
                      "%s: q4 top-1 agreement with F32 %d/%d = %.1f%% >= %.0f%% (trained model: gated)", fm->name,
                      agree_sum[v], n_pos, pct, Q4_GATE_MIN_TOP1);
            else if (variants[v].min_top1 > 0)
                check(pct >= variants[v].min_top1, "%s: %s top-1 agreement with F32 %d/%d = %.1f%% >= %.0f%%", fm->name,
                      variants[v].quant, agree_sum[v], n_pos, pct, variants[v].min_top1);
            else
                printf("INFO %s: %s top-1 agreement with F32 %d/%d = %.1f%% (%s)\n", fm->name, variants[v].quant,
                       agree_sum[v], n_pos, pct, variants[v].why);
            o += snprintf(line + o, sizeof line - (size_t)o, ", %s top-1 %.1f%%", variants[v].quant, pct);
        }
        strncat(summary, line, sizeof summary - strlen(summary) - 2);
        strcat(summary, "\n");
    next_model:
        idefics_model_free(m);
        for (int v = 0; v < N_VARIANTS; v++) {
            idefics_model_free(mq[v]);
            idefics_model_free(md[v]);
        }
    }
    for (int g = 0; g < N_Q4_GATED; g++)
        check(idf_fixture_find_model(&man, q4_gated_models[g]) != NULL,
              "trained fixture model %s is in the manifest (its Q4 gate ran)", q4_gated_models[g]);
    printf("\nreference backend (cpu-ref, 2 threads):\n%s", summary);
    idf_fixture_manifest_free(&man);
    return 0;
}
#endif

int main(int argc, char **argv) {
    int rc = 2;
    if (argc == 3 && !strcmp(argv[1], "synth")) {
        mkdir(argv[2], 0755);
        rc = run_synth(argv[2]);
    } else if (argc == 4 && !strcmp(argv[1], "fixtures")) {
#ifdef HAVE_FIXTURE_IO
        mkdir(argv[3], 0755);
        rc = run_fixtures(argv[2], argv[3]);
#else
        printf("SKIP: built without the fixture reader (needs cJSON)\n");
        return 77;
#endif
    } else {
        fprintf(stderr, "usage: test_forward synth OUT_DIR | test_forward fixtures CONVERTER OUT_DIR\n");
        return 2;
    }
    if (rc == 77)
        return 77;
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return rc || n_fail ? 1 : 0;
}
