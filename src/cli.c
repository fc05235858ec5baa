/* The commands: run, check and test. */
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

int hr_cmd_check(const char *config)
{
    hr_ruleset_t *rs = load_all(config, false);
    if (!rs) return 1;
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_errors_t warns = {0};
    hr_ruleset_lint(rs, &warns);
    for (size_t i = 0; i < warns.n; i++)
        fprintf(stderr, "warning: %s\n", warns.msgs[i]);
    hr_errors_free(&warns);
    printf("ok: %s: %zu endpoints, %zu targets, %zu files, %zu store rules, default rule %s\n",
           config, cfg->nendpoints, cfg->ntargets, cfg->nfiles, hr_ruleset_store_count(rs),
           hr_ruleset_has_default(rs) ? "yes" : "no");
    hr_ruleset_unref(rs);
    return 0;
}

/* ---------------------------------------------------------------- test */

/* Append an action's body: JSON as it is, anything else as a JSON string. */
static void append_body(hr_buf_t *out, const hr_action_t *a)
{
    if (a->body_is_json)
        hr_buf_append(out, a->body, a->body_len);
    else
        hr_buf_append_json_string(out, a->body, a->body_len);
}

static void append_headers(hr_buf_t *b, const hr_header_t *h, size_t n)
{
    hr_buf_appendc(b, '{');
    for (size_t i = 0; i < n; i++) {
        if (i) hr_buf_appendc(b, ',');
        hr_buf_append_json_string(b, h[i].name, strlen(h[i].name));
        hr_buf_appendc(b, ':');
        hr_buf_append_json_string(b, h[i].value, strlen(h[i].value));
    }
    hr_buf_appendc(b, '}');
}

