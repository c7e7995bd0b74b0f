/*
 * forward.c - the IDEFICS forward pass (forward.h), spec §3: vision tower ->
 * perceiver resampler -> per-image cross-attention K/V, and the LLaMA decoder
 * with a gated cross-attention block before every cross_interval-th layer.
 *
 * Every computation is an op of an idf_backend (backend.h); this file only
 * orders the ops and owns the buffers. An op the state's backend declines
 * (supports_op) runs on the reference backend instead.
 *
 * Buffers (all fp32 unless the KV type says otherwise):
 *   self-attention KV cache   kc, vc  [n_layers, n_ctx, hidden]   kv_type
 *   per image slot            latents [n_img_tokens, v_dim]
 *                             xk, xv  [n_cross, n_img_tokens, hidden]  kv_type
 *   text scratch              one chunk of up to n_batch tokens
 *   vision scratch            up to v_cap images (IDF_VISION_BATCH), stacked
 * The text pass runs in chunks of n_batch tokens, so scratch does not grow
 * with the prompt; the causal KV cache makes chunking exact.
 */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "backend_factory.h"
#include "forward.h"
#include "model.h"
#include "quant.h"

#define IDF_EVAL_BATCH 64 /* tokens per chunk: amortises weight dequantisation over this many rows */

typedef struct img_slot {
    float *latents; /* [n_img_tokens, v_dim] */
    void *xk, *xv;  /* [n_cross, n_img_tokens, hidden], kv_type */
} img_slot;

struct idf_state {
    const idefics_model *m;
    idf_alloc alloc;
    idf_backend *be;  /* the session's backend */
    idf_backend *ref; /* fallback for ops `be` declines (== be when be is the reference) */
    int n_ctx, n_past, n_batch;
    idefics_kv_type kv_type;
    size_t kv_elem; /* bytes per cached element; Q8: per block of IDFX_KVQ8_BLOCK (kv_bytes) */
    void *kc, *vc;  /* [n_layers, n_ctx, hidden] */
    bool low_mem;   /* model loaded with low_memory: page weights per layer (page_weight) */
    const atomic_int *cancel; /* C11 atomic: written by idefics_session_cancel from any thread */

    img_slot *img; /* [img_cap] */
    int n_img, img_cap;

    /* text scratch: [n_batch, hidden] unless noted */
    float *h, *x, *q, *k, *v, *att;
    float *g, *u; /* [n_batch, intermediate] */

    /* vision scratch for up to v_cap images stacked (image i owns rows
     * i*T .. i*T + T - 1; T = v_n_patches + 1 tokens, D = v_dim) */
    int v_cap;                          /* IDF_VISION_BATCH, or 1 with low_memory (state_create) */
    float *patches;                     /* [v_cap * T, channels * patch * patch]: a zero row, then patches */
    float *vx, *vy, *vq, *vk, *vv, *va; /* [v_cap * T, D] */
    float *vm;                          /* [v_cap * T, v_intermediate] */
    /* perceiver scratch, per image (L = p_latents, KV = T + L rows, E = p_heads * p_head_dim),
     * stacked v_cap times like the vision scratch */
    float *pz, *py; /* [L, D]; pz ends as the latents */
    float *pkv;     /* [KV, D]: normalised context then latents */
    float *pq, *pa; /* [L, E] */
    float *pk, *pv; /* [KV, E] */
    float *pm;      /* [L, 4 D] */
    float *lg;      /* batched passes: [n_batch, n_vocab] logits, made on first use */
    float *xtmp;    /* [v_cap * n_img_tokens, hidden]: one block's image K or V before storing */
};

/* ============================================================ op dispatch */

static idefics_status op_fail(const idf_backend *b, idf_err *err, idefics_status st, const char *op,
                              const char *what) {
    /* the backend's own account (device call, error code, kernel, sizes) where it keeps one */
    const char *detail = b && b->last_error ? b->last_error(b->ctx) : NULL;
    return idf_errf(err, st, "op %s on %s failed: %s%s%s", op, what, idefics_status_str(st),
                    detail && detail[0] ? ": " : "", detail && detail[0] ? detail : "");
}

/* A device backend may keep the registered scratch on the device between ops
 * (backend.h register_host): the host reads or writes it only after this. */
static idefics_status host_access(const idf_state *s, const void *p, size_t bytes, idf_err *err) {
    if (!s->be->host_access)
        return IDEFICS_OK;
    const idefics_status st = s->be->host_access(s->be->ctx, p, bytes);
    return st ? op_fail(s->be, err, st, "host_access", "activations") : IDEFICS_OK;
}

/* The backend to run op d: the session's own, unless it declines (then the
 * reference backend, after the session's results reach host memory). */
static idefics_status pick(const idf_state *s, const idf_op_desc *d, const idf_backend **b, idf_err *err) {
    *b = idf_backend_supports(s->be, d) ? s->be : s->ref;
    return *b == s->be ? IDEFICS_OK : host_access(s, NULL, 0, err);
}

#define SIMPLE_DESC(o) (&(idf_op_desc){.op = (o)})

static idefics_status mm(idf_state *s, const idf_weight *w, const float *bias, const float *x, int64_t n, float *y,
                         int64_t ldy, idf_err *err) {
    const idf_op_desc d = {
        .op = IDF_OP_MATMUL, .wtype = w->type, .wlayout = w->layout, .n = n, .m = w->rows, .k = w->cols};
    const idf_backend *b;
    IDF_FORWARD(pick(s, &d, &b, err));
    const idefics_status st = b->matmul(b->ctx, w, bias, x, n, y, ldy);
    return st ? op_fail(b, err, st, "matmul", w->name) : IDEFICS_OK;
}

static idefics_status rows_of(idf_state *s, const idf_weight *w, int32_t id, float *y, idf_err *err) {
    const idf_op_desc d = {.op = IDF_OP_GET_ROWS, .wtype = w->type, .wlayout = w->layout, .n = 1, .k = w->cols};
    const idf_backend *b;
    IDF_FORWARD(pick(s, &d, &b, err));
    const idefics_status st = b->get_rows(b->ctx, w, &id, 1, y);
    return st ? op_fail(b, err, st, "get_rows", w->name) : IDEFICS_OK;
}

static idefics_status rms(idf_state *s, const float *x, const float *w, float eps, int64_t n, int64_t dim, float *y,
                          idf_err *err) {
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_RMSNORM), &b, err));
    const idefics_status st = b->rmsnorm(b->ctx, x, w, eps, n, dim, y);
    return st ? op_fail(b, err, st, "rmsnorm", "activations") : IDEFICS_OK;
}

static idefics_status ln(idf_state *s, const float *x, const float *w, const float *bias, float eps, int64_t n,
                         int64_t dim, float *y, idf_err *err) {
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_LAYERNORM), &b, err));
    const idefics_status st = b->layernorm(b->ctx, x, w, bias, eps, n, dim, y);
    return st ? op_fail(b, err, st, "layernorm", "activations") : IDEFICS_OK;
}

static idefics_status attend(idf_state *s, const idf_attn *a, idf_err *err) {
    const idf_op_desc d = {.op = IDF_OP_ATTENTION, .kv_type = a->kv_type, .n = a->n_q, .m = a->n_kv, .k = a->head_dim};
    const idf_backend *b;
    IDF_FORWARD(pick(s, &d, &b, err));
    const idefics_status st = b->attention(b->ctx, a);
    return st ? op_fail(b, err, st, "attention", "activations") : IDEFICS_OK;
}

typedef enum { ACT_GELU, ACT_QUICK_GELU, ACT_RELU } act_kind;

static idefics_status act(idf_state *s, act_kind k, float *x, int64_t n, idf_err *err) {
    static const idf_op kind_op[] = {IDF_OP_GELU, IDF_OP_QUICK_GELU, IDF_OP_RELU};
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(kind_op[k]), &b, err));
    const idefics_status st = k == ACT_GELU         ? b->gelu(b->ctx, x, n)
                              : k == ACT_QUICK_GELU ? b->quick_gelu(b->ctx, x, n)
                                                    : b->relu(b->ctx, x, n);
    return st ? op_fail(b, err, st, "activation", "activations") : IDEFICS_OK;
}

