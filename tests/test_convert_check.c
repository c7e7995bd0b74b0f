/*
 * test_convert_check.c - checks one idefics-convert output against its source
 * checkpoint (run by tests/test_convert.sh):
 *   test_convert_check OUT.idfx MODEL_DIR PRESET SEARCH [TEMPLATE]
 * The file must open with idfx_open and verify; every metadata key of
 * quant/idfx_keys.h that the converter owns must match config.json; every
 * expected tensor must be there with its shape, the type the preset gives its
 * role, and exactly the bytes the reference routines make from the source
 * (F32: the widened source; F16: its rounding; Q4/Q8: idfx_quantize_*_ref).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_config.h"
#include "idfx_keys.h"
#include "idfx_reader.h"
#include "quant.h"
#include "quantize.h"
#include "safetensors.h"

#include "check.h"

/* The type the converter must have chosen (docs/QUANT.md). */
static int expected_type(const char *preset, const idf_expected_tensor *e) {
    bool q4 = !strcmp(preset, "q4"), q8 = !strcmp(preset, "q8"), f16 = !strcmp(preset, "f16");
    int t;
    switch (e->role) {
    case IDF_ROLE_SMALL: return IDFX_TYPE_F32;
    case IDF_ROLE_PATCH: return !strcmp(preset, "f32") ? IDFX_TYPE_F32 : IDFX_TYPE_F16;
    case IDF_ROLE_EMBED:
    case IDF_ROLE_HEAD: t = q4 || q8 ? IDFX_TYPE_Q8 : f16 ? IDFX_TYPE_F16 : IDFX_TYPE_F32; break;
    default: t = q4 ? IDFX_TYPE_Q4 : q8 ? IDFX_TYPE_Q8 : f16 ? IDFX_TYPE_F16 : IDFX_TYPE_F32; break;
    }
    if ((t == IDFX_TYPE_Q4 || t == IDFX_TYPE_Q8) && (e->n_dims != 2 || e->shape[1] % 32)) t = IDFX_TYPE_F16;
    return t;
}

static void check_u32(const idfx_file *f, const char *key, uint32_t want) {
    uint32_t v = 0;
    idf_err e;
    CHECK(idfx_get_u32(f, key, &v, &e) == IDEFICS_OK && v == want, "%s = %u, want %u", key, v, want);
}

