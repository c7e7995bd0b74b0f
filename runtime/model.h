/*
 * model.h - struct idefics_model: the opened file, its config, tokenizer and
 * weights. Immutable after idefics_model_load(), so any number of sessions and
 * threads may read it at once.
 */
#ifndef IDF_MODEL_H
#define IDF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "idfx_reader.h"
#include "internal.h"
#include "tokenizer.h"

typedef struct idf_config {
    /* text */
    uint32_t vocab_size;          /* 32000 */
    uint32_t additional_vocab;    /* 2 (base) or 3 (instruct) */
    uint32_t n_vocab;             /* vocab_size + additional_vocab */
    uint32_t hidden;              /* 4096 */
    uint32_t intermediate;        /* 11008 */
    uint32_t n_layers;            /* 32 */
    uint32_t n_heads;             /* 32 */
    uint32_t head_dim;            /* hidden / n_heads */
    float rms_eps;                /* 1e-6 */
    float rope_theta;             /* 10000 */
    uint32_t max_pos;             /* 2048 */
    uint32_t cross_interval;      /* 4 */
    uint32_t n_cross;             /* ceil(n_layers / cross_interval) */
    bool qk_layer_norms;
    bool use_resampler;
    /* vision */
    uint32_t v_dim;               /* 1280 */
    uint32_t v_image_size;        /* 224 */
    uint32_t v_patch;             /* 14 */
    uint32_t v_n_patches;         /* (image_size / patch)^2 = 256 */
    uint32_t v_layers, v_heads, v_intermediate;
    float v_ln_eps;
    bool v_gelu_exact;            /* hidden_act "gelu" (erf); false = quick_gelu */
    uint32_t v_channels;          /* 3 */
    float image_mean[3], image_std[3];
    /* perceiver */
    uint32_t p_depth, p_latents, p_heads, p_head_dim;
    bool p_qk_norms;
    /* special tokens (-1 when absent) */
    int32_t tok_bos, tok_eos, tok_fake_image, tok_image, tok_end_of_utterance;
    bool is_instruct;
    int32_t stop_ids[8];
    int n_stop_ids;
} idf_config;

struct idefics_model {
    idf_alloc alloc;
    idf_log log;
    idf_err err;                  /* last error of calls on the model (e.g. idefics_tokenize) */
    idf_mapping map;              /* the mapped file */
    idfx_file file;               /* parsed container; tensors materialised */
    idf_config cfg;
    idf_tokenizer *tok;
    idefics_backend backend;
    const char *backend_name;
    struct idf_weights *w;        /* tensor bindings by role (model.c) */
};

#endif /* IDF_MODEL_H */
