/* The commands: run, check and test. */
#include "hr/cli.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "hr/log.h"
#include "hr/router.h"
#include "hr/rules.h"

/* Load config and rules; print every error to stderr. NULL on failure. */
static hr_ruleset_t *load_all(const char *config)
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
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msgs[i]);
    hr_errors_free(&errs);
    return rs;
}

/* ---------------------------------------------------------------- check */

int hr_cmd_check(const char *config)
{
    hr_ruleset_t *rs = load_all(config);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);
    printf("ok: %s: %zu endpoints, %zu targets, %zu files, %zu store rules, default rule %s\n",
           config, cfg->nendpoints, cfg->ntargets, cfg->nfiles, hr_ruleset_store_count(rs),
           hr_ruleset_has_default(rs) ? "yes" : "no");
    hr_ruleset_unref(rs);
    return 0;
}

/* ---------------------------------------------------------------- test */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    hr_buf_t b = HR_BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        hr_buf_append(&b, chunk, n);
    bool err = ferror(f);
    fclose(f);
    if (err) {
        hr_buf_free(&b);
        return NULL;
    }
    return hr_buf_steal(&b, len);
}

/* Append an action's body: JSON as it is, anything else as a JSON string. */
static void append_body(hr_buf_t *out, const hr_action_t *a)
{
    if (a->body_is_json)
        hr_buf_append(out, a->body, a->body_len);
    else
        hr_buf_append_json_string(out, a->body, a->body_len);
}

