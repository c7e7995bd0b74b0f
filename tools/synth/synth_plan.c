/*
 * synth_plan.c - the dimensions of each synthetic flavour, the full list of
 * tensors with their Hugging Face names, shapes and value distributions
 * (docs: /work/shared/reference/idefics-architecture.md §1-§2), and the
 * config.json / preprocessor_config.json writers.
 */
#include "synth.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ---- flavours ---- */

/* 9b follows spec §1 (instruct: additional_vocab_size 3). tiny keeps every
 * linear in_features a multiple of 32 (the Q4/Q8 group) except the patch conv,
 * uses an interval of 3 (not the 9b's 4) so nothing can hard-code it, and
 * linear weights of std 0.1 instead of 0.02 so that, at width 64, the image
 * path moves the logits well above test tolerances (max |delta| ~2 when the
 * image is blanked). Counts are odd where they can be: 2 cross blocks, 17
 * vision positions, 8 latents of 2 heads. The interval divides the layer
 * count because transformers indexes gated_cross_attn_layers[layer / interval]
 * and would run past its num_layers / interval blocks otherwise. */
static const sy_config flavours[] = {
    {.flavour = "tiny", .idefics = true, .vocab = 512, .add_vocab = 3,
     .hidden = 64, .inter = 160, .layers = 6, .heads = 4, .cross_interval = 3,
     .max_pos = 256, .rms_eps = 1e-6, .lin_std = 0.1f,
     .v_embed = 64, .v_image = 32, .v_patch = 8, .v_layers = 2, .v_heads = 4, .v_inter = 128, .v_channels = 3,
     .p_depth = 2, .p_latents = 8, .p_heads = 2, .p_head_dim = 16},
    {.flavour = "9b", .idefics = true, .vocab = 32000, .add_vocab = 3,
     .hidden = 4096, .inter = 11008, .layers = 32, .heads = 32, .cross_interval = 4,
     .max_pos = 2048, .rms_eps = 1e-6, .lin_std = 0.02f,
     .v_embed = 1280, .v_image = 224, .v_patch = 14, .v_layers = 32, .v_heads = 16, .v_inter = 5120, .v_channels = 3,
     .p_depth = 6, .p_latents = 64, .p_heads = 16, .p_head_dim = 96},
    {.flavour = "llama7b", .idefics = false, .vocab = 32000, .add_vocab = 0,
     .hidden = 4096, .inter = 11008, .layers = 32, .heads = 32, .cross_interval = 0,
     .max_pos = 2048, .rms_eps = 1e-6, .lin_std = 0.02f},
    /* llama7b's shape at tiny's width: the text-only path's end-to-end test */
    {.flavour = "llama-tiny", .idefics = false, .vocab = 512, .add_vocab = 0,
     .hidden = 64, .inter = 160, .layers = 2, .heads = 4, .cross_interval = 0,
     .max_pos = 256, .rms_eps = 1e-6, .lin_std = 0.1f},
};

bool sy_config_get(const char *flavour, sy_config *cfg) {
    for (size_t i = 0; i < sizeof flavours / sizeof flavours[0]; i++)
        if (!strcmp(flavour, flavours[i].flavour)) {
            *cfg = flavours[i];
            return true;
        }
    return false;
}

const char *sy_dtype_name(sy_dtype d) {
    switch (d) {
    case SY_BF16: return "BF16";
    case SY_F16: return "F16";
    case SY_F32: return "F32";
    case SY_I64: return "I64";
    }
    return "?";
}

int sy_dtype_size(sy_dtype d) { return d == SY_F32 ? 4 : d == SY_I64 ? 8 : 2; }

/* ---- tensor list ---- */

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct builder {
    sy_plan *plan;
    float lin_std;
    sy_dtype dtype;
    uint64_t seed;
} builder;

