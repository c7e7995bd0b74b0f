/*
 * test_safetensors.c - the converter's safetensors reader (tools/convert/
 * safetensors.h): well-formed single files and sharded checkpoints are read
 * with the right names, dtypes, shapes and bytes; hand-made lying headers are
 * each refused with IDEFICS_ERR_BAD_CHECKPOINT and a message naming the file and
 * the tensor and saying what is wrong.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idefics.h"
#include "platform.h"
#include "safetensors.h"

#include "check.h"

/* A safetensors image: u64 header length, the header, data_len bytes of data
 * (byte i of the data area is (i * 7 + 1) & 255). */
static uint8_t *make_file(const char *header, size_t data_len, size_t *size) {
    size_t hl = strlen(header);
    *size = 8 + hl + data_len;
    uint8_t *b = malloc(*size);
    idf_wr64(b, hl);
    memcpy(b + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) b[8 + hl + i] = (uint8_t)(i * 7 + 1);
    return b;
}

static void write_file(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    fclose(f);
}

static void write_st(const char *dir, const char *name, const char *header, size_t data_len) {
    char path[512];
    size_t size;
    uint8_t *b = make_file(header, data_len, &size);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, b, size);
    free(b);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, text, strlen(text));
}

/* ---------------------------------------------------------- good files */

static void test_good_file(const char *tmp) {
    /* header padded with spaces, as the format allows; tensors out of offset order */
    const char *hdr = "{\"__metadata__\":{\"format\":\"pt\"},"
                      "\"b.bf16\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
                      "\"a.f32\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                      "\"c.pos\":{\"dtype\":\"I64\",\"shape\":[1,2],\"data_offsets\":[32,48]},"
                      "\"d.empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[48,48]},"
                      "\"e.scalar\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[48,52]}}       ";
    size_t size;
    uint8_t *b = make_file(hdr, 52, &size);
    idf_st_file f;
    char err[512] = "";
    int st = idf_st_parse(b, size, "mem.safetensors", &f, err, sizeof err);
    CHECK(st == 0, "good file refused: %s", err);
    if (st == 0) {
        CHECK(f.n_tensors == 5, "n_tensors %u", f.n_tensors);
        const idf_st_tensor *a = idf_st_find(&f, "a.f32"), *bt = idf_st_find(&f, "b.bf16");
        const idf_st_tensor *c = idf_st_find(&f, "c.pos"), *d = idf_st_find(&f, "d.empty");
        const idf_st_tensor *e = idf_st_find(&f, "e.scalar");
        CHECK(a && a->dtype == IDF_ST_F32 && a->n_dims == 2 && a->shape[0] == 2 && a->shape[1] == 3 &&
                  a->n_elements == 6 && a->nbytes == 24 && a->offset == f.data_start,
              "a.f32 fields");
        CHECK(bt && bt->dtype == IDF_ST_BF16 && bt->offset == f.data_start + 24 && bt->nbytes == 8, "b.bf16 fields");
        CHECK(c && c->dtype == IDF_ST_I64 && idf_st_dtype_size(c->dtype) == 8, "c.pos fields");
        CHECK(d && d->n_elements == 0 && d->nbytes == 0, "empty tensor");
        CHECK(e && e->n_dims == 0 && e->n_elements == 1, "scalar tensor");
        CHECK(!idf_st_find(&f, "__metadata__") && !idf_st_find(&f, "zzz"), "find of absent names");
        CHECK(f.data_start == 8 + strlen(hdr), "data_start");
        if (bt) CHECK(idf_st_data(&f, bt)[0] == (uint8_t)(24 * 7 + 1), "data bytes of b.bf16");
        idf_st_close(&f);
    }
    /* the same from disk, through idf_map_file */
    char path[512];
    snprintf(path, sizeof path, "%s/one.safetensors", tmp);
    write_file(path, b, size);
    st = idf_st_open(path, &f, err, sizeof err);
    CHECK(st == 0 && f.n_tensors == 5, "open from disk: %s", err);
    if (st == 0) {
        const idf_st_tensor *a = idf_st_find(&f, "a.f32");
        CHECK(a && !memcmp(idf_st_data(&f, a), b + f.data_start, 24), "mapped bytes");
        idf_st_close(&f);
    }
    st = idf_st_open("/nonexistent/x.safetensors", &f, err, sizeof err);
    CHECK(st == IDEFICS_ERR_IO && strstr(err, "/nonexistent/x.safetensors"), "missing file: %d %s", st, err);
    free(b);
}

