/*
 * test_synth_check.c - checks a folder written by make-synthetic-checkpoint
 * against an independent reading of the IDEFICS / LLaMA layout: the expected
 * tensor names and shapes are rebuilt here from config.json (spec §2) and
 * compared with the safetensors headers, the index, the data lengths, simple
 * value statistics, and the tokenizer files' vocab/merges consistency.
 *
 * usage: test_synth_check DIR [--no-weights] [--table FILE]
 *                             [--same DIR2] [--differ DIR2]
 *   --no-weights  the folder came from --dry-run: skip the safetensors
 *   --table FILE  compare the tensor table printed by --dry-run
 *   --same DIR2   every tensor's bytes equal DIR2's (e.g. sharded vs not)
 *   --differ DIR2 every tensor of 64+ elements differs from DIR2's
 * Exit 0 when everything holds, 1 with one line per failure otherwise.
 */
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

#include "check.h"

/* ---- helpers ---- */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0;
        if (len) *len = (size_t)n;
    }
    return buf;
}

static cJSON *read_json(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = read_file(path, NULL);
    CHECK(text, "cannot read %s", path);
    if (!text) return NULL;
    cJSON *j = cJSON_Parse(text);
    free(text);
    CHECK(j, "%s is not valid JSON", path);
    return j;
}

static int get_int(const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? v->valueint : dflt;
}

static const char *get_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}

/* ---- expected tensors, rebuilt from config.json ---- */

typedef enum kind { K_LINEAR, K_EMBED, K_NORM, K_BIAS, K_GATE, K_LATENT } kind;

typedef struct expect {
    char name[128];
    int ndim;
    int64_t shape[4];
    kind k;
    bool seen;
} expect;

typedef struct expect_list {
    expect *e;
    size_t n, cap;
} expect_list;

static void want(expect_list *l, kind k, int64_t d0, int64_t d1, int64_t d2, int64_t d3, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->e = realloc(l->e, l->cap * sizeof *l->e);
        if (!l->e) exit(2);
    }
    expect *e = &l->e[l->n++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    int64_t d[4] = {d0, d1, d2, d3};
    for (int i = 0; i < 4 && d[i]; i++) e->shape[e->ndim++] = d[i];
    e->k = k;
}

typedef struct dims {
    bool idefics;
    int vocab, add, h, f, layers, heads, interval;
    int ve, vimg, vp, vl, vh, vf, vc;
    int pd, pl, ph, phd;
    const char *torch_dtype;
} dims;

static bool read_dims(const cJSON *cfg, dims *d) {
    memset(d, 0, sizeof *d);
    const cJSON *arch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(cfg, "architectures"), 0);
    const char *a = cJSON_IsString(arch) ? arch->valuestring : "";
    d->idefics = !strcmp(get_str(cfg, "model_type"), "idefics");
    CHECK(d->idefics ? !strcmp(a, "IdeficsForVisionText2Text") : !strcmp(a, "LlamaForCausalLM"),
          "architectures[0] = '%s' does not match model_type '%s'", a, get_str(cfg, "model_type"));
    d->vocab = get_int(cfg, "vocab_size", 0);
    d->add = get_int(cfg, "additional_vocab_size", 0);
    d->h = get_int(cfg, "hidden_size", 0);
    d->f = get_int(cfg, "intermediate_size", 0);
    d->layers = get_int(cfg, "num_hidden_layers", 0);
    d->heads = get_int(cfg, "num_attention_heads", 0);
    d->torch_dtype = get_str(cfg, "torch_dtype");
    CHECK(d->vocab > 0 && d->h > 0 && d->f > 0 && d->layers > 0 && d->heads > 0 && d->h % d->heads == 0,
          "config.json text dims are incomplete");
    if (!d->idefics) return failures == 0;
    d->interval = get_int(cfg, "cross_layer_interval", 0);
    CHECK(d->add > 0, "additional_vocab_size missing");
    CHECK(d->interval > 0 && d->layers % d->interval == 0,
          "cross_layer_interval %d must divide num_hidden_layers %d (transformers indexes blocks by layer/interval)",
          d->interval, d->layers);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "use_resampler")), "use_resampler is not true");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "qk_layer_norms")), "qk_layer_norms is not true");
    CHECK(!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, "tie_word_embeddings")), "tie_word_embeddings is true");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "vision_config");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(cfg, "perceiver_config");
    CHECK(cJSON_IsObject(v) && cJSON_IsObject(p), "vision_config / perceiver_config missing");
    d->ve = get_int(v, "embed_dim", 0);
    d->vimg = get_int(v, "image_size", 0);
    d->vp = get_int(v, "patch_size", 0);
    d->vl = get_int(v, "num_hidden_layers", 0);
    d->vh = get_int(v, "num_attention_heads", 0);
    d->vf = get_int(v, "intermediate_size", 0);
    d->vc = get_int(v, "num_channels", 3);
    CHECK(!strcmp(get_str(v, "hidden_act"), "gelu"), "vision hidden_act is '%s', IDEFICS uses exact gelu",
          get_str(v, "hidden_act"));
    d->pd = get_int(p, "resampler_depth", 0);
    d->pl = get_int(p, "resampler_n_latents", 0);
    d->ph = get_int(p, "resampler_n_heads", 0);
    d->phd = get_int(p, "resampler_head_dim", 0);
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "qk_layer_norms_perceiver")),
          "qk_layer_norms_perceiver is not true");
    CHECK(d->ve > 0 && d->vimg > 0 && d->vp > 0 && d->vimg % d->vp == 0 && d->vl > 0 && d->vh > 0 &&
              d->ve % d->vh == 0 && d->vf > 0 && d->pd > 0 && d->pl > 0 && d->ph > 0 && d->phd > 0,
          "vision/perceiver dims are incomplete or inconsistent");
    return failures == 0;
}

