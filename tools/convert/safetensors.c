/*
 * safetensors.c - parse and validate safetensors files and sharded checkpoints
 * (safetensors.h). Every number in a header is checked before it is used: the
 * header length against the file, each JSON number for being a non-negative
 * integer below 2^53, sizes with overflow-checked multiplication, and every data
 * range against the data area and against the other ranges.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"

static const struct {
    const char *name;
    uint32_t size;
} dtypes[IDF_ST_DTYPE_COUNT] = {
    [IDF_ST_BOOL] = {"BOOL", 1},       [IDF_ST_U8] = {"U8", 1},     [IDF_ST_I8] = {"I8", 1},
    [IDF_ST_F8_E5M2] = {"F8_E5M2", 1}, [IDF_ST_F8_E4M3] = {"F8_E4M3", 1},
    [IDF_ST_I16] = {"I16", 2},         [IDF_ST_U16] = {"U16", 2},   [IDF_ST_F16] = {"F16", 2},
    [IDF_ST_BF16] = {"BF16", 2},       [IDF_ST_I32] = {"I32", 4},   [IDF_ST_U32] = {"U32", 4},
    [IDF_ST_F32] = {"F32", 4},         [IDF_ST_F64] = {"F64", 8},   [IDF_ST_I64] = {"I64", 8},
    [IDF_ST_U64] = {"U64", 8},
};

const char *idf_st_dtype_name(idf_st_dtype dt) {
    return (unsigned)dt < IDF_ST_DTYPE_COUNT ? dtypes[dt].name : "?";
}

uint32_t idf_st_dtype_size(idf_st_dtype dt) { return (unsigned)dt < IDF_ST_DTYPE_COUNT ? dtypes[dt].size : 0; }

static int fail(char *err, size_t errsz, int status, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errsz, int status, const char *fmt, ...) {
    if (err && errsz) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errsz, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* A JSON number that is an exact non-negative integer a double can hold. */
static int json_u64(const cJSON *j, uint64_t *out) {
    if (!cJSON_IsNumber(j)) return 0;
    double v = j->valuedouble;
    if (!isfinite(v) || v < 0 || v > 9007199254740992.0 || v != floor(v)) return 0;
    *out = (uint64_t)v;
    return 1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const idf_st_tensor *)a)->name, ((const idf_st_tensor *)b)->name);
}

static int by_offset(const void *a, const void *b) {
    const idf_st_tensor *x = *(const idf_st_tensor *const *)a, *y = *(const idf_st_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static void free_tensors(idf_st_file *f) {
    for (uint32_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    f->tensors = NULL;
    f->n_tensors = 0;
}

/* One header entry -> t. Returns 0 or an error status with err set. */
static int parse_entry(const cJSON *e, const char *label, uint64_t data_len, uint64_t data_start, idf_st_tensor *t,
                       char *err, size_t errsz) {
    const char *name = e->string;
    if (!cJSON_IsObject(e))
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s': entry is not a JSON object", label, name);
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo))
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                    "%s: tensor '%s': needs string 'dtype', array 'shape' and array 'data_offsets'", label, name);
    int dt = -1;
    for (int i = 0; i < IDF_ST_DTYPE_COUNT; i++)
        if (!strcmp(jd->valuestring, dtypes[i].name)) dt = i;
    if (dt < 0)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s': unknown dtype '%.32s'", label, name,
                    jd->valuestring);
    t->dtype = (idf_st_dtype)dt;
    int nd = cJSON_GetArraySize(js);
    if (nd < 0 || (unsigned)nd > IDF_ST_MAX_DIMS)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s': %d dimensions (at most %u)", label, name,
                    nd, IDF_ST_MAX_DIMS);
    t->n_dims = (uint32_t)nd;
    uint64_t n = 1;
    int i = 0;
    for (const cJSON *d = js->child; d; d = d->next, i++) {
        if (!json_u64(d, &t->shape[i]))
            return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                        "%s: tensor '%s': shape[%d] is not a non-negative integer", label, name, i);
        if (!idf_mul_u64(n, t->shape[i], &n))
            return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s': shape product overflows", label,
                        name);
    }
    t->n_elements = n;
    uint64_t nbytes;
    if (!idf_mul_u64(n, dtypes[dt].size, &nbytes))
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s': byte size overflows", label, name);
    uint64_t begin, end;
    if (cJSON_GetArraySize(jo) != 2 || !json_u64(jo->child, &begin) || !json_u64(jo->child->next, &end))
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                    "%s: tensor '%s': data_offsets must be two non-negative integers", label, name);
    if (begin > end || end > data_len)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                    "%s: tensor '%s': data_offsets [%llu, %llu] outside the data area of %llu bytes", label, name,
                    (unsigned long long)begin, (unsigned long long)end, (unsigned long long)data_len);
    if (end - begin != nbytes)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                    "%s: tensor '%s': %s shape needs %llu bytes but data_offsets give %llu", label, name,
                    dtypes[dt].name, (unsigned long long)nbytes, (unsigned long long)(end - begin));
    t->nbytes = nbytes;
    t->offset = data_start + begin; /* cannot overflow: end <= data_len = size - data_start */
    return 0;
}