static idefics_status silu_mul(idf_state *s, float *g, const float *u, int64_t n, idf_err *err) {
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_SILU_MUL), &b, err));
    const idefics_status st = b->silu_mul(b->ctx, g, u, n);
    return st ? op_fail(b, err, st, "silu_mul", "activations") : IDEFICS_OK;
}

static idefics_status add(idf_state *s, float *y, const float *x, int64_t n, idf_err *err) {
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_ADD), &b, err));
    const idefics_status st = b->add(b->ctx, y, x, n);
    return st ? op_fail(b, err, st, "add", "activations") : IDEFICS_OK;
}

static idefics_status gated_add(idf_state *s, float *h, const float *gate, const float *a, int64_t n, int64_t dim,
                                idf_err *err) {
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_GATED_ADD), &b, err));
    const idefics_status st = b->gated_add(b->ctx, h, gate, a, n, dim);
    return st ? op_fail(b, err, st, "gated_add", "activations") : IDEFICS_OK;
}

static idefics_status rope(idf_state *s, float *x, int64_t n, int pos0, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_backend *b;
    IDF_FORWARD(pick(s, SIMPLE_DESC(IDF_OP_ROPE), &b, err));
    const idefics_status st = b->rope(b->ctx, x, n, c->hidden, (int)c->n_heads, (int)c->head_dim, pos0, c->rope_theta);
    return st ? op_fail(b, err, st, "rope", "activations") : IDEFICS_OK;
}

/* ============================================================ low_memory paging
 *
 * With idefics_model_params.low_memory the weights are not kept resident: the
 * file stays mapped, and around each layer the pass tells the kernel what it
 * needs next (MADV_WILLNEED: read-ahead of layer l + 1 while layer l computes)
 * and what it has finished with (MADV_DONTNEED on layer l: clean file-backed
 * pages leave this process's RSS at once and stay in the page cache, which the
 * kernel reclaims first under pressure; MADV_PAGEOUT would evict them even
 * from the cache and force a re-read with memory to spare). Resident weights
 * stay around one layer instead of the whole model; each token then re-reads
 * whatever the cache lost, so this trades speed for fitting in RAM. Weights
 * that do not point into the mapping (decompressed chunks, fp32 copies) are
 * heap memory and are left alone. */

static void page_weight(const idf_state *s, const idf_weight *w, bool need) {
    const idf_mapping *map = &s->m->map;
    const uint8_t *p = w->data;
    if (!p || !map->data || p < map->data || p >= map->data + map->size)
        return;
    const uint64_t dims[2] = {(uint64_t)w->rows, (uint64_t)w->cols};
    uint64_t nbytes = 0, unit = 0;
    if (!idfx_tensor_nbytes(w->type, w->layout, w->tile_rows, 2, dims, &nbytes, &unit))
        return;
    const uint64_t off = (uint64_t)(p - map->data);
    if (!idf_range_ok(off, nbytes, map->size))
        return;
    if (need)
        idf_map_advise_willneed(map, off, nbytes);
    else
        idf_map_advise_dontneed(map, off, nbytes);
}

/* Decoder layer l and, when it has one, the gated cross-attention block before it. */
static void page_decoder_layer(const idf_state *s, uint32_t l, bool need) {
    const idf_config *c = &s->m->cfg;
    if (!s->low_mem || l >= c->n_layers)
        return;
    const idf_decoder_layer *L = &s->m->w->dl[l];
    const idf_weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
        page_weight(s, ws[i], need);
    if (c->n_cross && l % c->cross_interval == 0) {
        /* k and v of the cross blocks are used only when an image is added. */
        const idf_cross_block *B = &s->m->w->xb[l / c->cross_interval];
        const idf_weight *xs[] = {&B->q, &B->o, &B->gate, &B->up, &B->down};
        for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
            page_weight(s, xs[i], need);
    }
}

static void page_vision_layer(const idf_state *s, uint32_t l, bool need) {
    if (!s->low_mem || l >= s->m->cfg.v_layers)
        return;
    const idf_vision_layer *L = &s->m->w->vl[l];
    const idf_weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->fc1, &L->fc2};
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
        page_weight(s, ws[i], need);
}

/* Everything only an image needs: perceiver blocks and the cross blocks' k, v. */
static void page_image_only(const idf_state *s, bool need) {
    if (!s->low_mem)
        return;
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    page_weight(s, &w->patch, need);
    if (c->use_resampler)
        for (uint32_t b = 0; b < c->p_depth; b++) {
            const idf_perceiver_block *B = &w->pb[b];
            const idf_weight *ws[] = {&B->q, &B->k, &B->v, &B->o, &B->fc, &B->c_proj};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                page_weight(s, ws[i], need);
        }
    for (uint32_t j = 0; j < c->n_cross; j++) {
        page_weight(s, &w->xb[j].k, need);
        page_weight(s, &w->xb[j].v, need);
    }
}

static bool cancelled(const idf_state *s) {
    /* relaxed: the flag publishes no other data, it only has to be seen */
    return s->cancel && atomic_load_explicit(s->cancel, memory_order_relaxed);
}

/* Bytes of n cached elements. Every count passed here is a multiple of hidden,
 * which a Q8 cache requires to be a multiple of IDFX_KVQ8_BLOCK (checked at
 * create), so Q8 rows are whole blocks. */
static size_t kv_bytes(const idf_state *s, size_t n_elems) {
    if (s->kv_type == IDEFICS_KV_Q8)
        return n_elems / IDFX_KVQ8_BLOCK * IDFX_KVQ8_BYTES;
    return n_elems * s->kv_elem;
}

/* Store n rows of `dim` floats as kv_type elements at dst. */
static void store_kv(const idf_state *s, void *dst, const float *src, int64_t n_elems) {
    if (s->kv_type == IDEFICS_KV_Q8) {
        idfx_kvq8_quantize_ref(src, n_elems, dst);
    } else if (s->kv_type == IDEFICS_KV_F32) {
        memcpy(dst, src, (size_t)n_elems * sizeof(float));
    } else {
        idfx_fp32_to_fp16_row(src, dst, n_elems);
    }
}

/* ========================================================== state create */

/* Allocate `n` floats, adding the byte count to *total for the log line. */
static float *alloc_f(idf_state *s, uint64_t n, uint64_t *total) {
    size_t bytes;
    if (n > SIZE_MAX || !idf_mul_size((size_t)n, sizeof(float), &bytes))
        return NULL;
    *total += bytes;
    return idf_malloc(&s->alloc, bytes);
}

void idf_state_free(idf_state *s) {
    if (!s)
        return;
    const idf_alloc al = s->alloc;
    /* the backend first: it may hold device views of the buffers below */
    if (s->be && s->be->free)
        s->be->free(s->be);
    if (s->ref && s->ref != s->be && s->ref->free)
        s->ref->free(s->ref);
    for (int i = 0; i < s->img_cap; i++) {
        idf_free(&al, s->img[i].latents);
        idf_free(&al, s->img[i].xk);
        idf_free(&al, s->img[i].xv);
    }
    idf_free(&al, s->img);
    float *bufs[] = {s->h,  s->x,  s->q,  s->k,  s->v,  s->att, s->g,  s->u,  s->patches, s->vx, s->vy, s->vq,  s->vk,
                     s->vv, s->va, s->vm, s->pz, s->py, s->pkv, s->pq, s->pa, s->pk,      s->pv, s->pm, s->xtmp, s->lg};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        idf_free(&al, bufs[i]);
    idf_free(&al, s->kc);
    idf_free(&al, s->vc);
    idf_free(&al, s);
}

/* pass_only: the state of a batched pass (idf_state_create_pass): text
 * scratch for n_ctx rows, no KV cache and no vision scratch. */
