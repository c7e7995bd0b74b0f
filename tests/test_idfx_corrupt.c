/*
 * test_idfx_corrupt.c - every file of the corrupt corpus (tests/corrupt/,
 * listed in EXPECTED.txt as "FILE STATUS") gives exactly its expected status
 * from idfx_open, or from idfx_materialize(verify) when the open succeeds, with
 * a non-empty message. Runs each file with and without a thread pool.
 */
#include "test_idfx_util.h"

static idefics_status run_one(const char *path, idf_pool *pool, char *msg, size_t msz) {
    idf_mapping m;
    idfx_file f;
    idf_err e;
    idf_err_clear(&e);
    int r = idf_map_file(path, &m);
    if (r != 0) {
        snprintf(msg, msz, "cannot map (errno %d)", r);
        return IDEFICS_ERR_IO;
    }
    idefics_status st = idfx_open(&f, m.data, m.size, NULL, &e);
    if (st == IDEFICS_OK) {
        st = idfx_materialize(&f, pool, true, &e);
        idfx_close(&f);
    } else {
        /* a failed open leaves nothing to close */
        CHECK(f.kv == NULL && f.tensors == NULL && f.strings == NULL, "%s: failed open left state behind", path);
    }
    idf_unmap_file(&m);
    snprintf(msg, msz, "%s", e.msg);
    return st;
}

int main(void) {
    const char *root = getenv("IDEFICS_SOURCE_ROOT");
    if (!root) {
        fprintf(stderr, "IDEFICS_SOURCE_ROOT not set (run through meson test)\n");
        return 77;
    }
    char dir[4096], list[4200];
    snprintf(dir, sizeof dir, "%s/tests/corrupt", root);
    snprintf(list, sizeof list, "%s/EXPECTED.txt", dir);
    FILE *fl = fopen(list, "r");
    if (!fl) {
        fprintf(stderr, "%s: cannot open\n", list);
        return 1;
    }
    idf_pool *pool = idf_pool_create(2, NULL, NULL, NULL);
    char line[512];
    int n = 0, n_ok = 0;
    while (fgets(line, sizeof line, fl)) {
        char name[256], want[128];
        if (line[0] == '#' || sscanf(line, "%255s %127s", name, want) != 2) continue;
        char path[4500], msg[IDF_ERRMSG_SIZE];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        for (int pass = 0; pass < 2; pass++) {
            idefics_status st = run_one(path, pass ? pool : NULL, msg, sizeof msg);
            CHECK(!strcmp(idefics_status_str(st), want), "%s: got %s (%s), expected %s", name, idefics_status_str(st),
                  msg, want);
            if (st != IDEFICS_OK) CHECK(msg[0] != '\0', "%s: empty message", name);
            if (pass == 0) printf("%-28s %-26s %s\n", name, idefics_status_str(st), msg);
        }
        n++;
        n_ok += !strcmp(want, "IDEFICS_OK");
    }
    fclose(fl);
    idf_pool_free(pool);
    CHECK(n >= 40, "only %d corpus entries", n);
    CHECK(n_ok >= 1, "no valid control file in the corpus");
    return finish("test_idfx_corrupt");
}
