/* The router: webhook pipeline, health endpoint, reload and shutdown for one event loop. */
#include "hr/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/files.h"
#include "hr/log.h"
#include "hr/outbox.h"
#include "hr/server.h"

struct hr_router {
    uv_loop_t *loop;
    hr_server_t *server;
    hr_ruleset_t *rs; /* current rule set (one reference held here) */
    hr_outbox_t *outbox;
    hr_files_t *files;
    char *config_path;       /* what a reload reads */
    uv_timer_t reload_timer; /* runs a requested reload from the loop */
    bool reload_pending;
    uint64_t started_ms;
    uint64_t loaded_ms; /* when the current rule set was loaded */
    uint64_t reloads;   /* successful reloads */
    uint64_t reload_failures;
    char *last_reload_error; /* NULL after a success */
    /* counters for /healthz */
    uint64_t events_accepted;
    uint64_t events_dropped;
    uint64_t events_failed;     /* rule failed: dead-lettered, 500 */
    uint64_t requests_rejected; /* 4xx before the rule */
    /* shutdown */
    bool stopping;
    uv_timer_t stop_timer;     /* polls for requests in flight to finish */
    uint64_t stop_deadline_ms; /* wall time when the grace period ends */
    void (*stop_cb)(void *);
    void *stop_arg;
    int closing_handles;
};

static const hr_header_t JSON_CT[] = {{"Content-Type", "application/json"}};

/* Reply with a JSON body {"error": msg} plus optional extra headers. */
static void reply_error(hr_http_request_t *req, int status, const char *msg,
                        const hr_header_t *extra, size_t nextra)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_appends(&b, "{\"error\":");
    hr_buf_append_json_string(&b, msg, strlen(msg));
    hr_buf_appendc(&b, '}');
    hr_header_t h[4] = {JSON_CT[0]};
    size_t n = 1;
    for (size_t i = 0; i < nextra && n < HR_ARRAY_SIZE(h); i++)
        h[n++] = extra[i];
    hr_http_reply(req, status, h, n, b.data, b.len);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- health */

static void reply_health(hr_router_t *r, hr_http_request_t *req)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    hr_outbox_stats_t st;
    hr_outbox_stats(r->outbox, &st);
    char loaded[32], started[32];
    hr_rfc3339(r->loaded_ms, loaded);
    hr_rfc3339(r->started_ms, started);
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b,
                  "{\"status\":\"%s\",\"version\":\"%s\",\"started_at\":\"%s\","
                  "\"loaded_at\":\"%s\",\"config\":",
                  r->stopping ? "stopping" : "ok", HR_VERSION, started, loaded);
    hr_buf_append_json_string(&b, cfg->file, strlen(cfg->file));
    hr_buf_printf(&b, ",\"reloads\":%llu,\"reload_failures\":%llu,\"last_reload_error\":",
                  (unsigned long long)r->reloads, (unsigned long long)r->reload_failures);
    if (r->last_reload_error)
        hr_buf_append_json_string(&b, r->last_reload_error, strlen(r->last_reload_error));
    else
        hr_buf_appends(&b, "null");
    hr_buf_printf(&b,
                  ",\"store_rules\":%zu,\"default_rule\":%s,"
                  "\"events\":{\"accepted\":%llu,\"dropped\":%llu,\"rule_failed\":%llu,"
                  "\"rejected\":%llu},"
                  "\"outbox\":{\"pending\":%llu,\"delivered\":%llu,\"retried\":%llu,"
                  "\"dead\":%llu},\"connections\":%zu}",
                  hr_ruleset_store_count(r->rs), hr_ruleset_has_default(r->rs) ? "true" : "false",
                  (unsigned long long)r->events_accepted, (unsigned long long)r->events_dropped,
                  (unsigned long long)r->events_failed, (unsigned long long)r->requests_rejected,
                  (unsigned long long)st.pending, (unsigned long long)st.delivered,
                  (unsigned long long)st.retried, (unsigned long long)st.dead,
                  hr_server_connections(r->server));
    hr_http_reply(req, r->stopping ? 503 : 200, JSON_CT, 1, b.data, b.len);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- pipeline */

/* True if the request carries "Authorization: Bearer <one of the tokens>". Every token is
 * compared, each in constant time, so timing tells nothing about which or how much matched. */