static idefics_status state_create(const idefics_model *model, int n_ctx, idefics_kv_type kv_type, int n_threads,
                                   bool pass_only, idf_state **out, idf_err *err) {
    if (!out)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_create: out is NULL");
    *out = NULL;
    if (!model)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_create: model is NULL");
    const idf_config *c = &model->cfg;
    if (n_ctx <= 0 || (uint32_t)n_ctx > c->max_pos)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "n_ctx = %d is out of range [1, %u] (max_position_embeddings)",
                        n_ctx, c->max_pos);
    if (kv_type != IDEFICS_KV_F32 && kv_type != IDEFICS_KV_F16 && kv_type != IDEFICS_KV_Q8)
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "kv_type %d is not supported (F32, F16 and Q8 are)",
                        (int)kv_type);
    if (kv_type == IDEFICS_KV_Q8 && c->hidden % IDFX_KVQ8_BLOCK)
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "a Q8 KV cache needs hidden_size %u to be a multiple of %d",
                        c->hidden, IDFX_KVQ8_BLOCK);

    idf_state *s = idf_calloc(&model->alloc, 1, sizeof *s);
    if (!s)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the session state");
    s->m = model;
    s->alloc = model->alloc;
    s->n_ctx = n_ctx;
    s->kv_type = kv_type;
    s->kv_elem = kv_type == IDEFICS_KV_F32 ? 4 : kv_type == IDEFICS_KV_F16 ? 2 : IDFX_KVQ8_BYTES;
    s->n_batch = n_ctx < IDF_EVAL_BATCH ? n_ctx : IDF_EVAL_BATCH;
    s->low_mem = model->low_memory;

    idefics_status st = idf_backend_create_for_model(model, n_threads, &s->alloc, &s->be, err);
    if (st) {
        idf_state_free(s);
        return st;
    }
    s->ref = s->be;
    if (model->backend != IDEFICS_BACKEND_CPU_REF) { /* per-op fallback target */
        st = idf_backend_ref_create(n_threads, &s->alloc, &s->ref, err);
        if (st) {
            idf_state_free(s);
            return st;
        }
    }

    /* The config was range-checked at load (every dimension <= 2^20, T <= 2^24
     * + 1, v_cap <= IDF_VISION_BATCH), so the products below fit in 64 bits;
     * the size_t conversions are still checked for 32-bit hosts. */
    uint64_t total = 0;
    const uint64_t H = c->hidden, B = (uint64_t)s->n_batch;
    const uint64_t kv_elems = (uint64_t)c->n_layers * (uint64_t)n_ctx * H;
    bool ok = kv_elems <= SIZE_MAX / IDFX_KVQ8_BYTES; /* bounds every kv_bytes() below */
    size_t kv_bytes_all = ok && !pass_only ? kv_bytes(s, (size_t)kv_elems) : 0;
    if (ok && !pass_only) {
        s->kc = idf_malloc(&s->alloc, kv_bytes_all);
        s->vc = idf_malloc(&s->alloc, kv_bytes_all);
        total += 2 * (uint64_t)kv_bytes_all;
        ok = s->kc && s->vc;
    }
    s->h = alloc_f(s, B * H, &total);
    s->x = alloc_f(s, B * H, &total);
    s->q = alloc_f(s, B * H, &total);
    s->k = alloc_f(s, B * H, &total);
    s->v = alloc_f(s, B * H, &total);
    s->att = alloc_f(s, B * H, &total);
    s->g = alloc_f(s, B * c->intermediate, &total);
    s->u = alloc_f(s, B * c->intermediate, &total);

    /* Vision scratch for v_cap images, so a batch of images runs every weight
     * matmul once over all their rows (idf_state_add_images). Per image at
     * IDEFICS-9B's shapes (ViT-H/14 at 224: T 257, D 1280, v_intermediate
     * 5120; perceiver L 64, E 1536; hidden 4096) it is about 22 MiB: vision
     * 13.1 (patches 0.6, six [T, D] 7.5, vm 5.0), perceiver 8.0, xtmp 1.0.
     * IDF_VISION_BATCH 4 thus costs a session 66 MiB over one image's. A model
     * loaded with low_memory (RAM is the limit: phones) keeps one image's
     * scratch and encodes images one at a time. */
    s->v_cap = s->low_mem ? 1 : IDF_VISION_BATCH;
    const uint64_t VC = (uint64_t)s->v_cap;
    const uint64_t T = (uint64_t)c->v_n_patches + 1, D = c->v_dim;
    const uint64_t kdim = (uint64_t)c->v_channels * c->v_patch * c->v_patch;
    if (c->text_only || pass_only) /* no image path: no vision scratch */
        goto allocated;
    s->patches = alloc_f(s, VC * T * kdim, &total);
    s->vx = alloc_f(s, VC * T * D, &total);
    s->vy = alloc_f(s, VC * T * D, &total);
    s->vq = alloc_f(s, VC * T * D, &total);
    s->vk = alloc_f(s, VC * T * D, &total);
    s->vv = alloc_f(s, VC * T * D, &total);
    s->va = alloc_f(s, VC * T * D, &total);
    s->vm = alloc_f(s, VC * T * c->v_intermediate, &total);
    s->xtmp = alloc_f(s, VC * model->n_img_tokens * H, &total);
    ok = ok && s->h && s->x && s->q && s->k && s->v && s->att && s->g && s->u && s->patches && s->vx && s->vy &&
         s->vq && s->vk && s->vv && s->va && s->vm && s->xtmp;
    if (c->use_resampler) {
        const uint64_t L = VC * c->p_latents, KV = VC * (T + c->p_latents), E = (uint64_t)c->p_heads * c->p_head_dim;
        s->pz = alloc_f(s, L * D, &total);
        s->py = alloc_f(s, L * D, &total);
        s->pkv = alloc_f(s, KV * D, &total);
        s->pq = alloc_f(s, L * E, &total);
        s->pa = alloc_f(s, L * E, &total);
        s->pk = alloc_f(s, KV * E, &total);
        s->pv = alloc_f(s, KV * E, &total);
        s->pm = alloc_f(s, L * 4 * D, &total);
        ok = ok && s->pz && s->py && s->pkv && s->pq && s->pa && s->pk && s->pv && s->pm;
    }
allocated:
    ok = ok && s->h && s->x && s->q && s->k && s->v && s->att && s->g && s->u;
    if (!ok) {
        idf_state_free(s);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the session state (%.1f MiB, n_ctx %d)",
                        (double)total / (1024.0 * 1024.0), n_ctx);
    }
    /* the session's buffers, for a backend that keeps them on the device */
    float *bufs[] = {s->h,  s->x,  s->q,  s->k,  s->v,  s->att, s->g,  s->u,  s->patches, s->vx, s->vy, s->vq,  s->vk,
                     s->vv, s->va, s->vm, s->pz, s->py, s->pkv, s->pq, s->pa, s->pk,      s->pv, s->pm, s->xtmp};
    const uint64_t TD = VC * T * D, PL = VC * c->p_latents, PKV = VC * (T + c->p_latents);
    const uint64_t PE = (uint64_t)c->p_heads * c->p_head_dim;
    const uint64_t nfl[] = {B * H, B * H, B * H, B * H, B * H, B * H, B * c->intermediate, B * c->intermediate,
                            VC * T * kdim, TD, TD, TD, TD, TD, TD, VC * T * c->v_intermediate, PL * D, PL * D,
                            PKV * D, PL * PE, PL * PE, PKV * PE, PKV * PE, PL * 4 * D,
                            VC * model->n_img_tokens * H};
    st = IDEFICS_OK;
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] && st == IDEFICS_OK && s->be->register_host; i++)
        if (bufs[i])
            st = s->be->register_host(s->be->ctx, bufs[i], (size_t)nfl[i] * sizeof(float));
    if (st == IDEFICS_OK && s->be->register_host)
        st = s->be->register_host(s->be->ctx, s->kc, kv_bytes_all);
    if (st == IDEFICS_OK && s->be->register_host)
        st = s->be->register_host(s->be->ctx, s->vc, kv_bytes_all);
    if (st) {
        const char *bn = s->be->name; /* a static string */
        idf_state_free(s);
        return idf_errf(err, st, "the %s backend cannot map the session buffers: %s", bn, idefics_status_str(st));
    }
    idf_logf(&model->log, IDEFICS_LOG_DEBUG, "state: n_ctx %d, kv %s, %.1f MiB, backend %s", n_ctx,
             kv_type == IDEFICS_KV_F32 ? "f32" : kv_type == IDEFICS_KV_F16 ? "f16" : "q8", (double)total / (1024.0 * 1024.0), s->be->name);
    *out = s;
    return IDEFICS_OK;
}

