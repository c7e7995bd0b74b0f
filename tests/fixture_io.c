/*
 * fixture_io.c - reader for the reference model fixtures (see fixture_io.h and
 * tools/reference/README.md). Test-side code: it uses malloc and cJSON directly, but it
 * still treats the files as untrusted: every shape and count is range- and
 * overflow-checked, and each .bin must be exactly count * 4 bytes.
 */
#include "fixture_io.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fixture files are small; anything bigger than this is a corrupt or wrong file. */
#define MAX_FILE_BYTES ((size_t)64 << 20)
#define MAX_DIM 1000000

static int fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* dir + "/" + name; NULL on allocation failure. */
static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* The folder part of a path ("." if none). */
static char *dirname_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return dup_str(".");
    size_t n = (size_t)(slash - path);
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, path, n);
    p[n] = 0;
    return p;
}

static int read_all(const char *path, unsigned char **out, size_t *len, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, "%s: cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return fail(err, errlen, "%s: cannot seek", path);
    }
    long sz = ftell(f);
    if (sz < 0 || (unsigned long)sz > MAX_FILE_BYTES) {
        fclose(f);
        return fail(err, errlen, "%s: size %ld out of range", path, sz);
    }
    rewind(f);
    unsigned char *buf = malloc((size_t)sz + 1);
    if (!buf) {
        fclose(f);
        return fail(err, errlen, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, (size_t)sz, f);
    fclose(f);
    if (got != (size_t)sz) {
        free(buf);
        return fail(err, errlen, "%s: short read", path);
    }
    buf[sz] = 0; /* lets JSON text be parsed in place */
    *out = buf;
    *len = (size_t)sz;
    return 0;
}

static cJSON *load_json(const char *path, char *err, size_t errlen) {
    unsigned char *buf;
    size_t len;
    if (read_all(path, &buf, &len, err, errlen)) return NULL;
    cJSON *j = cJSON_ParseWithLength((const char *)buf, len);
    free(buf);
    if (!j) fail(err, errlen, "%s: invalid JSON", path);
    return j;
}

/* ---------------------------------------------------------------- field getters */

static int get_str(const cJSON *o, const char *key, char **out, const char *file, char *err,
                   size_t errlen) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) return fail(err, errlen, "%s: \"%s\" missing or not a string", file, key);
    *out = dup_str(v->valuestring);
    return *out ? 0 : fail(err, errlen, "%s: out of memory", file);
}

static int as_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!(d >= (double)lo && d <= (double)hi) || d != floor(d)) return -1;
    *out = (int64_t)d;
    return 0;
}

static int get_int(const cJSON *o, const char *key, int lo, int hi, int *out, const char *file,
                   char *err, size_t errlen) {
    int64_t x;
    if (as_int(cJSON_GetObjectItemCaseSensitive(o, key), lo, hi, &x))
        return fail(err, errlen, "%s: \"%s\" missing or not an integer in [%d, %d]", file, key, lo,
                    hi);
    *out = (int)x;
    return 0;
}

/* A nested JSON int array with exactly the given dims, flattened row-major. */
static int get_int_nd(const cJSON *o, const char *key, const int *dims, int ndim, int32_t **out,
                      const char *file, char *err, size_t errlen) {
    size_t count = 1;
    for (int i = 0; i < ndim; i++) {
        if (dims[i] <= 0 || count > SIZE_MAX / sizeof(int32_t) / (size_t)dims[i])
            return fail(err, errlen, "%s: \"%s\" dimension %d invalid", file, key, i);
        count *= (size_t)dims[i];
    }
    const cJSON *root = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!root) return fail(err, errlen, "%s: \"%s\" missing", file, key);
    int32_t *buf = malloc(count * sizeof(int32_t));
    if (!buf) return fail(err, errlen, "%s: out of memory", file);
    /* Walk the array as an odometer over the index tuple; each level must have exactly
     * dims[level] elements. */
    size_t pos = 0;
    const cJSON *cur[IDF_FIXTURE_MAX_DIMS + 1];
    int idx[IDF_FIXTURE_MAX_DIMS + 1];
    int level = 0;
    if (!cJSON_IsArray(root) || cJSON_GetArraySize(root) != dims[0]) goto bad_shape;
    cur[0] = root->child;
    idx[0] = 0;
    while (level >= 0) {
        if (idx[level] == dims[level]) {
            level--;
            if (level >= 0) {
                cur[level] = cur[level]->next;
                idx[level]++;
            }
            continue;
        }
        if (level == ndim - 1) {
            int64_t x;
            if (as_int(cur[level], INT32_MIN, INT32_MAX, &x)) {
                free(buf);
                return fail(err, errlen, "%s: \"%s\" element %zu is not an int32", file, key, pos);
            }
            buf[pos++] = (int32_t)x;
            cur[level] = cur[level]->next;
            idx[level]++;
            continue;
        }
        const cJSON *child = cur[level];
        if (!cJSON_IsArray(child) || cJSON_GetArraySize(child) != dims[level + 1]) goto bad_shape;
        level++;
        cur[level] = child->child;
        idx[level] = 0;
    }
    if (pos != count) goto bad_shape;
    *out = buf;
    return 0;
