/*
 * backend_util.c - helpers every backend shares, below the backends: what a
 * weight the CPU paths can read looks like (idf_weight_ok). The factory that
 * picks a backend for a model sits above them, in runtime/backend_factory.c,
 * so no backend includes it (docs/ARCHITECTURE.md).
 */
#include "backend.h"
#include "quant.h"

bool idf_weight_ok(const idf_weight *w) {
    if (!w || !w->data || w->rows <= 0 || w->cols <= 0)
        return false;
    if (w->layout == IDFX_LAYOUT_ROWMAJOR)
        return w->type == IDFX_TYPE_F32 || w->type == IDFX_TYPE_F16;
    if (idfx_layout_tiled(w->layout))
        return (w->type == IDFX_TYPE_Q4 || w->type == IDFX_TYPE_Q8) && w->cols % IDFX_QK == 0 && w->tile_rows >= 1 &&
               w->tile_rows <= IDFX_MAX_TILE_ROWS && (w->tile_rows & (w->tile_rows - 1)) == 0;
    return false;
}

idefics_status idf_attn_check(const idf_attn *a) {
    if (!a || !a->q || !a->k || !a->v || !a->out || a->n_q < 0 || a->n_kv < 0 || a->n_heads <= 0 || a->head_dim <= 0 ||
        (a->kv_type != IDEFICS_KV_F32 && a->kv_type != IDEFICS_KV_F16 && a->kv_type != IDEFICS_KV_Q8) ||
        (a->causal && a->q_pos0 < 0))
        return IDEFICS_ERR_INVALID_ARG;
    const int64_t row = (int64_t)a->n_heads * a->head_dim;
    if (a->q_stride < row || a->kv_stride < row || a->out_stride < row)
        return IDEFICS_ERR_INVALID_ARG;
    if (a->kv_type == IDEFICS_KV_Q8 && a->kv_stride % IDFX_KVQ8_BLOCK) /* rows must start on a block */
        return IDEFICS_ERR_INVALID_ARG;
    return IDEFICS_OK;
}
