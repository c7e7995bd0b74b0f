/*
 * test_board.c - board and memory profiles (runtime/board.c, boards/):
 * - every boards/NAME/ has a board.ini whose [defaults] resolves through
 *   boards/memory-profiles.ini, and every aarch64 board has a cross.ini;
 * - the profile arithmetic holds: F16 KV (0.5 MiB/token) + 5.0 GB of Q4
 *   weights fit the RAM class each non-low_memory profile is named for;
 * - explicit values: 4g pages weights with 512 tokens, raspberry-pi-5 gets
 *   the 8g profile plus its 4 threads and the cpu backend;
 * - bad files (unknown key, bad value, no profile, oversized) fail with
 *   IDEFICS_ERR_BAD_CONFIG naming file:line and leave the params untouched;
 *   unknown and path-like names fail with IDEFICS_ERR_INVALID_ARG.
 * Skips (77) without IDEFICS_SOURCE_ROOT.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idefics.h"

#include "check.h"

static bool exists(const char *dir, const char *name, const char *file) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s/%s/%s", dir, name, file) >= (int)sizeof p) return false;
    struct stat st;
    return stat(p, &st) == 0;
}

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

int main(void) {
    const char *root = getenv("IDEFICS_SOURCE_ROOT");
    if (!root) {
        printf("SKIP: IDEFICS_SOURCE_ROOT not set\n");
        return 77;
    }
    char boards[4096];
    if (snprintf(boards, sizeof boards, "%s/boards", root) >= (int)sizeof boards) {
        printf("SKIP: source path too long\n");
        return 77;
    }
    char err[512];

    /* every board resolves */
    DIR *d = opendir(boards);
    CHECK(d != NULL, "cannot open %s", boards);
    int n_boards = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "gpu") || !exists(boards, e->d_name, "")) continue;
        struct stat st;
        char p[4096];
        if (snprintf(p, sizeof p, "%s/%s", boards, e->d_name) >= (int)sizeof p) continue;
        if (stat(p, &st) || !S_ISDIR(st.st_mode)) continue;
        n_boards++;
        CHECK(exists(boards, e->d_name, "board.ini"), "%s has no board.ini", e->d_name);
        if (strcmp(e->d_name, "x86-64-linux"))
            CHECK(exists(boards, e->d_name, "cross.ini"), "%s has no cross.ini", e->d_name);
        idefics_model_params mp = idefics_model_default_params();
        idefics_session_params sp = idefics_session_default_params();
        idefics_status st2 = idefics_board_apply(boards, e->d_name, &mp, &sp, err, sizeof err);
        CHECK(st2 == IDEFICS_OK, "%s: %s", e->d_name, err);
        CHECK(sp.n_ctx >= 256 && sp.n_ctx <= 2048 && (sp.kv_type == IDEFICS_KV_F16 || sp.kv_type == IDEFICS_KV_Q8),
              "%s: n_ctx %d kv %d", e->d_name, sp.n_ctx, (int)sp.kv_type);
        /* low_memory pages through the mapping: idefics_model_load refuses it without one */
        CHECK(!(mp.low_memory && !mp.use_mmap), "%s: low_memory with use_mmap = 0 cannot load", e->d_name);
    }
    if (d) closedir(d);
    CHECK(n_boards >= 6, "only %d boards", n_boards);

    /* profile arithmetic: resident weights + KV within the RAM class, 1.5 GB left for the OS */
    static const struct {
        const char *name;
        double ram_gb;
    } classes[] = {{"8g", 8}, {"12g", 12}, {"16g", 16}, {"4g", 4}, {"6g", 6}, {"phone-8g", 8}};
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        idefics_model_params mp = idefics_model_default_params();
        idefics_session_params sp = idefics_session_default_params();
        CHECK(idefics_board_apply(boards, classes[i].name, &mp, &sp, err, sizeof err) == IDEFICS_OK, "%s: %s",
              classes[i].name, err);
        const double kv_gb = sp.n_ctx * 0.5 / 1024.0, weights_gb = mp.low_memory ? 0.5 : 5.0;
        CHECK(weights_gb + kv_gb + 0.1 <= classes[i].ram_gb - 1.5, "%s: %.2f GB weights + %.2f GB KV do not fit",
              classes[i].name, weights_gb, kv_gb);
    }

    /* explicit values */
    idefics_model_params mp = idefics_model_default_params();
    idefics_session_params sp = idefics_session_default_params();
    CHECK(idefics_board_apply(boards, "4g", &mp, &sp, err, sizeof err) == IDEFICS_OK, "4g: %s", err);
    CHECK(mp.low_memory && sp.n_ctx == 512, "4g: low_memory %d n_ctx %d", mp.low_memory, sp.n_ctx);
    mp = idefics_model_default_params();
    sp = idefics_session_default_params();
    CHECK(idefics_board_apply(boards, "raspberry-pi-5", &mp, &sp, err, sizeof err) == IDEFICS_OK, "pi5: %s", err);
    CHECK(!mp.low_memory && sp.n_ctx == 1024 && sp.n_threads == 4 && mp.n_threads == 4 &&
              mp.backend == IDEFICS_BACKEND_CPU,
          "pi5: low %d n_ctx %d threads %d backend %d", mp.low_memory, sp.n_ctx, sp.n_threads, (int)mp.backend);

    mp = idefics_model_default_params();
    CHECK(mp.use_mmap, "use_mmap is on by default");
    CHECK(idefics_board_apply(boards, "x86-64-linux", &mp, &sp, err, sizeof err) == IDEFICS_OK && !mp.use_mmap &&
              !mp.low_memory,
          "x86-64-linux: use_mmap %d low_memory %d (%s)", mp.use_mmap, mp.low_memory, err);

    /* parallel (issue 11): every profile says how many batch sessions fit; weights
     * + parallel x KV (+ 40 MiB scratch each) within the class, 1.5 GB for the OS */
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        idefics_batch_params bp = idefics_batch_default_params();
        bp.max_sessions = -1;
        idefics_model_params m3 = idefics_model_default_params();
        idefics_session_params s3 = idefics_session_default_params();
        CHECK(idefics_board_apply_batch(boards, classes[i].name, &bp, err, sizeof err) == IDEFICS_OK &&
                  idefics_board_apply(boards, classes[i].name, &m3, &s3, err, sizeof err) == IDEFICS_OK,
              "%s: %s", classes[i].name, err);
        const double kv_gb = s3.n_ctx * 0.5 / 1024.0 + 0.04, weights_gb = m3.low_memory ? 0.5 : 5.0;
        CHECK(bp.max_sessions >= 1 && weights_gb + bp.max_sessions * kv_gb <= classes[i].ram_gb - 1.5,
              "%s: parallel %d does not fit", classes[i].name, bp.max_sessions);
    }
    {
        idefics_batch_params bp = idefics_batch_default_params();
        CHECK(idefics_board_apply_batch(boards, "16g", &bp, err, sizeof err) == IDEFICS_OK && bp.max_sessions == 8,
              "16g: parallel %d", bp.max_sessions);
        CHECK(idefics_board_apply_batch(boards, "raspberry-pi-5", &bp, err, sizeof err) == IDEFICS_OK &&
                  bp.max_sessions == 2,
              "pi5 (8g): parallel %d", bp.max_sessions);
        bp.max_sessions = 5;
        CHECK(idefics_board_apply_batch(boards, "no-such-board", &bp, err, sizeof err) == IDEFICS_ERR_INVALID_ARG &&
                  bp.max_sessions == 5,
              "unknown board changed the batch params");
    }

    /* names */
    CHECK(idefics_board_apply(boards, "no-such-board", &mp, &sp, err, sizeof err) == IDEFICS_ERR_INVALID_ARG, "%s",
          err);
    CHECK(idefics_board_apply(boards, "../boards", &mp, &sp, err, sizeof err) == IDEFICS_ERR_INVALID_ARG, "%s", err);
    CHECK(idefics_board_apply(boards, "", &mp, &sp, err, sizeof err) == IDEFICS_ERR_INVALID_ARG, "%s", err);

    /* bad files in a scratch boards folder */
    char tmp[] = "/tmp/idefics-test-board-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL, "mkdtemp");
    char p[4096];
    snprintf(p, sizeof p, "%s/memory-profiles.ini", tmp);
    write_file(p, "[ok]\nn_ctx = 300\n[typo]\nn_ctxx = 300\n[badval]\nkv_type = f8\n[range]\nn_ctx = -5\n"
                  "[par]\nparallel = 0\n");
    snprintf(p, sizeof p, "%s/b", tmp);
    mkdir(p, 0700);
    snprintf(p, sizeof p, "%s/b/board.ini", tmp);
    write_file(p, "[notes]\nanything = goes here\n[defaults]\nprofile = ok   # comment\nlow_memory = 1\n");
    static const struct {
        const char *name;
        idefics_status want;
        const char *needle;
    } bad[] = {{"typo", IDEFICS_ERR_BAD_CONFIG, ":4: unknown key 'n_ctxx'"},
               {"badval", IDEFICS_ERR_BAD_CONFIG, ":6: bad value 'f8'"},
               {"range", IDEFICS_ERR_BAD_CONFIG, ":8: bad value '-5'"},
               {"par", IDEFICS_ERR_BAD_CONFIG, ":10: bad value '0' for parallel"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mp = idefics_model_default_params();
        sp = idefics_session_default_params();
        sp.n_ctx = 77;
        idefics_status st = idefics_board_apply(tmp, bad[i].name, &mp, &sp, err, sizeof err);
        CHECK(st == bad[i].want && strstr(err, bad[i].needle) && strstr(err, "memory-profiles.ini"),
              "%s: %d %s", bad[i].name, (int)st, err);
        CHECK(sp.n_ctx == 77, "%s: params changed on error", bad[i].name);
    }
    mp = idefics_model_default_params();
    sp = idefics_session_default_params();
    CHECK(idefics_board_apply(tmp, "b", &mp, &sp, err, sizeof err) == IDEFICS_OK, "b: %s", err);
    CHECK(sp.n_ctx == 300 && mp.low_memory, "b: n_ctx %d low %d (profile then board keys)", sp.n_ctx, mp.low_memory);
    write_file(p, "[defaults]\nlow_memory = 1\n");
    CHECK(idefics_board_apply(tmp, "b", &mp, &sp, err, sizeof err) == IDEFICS_ERR_BAD_CONFIG &&
              strstr(err, "profile"),
          "no profile: %s", err);
    /* an oversized file */
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("[defaults]\nprofile = ok\n", f);
        for (int i = 0; i < 70000; i++) fputc('#', f);
        fclose(f);
    }
    CHECK(idefics_board_apply(tmp, "b", &mp, &sp, err, sizeof err) == IDEFICS_ERR_BAD_CONFIG && strstr(err, "64 KiB"),
          "oversized: %s", err);
    unlink(p);
    snprintf(p, sizeof p, "%s/b", tmp);
    rmdir(p);
    snprintf(p, sizeof p, "%s/memory-profiles.ini", tmp);
    unlink(p);
    rmdir(tmp);

    printf("%d boards; %s\n", n_boards, failures ? "FAILED" : "all board checks passed");
    return failures ? 1 : 0;
}
