/*
 * convert_main.c - idefics-convert: a Hugging Face IDEFICS checkpoint folder
 * (config.json, model.safetensors or shards + index, tokenizer, optional
 * preprocessor_config.json) -> one .idfx file; and --repack of an .idfx file.
 *
 * It streams: each tensor is checked, widened to fp32, encoded (Q4/Q8 ROWTILE,
 * F16 or F32 ROWMAJOR) and handed to the writer, and the pages of the input it
 * came from are dropped, so peak memory is about one tensor's fp32 copy plus its
 * encoded form plus the writer's chunk buffers. Every expected tensor's presence,
 * dtype and shape is checked before anything is written.
 */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf_config.h"
#include "idefics.h"
#include "idfx_keys.h"
#include "idfx_reader.h"
#include "idfx_writer.h"
#include "platform.h"
#include "quant.h"
#include "quantize.h"
#include "repack.h"
#include "safetensors.h"
#include "tmpfiles.h"
#include "tokenizer_import.h"

#define CONVERTER_VERSION "idefics-convert " IDEFICS_VERSION_STRING
#define MAX_CONFIG_BYTES (16u << 20)

/* Stored precision of a role under a preset; -1 = "quantized default" slots. */
enum { PREC_Q4, PREC_Q8, PREC_F16, PREC_F32, PREC_COUNT };
static const char *const prec_names[PREC_COUNT] = {"q4", "q8", "f16", "f32"};
static const int prec_type[PREC_COUNT] = {IDFX_TYPE_Q4, IDFX_TYPE_Q8, IDFX_TYPE_F16, IDFX_TYPE_F32};

typedef struct options {
    const char *model_dir, *out, *tokenizer_dir, *name;
    int preset;               /* PREC_*: the big linear weights */
    int role_prec[IDF_ROLE_COUNT];
    int search;
    uint32_t tile_rows;
    int tile_layout;          /* IDFX_LAYOUT_ROWTILE or IDFX_LAYOUT_GROUPTILE */
    idfx_writer_opts wo;
    const char *compress;     /* as given, for converter.options */
    int threads;
    bool quiet;
    bool progress_tty;
    bool allow_nonfinite;     /* --allow-nonfinite: convert NaN/Inf weights instead of refusing */
} options;

/* The defaults of each preset for the roles whose precision was measured
 * (docs/QUANT.md): in q4, the token embedding and the lm head are Q8 and the
 * vision tower Q4. The patch conv is F16 (588 columns cannot be grouped by 32). */
static void preset_roles(options *o) {
    int p = o->preset;
    int lin = p;
    o->role_prec[IDF_ROLE_TEXT_LINEAR] = lin;
    o->role_prec[IDF_ROLE_XATTN_LINEAR] = lin;
    o->role_prec[IDF_ROLE_PERCEIVER_LINEAR] = lin;
    o->role_prec[IDF_ROLE_VISION_LINEAR] = lin;
    o->role_prec[IDF_ROLE_EMBED] = p == PREC_Q4 ? PREC_Q8 : p;
    o->role_prec[IDF_ROLE_HEAD] = p == PREC_Q4 ? PREC_Q8 : p;
    o->role_prec[IDF_ROLE_PATCH] = p == PREC_F32 ? PREC_F32 : PREC_F16;
    o->role_prec[IDF_ROLE_SMALL] = PREC_F32;
}

static int parse_prec(const char *s) {
    for (int i = 0; i < PREC_COUNT; i++)
        if (!strcmp(s, prec_names[i])) return i;
    return -1;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: idefics-convert MODEL_DIR [-o] OUT.idfx [options]\n"
            "       idefics-convert --repack IN.idfx OUT.idfx [--compress ...] [-j N]\n"
            "\n"
            "MODEL_DIR holds config.json, model.safetensors (or shards with\n"
            "model.safetensors.index.json), tokenizer.json or tokenizer.model and,\n"
            "optionally, preprocessor_config.json.\n"
            "\n"
            "  -o, --output PATH     output file (default: ./<folder name>-<quant>.idfx)\n"
            "  --quant PRESET        q4 (default), q8, f16 or f32 (docs/QUANT.md)\n"
            "  --search N            Q4 scale candidates per sign (default %d; 0 = absmax only)\n"
            "  --tile-rows R         rows per ROWTILE tile, power of two <= 64 (default %u)\n"
            "  --layout L            rowtile (default: read by every backend) or grouptile\n"
            "                        (each group's scales next to its quants: CPU decode\n"
            "                        streams it 25-30%% faster; OpenCL leaves it to the CPU)\n"
            "  --embed P, --head P, --vision P\n"
            "                        override the precision (q4|q8|f16|f32) of the token\n"
            "                        embedding, the lm head or the vision tower linears\n"
            "  --compress C          none, or zstd[:LEVEL] (default zstd where a chunk saves >= 5%%)\n"
            "  --tokenizer DIR       read the tokenizer from DIR instead of MODEL_DIR\n"
            "  --name NAME           general.name (default: the folder name)\n"
            "  --allow-nonfinite     convert weights that hold NaN or Inf (refused by default)\n"
            "  -j N                  threads (default: all cores)\n"
            "  -q                    quiet: errors only\n",
            IDF_QUANT_DEFAULT_SEARCH, IDF_QUANT_DEFAULT_TILE_ROWS);
}

