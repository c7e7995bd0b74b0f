/*
 * repack.c - re-encode an IDFX file with other writer options (repack.h).
 *
 * Tensors are decoded one at a time (chunks in parallel) into a buffer reused
 * across tensors and handed to the writer, so memory stays at about the largest
 * tensor plus the writer's batch buffers, never the whole model. Tensors stored
 * raw, unfiltered and contiguous are passed straight from the mapping.
 */
#include "repack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idfx_reader.h"
#include "platform.h"

typedef struct decode_ctx {
    const idfx_file *f;
    const idfx_tensor *t;
    uint8_t *dst;
    idf_err *errs; /* one per chunk; first failing chunk reported */
    idefics_status *st;
} decode_ctx;

static void decode_task(void *ctx, int64_t i, int thread_id) {
    (void)thread_id;
    decode_ctx *c = ctx;
    const idfx_chunk *ch = &c->t->chunks[i];
    c->st[i] = idfx_decode_chunk(c->f, c->t, (uint32_t)i, c->dst + ch->raw_offset, true, &c->errs[i]);
}

/* true when the tensor's bytes can be used in place: one run of raw chunks. */
static bool contiguous_raw(const idfx_tensor *t) {
    for (uint32_t i = 0; i < t->n_chunks; i++) {
        const idfx_chunk *c = &t->chunks[i];
        if (c->codec != IDFX_CODEC_RAW || c->filter != IDFX_FILTER_NONE) return false;
        if (i > 0 && c->offset != t->chunks[0].offset + c->raw_offset) return false;
    }
    return true;
}

int idfx_repack(const char *in, const char *out, const idfx_writer_opts *o, char *err, size_t errsz) {
    idf_mapping m;
    idfx_file f;
    idf_err e;
    idf_err_clear(&e);
    int rc = -1;
    if (!strcmp(in, out)) {
        snprintf(err, errsz, "repack: input and output are the same file");
        return -1;
    }
    int r = idf_map_file(in, &m);
    if (r != 0) {
        snprintf(err, errsz, "%s: cannot open: %s", in, idf_open_strerror(r));
        return -1;
    }
    idefics_status st = idfx_open(&f, m.data, m.size, NULL, &e);
    if (st != IDEFICS_OK) {
        snprintf(err, errsz, "%s: %s: %s", in, idefics_status_str(st), e.msg);
        idf_unmap_file(&m);
        return -1;
    }
    idfx_writer *w = idfx_writer_open(out, o, err, errsz);
    idf_pool *pool = NULL;
    uint8_t *buf = NULL;
    uint64_t buf_size = 0;
    idf_err *errs = NULL;
    idefics_status *sts = NULL;
    uint32_t max_chunks = 0;
    if (!w) goto done;
    for (uint32_t i = 0; i < f.n_kv; i++) {
        const idfx_kv *kv = &f.kv[i];
        if (idfx_writer_kv_raw(w, kv->key, kv->type, kv->elem_type, kv->count, kv->value, kv->value_size)) {
            snprintf(err, errsz, "%s", idfx_writer_error(w));
            goto done;
        }
    }
    for (uint32_t i = 0; i < f.n_tensors; i++)
        if (f.tensors[i].n_chunks > max_chunks) max_chunks = f.tensors[i].n_chunks;
    errs = calloc(max_chunks ? max_chunks : 1, sizeof *errs);
    sts = calloc(max_chunks ? max_chunks : 1, sizeof *sts);
    pool = idf_pool_create(o ? o->n_threads : 0, NULL, NULL, NULL);
    if (!errs || !sts || !pool) {
        snprintf(err, errsz, "out of memory");
        goto done;
    }
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const idfx_tensor *t = &f.tensors[i];
        const void *data;
        if (contiguous_raw(t)) {
            /* checksums are still checked: a repack must not launder a damaged file */
            for (uint32_t c = 0; c < t->n_chunks; c++) {
                st = idfx_verify_chunk(&f, t, c, &e);
                if (st != IDEFICS_OK) {
                    snprintf(err, errsz, "%s: %s: %s", in, idefics_status_str(st), e.msg);
                    goto done;
                }
            }
            data = m.data + t->chunks[0].offset;
        } else {
            if (t->nbytes > buf_size) {
                if (t->nbytes > SIZE_MAX) {
                    snprintf(err, errsz, "tensor '%s' too large for memory", t->name);
                    goto done;
                }
                free(buf);
                buf = malloc((size_t)t->nbytes);
                if (!buf) {
                    buf_size = 0;
                    snprintf(err, errsz, "tensor '%s': out of memory (%llu bytes)", t->name,
                             (unsigned long long)t->nbytes);
                    goto done;
                }
                buf_size = t->nbytes;
            }
            decode_ctx dc = {&f, t, buf, errs, sts};
            idf_pool_run(pool, t->n_chunks, decode_task, &dc);
            for (uint32_t c = 0; c < t->n_chunks; c++)
                if (sts[c] != IDEFICS_OK) {
                    snprintf(err, errsz, "%s: %s: %s", in, idefics_status_str(sts[c]), errs[c].msg);
                    goto done;
                }
            data = buf;
        }
        if (idfx_writer_add_tensor(w, t->name, t->type, t->layout, t->layout_param, t->n_dims, t->dims, data,
                                   t->nbytes)) {
            snprintf(err, errsz, "%s", idfx_writer_error(w));
            goto done;
        }
    }
    rc = idfx_writer_close(w, err, errsz);
    w = NULL;
done:
    if (w) idfx_writer_abort(w);
    idf_pool_free(pool);
    free(buf);
    free(errs);
    free(sts);
    idfx_close(&f);
    idf_unmap_file(&m);
    return rc;
}
