/*
 * integrity.c - whole-file verification and the verified-file stamp
 * (integrity.h, issue 15).
 *
 * Why at load: a model with flipped bits in its chunks still "works" and
 * answers garbage with exit 0, and a Q4 layer whose scales are NaN answers
 * replacement characters. Checking costs one read of the file, so it runs on
 * the first load of a file (and when its identity changes), spread over the
 * load's thread pool, and a stamp in the cache folder remembers the result.
 *
 * Speed: a raw (zero-copy) chunk is hashed in slices of whole tiles small
 * enough to stay in L2, and each slice's fp16 scales are checked right after
 * it is hashed, so the file is streamed from memory once.
 */
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include "integrity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "cpu_features.h"
#include "quant.h"

#define U64(x) ((unsigned long long)(x))
#define SLICE_BYTES (256u << 10) /* hashed then scanned while still in L2 */

/* ------------------------------------------------------------ scales */

/* An fp16 is NaN or infinite when its exponent bits are all ones. */
static inline bool fp16_nonfinite(const uint8_t *p) { return (p[1] & 0x7c) == 0x7c; }

typedef struct scale_scan {
    uint64_t bad;       /* non-finite scales seen */
    uint64_t total;     /* scales seen */
    uint64_t first_row; /* row and group of the first bad one */
    uint64_t first_group;
} scale_scan;

/* Count the non-finite scales in whole tiles [tile0, tile0 + n_tiles) of a
 * tiled Q4/Q8 tensor, whose bytes start at `tiles` (the first of them). */
static void scan_tiles(const idfx_tensor *t, const uint8_t *tiles, uint64_t tile0, uint64_t n_tiles, scale_scan *s) {
    const uint32_t r = t->layout_param;
    const uint64_t ng = t->dims[1] / IDFX_QK, rows = t->dims[0];
    const uint32_t qb = t->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    const uint64_t tile_bytes = ng * r * (IDFX_SCALE_BYTES + qb);
    const bool grouped = t->layout == IDFX_LAYOUT_GROUPTILE;
    for (uint64_t ti = 0; ti < n_tiles; ti++) {
        const uint8_t *tile = tiles + ti * tile_bytes;
        uint64_t bad = 0;
        for (uint64_t g = 0; g < ng; g++) {
            /* ROWTILE: all scales first, d[g][r] at (g*R + r)*2; GROUPTILE: block g starts with its R scales */
            const uint8_t *sc = grouped ? tile + g * r * (IDFX_SCALE_BYTES + qb) : tile + g * r * IDFX_SCALE_BYTES;
            for (uint32_t k = 0; k < r; k++) bad += fp16_nonfinite(sc + 2 * k);
        }
        s->total += ng * r;
        if (!bad) continue;
        if (s->bad == 0) { /* locate the first one (rare path) */
            for (uint64_t g = 0; g < ng && s->bad == 0; g++) {
                const uint8_t *sc = grouped ? tile + g * r * (IDFX_SCALE_BYTES + qb) : tile + g * r * IDFX_SCALE_BYTES;
                for (uint32_t k = 0; k < r; k++)
                    if (fp16_nonfinite(sc + 2 * k)) {
                        s->first_row = (tile0 + ti) * r + k;
                        s->first_group = g;
                        break;
                    }
            }
            if (s->first_row >= rows) s->first_row = rows - 1; /* padding rows of the last tile */
        }
        s->bad += bad;
    }
}

static bool has_scales(const idfx_tensor *t) {
    return (t->type == IDFX_TYPE_Q4 || t->type == IDFX_TYPE_Q8) && idfx_layout_tiled(t->layout) && t->n_dims == 2;
}

static uint64_t tile_bytes_of(const idfx_tensor *t) {
    uint64_t nb = 0, unit = 0;
    if (!idfx_tensor_nbytes(t->type, t->layout, t->layout_param, t->n_dims, t->dims, &nb, &unit)) return 0;
    return unit;
}

static idefics_status scales_result(const idfx_tensor *t, uint32_t chunk, const scale_scan *s, idf_err *err) {
    if (!s->bad) return IDEFICS_OK;
    return idf_errf(err, IDEFICS_ERR_CORRUPT,
                    "tensor '%s' chunk %u: %llu of %llu fp16 scales are NaN or infinite (first: row %llu, group %llu)",
                    t->name, chunk, U64(s->bad), U64(s->total), U64(s->first_row), U64(s->first_group));
}