int idf_st_parse(const uint8_t *buf, uint64_t size, const char *label, idf_st_file *f, char *err, size_t errsz) {
    memset(f, 0, sizeof *f);
    f->map.fd = -1;
    if (size < 8 || !buf)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: %llu bytes is too short for a safetensors header",
                    label, (unsigned long long)size);
    uint64_t hlen = idf_rd64(buf);
    if (hlen > IDF_ST_MAX_HEADER)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: header length %llu exceeds the %u-byte limit", label,
                    (unsigned long long)hlen, IDF_ST_MAX_HEADER);
    if (hlen < 2 || hlen > size - 8)
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                    "%s: header length %llu does not fit in the file of %llu bytes", label, (unsigned long long)hlen,
                    (unsigned long long)size);
    const char *json = (const char *)buf + 8;
    if (json[0] != '{')
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: header does not start with '{'", label);
    /* cJSON gets a NUL-terminated copy: the system library is not built with the
     * sanitizers, so the parser is never trusted to stop at a length on its own. */
    char *copy = malloc((size_t)hlen + 1);
    if (!copy) return fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory for the header", label);
    memcpy(copy, json, (size_t)hlen);
    copy[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(copy, &end, 0);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        long long at = end ? (long long)(end - copy) : -1LL;
        free(copy);
        return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: header is not valid JSON (near byte %lld)", label, at);
    }
    /* The format pads the header with spaces to an 8-byte boundary; nothing else may
     * follow the object (an embedded NUL would hide bytes from cJSON, so it counts too). */
    for (const char *p = end; p < copy + hlen; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            free(copy);
            return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: bytes after the header's JSON object", label);
        }
    free(copy);
    f->base = buf;
    f->size = size;
    f->data_start = 8 + hlen;
    const uint64_t data_len = size - f->data_start;
    int n = 0;
    for (const cJSON *e = root->child; e; e = e->next) n++;
    int st = 0;
    f->tensors = calloc(n ? (size_t)n : 1, sizeof *f->tensors);
    if (!f->tensors) st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
    for (const cJSON *e = root->child; e && !st; e = e->next) {
        if (!e->string || !e->string[0]) {
            st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: header entry with an empty name", label);
            break;
        }
        if (!strcmp(e->string, "__metadata__")) {
            if (!cJSON_IsObject(e)) {
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: __metadata__ is not an object", label);
                break;
            }
            for (const cJSON *m = e->child; m; m = m->next)
                if (!cJSON_IsString(m))
                    st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: __metadata__ value '%s' is not a string",
                              label, m->string ? m->string : "");
            continue;
        }
        idf_st_tensor *t = &f->tensors[f->n_tensors];
        st = parse_entry(e, label, data_len, f->data_start, t, err, errsz);
        if (st) break;
        t->name = strdup(e->string);
        if (!t->name) {
            st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
            break;
        }
        f->n_tensors++;
    }
    cJSON_Delete(root);
    if (!st && f->n_tensors > 1) {
        qsort(f->tensors, f->n_tensors, sizeof *f->tensors, by_name);
        for (uint32_t i = 1; i < f->n_tensors && !st; i++)
            if (!strcmp(f->tensors[i - 1].name, f->tensors[i].name))
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s' appears twice in the header", label,
                          f->tensors[i].name);
        /* overlaps: sort the non-empty ranges by start, each must begin at or after the previous end */
        const idf_st_tensor **ord = st ? NULL : malloc(f->n_tensors * sizeof *ord);
        if (!st && !ord) st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", label);
        uint32_t m = 0;
        for (uint32_t i = 0; i < f->n_tensors && !st; i++)
            if (f->tensors[i].nbytes) ord[m++] = &f->tensors[i];
        if (!st) qsort(ord, m, sizeof *ord, by_offset);
        for (uint32_t i = 1; i < m && !st; i++)
            if (ord[i]->offset < ord[i - 1]->offset + ord[i - 1]->nbytes)
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: tensor '%s' overlaps tensor '%s'", label,
                          ord[i]->name, ord[i - 1]->name);
        free(ord);
    }
    if (st) {
        free_tensors(f);
        memset(f, 0, sizeof *f);
        f->map.fd = -1;
    }
    return st;
}

