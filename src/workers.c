/* Front workers (one thread and loop each) and the delivery side on the caller's loop. */
#include "hr/workers.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/delivery.h"
#include "hr/handoff.h"
#include "hr/json.h"
#include "hr/log.h"
#include "hr/router.h"

/* One front worker. The fields under "commands" and "lifecycle" are shared with the main
 * thread and guarded by the workers' lock; the rest belong to the worker's thread once it
 * runs. */
typedef struct {
    hr_workers_t *ws;
    unsigned index;
    uv_thread_t thread;
    uv_loop_t loop;
    hr_router_t *router; /* NULL once stopped */
    uv_async_t cmd;      /* wakes the worker: a command below is set */
    /* commands (main -> worker) */
    bool want_reload;
    bool want_stop;
    bool cmd_open;         /* cmd may be sent to (the worker started and has not taken a stop) */
    unsigned reload_asked; /* reloads asked of this worker (hr_workers_request_reload) */
    /* lifecycle (worker -> main) */
    bool started;  /* the start attempt is over (see ok) */
    bool ok;       /* the router runs */
    bool done;     /* the loop has ended: the thread can be joined */
    int port;      /* the bound port (when ok) */
    char err[256]; /* why it did not start */
    /* reloads (worker -> main): the worker has done every reload asked when done == asked */
    unsigned reload_taken; /* reload_asked when the worker last took a reload command */
    unsigned reload_done;  /* reload_taken when its last reload ended */
    bool reload_ok;        /* how that reload went, */
    uint64_t reloads;      /* its count of successful reloads, */
    char reload_err[256];  /* and why it failed ("" when ok) */
} worker_t;

struct hr_workers {
    uv_loop_t *loop;                /* the delivery loop (the caller's thread) */
    hr_ruleset_t *rs;               /* the config and rules loaded at start (one reference) */
    char *config_path;              /* what workers read */
    hr_delivery_t *delivery;        /* the one outbox and its files, direct */
    hr_handoff_t *handoff;          /* the workers' ports lead to delivery */
    hr_router_counters_t *counters; /* one per worker, for /healthz and /metrics */
    worker_t *w;
    unsigned n;                    /* workers */
    unsigned nthreads;             /* threads created (each ends with done) */
    uv_mutex_t lock;               /* guards the shared fields of every worker_t */
    uv_cond_t cond;                /* signalled when a worker's start attempt is over */
    uv_async_t done_async;         /* wakes the delivery loop: a worker's loop has ended */
    uv_async_t reload_async;       /* wakes the delivery loop: a worker's reload has ended */
    hr_router_reload_cb reload_cb; /* hr_workers_on_reload, or NULL */
    void *reload_arg;
    unsigned reload_rounds;   /* hr_workers_request_reload calls that reached a worker */
    unsigned rounds_reported; /* reload_rounds when reload_cb last ran */
    bool stopping;
    bool failed; /* a start failed: shut down, and give no callback */
    void (*stop_cb)(void *arg);
    void *stop_arg;
    int closing; /* handles and parts still closing at the end */
};

/* ---------------------------------------------------------------- worker thread */

static void on_worker_router_stopped(void *arg)
{
    worker_t *w = arg;
    w->router = NULL; /* the loop now ends: nothing else is open */
}

/* A command from the main thread. A stop wins over a reload and closes cmd: the main
 * thread sends nothing after a stop (it clears cmd_open under the lock, which we hold). */
static void on_cmd(uv_async_t *a)
{
    worker_t *w = a->data;
    uv_mutex_lock(&w->ws->lock);
    bool reload = w->want_reload, stop = w->want_stop;
    w->want_reload = false;
    if (reload) w->reload_taken = w->reload_asked;
    uv_mutex_unlock(&w->ws->lock);
    if (stop) {
        uv_close((uv_handle_t *)&w->cmd, NULL);
        hr_router_stop(w->router, on_worker_router_stopped, w);
    } else if (reload) {
        hr_router_request_reload(w->router);
    }
}

/* The worker's router ended a reload (on the worker's thread): tell the delivery loop. */
static void on_worker_reloaded(void *arg, bool ok, uint64_t reloads, const char *error)
{
    worker_t *w = arg;
    uv_mutex_lock(&w->ws->lock);
    w->reload_done = w->reload_taken;
    w->reload_ok = ok;
    w->reloads = reloads;
    snprintf(w->reload_err, sizeof w->reload_err, "%s", error ? error : "");
    uv_async_send(&w->ws->reload_async); /* under the lock, as done_async */
    uv_mutex_unlock(&w->ws->lock);
}

