/*
 * backend_factory.c - which backend a session computes with.
 *
 * The model decides the backend kind at load (model.c: pick_backend); each
 * session creates its own backend instance here (its own thread pool and
 * scratch). New backends add one case below; forward.c only ever sees the
 * idf_backend vtable and falls back to the reference backend per op. This file
 * sits above the backends (runtime/backends/): it includes them, never the
 * other way round.
 */
#include "backend_factory.h"
#include "model.h"
#ifdef IDF_HAVE_OPENCL
#include "backend_opencl.h"
#endif

idefics_status idf_backend_create_for_model(const idefics_model *m, int n_threads, const idf_alloc *alloc,
                                            idf_backend **out, idf_err *err) {
    switch (m->backend) {
    case IDEFICS_BACKEND_CPU_REF:
        return idf_backend_ref_create(n_threads, alloc, out, err);
    case IDEFICS_BACKEND_CPU:
        return idf_backend_cpu_create(n_threads, alloc, out, err);
#ifdef IDF_HAVE_OPENCL
    case IDEFICS_BACKEND_OPENCL: /* the device was opened and checked at load (model.c) */
        return idf_backend_opencl_create(m->ocl, alloc, out, err);
#endif
    default:
        break;
    }
    return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "backend %d has no implementation in this build", (int)m->backend);
}