idefics_status idf_state_create(const idefics_model *model, int n_ctx, idefics_kv_type kv_type, int n_threads,
                                idf_state **out, idf_err *err) {
    return state_create(model, n_ctx, kv_type, n_threads, false, out, err);
}

idefics_status idf_state_create_pass(const idefics_model *model, int rows, int n_threads, idf_state **out,
                                     idf_err *err) {
    if (rows <= 0 || rows > IDF_EVAL_BATCH)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "a batched pass takes 1 to %d rows, not %d", IDF_EVAL_BATCH,
                        rows);
    if (model && (uint32_t)rows > model->cfg.max_pos)
        rows = (int)model->cfg.max_pos;
    return state_create(model, rows, IDEFICS_KV_F32, n_threads, true, out, err);
}

void idf_state_reset(idf_state *s) {
    if (!s)
        return;
    s->n_past = 0;
    s->n_img = 0; /* slot buffers stay allocated for the next images */
}

int idf_state_n_past(const idf_state *s) {
    return s ? s->n_past : 0;
}
const char *idf_state_backend_name(const idf_state *s) {
    return s && s->be && s->be->name ? s->be->name : "?";
}
idf_backend *idf_state_backend(idf_state *s) {
    return s ? s->be : NULL;
}
int idf_state_n_ctx(const idf_state *s) {
    return s ? s->n_ctx : 0;
}
int idf_state_n_images(const idf_state *s) {
    return s ? s->n_img : 0;
}

void idf_state_truncate(idf_state *s, int n_past) {
    if (s && n_past >= 0 && n_past < s->n_past)
        s->n_past = n_past;
}

void idf_state_set_cancel_flag(idf_state *s, const atomic_int *flag) {
    if (s)
        s->cancel = flag;
}

const float *idf_state_image_latents(const idf_state *s, int slot) {
    if (!s || slot < 0 || slot >= s->n_img)
        return NULL;
    return s->img[slot].latents;
}

/* ========================================================== vision tower */

/* Cancelled: s's own flag, or that of a state t[i] an image of the chunk goes to
 * (polled per layer and block). */
static bool chunk_cancelled(const idf_state *s, idf_state *const *dst, int n) {
    for (int i = 0; dst && i < n; i++)
        if (cancelled(dst[i]))
            return true;
    return cancelled(s);
}

/* pixels[0 .. n-1], each [C, S, S] -> s->vx [n * T, D], the last hidden
 * states (spec §3.1), image i in rows i*T ..: every weight matmul runs once
 * over the n*T rows, attention once per image over its own T rows. Image i
 * goes to state t[i] (for the cancel flags only). */
static idefics_status vision_tower(idf_state *s, idf_state *const *t, const float *const *pixels, int n,
                                   idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    const int64_t D = c->v_dim, T = (int64_t)c->v_n_patches + 1, P = c->v_patch, S = c->v_image_size;
    const int64_t grid = S / P, kdim = (int64_t)c->v_channels * P * P, NT = n * T;

    /* Patch conv with stride = kernel = P and no bias, as a matmul over patches:
     * patch p = (row py, col px) flattened in the conv weight's (c, ky, kx) order.
     * Each image's patches follow a zero row where its class token goes, so one
     * matmul fills s->vx in the stacked layout (the row's output, zero, is
     * overwritten below; it costs 1/T more of this one matmul). */
    IDF_FORWARD(host_access(s, s->patches, (size_t)(NT * kdim) * sizeof(float), err));
    for (int i = 0; i < n; i++) {
        float *img = s->patches + i * T * kdim;
        memset(img, 0, (size_t)kdim * sizeof(float));
        for (int64_t py = 0; py < grid; py++)
            for (int64_t px = 0; px < grid; px++) {
                float *dst = img + (1 + py * grid + px) * kdim;
                for (int64_t ch = 0; ch < c->v_channels; ch++)
                    for (int64_t ky = 0; ky < P; ky++)
                        memcpy(dst + (ch * P + ky) * P, pixels[i] + (ch * S + py * P + ky) * S + px * P,
                               (size_t)P * sizeof(float));
            }
    }
    IDF_FORWARD(mm(s, &w->patch, NULL, s->patches, NT, s->vx, D, err));
    for (int i = 0; i < n; i++) {
        float *x = s->vx + i * T * D;
        IDF_FORWARD(host_access(s, x, (size_t)D * sizeof(float), err));
        memcpy(x, w->class_emb, (size_t)D * sizeof(float));
        /* Position ids are 0..T-1 (a stored position_ids buffer is ignored, pitfall P3). */
        IDF_FORWARD(add(s, x, w->pos_emb, T * D, err));
    }
    IDF_FORWARD(ln(s, s->vx, w->pre_ln_w, w->pre_ln_b, c->v_ln_eps, NT, D, s->vx, err));

    const int hd = (int)(D / c->v_heads);
    for (uint32_t l = 0; l < c->v_layers; l++) {
        if (chunk_cancelled(s, t, n))
            return idf_errf(err, IDEFICS_ERR_CANCELLED, "cancelled in vision layer %u", l);
        page_vision_layer(s, l + 1, true);
        if (l > 0)
            page_vision_layer(s, l - 1, false);
        const idf_vision_layer *L = &w->vl[l];
        IDF_FORWARD(ln(s, s->vx, L->ln1_w, L->ln1_b, c->v_ln_eps, NT, D, s->vy, err));
        IDF_FORWARD(mm(s, &L->q, L->q_b, s->vy, NT, s->vq, D, err));
        IDF_FORWARD(mm(s, &L->k, L->k_b, s->vy, NT, s->vk, D, err));
        IDF_FORWARD(mm(s, &L->v, L->v_b, s->vy, NT, s->vv, D, err));
        for (int i = 0; i < n; i++) { /* an image's tokens attend to its own tokens only */
            const int64_t o = i * T * D;
            const idf_attn a = {
                .n_q = (int)T,
                .n_kv = (int)T,
                .n_heads = (int)c->v_heads,
                .head_dim = hd,
                .q = s->vq + o,
                .q_stride = D,
                .k = s->vk + o,
                .v = s->vv + o,
                .kv_stride = D,
                .kv_type = IDEFICS_KV_F32,
                .scale = 1.0f / sqrtf((float)hd),
                .out = s->va + o,
                .out_stride = D,
            };
            IDF_FORWARD(attend(s, &a, err));
        }
        IDF_FORWARD(mm(s, &L->o, L->o_b, s->va, NT, s->vy, D, err));
        IDF_FORWARD(add(s, s->vx, s->vy, NT * D, err));
        IDF_FORWARD(ln(s, s->vx, L->ln2_w, L->ln2_b, c->v_ln_eps, NT, D, s->vy, err));
        IDF_FORWARD(mm(s, &L->fc1, L->fc1_b, s->vy, NT, s->vm, c->v_intermediate, err));
        IDF_FORWARD(act(s, c->v_gelu_exact ? ACT_GELU : ACT_QUICK_GELU, s->vm, NT * c->v_intermediate, err));
        IDF_FORWARD(mm(s, &L->fc2, L->fc2_b, s->vm, NT, s->vy, D, err));
        IDF_FORWARD(add(s, s->vx, s->vy, NT * D, err));
    }
    /* No post_layernorm: IDEFICS takes last_hidden_state. */
    return IDEFICS_OK;
}

/* ============================================================= perceiver */

/* contexts s->vx [n * T, D] -> s->pz [n * L, D], the latents of image i in
 * rows i*L .. (spec §3.2). Stacked like the vision tower: weight matmuls once
 * over all images' rows, attention per image. */