/* Load config and rules, start the router and serve until it stops. */
static void worker_main(void *arg)
{
    worker_t *w = arg;
    hr_workers_t *ws = w->ws;
    uv_loop_init(&w->loop);
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(ws->config_path, &errs);
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    char err[256] = "";
    if (!rs) {
        snprintf(err, sizeof err, "worker %u: %s", w->index,
                 errs.n ? errs.msgs[0] : "cannot load the config");
    } else {
        hr_router_worker_t rw = {.delivery = hr_handoff_port_open(ws->handoff, &w->loop),
                                 .index = w->index,
                                 .nworkers = ws->n,
                                 .counters = ws->counters,
                                 .port = w->port,
                                 .exclusive = w->index == 0};
        w->router = hr_router_start_worker(&w->loop, rs, &rw, err, sizeof err);
        if (w->router) {
            uv_async_init(&w->loop, &w->cmd, on_cmd);
            w->cmd.data = w;
            hr_router_on_reload(w->router, on_worker_reloaded, w);
        }
    }
    hr_errors_free(&errs);
    uv_mutex_lock(&ws->lock);
    w->started = true;
    w->ok = w->router != NULL;
    w->cmd_open = w->ok;
    if (w->ok) w->port = hr_router_port(w->router);
    snprintf(w->err, sizeof w->err, "%s", err);
    uv_cond_signal(&ws->cond);
    uv_mutex_unlock(&ws->lock);

    uv_run(&w->loop, UV_RUN_DEFAULT); /* also lets a failed start finish closing */
    hr_json_thread_done();
    int rc = uv_loop_close(&w->loop);
    if (rc != 0)
        hr_log_warn("worker %u: event loop closed with handles still open: %s", w->index,
                    uv_strerror(rc));
    uv_mutex_lock(&ws->lock);
    w->done = true;
    uv_async_send(&ws->done_async); /* under the lock: see on_done */
    uv_mutex_unlock(&ws->lock);
}

/* ---------------------------------------------------------------- delivery side */