bad_shape:
    free(buf);
    return fail(err, errlen, "%s: \"%s\" does not have the expected shape", file, key);
}

/* ---------------------------------------------------------------- tensors */

static float f32_from_le(const unsigned char *p) {
    uint32_t u = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* tensors.<name> = {"file", "dtype": "f32le", "shape": [...]}; the .bin sits in dir.
 * If optional and absent, leaves t zeroed. */
static int load_tensor(const cJSON *tensors, const char *name, const char *dir, int optional,
                       idf_fixture_tensor *t, const char *file, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(tensors, name);
    if (!e) return optional ? 0 : fail(err, errlen, "%s: tensor \"%s\" missing", file, name);
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(e, "file");
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsString(fn) || strchr(fn->valuestring, '/') || fn->valuestring[0] == '.')
        return fail(err, errlen, "%s: tensor \"%s\": bad \"file\"", file, name);
    if (!cJSON_IsString(dt) || strcmp(dt->valuestring, "f32le") != 0)
        return fail(err, errlen, "%s: tensor \"%s\": dtype must be \"f32le\"", file, name);
    int nd = cJSON_IsArray(sh) ? cJSON_GetArraySize(sh) : -1;
    if (nd < 1 || nd > IDF_FIXTURE_MAX_DIMS)
        return fail(err, errlen, "%s: tensor \"%s\": shape must have 1..%d dims", file, name,
                    IDF_FIXTURE_MAX_DIMS);
    size_t count = 1;
    int i = 0;
    for (const cJSON *d = sh->child; d; d = d->next, i++) {
        int64_t x;
        if (as_int(d, 1, MAX_DIM, &x))
            return fail(err, errlen, "%s: tensor \"%s\": shape[%d] invalid", file, name, i);
        if (count > SIZE_MAX / sizeof(float) / (size_t)x)
            return fail(err, errlen, "%s: tensor \"%s\": size overflows", file, name);
        count *= (size_t)x;
        t->shape[i] = x;
    }
    t->ndim = nd;
    char *path = join(dir, fn->valuestring);
    if (!path) return fail(err, errlen, "%s: out of memory", file);
    unsigned char *bytes;
    size_t len;
    int rc = read_all(path, &bytes, &len, err, errlen);
    if (rc) {
        free(path);
        return rc;
    }
    if (len != count * sizeof(float)) {
        free(bytes);
        rc = fail(err, errlen, "%s: %zu bytes, shape of \"%s\" in %s needs %zu", path, len, name,
                  file, count * sizeof(float));
        free(path);
        return rc;
    }
    free(path);
    t->data = malloc(count * sizeof(float));
    if (!t->data) {
        free(bytes);
        return fail(err, errlen, "%s: out of memory", file);
    }
    for (size_t k = 0; k < count; k++) t->data[k] = f32_from_le(bytes + 4 * k);
    free(bytes);
    t->count = count;
    return 0;
}

/* ---------------------------------------------------------------- case */