int idf_st_open(const char *path, idf_st_file *f, char *err, size_t errsz) {
    idf_mapping map;
    int e = idf_map_file(path, &map);
    if (e) {
        memset(f, 0, sizeof *f);
        f->map.fd = -1;
        return fail(err, errsz, IDEFICS_ERR_IO, "%s: cannot open: %s", path, idf_open_strerror(e));
    }
    int st = idf_st_parse(map.data, map.size, path, f, err, errsz);
    if (st) {
        idf_unmap_file(&map);
        return st;
    }
    f->map = map;
    f->path = strdup(path);
    if (!f->path) {
        idf_st_close(f);
        return fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    return 0;
}

void idf_st_close(idf_st_file *f) {
    if (!f) return;
    free_tensors(f);
    if (f->map.data || f->map.fd >= 0) idf_unmap_file(&f->map);
    free(f->path);
    memset(f, 0, sizeof *f);
    f->map.fd = -1;
}

const idf_st_tensor *idf_st_find(const idf_st_file *f, const char *name) {
    idf_st_tensor key = {.name = (char *)name};
    return f->n_tensors ? bsearch(&key, f->tensors, f->n_tensors, sizeof key, by_name) : NULL;
}

/* ------------------------------------------------------------ checkpoints */

#define IDF_ST_MAX_INDEX (100u << 20)

static char *read_small_file(const char *path, size_t max, size_t *len) {
    FILE *fp = idf_fopen_regular(path, NULL); /* a FIFO would block */
    if (!fp) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap >= max) break;
            cap = cap ? cap * 2 : 65536;
            if (cap > max) cap = max;
            char *nb = realloc(buf, cap + 1);
            if (!nb) break;
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (got == 0) break;
    }
    int ok = buf && feof(fp) && !ferror(fp);
    fclose(fp);
    if (!ok) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int by_ptr_name(const void *a, const void *b) {
    return strcmp((*(const idf_st_tensor *const *)a)->name, (*(const idf_st_tensor *const *)b)->name);
}

static int by_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Shard names from the index: plain file names in dir, no path components. */
static int shard_name_ok(const char *s) {
    size_t n = strlen(s);
    return n > 12 && !strchr(s, '/') && !strchr(s, '\\') && s[0] != '.' && !strcmp(s + n - 12, ".safetensors");
}