static idefics_status perceiver(idf_state *s, idf_state *const *t, int n, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    const int64_t D = c->v_dim, T = (int64_t)c->v_n_patches + 1, L = c->p_latents, KV = T + L;
    const int64_t E = (int64_t)c->p_heads * c->p_head_dim, M = 4 * D, NL = n * L;
    const float eps = 1e-5f; /* nn.LayerNorm default: the perceiver's norms take no eps from the config */

    IDF_FORWARD(host_access(s, s->pz, (size_t)(NL * D) * sizeof(float), err));
    for (int i = 0; i < n; i++)
        memcpy(s->pz + i * L * D, w->latents, (size_t)(L * D) * sizeof(float));
    for (uint32_t b = 0; b < c->p_depth; b++) {
        if (chunk_cancelled(s, t, n))
            return idf_errf(err, IDEFICS_ERR_CANCELLED, "cancelled in perceiver block %u", b);
        const idf_perceiver_block *B = &w->pb[b];
        /* Keys and values of image i see [LN(context_i); LN(latents_i)], context
         * first, in rows i*KV .. of s->pkv; the same raw context feeds every
         * block. The queries need the normalised latents of all images in a
         * row, so they are normalised twice (into s->py for the query matmul,
         * into s->pkv for keys and values): a LayerNorm costs little, a copy
         * would bring device results to the host and back. */
        for (int i = 0; i < n; i++) {
            float *kv = s->pkv + i * KV * D;
            IDF_FORWARD(ln(s, s->vx + i * T * D, B->ctx_ln_w, B->ctx_ln_b, eps, T, D, kv, err));
            IDF_FORWARD(ln(s, s->pz + i * L * D, B->lat_ln_w, B->lat_ln_b, eps, L, D, kv + T * D, err));
        }
        IDF_FORWARD(ln(s, s->pz, B->lat_ln_w, B->lat_ln_b, eps, NL, D, s->py, err));
        IDF_FORWARD(mm(s, &B->q, NULL, s->py, NL, s->pq, E, err));
        IDF_FORWARD(mm(s, &B->k, NULL, s->pkv, n * KV, s->pk, E, err));
        IDF_FORWARD(mm(s, &B->v, NULL, s->pkv, n * KV, s->pv, E, err));
        if (c->p_qk_norms) {
            IDF_FORWARD(ln(s, s->pq, B->q_ln_w, B->q_ln_b, eps, NL * c->p_heads, c->p_head_dim, s->pq, err));
            IDF_FORWARD(ln(s, s->pk, B->k_ln_w, B->k_ln_b, eps, n * KV * c->p_heads, c->p_head_dim, s->pk, err));
        }
        for (int i = 0; i < n; i++) {
            const idf_attn a = {
                .n_q = (int)L,
                .n_kv = (int)KV,
                .n_heads = (int)c->p_heads,
                .head_dim = (int)c->p_head_dim,
                .q = s->pq + i * L * E,
                .q_stride = E,
                .k = s->pk + i * KV * E,
                .v = s->pv + i * KV * E,
                .kv_stride = E,
                .kv_type = IDEFICS_KV_F32,
                .scale = 1.0f / sqrtf((float)c->p_head_dim),
                .out = s->pa + i * L * E,
                .out_stride = E,
            };
            IDF_FORWARD(attend(s, &a, err));
        }
        IDF_FORWARD(mm(s, &B->o, NULL, s->pa, NL, s->py, D, err));
        IDF_FORWARD(add(s, s->pz, s->py, NL * D, err));
        IDF_FORWARD(ln(s, s->pz, B->mlp_ln_w, B->mlp_ln_b, eps, NL, D, s->py, err));
        IDF_FORWARD(mm(s, &B->fc, NULL, s->py, NL, s->pm, M, err));
        IDF_FORWARD(act(s, ACT_RELU, s->pm, NL * M, err));
        IDF_FORWARD(mm(s, &B->c_proj, NULL, s->pm, NL, s->py, D, err));
        IDF_FORWARD(add(s, s->pz, s->py, NL * D, err));
    }
    return ln(s, s->pz, w->p_ln_w, w->p_ln_b, eps, NL, D, s->pz, err);
}

/* =============================================================== images */

/* Slot idx with its buffers allocated (reused after a reset); idx <= img_cap. */
static idefics_status ensure_slot(idf_state *s, int idx, img_slot **out, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    if (idx == s->img_cap) {
        if (s->img_cap >= (1 << 20))
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "too many images in one session");
        const int cap = s->img_cap ? 2 * s->img_cap : 4;
        img_slot *n = idf_calloc(&s->alloc, (size_t)cap, sizeof *n);
        if (!n)
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for image slots");
        if (s->img_cap)
            memcpy(n, s->img, (size_t)s->img_cap * sizeof *n);
        idf_free(&s->alloc, s->img);
        s->img = n;
        s->img_cap = cap;
    }
    img_slot *sl = &s->img[idx];
    if (!sl->latents || !sl->xk || !sl->xv) { /* new, or a slot whose allocation failed part way */
        /* Bounded config values (model.c): n_cross <= 2^10, n_img_tokens <= 2^24 + 1,
         * hidden and v_dim <= 2^16, so these products fit in 64 bits; a 32-bit
         * host may still not be able to address them. */
        const uint64_t nl = s->m->n_img_tokens;
        const uint64_t xe = (uint64_t)c->n_cross * nl * c->hidden;
        const uint64_t xs = xe <= SIZE_MAX / IDFX_KVQ8_BYTES ? kv_bytes(s, (size_t)xe) : UINT64_MAX;
        const uint64_t ls = nl * c->v_dim * sizeof(float);
        if (xs > SIZE_MAX || ls > SIZE_MAX)
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "an image slot does not fit in the address space");
        void **ps[] = {(void **)&sl->latents, &sl->xk, &sl->xv};
        const uint64_t sz[] = {ls, xs, xs};
        for (size_t i = 0; i < 3; i++)
            if (!*ps[i] && (*ps[i] = idf_malloc(&s->alloc, (size_t)sz[i])) && s->be->register_host) {
                const idefics_status st = s->be->register_host(s->be->ctx, *ps[i], (size_t)sz[i]);
                if (st) { /* freed again: a slot's buffers are all registered or absent */
                    idf_free(&s->alloc, *ps[i]);
                    *ps[i] = NULL;
                    return op_fail(s->be, err, st, "register_host", "an image slot");
                }
            }
        if (!sl->latents || !sl->xk || !sl->xv)
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for an image slot (%.1f MiB)",
                            2.0 * (double)xs / (1024.0 * 1024.0));
    }
    *out = sl;
    return IDEFICS_OK;
}

/* One chunk of n <= v_cap images on s's scratch and backend; image i goes to
 * state t[i] (s itself, or another state of the model: its next slot, its KV
 * type). Every slot is taken before any work, and the n_img are bumped only
 * at the end, so a failure leaves every state's images as they were. */
static idefics_status add_chunk(idf_state *s, idf_state *const *t, const float *const *pixels, int n, int *slots,
                                idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    int idx[IDF_VISION_BATCH];
    for (int i = 0; i < n; i++) { /* the k-th image of a state in this chunk: its slot n_img + k */
        idx[i] = t[i]->n_img;
        for (int j = 0; j < i; j++)
            idx[i] += t[j] == t[i];
        img_slot *unused;
        IDF_FORWARD(ensure_slot(t[i], idx[i], &unused, err));
    }

    IDF_FORWARD(vision_tower(s, t, pixels, n, err));
    /* the stacked latents [n * nl, D]: the perceiver's, or the tower's output
     * itself (nl = T then, so its rows are stacked the same way) */
    const int64_t nl = s->m->n_img_tokens, H = c->hidden, D = c->v_dim;
    if (c->use_resampler)
        IDF_FORWARD(perceiver(s, t, n, err));
    const float *lat = c->use_resampler ? s->pz : s->vx;

    /* Each gated block's K and V of these images, computed once (spec §3.7
     * allows caching them; HF recomputes them every step with identical
     * results): one matmul over all the images' latents, stored per slot in
     * its state's KV type, after that state's backend gives the range to the
     * host. */
    for (uint32_t j = 0; j < c->n_cross; j++) {
        const idf_cross_block *B = &w->xb[j];
        for (int kv = 0; kv < 2; kv++) {
            IDF_FORWARD(mm(s, kv ? &B->v : &B->k, NULL, lat, n * nl, s->xtmp, H, err));
            if (!kv && B->k_norm)
                IDF_FORWARD(
                    rms(s, s->xtmp, B->k_norm, c->rms_eps, n * nl * c->n_heads, c->head_dim, s->xtmp, err));
            IDF_FORWARD(host_access(s, s->xtmp, (size_t)(n * nl * H) * sizeof(float), err));
            for (int i = 0; i < n; i++) {
                const img_slot *sl = &t[i]->img[idx[i]];
                uint8_t *dst = (uint8_t *)(kv ? sl->xv : sl->xk) + kv_bytes(t[i], (size_t)j * (size_t)(nl * H));
                IDF_FORWARD(host_access(t[i], dst, kv_bytes(t[i], (size_t)(nl * H)), err));
                store_kv(t[i], dst, s->xtmp + i * nl * H, nl * H);
            }
        }
    }
    /* the latents into their slots, where they stay readable on the host
     * (idf_state_image_latents) */
    const size_t lat_bytes = (size_t)(nl * D) * sizeof(float);
    IDF_FORWARD(host_access(s, lat, (size_t)n * lat_bytes, err));
    for (int i = 0; i < n; i++) {
        float *dst = t[i]->img[idx[i]].latents;
        IDF_FORWARD(host_access(t[i], dst, lat_bytes, err));
        memcpy(dst, lat + i * nl * D, lat_bytes);
    }
    for (int i = 0; i < n; i++) {
        t[i]->n_img++; /* in order: image i's slot is idx[i] */
        if (slots)
            slots[i] = idx[i];
    }
    return IDEFICS_OK;
}

