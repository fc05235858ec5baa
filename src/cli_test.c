/* hookrouter test: spec files (TAP, JUnit) or payloads printed as JSON lines, with stub
 * answers for request() (see include/hr/cli_test.h). */
#include "hr/cli_test.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "hr/cli.h"
#include "hr/crypto.h"
#include "hr/json.h"
#include "hr/lua_budget.h"
#include "hr/lua_text.h"
#include "hr/lua_time.h"
#include "hr/rules.h"
#include "hr/spec.h"

/* Format ms as received_at is written (RFC 3339 UTC with milliseconds); out holds 32 bytes.
 * A time outside years 0..9999 gives the epoch's text. */
static void format_time(int64_t ms, char out[32])
{
    if (ms >= 0 && ms < INT64_C(253402300800000)) { /* the usual case, without printf */
        hr_rfc3339((uint64_t)ms, out);
        return;
    }
    hr_buf_t b = HR_BUF_INIT;
    char err[64];
    if (hr_time_format(ms, NULL, &b, err, sizeof err) != 0 || b.len >= 32) {
        hr_buf_reset(&b);
        hr_buf_appends(&b, "1970-01-01T00:00:00.000Z");
    }
    memcpy(out, b.data, b.len + 1);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- payload form */

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
    bool failed;   /* the stub itself failed: the test exits 1 */
    bool borrowed; /* L is a spec's state, not closed here */
    long delay_ms; /* the current answer's delay_ms (a slow legacy service), 0 if none */
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
    if (st->L && !st->borrowed) lua_close(st->L);
}

/* Call the Lua stub for req and turn its result into ans. [-0, +0, -] */
static void stub_call_lua(reply_stub_t *st, const hr_action_t *req, hr_rule_answer_t *ans)
{
    lua_State *L = st->L;
    int top = lua_gettop(L);
    st->delay_ms = 0;
    if (lua_rawgeti(L, LUA_REGISTRYINDEX, st->fn_ref) == LUA_TTABLE) {
        lua_pushnil(L); /* a spec's reply table: the answer itself */
        goto answer;
    }
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
answer:
    if (lua_istable(L, -2)) {
        int res = lua_gettop(L) - 1;
        if (lua_getfield(L, res, "delay_ms") == LUA_TNUMBER)
            st->delay_ms = (long)lua_tointeger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, res, "error") == LUA_TSTRING) { /* {error = "timeout"} */
            lua_replace(L, res + 1);                        /* as nil, "timeout" */
            lua_pushnil(L);
            lua_replace(L, res);
        } else {
            lua_pop(L, 1);
        }
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
                char *name = hr_xstrdup_lower(lua_tostring(L, -2));
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
    hr_ascii_lower(h->name, h->name, (size_t)(colon - s));
    const char *v = colon + 1;
    while (*v == ' ' || *v == '\t')
        v++;
    h->value = hr_xstrdup(v);
    return 0;
}

