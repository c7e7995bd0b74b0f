/*
 * fixture_io.h - loads the Hugging Face reference cases written by
 * tools/reference/make_model_fixtures.py (tests/fixtures/models/) into plain C structs,
 * so end-to-end tests can compare the runtime against transformers without Python.
 *
 * Layout (see tools/reference/README.md):
 *   models/manifest.json                      models, their case files, the source images
 *   models/<model>/config.json, *.safetensors HF checkpoint + tokenizer + preprocessor
 *   models/<model>/cases/<case>.json          ids, masks, prompt items, greedy tokens
 *   models/<model>/cases/<case>.<name>.bin    float32 little-endian arrays; shapes in JSON
 *
 * All arrays keep the batch dimension (batch is 1 in the current fixtures) and are
 * row-major. Every loader validates counts and shapes against the JSON and the .bin
 * sizes, returns 0 on success or -1 with a message in err naming the file and field.
 */
#ifndef IDF_FIXTURE_IO_H
#define IDF_FIXTURE_IO_H

#include <stddef.h>
#include <stdint.h>

#define IDF_FIXTURE_MAX_DIMS 6
#define IDF_FIXTURE_ERR_LEN 512

/* A float32 array from a .bin file. data is NULL (and count 0) if the case lacks it. */
typedef struct {
    float *data;
    int64_t shape[IDF_FIXTURE_MAX_DIMS];
    int ndim;
    size_t count; /* product of shape */
} idf_fixture_tensor;

typedef enum { IDF_FIXTURE_TEXT = 0, IDF_FIXTURE_IMAGE = 1 } idf_fixture_item_kind;

/* One prompt item, in the order given to IdeficsProcessor. */
typedef struct {
    idf_fixture_item_kind kind;
    char *text;       /* TEXT: the item verbatim (before the processor strips spaces) */
    char *image_file; /* IMAGE: path relative to the models root, e.g. "images/x.png" */
    char *image_path; /* IMAGE: absolute path (models root + image_file) */
} idf_fixture_item;

typedef struct {
    char *json_path;  /* the case file this was loaded from */
    char *model_dir;  /* folder of the HF checkpoint the case belongs to */
    char *model_name; /* e.g. "tiny-base" */
    char *case_name;  /* e.g. "one_image" */
    char *flavour;    /* "base" or "instruct" */
    char *full_text;  /* the processor's prompt string ("<s>...<image>...") */
    int add_eou;      /* processor inserted <end_of_utterance> between texts (effective) */

    idf_fixture_item *items;
    int n_items;

    int batch, seq_len, num_images, image_size, vocab_total;
    int32_t *input_ids;            /* [batch][seq_len] */
    int32_t *attention_mask;       /* [batch][seq_len], 0/1 */
    int32_t *image_attention_mask; /* [batch][seq_len][num_images], 0/1, rows one-hot or 0 */

    idf_fixture_tensor pixel_values;        /* [batch, num_images, 3, S, S] */
    idf_fixture_tensor logits;              /* [batch, seq_len, vocab_total], one forward */
    idf_fixture_tensor image_hidden_states; /* [batch, num_images, latents, vision_dim] */
    idf_fixture_tensor gen_logits;          /* [batch, n_new, vocab_total] raw, per step */

    /* Greedy continuation (model.generate, KV cache on). At every step the ids in
     * suppressed are excluded from the argmax (bad words + eos held off by
     * min_new_tokens), so exactly n_new tokens are produced. */
    int n_new;
    int32_t *gen_tokens;  /* [batch][n_new] */
    float *top2_gap;      /* [batch][n_new] top-1 minus top-2 among allowed ids */
    float min_top2_gap;
    int32_t eos_id;
    int32_t *suppressed;  /* sorted ids */
    int n_suppressed;
} idf_fixture_case;

typedef struct {
    char *name;
    char *dir; /* absolute */
    char *flavour;
    int sharded, use_resampler;
    char **case_paths; /* absolute paths of the case JSON files */
    int n_cases;
} idf_fixture_model;

typedef struct {
    char *root; /* the models folder */
    idf_fixture_model *models;
    int n_models;
    char **images; /* absolute paths of the committed source images */
    int n_images;
} idf_fixture_manifest;

/* Writes "<IDEFICS_SOURCE_ROOT or .>/tests/fixtures/models" into buf. */
void idf_fixture_models_root(char *buf, size_t n);

int idf_fixture_manifest_load(const char *models_root, idf_fixture_manifest *out, char *err,
                              size_t errlen);
void idf_fixture_manifest_free(idf_fixture_manifest *m);

/* Loads a case JSON and its .bin files (which sit next to it). */
int idf_fixture_case_load(const char *case_json_path, idf_fixture_case *out, char *err,
                          size_t errlen);
void idf_fixture_case_free(idf_fixture_case *c);

/* Finds a model by name; NULL if absent. */
const idf_fixture_model *idf_fixture_find_model(const idf_fixture_manifest *m, const char *name);

#endif