/* Adds one tensor; shape is given as up to 4 dims, 0 terminating. */
static void add(builder *b, sy_init init, float mean, float std, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                const char *fmt, ...) {
    sy_plan *p = b->plan;
    if (p->failed) return;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        sy_tensor *t = realloc(p->t, cap * sizeof *t);
        if (!t) {
            p->failed = true;
            return;
        }
        p->t = t;
        p->cap = cap;
    }
    sy_tensor *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    const int64_t dims[4] = {d0, d1, d2, d3};
    t->numel = 1;
    for (int i = 0; i < 4 && dims[i] > 0; i++) {
        t->shape[t->ndim++] = dims[i];
        t->numel *= (uint64_t)dims[i];
    }
    t->init = init;
    t->mean = mean;
    t->std = std;
    /* buffers keep the dtype the old checkpoints stored them in */
    t->dtype = init == SY_ARANGE ? SY_I64 : init == SY_INVFREQ ? SY_F32 : b->dtype;
    t->nbytes = t->numel * (uint64_t)sy_dtype_size(t->dtype);
    t->seed = mix64(b->seed ^ fnv1a64(t->name));
    p->n++;
}

/* Distributions: linear weights N(0, 0.02) with outliers, norm weights ~1,
 * biases small, embeddings N(0, 0.02), perceiver latents N(0, 1), gates
 * around 0.5 so tanh(alpha) ~ 0.46 and the image path is active. */
#define LIN(b, o, i, ...) add(b, SY_HEAVY, 0.0f, (b)->lin_std, o, i, 0, 0, __VA_ARGS__)
#define NORMW(b, n, ...) add(b, SY_NORMAL, 1.0f, 0.05f, n, 0, 0, 0, __VA_ARGS__)
#define BIAS(b, n, ...) add(b, SY_NORMAL, 0.0f, 0.01f, n, 0, 0, 0, __VA_ARGS__)

static void add_llama_layer(builder *b, const sy_config *c, const char *prefix, int i) {
    const int h = c->hidden, f = c->inter;
    LIN(b, h, h, "%s.%d.self_attn.q_proj.weight", prefix, i);
    LIN(b, h, h, "%s.%d.self_attn.k_proj.weight", prefix, i);
    LIN(b, h, h, "%s.%d.self_attn.v_proj.weight", prefix, i);
    LIN(b, h, h, "%s.%d.self_attn.o_proj.weight", prefix, i);
    LIN(b, f, h, "%s.%d.mlp.gate_proj.weight", prefix, i);
    LIN(b, f, h, "%s.%d.mlp.up_proj.weight", prefix, i);
    LIN(b, h, f, "%s.%d.mlp.down_proj.weight", prefix, i);
    NORMW(b, h, "%s.%d.input_layernorm.weight", prefix, i);
    NORMW(b, h, "%s.%d.post_attention_layernorm.weight", prefix, i);
}

static void add_vision(builder *b, const sy_config *c, bool legacy) {
    const int e = c->v_embed, grid = c->v_image / c->v_patch, npos = grid * grid + 1;
    const char *pre = "model.vision_model";
    add(b, SY_NORMAL, 0.0f, 0.02f, e, 0, 0, 0, "%s.embeddings.class_embedding", pre);
    add(b, SY_HEAVY, 0.0f, b->lin_std, e, c->v_channels, c->v_patch, c->v_patch, "%s.embeddings.patch_embedding.weight",
        pre);
    add(b, SY_NORMAL, 0.0f, 0.02f, npos, e, 0, 0, "%s.embeddings.position_embedding.weight", pre);
    if (legacy) add(b, SY_ARANGE, 0.0f, 0.0f, 1, npos, 0, 0, "%s.embeddings.position_ids", pre);
    NORMW(b, e, "%s.pre_layrnorm.weight", pre);
    BIAS(b, e, "%s.pre_layrnorm.bias", pre);
    static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int l = 0; l < c->v_layers; l++) {
        for (int k = 0; k < 4; k++) {
            LIN(b, e, e, "%s.encoder.layers.%d.self_attn.%s.weight", pre, l, proj[k]);
            BIAS(b, e, "%s.encoder.layers.%d.self_attn.%s.bias", pre, l, proj[k]);
        }
        NORMW(b, e, "%s.encoder.layers.%d.layer_norm1.weight", pre, l);
        BIAS(b, e, "%s.encoder.layers.%d.layer_norm1.bias", pre, l);
        LIN(b, c->v_inter, e, "%s.encoder.layers.%d.mlp.fc1.weight", pre, l);
        BIAS(b, c->v_inter, "%s.encoder.layers.%d.mlp.fc1.bias", pre, l);
        LIN(b, e, c->v_inter, "%s.encoder.layers.%d.mlp.fc2.weight", pre, l);
        BIAS(b, e, "%s.encoder.layers.%d.mlp.fc2.bias", pre, l);
        NORMW(b, e, "%s.encoder.layers.%d.layer_norm2.weight", pre, l);
        BIAS(b, e, "%s.encoder.layers.%d.layer_norm2.bias", pre, l);
    }
    /* present in the checkpoint though IDEFICS never applies it (spec §3.1) */
    NORMW(b, e, "%s.post_layernorm.weight", pre);
    BIAS(b, e, "%s.post_layernorm.bias", pre);
}