int idf_st_checkpoint_open(const char *dir, idf_st_checkpoint *c, char *err, size_t errsz) {
    memset(c, 0, sizeof *c);
    char path[4096];
    int st = 0;
    cJSON *index = NULL;
    const char **names = NULL;
    uint32_t n_names = 0;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    size_t len;
    char *text = read_small_file(path, IDF_ST_MAX_INDEX, &len);
    if (text) {
        index = cJSON_ParseWithLength(text, len);
        free(text);
        const cJSON *wm = index ? cJSON_GetObjectItemCaseSensitive(index, "weight_map") : NULL;
        if (!cJSON_IsObject(wm)) {
            cJSON_Delete(index);
            return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: not JSON with a 'weight_map' object", path);
        }
        int n = cJSON_GetArraySize(wm);
        names = malloc((n ? (size_t)n : 1) * sizeof *names);
        if (!names) st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory");
        for (const cJSON *e = wm->child; e && !st; e = e->next) {
            if (!cJSON_IsString(e) || !shard_name_ok(e->valuestring))
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                          "%s: weight_map['%s'] is not a .safetensors file name in the folder", path,
                          e->string ? e->string : "");
            else
                names[n_names++] = e->valuestring;
        }
        if (!st && n_names == 0) st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: empty weight_map", path);
        if (!st) { /* unique shard names, in order */
            qsort(names, n_names, sizeof *names, by_str);
            uint32_t u = 0;
            for (uint32_t i = 0; i < n_names; i++)
                if (!u || strcmp(names[u - 1], names[i])) names[u++] = names[i];
            n_names = u;
        }
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        FILE *fp = fopen(path, "rb");
        if (!fp) {
            /* Older hub snapshots (idefics-9b's first revisions) hold only PyTorch
             * pickles; say how to get safetensors rather than just "missing". */
            char bin[4096];
            snprintf(bin, sizeof bin, "%s/pytorch_model.bin", dir);
            FILE *fb = fopen(bin, "rb");
            if (!fb) {
                snprintf(bin, sizeof bin, "%s/pytorch_model.bin.index.json", dir);
                fb = fopen(bin, "rb");
            }
            if (fb) {
                fclose(fb);
                return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                            "%s: only PyTorch weights (pytorch_model.bin); the converter reads safetensors: "
                            "download the hub's safetensors files (tools/get-model does), or convert them with "
                            "the snippet in docs/MODELS.md (\"pytorch_model.bin only\")", dir);
            }
            return fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                        "%s: no model.safetensors or model.safetensors.index.json", dir);
        }
        fclose(fp);
        static const char *single = "model.safetensors";
        names = malloc(sizeof *names);
        if (!names) return fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory");
        names[0] = single;
        n_names = 1;
    }
    if (!st) {
        c->files = calloc(n_names, sizeof *c->files);
        if (!c->files) st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (uint32_t i = 0; i < n_names && !st; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        st = idf_st_open(path, &c->files[i], err, errsz);
        if (st) break;
        c->n_files++;
        c->total_bytes += c->files[i].size;
        for (uint32_t j = 0; j < c->files[i].n_tensors; j++) c->files[i].tensors[j].file = i;
        if (c->files[i].n_tensors > UINT32_MAX - c->n_tensors)
            st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "%s: too many tensors", dir);
        else
            c->n_tensors += c->files[i].n_tensors;
    }
    if (!st) {
        c->tensors = malloc((c->n_tensors ? c->n_tensors : 1) * sizeof *c->tensors);
        if (!c->tensors) st = fail(err, errsz, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (!st) {
        uint32_t k = 0;
        for (uint32_t i = 0; i < c->n_files; i++)
            for (uint32_t j = 0; j < c->files[i].n_tensors; j++) c->tensors[k++] = &c->files[i].tensors[j];
        qsort(c->tensors, c->n_tensors, sizeof *c->tensors, by_ptr_name);
        for (uint32_t i = 1; i < c->n_tensors && !st; i++)
            if (!strcmp(c->tensors[i - 1]->name, c->tensors[i]->name))
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT, "tensor '%s' is in both %s and %s",
                          c->tensors[i]->name, c->files[c->tensors[i - 1]->file].path,
                          c->files[c->tensors[i]->file].path);
    }
    if (!st && index) { /* each weight_map entry must be in the shard it names */
        const cJSON *wm = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
        for (const cJSON *e = wm->child; e && !st; e = e->next) {
            const idf_st_tensor *t = idf_st_checkpoint_find(c, e->string);
            const char *p = t ? c->files[t->file].path : NULL;
            const char *base = p ? strrchr(p, '/') : NULL;
            base = base ? base + 1 : p;
            if (!t || strcmp(base, e->valuestring))
                st = fail(err, errsz, IDEFICS_ERR_BAD_CHECKPOINT,
                          "model.safetensors.index.json: tensor '%s' is not in %s, where weight_map puts it",
                          e->string, e->valuestring);
        }
    }
    free(names);
    cJSON_Delete(index);
    if (st) idf_st_checkpoint_close(c);
    return st;
}

void idf_st_checkpoint_close(idf_st_checkpoint *c) {
    if (!c) return;
    for (uint32_t i = 0; i < c->n_files; i++) idf_st_close(&c->files[i]);
    free(c->files);
    free(c->tensors);
    memset(c, 0, sizeof *c);
}

const idf_st_tensor *idf_st_checkpoint_find(const idf_st_checkpoint *c, const char *name) {
    if (!c->n_tensors) return NULL;
    idf_st_tensor key = {.name = (char *)name};
    const idf_st_tensor *kp = &key;
    const idf_st_tensor **r = bsearch(&kp, c->tensors, c->n_tensors, sizeof *c->tensors, by_ptr_name);
    return r ? *r : NULL;
}