static void expected_tensors(const dims *d, expect_list *l) {
    want(l, K_EMBED, d->vocab, d->h, 0, 0, "model.embed_tokens.weight");
    for (int i = 0; i < d->layers; i++) {
        const char *q[] = {"q", "k", "v", "o"};
        for (int k = 0; k < 4; k++) want(l, K_LINEAR, d->h, d->h, 0, 0, "model.layers.%d.self_attn.%s_proj.weight", i, q[k]);
        want(l, K_LINEAR, d->f, d->h, 0, 0, "model.layers.%d.mlp.gate_proj.weight", i);
        want(l, K_LINEAR, d->f, d->h, 0, 0, "model.layers.%d.mlp.up_proj.weight", i);
        want(l, K_LINEAR, d->h, d->f, 0, 0, "model.layers.%d.mlp.down_proj.weight", i);
        want(l, K_NORM, d->h, 0, 0, 0, "model.layers.%d.input_layernorm.weight", i);
        want(l, K_NORM, d->h, 0, 0, 0, "model.layers.%d.post_attention_layernorm.weight", i);
    }
    want(l, K_NORM, d->h, 0, 0, 0, "model.norm.weight");
    want(l, K_LINEAR, d->vocab, d->h, 0, 0, "lm_head.weight");
    if (!d->idefics) return;
    want(l, K_EMBED, d->add, d->h, 0, 0, "model.embed_tokens.additional_embedding.weight");
    want(l, K_LINEAR, d->add, d->h, 0, 0, "lm_head.additional_fc.weight");
    for (int j = 0; j < d->layers / d->interval; j++) {
        const char *p = "model.gated_cross_attn_layers";
        want(l, K_GATE, 1, 0, 0, 0, "%s.%d.alpha_cross_attn", p, j);
        want(l, K_GATE, 1, 0, 0, 0, "%s.%d.alpha_dense", p, j);
        want(l, K_LINEAR, d->h, d->h, 0, 0, "%s.%d.cross_attn.q_proj.weight", p, j);
        want(l, K_LINEAR, d->h, d->ve, 0, 0, "%s.%d.cross_attn.k_proj.weight", p, j);
        want(l, K_LINEAR, d->h, d->ve, 0, 0, "%s.%d.cross_attn.v_proj.weight", p, j);
        want(l, K_LINEAR, d->h, d->h, 0, 0, "%s.%d.cross_attn.o_proj.weight", p, j);
        want(l, K_NORM, d->h / d->heads, 0, 0, 0, "%s.%d.cross_attn.q_layer_norm.weight", p, j);
        want(l, K_NORM, d->h / d->heads, 0, 0, 0, "%s.%d.cross_attn.k_layer_norm.weight", p, j);
        want(l, K_LINEAR, d->f, d->h, 0, 0, "%s.%d.mlp.gate_proj.weight", p, j);
        want(l, K_LINEAR, d->f, d->h, 0, 0, "%s.%d.mlp.up_proj.weight", p, j);
        want(l, K_LINEAR, d->h, d->f, 0, 0, "%s.%d.mlp.down_proj.weight", p, j);
        want(l, K_NORM, d->h, 0, 0, 0, "%s.%d.input_layernorm.weight", p, j);
        want(l, K_NORM, d->h, 0, 0, 0, "%s.%d.post_attention_layernorm.weight", p, j);
    }
    const char *v = "model.vision_model";
    const int grid = d->vimg / d->vp;
    want(l, K_EMBED, d->ve, 0, 0, 0, "%s.embeddings.class_embedding", v);
    want(l, K_LINEAR, d->ve, d->vc, d->vp, d->vp, "%s.embeddings.patch_embedding.weight", v);
    want(l, K_EMBED, grid * grid + 1, d->ve, 0, 0, "%s.embeddings.position_embedding.weight", v);
    want(l, K_NORM, d->ve, 0, 0, 0, "%s.pre_layrnorm.weight", v);
    want(l, K_BIAS, d->ve, 0, 0, 0, "%s.pre_layrnorm.bias", v);
    want(l, K_NORM, d->ve, 0, 0, 0, "%s.post_layernorm.weight", v);
    want(l, K_BIAS, d->ve, 0, 0, 0, "%s.post_layernorm.bias", v);
    for (int i = 0; i < d->vl; i++) {
        const char *q[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        for (int k = 0; k < 4; k++) {
            want(l, K_LINEAR, d->ve, d->ve, 0, 0, "%s.encoder.layers.%d.self_attn.%s.weight", v, i, q[k]);
            want(l, K_BIAS, d->ve, 0, 0, 0, "%s.encoder.layers.%d.self_attn.%s.bias", v, i, q[k]);
        }
        for (int n = 1; n <= 2; n++) {
            want(l, K_NORM, d->ve, 0, 0, 0, "%s.encoder.layers.%d.layer_norm%d.weight", v, i, n);
            want(l, K_BIAS, d->ve, 0, 0, 0, "%s.encoder.layers.%d.layer_norm%d.bias", v, i, n);
        }
        want(l, K_LINEAR, d->vf, d->ve, 0, 0, "%s.encoder.layers.%d.mlp.fc1.weight", v, i);
        want(l, K_BIAS, d->vf, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc1.bias", v, i);
        want(l, K_LINEAR, d->ve, d->vf, 0, 0, "%s.encoder.layers.%d.mlp.fc2.weight", v, i);
        want(l, K_BIAS, d->ve, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc2.bias", v, i);
    }
    const char *p = "model.perceiver_resampler";
    const int inner = d->ph * d->phd;
    want(l, K_LATENT, d->pl, d->ve, 0, 0, "%s.latents", p);
    want(l, K_NORM, d->ve, 0, 0, 0, "%s.layer_norm.weight", p);
    want(l, K_BIAS, d->ve, 0, 0, 0, "%s.layer_norm.bias", p);
    for (int b = 0; b < d->pd; b++) {
        const char *ln[] = {"context_layer_norm", "latents_layer_norm"};
        for (int k = 0; k < 2; k++) {
            want(l, K_NORM, d->ve, 0, 0, 0, "%s.blocks.%d.0.%s.weight", p, b, ln[k]);
            want(l, K_BIAS, d->ve, 0, 0, 0, "%s.blocks.%d.0.%s.bias", p, b, ln[k]);
        }
        const char *qk[] = {"q_layer_norm", "k_layer_norm"};
        for (int k = 0; k < 2; k++) {
            want(l, K_NORM, d->phd, 0, 0, 0, "%s.blocks.%d.0.%s.weight", p, b, qk[k]);
            want(l, K_BIAS, d->phd, 0, 0, 0, "%s.blocks.%d.0.%s.bias", p, b, qk[k]);
        }
        want(l, K_LINEAR, inner, d->ve, 0, 0, "%s.blocks.%d.0.q_proj.weight", p, b);
        want(l, K_LINEAR, inner, d->ve, 0, 0, "%s.blocks.%d.0.k_proj.weight", p, b);
        want(l, K_LINEAR, inner, d->ve, 0, 0, "%s.blocks.%d.0.v_proj.weight", p, b);
        want(l, K_LINEAR, d->ve, inner, 0, 0, "%s.blocks.%d.0.output_proj.weight", p, b);
        want(l, K_NORM, d->ve, 0, 0, 0, "%s.blocks.%d.1.ln.weight", p, b);
        want(l, K_BIAS, d->ve, 0, 0, 0, "%s.blocks.%d.1.ln.bias", p, b);
        want(l, K_LINEAR, 4 * d->ve, d->ve, 0, 0, "%s.blocks.%d.1.fc.weight", p, b);
        want(l, K_LINEAR, d->ve, 4 * d->ve, 0, 0, "%s.blocks.%d.1.c_proj.weight", p, b);
    }
}

static expect *find_expect(expect_list *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->e[i].name, name)) return &l->e[i];
    return NULL;
}

/* Old Hub shards may carry these buffers; --legacy-buffers writes them. */
static bool is_legacy_buffer(const char *name) {
    size_t n = strlen(name);
    const char *a = ".rotary_emb.inv_freq", *b = "embeddings.position_ids";
    return (n > strlen(a) && !strcmp(name + n - strlen(a), a)) || (n > strlen(b) && !strcmp(name + n - strlen(b), b));
}

/* ---- safetensors ---- */

static int dtype_size(const char *s) {
    if (!strcmp(s, "BF16") || !strcmp(s, "F16")) return 2;
    if (!strcmp(s, "F32")) return 4;
    if (!strcmp(s, "I64")) return 8;
    return 0;
}

static const char *expected_dtype(const char *torch_dtype) {
    return !strcmp(torch_dtype, "float32") ? "F32" : !strcmp(torch_dtype, "float16") ? "F16" : "BF16";
}

static float to_float(const uint8_t *p, const char *dtype) {
    uint32_t u;
    float f;
    if (!strcmp(dtype, "F32")) {
        u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    } else if (!strcmp(dtype, "BF16")) {
        u = ((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16;
    } else { /* F16: only normal numbers and zero occur in these weights */
        uint32_t h = (uint32_t)p[0] | (uint32_t)p[1] << 8, e = (h >> 10) & 31, m = h & 1023;
        u = (h & 0x8000u) << 16;
        if (e) u |= ((e + 112) << 23) | (m << 13);
    }
    memcpy(&f, &u, 4);
    return f;
}

typedef struct tensor_data {
    char name[128];
    char dtype[8];
    uint8_t *bytes;
    uint64_t len;
} tensor_data;

typedef struct loaded {
    tensor_data *t; /* copies, only when kept */
    size_t n, cap;
    size_t count;   /* tensors seen */
    uint64_t total; /* their bytes */
} loaded;

static void check_values(const expect *x, const uint8_t *bytes, uint64_t len, const char *dtype);

/* Parses one safetensors file (mapped, so 2 GB shards cost no heap), checks
 * its framing and each tensor's values; keeps copies of the tensors only when
 * keep is set (for --same / --differ). */
static void load_safetensors(const char *dir, const char *file, loaded *out, expect_list *exp, const dims *d,
                             cJSON *weight_map, bool keep) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    int fd = open(path, O_RDONLY);
    struct stat st;
    const char *buf = NULL;
    size_t size = 0;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
        size = (size_t)st.st_size;
        void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        buf = m == MAP_FAILED ? NULL : m;
    }
    if (fd >= 0) close(fd);
    CHECK(buf, "cannot map %s", path);
    if (!buf) return;
    uint64_t hlen = 0;
    for (int i = 0; i < 8 && size >= 8; i++) hlen |= (uint64_t)(uint8_t)buf[i] << (8 * i);
    CHECK(size >= 8 && hlen <= size - 8, "%s: header length %" PRIu64 " exceeds file size %zu", file, hlen, size);
    if (size < 8 || hlen > size - 8) {
        munmap((void *)buf, size);
        return;
    }
    CHECK(hlen % 8 == 0, "%s: header length %" PRIu64 " is not a multiple of 8", file, hlen);
    cJSON *h = cJSON_ParseWithLength(buf + 8, (size_t)hlen);
    CHECK(h, "%s: header is not JSON", file);
    if (!h) {
        munmap((void *)buf, size);
        return;
    }
    const uint64_t data_len = size - 8 - hlen;
    const uint8_t *data = (const uint8_t *)buf + 8 + hlen;
    /* the tensors must tile the data section exactly: sort ends by begin */
    uint64_t covered = 0;
    size_t count = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, h) {
        if (!strcmp(e->string, "__metadata__")) continue;
        count++;
        const char *dt = get_str(e, "dtype");
        const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
        const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        CHECK(dtype_size(dt) > 0, "%s: %s has dtype '%s'", file, e->string, dt);
        CHECK(cJSON_IsArray(shape) && cJSON_GetArraySize(offs) == 2, "%s: %s lacks shape or data_offsets", file,
              e->string);
        if (!dtype_size(dt) || !cJSON_IsArray(shape) || cJSON_GetArraySize(offs) != 2) continue;
        uint64_t numel = 1;
        int64_t sh[8];
        int nd = 0;
        const cJSON *s;
        cJSON_ArrayForEach(s, shape) {
            if (nd < 8) sh[nd++] = (int64_t)s->valuedouble;
            numel *= (uint64_t)s->valuedouble;
        }
        const uint64_t b = (uint64_t)cJSON_GetArrayItem(offs, 0)->valuedouble;
        const uint64_t en = (uint64_t)cJSON_GetArrayItem(offs, 1)->valuedouble;
        CHECK(b <= en && en <= data_len, "%s: %s offsets [%" PRIu64 ", %" PRIu64 ") outside data of %" PRIu64, file,
              e->string, b, en, data_len);
        CHECK(en - b == numel * (uint64_t)dtype_size(dt), "%s: %s has %" PRIu64 " bytes for %" PRIu64 " x %s", file,
              e->string, en - b, numel, dt);
        if (b > en || en > data_len) continue;
        covered += en - b;
        expect *x = find_expect(exp, e->string);
        if (x) {
            CHECK(!x->seen, "%s appears twice", e->string);
            x->seen = true;
            bool same = nd == x->ndim;
            for (int i = 0; same && i < nd; i++) same = sh[i] == x->shape[i];
            CHECK(same, "%s: shape differs from the config-derived one", e->string);
            CHECK(!strcmp(dt, expected_dtype(d->torch_dtype)), "%s is %s but torch_dtype is %s", e->string, dt,
                  d->torch_dtype);
            check_values(x, data + b, en - b, dt);
        } else {
            CHECK(is_legacy_buffer(e->string), "unexpected tensor %s", e->string);
        }
        if (weight_map) {
            const char *wf = get_str(weight_map, e->string);
            CHECK(!strcmp(wf, file), "index maps %s to '%s' but it is in %s", e->string, wf, file);
        }
        out->total += en - b;
        out->count++;
        if (!keep) continue;
        if (out->n == out->cap) {
            out->cap = out->cap ? 2 * out->cap : 256;
            out->t = realloc(out->t, out->cap * sizeof *out->t);
            if (!out->t) exit(2);
        }
        tensor_data *t = &out->t[out->n++];
        snprintf(t->name, sizeof t->name, "%s", e->string);
        snprintf(t->dtype, sizeof t->dtype, "%s", dt);
        t->len = en - b;
        t->bytes = malloc(t->len ? t->len : 1);
        if (!t->bytes) exit(2);
        memcpy(t->bytes, data + b, t->len);
    }
    CHECK(count > 0, "%s holds no tensors", file);
    CHECK(covered == data_len, "%s: tensors cover %" PRIu64 " of %" PRIu64 " data bytes (gaps or overlaps)", file,
          covered, data_len);
    cJSON_Delete(h);
    munmap((void *)buf, size);
}