static bool authorized(const hr_config_t *cfg, const hr_http_request_t *req)
{
    if (cfg->insecure_no_auth) return true;
    const char *h = hr_http_header(req, "authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    size_t n = strlen(tok);
    bool ok = false;
    for (size_t i = 0; i < cfg->ntokens; i++)
        ok |= hr_consttime_eq(tok, n, cfg->tokens[i], strlen(cfg->tokens[i]));
    return ok;
}

/* Headers complete: answer what needs no body (health, 404, 405, 401). */
static void on_headers(hr_http_request_t *req, void *arg)
{
    hr_router_t *r = arg;
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    if (strcmp(req->path, "/healthz") == 0) {
        if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) {
            reply_health(r, req);
        } else {
            static const hr_header_t allow[] = {{"Allow", "GET, HEAD"}};
            reply_error(req, 405, "method not allowed: use GET /healthz", allow, 1);
        }
        return;
    }
    const hr_endpoint_conf_t *ep = hr_config_endpoint(cfg, req->path);
    if (!ep) {
        r->requests_rejected++;
        hr_log_info("rejected status=404 path=%s peer=%s: no endpoint for this path", req->path,
                    req->peer);
        reply_error(req, 404, "no webhook endpoint at this path", NULL, 0);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        static const hr_header_t allow[] = {{"Allow", "POST"}};
        r->requests_rejected++;
        hr_log_info("rejected status=405 method=%s path=%s peer=%s", req->method, req->path,
                    req->peer);
        reply_error(req, 405, "method not allowed: webhooks are POSTed", allow, 1);
        return;
    }
    if (!authorized(cfg, req)) {
        static const hr_header_t www[] = {{"WWW-Authenticate", "Bearer"}};
        r->requests_rejected++;
        hr_log_warn("rejected status=401 path=%s peer=%s: %s bearer token", req->path, req->peer,
                    hr_http_header(req, "authorization") ? "wrong" : "missing");
        reply_error(req, 401, "missing or invalid bearer token", www, 1);
        return;
    }
}

/* Dead-letter an event whose rule failed. */
static void dead_letter_event(hr_router_t *r, const hr_event_in_t *ev, const hr_run_result_t *res)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    hr_event_meta_t meta = {ev->id, ev->type, res->store, ev->method, ev->path, ev->received_at};
    hr_buf_t line = HR_BUF_INIT;
    hr_deadletter_for_event(&line, &meta, res->error, ev->body, ev->body_len);
    char err[256];
    if (hr_files_append(r->files, cfg->dead_letters, line.data, line.len, err, sizeof err) != 0)
        hr_log_error("cannot write dead letter to %s (%s); the event follows: %s",
                     cfg->dead_letters, err, line.data);
    hr_buf_free(&line);
}

