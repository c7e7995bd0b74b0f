/*
 * batcher.c - the thread that steps the server's idefics_batch (batcher.h).
 * A batch is single-threaded (idefics.h): joins are queued under a mutex by the
 * request threads and made by this thread between steps.
 */
#include "batcher.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

typedef struct join {
    idefics_session *s;
    idefics_generate_params p;
    idefics_token_fn on_token;
    idefics_batch_done_fn on_done;
    void *ud;
    struct join *next;
} join;

struct srv_batcher {
    idefics_batch *batch;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    join *head, *tail;
    bool quit;
};

static void *batcher_main(void *arg) {
    srv_batcher *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        while (!b->head && !b->quit && idefics_batch_n_sessions(b->batch) == 0) pthread_cond_wait(&b->cv, &b->mu);
        join *j = b->head;
        b->head = b->tail = NULL;
        bool quit = b->quit;
        pthread_mutex_unlock(&b->mu);
        while (j) {
            join *next = j->next;
            idefics_status st = quit ? IDEFICS_ERR_CANCELLED
                                     : idefics_batch_add(b->batch, j->s, &j->p, j->on_token, j->on_done, j->ud);
            if (st != IDEFICS_OK && j->on_done) j->on_done(j->ud, j->s, st);
            free(j);
            j = next;
        }
        if (quit && idefics_batch_n_sessions(b->batch) == 0) return NULL;
        if (idefics_batch_n_sessions(b->batch) > 0) idefics_batch_step(b->batch);
    }
}

idefics_status srv_batcher_start(idefics_model *model, int max_sessions, int n_threads, srv_batcher **out,
                                 char *err, size_t err_size) {
    *out = NULL;
    srv_batcher *b = calloc(1, sizeof *b);
    if (!b) return IDEFICS_ERR_OUT_OF_MEMORY;
    idefics_batch_params bp = idefics_batch_default_params();
    bp.max_sessions = max_sessions;
    bp.n_threads = n_threads;
    idefics_status st = idefics_batch_create(model, &bp, &b->batch, err, err_size);
    if (st != IDEFICS_OK) {
        free(b);
        return st;
    }
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    if (pthread_create(&b->th, NULL, batcher_main, b) != 0) {
        idefics_batch_free(b->batch);
        free(b);
        return IDEFICS_ERR_INTERNAL;
    }
    *out = b;
    return IDEFICS_OK;
}

void srv_batcher_submit(srv_batcher *b, idefics_session *s, const idefics_generate_params *p,
                        idefics_token_fn on_token, idefics_batch_done_fn on_done, void *user_data) {
    join *j = malloc(sizeof *j);
    if (!j) {
        if (on_done) on_done(user_data, s, IDEFICS_ERR_OUT_OF_MEMORY);
        return;
    }
    *j = (join){s, *p, on_token, on_done, user_data, NULL};
    pthread_mutex_lock(&b->mu);
    if (b->tail) b->tail->next = j;
    else b->head = j;
    b->tail = j;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void srv_batcher_stop(srv_batcher *b) {
    if (!b) return;
    pthread_mutex_lock(&b->mu);
    b->quit = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->th, NULL);
    idefics_batch_free(b->batch);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b);
}