static const tensor_data *find_loaded(const loaded *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->t[i].name, name)) return &l->t[i];
    return NULL;
}

/* Reads every tensor of a checkpoint folder, checking the index if sharded. */
static void load_dir(const char *dir, loaded *out, expect_list *exp, const dims *d, bool keep) {
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        load_safetensors(dir, "model.safetensors", out, exp, d, NULL, keep);
        return;
    }
    fclose(f);
    cJSON *idx = read_json(dir, "model.safetensors.index.json");
    if (!idx) return;
    cJSON *wm = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(idx, "metadata"), "total_size");
    CHECK(cJSON_IsObject(wm) && cJSON_IsNumber(ts), "index lacks weight_map or metadata.total_size");
    /* distinct file names, in order of appearance */
    char files[256][64];
    int nf = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, wm) {
        bool known = false;
        for (int i = 0; i < nf && !known; i++) known = !strcmp(files[i], e->valuestring);
        if (!known && nf < 256) snprintf(files[nf++], sizeof files[0], "%s", e->valuestring);
    }
    CHECK(nf > 1, "an index with %d file(s); a single file needs no index", nf);
    for (int i = 0; i < nf; i++) {
        char want_name[64];
        snprintf(want_name, sizeof want_name, "model-%05d-of-%05d.safetensors", i + 1, nf);
        CHECK(!strcmp(files[i], want_name), "shard %d is named %s, expected %s", i, files[i], want_name);
        load_safetensors(dir, files[i], out, exp, d, wm, keep);
    }
    const uint64_t total = out->total;
    CHECK(cJSON_IsNumber(ts) && (uint64_t)ts->valuedouble == total, "total_size %.0f but the tensors hold %" PRIu64,
          cJSON_IsNumber(ts) ? ts->valuedouble : -1.0, total);
    CHECK((size_t)cJSON_GetArraySize(wm) == out->count, "weight_map has %d names, the shards %zu",
          cJSON_GetArraySize(wm), out->count);
    cJSON_Delete(idx);
}

