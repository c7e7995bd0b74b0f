/*
 * model.h - struct idefics_model: the opened file, its config, tokenizer and
 * weights. Immutable after idefics_model_load(), so any number of sessions and
 * threads may read it at once.
 */
#ifndef IDF_MODEL_H
#define IDF_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
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
    uint32_t cross_interval;      /* 4; 0 when text_only */
    uint32_t n_cross;             /* ceil(n_layers / cross_interval); 0 when text_only */
    bool text_only;               /* general.architecture "llama": decoder only, no vision/perceiver/cross */
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

/* ---- weights, bound by role (model.c). Matrices stay as stored (any type);
 * small vectors (norms, biases, embeddings added elementwise, gates) are fp32
 * copies owned by the model. Shapes in comments use the config names. */

typedef struct idf_vision_layer {
    idf_weight q, k, v, o;                 /* [v_dim, v_dim] */
    idf_weight fc1;                        /* [v_intermediate, v_dim] */
    idf_weight fc2;                        /* [v_dim, v_intermediate] */
    const float *q_b, *k_b, *v_b, *o_b;    /* [v_dim] */
    const float *fc1_b;                    /* [v_intermediate] */
    const float *fc2_b;                    /* [v_dim] */
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b; /* [v_dim] */
} idf_vision_layer;

typedef struct idf_perceiver_block {
    const float *ctx_ln_w, *ctx_ln_b, *lat_ln_w, *lat_ln_b; /* [v_dim] */
    const float *q_ln_w, *q_ln_b, *k_ln_w, *k_ln_b;         /* [p_head_dim]; NULL unless p_qk_norms */
    idf_weight q, k, v;                    /* [p_heads * p_head_dim, v_dim] */
    idf_weight o;                          /* [v_dim, p_heads * p_head_dim] */
    const float *mlp_ln_w, *mlp_ln_b;      /* [v_dim] */
    idf_weight fc;                         /* [4 * v_dim, v_dim] */
    idf_weight c_proj;                     /* [v_dim, 4 * v_dim] */
} idf_perceiver_block;

typedef struct idf_cross_block {
    const float *gate_attn, *gate_dense;   /* [hidden]: tanh(alpha), broadcast when alpha is a scalar */
    const float *ln_in, *ln_post;          /* [hidden] */
    idf_weight q, o;                       /* [hidden, hidden] */
    idf_weight k, v;                       /* [hidden, v_dim] */
    const float *q_norm, *k_norm;          /* [head_dim]; NULL unless qk_layer_norms */
    idf_weight gate, up;                   /* [intermediate, hidden] */
    idf_weight down;                       /* [hidden, intermediate] */
} idf_cross_block;

typedef struct idf_decoder_layer {
    const float *ln_in, *ln_post;          /* [hidden] */
    idf_weight q, k, v, o;                 /* [hidden, hidden] */
    idf_weight gate, up;                   /* [intermediate, hidden] */
    idf_weight down;                       /* [hidden, intermediate] */
} idf_decoder_layer;

typedef struct idf_weights {
    /* vision tower */
    idf_weight patch;                      /* [v_dim, channels * patch * patch] (conv kernel, flattened) */
    const float *class_emb;                /* [v_dim] */
    const float *pos_emb;                  /* [v_n_patches + 1, v_dim] */
    const float *pre_ln_w, *pre_ln_b;      /* [v_dim] */
    idf_vision_layer *vl;                  /* [v_layers] */
    /* perceiver (use_resampler) */
    const float *latents;                  /* [p_latents, v_dim] */
    idf_perceiver_block *pb;               /* [p_depth] */
    const float *p_ln_w, *p_ln_b;          /* [v_dim] */
    /* text */
    idf_weight embed;                      /* [vocab_size, hidden] */
    idf_weight embed_add;                  /* [additional_vocab, hidden] (rows 0 when absent) */
    idf_cross_block *xb;                   /* [n_cross] */
    idf_decoder_layer *dl;                 /* [n_layers] */
    const float *norm;                     /* [hidden] */
    idf_weight lm_head;                    /* [vocab_size, hidden] */
    idf_weight lm_add;                     /* [additional_vocab, hidden] */
    void *owned;                           /* chain of fp32 copies (model.c) */
} idf_weights;

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
    struct idf_ocl_device *ocl;   /* OPENCL: the device, program and weight buffers (backend_opencl.h) */
    idf_weights *w;               /* tensor bindings by role (model.c) */
    uint32_t n_img_tokens;        /* keys per image for cross-attention: p_latents, or v_n_patches + 1 without resampler */
    double load_ms;               /* wall time of idefics_model_load */
    char name[128];               /* general.name, NUL-terminated (truncated), or "" */
    bool low_memory;              /* params.low_memory: forward.c pages weights per layer */
};

/* The calling thread's error slot for calls on model m (idefics_tokenize, ...);
 * idefics_model_last_error reads it back on the same thread. */
idf_err *idf_model_err(const idefics_model *m);

#endif /* IDF_MODEL_H */
