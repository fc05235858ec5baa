/* Front workers (one thread and loop each) and the delivery side on the caller's loop. */
#include "hr/workers.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/files.h"
#include "hr/handoff.h"
#include "hr/json.h"
#include "hr/log.h"
#include "hr/outbox.h"
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
    bool cmd_open; /* cmd may be sent to (the worker started and has not taken a stop) */
    /* lifecycle (worker -> main) */
    bool started;  /* the start attempt is over (see ok) */
    bool ok;       /* the router runs */
    bool done;     /* the loop has ended: the thread can be joined */
    int port;      /* the bound port (when ok) */
    char err[256]; /* why it did not start */
} worker_t;

struct hr_workers {
    uv_loop_t *loop;     /* the delivery loop (the caller's thread) */
    hr_ruleset_t *rs;    /* the last config and rules that loaded here (one reference) */
    char *config_path;   /* what workers and reloads read */
    hr_files_t *files;   /* write actions and dead letters of undeliverable actions */
    hr_outbox_t *outbox; /* the one outbox */
    hr_handoff_t *handoff;
    hr_router_counters_t *counters; /* one per worker, for /healthz */
    worker_t *w;
    unsigned n;              /* workers */
    unsigned nthreads;       /* threads created (each ends with done) */
    uv_mutex_t lock;         /* guards the shared fields of every worker_t */
    uv_cond_t cond;          /* signalled when a worker's start attempt is over */
    uv_async_t done_async;   /* wakes the delivery loop: a worker's loop has ended */
    uv_timer_t reload_timer; /* runs a requested reload of the delivery side */
    bool reload_pending;
    bool stopping;
    bool failed; /* a start failed: shut down, and give no callback */
    uint64_t stop_deadline_ms;
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
    uv_mutex_unlock(&w->ws->lock);
    if (stop) {
        uv_close((uv_handle_t *)&w->cmd, NULL);
        hr_router_shutdown(w->router, on_worker_router_stopped, w);
    } else if (reload) {
        hr_router_request_reload(w->router);
    }
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
        hr_router_worker_t rw = {.handoff = ws->handoff,
                                 .index = w->index,
                                 .nworkers = ws->n,
                                 .counters = ws->counters,
                                 .port = w->port,
                                 .exclusive = w->index == 0};
        w->router = hr_router_start_worker(&w->loop, rs, &rw, err, sizeof err);
        if (w->router) {
            uv_async_init(&w->loop, &w->cmd, on_cmd);
            w->cmd.data = w;
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
    hr_files_destroy(ws->files);
    hr_ruleset_unref(ws->rs);
    free(ws->config_path);
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
    uv_close((uv_handle_t *)&ws->reload_timer, on_handle_closed);
    if (ws->handoff) {
        ws->closing += 1;
        hr_handoff_close(ws->handoff, on_part_closed, ws);
    }
    if (ws->outbox)
        hr_outbox_close(ws->outbox, on_part_closed, ws);
    else
        release(ws);
}

static void on_outbox_drained(void *arg)
{
    hr_workers_t *ws = arg;
    hr_outbox_stats_t st;
    hr_outbox_stats(ws->outbox, &st);
    hr_log_info("stopped: %llu delivered, %llu dead-lettered since start",
                (unsigned long long)st.delivered, (unsigned long long)st.dead);
    close_delivery(ws);
}

/* A worker's loop ended. Once every thread's has (after a stop), join them and drain the
 * outbox for what is left of the grace period: no push can come any more. */
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
    if (ws->failed || !ws->outbox) {
        close_delivery(ws);
        return;
    }
    uint64_t now = hr_wall_ms();
    uint64_t left = ws->stop_deadline_ms > now ? ws->stop_deadline_ms - now : 0;
    hr_outbox_stats_t st;
    hr_outbox_stats(ws->outbox, &st);
    hr_log_info("shutdown: draining %llu pending deliveries (%llu ms of grace left)",
                (unsigned long long)st.pending, (unsigned long long)left);
    hr_outbox_drain(ws->outbox, left, on_outbox_drained, ws);
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

/* The delivery side's part of a reload: all or nothing, like the workers'. */
static void do_reload(uv_timer_t *t)
{
    hr_workers_t *ws = t->data;
    ws->reload_pending = false;
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(ws->config_path, &errs);
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    hr_errors_free(&errs); /* the workers log them */
    if (!rs) return;
    hr_router_outbox_reconfigure(ws->outbox, hr_ruleset_config(rs));
    hr_files_reopen(ws->files); /* logrotate moved the files: start new ones */
    hr_files_set_modes(ws->files, hr_ruleset_config(rs)->files, hr_ruleset_config(rs)->nfiles);
    hr_ruleset_unref(ws->rs);
    ws->rs = rs;
}

void hr_workers_request_reload(hr_workers_t *ws)
{
    if (ws->stopping) return;
    uv_mutex_lock(&ws->lock);
    for (unsigned i = 0; i < ws->nthreads; i++) {
        worker_t *w = &ws->w[i];
        if (!w->cmd_open) continue;
        w->want_reload = true;
        uv_async_send(&w->cmd);
    }
    uv_mutex_unlock(&ws->lock);
    if (ws->reload_pending) return;
    ws->reload_pending = true;
    uv_timer_start(&ws->reload_timer, do_reload, 0, 0);
}

void hr_workers_shutdown(hr_workers_t *ws, void (*cb)(void *arg), void *arg)
{
    if (ws->stopping) return;
    ws->stopping = true;
    ws->stop_cb = cb;
    ws->stop_arg = arg;
    ws->stop_deadline_ms = hr_wall_ms() + hr_ruleset_config(ws->rs)->shutdown_grace_ms;
    uv_timer_stop(&ws->reload_timer);
    stop_workers(ws);
}

void hr_workers_log_listening(const hr_workers_t *ws)
{
    const hr_config_t *cfg = hr_ruleset_config(ws->rs);
    bool v6 = strchr(cfg->listen_host, ':') != NULL;
    hr_log_info("listening on %s%s%s:%d (%u workers)", v6 ? "[" : "", cfg->listen_host,
                v6 ? "]" : "", ws->w[0].port, ws->n);
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
    ws->files = hr_files_create();
    hr_files_set_modes(ws->files, cfg->files, cfg->nfiles);
    if (uv_mutex_init(&ws->lock) != 0 || uv_cond_init(&ws->cond) != 0) abort();
    uv_async_init(loop, &ws->done_async, on_done);
    ws->done_async.data = ws;
    uv_timer_init(loop, &ws->reload_timer);
    ws->reload_timer.data = ws;
    hr_outbox_opts_t oo;
    hr_router_outbox_opts(cfg, &oo);
    ws->outbox = hr_outbox_create(loop, ws->files, &oo, err, errlen);
    free((void *)oo.targets);
    if (ws->outbox) {
        ws->handoff = hr_handoff_create(loop, ws->outbox);
        int port = cfg->listen_port;
        for (unsigned i = 0; i < n; i++) {
            if (start_worker(ws, i, port, err, errlen) != 0) break;
            port = ws->w[0].port; /* port 0: the others bind the one the first got */
        }
    }
    if (ws->outbox && ws->nthreads == n && ws->w[n - 1].ok) return ws;
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