/* The payload form: --path PATH PAYLOAD.json... */
static int test_payloads(const hr_test_opts_t *o)
{
    const char *config = o->config, *path = o->path, *reply = o->reply;
    char **headers = o->headers, **payloads = o->files;
    size_t nheaders = o->nheaders, npayloads = o->nfiles;
    int64_t fixed = 0;
    char err[160];
    if (o->now && hr_time_parse(o->now, strlen(o->now), &fixed, err, sizeof err) != 0) {
        fprintf(stderr, "hookrouter test: --now %s: %s\n", o->now, err);
        return 2;
    }
    if (o->id && strlen(o->id) >= HR_ID_LEN) {
        fprintf(stderr, "hookrouter test: --id is at most %d characters\n", HR_ID_LEN - 1);
        return 2;
    }
    reply_stub_t stub = {0};
    if (reply && stub_load(&stub, reply) != 0) {
        stub_close(&stub);
        return 1;
    }
    hr_ruleset_t *rs = hr_cli_load(config);
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
        if (o->id)
            snprintf(id, sizeof id, "%s", o->id);
        else
            hr_id_new(id);
        int64_t now = o->now ? fixed : (int64_t)hr_wall_ms();
        format_time(now, received_at);
        /* as if the sender proved the first token, as AiFi would */
        hr_event_in_t ev = {.id = id,
                            .type = ep->event,
                            .method = "POST",
                            .path = path,
                            .headers = hs,
                            .nheaders = nhs,
                            .body = body,
                            .body_len = len,
                            .received_at = received_at,
                            .received_ms = (uint64_t)now,
                            .token = cfg->ntokens ? 1 : 0,
                            .fixed_clock = o->now != NULL};
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

/* ---------------------------------------------------------------- spec form */

/* What one case or one unloadable spec came to, for the JUnit file. */
typedef struct {
    char *file;
    char *name; /* the case, or NULL: the file did not load */
    bool ok;
    char *details; /* the "# ..." lines, or the load error */
} outcome_t;

typedef struct {
    outcome_t *v;
    size_t n;
    unsigned passed, failed;
} outcomes_t;

static void add_outcome(outcomes_t *os, const char *file, const char *name, bool ok,
                        const char *details)
{
    os->v = hr_xrealloc(os->v, (os->n + 1) * sizeof *os->v);
    os->v[os->n++] = (outcome_t){hr_xstrdup(file), name ? hr_xstrdup(name) : NULL, ok,
                                 hr_xstrdup(details ? details : "")};
    if (ok)
        os->passed++;
    else
        os->failed++;
}

/* Push a decoded JSON body, or the string as it is. [-0, +1, m] */
static void push_body(lua_State *L, const char *body, size_t len, bool is_json)
{
    char err[256];
    if (!body) {
        lua_pushnil(L);
    } else if (!is_json || hr_json_decode(L, body, len, err, sizeof err) != 0) {
        lua_pushlstring(L, body, len);
    }
}

/* Push headers as a table with lower-case names. [-0, +1, m] */
static void push_headers(lua_State *L, const hr_header_t *h, size_t n)
{
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        char *name = hr_xstrdup_lower(h[i].name);
        lua_pushstring(L, h[i].value);
        lua_setfield(L, -2, name);
        free(name);
    }
}

/* Push an action as the spec compares it: {action, target, method, url, headers,
 * content_type, body} for forward and request, {action, file, record} for write.
 * [-0, +1, m] */
static void push_action(lua_State *L, const hr_action_t *a, const char *kind)
{
    lua_createtable(L, 0, 7);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "action");
    if (a->kind == HR_ACTION_FORWARD) {
        lua_pushstring(L, a->name);
        lua_setfield(L, -2, "target");
        lua_pushstring(L, a->method);
        lua_setfield(L, -2, "method");
        lua_pushstring(L, a->url);
        lua_setfield(L, -2, "url");
        push_headers(L, a->headers, a->nheaders);
        lua_getfield(L, -1, "content-type");
        lua_setfield(L, -3, "content_type");
        lua_setfield(L, -2, "headers");
        push_body(L, a->body, a->body_len, a->body_is_json);
        lua_setfield(L, -2, "body");
    } else {
        lua_pushstring(L, a->name);
        lua_setfield(L, -2, "file");
        push_body(L, a->body, a->body_len, a->body_is_json);
        lua_setfield(L, -2, "record");
    }
}

/* Push {status, body, headers} for a fixed reply. [-0, +1, m] */
static void push_reply(lua_State *L, const hr_reply_t *rp)
{
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, rp->status);
    lua_setfield(L, -2, "status");
    push_body(L, rp->body, rp->body_len, rp->body_is_json);
    lua_setfield(L, -2, "body");
    push_headers(L, rp->headers, rp->nheaders);
    lua_setfield(L, -2, "headers");
}

/* Push {status, body = {error = ..., id = ...}}: what the router answers without a reply of
 * the rule's or a fallback. [-0, +1, m] */
static void push_status_reply(lua_State *L, int status, const char *error, const char *id)
{
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, 2);
    if (error) {
        lua_pushstring(L, error);
        lua_setfield(L, -2, "error");
    }
    lua_pushstring(L, id);
    lua_setfield(L, -2, "id");
    lua_setfield(L, -2, "body");
    lua_newtable(L);
    lua_setfield(L, -2, "headers");
}

/* The event id of case i of file: a UUIDv7 of now_ms whose other bits come from the SHA-256
 * of the file's base name, i and the case's name, so every run gives the same id. */
static void case_id(const char *file, size_t i, const hr_spec_case_t *c, char out[HR_ID_LEN])
{
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    char *key = hr_xasprintf("%s\n%zu\n%s", base, i + 1, c->name);
    unsigned char d[HR_SHA256_LEN], b[16];
    hr_sha256(key, strlen(key), d);
    free(key);
    hr_uuid_v7((uint64_t)c->now_ms, (unsigned)(d[0] << 8 | d[1]), d + 2, b);
    hr_uuid_format(b, out);
}