static void die_usage(const char *fmt, const char *arg) {
    fprintf(stderr, "idefics-convert: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(idefics-convert --help for usage)\n");
    exit(2);
}

static int parse_compress(const char *s, idfx_writer_opts *wo) {
    if (!strcmp(s, "none")) {
        wo->codec = IDFX_CODEC_RAW;
        return 0;
    }
    if (strncmp(s, "zstd", 4)) return -1;
    wo->codec = IDFX_CODEC_ZSTD;
    if (s[4] == '\0') return 0;
    if (s[4] != ':') return -1;
    char *end;
    long lv = strtol(s + 5, &end, 10);
    if (*end || end == s + 5 || lv < 1 || lv > 22) return -1;
    wo->zstd_level = (int)lv;
    return 0;
}

/* ---------------------------------------------------------------- progress */

typedef struct progress {
    const options *o;
    uint64_t total_in, done_in; /* input bytes of all tensors / of finished ones */
    uint64_t cur_in;            /* input bytes of the current tensor */
    const char *cur_name;
    double t0;
    double last_draw;
} progress;

static void draw(progress *p, double frac_of_current) {
    if (p->o->quiet || !p->o->progress_tty) return;
    double now = idf_time_ms();
    if (frac_of_current < 1.0 && now - p->last_draw < 100) return;
    p->last_draw = now;
    double done = (double)p->done_in + frac_of_current * (double)p->cur_in;
    double pct = p->total_in ? 100.0 * done / (double)p->total_in : 100.0;
    double mbs = done / 1e6 / ((now - p->t0) / 1e3 + 1e-9);
    fprintf(stderr, "\r\033[K[%5.1f%%] %7.1f MB/s  %.70s", pct, mbs, p->cur_name ? p->cur_name : "");
    fflush(stderr);
}

static void quant_progress(void *ud, int64_t rows_done, int64_t rows) {
    draw(ud, rows ? (double)rows_done / (double)rows : 1.0);
}

/* ------------------------------------------------------------------ helpers */

static void shape_str(char *buf, size_t n, uint32_t nd, const uint64_t *d) {
    size_t l = (size_t)snprintf(buf, n, "[");
    for (uint32_t i = 0; i < nd && l < n; i++) l += (size_t)snprintf(buf + l, n - l, "%s%llu", i ? ", " : "",
                                                                     (unsigned long long)d[i]);
    if (l < n) snprintf(buf + l, n - l, "]");
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static char *join_path(const char *dir, const char *file) {
    size_t n = strlen(dir) + strlen(file) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, file);
    return p;
}

static idf_src_dtype src_dtype(idf_st_dtype d) {
    return d == IDF_ST_F32 ? IDF_SRC_F32 : d == IDF_ST_F16 ? IDF_SRC_F16 : IDF_SRC_BF16;
}

/* A growable scratch buffer reused across tensors (the largest one sets its size). */
typedef struct scratch {
    void *p;
    size_t cap;
} scratch;

static void *scratch_get(scratch *s, uint64_t bytes) {
    if (bytes > SIZE_MAX) return NULL;
    if (bytes > s->cap) {
        free(s->p);
        s->p = malloc((size_t)bytes);
        s->cap = s->p ? (size_t)bytes : 0;
    }
    return s->p;
}

/* ----------------------------------------------------------------- metadata */