/* Scan one chunk's decoded bytes. raw_offset is a multiple of the tile size:
 * the reader requires chunks of whole units. */
static idefics_status check_chunk_scales(const idfx_tensor *t, uint32_t chunk, const uint8_t *raw, idf_err *err) {
    const uint64_t tb = tile_bytes_of(t);
    if (!tb) return IDEFICS_OK;
    const idfx_chunk *ch = &t->chunks[chunk];
    scale_scan s = {0};
    scan_tiles(t, raw, ch->raw_offset / tb, ch->raw_size / tb, &s);
    return scales_result(t, chunk, &s, err);
}

/* ------------------------------------------------------------ hashing */

uint64_t idf_hash_slices(const uint8_t *src, uint64_t size, uint64_t slice, idf_slice_fn fn, void *ud) {
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (uint64_t off = 0; off < size; off += slice) {
        const uint64_t n = size - off < slice ? size - off : slice;
        XXH3_64bits_update(&st, src + off, (size_t)n);
        if (fn) fn(ud, src + off, off, n);
    }
    return XXH3_64bits_digest(&st);
}

typedef uint64_t (*hash_fn)(const uint8_t *, uint64_t, uint64_t, idf_slice_fn, void *);

static hash_fn pick_hash(void) {
#if defined(__x86_64__)
    idf_cpu_features cf;
    idf_cpu_detect(&cf);
    if (cf.avx2) return idf_hash_slices_avx2;
#endif
    return idf_hash_slices;
}

/* scan_tiles for one slice of a raw chunk (whole tiles) */
typedef struct slice_scan {
    const idfx_tensor *t;
    uint64_t tile_bytes, tile0;
    scale_scan s;
} slice_scan;

static void scan_slice(void *ud, const uint8_t *p, uint64_t off, uint64_t n) {
    slice_scan *ss = ud;
    scan_tiles(ss->t, p, ss->tile0 + off / ss->tile_bytes, n / ss->tile_bytes, &ss->s);
}

/* ------------------------------------------------------------ one chunk */

typedef struct vjob {
    uint32_t tensor, chunk;
} vjob;

typedef struct vctx {
    const idfx_file *f;
    const idfx_verify_opts *o;
    const vjob *jobs;
    idefics_status *st;
    idf_err *errs;   /* one per job: messages are kept for the report */
    uint8_t **bufs;  /* decode buffer per thread (o->decode) */
    hash_fn hash;
} vctx;

static idefics_status hash_mismatch(const idfx_tensor *t, uint32_t k, uint64_t want, uint64_t got, idf_err *err) {
    return idf_errf(err, IDEFICS_ERR_CHECKSUM, "tensor '%s' chunk %u: checksum %016llx, stored bytes hash to %016llx",
                    t->name, k, U64(want), U64(got));
}

static void verify_task(void *vc, int64_t i, int thread_id) {
    vctx *c = vc;
    const idfx_tensor *t = &c->f->tensors[c->jobs[i].tensor];
    const uint32_t k = c->jobs[i].chunk;
    const idfx_chunk *ch = &t->chunks[k];
    const uint8_t *src = c->f->base + ch->offset;
    const bool plain = ch->codec == IDFX_CODEC_RAW && ch->filter == IDFX_FILTER_NONE;
    const bool scales = c->o->scales && has_scales(t);
    const uint64_t tb = scales ? tile_bytes_of(t) : 0;
    idf_err *err = &c->errs[i];
    idefics_status st = IDEFICS_OK;
    if (plain && tb) {
        /* fused: hash a slice of whole tiles, then scan its scales while it is in cache */
        const uint64_t per = SLICE_BYTES / tb;
        const uint64_t slice = (per ? per : 1) * tb;
        slice_scan ss = {t, tb, ch->raw_offset / tb, {0}};
        if (c->o->checksums) {
            const uint64_t h = c->hash(src, ch->stored_size, slice, scan_slice, &ss);
            if (h != ch->checksum) st = hash_mismatch(t, k, ch->checksum, h, err);
        } else {
            for (uint64_t off = 0; off < ch->stored_size; off += slice)
                scan_slice(&ss, src + off, off, ch->stored_size - off < slice ? ch->stored_size - off : slice);
        }
        if (st == IDEFICS_OK) st = scales_result(t, k, &ss.s, err);
    } else if (c->o->checksums) {
        const uint64_t h = c->hash(src, ch->stored_size, SLICE_BYTES, NULL, NULL);
        if (h != ch->checksum) st = hash_mismatch(t, k, ch->checksum, h, err);
    }
    if (st == IDEFICS_OK && !plain && c->o->decode) {
        st = idfx_decode_chunk(c->f, t, k, c->bufs[thread_id], false, err);
        if (st == IDEFICS_OK && scales) st = check_chunk_scales(t, k, c->bufs[thread_id], err);
    }
    c->st[i] = st;
}