idefics_status idf_state_encode_images(idf_state *s, idf_state *const *dst, const float *const *pixels, int n,
                                       int *slots, idf_err *err) {
    if (!s || !pixels || n < 0)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_add_images: NULL argument or n < 0");
    const idf_config *c = &s->m->cfg;
    if (c->text_only)
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "this model is text-only (llama): it takes no images");
    if (!s->vx)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_add_images: a batched-pass state holds no images");
    for (int i = 0; i < n; i++) {
        const idf_state *t = dst ? dst[i] : s;
        if (!pixels[i] || !t)
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_add_images: image %d or its state is NULL", i);
        if (t->m != s->m || !t->vx)
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG,
                            "idf_state_add_images: image %d goes to a state of another model or a pass state", i);
    }
    idf_state *own[IDF_VISION_BATCH];
    for (int i = 0; i < IDF_VISION_BATCH; i++)
        own[i] = s;
    idefics_status st = IDEFICS_OK;
    for (int done = 0; done < n && st == IDEFICS_OK;) {
        const int k = n - done < s->v_cap ? n - done : s->v_cap;
        st = add_chunk(s, dst ? dst + done : own, pixels + done, k, slots ? slots + done : NULL, err);
        done += k;
    }
    /* low_memory: the image path's weights are done with until the next image
     * (after a failure too: nothing else drops them) */
    page_vision_layer(s, c->v_layers - 1, false); /* the loop dropped the others */
    page_image_only(s, false);
    return st;
}

idefics_status idf_state_add_images(idf_state *s, const float *const *pixels, int n, int *slots, idf_err *err) {
    return idf_state_encode_images(s, NULL, pixels, n, slots, err);
}

idefics_status idf_state_add_image(idf_state *s, const float *pixels, int *slot, idf_err *err) {
    return idf_state_add_images(s, &pixels, 1, slot, err);
}

/* ================================================================= text */

/* The rows of one pass: sequence j (its own state: KV cache, images,
 * position) owns rows row0[j] .. row0[j + 1] - 1 of the pass state's scratch.
 * A single-session eval is a pass of one sequence whose state is the pass
 * state itself; a batched step (idf_state_eval_seqs) has several, and every
 * weight matmul runs once over all their rows. */
typedef struct pass {
    const idf_seq *seq;
    int n_seq, n;                 /* sequences; rows in all */
    int row0[IDF_EVAL_BATCH + 1];
    int32_t img[IDF_EVAL_BATCH];  /* per row: the image slot (of its sequence's state), or -1 */
} pass;

/* Gated cross-attention block j on the pass's rows h[n] (spec §3.3). */
static idefics_status cross_block(idf_state *s, uint32_t j, const pass *P, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_cross_block *B = &s->m->w->xb[j];
    const int64_t H = c->hidden, I = c->intermediate, nl = s->m->n_img_tokens;
    const int n = P->n;
    const int32_t *img = P->img;

    bool any = false;
    for (int i = 0; i < n && !any; i++)
        any = img[i] >= 0;
    /* Rows that see no image get a zero attention output, so a chunk without
     * any image skips the attention branch entirely; the dense branch below
     * still runs for every row. */
    if (any) {
        IDF_FORWARD(rms(s, s->h, B->ln_in, c->rms_eps, n, H, s->x, err));
        IDF_FORWARD(mm(s, &B->q, NULL, s->x, n, s->q, H, err));
        if (B->q_norm)
            IDF_FORWARD(rms(s, s->q, B->q_norm, c->rms_eps, (int64_t)n * c->n_heads, c->head_dim, s->q, err));
        /* Each row attends only to its own image's latents: equivalent to the
         * HF additive mask, done as one attention call per run of equal img
         * within a sequence (slots index that sequence's images). */
        for (int sq = 0; sq < P->n_seq; sq++) {
            const idf_state *st = P->seq[sq].st;
            const int end = P->row0[sq + 1];
            for (int i0 = P->row0[sq]; i0 < end;) {
                int i1 = i0 + 1;
                while (i1 < end && img[i1] == img[i0])
                    i1++;
                if (img[i0] < 0) {
                    IDF_FORWARD(host_access(s, s->att + i0 * H, (size_t)((i1 - i0) * H) * sizeof(float), err));
                    memset(s->att + i0 * H, 0, (size_t)((i1 - i0) * H) * sizeof(float));
                } else {
                    const img_slot *sl = &st->img[img[i0]];
                    const size_t off = kv_bytes(st, (size_t)j * (size_t)(nl * H));
                    const idf_attn a = {
                        .n_q = i1 - i0,
                        .n_kv = (int)nl,
                        .n_heads = (int)c->n_heads,
                        .head_dim = (int)c->head_dim,
                        .q = s->q + i0 * H,
                        .q_stride = H,
                        .k = (const uint8_t *)sl->xk + off,
                        .v = (const uint8_t *)sl->xv + off,
                        .kv_stride = H,
                        .kv_type = st->kv_type,
                        .scale = 1.0f / sqrtf((float)c->head_dim),
                        .out = s->att + i0 * H,
                        .out_stride = H,
                    };
                    IDF_FORWARD(attend(s, &a, err));
                }
                i0 = i1;
            }
        }
        IDF_FORWARD(mm(s, &B->o, NULL, s->att, n, s->x, H, err));
        IDF_FORWARD(gated_add(s, s->h, B->gate_attn, s->x, n, H, err));
    }
    IDF_FORWARD(rms(s, s->h, B->ln_post, c->rms_eps, n, H, s->x, err));
    IDF_FORWARD(mm(s, &B->gate, NULL, s->x, n, s->g, I, err));
    IDF_FORWARD(mm(s, &B->up, NULL, s->x, n, s->u, I, err));
    IDF_FORWARD(silu_mul(s, s->g, s->u, (int64_t)n * I, err));
    IDF_FORWARD(mm(s, &B->down, NULL, s->g, n, s->x, H, err));
    return gated_add(s, s->h, B->gate_dense, s->x, n, H, err);
}

/* Decoder layer l on the pass's rows h[n]; sequence j's rows sit at positions
 * n_past .. of its own state (spec §3.4). */