/* Value statistics per kind: a generator that wrote zeros, constant or
 * wildly scaled values fails here. */
static void check_values(const expect *x, const uint8_t *bytes, uint64_t len, const char *dtype) {
    const int es = dtype_size(dtype);
    const uint64_t n = len / (uint64_t)es;
    if (!n) return;
    double sum = 0, sq = 0, maxabs = 0;
    for (uint64_t k = 0; k < n; k++) {
        const double v = to_float(bytes + k * (uint64_t)es, dtype);
        sum += v;
        sq += v * v;
        if (fabs(v) > maxabs) maxabs = fabs(v);
    }
    const double mean = sum / (double)n, sd = n > 1 ? sqrt(fmax(sq / (double)n - mean * mean, 0.0)) : 0.0;
    CHECK(isfinite(sum) && isfinite(sq), "%s has non-finite values", x->name);
    switch (x->k) {
    case K_LINEAR:
    case K_EMBED:
        if (n >= 256)
            CHECK(sd > 0.005 && sd < 0.5 && fabs(mean) < 0.25 * sd, "%s: mean %g std %g, want ~N(0, 0.02..0.1)",
                  x->name, mean, sd);
        break;
    case K_NORM:
        CHECK(mean > 0.8 && mean < 1.2 && maxabs < 2.0, "%s: mean %g, norm weights should be ~1", x->name, mean);
        break;
    case K_BIAS:
        CHECK(maxabs < 0.2 && maxabs > 0.0, "%s: max |b| %g, biases should be small and non-zero", x->name, maxabs);
        break;
    case K_GATE:
        CHECK(fabs(mean) > 0.1 && fabs(mean) < 2.0, "%s = %g, gates must be non-zero so the image path is active",
              x->name, mean);
        break;
    case K_LATENT:
        CHECK(sd > 0.7 && sd < 1.4, "%s: std %g, latents should be ~N(0, 1)", x->name, sd);
        break;
    }
}