static void add_perceiver(builder *b, const sy_config *c) {
    const int e = c->v_embed, inner = c->p_heads * c->p_head_dim, dh = c->p_head_dim, mlp = 4 * e;
    const char *pre = "model.perceiver_resampler";
    add(b, SY_NORMAL, 0.0f, 1.0f, c->p_latents, e, 0, 0, "%s.latents", pre);
    for (int k = 0; k < c->p_depth; k++) {
        NORMW(b, e, "%s.blocks.%d.0.context_layer_norm.weight", pre, k);
        BIAS(b, e, "%s.blocks.%d.0.context_layer_norm.bias", pre, k);
        NORMW(b, e, "%s.blocks.%d.0.latents_layer_norm.weight", pre, k);
        BIAS(b, e, "%s.blocks.%d.0.latents_layer_norm.bias", pre, k);
        NORMW(b, dh, "%s.blocks.%d.0.q_layer_norm.weight", pre, k);
        BIAS(b, dh, "%s.blocks.%d.0.q_layer_norm.bias", pre, k);
        NORMW(b, dh, "%s.blocks.%d.0.k_layer_norm.weight", pre, k);
        BIAS(b, dh, "%s.blocks.%d.0.k_layer_norm.bias", pre, k);
        LIN(b, inner, e, "%s.blocks.%d.0.q_proj.weight", pre, k);
        LIN(b, inner, e, "%s.blocks.%d.0.k_proj.weight", pre, k);
        LIN(b, inner, e, "%s.blocks.%d.0.v_proj.weight", pre, k);
        LIN(b, e, inner, "%s.blocks.%d.0.output_proj.weight", pre, k);
        NORMW(b, e, "%s.blocks.%d.1.ln.weight", pre, k);
        BIAS(b, e, "%s.blocks.%d.1.ln.bias", pre, k);
        LIN(b, mlp, e, "%s.blocks.%d.1.fc.weight", pre, k);
        LIN(b, e, mlp, "%s.blocks.%d.1.c_proj.weight", pre, k);
    }
    NORMW(b, e, "%s.layer_norm.weight", pre);
    BIAS(b, e, "%s.layer_norm.bias", pre);
}

static void add_cross_block(builder *b, const sy_config *c, int j) {
    const int h = c->hidden, f = c->inter, e = c->v_embed, dh = c->hidden / c->heads;
    const char *pre = "model.gated_cross_attn_layers";
    add(b, SY_NORMAL, 0.5f, 0.1f, 1, 0, 0, 0, "%s.%d.alpha_cross_attn", pre, j);
    add(b, SY_NORMAL, 0.5f, 0.1f, 1, 0, 0, 0, "%s.%d.alpha_dense", pre, j);
    LIN(b, h, h, "%s.%d.cross_attn.q_proj.weight", pre, j);
    LIN(b, h, e, "%s.%d.cross_attn.k_proj.weight", pre, j);
    LIN(b, h, e, "%s.%d.cross_attn.v_proj.weight", pre, j);
    LIN(b, h, h, "%s.%d.cross_attn.o_proj.weight", pre, j);
    NORMW(b, dh, "%s.%d.cross_attn.q_layer_norm.weight", pre, j);
    NORMW(b, dh, "%s.%d.cross_attn.k_layer_norm.weight", pre, j);
    LIN(b, f, h, "%s.%d.mlp.gate_proj.weight", pre, j);
    LIN(b, f, h, "%s.%d.mlp.up_proj.weight", pre, j);
    LIN(b, h, f, "%s.%d.mlp.down_proj.weight", pre, j);
    NORMW(b, h, "%s.%d.input_layernorm.weight", pre, j);
    NORMW(b, h, "%s.%d.post_attention_layernorm.weight", pre, j);
}