/* ----------------------------------------------------- lying headers */

typedef struct lie {
    const char *what;
    const char *header;   /* NULL: use raw bytes below */
    size_t data_len;
    const char *expect;   /* substring of the message */
} lie;

static void test_lying_headers(void) {
    static const lie lies[] = {
        {"unknown dtype", "{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "'w': unknown dtype 'Q4'"},
        {"size mismatch", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24,
         "'w': F32 shape needs 24 bytes but data_offsets give 20"},
        {"end past data", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 12,
         "'w': data_offsets [0, 16] outside the data area of 12 bytes"},
        {"begin after end", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 12, "'w': data_offsets [8, 4]"},
        {"overlap",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "tensor 'b' overlaps tensor 'a'"},
        {"duplicate",
         "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "tensor 'a' appears twice"},
        {"negative dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "'w': shape[0] is not a non-negative integer"},
        {"fractional dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
         "'w': shape[0] is not a non-negative integer"},
        {"string dim", "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}}", 4,
         "'w': shape[0] is not"},
        {"shape product overflow",
         "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,2],\"data_offsets\":[0,4]}}", 4,
         "'w': shape product overflows"},
        {"byte size overflow", "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,1073741824],\"data_offsets\":[0,4]}}",
         4, "'w': byte size overflows"},
        {"huge offset", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[1e300,1e300]}}", 4,
         "'w': data_offsets must be two non-negative integers"},
        {"three offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,8]}}", 8,
         "'w': data_offsets must be two"},
        {"missing dtype", "{\"w\":{\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "'w': needs string 'dtype'"},
        {"entry not an object", "{\"w\":[1,2,3]}", 4, "'w': entry is not a JSON object"},
        {"too many dims",
         "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1, "'w': 9 dimensions"},
        {"metadata not strings", "{\"__metadata__\":{\"a\":1}}", 0, "__metadata__ value 'a' is not a string"},
        {"invalid JSON", "{\"w\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}", 4, "not valid JSON"},
        {"trailing bytes", "{}xx", 0, "bytes after the header's JSON object"},
        {"not an object", "[1,2]", 0, "does not start with '{'"},
        {"empty name", "{\"\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "empty name"},
    };
    for (size_t i = 0; i < sizeof lies / sizeof lies[0]; i++) {
        size_t size;
        uint8_t *b = make_file(lies[i].header, lies[i].data_len, &size);
        idf_st_file f;
        char err[512] = "";
        int st = idf_st_parse(b, size, "liar.safetensors", &f, err, sizeof err);
        CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT, "%s: status %d (%s)", lies[i].what, st, err);
        CHECK(strstr(err, lies[i].expect) != NULL, "%s: message '%s' lacks '%s'", lies[i].what, err, lies[i].expect);
        CHECK(strstr(err, "liar.safetensors") != NULL, "%s: message '%s' does not name the file", lies[i].what, err);
        CHECK(f.n_tensors == 0 && f.tensors == NULL, "%s: *f not cleared on failure", lies[i].what);
        if (st == 0) idf_st_close(&f);
        free(b);
    }
    /* header length lies, written by hand */
    uint8_t small[32];
    memset(small, ' ', sizeof small);
    idf_st_file f;
    char err[512];
    struct {
        const char *what;
        uint64_t hlen;
        size_t size;
        const char *expect;
    } lens[] = {
        {"file shorter than 8 bytes", 0, 5, "too short"},
        {"header over 100 MB", 200000000ull, 32, "exceeds the 100000000-byte limit"},
        {"header past the end", 25, 32, "header length 25 does not fit in the file of 32 bytes"},
        {"2^64 - 1 header", UINT64_MAX, 32, "exceeds"},
        {"zero header", 0, 32, "does not fit"},
    };
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        idf_wr64(small, lens[i].hlen);
        small[8] = '{';
        int st = idf_st_parse(small, lens[i].size, "len.safetensors", &f, err, sizeof err);
        CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, lens[i].expect) && strstr(err, "len.safetensors"),
              "%s: status %d message '%s'", lens[i].what, st, err);
    }
}