static int load_items(const cJSON *j, const char *models_root, idf_fixture_case *c,
                      const char *file, char *err, size_t errlen) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
    int n = cJSON_IsArray(arr) ? cJSON_GetArraySize(arr) : -1;
    if (n < 1 || n > 4096) return fail(err, errlen, "%s: \"prompt\" missing or empty", file);
    c->items = calloc((size_t)n, sizeof *c->items);
    if (!c->items) return fail(err, errlen, "%s: out of memory", file);
    c->n_items = n;
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char *type = NULL;
        if (get_str(it, "type", &type, file, err, errlen)) return -1;
        int rc = 0;
        if (!strcmp(type, "text")) {
            c->items[i].kind = IDF_FIXTURE_TEXT;
            rc = get_str(it, "text", &c->items[i].text, file, err, errlen);
        } else if (!strcmp(type, "image")) {
            c->items[i].kind = IDF_FIXTURE_IMAGE;
            rc = get_str(it, "file", &c->items[i].image_file, file, err, errlen);
            if (!rc && strstr(c->items[i].image_file, ".."))
                rc = fail(err, errlen, "%s: prompt[%d]: image path leaves the fixture tree", file, i);
            if (!rc && !(c->items[i].image_path = join(models_root, c->items[i].image_file)))
                rc = fail(err, errlen, "%s: out of memory", file);
        } else {
            rc = fail(err, errlen, "%s: prompt[%d]: unknown type \"%s\"", file, i, type);
        }
        free(type);
        if (rc) return rc;
    }
    return 0;
}

static int load_generation(const cJSON *j, idf_fixture_case *c, const char *file, char *err,
                           size_t errlen) {
    const cJSON *g = cJSON_GetObjectItemCaseSensitive(j, "generation");
    if (!cJSON_IsObject(g)) return fail(err, errlen, "%s: \"generation\" missing", file);
    if (get_int(g, "max_new_tokens", 1, 4096, &c->n_new, file, err, errlen)) return -1;
    int eos = 0;
    if (get_int(g, "eos_token_id", 0, c->vocab_total - 1, &eos, file, err, errlen)) return -1;
    c->eos_id = eos;
    int dims[2] = {c->batch, c->n_new};
    if (get_int_nd(g, "tokens", dims, 2, &c->gen_tokens, file, err, errlen)) return -1;
    const cJSON *sup = cJSON_GetObjectItemCaseSensitive(g, "suppressed_token_ids");
    int ns = cJSON_IsArray(sup) ? cJSON_GetArraySize(sup) : -1;
    if (ns < 0 || ns > c->vocab_total)
        return fail(err, errlen, "%s: \"suppressed_token_ids\" missing or too long", file);
    if (ns > 0) {
        int d1[1] = {ns};
        if (get_int_nd(g, "suppressed_token_ids", d1, 1, &c->suppressed, file, err, errlen))
            return -1;
    }
    c->n_suppressed = ns;
    const cJSON *gaps = cJSON_GetObjectItemCaseSensitive(g, "top2_gap");
    size_t ng = (size_t)c->batch * (size_t)c->n_new;
    if (!cJSON_IsArray(gaps) || (size_t)cJSON_GetArraySize(gaps) != ng)
        return fail(err, errlen, "%s: \"top2_gap\" must have batch*max_new_tokens entries", file);
    c->top2_gap = malloc(ng * sizeof(float));
    if (!c->top2_gap) return fail(err, errlen, "%s: out of memory", file);
    size_t k = 0;
    for (const cJSON *v = gaps->child; v; v = v->next) {
        if (!cJSON_IsNumber(v)) return fail(err, errlen, "%s: \"top2_gap\" not numeric", file);
        c->top2_gap[k++] = (float)v->valuedouble;
    }
    const cJSON *mg = cJSON_GetObjectItemCaseSensitive(g, "min_top2_gap");
    if (!cJSON_IsNumber(mg)) return fail(err, errlen, "%s: \"min_top2_gap\" missing", file);
    c->min_top2_gap = (float)mg->valuedouble;
    return 0;
}

