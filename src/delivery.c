/* The direct delivery: the outbox and its files on the caller's loop, behind the router's
 * delivery interface (see delivery.h); and the config -> outbox translation. */
#include "hr/delivery.h"

#include <stdlib.h>

#include "hr/files.h"
#include "hr/log.h"
#include "hr/redis_outbox.h"

typedef struct {
    hr_delivery_t base; /* first: the interface */
    hr_outbox_t *outbox;
    hr_files_t *files; /* the outbox's: write actions, dead letters */
    void (*cb)(void *arg);
    void *arg; /* drain's or close's callback */
} direct_t;

/* ---------------------------------------------------------------- config -> outbox */

hr_target_opts_t hr_delivery_target_opts(const hr_target_conf_t *t)
{
    return (hr_target_opts_t){.name = t->name,
                              .retry_ms = t->retry_ms,
                              .nretry = t->nretry,
                              .max_age_s = t->max_age_s,
                              .concurrency = t->concurrency,
                              .rate = t->rate,
                              .ordered = t->ordered,
                              .circuit_failures = t->circuit_failures,
                              .circuit_probe_ms = t->circuit_probe_ms,
                              .tls = t->tls,
                              .proxy = t->proxy,
                              .sign = t->sign};
}

/* The config's per-target delivery policies, as an array the caller frees (its strings point
 * into cfg). */
static hr_outbox_target_t *outbox_targets(const hr_config_t *cfg)
{
    hr_outbox_target_t *v = hr_xcalloc(cfg->ntargets + 1, sizeof *v);
    for (size_t i = 0; i < cfg->ntargets; i++)
        v[i] = hr_delivery_target_opts(&cfg->targets[i]);
    return v;
}

/* The write actions' policy of cfg. */
static hr_outbox_target_t outbox_writes(const hr_config_t *cfg)
{
    return (hr_outbox_target_t){.retry_ms = cfg->write_retry_ms, .nretry = cfg->nwrite_retry};
}

/* The outbox options for cfg; oo->targets is allocated (free it), its strings point into
 * cfg. */
static void outbox_opts(const hr_config_t *cfg, hr_outbox_opts_t *oo)
{
    *oo = (hr_outbox_opts_t){.dead_letters = cfg->dead_letters,
                             .max_conns_per_host = cfg->max_conns_per_target,
                             .spool = {.dir = cfg->spool_dir,
                                       .fsync = (hr_fsync_mode_t)cfg->fsync_mode,
                                       .fsync_interval_ms = cfg->fsync_interval_ms,
                                       .max_bytes = cfg->max_spool_bytes},
                             .targets = outbox_targets(cfg),
                             .ntargets = cfg->ntargets,
                             .writes = outbox_writes(cfg)};
}

/* Apply a reloaded cfg's delivery settings to o: dead-letter path and target policies. */
static void outbox_reconfigure(hr_outbox_t *o, const hr_config_t *cfg)
{
    hr_outbox_set_dead_letters(o, cfg->dead_letters);
    hr_outbox_target_t w = outbox_writes(cfg);
    hr_outbox_set_writes(o, &w, 0);
    hr_outbox_target_t *v = outbox_targets(cfg);
    hr_outbox_set_targets(o, v, cfg->ntargets);
    free(v);
}

/* ---------------------------------------------------------------- the interface */

static int direct_push(hr_delivery_t *d, hr_action_t *list, void (*cb)(void *arg, int status),
                       void *arg)
{
    return hr_outbox_push(((direct_t *)d)->outbox, list, cb, arg);
}

static void direct_stats(hr_delivery_t *d, hr_delivery_stats_cb cb, void *arg)
{
    direct_t *dd = (direct_t *)d;
    hr_outbox_stats_t st;
    hr_outbox_stats(dd->outbox, &st);
    hr_buf_t tj = HR_BUF_INIT;
    hr_outbox_targets_json(dd->outbox, &tj);
    cb(arg, &st, tj.data ? tj.data : "{}");
    hr_buf_free(&tj);
}

static void direct_reload(hr_delivery_t *d, const hr_config_t *cfg, void (*cb)(void *arg),
                          void *arg)
{
    direct_t *dd = (direct_t *)d;
    outbox_reconfigure(dd->outbox, cfg);
    hr_files_reopen(dd->files); /* logrotate moved the files: start new ones */
    hr_files_set_modes(dd->files, cfg->files, cfg->nfiles);
    if (cb) cb(arg);
}

static void on_drained(void *arg)
{
    direct_t *dd = arg;
    hr_outbox_stats_t st;
    hr_outbox_stats(dd->outbox, &st);
    hr_log_info("stopped: %llu delivered, %llu dead-lettered since start",
                (unsigned long long)st.delivered, (unsigned long long)st.dead);
    if (dd->cb) dd->cb(dd->arg);
}

static void direct_drain(hr_delivery_t *d, uint64_t deadline_ms, void (*cb)(void *arg), void *arg)
{
    direct_t *dd = (direct_t *)d;
    uint64_t now = hr_wall_ms();
    uint64_t left = deadline_ms > now ? deadline_ms - now : 0;
    hr_outbox_stats_t st;
    hr_outbox_stats(dd->outbox, &st);
    hr_log_info("shutdown: draining %llu pending deliveries (%llu ms of grace left)",
                (unsigned long long)st.pending, (unsigned long long)left);
    dd->cb = cb;
    dd->arg = arg;
    hr_outbox_drain(dd->outbox, left, on_drained, dd);
}

static void on_outbox_closed(void *arg)
{
    direct_t *dd = arg;
    void (*cb)(void *) = dd->cb;
    void *cb_arg = dd->arg;
    hr_files_destroy(dd->files);
    free(dd);
    if (cb) cb(cb_arg);
}

static void direct_close(hr_delivery_t *d, void (*cb)(void *arg), void *arg)
{
    direct_t *dd = (direct_t *)d;
    dd->cb = cb;
    dd->arg = arg;
    hr_outbox_close(dd->outbox, on_outbox_closed, dd);
}

static const hr_delivery_ops_t DIRECT_OPS = {.push = direct_push,
                                             .stats = direct_stats,
                                             .reload = direct_reload,
                                             .drain = direct_drain,
                                             .close = direct_close};

hr_delivery_t *hr_delivery_open(uv_loop_t *loop, const hr_config_t *cfg, char *err, size_t errlen)
{
#ifdef HR_HAVE_REDIS
    if (cfg->outbox.kind == HR_OUTBOX_REDIS) return hr_redis_delivery_open(loop, cfg, err, errlen);
#endif
    direct_t *dd = hr_xcalloc(1, sizeof *dd);
    dd->base.ops = &DIRECT_OPS;
    dd->files = hr_files_create();
    hr_files_set_modes(dd->files, cfg->files, cfg->nfiles);
    hr_outbox_opts_t oo;
    outbox_opts(cfg, &oo);
    dd->outbox = hr_outbox_open(loop, dd->files, &oo, err, errlen);
    free((void *)oo.targets);
    if (!dd->outbox) {
        hr_files_destroy(dd->files);
        free(dd);
        return NULL;
    }
    return &dd->base;
}
