/*
 * synth.h - shared declarations of make-synthetic-checkpoint: the model
 * dimensions of each flavour, the tensor plan (name, shape, dtype, how its
 * values are drawn) and the synthetic LLaMA-style tokenizer.
 */
#ifndef IDF_SYNTH_H
#define IDF_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* UTF-8 of U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's word-start marker. */
#define SY_SPACE "\xe2\x96\x81"

typedef enum sy_dtype { SY_BF16, SY_F16, SY_F32, SY_I64 } sy_dtype;

/* How a tensor's values are drawn. Every value is a pure function of
 * (tensor seed, element index), so the bytes do not depend on the thread
 * count, the chunking or the sharding. */
typedef enum sy_init {
    SY_NORMAL,   /* mean + std * N(0,1) */
    SY_HEAVY,    /* like SY_NORMAL plus rare outliers of 6..22 std (linear weights) */
    SY_ARANGE,   /* 0, 1, 2, ... (legacy position_ids buffer) */
    SY_INVFREQ,  /* RoPE inverse frequencies 10000^(-2i/d), d = 2 * numel (legacy buffer) */
} sy_init;

typedef struct sy_tensor {
    char name[128];
    int ndim;
    int64_t shape[4];
    sy_dtype dtype;
    sy_init init;
    float mean, std;
    uint64_t numel, nbytes;
    uint64_t seed;   /* derived from the run seed and the name */
    int shard;       /* 0-based file index */
    uint64_t offset; /* byte offset inside its file's data section */
} sy_tensor;

typedef struct sy_plan {
    sy_tensor *t;
    size_t n, cap;
    bool failed; /* out of memory while adding */
} sy_plan;

/* Dimensions of one flavour. The vision and perceiver fields are unused for
 * the text-only llama7b flavour. */
typedef struct sy_config {
    const char *flavour;
    bool idefics;        /* false: LlamaForCausalLM */
    int vocab;           /* base vocabulary (tokenizer model size) */
    int add_vocab;       /* additional_vocab_size (rows of additional_embedding) */
    int hidden, inter, layers, heads, cross_interval;
    int max_pos;
    double rms_eps;
    float lin_std;       /* std of linear weights and token embeddings */
    int v_embed, v_image, v_patch, v_layers, v_heads, v_inter, v_channels;
    int p_depth, p_latents, p_heads, p_head_dim;
} sy_config;

/* ---- synth_plan.c ---- */

/* Fills *cfg for "tiny", "9b", "llama7b" or "llama-tiny"; false for an unknown name. */
bool sy_config_get(const char *flavour, sy_config *cfg);
/* Appends every tensor of the flavour in module order. legacy adds the old
 * buffers some Hub shards carry (vision position_ids, rotary inv_freq). */
bool sy_plan_build(const sy_config *cfg, sy_dtype dtype, uint64_t seed, bool legacy, sy_plan *plan);
void sy_plan_free(sy_plan *plan);
const char *sy_dtype_name(sy_dtype d); /* safetensors spelling: "BF16", ... */
int sy_dtype_size(sy_dtype d);
/* config.json / preprocessor_config.json contents. */
bool sy_write_config(const sy_config *cfg, sy_dtype dtype, FILE *f);
bool sy_write_preprocessor_config(const sy_config *cfg, FILE *f);

/* ---- synth_tokenizer.c ---- */

typedef struct sy_tokenizer sy_tokenizer;

/* A deterministic BPE vocabulary of exactly base_vocab entries: <unk> <s> </s>,
 * the 256 byte tokens, single characters, then merged pieces. NULL when out of
 * memory or base_vocab is too small for the fixed part. */
sy_tokenizer *sy_tokenizer_build(int base_vocab);
void sy_tokenizer_free(sy_tokenizer *tok);
size_t sy_tokenizer_n_merges(const sy_tokenizer *tok);
/* tokenizer.json, tokenizer_config.json, special_tokens_map.json and
 * added_tokens.json. add_vocab added tokens follow the base vocabulary:
 * <fake_token_around_image>, <image>, <end_of_utterance>. */
bool sy_write_tokenizer_json(const sy_tokenizer *tok, int add_vocab, FILE *f);
bool sy_write_tokenizer_config(int base_vocab, int add_vocab, int max_len, FILE *f);
bool sy_write_special_tokens_map(int add_vocab, FILE *f);
bool sy_write_added_tokens(int base_vocab, int add_vocab, FILE *f);

/* JSON string literal with escaping. */
void sy_json_str(FILE *f, const char *s);

#endif /* IDF_SYNTH_H */