static void release(hr_workers_t *ws)
{
    if (--ws->closing > 0) return;
    void (*cb)(void *) = ws->failed ? NULL : ws->stop_cb;
    void *arg = ws->stop_arg;
    hr_ruleset_unref(ws->rs);
    free(ws->config_path);
    for (unsigned i = 0; ws->counters && i < ws->n; i++)
        hr_router_counters_free(&ws->counters[i]);
    free(ws->counters);
    free(ws->w);
    uv_cond_destroy(&ws->cond);
    uv_mutex_destroy(&ws->lock);
    free(ws);
    if (cb) cb(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    release(h->data);
}

static void on_part_closed(void *arg)
{
    release(arg);
}

/* The outbox is drained (or there is none): close the delivery side. */
static void close_delivery(hr_workers_t *ws)
{
    ws->closing = 3;
    uv_close((uv_handle_t *)&ws->done_async, on_handle_closed);
    uv_close((uv_handle_t *)&ws->reload_async, on_handle_closed);
    if (ws->handoff) {
        ws->closing += 1;
        hr_handoff_close(ws->handoff, on_part_closed, ws);
    }
    if (ws->delivery)
        hr_delivery_close(ws->delivery, on_part_closed, ws);
    else
        release(ws);
}

static void on_delivery_drained(void *arg)
{
    close_delivery(arg);
}

/* A worker's loop ended. Once every thread's has (after a stop), join them and drain the
 * outbox until the deadline the workers' drains handed over (the end of their grace
 * period): no push can come any more. */
static void on_done(uv_async_t *a)
{
    hr_workers_t *ws = a->data;
    if (!ws->stopping) return; /* a failed start reports in hr_workers_start */
    unsigned done = 0;
    uv_mutex_lock(&ws->lock);
    for (unsigned i = 0; i < ws->nthreads; i++)
        done += ws->w[i].done;
    uv_mutex_unlock(&ws->lock);
    if (done < ws->nthreads || uv_is_closing((uv_handle_t *)a)) return;
    for (unsigned i = 0; i < ws->nthreads; i++)
        uv_thread_join(&ws->w[i].thread);
    ws->nthreads = 0;
    if (ws->failed || !ws->delivery) {
        close_delivery(ws);
        return;
    }
    hr_delivery_drain(ws->delivery, hr_handoff_drain_deadline(ws->handoff), on_delivery_drained,
                      ws);
}

/* Ask every running worker to stop (they finish their requests first). */
static void stop_workers(hr_workers_t *ws)
{
    uv_mutex_lock(&ws->lock);
    for (unsigned i = 0; i < ws->nthreads; i++) {
        worker_t *w = &ws->w[i];
        if (!w->cmd_open) continue;
        w->want_stop = true;
        w->cmd_open = false;
        uv_async_send(&w->cmd); /* under the lock: the worker closes cmd only after taking it */
    }
    uv_mutex_unlock(&ws->lock);
    uv_async_send(&ws->done_async); /* in case every thread is already done */
}

void hr_workers_request_reload(hr_workers_t *ws)
{
    if (ws->stopping) return;
    uv_mutex_lock(&ws->lock);
    for (unsigned i = 0; i < ws->nthreads; i++) {
        worker_t *w = &ws->w[i];
        if (!w->cmd_open) continue;
        w->want_reload = true;
        w->reload_asked++;
        uv_async_send(&w->cmd);
    }
    ws->reload_rounds++;
    uv_mutex_unlock(&ws->lock);
}

/* A worker's reload ended. Once every running worker has done every reload asked of it,
 * report the round: ok if every worker's last reload was, else the first failure. */
static void on_reload_async(uv_async_t *a)
{
    hr_workers_t *ws = a->data;
    if (ws->stopping || !ws->reload_cb) return;
    bool ok = true;
    char err[256] = "";
    uv_mutex_lock(&ws->lock);
    for (unsigned i = 0; i < ws->nthreads; i++) {
        const worker_t *w = &ws->w[i];
        if (!w->cmd_open) continue;
        if (w->reload_done != w->reload_asked) {
            uv_mutex_unlock(&ws->lock);
            return; /* a later wake-up reports */
        }
        if (ok && !w->reload_ok) snprintf(err, sizeof err, "%s", w->reload_err);
        ok &= w->reload_ok;
    }
    uint64_t reloads = ws->w[0].reloads;
    bool fresh = ws->rounds_reported != ws->reload_rounds;
    ws->rounds_reported = ws->reload_rounds;
    uv_mutex_unlock(&ws->lock);
    if (fresh) ws->reload_cb(ws->reload_arg, ok, reloads, ok ? NULL : err);
}

void hr_workers_on_reload(hr_workers_t *ws, hr_router_reload_cb cb, void *arg)
{
    ws->reload_cb = cb;
    ws->reload_arg = arg;
}

void hr_workers_stop(hr_workers_t *ws, void (*cb)(void *arg), void *arg)
{
    if (ws->stopping) return;
    ws->stopping = true;
    ws->stop_cb = cb;
    ws->stop_arg = arg;
    stop_workers(ws);
}

void hr_workers_log_listening(const hr_workers_t *ws)
{
    hr_router_log_listening_at(hr_ruleset_config(ws->rs), ws->w[0].port, ws->n);
}

/* Start worker i and wait until it listens or has failed. Returns 0 or -1 (err set). */
static int start_worker(hr_workers_t *ws, unsigned i, int port, char *err, size_t errlen)
{
    worker_t *w = &ws->w[i];
    w->ws = ws;
    w->index = i;
    w->port = port;
    if (uv_thread_create(&w->thread, worker_main, w) != 0) {
        snprintf(err, errlen, "worker %u: cannot create a thread", i);
        return -1;
    }
    ws->nthreads++;
    uv_mutex_lock(&ws->lock);
    while (!w->started)
        uv_cond_wait(&ws->cond, &ws->lock);
    bool ok = w->ok;
    if (!ok) snprintf(err, errlen, "%s", w->err);
    uv_mutex_unlock(&ws->lock);
    return ok ? 0 : -1;
}

hr_workers_t *hr_workers_start(uv_loop_t *loop, hr_ruleset_t *rs, unsigned n, char *err,
                               size_t errlen)
{
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_workers_t *ws = hr_xcalloc(1, sizeof *ws);
    ws->loop = loop;
    ws->rs = rs;
    ws->config_path = hr_xstrdup(cfg->file);
    ws->n = n;
    ws->w = hr_xcalloc(n, sizeof *ws->w);
    ws->counters = hr_xcalloc(n, sizeof *ws->counters);
    if (uv_mutex_init(&ws->lock) != 0 || uv_cond_init(&ws->cond) != 0) abort();
    uv_async_init(loop, &ws->done_async, on_done);
    ws->done_async.data = ws;
    uv_async_init(loop, &ws->reload_async, on_reload_async);
    ws->reload_async.data = ws;
    ws->delivery = hr_delivery_open(loop, cfg, err, errlen);
    if (ws->delivery) {
        ws->handoff = hr_handoff_open(loop, ws->delivery);
        int port = cfg->listen_port;
        for (unsigned i = 0; i < n; i++) {
            if (start_worker(ws, i, port, err, errlen) != 0) break;
            port = ws->w[0].port; /* port 0: the others bind the one the first got */
        }
    }
    if (ws->delivery && ws->nthreads == n && ws->w[n - 1].ok) return ws;
    /* Stop what started; the caller's loop finishes the job and frees ws. */
    ws->failed = true;
    ws->stopping = true;
    stop_workers(ws);
    return NULL;
}

unsigned hr_workers_auto(void)
{
    unsigned n = uv_available_parallelism();
    return n ? n : 1;
}