bool sy_plan_build(const sy_config *c, sy_dtype dtype, uint64_t seed, bool legacy, sy_plan *plan) {
    builder b = {.plan = plan, .lin_std = c->lin_std, .dtype = dtype, .seed = seed};
    const int h = c->hidden;
    /* state-dict order of IdeficsForVisionText2Text / LlamaForCausalLM */
    add(&b, SY_NORMAL, 0.0f, c->lin_std, c->vocab, h, 0, 0, "model.embed_tokens.weight");
    if (c->idefics) {
        add(&b, SY_NORMAL, 0.0f, c->lin_std, c->add_vocab, h, 0, 0, "model.embed_tokens.additional_embedding.weight");
        for (int i = 0; i < c->layers; i++) {
            add_llama_layer(&b, c, "model.layers", i);
            if (legacy) add(&b, SY_INVFREQ, 0, 0, h / c->heads / 2, 0, 0, 0, "model.layers.%d.self_attn.rotary_emb.inv_freq", i);
        }
        for (int j = 0; j < c->layers / c->cross_interval; j++) add_cross_block(&b, c, j);
        NORMW(&b, h, "model.norm.weight");
        add_vision(&b, c, legacy);
        add_perceiver(&b, c);
        LIN(&b, c->vocab, h, "lm_head.weight");
        LIN(&b, c->add_vocab, h, "lm_head.additional_fc.weight");
    } else {
        for (int i = 0; i < c->layers; i++) {
            add_llama_layer(&b, c, "model.layers", i);
            if (legacy) add(&b, SY_INVFREQ, 0, 0, h / c->heads / 2, 0, 0, 0, "model.layers.%d.self_attn.rotary_emb.inv_freq", i);
        }
        NORMW(&b, h, "model.norm.weight");
        LIN(&b, c->vocab, h, "lm_head.weight");
    }
    return !plan->failed;
}

void sy_plan_free(sy_plan *plan) {
    free(plan->t);
    memset(plan, 0, sizeof *plan);
}

/* ---- config files ---- */

static const char *torch_dtype(sy_dtype d) {
    return d == SY_F32 ? "float32" : d == SY_F16 ? "float16" : "bfloat16";
}