/* The first line of s as a new string. */
static char *first_line(const char *s)
{
    return hr_xstrndup(s, strcspn(s, "\n"));
}

/* Run case i of spec against rs; append its "# " lines to diff. Returns true if it passed.
 * [-0, +0, m] on the spec's state */
static bool run_case(hr_ruleset_t *rs, hr_spec_t *spec, size_t i, hr_buf_t *diff)
{
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_spec_case_t *c = &spec->cases[i];
    lua_State *L = spec->L;
    int top = lua_gettop(L);
    const hr_endpoint_conf_t *ep = hr_config_endpoint(cfg, c->path);
    if (!ep) {
        hr_buf_printf(diff, "# path: no endpoint %s in %s\n", c->path, cfg->file);
        return false;
    }
    char id[HR_ID_LEN], received_at[32];
    case_id(spec->file, i, c, id);
    format_time(c->now_ms, received_at);
    hr_event_in_t ev = {.id = id,
                        .type = ep->event,
                        .method = "POST",
                        .path = c->path,
                        .headers = c->headers,
                        .nheaders = c->nheaders,
                        .body = c->body,
                        .body_len = c->body_len,
                        .received_at = received_at,
                        .received_ms = (uint64_t)c->now_ms,
                        .token = cfg->ntokens ? 1 : 0,
                        .fixed_clock = true};
    reply_stub_t stub = {0};
    stub.L = L;
    stub.borrowed = true;
    stub.fn_ref = c->reply_ref;

    lua_newtable(L); /* the requests, in order */
    int reqs = lua_gettop(L);
    size_t *req_at = NULL, nreq = 0; /* how many actions came before each request */
    long elapsed = 0;
    bool deadline = false;
    hr_run_result_t res;
    hr_run_step_t st = hr_ruleset_start(rs, &ev, &res);
    while (st == HR_STEP_SUSPENDED) {
        const hr_action_t *req = res.request;
        push_action(L, req, "request");
        lua_rawseti(L, reqs, (lua_Integer)nreq + 1);
        req_at = hr_xrealloc(req_at, (nreq + 1) * sizeof *req_at);
        req_at[nreq++] = res.nactions;
        hr_rule_answer_t ans = {0};
        stub_clear(&stub);
        if (c->reply_ref == LUA_NOREF) {
            ans.err = UV_ENOTSUP;
            ans.errmsg = "no answer: the case has no reply";
        } else {
            stub_call_lua(&stub, req, &ans);
        }
        long wait = stub.delay_ms > 0 ? stub.delay_ms : 0;
        if (wait >= (long)req->timeout_ms) { /* slower than the request's timeout */
            wait = (long)req->timeout_ms;
            ans = (hr_rule_answer_t){.err = UV_ETIMEDOUT, .errmsg = "timeout"};
        }
        ans.ms = (double)wait;
        elapsed += wait;
        if (elapsed >= (long)ep->reply_timeout_ms) {
            char why[64];
            snprintf(why, sizeof why, "reply deadline exceeded (%u ms)", ep->reply_timeout_ms);
            hr_ruleset_abandon(&res, why);
            deadline = true;
            break;
        }
        st = hr_ruleset_resume(&res, &ans);
    }
    if (stub.failed) hr_buf_printf(diff, "# reply: %s\n", stub.errmsg);

    /* the actual actions: requests, forwards and writes in call order, then a drop */
    lua_newtable(L);
    int acts = lua_gettop(L);
    lua_Integer n = 0;
    size_t r = 0, k = 0;
    for (const hr_action_t *a = res.actions; a; a = a->next, k++) {
        for (; r < nreq && req_at[r] <= k; r++) {
            lua_rawgeti(L, reqs, (lua_Integer)r + 1);
            lua_rawseti(L, acts, ++n);
        }
        push_action(L, a, a->kind == HR_ACTION_FORWARD ? "forward" : "write");
        lua_rawseti(L, acts, ++n);
    }
    for (; r < nreq; r++) {
        lua_rawgeti(L, reqs, (lua_Integer)r + 1);
        lua_rawseti(L, acts, ++n);
    }
    if (res.status == HR_RUN_OK && res.dropped) {
        lua_createtable(L, 0, 2);
        lua_pushliteral(L, "drop");
        lua_setfield(L, -2, "action");
        lua_pushstring(L, res.drop_reason);
        lua_setfield(L, -2, "reason");
        lua_rawseti(L, acts, ++n);
    }
    free(req_at);

    /* the reply the sender would get */
    if (res.status == HR_RUN_OK && res.reply)
        push_reply(L, res.reply);
    else if (res.status == HR_RUN_OK)
        push_status_reply(L, 200, NULL, id);
    else if (res.status == HR_RUN_BAD_JSON)
        push_status_reply(L, 400, res.error, id);
    else if (ep->fallback)
        push_reply(L, ep->fallback);
    else
        push_status_reply(L, deadline ? 504 : 500,
                          deadline ? "reply deadline exceeded" : "rule failed", id);
    int reply = lua_gettop(L);

    int diffs = stub.failed ? 1 : 0;
    bool failed = res.status != HR_RUN_OK;
    if (c->expect_error) {
        bool match = false;
        if (failed && res.error) {
            lua_getglobal(L, "string");
            lua_getfield(L, -1, "find");
            lua_pushstring(L, res.error);
            lua_pushstring(L, c->expect_error);
            match = lua_pcall(L, 2, 1, 0) == LUA_OK && !lua_isnil(L, -1);
            lua_pop(L, 2);
        }
        if (!match) {
            char *got = failed && res.error ? first_line(res.error) : NULL;
            hr_buf_printf(diff, "# error: expected an error matching ");
            hr_buf_append_json_string(diff, c->expect_error, strlen(c->expect_error));
            hr_buf_appends(diff, ", got ");
            if (got)
                hr_buf_append_json_string(diff, got, strlen(got));
            else
                hr_buf_appends(diff, "none");
            hr_buf_appendc(diff, '\n');
            free(got);
            diffs++;
        }
    } else if (failed) {
        char *got = first_line(res.error ? res.error : "?");
        hr_buf_printf(diff, "# %s: %s\n",
                      res.status == HR_RUN_BAD_JSON ? "body"
                      : deadline                    ? "deadline"
                                                    : "rule failed",
                      got);
        free(got);
        diffs++;
    }
    if (c->expect_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->expect_ref);
        size_t ne = lua_rawlen(L, -1);
        if (ne != (size_t)n) {
            hr_buf_printf(diff, "# expect: expected %zu action%s, got %lld (", ne,
                          ne == 1 ? "" : "s", (long long)n);
            for (lua_Integer j = 1; j <= n; j++) {
                lua_rawgeti(L, acts, j);
                lua_getfield(L, -1, "action");
                lua_getfield(L, -2, "target");
                if (lua_isnil(L, -1)) {
                    lua_pop(L, 1);
                    lua_getfield(L, -2, "file");
                }
                hr_buf_printf(diff, "%s%s%s%s", j > 1 ? ", " : "", lua_tostring(L, -2),
                              lua_isstring(L, -1) ? " " : "",
                              lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
                lua_pop(L, 3);
            }
            hr_buf_appends(diff, ")\n");
            diffs++;
        }
        for (lua_Integer j = 1; j <= (lua_Integer)ne && j <= n; j++) {
            char path[32];
            snprintf(path, sizeof path, "expect[%lld]", (long long)j);
            lua_rawgeti(L, -1, j);
            lua_rawgeti(L, acts, j);
            diffs += hr_spec_diff(L, -2, -1, path, diff);
            lua_pop(L, 2);
        }
        lua_pop(L, 1);
    }
    if (c->expect_reply_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->expect_reply_ref);
        diffs += hr_spec_diff(L, -1, reply, "expect_reply", diff);
        lua_pop(L, 1);
    }
    hr_run_result_free(&res);
    stub_clear(&stub);
    hr_buf_free(&stub.body);
    lua_settop(L, top);
    return diffs == 0;
}