static int write_metadata(idfx_writer *w, const idf_hf_config *c, const char *config_text,
                          size_t config_len, const char *name, const char *opts_str) {
    int r = 0;
    const char *arch = c->text_only ? "llama" : "idefics";
    r |= idfx_writer_kv_str(w, IDFX_KEY_ARCH, arch, (uint32_t)strlen(arch));
    r |= idfx_writer_kv_str(w, IDFX_KEY_NAME, name, (uint32_t)strlen(name));
    r |= idfx_writer_kv_str(w, IDFX_KEY_CONVERTER_VERSION, CONVERTER_VERSION, (uint32_t)strlen(CONVERTER_VERSION));
    r |= idfx_writer_kv_str(w, IDFX_KEY_CONVERTER_OPTIONS, opts_str, (uint32_t)strlen(opts_str));
    r |= idfx_writer_kv_str(w, IDFX_KEY_SOURCE_CONFIG, config_text, (uint32_t)config_len);

    r |= idfx_writer_kv_u32(w, IDFX_KEY_VOCAB_SIZE, c->vocab_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_ADDITIONAL_VOCAB, c->additional_vocab_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_HIDDEN_SIZE, c->hidden_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_INTERMEDIATE_SIZE, c->intermediate_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_N_LAYERS, c->num_hidden_layers);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_N_HEADS, c->num_attention_heads);
    r |= idfx_writer_kv_f32(w, IDFX_KEY_RMS_EPS, c->rms_norm_eps);
    r |= idfx_writer_kv_f32(w, IDFX_KEY_ROPE_THETA, c->rope_theta); /* IDEFICS: 10000, fixed in transformers */
    r |= idfx_writer_kv_u32(w, IDFX_KEY_MAX_POS, c->max_position_embeddings);
    if (c->text_only) { /* "llama": the decoder keys only (docs/FORMAT.md) */
        r |= idfx_writer_kv_str(w, IDFX_KEY_HIDDEN_ACT, c->hidden_act, (uint32_t)strlen(c->hidden_act));
        return r ? -1 : 0;
    }
    r |= idfx_writer_kv_u32(w, IDFX_KEY_CROSS_INTERVAL, c->cross_layer_interval);
    r |= idfx_writer_kv_bool(w, IDFX_KEY_QK_LAYER_NORMS, c->qk_layer_norms);
    r |= idfx_writer_kv_bool(w, IDFX_KEY_USE_RESAMPLER, c->use_resampler);
    r |= idfx_writer_kv_str(w, IDFX_KEY_HIDDEN_ACT, c->hidden_act, (uint32_t)strlen(c->hidden_act));

    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_EMBED_DIM, c->v_embed_dim);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_IMAGE_SIZE, c->v_image_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_PATCH_SIZE, c->v_patch_size);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_N_LAYERS, c->v_num_hidden_layers);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_N_HEADS, c->v_num_attention_heads);
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_INTERMEDIATE, c->v_intermediate_size);
    r |= idfx_writer_kv_f32(w, IDFX_KEY_V_LN_EPS, c->v_layer_norm_eps);
    r |= idfx_writer_kv_str(w, IDFX_KEY_V_HIDDEN_ACT, c->v_hidden_act, (uint32_t)strlen(c->v_hidden_act));
    r |= idfx_writer_kv_u32(w, IDFX_KEY_V_N_CHANNELS, c->v_num_channels);
    r |= idfx_writer_kv_arr_f32(w, IDFX_KEY_V_IMAGE_MEAN, c->image_mean, 3);
    r |= idfx_writer_kv_arr_f32(w, IDFX_KEY_V_IMAGE_STD, c->image_std, 3);

    if (c->use_resampler) {
        r |= idfx_writer_kv_u32(w, IDFX_KEY_P_DEPTH, c->p_depth);
        r |= idfx_writer_kv_u32(w, IDFX_KEY_P_N_LATENTS, c->p_n_latents);
        r |= idfx_writer_kv_u32(w, IDFX_KEY_P_N_HEADS, c->p_n_heads);
        r |= idfx_writer_kv_u32(w, IDFX_KEY_P_HEAD_DIM, c->p_head_dim);
        r |= idfx_writer_kv_bool(w, IDFX_KEY_P_QK_LAYER_NORMS, c->p_qk_layer_norms);
    }
    return r ? -1 : 0;
}

/* Tokenizer keys, then the chat keys that depend on it: the instruct format when
 * the vocabulary has <end_of_utterance> (which then also stops generation). */