/* ------------------------------------------------------------ padding */

typedef struct range {
    uint64_t off, end;
} range;

static int cmp_range(const void *a, const void *b) {
    const range *x = a, *y = b;
    return x->off < y->off ? -1 : x->off > y->off;
}

static idefics_status check_gap(const idfx_file *f, uint64_t a, uint64_t b, idf_err *err) {
    for (uint64_t p = a; p < b; p++)
        if (f->base[p])
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "padding [%llu, %llu) is not zero: byte %llu is 0x%02x (docs/FORMAT.md: padding is zero)",
                            U64(a), U64(b), U64(p), f->base[p]);
    return IDEFICS_OK;
}

static idefics_status check_padding(const idfx_file *f, idfx_verify_report_fn report, void *ud, uint64_t *failed,
                                    idf_err *err) {
    uint64_t n = 4;
    for (uint32_t i = 0; i < f->n_tensors; i++) n += f->tensors[i].n_chunks;
    range *r = calloc((size_t)n, sizeof *r);
    if (!r) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory checking padding");
    uint64_t m = 0;
    r[m++] = (range){0, IDFX_HEADER_SIZE};
    const int offs[3][2] = {{IDFX_OFF_META_OFFSET, IDFX_OFF_META_SIZE},
                            {IDFX_OFF_DIR_OFFSET, IDFX_OFF_DIR_SIZE},
                            {IDFX_OFF_DATA_OFFSET, IDFX_OFF_DATA_SIZE}};
    for (int s = 0; s < 2; s++) { /* the data section is covered by its chunks and the gaps between them */
        const uint64_t o = idf_rd64(f->base + offs[s][0]), sz = idf_rd64(f->base + offs[s][1]);
        if (sz) r[m++] = (range){o, o + sz};
    }
    for (uint32_t i = 0; i < f->n_tensors; i++)
        for (uint32_t k = 0; k < f->tensors[i].n_chunks; k++) {
            const idfx_chunk *ch = &f->tensors[i].chunks[k];
            r[m++] = (range){ch->offset, ch->offset + ch->stored_size};
        }
    qsort(r, (size_t)m, sizeof *r, cmp_range);
    idefics_status first = IDEFICS_OK;
    uint64_t pos = 0;
    for (uint64_t j = 0; j <= m; j++) {
        const uint64_t next = j < m ? r[j].off : f->size;
        if (next > pos) {
            idf_err e;
            idefics_status st = check_gap(f, pos, next, &e);
            if (st != IDEFICS_OK) {
                (*failed)++;
                if (report) report(ud, st, e.msg);
                if (first == IDEFICS_OK) {
                    first = st;
                    *err = e;
                }
            }
        }
        if (j < m && r[j].end > pos) pos = r[j].end;
    }
    free(r);
    return first;
}

/* ------------------------------------------------------------ driver */