static idefics_status decoder_layer(idf_state *s, uint32_t l, const pass *P, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_decoder_layer *L = &s->m->w->dl[l];
    const int64_t H = c->hidden, I = c->intermediate;
    const int n = P->n;

    IDF_FORWARD(rms(s, s->h, L->ln_in, c->rms_eps, n, H, s->x, err));
    IDF_FORWARD(mm(s, &L->q, NULL, s->x, n, s->q, H, err));
    IDF_FORWARD(mm(s, &L->k, NULL, s->x, n, s->k, H, err));
    IDF_FORWARD(mm(s, &L->v, NULL, s->x, n, s->v, H, err));
    for (int sq = 0; sq < P->n_seq; sq++) {
        idf_state *st = P->seq[sq].st;
        const int r0 = P->row0[sq], nr = P->row0[sq + 1] - r0, pos = st->n_past;
        float *q = s->q + r0 * H, *k = s->k + r0 * H, *v = s->v + r0 * H;
        IDF_FORWARD(rope(s, q, nr, pos, err));
        IDF_FORWARD(rope(s, k, nr, pos, err)); /* the cache stores rotated keys */
        const size_t layer_off = kv_bytes(st, (size_t)l * (size_t)st->n_ctx * (size_t)H);
        const size_t pos_off = kv_bytes(st, (size_t)pos * (size_t)H);
        uint8_t *kc = (uint8_t *)st->kc + layer_off, *vc = (uint8_t *)st->vc + layer_off;
        const size_t n_el = (size_t)nr * (size_t)H;
        IDF_FORWARD(host_access(s, k, n_el * sizeof(float), err));
        IDF_FORWARD(host_access(s, v, n_el * sizeof(float), err));
        /* the cache belongs to the sequence's own backend */
        IDF_FORWARD(host_access(st, kc + pos_off, kv_bytes(st, n_el), err));
        IDF_FORWARD(host_access(st, vc + pos_off, kv_bytes(st, n_el), err));
        store_kv(st, kc + pos_off, k, nr * H);
        store_kv(st, vc + pos_off, v, nr * H);
        const idf_attn a = {
            .n_q = nr,
            .n_kv = pos + nr,
            .n_heads = (int)c->n_heads,
            .head_dim = (int)c->head_dim,
            .q = q,
            .q_stride = H,
            .k = kc,
            .v = vc,
            .kv_stride = H,
            .kv_type = st->kv_type,
            .scale = 1.0f / sqrtf((float)c->head_dim),
            .causal = true,
            .q_pos0 = pos,
            .out = s->att + r0 * H,
            .out_stride = H,
        };
        IDF_FORWARD(attend(s, &a, err));
    }
    IDF_FORWARD(mm(s, &L->o, NULL, s->att, n, s->x, H, err));
    IDF_FORWARD(add(s, s->h, s->x, n * H, err));
    IDF_FORWARD(rms(s, s->h, L->ln_post, c->rms_eps, n, H, s->x, err));
    IDF_FORWARD(mm(s, &L->gate, NULL, s->x, n, s->g, I, err));
    IDF_FORWARD(mm(s, &L->up, NULL, s->x, n, s->u, I, err));
    IDF_FORWARD(silu_mul(s, s->g, s->u, (int64_t)n * I, err));
    IDF_FORWARD(mm(s, &L->down, NULL, s->g, n, s->x, H, err));
    return add(s, s->h, s->x, n * H, err);
}

/* Embeddings and every layer for the pass's rows, leaving h[n]. */
static idefics_status eval_pass(idf_state *s, const pass *P, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    const int64_t H = c->hidden;

    for (int sq = 0; sq < P->n_seq; sq++)
        for (int i = 0; i < P->seq[sq].n; i++) {
            const int32_t id = P->seq[sq].ids[i];
            float *dst = s->h + (P->row0[sq] + i) * H;
            /* Ids past the base vocabulary index the additional (decoupled) embedding. */
            if ((uint32_t)id < c->vocab_size)
                IDF_FORWARD(rows_of(s, &w->embed, id, dst, err));
            else
                IDF_FORWARD(rows_of(s, &w->embed_add, id - (int32_t)c->vocab_size, dst, err));
        }
    for (uint32_t l = 0; l < c->n_layers; l++) {
        if (cancelled(s))
            return idf_errf(err, IDEFICS_ERR_CANCELLED, "cancelled at decoder layer %u", l);
        page_decoder_layer(s, l + 1, true);
        if (c->n_cross && l % c->cross_interval == 0)
            IDF_FORWARD(cross_block(s, l / c->cross_interval, P, err));
        IDF_FORWARD(decoder_layer(s, l, P, err));
        page_decoder_layer(s, l, false);
    }
    /* the next chunk or token starts again at layer 0 */
    page_decoder_layer(s, 0, true);
    return IDEFICS_OK;
}

/* One chunk of n <= n_batch tokens at positions n_past..; logits for rows
 * [first_out, n) go to out (n_vocab floats each). */
static idefics_status eval_chunk(idf_state *s, const int32_t *ids, const int32_t *img, int n, int first_out,
                                 float *out, idf_err *err) {
    const idf_config *c = &s->m->cfg;
    const idf_weights *w = s->m->w;
    const int64_t H = c->hidden;

    const idf_seq one = {.st = s, .ids = ids, .img = img, .n = n};
    pass P = {.seq = &one, .n_seq = 1, .n = n, .row0 = {0, n}};
    for (int i = 0; i < n; i++)
        P.img[i] = img ? img[i] : -1;
    IDF_FORWARD(eval_pass(s, &P, err));
    const int n_out = n - first_out;
    if (n_out <= 0)
        return IDEFICS_OK;
    IDF_FORWARD(rms(s, s->h + first_out * H, w->norm, c->rms_eps, n_out, H, s->x, err));
    /* logits = [lm_head | additional_fc], one row of n_vocab per token */
    IDF_FORWARD(mm(s, &w->lm_head, NULL, s->x, n_out, out, c->n_vocab, err));
    if (c->additional_vocab)
        IDF_FORWARD(mm(s, &w->lm_add, NULL, s->x, n_out, out + c->vocab_size, c->n_vocab, err));
    return IDEFICS_OK;
}

idefics_status idf_state_eval_seqs(idf_state *s, const idf_seq *seqs, int n_seqs, idf_err *err) {
    if (!s || !seqs || n_seqs <= 0)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_eval_seqs: needs a pass state and sequences");
    const idf_config *c = &s->m->cfg;
    const int64_t H = c->hidden;
    if (n_seqs > s->n_batch)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "%d sequences are more than the %d rows of a pass", n_seqs,
                        s->n_batch);
    pass P = {.seq = seqs, .n_seq = n_seqs};
    int n_out = 0;
    for (int j = 0; j < n_seqs; j++) {
        const idf_seq *q = &seqs[j];
        if (!q->st || q->st == s || q->st->m != s->m || !q->ids || q->n <= 0)
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG,
                            "sequence %d: needs its own state of the same model, ids and n > 0", j);
        for (int i = 0; i < j; i++)
            if (seqs[i].st == q->st)
                return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "sequences %d and %d share a state", i, j);
        if (q->n > s->n_batch - P.n)
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "the pass holds at most %d tokens", s->n_batch);
        if (q->n > q->st->n_ctx - q->st->n_past)
            return idf_errf(err, IDEFICS_ERR_CONTEXT_FULL, "sequence %d: %d tokens do not fit: %d of n_ctx %d are used",
                            j, q->n, q->st->n_past, q->st->n_ctx);
        for (int i = 0; i < q->n; i++) {
            if (q->ids[i] < 0 || (uint32_t)q->ids[i] >= c->n_vocab)
                return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "sequence %d token %d: id %d is outside the vocabulary",
                                j, i, (int)q->ids[i]);
            const int32_t im = q->img ? q->img[i] : -1;
            if (im < -1 || im >= q->st->n_img)
                return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "sequence %d token %d: image slot %d does not exist", j,
                                i, (int)im);
            P.img[P.n + i] = im;
        }
        P.row0[j] = P.n;
        P.n += q->n;
        n_out += q->logits != NULL;
    }
    P.row0[n_seqs] = P.n;
    if (n_out && !s->lg) { /* logits scratch of the pass state, made on first use */
        size_t bytes;
        if (!idf_mul_size((size_t)s->n_batch * c->n_vocab, sizeof(float), &bytes) ||
            !(s->lg = idf_malloc(&s->alloc, bytes)))
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the batched logits");
        if (s->be->register_host) {
            const idefics_status st = s->be->register_host(s->be->ctx, s->lg, bytes);
            if (st)
                return op_fail(s->be, err, st, "register_host", "the batched logits");
        }
    }
    /* Each sequence's cache and images belong to its own backend: a device
     * backend hands them to the host before this pass reads and writes them. */
    for (int j = 0; j < n_seqs; j++)
        IDF_FORWARD(host_access(seqs[j].st, NULL, 0, err));
    IDF_FORWARD(eval_pass(s, &P, err));
    if (n_out) {
        const idf_weights *w = s->m->w;
        for (int j = 0, o = 0; j < n_seqs; j++)
            if (seqs[j].logits)
                IDF_FORWARD(rms(s, s->h + (P.row0[j + 1] - 1) * H, w->norm, c->rms_eps, 1, H, s->x + (o++) * H, err));
        IDF_FORWARD(mm(s, &w->lm_head, NULL, s->x, n_out, s->lg, c->n_vocab, err));
        if (c->additional_vocab)
            IDF_FORWARD(mm(s, &w->lm_add, NULL, s->x, n_out, s->lg + c->vocab_size, c->n_vocab, err));
        IDF_FORWARD(host_access(s, s->lg, (size_t)n_out * c->n_vocab * sizeof(float), err));
        for (int j = 0, o = 0; j < n_seqs; j++)
            if (seqs[j].logits)
                memcpy(seqs[j].logits, s->lg + (size_t)(o++) * c->n_vocab, (size_t)c->n_vocab * sizeof(float));
    }
    for (int j = 0; j < n_seqs; j++)
        seqs[j].st->n_past += seqs[j].n;
    return IDEFICS_OK;
}