int idf_fixture_case_load(const char *case_json_path, idf_fixture_case *c, char *err,
                          size_t errlen) {
    memset(c, 0, sizeof *c);
    const char *file = case_json_path;
    cJSON *j = load_json(file, err, errlen);
    if (!j) return -1;
    int rc = -1;
    char *case_dir = dirname_of(file);
    char *models_root = NULL;
    if (!case_dir || !(c->json_path = dup_str(file)) || !(c->model_dir = dirname_of(case_dir)) ||
        !(models_root = dirname_of(c->model_dir))) {
        fail(err, errlen, "%s: out of memory", file);
        goto out;
    }
    char *format = NULL;
    if (get_str(j, "format", &format, file, err, errlen)) goto out;
    int bad_format = strcmp(format, "idefics-edge-model-fixture") != 0;
    free(format);
    int version;
    if (bad_format) {
        fail(err, errlen, "%s: \"format\" is not idefics-edge-model-fixture", file);
        goto out;
    }
    if (get_int(j, "version", 1, 1, &version, file, err, errlen)) goto out; /* v1 only */
    if (get_str(j, "model", &c->model_name, file, err, errlen) ||
        get_str(j, "case", &c->case_name, file, err, errlen) ||
        get_str(j, "flavour", &c->flavour, file, err, errlen) ||
        get_str(j, "full_text", &c->full_text, file, err, errlen))
        goto out;
    const cJSON *eou = cJSON_GetObjectItemCaseSensitive(j, "add_end_of_utterance_token_effective");
    if (!cJSON_IsBool(eou)) {
        fail(err, errlen, "%s: \"add_end_of_utterance_token_effective\" missing", file);
        goto out;
    }
    c->add_eou = cJSON_IsTrue(eou);
    if (get_int(j, "batch", 1, 64, &c->batch, file, err, errlen) ||
        get_int(j, "seq_len", 1, 1 << 20, &c->seq_len, file, err, errlen) ||
        get_int(j, "num_images", 1, 1024, &c->num_images, file, err, errlen) ||
        get_int(j, "image_size", 1, 8192, &c->image_size, file, err, errlen) ||
        get_int(j, "vocab_size_total", 1, 1 << 24, &c->vocab_total, file, err, errlen))
        goto out;
    if (load_items(j, models_root, c, file, err, errlen)) goto out;
    int d2[2] = {c->batch, c->seq_len};
    int d3[3] = {c->batch, c->seq_len, c->num_images};
    if (get_int_nd(j, "input_ids", d2, 2, &c->input_ids, file, err, errlen) ||
        get_int_nd(j, "attention_mask", d2, 2, &c->attention_mask, file, err, errlen) ||
        get_int_nd(j, "image_attention_mask", d3, 3, &c->image_attention_mask, file, err, errlen))
        goto out;
    const cJSON *tensors = cJSON_GetObjectItemCaseSensitive(j, "tensors");
    if (!cJSON_IsObject(tensors)) {
        fail(err, errlen, "%s: \"tensors\" missing", file);
        goto out;
    }
    if (load_tensor(tensors, "pixel_values", case_dir, 0, &c->pixel_values, file, err, errlen) ||
        load_tensor(tensors, "logits", case_dir, 0, &c->logits, file, err, errlen) ||
        load_tensor(tensors, "image_hidden_states", case_dir, 0, &c->image_hidden_states, file,
                    err, errlen) ||
        load_tensor(tensors, "gen_logits", case_dir, 1, &c->gen_logits, file, err, errlen))
        goto out;
    if (load_generation(j, c, file, err, errlen)) goto out;
    rc = 0;
out:
    cJSON_Delete(j);
    free(case_dir);
    free(models_root);
    if (rc) idf_fixture_case_free(c);
    return rc;
}

static void free_tensor(idf_fixture_tensor *t) {
    free(t->data);
    memset(t, 0, sizeof *t);
}

void idf_fixture_case_free(idf_fixture_case *c) {
    if (!c) return;
    free(c->json_path);
    free(c->model_dir);
    free(c->model_name);
    free(c->case_name);
    free(c->flavour);
    free(c->full_text);
    for (int i = 0; i < c->n_items && c->items; i++) {
        free(c->items[i].text);
        free(c->items[i].image_file);
        free(c->items[i].image_path);
    }
    free(c->items);
    free(c->input_ids);
    free(c->attention_mask);
    free(c->image_attention_mask);
    free_tensor(&c->pixel_values);
    free_tensor(&c->logits);
    free_tensor(&c->image_hidden_states);
    free_tensor(&c->gen_logits);
    free(c->gen_tokens);
    free(c->top2_gap);
    free(c->suppressed);
    memset(c, 0, sizeof *c);
}

/* ---------------------------------------------------------------- manifest */

void idf_fixture_models_root(char *buf, size_t n) {
    const char *src = getenv("IDEFICS_SOURCE_ROOT");
    snprintf(buf, n, "%s/tests/fixtures/models", src && *src ? src : ".");
}