bool sy_write_config(const sy_config *c, sy_dtype dtype, FILE *f) {
    if (!c->idefics) {
        fprintf(f,
                "{\n"
                "  \"architectures\": [\"LlamaForCausalLM\"],\n"
                "  \"attention_bias\": false,\n"
                "  \"bos_token_id\": 1,\n"
                "  \"eos_token_id\": 2,\n"
                "  \"hidden_act\": \"silu\",\n"
                "  \"hidden_size\": %d,\n"
                "  \"initializer_range\": 0.02,\n"
                "  \"intermediate_size\": %d,\n"
                "  \"max_position_embeddings\": %d,\n"
                "  \"model_type\": \"llama\",\n"
                "  \"num_attention_heads\": %d,\n"
                "  \"num_hidden_layers\": %d,\n"
                "  \"num_key_value_heads\": %d,\n"
                "  \"pad_token_id\": 0,\n"
                "  \"rms_norm_eps\": %g,\n"
                "  \"rope_theta\": 10000.0,\n"
                "  \"tie_word_embeddings\": false,\n"
                "  \"torch_dtype\": \"%s\",\n"
                "  \"use_cache\": true,\n"
                "  \"vocab_size\": %d\n"
                "}\n",
                c->hidden, c->inter, c->max_pos, c->heads, c->layers, c->heads, c->rms_eps, torch_dtype(dtype),
                c->vocab);
        return !ferror(f);
    }
    /* Keys as in the Hub idefics-9b config.json (spec §1); vision
     * layer_norm_eps is absent there too, so readers must apply the 1e-5
     * default exactly as they must for the real files. */
    fprintf(f,
            "{\n"
            "  \"additional_vocab_size\": %d,\n"
            "  \"alpha_initializer\": \"zeros\",\n"
            "  \"alpha_type\": \"float\",\n"
            "  \"alphas_initializer_range\": 0.0,\n"
            "  \"architectures\": [\"IdeficsForVisionText2Text\"],\n"
            "  \"bos_token_id\": 1,\n"
            "  \"cross_layer_activation_function\": \"swiglu\",\n"
            "  \"cross_layer_interval\": %d,\n"
            "  \"dropout\": 0.0,\n"
            "  \"eos_token_id\": 2,\n"
            "  \"ffn_dim\": %d,\n"
            "  \"freeze_lm_head\": false,\n"
            "  \"freeze_text_layers\": false,\n"
            "  \"freeze_text_module_exceptions\": [],\n"
            "  \"freeze_vision_layers\": false,\n"
            "  \"freeze_vision_module_exceptions\": [],\n"
            "  \"hidden_act\": \"silu\",\n"
            "  \"hidden_size\": %d,\n"
            "  \"initializer_range\": 0.02,\n"
            "  \"intermediate_size\": %d,\n"
            "  \"max_position_embeddings\": %d,\n"
            "  \"max_sequence_length\": %d,\n"
            "  \"model_type\": \"idefics\",\n"
            "  \"num_attention_heads\": %d,\n"
            "  \"num_hidden_layers\": %d,\n"
            "  \"pad_token_id\": 0,\n"
            "  \"perceiver_config\": {\n"
            "    \"model_type\": \"idefics\",\n"
            "    \"qk_layer_norms_perceiver\": true,\n"
            "    \"resampler_depth\": %d,\n"
            "    \"resampler_head_dim\": %d,\n"
            "    \"resampler_n_heads\": %d,\n"
            "    \"resampler_n_latents\": %d,\n"
            "    \"use_resampler\": true\n"
            "  },\n"
            "  \"qk_layer_norms\": true,\n"
            "  \"rms_norm_eps\": %g,\n"
            "  \"tie_word_embeddings\": false,\n"
            "  \"torch_dtype\": \"%s\",\n"
            /* every saved transformers config has it; this is the version our fixtures were made with */
            "  \"transformers_version\": \"4.46.3\",\n"
            "  \"use_cache\": true,\n"
            "  \"use_resampler\": true,\n"
            "  \"vision_config\": {\n"
            "    \"embed_dim\": %d,\n"
            "    \"hidden_act\": \"gelu\",\n"
            "    \"image_size\": %d,\n"
            "    \"intermediate_size\": %d,\n"
            "    \"model_type\": \"idefics\",\n"
            "    \"num_attention_heads\": %d,\n"
            "    \"num_channels\": %d,\n"
            "    \"num_hidden_layers\": %d,\n"
            "    \"patch_size\": %d,\n"
            "    \"vision_model_name\": \"laion/CLIP-ViT-H-14-laion2B-s32B-b79K\"\n"
            "  },\n"
            "  \"vocab_size\": %d,\n"
            "  \"word_embed_proj_dim\": %d\n"
            "}\n",
            c->add_vocab, c->cross_interval, c->inter, c->hidden, c->inter, c->max_pos, c->max_pos, c->heads,
            c->layers, c->p_depth, c->p_head_dim, c->p_heads, c->p_latents, c->rms_eps, torch_dtype(dtype),
            c->v_embed, c->v_image, c->v_inter, c->v_heads, c->v_channels, c->v_layers, c->v_patch, c->vocab,
            c->hidden);
    return !ferror(f);
}

bool sy_write_preprocessor_config(const sy_config *c, FILE *f) {
    /* the OpenAI CLIP constants (spec §4.5) */
    fprintf(f,
            "{\n"
            "  \"image_mean\": [0.48145466, 0.4578275, 0.40821073],\n"
            "  \"image_num_channels\": %d,\n"
            "  \"image_processor_type\": \"IdeficsImageProcessor\",\n"
            "  \"image_size\": %d,\n"
            "  \"image_std\": [0.26862954, 0.26130258, 0.27577711],\n"
            "  \"processor_class\": \"IdeficsProcessor\"\n"
            "}\n",
            c->v_channels, c->v_image);
    return !ferror(f);
}