static int write_tokenizer(idfx_writer *w, const char *dir, const idf_hf_config *c, bool quiet, char *err,
                           size_t errsz) {
    idf_tok_vocab_owned tv;
    memset(&tv, 0, sizeof tv);
    if (idf_tokenizer_import_dir(dir, &tv, err, errsz)) return -1;
    int64_t eou = -1;
    for (uint32_t i = 0; i < tv.v.n_vocab; i++)
        if (tv.piece_lens[i] == 18 && !memcmp(tv.pieces[i], "<end_of_utterance>", 18)) eou = i;
    uint64_t model_vocab = (uint64_t)c->vocab_size + c->additional_vocab_size;
    if (!quiet && tv.v.n_vocab != model_vocab)
        fprintf(stderr, "idefics-convert: warning: the tokenizer has %u tokens, the model %llu (vocab_size + "
                "additional_vocab_size)\n", tv.v.n_vocab, (unsigned long long)model_vocab);
    int r = idf_tokenizer_write_keys(&tv.v, w, err, errsz);
    if (!r) {
        const char *tmpl = eou >= 0 ? "idefics-instruct" : "idefics-base";
        uint32_t stop[2], n_stop = 0;
        if (eou >= 0) stop[n_stop++] = (uint32_t)eou;
        stop[n_stop++] = tv.v.eos_id;
        if (idfx_writer_kv_str(w, IDFX_KEY_CHAT_TEMPLATE, tmpl, (uint32_t)strlen(tmpl)) ||
            idfx_writer_kv_arr_u32(w, IDFX_KEY_CHAT_STOP_TOKENS, stop, n_stop)) {
            snprintf(err, errsz, "%s", idfx_writer_error(w));
            r = -1;
        }
    }
    idf_tok_vocab_owned_free(&tv);
    return r;
}

/* ------------------------------------------------------------------ convert */

typedef struct plan_entry {
    const idf_expected_tensor *e;
    const idf_st_tensor *src;
    int type, layout;
    uint32_t layout_param;
} plan_entry;

/* The stored type of one tensor under the options. */
static void choose_type(const options *o, const idf_expected_tensor *e, plan_entry *p) {
    int prec = o->role_prec[e->role];
    p->layout = IDFX_LAYOUT_ROWMAJOR;
    p->layout_param = 0;
    if (prec == PREC_Q4 || prec == PREC_Q8) {
        /* ROWTILE needs a 2-D [rows, K] weight with K a multiple of 32; otherwise F16 */
        if (e->n_dims == 2 && e->shape[1] % IDFX_QK == 0) {
            p->type = prec_type[prec];
            p->layout = o->tile_layout;
            p->layout_param = o->tile_rows;
            return;
        }
        prec = PREC_F16;
    }
    p->type = prec_type[prec];
}