static int load_model_entry(const cJSON *e, const char *root, idf_fixture_model *m,
                            const char *file, char *err, size_t errlen) {
    char *dir = NULL;
    if (get_str(e, "name", &m->name, file, err, errlen) ||
        get_str(e, "flavour", &m->flavour, file, err, errlen) ||
        get_str(e, "dir", &dir, file, err, errlen))
        return -1;
    if (strchr(dir, '/') || dir[0] == '.') {
        free(dir);
        return fail(err, errlen, "%s: model \"%s\": bad \"dir\"", file, m->name);
    }
    m->dir = join(root, dir);
    free(dir);
    if (!m->dir) return fail(err, errlen, "%s: out of memory", file);
    m->sharded = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "sharded"));
    m->use_resampler = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "use_resampler"));
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(e, "cases");
    int n = cJSON_IsArray(cases) ? cJSON_GetArraySize(cases) : -1;
    if (n < 1 || n > 4096) return fail(err, errlen, "%s: model \"%s\": no cases", file, m->name);
    m->case_paths = calloc((size_t)n, sizeof(char *));
    if (!m->case_paths) return fail(err, errlen, "%s: out of memory", file);
    m->n_cases = n;
    int i = 0;
    for (const cJSON *cp = cases->child; cp; cp = cp->next, i++) {
        if (!cJSON_IsString(cp) || strstr(cp->valuestring, ".."))
            return fail(err, errlen, "%s: model \"%s\": cases[%d] invalid", file, m->name, i);
        if (!(m->case_paths[i] = join(m->dir, cp->valuestring)))
            return fail(err, errlen, "%s: out of memory", file);
    }
    return 0;
}

int idf_fixture_manifest_load(const char *models_root, idf_fixture_manifest *m, char *err,
                              size_t errlen) {
    memset(m, 0, sizeof *m);
    char *file = join(models_root, "manifest.json");
    if (!file) return fail(err, errlen, "out of memory");
    cJSON *j = load_json(file, err, errlen);
    int rc = -1;
    if (!j) goto out;
    if (!(m->root = dup_str(models_root))) {
        fail(err, errlen, "out of memory");
        goto out;
    }
    const cJSON *models = cJSON_GetObjectItemCaseSensitive(j, "models");
    int n = cJSON_IsArray(models) ? cJSON_GetArraySize(models) : -1;
    if (n < 1 || n > 1024) {
        fail(err, errlen, "%s: \"models\" missing or empty", file);
        goto out;
    }
    if (!(m->models = calloc((size_t)n, sizeof *m->models))) {
        fail(err, errlen, "out of memory");
        goto out;
    }
    m->n_models = n;
    int i = 0;
    for (const cJSON *e = models->child; e; e = e->next, i++)
        if (load_model_entry(e, models_root, &m->models[i], file, err, errlen)) goto out;
    const cJSON *images = cJSON_GetObjectItemCaseSensitive(j, "images");
    int ni = cJSON_IsArray(images) ? cJSON_GetArraySize(images) : -1;
    if (ni < 0 || ni > 4096) {
        fail(err, errlen, "%s: \"images\" missing", file);
        goto out;
    }
    if (ni > 0 && !(m->images = calloc((size_t)ni, sizeof(char *)))) {
        fail(err, errlen, "out of memory");
        goto out;
    }
    m->n_images = ni;
    i = 0;
    for (const cJSON *e = images ? images->child : NULL; e; e = e->next, i++) {
        if (!cJSON_IsString(e) || strstr(e->valuestring, "..")) {
            fail(err, errlen, "%s: images[%d] invalid", file, i);
            goto out;
        }
        if (!(m->images[i] = join(models_root, e->valuestring))) {
            fail(err, errlen, "out of memory");
            goto out;
        }
    }
    rc = 0;
out:
    cJSON_Delete(j);
    free(file);
    if (rc) idf_fixture_manifest_free(m);
    return rc;
}

void idf_fixture_manifest_free(idf_fixture_manifest *m) {
    if (!m) return;
    for (int i = 0; i < m->n_models && m->models; i++) {
        idf_fixture_model *e = &m->models[i];
        free(e->name);
        free(e->dir);
        free(e->flavour);
        for (int k = 0; k < e->n_cases && e->case_paths; k++) free(e->case_paths[k]);
        free(e->case_paths);
    }
    free(m->models);
    for (int i = 0; i < m->n_images && m->images; i++) free(m->images[i]);
    free(m->images);
    free(m->root);
    memset(m, 0, sizeof *m);
}

const idf_fixture_model *idf_fixture_find_model(const idf_fixture_manifest *m, const char *name) {
    for (int i = 0; i < m->n_models; i++)
        if (m->models[i].name && !strcmp(m->models[i].name, name)) return &m->models[i];
    return NULL;
}
