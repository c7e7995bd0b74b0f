/*
 * idfx_keys.h - the metadata keys of an IDFX file (docs/FORMAT.md, "Metadata").
 * The writer (tools/convert) and the readers (runtime) both use these names.
 * A key marked "required" must be present for the runtime to load the model.
 *
 * Values come from the checkpoint's config.json; field names follow it.
 */
#ifndef IDFX_KEYS_H
#define IDFX_KEYS_H

/* ---- general ---- */
#define IDFX_KEY_ARCH               "general.architecture"   /* STR, required: "idefics" or "llama" (text only:
                                                                the decoder keys below, no cross/vision/perceiver) */
#define IDFX_KEY_NAME               "general.name"           /* STR */
#define IDFX_KEY_CONVERTER_VERSION  "converter.version"      /* STR */
#define IDFX_KEY_CONVERTER_OPTIONS  "converter.options"      /* STR: the command line preset/options */
#define IDFX_KEY_SOURCE_CONFIG      "source.config_json"     /* STR: config.json verbatim, for inspect */

/* ---- text model (IdeficsConfig), all required ---- */
#define IDFX_KEY_VOCAB_SIZE         "idefics.vocab_size"             /* U32 */
#define IDFX_KEY_ADDITIONAL_VOCAB   "idefics.additional_vocab_size"  /* U32 */
#define IDFX_KEY_HIDDEN_SIZE        "idefics.hidden_size"            /* U32 */
#define IDFX_KEY_INTERMEDIATE_SIZE  "idefics.intermediate_size"      /* U32 */
#define IDFX_KEY_N_LAYERS           "idefics.num_hidden_layers"      /* U32 */
#define IDFX_KEY_N_HEADS            "idefics.num_attention_heads"    /* U32 */
#define IDFX_KEY_RMS_EPS            "idefics.rms_norm_eps"           /* F32 */
#define IDFX_KEY_ROPE_THETA         "idefics.rope_theta"             /* F32 (10000; not a config key in HF) */
#define IDFX_KEY_MAX_POS            "idefics.max_position_embeddings"/* U32 */
#define IDFX_KEY_CROSS_INTERVAL     "idefics.cross_layer_interval"   /* U32 */
#define IDFX_KEY_QK_LAYER_NORMS     "idefics.qk_layer_norms"         /* BOOL */
#define IDFX_KEY_USE_RESAMPLER      "idefics.use_resampler"          /* BOOL */
#define IDFX_KEY_HIDDEN_ACT         "idefics.hidden_act"             /* STR: "silu" */

/* ---- vision tower (vision_config), all required ---- */
#define IDFX_KEY_V_EMBED_DIM        "vision.embed_dim"               /* U32 */
#define IDFX_KEY_V_IMAGE_SIZE       "vision.image_size"              /* U32 */
#define IDFX_KEY_V_PATCH_SIZE       "vision.patch_size"              /* U32 */
#define IDFX_KEY_V_N_LAYERS         "vision.num_hidden_layers"       /* U32 */
#define IDFX_KEY_V_N_HEADS          "vision.num_attention_heads"     /* U32 */
#define IDFX_KEY_V_INTERMEDIATE     "vision.intermediate_size"       /* U32 */
#define IDFX_KEY_V_LN_EPS           "vision.layer_norm_eps"          /* F32 */
#define IDFX_KEY_V_HIDDEN_ACT       "vision.hidden_act"              /* STR: "gelu" (erf) or "quick_gelu" */
#define IDFX_KEY_V_N_CHANNELS       "vision.num_channels"            /* U32 */
#define IDFX_KEY_V_IMAGE_MEAN       "vision.image_mean"              /* ARR of F32 [num_channels] */
#define IDFX_KEY_V_IMAGE_STD        "vision.image_std"               /* ARR of F32 [num_channels] */

/* ---- perceiver resampler (perceiver_config), required when use_resampler ---- */
#define IDFX_KEY_P_DEPTH            "perceiver.resampler_depth"      /* U32 */
#define IDFX_KEY_P_N_LATENTS        "perceiver.resampler_n_latents"  /* U32 */
#define IDFX_KEY_P_N_HEADS          "perceiver.resampler_n_heads"    /* U32 */
#define IDFX_KEY_P_HEAD_DIM         "perceiver.resampler_head_dim"   /* U32 */
#define IDFX_KEY_P_QK_LAYER_NORMS   "perceiver.qk_layer_norms_perceiver" /* BOOL */

/* ---- tokenizer (LLaMA SentencePiece BPE with byte fallback), required ---- */
#define IDFX_KEY_TOK_MODEL          "tokenizer.model"        /* STR: "llama" */
#define IDFX_KEY_TOK_TOKENS         "tokenizer.tokens"       /* ARR of STR [n_vocab]: pieces, "▁" for space */
#define IDFX_KEY_TOK_SCORES         "tokenizer.scores"       /* ARR of F32 [n_vocab]: SentencePiece scores */
#define IDFX_KEY_TOK_TYPES          "tokenizer.token_type"   /* ARR of U32 [n_vocab]: idfx_token_type */
#define IDFX_KEY_TOK_MERGES         "tokenizer.merges"       /* ARR of STR, optional: "a b" BPE merges by rank */
#define IDFX_KEY_TOK_BOS            "tokenizer.bos_token_id" /* U32 */
#define IDFX_KEY_TOK_EOS            "tokenizer.eos_token_id" /* U32 */
#define IDFX_KEY_TOK_UNK            "tokenizer.unk_token_id" /* U32 */
#define IDFX_KEY_TOK_PAD            "tokenizer.pad_token_id" /* U32 */
#define IDFX_KEY_TOK_ADD_PREFIX     "tokenizer.add_dummy_prefix" /* BOOL: prepend "▁" to each text segment (legacy LLaMA) */

/* ---- chat ---- */
#define IDFX_KEY_CHAT_TEMPLATE      "chat.template"          /* STR: "idefics-instruct" or "idefics-base" */
#define IDFX_KEY_CHAT_STOP_TOKENS   "chat.stop_token_ids"    /* ARR of U32: generation stops at any of these */
#define IDFX_KEY_CHAT_CAPTION       "chat.caption_prompt"    /* STR, optional: question used by `idefics caption` */

#endif /* IDFX_KEYS_H */
