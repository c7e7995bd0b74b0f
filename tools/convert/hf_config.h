/*
 * hf_config.h - a Hugging Face IDEFICS config.json (+ preprocessor_config.json)
 * as the converter needs it: the values behind every metadata key of
 * quant/idfx_keys.h, and the list of tensors the architecture expects with their
 * shapes and roles (docs/../idefics-architecture.md section 2).
 *
 * Absent keys take the defaults of transformers' IdeficsConfig /
 * IdeficsVisionConfig / IdeficsPerceiverConfig, as from_pretrained would.
 */
#ifndef IDF_HF_CONFIG_H
#define IDF_HF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct idf_hf_config {
    char arch[128];            /* architectures[0] or model_type, for messages */
    bool text_only;            /* LlamaForCausalLM: decoder only, written as general.architecture "llama" */
    float rope_theta;          /* text_only: config rope_theta (IDEFICS: 10000, fixed in transformers) */
    /* text (IdeficsConfig) */
    uint32_t vocab_size, additional_vocab_size, hidden_size, intermediate_size;
    uint32_t num_hidden_layers, num_attention_heads, max_position_embeddings, cross_layer_interval;
    float rms_norm_eps;
    bool qk_layer_norms, use_resampler;
    char hidden_act[32];
    uint32_t bos_token_id, eos_token_id, pad_token_id;
    /* vision_config */
    uint32_t v_embed_dim, v_image_size, v_patch_size, v_num_hidden_layers, v_num_attention_heads;
    uint32_t v_intermediate_size, v_num_channels;
    float v_layer_norm_eps;
    char v_hidden_act[32];
    /* perceiver_config */
    uint32_t p_depth, p_n_latents, p_n_heads, p_head_dim;
    bool p_qk_layer_norms;
    /* preprocessor_config.json, else the OpenAI CLIP constants */
    float image_mean[3], image_std[3];
    bool have_preprocessor;
} idf_hf_config;

/* What a tensor is, which decides its stored precision (docs/QUANT.md). */
typedef enum idf_tensor_role {
    IDF_ROLE_TEXT_LINEAR,     /* decoder q/k/v/o/gate/up/down */
    IDF_ROLE_XATTN_LINEAR,    /* gated cross-attention q/k/v/o and MLP */
    IDF_ROLE_PERCEIVER_LINEAR,/* perceiver q/k/v/output_proj, fc, c_proj */
    IDF_ROLE_VISION_LINEAR,   /* vision q/k/v/out_proj, fc1, fc2 */
    IDF_ROLE_EMBED,           /* embed_tokens and additional_embedding (row gather) */
    IDF_ROLE_HEAD,            /* lm_head and additional_fc */
    IDF_ROLE_PATCH,           /* the patch conv, [embed, C, P, P] */
    IDF_ROLE_SMALL,           /* norms, biases, gates, latents, class/position embeddings: F32 */
    IDF_ROLE_COUNT
} idf_tensor_role;

#define IDF_HF_MAX_DIMS 4

typedef struct idf_expected_tensor {
    char name[128];
    uint32_t n_dims;
    uint64_t shape[IDF_HF_MAX_DIMS];
    idf_tensor_role role;
    bool optional;            /* unused by the model (vision post_layernorm): converted when present */
} idf_expected_tensor;

const char *idf_tensor_role_name(idf_tensor_role role);

/* Parse config.json text (and preprocessor_config.json text, or NULL). Checks the
 * architecture and that every size is usable (non-zero, divisible where the
 * model splits heads, within 2^24). Returns 0, or IDEFICS_ERR_BAD_CHECKPOINT /
 * IDEFICS_ERR_UNSUPPORTED / IDEFICS_ERR_BAD_CONFIG with err naming the key. */
int idf_hf_config_parse(const char *config_json, size_t len, const char *preproc_json, size_t preproc_len,
                        idf_hf_config *cfg, char *err, size_t errsz);

/* The expected tensors, in checkpoint order (embeddings, vision, perceiver, then
 * per layer: cross block when due, decoder layer; final norm, head). *out is
 * malloc'ed; returns 0 or IDEFICS_ERR_OUT_OF_MEMORY. */
int idf_hf_expected_tensors(const idf_hf_config *cfg, idf_expected_tensor **out, uint32_t *n);

/* Read a small text file whole (NUL-terminated; NULL when unreadable or over max). */
char *idf_read_text_file(const char *path, size_t max, size_t *len);

#endif /* IDF_HF_CONFIG_H */
