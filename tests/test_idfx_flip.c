/*
 * test_idfx_flip.c - flip every byte of a small valid file (tests/corrupt/
 * valid.idfx) one at a time, with three bit patterns, and run idfx_open +
 * idfx_materialize(verify) on the result. Nothing may crash, and a change to a
 * checksum-protected byte (header, metadata, directory, stored chunk bytes)
 * must never come back OK. Bytes that nothing protects (alignment padding) may
 * open fine, and then must decode to the original tensors.
 *
 * A second pass flips each byte of the header and index and then recomputes
 * the header and index checksums, so the damage reaches the structural checks
 * behind them: again nothing may crash, and every rejection has a message.
 */
#include <xxhash.h>

#include "test_idfx_util.h"

int main(void) {
    const char *root = getenv("IDEFICS_SOURCE_ROOT");
    if (!root) {
        fprintf(stderr, "IDEFICS_SOURCE_ROOT not set (run through meson test)\n");
        return 77;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/tests/corrupt/valid.idfx", root);
    idf_mapping m;
    idfx_file f;
    idf_err e;
    if (map_open(path, &m, &f, &e) != IDEFICS_OK) {
        fprintf(stderr, "%s: %s\n", path, e.msg);
        return 1;
    }
    if (idfx_materialize(&f, NULL, true, &e) != IDEFICS_OK) {
        fprintf(stderr, "%s: %s\n", path, e.msg);
        return 1;
    }
    uint64_t size = m.size;
    /* which bytes are protected, and the reference decoded tensors */
    uint8_t *prot = calloc(size, 1), *buf = malloc(size);
    uint64_t mo = idf_rd64(m.data + IDFX_OFF_META_OFFSET), ms = idf_rd64(m.data + IDFX_OFF_META_SIZE);
    uint64_t d0 = idf_rd64(m.data + IDFX_OFF_DIR_OFFSET), ds = idf_rd64(m.data + IDFX_OFF_DIR_SIZE);
    memset(prot, 1, IDFX_HEADER_SIZE);
    memset(prot + mo, 1, ms);
    memset(prot + d0, 1, ds);
    uint32_t n_t = f.n_tensors;
    uint8_t *ref[8];
    uint64_t ref_n[8];
    CHECK(n_t >= 2 && n_t <= 8, "unexpected tensor count %u", n_t);
    for (uint32_t i = 0; i < n_t && i < 8; i++) {
        const idfx_tensor *t = &f.tensors[i];
        for (uint32_t k = 0; k < t->n_chunks; k++) memset(prot + t->chunks[k].offset, 1, t->chunks[k].stored_size);
        ref[i] = malloc(t->nbytes);
        memcpy(ref[i], t->data, t->nbytes);
        ref_n[i] = t->nbytes;
    }
    idfx_close(&f);

    static const uint8_t pats[] = {0x01, 0x80, 0xFF};
    uint64_t tried = 0, rejected = 0;
    int st_seen[64] = {0};
    for (uint64_t pos = 0; pos < size; pos++)
        for (size_t pi = 0; pi < sizeof pats; pi++) {
            memcpy(buf, m.data, size);
            buf[pos] ^= pats[pi];
            tried++;
            idefics_status st = idfx_open(&f, buf, size, NULL, &e);
            if (st == IDEFICS_OK) {
                st = idfx_materialize(&f, NULL, true, &e);
                if (st == IDEFICS_OK && !prot[pos]) {
                    for (uint32_t i = 0; i < f.n_tensors && i < 8; i++)
                        CHECK(f.tensors[i].nbytes == ref_n[i] && !memcmp(f.tensors[i].data, ref[i], ref_n[i]),
                              "flip at %llu (padding) changed tensor %u", (unsigned long long)pos, i);
                }
                idfx_close(&f);
            }
            if (st != IDEFICS_OK) {
                rejected++;
                CHECK(e.msg[0] != '\0', "flip at %llu: empty message", (unsigned long long)pos);
                if (-st < 64) st_seen[-st]++;
            }
            CHECK(!prot[pos] || st != IDEFICS_OK, "flip 0x%02x at protected byte %llu accepted", pats[pi],
                  (unsigned long long)pos);
        }
    /* pass 2: structural damage behind valid checksums */
    uint64_t tried2 = 0, rejected2 = 0;
    for (uint64_t pos = 0; pos < size; pos++) {
        if (!prot[pos] || (pos >= IDFX_OFF_HEADER_CHECKSUM && pos < IDFX_HEADER_SIZE)) continue;
        bool in_chunk = pos >= IDFX_HEADER_SIZE && !(pos >= mo && pos < mo + ms) && !(pos >= d0 && pos < d0 + ds);
        if (in_chunk) continue;
        for (size_t pi = 0; pi < sizeof pats; pi++) {
            memcpy(buf, m.data, size);
            buf[pos] ^= pats[pi];
            if (pos >= IDFX_OFF_INDEX_CHECKSUM && pos < IDFX_OFF_INDEX_CHECKSUM + 8) continue;
            XXH3_state_t *xs = XXH3_createState();
            XXH3_64bits_reset(xs);
            XXH3_64bits_update(xs, buf + mo, ms);
            XXH3_64bits_update(xs, buf + d0, ds);
            idf_wr64(buf + IDFX_OFF_INDEX_CHECKSUM, XXH3_64bits_digest(xs));
            XXH3_freeState(xs);
            idf_wr64(buf + IDFX_OFF_HEADER_CHECKSUM, XXH3_64bits(buf, IDFX_OFF_HEADER_CHECKSUM));
            tried2++;
            idefics_status st = idfx_open(&f, buf, size, NULL, &e);
            if (st == IDEFICS_OK) {
                st = idfx_materialize(&f, NULL, true, &e);
                idfx_close(&f);
            }
            if (st != IDEFICS_OK) {
                rejected2++;
                CHECK(e.msg[0] != '\0', "fixed flip at %llu: empty message", (unsigned long long)pos);
                if (-st < 64) st_seen[-st]++;
            }
        }
    }
    printf("checksum-fixed flips: %llu, %llu rejected\n", (unsigned long long)tried2, (unsigned long long)rejected2);
    CHECK(rejected2 > tried2 / 2, "structural flips mostly accepted (%llu of %llu rejected)",
          (unsigned long long)rejected2, (unsigned long long)tried2);
    printf("%llu flips, %llu rejected:", (unsigned long long)tried, (unsigned long long)rejected);
    for (int i = 0; i < 64; i++)
        if (st_seen[i]) printf(" %s=%d", idefics_status_str((idefics_status)-i), st_seen[i]);
    printf("\n");
    for (uint32_t i = 0; i < n_t && i < 8; i++) free(ref[i]);
    free(prot);
    free(buf);
    idf_unmap_file(&m);
    return finish("test_idfx_flip");
}
