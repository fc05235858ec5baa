/* The commands run and check (test: src/cli_test.c). */
#include "hr/cli.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "hr/json.h"
#include "hr/log.h"
#include "hr/lua_budget.h"
#include "hr/notify.h"
#include "hr/router.h"
#include "hr/rules.h"
#include "hr/spec.h"
#include "hr/workers.h"

/* Load config and rules; print every error to stderr. NULL on failure. run: the config's log
 * settings apply as soon as it is read (the lines held while it loaded, and those from loading
 * the rules, follow them; with log.format = "json" so do the errors, one log line each). */
static hr_ruleset_t *load_all(const char *config, bool run)
{
    struct stat st;
    if (stat(config, &st) != 0) {
        fprintf(stderr,
                "hookrouter: config file %s: %s\n"
                "  Give one with -c FILE, or start from the example:\n"
                "    hookrouter run -c examples/hookrouter.lua\n",
                config, strerror(errno));
        return NULL;
    }
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(config, &errs);
    if (run) /* and the lines held while it loaded go out */
        hr_log_apply(cfg ? cfg->log_level : NULL, cfg ? cfg->log_format : NULL);
    bool json = cfg && run && strcmp(cfg->log_format, "json") == 0;
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    for (size_t i = 0; i < errs.n; i++) {
        if (json)
            hr_log_kv(HR_LOG_ERROR, "cannot start", HR_KV_STR("error", errs.msgs[i]));
        else
            fprintf(stderr, "%s\n", errs.msgs[i]);
    }
    hr_errors_free(&errs);
    return rs;
}

/* ---------------------------------------------------------------- check */

hr_ruleset_t *hr_cli_load(const char *config)
{
    return load_all(config, false);
}

int hr_cmd_check(const char *config)
{
    hr_ruleset_t *rs = hr_cli_load(config);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_errors_t warns = {0};
    hr_ruleset_lint(rs, &warns);
    for (size_t i = 0; i < warns.n; i++)
        fprintf(stderr, "warning: %s\n", warns.msgs[i]);
    hr_errors_free(&warns);
    /* The spec files are compiled and checked too (not run: `hookrouter test` does that). */
    size_t nspecs, ncases = 0;
    char **specs = hr_spec_find(cfg->rules_dir, &nspecs);
    int rc = 0;
    for (size_t i = 0; i < nspecs; i++) {
        char err[1024];
        hr_spec_t *spec = hr_spec_load(specs[i], err, sizeof err);
        if (spec)
            ncases += spec->ncases;
        else
            fprintf(stderr, "%s\n", err);
        rc |= spec ? 0 : 1;
        hr_spec_free(spec);
        free(specs[i]);
    }
    free(specs);
    if (rc) {
        hr_ruleset_unref(rs);
        return 1;
    }
    char tests[64] = "";
    if (nspecs)
        snprintf(tests, sizeof tests, ", %zu spec file%s (%zu cases)", nspecs,
                 nspecs == 1 ? "" : "s", ncases);
    printf("ok: %s: %zu endpoints, %zu targets, %zu files, %zu store rules, default rule %s%s\n",
           config, cfg->nendpoints, cfg->ntargets, cfg->nfiles, hr_ruleset_store_count(rs),
           hr_ruleset_has_default(rs) ? "yes" : "no", tests);
    hr_ruleset_unref(rs);
    return 0;
}

/* ---------------------------------------------------------------- run */

typedef struct {
    hr_router_t *router;   /* one worker */
    hr_workers_t *workers; /* or several */
    uv_signal_t sighup, sigterm, sigint;
    int signals_open;
    bool stopped;
    bool reloading; /* RELOADING=1 sent, READY=1 owed */
    unsigned nworkers;
} runner_t;

/* The service manager's STATUS= line for a serving process. */
static void notify_serving(const char *head, uint64_t reloads, unsigned nworkers)
{
    hr_notifyf("%sSTATUS=serving (%u worker%s, %llu reload%s)", head, nworkers,
               nworkers == 1 ? "" : "s", (unsigned long long)reloads, reloads == 1 ? "" : "s");
}

/* A reload ended (hr_router_on_reload / hr_workers_on_reload): READY=1 again if we said
 * RELOADING=1, and a STATUS= line that says how it went. */