/* Write the JUnit XML file: one testsuite per spec file. Returns 0 or -1 (message printed). */
static int write_junit(const char *path, const outcomes_t *os)
{
    hr_buf_t b = HR_BUF_INIT;
    char err[128];
    hr_buf_printf(&b,
                  "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites tests=\"%zu\" "
                  "failures=\"%u\">\n",
                  os->n, os->failed);
    for (size_t i = 0; i < os->n;) {
        size_t j = i, fails = 0;
        for (; j < os->n && strcmp(os->v[j].file, os->v[i].file) == 0; j++)
            fails += !os->v[j].ok;
        hr_buf_appends(&b, "  <testsuite name=\"");
        hr_xml_escape(os->v[i].file, strlen(os->v[i].file), &b, err, sizeof err);
        hr_buf_printf(&b, "\" tests=\"%zu\" failures=\"%zu\">\n", j - i, fails);
        for (size_t k = i; k < j; k++) {
            const outcome_t *o = &os->v[k];
            const char *name = o->name ? o->name : "(spec file)";
            hr_buf_appends(&b, "    <testcase classname=\"");
            hr_xml_escape(o->file, strlen(o->file), &b, err, sizeof err);
            hr_buf_appends(&b, "\" name=\"");
            hr_xml_escape(name, strlen(name), &b, err, sizeof err);
            if (o->ok) {
                hr_buf_appends(&b, "\"/>\n");
                continue;
            }
            hr_buf_appends(&b, "\">\n      <failure message=\"");
            char *first = first_line(o->details);
            hr_xml_escape(first, strlen(first), &b, err, sizeof err);
            free(first);
            hr_buf_appends(&b, "\">");
            hr_xml_escape(o->details, strlen(o->details), &b, err, sizeof err);
            hr_buf_appends(&b, "</failure>\n    </testcase>\n");
        }
        hr_buf_appends(&b, "  </testsuite>\n");
        i = j;
    }
    hr_buf_appends(&b, "</testsuites>\n");
    FILE *f = fopen(path, "w");
    int rc = 0;
    if (!f || fwrite(b.data, 1, b.len, f) != b.len) {
        fprintf(stderr, "hookrouter test: --junit %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (f && fclose(f) != 0) rc = -1;
    hr_buf_free(&b);
    return rc;
}

/* The spec form: every case of every spec file. */
static int test_specs(const hr_test_opts_t *o)
{
    if (o->reply || o->now || o->id || o->nheaders) {
        fprintf(stderr, "hookrouter test: --reply, --now, --id and --header are for the --path "
                        "form (a spec case has reply, now and headers)\n");
        return 2;
    }
    hr_ruleset_t *rs = hr_cli_load(o->config);
    if (!rs) return 1;
    char **found = NULL;
    size_t nfiles = o->nfiles;
    char **files = o->files;
    if (!nfiles) {
        found = hr_spec_find(hr_ruleset_config(rs)->rules_dir, &nfiles);
        files = found;
        if (!nfiles) {
            fprintf(stderr, "hookrouter test: no spec files in %s/tests (<name>.test.lua)\n",
                    hr_ruleset_config(rs)->rules_dir);
            hr_ruleset_unref(rs);
            return 1;
        }
    }
    outcomes_t os = {0};
    unsigned num = 0;
    printf("TAP version 13\n");
    for (size_t f = 0; f < nfiles; f++) {
        char err[1024];
        hr_spec_t *spec = hr_spec_load(files[f], err, sizeof err);
        printf("# %s\n", files[f]);
        if (!spec) {
            printf("not ok %u - %s\n# %s\n", ++num, files[f], err);
            fprintf(stderr, "%s\n", err);
            add_outcome(&os, files[f], NULL, false, err);
            continue;
        }
        for (size_t i = 0; i < spec->ncases; i++) {
            hr_buf_t diff = HR_BUF_INIT;
            bool ok = run_case(rs, spec, i, &diff);
            printf("%s %u - %s\n%s", ok ? "ok" : "not ok", ++num, spec->cases[i].name,
                   diff.data ? diff.data : "");
            add_outcome(&os, files[f], spec->cases[i].name, ok, diff.data);
            hr_buf_free(&diff);
        }
        fflush(stdout);
        hr_spec_free(spec);
    }
    printf("1..%u\n%u passed, %u failed\n", num, os.passed, os.failed);
    int rc = os.failed ? 1 : 0;
    if (o->junit && write_junit(o->junit, &os) != 0) rc = 1;
    for (size_t i = 0; i < os.n; i++) {
        free(os.v[i].file);
        free(os.v[i].name);
        free(os.v[i].details);
    }
    free(os.v);
    for (size_t i = 0; found && i < nfiles; i++)
        free(found[i]);
    free(found);
    hr_ruleset_unref(rs);
    return rc;
}

int hr_cmd_test(const hr_test_opts_t *o)
{
    if (o->path) {
        if (!o->nfiles) {
            fprintf(stderr, "hookrouter test: --path needs at least one PAYLOAD.json\n");
            return 2;
        }
        if (o->junit) {
            fprintf(stderr, "hookrouter test: --junit is for spec files\n");
            return 2;
        }
        return test_payloads(o);
    }
    return test_specs(o);
}
