/*
 * backend_factory.h - the backend instance for a session of a model
 * (backend_factory.c). Above the backends: forward.c includes this, backends
 * never do.
 */
#ifndef IDF_BACKEND_FACTORY_H
#define IDF_BACKEND_FACTORY_H

#include "backend.h"

/* The backend instance for one session of model m, of the kind chosen at load
 * (m->backend). New backends add a case in backend_factory.c. */
struct idefics_model;
idefics_status idf_backend_create_for_model(const struct idefics_model *m, int n_threads, const idf_alloc *alloc,
                                            idf_backend **out, idf_err *err);

#endif /* IDF_BACKEND_FACTORY_H */
