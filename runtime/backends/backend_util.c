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