static void check_str(const idfx_file *f, const char *key, const char *want) {
    const char *s = NULL;
    uint32_t len = 0;
    idf_err e;
    CHECK(idfx_get_str(f, key, &s, &len, &e) == IDEFICS_OK && len == strlen(want) && !memcmp(s, want, len),
          "%s = '%.*s', want '%s'", key, (int)len, s ? s : "", want);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: test_convert_check OUT.idfx MODEL_DIR PRESET SEARCH [TEMPLATE]\n");
        return 2;
    }
    const char *out = argv[1], *dir = argv[2], *preset = argv[3], *tmpl = argc > 5 ? argv[5] : NULL;
    int search = atoi(argv[4]);
    char err[512] = "";

    /* the source */
    char path[1024];
    size_t cl, pl = 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *config = idf_read_text_file(path, 1 << 24, &cl);
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    char *pre = idf_read_text_file(path, 1 << 24, &pl);
    idf_hf_config cfg;
    idf_expected_tensor *exp = NULL;
    uint32_t n_exp = 0;
    idf_st_checkpoint ck;
    if (!config || idf_hf_config_parse(config, cl, pre, pl, &cfg, err, sizeof err) ||
        idf_hf_expected_tensors(&cfg, &exp, &n_exp) || idf_st_checkpoint_open(dir, &ck, err, sizeof err)) {
        fprintf(stderr, "cannot read the source checkpoint %s: %s\n", dir, err);
        return 1;
    }

    /* the output */
    idf_mapping map;
    if (idf_map_file(out, &map)) {
        fprintf(stderr, "cannot map %s\n", out);
        return 1;
    }
    idfx_file f;
    idf_err e;
    idefics_status st = idfx_open(&f, map.data, map.size, NULL, &e);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "FAIL: idfx_open(%s): %s\n", out, e.msg);
        return 1;
    }
    st = idfx_materialize(&f, NULL, true, &e);
    CHECK(st == IDEFICS_OK, "idfx_materialize with verify: %s", e.msg);

    /* metadata */
    check_str(&f, IDFX_KEY_ARCH, "idefics");
    check_u32(&f, IDFX_KEY_VOCAB_SIZE, cfg.vocab_size);
    check_u32(&f, IDFX_KEY_ADDITIONAL_VOCAB, cfg.additional_vocab_size);
    check_u32(&f, IDFX_KEY_HIDDEN_SIZE, cfg.hidden_size);
    check_u32(&f, IDFX_KEY_INTERMEDIATE_SIZE, cfg.intermediate_size);
    check_u32(&f, IDFX_KEY_N_LAYERS, cfg.num_hidden_layers);
    check_u32(&f, IDFX_KEY_N_HEADS, cfg.num_attention_heads);
    check_u32(&f, IDFX_KEY_CROSS_INTERVAL, cfg.cross_layer_interval);
    check_u32(&f, IDFX_KEY_MAX_POS, cfg.max_position_embeddings);
    check_u32(&f, IDFX_KEY_V_EMBED_DIM, cfg.v_embed_dim);
    check_u32(&f, IDFX_KEY_V_IMAGE_SIZE, cfg.v_image_size);
    check_u32(&f, IDFX_KEY_V_PATCH_SIZE, cfg.v_patch_size);
    check_u32(&f, IDFX_KEY_V_N_LAYERS, cfg.v_num_hidden_layers);
    check_u32(&f, IDFX_KEY_V_N_HEADS, cfg.v_num_attention_heads);
    check_u32(&f, IDFX_KEY_V_INTERMEDIATE, cfg.v_intermediate_size);
    check_u32(&f, IDFX_KEY_V_N_CHANNELS, 3);
    check_u32(&f, IDFX_KEY_P_DEPTH, cfg.p_depth);
    check_u32(&f, IDFX_KEY_P_N_LATENTS, cfg.p_n_latents);
    check_u32(&f, IDFX_KEY_P_N_HEADS, cfg.p_n_heads);
    check_u32(&f, IDFX_KEY_P_HEAD_DIM, cfg.p_head_dim);
    check_str(&f, IDFX_KEY_HIDDEN_ACT, cfg.hidden_act);
    check_str(&f, IDFX_KEY_V_HIDDEN_ACT, cfg.v_hidden_act);
    if (tmpl) check_str(&f, IDFX_KEY_CHAT_TEMPLATE, tmpl);
    float v = 0;
    CHECK(idfx_get_f32(&f, IDFX_KEY_ROPE_THETA, &v, &e) == IDEFICS_OK && v == 10000.f, "rope_theta %g", v);
    CHECK(idfx_get_f32(&f, IDFX_KEY_RMS_EPS, &v, &e) == IDEFICS_OK && v == cfg.rms_norm_eps, "rms_norm_eps %g", v);
    CHECK(idfx_get_f32(&f, IDFX_KEY_V_LN_EPS, &v, &e) == IDEFICS_OK && v == cfg.v_layer_norm_eps, "ln eps %g", v);
    bool b = false;
    CHECK(idfx_get_bool(&f, IDFX_KEY_QK_LAYER_NORMS, &b, &e) == IDEFICS_OK && b == cfg.qk_layer_norms, "qk norms");
    CHECK(idfx_get_bool(&f, IDFX_KEY_USE_RESAMPLER, &b, &e) == IDEFICS_OK && b == cfg.use_resampler, "resampler");
    const idfx_kv *kv = NULL;
    CHECK(idfx_get_arr(&f, IDFX_KEY_V_IMAGE_MEAN, IDFX_KV_F32, &kv, &e) == IDEFICS_OK && kv->count == 3 &&
              idfx_arr_f32(kv, 0) == cfg.image_mean[0] && idfx_arr_f32(kv, 2) == cfg.image_mean[2],
          "image_mean");
    CHECK(idfx_get_arr(&f, IDFX_KEY_V_IMAGE_STD, IDFX_KV_F32, &kv, &e) == IDEFICS_OK && kv->count == 3 &&
              idfx_arr_f32(kv, 1) == cfg.image_std[1],
          "image_std");
    CHECK(idfx_get_arr(&f, IDFX_KEY_CHAT_STOP_TOKENS, IDFX_KV_U32, &kv, &e) == IDEFICS_OK && kv->count >= 1,
          "chat.stop_token_ids");
    const char *s;
    uint32_t len;
    CHECK(idfx_get_str(&f, IDFX_KEY_SOURCE_CONFIG, &s, &len, &e) == IDEFICS_OK && len == cl && !memcmp(s, config, cl),
          "source.config_json is not config.json verbatim");
    CHECK(idfx_get_str(&f, IDFX_KEY_NAME, &s, &len, &e) == IDEFICS_OK && len > 0, "general.name");
    CHECK(idfx_find_kv(&f, IDFX_KEY_TOK_TOKENS) && idfx_find_kv(&f, IDFX_KEY_CONVERTER_VERSION) &&
              idfx_find_kv(&f, IDFX_KEY_CONVERTER_OPTIONS),
          "tokenizer / converter keys missing");

    /* tensors */
    uint32_t n_checked = 0;
    for (uint32_t i = 0; i < n_exp && st == IDEFICS_OK; i++) {
        const idf_expected_tensor *x = &exp[i];
        const idf_st_tensor *src = idf_st_checkpoint_find(&ck, x->name);
        const idfx_tensor *t = idfx_find_tensor(&f, x->name);
        if (!src && x->optional) continue;
        if (!t || !src) {
            CHECK(0, "tensor %s missing from the output (src %p)", x->name, (const void *)src);
            continue;
        }
        n_checked++;
        CHECK(t->n_dims == x->n_dims && !memcmp(t->dims, x->shape, x->n_dims * sizeof *x->shape), "%s: dims",
              x->name);
        int want = expected_type(preset, x);
        CHECK(t->type == want, "%s (%s): type %s, want %s", x->name, idf_tensor_role_name(x->role),
              idfx_type_name(t->type), idfx_type_name(want));
        if (t->type != want) continue;
        /* the bytes the reference makes from the source */
        const idf_st_file *sf = idf_st_checkpoint_file(&ck, src);
        float *w = malloc(src->n_elements * sizeof *w + 1);
        idf_convert_to_f32(NULL, src->dtype == IDF_ST_F32 ? IDF_SRC_F32 : src->dtype == IDF_ST_F16 ? IDF_SRC_F16
                                                                                                  : IDF_SRC_BF16,
                           idf_st_data(sf, src), src->n_elements, w);
        uint64_t nb = 0, unit;
        idfx_tensor_nbytes(t->type, t->layout, t->layout_param, t->n_dims, t->dims, &nb, &unit);
        uint8_t *ref = malloc(nb + 1);
        if (t->type == IDFX_TYPE_F32) memcpy(ref, w, nb);
        if (t->type == IDFX_TYPE_F16)
            for (uint64_t j = 0; j < src->n_elements; j++) idf_wr16(ref + 2 * j, idfx_fp32_to_fp16(w[j]));
        if (t->type == IDFX_TYPE_Q4)
            idfx_quantize_q4_ref(w, (int64_t)x->shape[0], (int64_t)x->shape[1], t->layout_param, search, ref);
        if (t->type == IDFX_TYPE_Q8)
            idfx_quantize_q8_ref(w, (int64_t)x->shape[0], (int64_t)x->shape[1], t->layout_param, 0, ref);
        CHECK(t->nbytes == nb && t->data && !memcmp(t->data, ref, nb), "%s: %s bytes differ from the reference",
              x->name, idfx_type_name(t->type));
        free(ref);
        free(w);
    }
    CHECK(f.n_tensors == n_checked, "output has %u tensors, %u expected", f.n_tensors, n_checked);
    printf("%s: %u tensors checked against %s (preset %s, search %d)\n", out, n_checked, dir, preset, search);
    idfx_close(&f);
    idf_unmap_file(&map);
    idf_st_checkpoint_close(&ck);
    free(exp);
    free(config);
    free(pre);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    return 0;
}