/* ---- tokenizer ---- */

/* cJSON object lookups are linear; 32000 pieces x 30000 merges needs a sorted
 * index instead. */
typedef struct piece_id {
    const char *s;
    int id;
} piece_id;

static int cmp_piece(const void *a, const void *b) {
    return strcmp(((const piece_id *)a)->s, ((const piece_id *)b)->s);
}

static int lookup(const piece_id *sorted, int n, const char *s) {
    const piece_id key = {s, 0};
    const piece_id *hit = bsearch(&key, sorted, (size_t)n, sizeof key, cmp_piece);
    return hit ? hit->id : -1;
}

static void check_tokenizer(const char *dir, const dims *d) {
    cJSON *tj = read_json(dir, "tokenizer.json");
    if (!tj) return;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
    CHECK(!strcmp(get_str(model, "type"), "BPE"), "model.type is not BPE");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")), "byte_fallback is not true");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "fuse_unk")), "fuse_unk is not true");
    CHECK(!strcmp(get_str(model, "unk_token"), "<unk>"), "unk_token is not <unk>");
    CHECK(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(tj, "pre_tokenizer")), "pre_tokenizer is not null");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(tj, "normalizer");
    const cJSON *ns = cJSON_GetObjectItemCaseSensitive(norm, "normalizers");
    CHECK(!strcmp(get_str(norm, "type"), "Sequence") && cJSON_GetArraySize(ns) == 2 &&
              !strcmp(get_str(cJSON_GetArrayItem(ns, 0), "type"), "Prepend") &&
              !strcmp(get_str(cJSON_GetArrayItem(ns, 0), "prepend"), "\xe2\x96\x81") &&
              !strcmp(get_str(cJSON_GetArrayItem(ns, 1), "type"), "Replace") &&
              !strcmp(get_str(cJSON_GetArrayItem(ns, 1), "content"), "\xe2\x96\x81"),
          "normalizer is not Sequence[Prepend U+2581, Replace ' ' -> U+2581]");
    const cJSON *dec = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(tj, "decoder"), "decoders");
    const char *want_dec[] = {"Replace", "ByteFallback", "Fuse", "Strip"};
    CHECK(cJSON_GetArraySize(dec) == 4, "decoder is not a 4-step Sequence");
    for (int i = 0; i < 4 && cJSON_GetArraySize(dec) == 4; i++)
        CHECK(!strcmp(get_str(cJSON_GetArrayItem(dec, i), "type"), want_dec[i]), "decoder step %d is not %s", i,
              want_dec[i]);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const int n = cJSON_GetArraySize(vocab);
    CHECK(n == d->vocab, "tokenizer vocab has %d entries, config vocab_size %d", n, d->vocab);
    /* id -> piece, every id exactly once */
    const char **piece = calloc((size_t)(n > 0 ? n : 1), sizeof *piece);
    if (!piece) exit(2);
    piece_id *sorted = malloc((size_t)(n > 0 ? n : 1) * sizeof *sorted);
    if (!sorted) exit(2);
    int n_sorted = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab) {
        const int id = e->valueint;
        if (n_sorted < n) sorted[n_sorted++] = (piece_id){e->string, id};
        CHECK(cJSON_IsNumber(e) && id >= 0 && id < n && !piece[id], "vocab id %d of '%s' is out of range or repeated",
              id, e->string);
        if (id >= 0 && id < n && !piece[id]) piece[id] = e->string;
    }
    qsort(sorted, (size_t)n_sorted, sizeof *sorted, cmp_piece);
    CHECK(n > 259 && piece[0] && piece[1] && piece[2] && !strcmp(piece[0], "<unk>") && !strcmp(piece[1], "<s>") && !strcmp(piece[2], "</s>"),
          "ids 0..2 are not <unk> <s> </s>");
    for (int b = 0; b < 256 && n > 259; b++) {
        char want_b[8];
        snprintf(want_b, sizeof want_b, "<0x%02X>", b);
        CHECK(piece[3 + b] && !strcmp(piece[3 + b], want_b), "id %d is not %s", 3 + b, want_b);
    }
    /* merges "left right": halves and result in the vocab, result after both */
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    CHECK(cJSON_GetArraySize(merges) > 0, "no merges");
    int bad = 0, multi_char = 0;
    cJSON_ArrayForEach(e, merges) {
        const char *m = cJSON_IsString(e) ? e->valuestring : "";
        const char *sp = strchr(m, ' ');
        if (!sp || strchr(sp + 1, ' ')) {
            bad++;
            continue;
        }
        char left[256], both[512];
        snprintf(left, sizeof left, "%.*s", (int)(sp - m), m);
        snprintf(both, sizeof both, "%s%s", left, sp + 1);
        const int l = lookup(sorted, n_sorted, left), r = lookup(sorted, n_sorted, sp + 1),
                  o = lookup(sorted, n_sorted, both);
        if (l < 0 || r < 0 || o < 0 || l >= o || r >= o) bad++;
        if (o >= 0 && strlen(both) > 3) multi_char++;
    }
    CHECK(bad == 0, "%d merges have a half or result missing from the vocab or ordered after it", bad);
    CHECK(multi_char > 0, "no merge builds a multi-character piece");

    /* added tokens: <unk> <s> </s> then the image/utterance tokens after the base vocab */
    const char *names[] = {"<unk>", "<s>", "</s>", "<fake_token_around_image>", "<image>", "<end_of_utterance>"};
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(tj, "added_tokens");
    const int want_added = 3 + d->add;
    CHECK(cJSON_GetArraySize(added) == want_added, "added_tokens has %d entries, want %d", cJSON_GetArraySize(added),
          want_added);
    for (int i = 0; i < want_added && i < 6 && i < cJSON_GetArraySize(added); i++) {
        const cJSON *a = cJSON_GetArrayItem(added, i);
        const int want_id = i < 3 ? i : d->vocab + i - 3;
        CHECK(!strcmp(get_str(a, "content"), names[i]) && get_int(a, "id", -1) == want_id &&
                  cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(a, "special")),
              "added token %d is not special %s = %d", i, names[i], want_id);
    }
    if (d->idefics) {
        cJSON *at = read_json(dir, "added_tokens.json");
        for (int i = 3; i < want_added && at; i++)
            CHECK(get_int(at, names[i], -1) == d->vocab + i - 3, "added_tokens.json: %s is not %d", names[i],
                  d->vocab + i - 3);
        CHECK(at && cJSON_GetArraySize(at) == d->add, "added_tokens.json does not list %d tokens", d->add);
        cJSON_Delete(at);
        cJSON *pp = read_json(dir, "preprocessor_config.json");
        CHECK(pp && get_int(pp, "image_size", 0) == d->vimg, "preprocessor image_size differs from vision image_size");
        CHECK(pp && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(pp, "image_mean")) == 3 &&
                  cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(pp, "image_std")) == 3,
              "preprocessor image_mean/std are not 3 values");
        cJSON_Delete(pp);
    }
    cJSON *tc = read_json(dir, "tokenizer_config.json");
    CHECK(tc && !strcmp(get_str(tc, "bos_token"), "<s>") && !strcmp(get_str(tc, "eos_token"), "</s>") &&
              !strcmp(get_str(tc, "unk_token"), "<unk>"),
          "tokenizer_config.json special tokens differ");
    cJSON_Delete(tc);
    cJSON *sm = read_json(dir, "special_tokens_map.json");
    CHECK(sm && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(sm, "additional_special_tokens")) == d->add,
          "special_tokens_map.json does not list %d additional tokens", d->add);
    cJSON_Delete(sm);
    free(piece);
    free(sorted);
    cJSON_Delete(tj);
}

