/*
 * make_faults.c - makes the damaged inputs of the fault suite (tests/faults/)
 * from good ones at test time, so no damaged binary is committed:
 *   make_faults nan-scales IN.idfx OUT.idfx     first Q4/Q8 tensor's first tile: every
 *                                               scale NaN, checksums valid (prints the name)
 *   make_faults flip IN.idfx OUT.idfx NBITS SEED  flip NBITS bits inside chunk bytes
 *   make_faults nan-weight FILE.safetensors NAME  element 0 of tensor NAME = NaN, 1 = +Inf
 *   make_faults socket PATH                     leave a Unix socket at PATH
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "idfx_reader.h"
#include "idfx_writer.h"
#include "quant.h"
#include "safetensors.h"

static int die(const char *what, const char *msg) {
    fprintf(stderr, "make_faults: %s: %s\n", what, msg);
    return 1;
}

static int open_idfx(const char *path, idf_mapping *m, idfx_file *f) {
    int r = idf_map_file(path, m);
    if (r) return die(path, idf_open_strerror(r));
    idf_err e;
    if (idfx_open(f, m->data, m->size, NULL, &e) != IDEFICS_OK) return die(path, e.msg);
    if (idfx_materialize(f, NULL, true, &e) != IDEFICS_OK) return die(path, e.msg);
    return 0;
}

static int nan_scales(const char *in, const char *out) {
    idf_mapping m;
    idfx_file f;
    if (open_idfx(in, &m, &f)) return 1;
    idfx_writer_opts o = idfx_writer_default_opts();
    o.codec = IDFX_CODEC_RAW; /* the damaged scales stay visible in the file */
    char err[512];
    idfx_writer *w = idfx_writer_open(out, &o, err, sizeof err);
    if (!w) return die(out, err);
    for (uint32_t i = 0; i < f.n_kv; i++) {
        const idfx_kv *kv = &f.kv[i];
        if (idfx_writer_kv_raw(w, kv->key, kv->type, kv->elem_type, kv->count, kv->value, kv->value_size))
            return die(out, idfx_writer_error(w));
    }
    const char *victim = NULL;
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const idfx_tensor *t = &f.tensors[i];
        const void *data = t->data;
        uint8_t *copy = NULL;
        if (!victim && (t->type == IDFX_TYPE_Q4 || t->type == IDFX_TYPE_Q8) && idfx_layout_tiled(t->layout)) {
            victim = t->name;
            copy = malloc((size_t)t->nbytes);
            if (!copy) return die(out, "out of memory");
            memcpy(copy, t->data, (size_t)t->nbytes);
            /* tile 0: ROWTILE keeps its ng*R scales first; GROUPTILE one run of R per group */
            const uint32_t r = t->layout_param, qb = t->type == IDFX_TYPE_Q4 ? 16 : 32;
            const uint64_t ng = t->dims[1] / 32;
            for (uint64_t g = 0; g < ng; g++)
                for (uint32_t k = 0; k < r; k++) {
                    uint8_t *sc = t->layout == IDFX_LAYOUT_GROUPTILE ? copy + g * r * (2 + qb) + 2 * k
                                                                     : copy + (g * r + k) * 2;
                    sc[0] = 0x00, sc[1] = 0x7e; /* fp16 quiet NaN */
                }
            data = copy;
        }
        int rc = idfx_writer_add_tensor(w, t->name, t->type, t->layout, t->layout_param, t->n_dims, t->dims, data,
                                        t->nbytes);
        free(copy);
        if (rc) return die(out, idfx_writer_error(w));
    }
    if (!victim) return die(in, "no Q4/Q8 tensor");
    if (idfx_writer_close(w, err, sizeof err)) return die(out, err);
    printf("%s\n", victim);
    idfx_close(&f);
    idf_unmap_file(&m);
    return 0;
}

static int flip(const char *in, const char *out, int nbits, unsigned seed) {
    idf_mapping m;
    idfx_file f;
    if (open_idfx(in, &m, &f)) return 1;
    uint8_t *buf = malloc((size_t)m.size);
    if (!buf) return die(in, "out of memory");
    memcpy(buf, m.data, (size_t)m.size);
    uint64_t total = 0;
    for (uint32_t i = 0; i < f.n_tensors; i++)
        for (uint32_t k = 0; k < f.tensors[i].n_chunks; k++) total += f.tensors[i].chunks[k].stored_size;
    srand(seed);
    for (int b = 0; b < nbits; b++) {
        /* a uniform byte of all chunk bytes, then its chunk */
        uint64_t pick = (((uint64_t)rand() << 31) ^ (uint64_t)rand()) % total;
        for (uint32_t i = 0; i < f.n_tensors; i++)
            for (uint32_t k = 0; k < f.tensors[i].n_chunks; k++) {
                const idfx_chunk *ch = &f.tensors[i].chunks[k];
                if (pick < ch->stored_size) {
                    buf[ch->offset + pick] ^= (uint8_t)(1u << (rand() % 8));
                    pick = UINT64_MAX;
                    goto next;
                }
                pick -= ch->stored_size;
            }
    next:;
    }
    FILE *o = fopen(out, "wb");
    if (!o || fwrite(buf, 1, (size_t)m.size, o) != m.size || fclose(o)) return die(out, "cannot write");
    free(buf);
    idfx_close(&f);
    idf_unmap_file(&m);
    return 0;
}

static int nan_weight(const char *path, const char *name) {
    idf_st_file sf;
    char err[512];
    if (idf_st_open(path, &sf, err, sizeof err)) return die(path, err);
    const idf_st_tensor *t = idf_st_find(&sf, name);
    if (!t || t->n_elements < 2) return die(name, "no such tensor with two elements");
    uint8_t bytes[8];
    size_t es;
    if (t->dtype == IDF_ST_F32) {
        es = 4;
        memcpy(bytes, (const uint8_t[]){0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0x80, 0x7f}, 8);
    } else if (t->dtype == IDF_ST_F16) {
        es = 2;
        memcpy(bytes, (const uint8_t[]){0x00, 0x7e, 0x00, 0x7c}, 4);
    } else if (t->dtype == IDF_ST_BF16) {
        es = 2;
        memcpy(bytes, (const uint8_t[]){0xc0, 0x7f, 0x80, 0x7f}, 4);
    } else {
        return die(name, "not a float tensor");
    }
    const uint64_t off = t->offset;
    idf_st_close(&sf);
    int fd = open(path, O_WRONLY);
    if (fd < 0 || pwrite(fd, bytes, 2 * es, (off_t)off) != (ssize_t)(2 * es) || close(fd)) return die(path, "write");
    return 0;
}

static int make_socket(const char *path) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof a.sun_path) return die(path, "path too long for a socket");
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a)) return die(path, "cannot bind");
    close(fd); /* the socket file stays */
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "nan-scales")) return nan_scales(argv[2], argv[3]);
    if (argc == 6 && !strcmp(argv[1], "flip")) return flip(argv[2], argv[3], atoi(argv[4]), (unsigned)atoi(argv[5]));
    if (argc == 4 && !strcmp(argv[1], "nan-weight")) return nan_weight(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "socket")) return make_socket(argv[2]);
    fprintf(stderr, "usage: make_faults nan-scales IN OUT | flip IN OUT NBITS SEED | nan-weight FILE NAME | "
                    "socket PATH\n");
    return 2;
}