idefics_status idfx_verify(const idfx_file *f, idf_pool *pool, const idfx_verify_opts *o, idfx_verify_report_fn report,
                           void *report_ud, idfx_verify_stats *stats, idf_err *err) {
    idfx_verify_stats local = {0};
    idfx_verify_stats *sp = stats ? stats : &local;
    memset(sp, 0, sizeof *sp);
    const double t0 = idf_time_ms();
    uint64_t n = 0, max_raw = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++)
        for (uint32_t k = 0; k < f->tensors[i].n_chunks; k++) {
            const idfx_chunk *ch = &f->tensors[i].chunks[k];
            n++;
            sp->bytes += ch->stored_size;
            if ((ch->codec != IDFX_CODEC_RAW || ch->filter != IDFX_FILTER_NONE) && ch->raw_size > max_raw)
                max_raw = ch->raw_size;
        }
    const int nt = pool ? idf_pool_size(pool) : 1;
    sp->chunks = n;
    sp->threads = nt;
    if (n > SIZE_MAX / sizeof(idf_err)) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "too many chunks to verify");
    vjob *jobs = calloc(n ? (size_t)n : 1, sizeof *jobs);
    idefics_status *st = calloc(n ? (size_t)n : 1, sizeof *st);
    idf_err *errs = calloc(n ? (size_t)n : 1, sizeof *errs);
    uint8_t **bufs = calloc((size_t)nt, sizeof *bufs);
    idefics_status first = IDEFICS_OK;
    bool oom = !jobs || !st || !errs || !bufs;
    for (int i = 0; i < nt && !oom && o->decode && max_raw; i++)
        if (max_raw > SIZE_MAX || !(bufs[i] = malloc((size_t)max_raw))) oom = true;
    if (oom) {
        first = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory verifying %llu chunks", U64(n));
        goto done;
    }
    uint64_t j = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++)
        for (uint32_t k = 0; k < f->tensors[i].n_chunks; k++) jobs[j++] = (vjob){i, k};
    vctx c = {f, o, jobs, st, errs, bufs, pick_hash()};
    idf_pool_run(pool, (int64_t)n, verify_task, &c);
    for (j = 0; j < n; j++) {
        if (st[j] == IDEFICS_OK) continue;
        sp->failed++;
        if (report) report(report_ud, st[j], errs[j].msg);
        if (first == IDEFICS_OK) {
            first = st[j];
            if (err) *err = errs[j];
        }
    }
    if (o->padding) {
        idf_err pe;
        idefics_status ps = check_padding(f, report, report_ud, &sp->failed, &pe);
        if (ps != IDEFICS_OK && first == IDEFICS_OK) {
            first = ps;
            if (err) *err = pe;
        }
    }
done:
    for (int i = 0; bufs && i < nt; i++) free(bufs[i]);
    free(bufs);
    free(jobs);
    free(st);
    free(errs);
    sp->ms = idf_time_ms() - t0;
    return first;
}

idefics_status idfx_verify_decoded_scales(const idfx_file *f, idf_err *err) {
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        const idfx_tensor *t = &f->tensors[i];
        if (!has_scales(t) || !t->data) continue;
        for (uint32_t k = 0; k < t->n_chunks; k++) {
            const idfx_chunk *ch = &t->chunks[k];
            if (ch->codec == IDFX_CODEC_RAW && ch->filter == IDFX_FILTER_NONE) continue; /* seen by idfx_verify */
            IDF_FORWARD(check_chunk_scales(t, k, (const uint8_t *)t->data + ch->raw_offset, err));
        }
    }
    return IDEFICS_OK;
}

/* ------------------------------------------------------------ stamp */

void idf_stamp_init(idf_stamp *s, const char *cache_dir, const idf_mapping *map) {
    memset(s, 0, sizeof *s);
    const uint64_t hsum = map->size >= IDFX_HEADER_SIZE ? idf_rd64(map->data + IDFX_OFF_HEADER_CHECKSUM) : 0;
    snprintf(s->line, sizeof s->line, "idfx-verified 1 dev=%llu ino=%llu size=%llu mtime_ns=%lld header=%016llx\n",
             U64(map->dev), U64(map->ino), U64(map->size), (long long)map->mtime_ns, U64(hsum));
    char dir[900];
    if (cache_dir && cache_dir[0]) {
        if (snprintf(dir, sizeof dir, "%s", cache_dir) >= (int)sizeof dir) return;
    } else if (!idf_user_cache_dir(dir, sizeof dir)) {
        return;
    }
    char sub[960];
    if (snprintf(sub, sizeof sub, "%s/verified", dir) >= (int)sizeof sub) return;
    if (!idf_make_dirs(sub)) return;
    snprintf(s->path, sizeof s->path, "%s/%016llx.stamp", sub, U64(XXH3_64bits(s->line, strlen(s->line))));
}

bool idf_stamp_present(const idf_stamp *s) {
    char buf[sizeof s->line];
    if (!s->path[0]) return false;
    /* the content must match exactly: the name is only a hash of it */
    return idf_read_small_file(s->path, buf, sizeof buf) >= 0 && !strcmp(buf, s->line);
}

bool idf_stamp_write(const idf_stamp *s) {
    return s->path[0] && idf_write_file_atomic(s->path, s->line, strlen(s->line));
}