/* The --dry-run table: "name DTYPE [d0, d1, ...]" per line, then totals. */
static void check_table(const char *path, expect_list *exp) {
    FILE *f = fopen(path, "r");
    CHECK(f, "cannot read %s", path);
    if (!f) return;
    char line[512];
    size_t rows = 0;
    while (fgets(line, sizeof line, f)) {
        char name[256], dt[16], rest[256];
        if (sscanf(line, "%255s %15s [%255[^]]]", name, dt, rest) != 3) continue;
        rows++;
        expect *x = find_expect(exp, name);
        if (!x) {
            CHECK(is_legacy_buffer(name), "table lists unexpected tensor %s", name);
            continue;
        }
        x->seen = true;
        int64_t sh[4] = {0};
        int nd = 0;
        for (char *p = rest; *p && nd < 4;) {
            sh[nd++] = strtoll(p, &p, 10);
            while (*p == ',' || *p == ' ') p++;
        }
        bool same = nd == x->ndim;
        for (int i = 0; same && i < nd; i++) same = sh[i] == x->shape[i];
        CHECK(same, "table shape of %s differs from the config-derived one", name);
    }
    fclose(f);
    CHECK(rows > 0, "%s has no tensor rows", path);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [--no-weights] [--table FILE] [--same DIR2] [--differ DIR2]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *table = NULL, *same = NULL, *differ = NULL;
    bool weights = true;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--no-weights")) weights = false;
        else if (!strcmp(argv[i], "--table") && i + 1 < argc) table = argv[++i];
        else if (!strcmp(argv[i], "--same") && i + 1 < argc) same = argv[++i];
        else if (!strcmp(argv[i], "--differ") && i + 1 < argc) differ = argv[++i];
        else {
            fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    cJSON *cfg = read_json(dir, "config.json");
    dims d;
    if (!cfg || !read_dims(cfg, &d)) return 1;
    expect_list exp = {0};
    expected_tensors(&d, &exp);
    check_tokenizer(dir, &d);
    loaded mine = {0};
    if (table) check_table(table, &exp);
    const char *other = same ? same : differ;
    if (weights) load_dir(dir, &mine, &exp, &d, other != NULL);
    if (weights || table)
        for (size_t i = 0; i < exp.n; i++) CHECK(exp.e[i].seen, "missing tensor %s", exp.e[i].name);
    if (other) {
        /* reload the other folder against a fresh expectation list */
        expect_list exp2 = {0};
        expected_tensors(&d, &exp2);
        loaded theirs = {0};
        load_dir(other, &theirs, &exp2, &d, true);
        CHECK(theirs.n == mine.n, "%s has %zu tensors, %s %zu", other, theirs.n, dir, mine.n);
        size_t equal = 0, big_equal = 0;
        for (size_t i = 0; i < mine.n; i++) {
            const tensor_data *t = find_loaded(&theirs, mine.t[i].name);
            CHECK(t, "%s lacks %s", other, mine.t[i].name);
            if (!t) continue;
            const bool eq = t->len == mine.t[i].len && !memcmp(t->bytes, mine.t[i].bytes, t->len);
            equal += eq;
            if (eq && mine.t[i].len / (uint64_t)dtype_size(mine.t[i].dtype) >= 64) big_equal++;
            if (same) CHECK(eq, "%s differs between %s and %s", mine.t[i].name, dir, other);
        }
        if (differ) CHECK(big_equal == 0, "%zu tensors of 64+ elements are identical across seeds", big_equal);
        for (size_t i = 0; i < theirs.n; i++) free(theirs.t[i].bytes);
        free(theirs.t);
        free(exp2.e);
        (void)equal;
    }
    for (size_t i = 0; i < mine.n; i++) free(mine.t[i].bytes);
    free(mine.t);
    free(exp.e);
    cJSON_Delete(cfg);
    if (failures) {
        fprintf(stderr, "%d check(s) failed for %s\n", failures, dir);
        return 1;
    }
    printf("ok %s: %zu tensors checked%s%s\n", dir, mine.count, same ? ", same bytes as " : "",
           same ? same : "");
    return 0;
}