static void on_reloaded(void *arg, bool ok, uint64_t reloads, const char *error)
{
    runner_t *run = arg;
    const char *head = run->reloading ? "READY=1\n" : "";
    run->reloading = false;
    if (ok)
        notify_serving(head, reloads, run->nworkers);
    else
        hr_notifyf("%sSTATUS=reload failed, still serving the previous config (%llu reload%s): "
                   "%s",
                   head, (unsigned long long)reloads, reloads == 1 ? "" : "s", error);
}

static void on_signal_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_router_stopped(void *arg)
{
    runner_t *run = arg;
    run->router = NULL;
    run->workers = NULL;
    uv_close((uv_handle_t *)&run->sighup, on_signal_closed);
    uv_close((uv_handle_t *)&run->sigterm, on_signal_closed);
    uv_close((uv_handle_t *)&run->sigint, on_signal_closed);
}

static void on_signal(uv_signal_t *h, int signum)
{
    runner_t *run = h->data;
    if (signum == SIGHUP) {
        hr_log_info("SIGHUP: reloading");
        if (!run->reloading && !run->stopped)
            hr_notifyf("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
                       (unsigned long long)hr_notify_monotonic_usec());
        run->reloading = !run->stopped;
        if (run->workers)
            hr_workers_request_reload(run->workers);
        else
            hr_router_request_reload(run->router);
        return;
    }
    if (run->stopped) {
        hr_log_warn("%s again: exiting now", strsignal(signum));
        _exit(1);
    }
    run->stopped = true;
    hr_log_info("%s: shutting down", strsignal(signum));
    hr_notify("STOPPING=1\nSTATUS=shutting down: draining");
    if (run->workers)
        hr_workers_stop(run->workers, on_router_stopped, run);
    else
        hr_router_stop(run->router, on_router_stopped, run);
}

int hr_cmd_run(const char *config)
{
    /* A log line must never stop the daemon: not a reader gone (SIGPIPE), not a full pipe. */
    signal(SIGPIPE, SIG_IGN);
    hr_log_never_block();
    hr_log_hold(); /* until the config says which format */
    hr_ruleset_t *rs = load_all(config, true);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);

    uv_loop_t loop;
    uv_loop_init(&loop);
    runner_t run = {0};
    char err[256];
    char *listen = hr_xstrdup(cfg->listen);
    size_t nstores = hr_ruleset_store_count(rs), nendpoints = cfg->nendpoints;
    bool has_default = hr_ruleset_has_default(rs);
    char *file = hr_xstrdup(cfg->file);
    unsigned nworkers = cfg->workers ? cfg->workers : hr_workers_auto();
    if (nworkers == 1)
        run.router = hr_router_start(&loop, rs, err, sizeof err);
    else
        run.workers = hr_workers_start(&loop, rs, nworkers, err, sizeof err);
    if (!run.router && !run.workers) {
        hr_log_error("%s", err);
        free(listen);
        free(file);
        uv_run(&loop, UV_RUN_DEFAULT); /* let the half-built parts finish closing */
        uv_loop_close(&loop);
        return 1;
    }
    uv_signal_t *sigs[] = {&run.sighup, &run.sigterm, &run.sigint};
    int nums[] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(&loop, sigs[i]);
        sigs[i]->data = &run;
        uv_signal_start(sigs[i], on_signal, nums[i]);
    }
    hr_log_info("hookrouter %s: config %s: %zu endpoints, %zu store rules, default rule %s",
                HR_VERSION, file, nendpoints, nstores, has_default ? "yes" : "no");
    if (run.workers)
        hr_workers_log_listening(run.workers);
    else
        hr_router_log_listening(run.router);
    /* Every worker listens by now (hr_workers_start waits for each). */
    run.nworkers = nworkers;
    if (run.workers)
        hr_workers_on_reload(run.workers, on_reloaded, &run);
    else
        hr_router_on_reload(run.router, on_reloaded, &run);
    notify_serving("READY=1\n", 0, nworkers);
    free(listen);
    free(file);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc != 0) hr_log_warn("event loop closed with handles still open: %s", uv_strerror(rc));
    return 0;
}