static int convert(const options *o) {
    double t_start = idf_time_ms();
    char err[1024] = "";
    int st = 0;
    idf_st_checkpoint ck;
    memset(&ck, 0, sizeof ck);
    idf_hf_config cfg;
    idf_expected_tensor *exp = NULL;
    uint32_t n_exp = 0;
    plan_entry *plan = NULL;
    idfx_writer *w = NULL;
    idf_pool *pool = NULL;
    scratch f32buf = {0}, outbuf = {0};
    char *config_text = NULL, *pre_text = NULL, *path = NULL;
    size_t config_len = 0, pre_len = 0;

    path = join_path(o->model_dir, "config.json");
    config_text = path ? idf_read_text_file(path, MAX_CONFIG_BYTES, &config_len) : NULL;
    if (!config_text) {
        fprintf(stderr, "idefics-convert: %s: cannot read: %s\n", path ? path : o->model_dir, idf_open_strerror(errno));
        st = IDEFICS_ERR_BAD_CHECKPOINT;
        goto done;
    }
    free(path);
    path = join_path(o->model_dir, "preprocessor_config.json");
    pre_text = path ? idf_read_text_file(path, MAX_CONFIG_BYTES, &pre_len) : NULL;
    st = idf_hf_config_parse(config_text, config_len, pre_text, pre_len, &cfg, err, sizeof err);
    if (st) goto fail;
    st = idf_hf_expected_tensors(&cfg, &exp, &n_exp);
    if (st) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    st = idf_st_checkpoint_open(o->model_dir, &ck, err, sizeof err);
    if (st) goto fail;

    /* Check every tensor before writing anything. */
    plan = calloc(n_exp, sizeof *plan);
    if (!plan) {
        st = IDEFICS_ERR_OUT_OF_MEMORY;
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    uint32_t n_plan = 0;
    uint64_t total_in = 0, total_params = 0;
    for (uint32_t i = 0; i < n_exp; i++) {
        const idf_expected_tensor *e = &exp[i];
        const idf_st_tensor *t = idf_st_checkpoint_find(&ck, e->name);
        char want[96], got[96];
        if (!t) {
            if (e->optional) continue;
            shape_str(want, sizeof want, e->n_dims, e->shape);
            st = IDEFICS_ERR_MISSING_TENSOR;
            snprintf(err, sizeof err, "%s: tensor '%s' %s is missing from the checkpoint", o->model_dir, e->name,
                     want);
            goto fail;
        }
        const idf_st_file *f = idf_st_checkpoint_file(&ck, t);
        if (t->n_dims != e->n_dims || memcmp(t->shape, e->shape, e->n_dims * sizeof *e->shape)) {
            shape_str(want, sizeof want, e->n_dims, e->shape);
            shape_str(got, sizeof got, t->n_dims, t->shape);
            st = IDEFICS_ERR_BAD_SHAPE;
            snprintf(err, sizeof err, "%s: tensor '%s' has shape %s, config.json implies %s", f->path, e->name, got,
                     want);
            goto fail;
        }
        if (t->dtype != IDF_ST_F32 && t->dtype != IDF_ST_F16 && t->dtype != IDF_ST_BF16) {
            st = IDEFICS_ERR_BAD_CHECKPOINT;
            snprintf(err, sizeof err, "%s: tensor '%s' has dtype %s (need F32, F16 or BF16)", f->path, e->name,
                     idf_st_dtype_name(t->dtype));
            goto fail;
        }
        plan_entry *p = &plan[n_plan++];
        p->e = e;
        p->src = t;
        choose_type(o, e, p);
        total_in += t->nbytes;
        total_params += t->n_elements;
    }
    /* Extra tensors: legacy buffers are expected and skipped quietly, anything else is reported. */
    uint32_t n_extra = 0;
    for (uint32_t i = 0; i < ck.n_tensors; i++) {
        const idf_st_tensor *t = ck.tensors[i];
        if (ends_with(t->name, ".inv_freq") || t->dtype == IDF_ST_I64) continue;
        bool known = false;
        for (uint32_t j = 0; j < n_plan && !known; j++) known = plan[j].src == t;
        if (known) continue;
        if (!o->quiet && n_extra < 20)
            fprintf(stderr, "idefics-convert: warning: ignoring unexpected tensor '%s' (%s)\n", t->name,
                    ck.files[t->file].path);
        n_extra++;
    }
    if (!o->quiet && n_extra > 20) fprintf(stderr, "idefics-convert: warning: ... %u unexpected tensors in all\n",
                                           n_extra);

    pool = idf_pool_create(o->threads, NULL, NULL, NULL);
    if (!pool) {
        st = IDEFICS_ERR_OUT_OF_MEMORY;
        snprintf(err, sizeof err, "cannot start threads");
        goto fail;
    }
    w = idfx_writer_open(o->out, &o->wo, err, sizeof err);
    if (!w) {
        st = IDEFICS_ERR_IO;
        goto fail;
    }

    /* general.name: the folder's own name */
    char name_buf[PATH_MAX], opts_str[512];
    const char *name = o->name;
    if (!name) {
        char *rp = realpath(o->model_dir, NULL);
        snprintf(name_buf, sizeof name_buf, "%s", rp ? rp : o->model_dir);
        free(rp);
        size_t l = strlen(name_buf);
        while (l > 1 && name_buf[l - 1] == '/') name_buf[--l] = '\0';
        name = basename(name_buf);
    }
    snprintf(opts_str, sizeof opts_str,
             "--quant %s --search %d --tile-rows %u --layout %s --embed %s --head %s --vision %s --compress %s",
             prec_names[o->preset], o->search, o->tile_rows,
             o->tile_layout == IDFX_LAYOUT_GROUPTILE ? "grouptile" : "rowtile",
             prec_names[o->role_prec[IDF_ROLE_EMBED]], prec_names[o->role_prec[IDF_ROLE_HEAD]],
             prec_names[o->role_prec[IDF_ROLE_VISION_LINEAR]], o->compress);
    if (write_metadata(w, &cfg, config_text, config_len, name, opts_str)) {
        st = IDEFICS_ERR_IO;
        snprintf(err, sizeof err, "%s", idfx_writer_error(w));
        goto fail;
    }
    if (write_tokenizer(w, o->tokenizer_dir ? o->tokenizer_dir : o->model_dir, &cfg, o->quiet, err, sizeof err)) {
        st = IDEFICS_ERR_BAD_CHECKPOINT;
        goto fail;
    }

    progress pr = {.o = o, .total_in = total_in, .t0 = idf_time_ms()};
    for (uint32_t i = 0; i < n_plan; i++) {
        const plan_entry *p = &plan[i];
        const idf_st_tensor *t = p->src;
        const idf_st_file *f = idf_st_checkpoint_file(&ck, t);
        double t0 = idf_time_ms();
        pr.cur_name = t->name;
        pr.cur_in = t->nbytes;
        draw(&pr, 0.0);
        uint64_t n = t->n_elements, f32_bytes, out_bytes, unit;
        if (!idf_mul_u64(n, 4, &f32_bytes) ||
            !idfx_tensor_nbytes(p->type, p->layout, p->layout_param, p->e->n_dims, p->e->shape, &out_bytes, &unit)) {
            st = IDEFICS_ERR_BAD_SHAPE;
            snprintf(err, sizeof err, "tensor '%s': cannot be stored as %s", t->name, idfx_type_name(p->type));
            goto fail;
        }
        float *x = scratch_get(&f32buf, f32_bytes);
        void *out = p->type == IDFX_TYPE_F32 ? (void *)x : scratch_get(&outbuf, out_bytes);
        if (!x || !out) {
            st = IDEFICS_ERR_OUT_OF_MEMORY;
            snprintf(err, sizeof err, "tensor '%s': out of memory for %llu bytes", t->name,
                     (unsigned long long)(f32_bytes + out_bytes));
            goto fail;
        }
        idf_convert_to_f32(pool, src_dtype(t->dtype), idf_st_data(f, t), n, x);
        /* NaN/Inf weights make a model that answers garbage with exit 0: refuse them by name */
        uint64_t n_bad = 0, first_bad = 0;
        for (uint64_t j = 0; j < n; j++)
            if (!isfinite(x[j]) && n_bad++ == 0) first_bad = j;
        if (n_bad && !o->allow_nonfinite) {
            st = IDEFICS_ERR_BAD_CHECKPOINT;
            snprintf(err, sizeof err,
                     "%s: tensor '%s' has %llu NaN or infinite values of %llu (first at index %llu); "
                     "--allow-nonfinite converts it anyway",
                     f->path, t->name, (unsigned long long)n_bad, (unsigned long long)n, (unsigned long long)first_bad);
            goto fail;
        }
        if (n_bad && !o->quiet)
            fprintf(stderr, "idefics-convert: warning: tensor '%s' has %llu NaN or infinite values (--allow-nonfinite)\n",
                    t->name, (unsigned long long)n_bad);
        /* the input pages are file-backed: drop them now rather than let the whole checkpoint pile up */
        idf_map_advise_dontneed(&f->map, t->offset, t->nbytes);
        if (p->type == IDFX_TYPE_Q4 || p->type == IDFX_TYPE_Q8) {
            int search = p->type == IDFX_TYPE_Q4 ? o->search : 0;
            idf_quantize_rowtile(pool, p->type, x, (int64_t)p->e->shape[0], (int64_t)p->e->shape[1],
                                 p->layout_param, search, out, quant_progress, &pr);
            if (p->layout == IDFX_LAYOUT_GROUPTILE) {
                /* the fp32 input is done with: reorder into its buffer (out_bytes < f32_bytes) */
                idfx_rowtile_to_grouptile(p->type, p->layout_param, (int64_t)p->e->shape[0],
                                          (int64_t)p->e->shape[1], out, x);
                out = x;
            }
        } else if (p->type == IDFX_TYPE_F16) {
            idf_convert_f32_to_f16(pool, x, n, out);
        }
        if (idfx_writer_add_tensor(w, t->name, p->type, p->layout, p->layout_param, p->e->n_dims, p->e->shape, out,
                                   out_bytes)) {
            st = IDEFICS_ERR_IO;
            snprintf(err, sizeof err, "tensor '%s': %s", t->name, idfx_writer_error(w));
            goto fail;
        }
        pr.done_in += t->nbytes;
        if (!o->quiet && !o->progress_tty) {
            char sh[96];
            shape_str(sh, sizeof sh, p->e->n_dims, p->e->shape);
            fprintf(stderr, "[%5.1f%%] %-62s %-18s %4s -> %-3s %8.1f ms\n",
                    total_in ? 100.0 * (double)pr.done_in / (double)total_in : 100.0, t->name, sh,
                    idf_st_dtype_name(t->dtype), idfx_type_name(p->type), idf_time_ms() - t0);
        }
        draw(&pr, 1.0);
    }
    if (!o->quiet && o->progress_tty) fprintf(stderr, "\r\033[K");

    idfx_writer_stat stats[IDFX_TYPE_COUNT];
    idfx_writer_stats(w, stats);
    int rc = idfx_writer_close(w, err, sizeof err);
    w = NULL;
    if (rc) {
        st = IDEFICS_ERR_IO;
        goto fail;
    }

    /* summary */
    struct stat sb;
    uint64_t out_size = stat(o->out, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    double wall = (idf_time_ms() - t_start) / 1e3;
    if (!o->quiet) {
        fprintf(stderr, "wrote %s\n", o->out);
        uint64_t nt = 0, raw = 0;
        for (int i = 0; i < IDFX_TYPE_COUNT; i++) {
            nt += stats[i].tensors;
            raw += stats[i].raw_bytes;
        }
        fprintf(stderr, "  tensors      %llu  (", (unsigned long long)nt);
        for (int i = 0, first = 1; i < IDFX_TYPE_COUNT; i++)
            if (stats[i].tensors) {
                fprintf(stderr, "%s%s %llu", first ? "" : ", ", idfx_type_name(i),
                        (unsigned long long)stats[i].tensors);
                first = 0;
            }
        fprintf(stderr, ")\n");
        fprintf(stderr, "  params       %.6g M\n", (double)total_params / 1e6);
        for (int i = 0; i < IDFX_TYPE_COUNT; i++)
            if (stats[i].tensors)
                fprintf(stderr, "    %-4s       %.6g M params, %.3f MB decoded, %.3f MB stored\n", idfx_type_name(i),
                        (double)stats[i].params / 1e6, (double)stats[i].raw_bytes / 1e6,
                        (double)stats[i].stored_bytes / 1e6);
        fprintf(stderr, "  input        %.1f MB (tensor data; %.1f MB of shards)\n", (double)total_in / 1e6,
                (double)ck.total_bytes / 1e6);
        fprintf(stderr, "  output       %.1f MB (%.1f MB decoded)\n", (double)out_size / 1e6, (double)raw / 1e6);
        fprintf(stderr, "  bits/weight  %.3f (file) / %.3f (decoded)\n",
                total_params ? 8.0 * (double)out_size / (double)total_params : 0.0,
                total_params ? 8.0 * (double)raw / (double)total_params : 0.0);
        fprintf(stderr, "  throughput   %.1f MB/s of input\n", (double)total_in / 1e6 / (wall > 0 ? wall : 1e-9));
        fprintf(stderr, "  wall time    %.2f s\n", wall);
        fprintf(stderr, "  peak RSS     %.1f MB\n", (double)idf_peak_rss_bytes() / 1e6);
    }
    goto done;

fail:
    fprintf(stderr, "idefics-convert: %s (%s)\n", err, idefics_status_str((idefics_status)st));
done:
    idfx_writer_abort(w);
    idf_pool_free(pool);
    free(f32buf.p);
    free(outbuf.p);
    free(plan);
    free(exp);
    idf_st_checkpoint_close(&ck);
    free(config_text);
    free(pre_text);
    free(path);
    return st;
}

static int repack(const options *o, const char *in, const char *out) {
    char err[1024] = "";
    double t0 = idf_time_ms();
    if (idfx_repack(in, out, &o->wo, err, sizeof err)) {
        fprintf(stderr, "idefics-convert: --repack: %s\n", err);
        return 1;
    }
    struct stat a, b;
    if (!o->quiet && stat(in, &a) == 0 && stat(out, &b) == 0)
        fprintf(stderr, "wrote %s: %.1f MB -> %.1f MB in %.2f s, peak RSS %.1f MB\n", out, (double)a.st_size / 1e6,
                (double)b.st_size / 1e6, (idf_time_ms() - t0) / 1e3, (double)idf_peak_rss_bytes() / 1e6);
    return 0;
}

int main(int argc, char **argv) {
    options o;
    memset(&o, 0, sizeof o);
    o.preset = PREC_Q4;
    o.search = IDF_QUANT_DEFAULT_SEARCH;
    o.tile_rows = IDF_QUANT_DEFAULT_TILE_ROWS;
    o.tile_layout = IDFX_LAYOUT_ROWTILE;
    o.wo = idfx_writer_default_opts();
    o.compress = "zstd";
    const char *repack_in = NULL, *repack_out = NULL;
    int over[IDF_ROLE_COUNT];
    for (int i = 0; i < IDF_ROLE_COUNT; i++) over[i] = -1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_ARG() \
    if (!v) die_usage("%s needs a value", a); \
    i++
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("%s\n", CONVERTER_VERSION);
            return 0;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            NEED_ARG();
            o.out = v;
        } else if (!strcmp(a, "--quant")) {
            NEED_ARG();
            if ((o.preset = parse_prec(v)) < 0) die_usage("unknown --quant preset '%s' (q4, q8, f16, f32)", v);
        } else if (!strcmp(a, "--embed") || !strcmp(a, "--head") || !strcmp(a, "--vision")) {
            NEED_ARG();
            int p = parse_prec(v);
            if (p < 0) die_usage("unknown precision '%s' (q4, q8, f16, f32)", v);
            over[!strcmp(a, "--embed") ? IDF_ROLE_EMBED : !strcmp(a, "--head") ? IDF_ROLE_HEAD
                                                                                : IDF_ROLE_VISION_LINEAR] = p;
        } else if (!strcmp(a, "--search")) {
            NEED_ARG();
            char *end;
            long s = strtol(v, &end, 10);
            if (*end || end == v || s < 0 || s > 1024) die_usage("--search needs an integer in [0, 1024], got '%s'", v);
            o.search = (int)s;
        } else if (!strcmp(a, "--tile-rows")) {
            NEED_ARG();
            char *end;
            long r = strtol(v, &end, 10);
            if (*end || r < 1 || r > IDFX_MAX_TILE_ROWS || (r & (r - 1)))
                die_usage("--tile-rows needs a power of two in [1, 64], got '%s'", v);
            o.tile_rows = (uint32_t)r;
        } else if (!strcmp(a, "--layout")) {
            NEED_ARG();
            if (!strcmp(v, "rowtile"))
                o.tile_layout = IDFX_LAYOUT_ROWTILE;
            else if (!strcmp(v, "grouptile"))
                o.tile_layout = IDFX_LAYOUT_GROUPTILE;
            else
                die_usage("--layout needs rowtile or grouptile, got '%s'", v);
        } else if (!strcmp(a, "--compress")) {
            NEED_ARG();
            if (parse_compress(v, &o.wo)) die_usage("--compress needs none or zstd[:1..22], got '%s'", v);
            o.compress = v;
        } else if (!strcmp(a, "--tokenizer")) {
            NEED_ARG();
            o.tokenizer_dir = v;
        } else if (!strcmp(a, "--name")) {
            NEED_ARG();
            o.name = v;
        } else if (!strcmp(a, "-j")) {
            NEED_ARG();
            o.threads = atoi(v);
            if (o.threads < 1) die_usage("-j needs a thread count >= 1, got '%s'", v);
        } else if (!strncmp(a, "-j", 2) && a[2]) {
            o.threads = atoi(a + 2);
            if (o.threads < 1) die_usage("-j needs a thread count >= 1, got '%s'", a + 2);
        } else if (!strcmp(a, "--allow-nonfinite")) {
            o.allow_nonfinite = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o.quiet = true;
        } else if (!strcmp(a, "--repack")) {
            if (i + 2 >= argc) die_usage("%s needs IN.idfx OUT.idfx", a);
            repack_in = argv[++i];
            repack_out = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            die_usage("unknown option '%s'", a);
        } else if (!o.model_dir) {
            o.model_dir = a;
        } else if (!o.out) { /* idefics-convert IN_DIR OUT.idfx, as well as -o */
            o.out = a;
        } else {
            die_usage("unexpected argument '%s'", a);
        }
#undef NEED_ARG
    }
    o.wo.n_threads = o.threads;
    o.progress_tty = idf_isatty(2);
    if (repack_in) {
        if (o.model_dir) die_usage("--repack takes no MODEL_DIR ('%s')", o.model_dir);
        conv_clean_stale(repack_out, o.quiet);
        conv_tmp_guard(repack_out);
        return repack(&o, repack_in, repack_out);
    }
    if (!o.model_dir) die_usage("%s", "no MODEL_DIR given");
    preset_roles(&o);
    for (int i = 0; i < IDF_ROLE_COUNT; i++)
        if (over[i] >= 0) o.role_prec[i] = over[i];
    char out_buf[PATH_MAX];
    if (!o.out) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", o.model_dir);
        size_t l = strlen(tmp);
        while (l > 1 && tmp[l - 1] == '/') tmp[--l] = '\0';
        snprintf(out_buf, sizeof out_buf, "%s-%s.idfx", basename(tmp), prec_names[o.preset]);
        o.out = out_buf;
    }
    /* temporaries: those of killed runs go now, ours goes on Ctrl-C / SIGTERM */
    conv_clean_stale(o.out, o.quiet);
    conv_tmp_guard(o.out);
    return convert(&o) ? 1 : 0;
}