/* Whole request arrived: decode, run the rule, hand the actions over, answer. */
static void on_request(hr_http_request_t *req, void *arg)
{
    hr_router_t *r = arg;
    hr_ruleset_t *rs = r->rs;
    /* Look the endpoint up again: a reload may have swapped the config since on_headers. */
    const hr_endpoint_conf_t *ep = hr_config_endpoint(hr_ruleset_config(rs), req->path);
    if (!ep) {
        reply_error(req, 404, "no webhook endpoint at this path", NULL, 0);
        return;
    }
    hr_ruleset_ref(rs); /* the event finishes on the rule set it started with */

    char id[HR_ID_LEN], received_at[32];
    hr_id_new(id);
    uint64_t now = hr_wall_ms();
    hr_rfc3339(now, received_at);
    hr_event_in_t ev = {.id = id,
                        .type = ep->event,
                        .method = req->method,
                        .path = req->path,
                        .headers = req->headers,
                        .nheaders = req->nheaders,
                        .body = req->body,
                        .body_len = req->body_len,
                        .received_at = received_at,
                        .received_ms = now};
    hr_run_result_t res;
    hr_ruleset_run(rs, &ev, &res);
    double ms = (double)(uv_hrtime() - req->start_ns) / 1e6;

    hr_buf_t body = HR_BUF_INIT;
    switch (res.status) {
    case HR_RUN_BAD_JSON:
        r->requests_rejected++;
        hr_log_warn("rejected status=400 type=%s path=%s peer=%s: %s", ep->event, req->path,
                    req->peer, res.error);
        reply_error(req, 400, res.error, NULL, 0);
        break;
    case HR_RUN_RULE_FAILED:
        r->events_failed++;
        hr_log_error("rule failed id=%s type=%s store=%s rule=%s: %s", id, ep->event,
                     res.store ? res.store : "-", res.rule ? res.rule : "-", res.error);
        dead_letter_event(r, &ev, &res);
        hr_buf_appends(&body, "{\"error\":\"rule failed\",\"id\":\"");
        hr_buf_appends(&body, id);
        hr_buf_appends(&body, "\"}");
        hr_http_reply(req, 500, JSON_CT, 1, body.data, body.len);
        break;
    case HR_RUN_OK: {
        if (hr_log_enabled(HR_LOG_INFO)) {
            hr_buf_t acts = HR_BUF_INIT;
            for (hr_action_t *a = res.actions; a; a = a->next)
                hr_buf_printf(&acts, "%s%s:%s", acts.len ? "," : "",
                              a->kind == HR_ACTION_FORWARD ? "forward" : "write", a->name);
            if (res.dropped) hr_buf_printf(&acts, "%sdrop", acts.len ? "," : "");
            hr_log_info("event id=%s type=%s store=%s rule=%s actions=%s ms=%.2f%s%s%s", id,
                        ep->event, res.store ? res.store : "-", res.rule ? res.rule : "-",
                        acts.len ? acts.data : "none", ms, res.dropped ? " reason=\"" : "",
                        res.dropped ? res.drop_reason : "", res.dropped ? "\"" : "");
            hr_buf_free(&acts);
        }
        r->events_accepted++;
        if (res.dropped && !res.actions) r->events_dropped++;
        if (res.actions) {
            hr_outbox_push(r->outbox, res.actions); /* the outbox owns them now */
            res.actions = NULL;
        }
        hr_buf_appends(&body, "{\"id\":\"");
        hr_buf_appends(&body, id);
        hr_buf_appends(&body, "\"}");
        hr_http_reply(req, 200, JSON_CT, 1, body.data, body.len);
        break;
    }
    }
    hr_buf_free(&body);
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

/* ---------------------------------------------------------------- reload */

static void do_reload(uv_timer_t *t)
{
    hr_router_t *r = t->data;
    r->reload_pending = false; /* a SIGHUP from now on asks for one more */
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(r->config_path, &errs);
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    if (!rs) {
        r->reload_failures++;
        free(r->last_reload_error);
        r->last_reload_error = hr_xstrdup(errs.n ? errs.msgs[0] : "unknown error");
        for (size_t i = 0; i < errs.n; i++)
            hr_log_error("reload failed: %s", errs.msgs[i]);
        char loaded[32];
        hr_rfc3339(r->loaded_ms, loaded);
        hr_log_warn("reload: still serving the config and rules loaded at %s", loaded);
        hr_errors_free(&errs);
        return;
    }
    const hr_config_t *old = hr_ruleset_config(r->rs);
    if (strcmp(old->listen, cfg->listen) != 0)
        hr_log_warn("reload: listen changed from %s to %s: that needs a restart; still "
                    "listening on port %d",
                    old->listen, cfg->listen, hr_server_port(r->server));
    hr_log_level_t level;
    if (hr_log_level_parse(cfg->log_level, &level) == 0) hr_log_set_level(level);
    hr_ruleset_unref(r->rs); /* events in flight hold their own reference */
    r->rs = rs;
    r->reloads++;
    r->loaded_ms = hr_wall_ms();
    free(r->last_reload_error);
    r->last_reload_error = NULL;
    hr_outbox_set_dead_letters(r->outbox, cfg->dead_letters);
    hr_files_reopen(r->files); /* logrotate moved the files: start new ones */
    hr_log_info("reloaded %s (reload #%llu): %zu endpoints, %zu store rules, default rule %s",
                cfg->file, (unsigned long long)r->reloads, cfg->nendpoints,
                hr_ruleset_store_count(rs), hr_ruleset_has_default(rs) ? "yes" : "no");
}

void hr_router_log_listening(const hr_router_t *r)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    bool v6 = strchr(cfg->listen_host, ':') != NULL;
    hr_log_info("listening on %s%s%s:%d", v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "",
                hr_server_port(r->server));
}

void hr_router_request_reload(hr_router_t *r)
{
    if (r->stopping || r->reload_pending) return;
    r->reload_pending = true;
    uv_timer_start(&r->reload_timer, do_reload, 0, 0);
}

/* ---------------------------------------------------------------- start and stop */