/* Print a forward or write action, or a request() (kind is "forward" or "request"). */
static void print_action_as(const hr_action_t *a, const char *kind)
{
    hr_buf_t b = HR_BUF_INIT;
    if (a->kind == HR_ACTION_FORWARD) {
        hr_buf_printf(&b, "{\"action\":\"%s\",\"target\":", kind);
        hr_buf_append_json_string(&b, a->name, strlen(a->name));
        hr_buf_appends(&b, ",\"method\":");
        hr_buf_append_json_string(&b, a->method, strlen(a->method));
        hr_buf_appends(&b, ",\"url\":");
        hr_buf_append_json_string(&b, a->url, strlen(a->url));
        hr_buf_appends(&b, ",\"headers\":");
        append_headers(&b, a->headers, a->nheaders);
        hr_buf_appends(&b, ",\"body\":");
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

static void print_action(const hr_action_t *a)
{
    print_action_as(a, "forward");
}

/* {"action":"respond","status":200,"body":...[,"headers":{...}]} */
static void print_respond(const hr_reply_t *rp)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b, "{\"action\":\"respond\",\"status\":%d,\"body\":", rp->status);
    if (!rp->body)
        hr_buf_appends(&b, "null");
    else if (rp->body_is_json)
        hr_buf_append(&b, rp->body, rp->body_len);
    else
        hr_buf_append_json_string(&b, rp->body, rp->body_len);
    if (rp->nheaders) {
        hr_buf_appends(&b, ",\"headers\":");
        append_headers(&b, rp->headers, rp->nheaders);
    }
    hr_buf_appends(&b, "}\n");
    fwrite(b.data, 1, b.len, stdout);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- test --reply */

/* What answers request() in `hookrouter test`: a JSON file (status 200, that body), a Lua
 * stub file returning function(target, body, opts) -> {status, headers, body} | nil, err,
 * or nothing (every request() gets nil, "no answer ..."). */
typedef struct {
    char *json; /* FILE.json contents, or NULL */
    size_t json_len;
    lua_State *L;        /* FILE.lua: a plain state holding the stub function */
    int fn_ref;          /* registry reference of the stub function */
    hr_header_t hdr[16]; /* the current answer's headers and body (until the next call) */
    size_t nhdr;
    hr_buf_t body;
    char errmsg[512];
    bool failed; /* the stub itself failed: the test exits 1 */
} reply_stub_t;

static const hr_header_t JSON_HDR = {"content-type", "application/json"};

static void stub_clear(reply_stub_t *st)
{
    for (size_t i = 0; i < st->nhdr; i++) {
        free(st->hdr[i].name);
        free(st->hdr[i].value);
    }
    st->nhdr = 0;
    hr_buf_reset(&st->body);
}

/* Load the --reply file. Returns 0, or -1 with a message printed. A .lua file gets a state
 * of its own, whose stack is left empty (the stub function is in its registry).
 * [-0, +0, -] */
static int stub_load(reply_stub_t *st, const char *path)
{
    size_t n = strlen(path);
    if (n > 4 && strcmp(path + n - 4, ".lua") == 0) {
        st->L = luaL_newstate();
        luaL_openlibs(st->L);
        hr_json_open(st->L);
        lua_setglobal(st->L, "json");
        char *trace = NULL;
        if (luaL_loadfilex(st->L, path, "t") != LUA_OK ||
            hr_lua_pcall(st->L, 0, 1, &trace) != LUA_OK) {
            fprintf(stderr, "hookrouter test: --reply %s\n%s%s", lua_tostring(st->L, -1),
                    trace ? trace : "", trace ? "\n" : "");
            free(trace);
            return -1;
        }
        if (!lua_isfunction(st->L, -1)) {
            fprintf(stderr,
                    "hookrouter test: --reply %s must return a function(target, body, opts) "
                    "returning {status=..., headers=..., body=...}\n",
                    path);
            return -1;
        }
        st->fn_ref = luaL_ref(st->L, LUA_REGISTRYINDEX);
        return 0;
    }
    st->json = hr_read_file(path, &st->json_len);
    if (!st->json) {
        fprintf(stderr, "hookrouter test: --reply %s: %s\n", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* Free what st holds, closing the stub's state. [-0, +0, -] */
static void stub_close(reply_stub_t *st)
{
    stub_clear(st);
    hr_buf_free(&st->body);
    free(st->json);
    if (st->L) lua_close(st->L);
}

/* Call the Lua stub for req and turn its result into ans. [-0, +0, -] */
static void stub_call_lua(reply_stub_t *st, const hr_action_t *req, hr_rule_answer_t *ans)
{
    lua_State *L = st->L;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, st->fn_ref);
    lua_pushstring(L, req->name);
    char err[256];
    if (!req->body_is_json || hr_json_decode(L, req->body, req->body_len, err, sizeof err) != 0)
        lua_pushlstring(L, req->body, req->body_len);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->url);
    lua_setfield(L, -2, "url");
    lua_pushinteger(L, req->timeout_ms);
    lua_setfield(L, -2, "timeout_ms");
    lua_createtable(L, 0, (int)req->nheaders);
    for (size_t i = 0; i < req->nheaders; i++) {
        lua_pushstring(L, req->headers[i].value);
        lua_setfield(L, -2, req->headers[i].name);
    }
    lua_setfield(L, -2, "headers");
    char *trace = NULL;
    if (hr_lua_pcall(L, 3, 2, &trace) != LUA_OK) {
        snprintf(st->errmsg, sizeof st->errmsg, "--reply stub failed: %s", lua_tostring(L, -1));
        fprintf(stderr, "hookrouter test: %s\n%s%s", st->errmsg, trace ? trace : "",
                trace ? "\n" : "");
        free(trace);
        st->failed = true;
        ans->err = UV_EPROTO;
        ans->errmsg = st->errmsg;
        lua_settop(L, top);
        return;
    }
    if (lua_isnil(L, -2)) { /* nil, err: a transport error ("timeout" says which) */
        const char *m = lua_isstring(L, -1) ? lua_tostring(L, -1) : "stub returned nil";
        snprintf(st->errmsg, sizeof st->errmsg, "%s", m);
        ans->err = strstr(m, "timeout") ? UV_ETIMEDOUT : UV_ECONNREFUSED;
        ans->errmsg = st->errmsg;
        lua_settop(L, top);
        return;
    }
    if (!lua_istable(L, -2)) {
        snprintf(st->errmsg, sizeof st->errmsg,
                 "--reply stub must return a table {status=..., headers=..., body=...}, got %s",
                 luaL_typename(L, -2));
        fprintf(stderr, "hookrouter test: %s\n", st->errmsg);
        st->failed = true;
        ans->err = UV_EPROTO;
        ans->errmsg = st->errmsg;
        lua_settop(L, top);
        return;
    }
    lua_pop(L, 1);
    ans->status = lua_getfield(L, -1, "status") == LUA_TNUMBER ? (int)lua_tointeger(L, -1) : 200;
    lua_pop(L, 1);
    bool has_ct = false;
    if (lua_getfield(L, -1, "headers") == LUA_TTABLE) {
        lua_pushnil(L);
        while (lua_next(L, -2) && st->nhdr < HR_ARRAY_SIZE(st->hdr)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                char *name = hr_xstrdup(lua_tostring(L, -2));
                for (char *p = name; *p; p++)
                    *p = (char)tolower((unsigned char)*p);
                has_ct |= strcmp(name, "content-type") == 0;
                st->hdr[st->nhdr].name = name;
                st->hdr[st->nhdr].value = hr_xstrdup(lua_tostring(L, -1));
                st->nhdr++;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    int bt = lua_getfield(L, -1, "body");
    if (bt == LUA_TTABLE) {
        if (hr_json_encode(L, -1, &st->body, err, sizeof err) != 0) {
            fprintf(stderr, "hookrouter test: --reply stub body: %s\n", err);
            st->failed = true;
        }
        if (!has_ct && st->nhdr < HR_ARRAY_SIZE(st->hdr)) {
            st->hdr[st->nhdr].name = hr_xstrdup(JSON_HDR.name);
            st->hdr[st->nhdr].value = hr_xstrdup(JSON_HDR.value);
            st->nhdr++;
        }
    } else if (bt == LUA_TSTRING || bt == LUA_TNUMBER) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        hr_buf_append(&st->body, s, n);
    }
    hr_buf_reserve(&st->body, 1); /* a NUL-terminated, non-NULL body */
    ans->headers = st->hdr;
    ans->nheaders = st->nhdr;
    ans->body = st->body.data;
    ans->body_len = st->body.len;
    lua_settop(L, top);
}

/* hr_request_stub_cb for hookrouter test: print the request, answer from the --reply file. */
static void on_test_request(void *arg, const hr_action_t *req, hr_rule_answer_t *ans)
{
    reply_stub_t *st = arg;
    print_action_as(req, "request");
    stub_clear(st);
    if (st->L) {
        stub_call_lua(st, req, ans);
    } else if (st->json) {
        ans->status = 200;
        ans->headers = &JSON_HDR;
        ans->nheaders = 1;
        ans->body = st->json;
        ans->body_len = st->json_len;
    } else {
        ans->err = UV_ENOTSUP;
        ans->errmsg = "no answer: hookrouter test runs offline (give --reply FILE.json or a "
                      ".lua stub)";
    }
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
                char **payloads, size_t npayloads, const char *reply)
{
    reply_stub_t stub = {0};
    if (reply && stub_load(&stub, reply) != 0) {
        stub_close(&stub);
        return 1;
    }
    hr_ruleset_t *rs = load_all(config, false);
    if (!rs) {
        stub_close(&stub);
        return 1;
    }
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
        char *body = hr_read_file(payloads[i], &len);
        if (!body) {
            fprintf(stderr, "hookrouter test: %s: %s\n", payloads[i], strerror(errno));
            status = 1;
            continue;
        }
        char id[HR_ID_LEN], received_at[32];
        hr_id_new(id);
        uint64_t now = hr_wall_ms();
        hr_rfc3339(now, received_at);
        /* as if the sender proved the first token, as AiFi would */
        hr_event_in_t ev = {id,  ep->event,           "POST", path, hs, nhs, body, len, received_at,
                            now, cfg->ntokens ? 1 : 0};
        hr_run_result_t res;
        hr_ruleset_run_stub(rs, &ev, &res, on_test_request, &stub);
        if (stub.failed) status = 1;
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
            if (res.reply) print_respond(res.reply);
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
    stub_close(&stub);
    return status;
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