static void print_action(const hr_action_t *a)
{
    hr_buf_t b = HR_BUF_INIT;
    if (a->kind == HR_ACTION_FORWARD) {
        hr_buf_appends(&b, "{\"action\":\"forward\",\"target\":");
        hr_buf_append_json_string(&b, a->name, strlen(a->name));
        hr_buf_appends(&b, ",\"method\":");
        hr_buf_append_json_string(&b, a->method, strlen(a->method));
        hr_buf_appends(&b, ",\"url\":");
        hr_buf_append_json_string(&b, a->url, strlen(a->url));
        hr_buf_appends(&b, ",\"headers\":{");
        for (size_t i = 0; i < a->nheaders; i++) {
            if (i) hr_buf_appendc(&b, ',');
            hr_buf_append_json_string(&b, a->headers[i].name, strlen(a->headers[i].name));
            hr_buf_appendc(&b, ':');
            hr_buf_append_json_string(&b, a->headers[i].value, strlen(a->headers[i].value));
        }
        hr_buf_appends(&b, "},\"body\":");
    } else {
        hr_buf_appends(&b, "{\"action\":\"write\",\"file\":");
        hr_buf_append_json_string(&b, a->name, strlen(a->name));
        hr_buf_appends(&b, ",\"record\":");
    }
    append_body(&b, a);
    hr_buf_appends(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
    hr_buf_free(&b);
}

/* Parse "Name: value" into a header with a lower-case name. Returns 0 or -1. */
static int parse_header(const char *s, hr_header_t *h)
{
    const char *colon = strchr(s, ':');
    if (!colon || colon == s) return -1;
    h->name = hr_xstrndup(s, (size_t)(colon - s));
    for (char *p = h->name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    h->value = hr_xstrdup(v);
    return 0;
}

int hr_cmd_test(const char *config, const char *path, char **headers, size_t nheaders,
                char **payloads, size_t npayloads)
{
    hr_ruleset_t *rs = load_all(config);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);
    int status = 0;
    const hr_endpoint_conf_t *ep = hr_config_endpoint(cfg, path);
    hr_header_t *hs = hr_xcalloc(nheaders + 1, sizeof *hs);
    size_t nhs = 0;
    if (!ep) {
        fprintf(stderr, "hookrouter test: no endpoint for path %s in %s (configured:", path,
                config);
        for (size_t i = 0; i < cfg->nendpoints; i++)
            fprintf(stderr, " %s", cfg->endpoints[i].path);
        fprintf(stderr, ")\n");
        status = 1;
        goto out;
    }
    for (size_t i = 0; i < nheaders; i++) {
        if (parse_header(headers[i], &hs[nhs]) != 0) {
            fprintf(stderr, "hookrouter test: --header wants 'Name: value', got '%s'\n",
                    headers[i]);
            status = 1;
            goto out;
        }
        nhs++;
    }
    for (size_t i = 0; i < npayloads; i++) {
        size_t len;
        char *body = read_file(payloads[i], &len);
        if (!body) {
            fprintf(stderr, "hookrouter test: %s: %s\n", payloads[i], strerror(errno));
            status = 1;
            continue;
        }
        char id[HR_ID_LEN], received_at[32];
        hr_id_new(id);
        uint64_t now = hr_wall_ms();
        hr_rfc3339(now, received_at);
        hr_event_in_t ev = {id, ep->event, "POST", path, hs, nhs, body, len, received_at, now};
        hr_run_result_t res;
        hr_ruleset_run(rs, &ev, &res);
        if (res.status == HR_RUN_OK) {
            for (hr_action_t *a = res.actions; a; a = a->next)
                print_action(a);
            if (res.dropped) {
                hr_buf_t b = HR_BUF_INIT;
                hr_buf_appends(&b, "{\"action\":\"drop\",\"reason\":");
                hr_buf_append_json_string(&b, res.drop_reason, strlen(res.drop_reason));
                hr_buf_appends(&b, "}\n");
                fwrite(b.data, 1, b.len, stdout);
                hr_buf_free(&b);
            }
        } else {
            fprintf(stderr, "%s: %s%s\n", payloads[i],
                    res.status == HR_RUN_BAD_JSON ? "" : "rule failed: ", res.error);
            status = 1;
        }
        fflush(stdout);
        hr_run_result_free(&res);
        free(body);
    }
out:
    hr_headers_free(hs, nhs);
    hr_ruleset_unref(rs);
    return status;
}

/* ---------------------------------------------------------------- run */

typedef struct {
    hr_router_t *router;
    uv_signal_t sighup, sigterm, sigint;
    int signals_open;
    bool stopped;
} runner_t;

static void on_signal_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_router_stopped(void *arg)
{
    runner_t *run = arg;
    run->router = NULL;
    uv_close((uv_handle_t *)&run->sighup, on_signal_closed);
    uv_close((uv_handle_t *)&run->sigterm, on_signal_closed);
    uv_close((uv_handle_t *)&run->sigint, on_signal_closed);
}

static void on_signal(uv_signal_t *h, int signum)
{
    runner_t *run = h->data;
    if (signum == SIGHUP) {
        hr_log_info("SIGHUP: reloading");
        hr_router_request_reload(run->router);
        return;
    }
    if (run->stopped) {
        hr_log_warn("%s again: exiting now", strsignal(signum));
        _exit(1);
    }
    run->stopped = true;
    hr_log_info("%s: shutting down", strsignal(signum));
    hr_router_shutdown(run->router, on_router_stopped, run);
}

int hr_cmd_run(const char *config)
{
    hr_ruleset_t *rs = load_all(config);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_log_level_t level;
    if (hr_log_level_parse(cfg->log_level, &level) == 0) hr_log_set_level(level);
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    uv_loop_init(&loop);
    runner_t run = {0};
    char err[256];
    char *listen = hr_xstrdup(cfg->listen);
    size_t nstores = hr_ruleset_store_count(rs), nendpoints = cfg->nendpoints;
    bool has_default = hr_ruleset_has_default(rs);
    char *file = hr_xstrdup(cfg->file);
    run.router = hr_router_start(&loop, rs, err, sizeof err);
    if (!run.router) {
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
    hr_router_log_listening(run.router);
    free(listen);
    free(file);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop);
    if (rc != 0) hr_log_warn("event loop closed with handles still open: %s", uv_strerror(rc));
    return 0;
}