/* ------------------------------------------------------------- shards */

static void test_checkpoints(const char *tmp) {
    char dir[512], err[512] = "";
    idf_st_checkpoint c;
    int st;

    /* two shards and an index */
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    mkdir(dir, 0755);
    write_st(dir, "model-00001-of-00002.safetensors",
             "{\"x.weight\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,8]},"
             "\"y.weight\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[8,14]}}",
             14);
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"z.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    write_text(dir, "model.safetensors.index.json",
               "{\"metadata\":{\"total_size\":18},\"weight_map\":{"
               "\"x.weight\":\"model-00001-of-00002.safetensors\",\"y.weight\":\"model-00001-of-00002.safetensors\","
               "\"z.weight\":\"model-00002-of-00002.safetensors\"}}");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == 0, "sharded checkpoint refused: %s", err);
    if (st == 0) {
        CHECK(c.n_files == 2 && c.n_tensors == 3, "files %u tensors %u", c.n_files, c.n_tensors);
        const idf_st_tensor *z = idf_st_checkpoint_find(&c, "z.weight");
        CHECK(z && z->file == 1 && strstr(idf_st_checkpoint_file(&c, z)->path, "00002"), "z in shard 2");
        const idf_st_tensor *y = idf_st_checkpoint_find(&c, "y.weight");
        CHECK(y && y->dtype == IDF_ST_F16 && idf_st_data(idf_st_checkpoint_file(&c, y), y)[0] == (uint8_t)(8 * 7 + 1),
              "y bytes");
        CHECK(!idf_st_checkpoint_find(&c, "w.weight"), "absent name found");
        idf_st_checkpoint_close(&c);
    }

    /* the index puts a tensor in the wrong shard */
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"x.weight\":\"model-00002-of-00002.safetensors\","
               "\"z.weight\":\"model-00002-of-00002.safetensors\",\"y.weight\":\"model-00001-of-00002.safetensors\"}}");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "'x.weight' is not in model-00002-of-00002.safetensors"),
          "wrong shard in index: %d %s", st, err);

    /* the index names a shard outside the folder */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"x.weight\":\"../evil.safetensors\"}}");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "weight_map['x.weight']"), "path in index: %d %s", st, err);

    /* the index names a missing shard */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\":{\"x.weight\":\"model-00009.safetensors\"}}");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_IO && strstr(err, "model-00009.safetensors"), "missing shard: %d %s", st, err);

    /* the index is not JSON */
    write_text(dir, "model.safetensors.index.json", "{weight_map");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "weight_map"), "bad index: %d %s", st, err);

    /* the same tensor in two shards */
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"x.weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\":{\"x.weight\":\"model-00001-of-00002.safetensors\","
               "\"y.weight\":\"model-00002-of-00002.safetensors\"}}");
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "'x.weight' is in both"), "duplicate across shards: %d %s",
          st, err);

    /* a lying shard is reported with its path */
    write_st(dir, "model-00002-of-00002.safetensors",
             "{\"q.weight\":{\"dtype\":\"F32\",\"shape\":[9],\"data_offsets\":[0,4]}}", 4);
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "model-00002-of-00002.safetensors: tensor 'q.weight'"),
          "lying shard: %d %s", st, err);

    /* single file, no index */
    snprintf(dir, sizeof dir, "%s/single", tmp);
    mkdir(dir, 0755);
    write_st(dir, "model.safetensors", "{\"only\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4);
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == 0 && c.n_tensors == 1 && idf_st_checkpoint_find(&c, "only"), "single file: %s", err);
    if (st == 0) idf_st_checkpoint_close(&c);

    /* nothing there */
    snprintf(dir, sizeof dir, "%s/empty", tmp);
    mkdir(dir, 0755);
    st = idf_st_checkpoint_open(dir, &c, err, sizeof err);
    CHECK(st == IDEFICS_ERR_BAD_CHECKPOINT && strstr(err, "no model.safetensors"), "empty folder: %d %s", st, err);
}

int main(void) {
    char tmp[] = "/tmp/idefics-test-st-XXXXXX";
    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        return 1;
    }
    test_good_file(tmp);
    test_lying_headers();
    test_checkpoints(tmp);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", tmp);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all safetensors checks passed\n");
    return 0;
}