hr_router_t *hr_router_start(uv_loop_t *loop, hr_ruleset_t *rs, char *err, size_t errlen)
{
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_router_t *r = hr_xcalloc(1, sizeof *r);
    r->loop = loop;
    r->rs = rs;
    r->config_path = hr_xstrdup(cfg->file);
    r->started_ms = r->loaded_ms = hr_wall_ms();
    r->files = hr_files_create();
    hr_outbox_opts_t oo = {.dead_letters = cfg->dead_letters,
                           .retry_base_ms = cfg->retry_base_ms,
                           .retry_max_ms = cfg->retry_max_ms,
                           .max_conns_per_host = cfg->max_conns_per_target};
    r->outbox = hr_outbox_create(loop, r->files, &oo);
    hr_server_opts_t so = {.host = cfg->listen_host,
                           .port = cfg->listen_port,
                           .body_limit = cfg->limits.body_bytes,
                           .header_limit = cfg->limits.header_bytes,
                           .idle_timeout_ms = cfg->limits.idle_timeout_ms,
                           .request_timeout_ms = cfg->limits.request_timeout_ms,
                           .on_headers = on_headers,
                           .on_request = on_request,
                           .arg = r};
    r->server = hr_server_start(loop, &so, err, errlen);
    if (!r->server) {
        hr_outbox_close(r->outbox, NULL, NULL);
        hr_files_destroy(r->files);
        free(r->config_path);
        free(r);
        hr_ruleset_unref(rs);
        return NULL;
    }
    uv_timer_init(loop, &r->reload_timer);
    r->reload_timer.data = r;
    uv_timer_init(loop, &r->stop_timer);
    r->stop_timer.data = r;
    return r;
}

/* One part of the router finished closing; the last one frees the router. */
static void release(hr_router_t *r)
{
    if (--r->closing_handles > 0) return;
    void (*cb)(void *) = r->stop_cb;
    void *arg = r->stop_arg;
    hr_files_destroy(r->files);
    hr_ruleset_unref(r->rs);
    free(r->config_path);
    free(r->last_reload_error);
    free(r);
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

static void on_outbox_drained(void *arg)
{
    hr_router_t *r = arg;
    hr_outbox_stats_t st;
    hr_outbox_stats(r->outbox, &st);
    hr_log_info("stopped: %llu delivered, %llu dead-lettered since start",
                (unsigned long long)st.delivered, (unsigned long long)st.dead);
    /* Each of the four closes below ends in one release(). */
    r->closing_handles = 4;
    uv_close((uv_handle_t *)&r->reload_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->stop_timer, on_handle_closed);
    hr_server_close(r->server, on_part_closed, r);
    hr_outbox_close(r->outbox, on_part_closed, r);
}

/* Poll until every connection has finished its request (requests still arriving count: the
 * sender has no retry) or the grace period is over, then drain the outbox for what is left
 * of the grace period. The outbox keeps delivering all along. */
static void on_stop_tick(uv_timer_t *t)
{
    hr_router_t *r = t->data;
    uint64_t now = hr_wall_ms();
    bool busy = hr_server_inflight(r->server) > 0 || hr_server_connections(r->server) > 0;
    if (busy && now < r->stop_deadline_ms) return;
    if (hr_server_inflight(r->server) > 0) return; /* a rule still runs: never cut it off */
    uv_timer_stop(t);
    if (busy)
        hr_log_warn("shutdown: grace period over, closing %zu connections",
                    hr_server_connections(r->server));
    uint64_t left = r->stop_deadline_ms > now ? r->stop_deadline_ms - now : 0;
    hr_outbox_stats_t st;
    hr_outbox_stats(r->outbox, &st);
    hr_log_info("shutdown: draining %llu pending deliveries (%llu ms of grace left)",
                (unsigned long long)st.pending, (unsigned long long)left);
    hr_outbox_drain(r->outbox, left, on_outbox_drained, r);
}

void hr_router_shutdown(hr_router_t *r, void (*cb)(void *arg), void *arg)
{
    if (r->stopping) return;
    r->stopping = true;
    r->stop_cb = cb;
    r->stop_arg = arg;
    r->stop_deadline_ms = hr_wall_ms() + hr_ruleset_config(r->rs)->shutdown_grace_ms;
    uv_timer_stop(&r->reload_timer);
    hr_log_info("shutdown: no longer accepting connections");
    hr_server_stop_accepting(r->server);
    uv_timer_start(&r->stop_timer, on_stop_tick, 0, 10);
}