int idf_state_max_rows(const idf_state *s) {
    return s ? s->n_batch : 0;
}

idefics_status idf_state_eval(idf_state *s, const int32_t *ids, const int32_t *img, int n, float *logits,
                              bool all_logits, idf_err *err) {
    if (!s || !ids || n <= 0 || !logits)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_eval: needs a state, ids, n > 0 and logits");
    if (!s->kc)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_eval: a batched-pass state has no KV cache");
    const idf_config *c = &s->m->cfg;
    if (n > s->n_ctx - s->n_past)
        return idf_errf(err, IDEFICS_ERR_CONTEXT_FULL, "%d tokens do not fit: %d of n_ctx %d are used", n, s->n_past,
                        s->n_ctx);
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= c->n_vocab)
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "token %d: id %d is outside the vocabulary [0, %u)", i,
                            (int)ids[i], c->n_vocab);
        if (img && (img[i] < -1 || img[i] >= s->n_img))
            return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "token %d: image slot %d does not exist (%d images)", i,
                            (int)img[i], s->n_img);
    }
    const int start = s->n_past;
    for (int i0 = 0; i0 < n; i0 += s->n_batch) {
        const int nb = n - i0 < s->n_batch ? n - i0 : s->n_batch;
        const bool last = i0 + nb == n;
        /* all_logits: every row; else only the final token's row */
        const int first_out = all_logits ? 0 : (last ? nb - 1 : nb);
        float *out = all_logits ? logits + (size_t)i0 * c->n_vocab : logits;
        const idefics_status st = eval_chunk(s, ids + i0, img ? img + i0 : NULL, nb, first_out, out, err);
        if (st) {
            s->n_past = start; /* the state is as before the call; later writes overwrite the stale cache rows */
            return st;
        }
        s->n_past += nb;
    }
    return IDEFICS_OK;
}

/* ============================================================ save / load
 *
 * The state as bytes, for session snapshots: for every layer the K rows then
 * the V rows of positions 0 .. n_past-1 (as stored, kv_type), then for every
 * image slot its latents (fp32), xk and xv (kv_type). Nothing else is state:
 * the scratch is rewritten by every pass. */

static size_t layer_rows_bytes(const idf_state *s) {
    return kv_bytes(s, (size_t)s->n_past * (size_t)s->m->cfg.hidden);
}

static void slot_sizes(const idf_state *s, size_t *lat, size_t *xkv) {
    const idf_config *c = &s->m->cfg;
    const size_t nl = s->m->n_img_tokens;
    *lat = nl * (size_t)c->v_dim * sizeof(float);
    *xkv = kv_bytes(s, (size_t)c->n_cross * nl * (size_t)c->hidden);
}

/* Sizes are products of config values checked at load and of n_past <= n_ctx
 * and n_img, whose buffers exist: they fit in size_t. */
size_t idf_state_save_bytes(const idf_state *s) {
    size_t lat, xkv;
    slot_sizes(s, &lat, &xkv);
    return 2 * (size_t)s->m->cfg.n_layers * layer_rows_bytes(s) + (size_t)s->n_img * (lat + 2 * xkv);
}

idefics_kv_type idf_state_kv_type(const idf_state *s) { return s->kv_type; }

idefics_status idf_state_save(idf_state *s, void *dst, size_t size, idf_err *err) {
    if (size != idf_state_save_bytes(s))
        return idf_errf(err, IDEFICS_ERR_INTERNAL, "idf_state_save: %zu bytes, need %zu", size,
                        idf_state_save_bytes(s));
    const idf_config *c = &s->m->cfg;
    const size_t rows = layer_rows_bytes(s);
    uint8_t *o = dst;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const size_t off = kv_bytes(s, (size_t)l * (size_t)s->n_ctx * (size_t)c->hidden);
        IDF_FORWARD(host_access(s, (uint8_t *)s->kc + off, rows, err));
        IDF_FORWARD(host_access(s, (uint8_t *)s->vc + off, rows, err));
        memcpy(o, (uint8_t *)s->kc + off, rows);
        memcpy(o + rows, (uint8_t *)s->vc + off, rows);
        o += 2 * rows;
    }
    size_t lat, xkv;
    slot_sizes(s, &lat, &xkv);
    for (int i = 0; i < s->n_img; i++) {
        const img_slot *sl = &s->img[i];
        IDF_FORWARD(host_access(s, sl->latents, lat, err));
        IDF_FORWARD(host_access(s, sl->xk, xkv, err));
        IDF_FORWARD(host_access(s, sl->xv, xkv, err));
        memcpy(o, sl->latents, lat);
        memcpy(o + lat, sl->xk, xkv);
        memcpy(o + lat + xkv, sl->xv, xkv);
        o += lat + 2 * xkv;
    }
    return IDEFICS_OK;
}

idefics_status idf_state_load(idf_state *s, const void *src, size_t size, int n_past, int n_img, idf_err *err) {
    if (n_past < 0 || n_past > s->n_ctx || n_img < 0)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_load: %d positions (context %d), %d images", n_past,
                        s->n_ctx, n_img);
    /* the slots first: the only step that can fail for want of memory, and it
     * changes nothing visible (n_past, n_img) */
    for (int i = 0; i < n_img; i++) {
        img_slot *sl;
        IDF_FORWARD(ensure_slot(s, i, &sl, err));
    }
    const idf_config *c = &s->m->cfg;
    const int keep_past = s->n_past, keep_img = s->n_img;
    s->n_past = n_past;
    s->n_img = n_img;
    if (size != idf_state_save_bytes(s)) {
        const size_t want = idf_state_save_bytes(s);
        s->n_past = keep_past;
        s->n_img = keep_img;
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idf_state_load: %zu bytes for %d positions and %d images, need %zu",
                        size, n_past, n_img, want);
    }
    const size_t rows = layer_rows_bytes(s);
    const uint8_t *p = src;
    idefics_status st = IDEFICS_OK;
    for (uint32_t l = 0; l < c->n_layers && st == IDEFICS_OK; l++) {
        const size_t off = kv_bytes(s, (size_t)l * (size_t)s->n_ctx * (size_t)c->hidden);
        st = host_access(s, (uint8_t *)s->kc + off, rows, err);
        if (st == IDEFICS_OK) st = host_access(s, (uint8_t *)s->vc + off, rows, err);
        if (st != IDEFICS_OK) break;
        memcpy((uint8_t *)s->kc + off, p, rows);
        memcpy((uint8_t *)s->vc + off, p + rows, rows);
        p += 2 * rows;
    }
    size_t lat, xkv;
    slot_sizes(s, &lat, &xkv);
    for (int i = 0; i < n_img && st == IDEFICS_OK; i++) {
        img_slot *sl = &s->img[i];
        st = host_access(s, sl->latents, lat, err);
        if (st == IDEFICS_OK) st = host_access(s, sl->xk, xkv, err);
        if (st == IDEFICS_OK) st = host_access(s, sl->xv, xkv, err);
        if (st != IDEFICS_OK) break;
        memcpy(sl->latents, p, lat);
        memcpy(sl->xk, p + lat, xkv);
        memcpy(sl->xv, p + lat + xkv, xkv);
        p += lat + 2 * xkv;
    }
    if (st != IDEFICS_OK) { /* a device failure part way: the cache holds nothing trustworthy */
        s->n_past = 0;
        s->n_img = 0;
    }
    return st;
}
