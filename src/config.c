/* Config loading: run the config file in a throwaway Lua state, copy the returned table into
 * hr_config_t, and collect every problem with the key it concerns. */
#include "hr/config.h"

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hr/defaults.h"
#include "hr/json.h"
#include "hr/log.h"
#include "hr/lua_budget.h"

/* What a config file's own code may use: it builds a table, so these are generous. */
#define CONFIG_INSTRUCTIONS 10000000u   /* VM instructions */
#define CONFIG_MEMORY       (64u << 20) /* bytes */

/* ---------------------------------------------------------------- errors */

void hr_errors_add(hr_errors_t *e, const char *fmt, ...)
{
    hr_buf_t b = HR_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    hr_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    e->msgs = hr_xrealloc(e->msgs, (e->n + 1) * sizeof *e->msgs);
    e->msgs[e->n++] = hr_buf_steal(&b, NULL);
}

void hr_errors_free(hr_errors_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->msgs[i]);
    free(e->msgs);
    e->msgs = NULL;
    e->n = 0;
}

/* ---------------------------------------------------------------- walking the table */

typedef struct {
    lua_State *L;
    hr_config_t *c;
    hr_errors_t *errs;
} loader_t;

static void key_err(loader_t *ld, const char *key, const char *fmt, ...) HR_PRINTF(3, 4);
static void key_err(loader_t *ld, const char *key, const char *fmt, ...)
{
    hr_buf_t b = HR_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    hr_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    hr_errors_add(ld->errs, "%s: %s: %s", ld->c->file, key, b.data);
    hr_buf_free(&b);
}

/* The type name of the value at idx ("integer" and "number" apart). [-0, +0, -] */
static const char *type_at(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) return lua_isinteger(L, idx) ? "integer" : "number";
    return luaL_typename(L, idx);
}

/* Read the string at the top of the stack into *out (a copy). Pops nothing. [-0, +0, -] */
static void want_string(loader_t *ld, const char *key, char **out)
{
    if (lua_type(ld->L, -1) != LUA_TSTRING) {
        key_err(ld, key, "expected a string, got %s", type_at(ld->L, -1));
        return;
    }
    size_t n;
    const char *s = lua_tolstring(ld->L, -1, &n);
    if (strlen(s) != n) {
        key_err(ld, key, "must not contain NUL bytes");
        return;
    }
    free(*out);
    *out = hr_xstrdup(s);
}

/* Read a whole number in [min, max] at the top of the stack. [-0, +0, -] */
static void want_uint(loader_t *ld, const char *key, uint64_t min, uint64_t max, uint64_t *out)
{
    lua_State *L = ld->L;
    lua_Integer v;
    if (lua_isinteger(L, -1)) {
        v = lua_tointeger(L, -1);
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        lua_Number d = lua_tonumber(L, -1);
        if (d != floor(d) || d < -9e18 || d > 9e18) {
            key_err(ld, key, "expected a whole number, got %g", (double)d);
            return;
        }
        v = (lua_Integer)d;
    } else {
        key_err(ld, key, "expected a number, got %s", type_at(L, -1));
        return;
    }
    if (v < 0 || (uint64_t)v < min || (uint64_t)v > max) {
        key_err(ld, key, "must be between %llu and %llu, got %lld", (unsigned long long)min,
                (unsigned long long)max, (long long)v);
        return;
    }
    *out = (uint64_t)v;
}

/* Read a number >= 0 (integer or float) at the top of the stack. [-0, +0, -] */
static void want_nonneg(loader_t *ld, const char *key, double max, double *out)
{
    if (lua_type(ld->L, -1) != LUA_TNUMBER) {
        key_err(ld, key, "expected a number, got %s", type_at(ld->L, -1));
        return;
    }
    double d = (double)lua_tonumber(ld->L, -1);
    if (!(d >= 0 && d <= max)) {
        key_err(ld, key, "must be between 0 and %g, got %g", max, d);
        return;
    }
    *out = d;
}

static bool want_table(loader_t *ld, const char *key);
static size_t count_entries(lua_State *L);

/* Read a list of 1..64 waits in ms (each up to 7 days) at the top of the stack. [-0, +0, -] */
static void want_retry_list(loader_t *ld, const char *key, uint64_t **out, size_t *n)
{
    lua_State *L = ld->L;
    if (!want_table(ld, key)) return;
    size_t len = lua_rawlen(L, -1);
    if (len == 0 || len > 64 || count_entries(L) != len) {
        key_err(ld, key, "expected a list of 1 to 64 waits in ms, e.g. { 0, 5000, 300000 }");
        return;
    }
    uint64_t *v = hr_xcalloc(len, sizeof *v);
    for (size_t i = 1; i <= len; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        char *k = hr_xasprintf("%s[%zu]", key, i);
        want_uint(ld, k, 0, 7ull * 86400000, &v[i - 1]);
        free(k);
        lua_pop(L, 1);
    }
    free(*out);
    *out = v;
    *n = len;
}

/* Read a boolean at the top of the stack. [-0, +0, -] */
static void want_bool(loader_t *ld, const char *key, bool *out)
{
    if (lua_type(ld->L, -1) != LUA_TBOOLEAN) {
        key_err(ld, key, "expected true or false, got %s", type_at(ld->L, -1));
        return;
    }
    *out = lua_toboolean(ld->L, -1);
}

/* Whether the value at the top of the stack is a table (else report it). [-0, +0, -] */
static bool want_table(loader_t *ld, const char *key)
{
    if (lua_type(ld->L, -1) == LUA_TTABLE) return true;
    key_err(ld, key, "expected a table, got %s", type_at(ld->L, -1));
    return false;
}

/* Check that the table on top only has keys from allowed (NULL-terminated). [-0, +0, -] */
static void check_keys(loader_t *ld, const char *prefix, const char *const *allowed)
{
    lua_State *L = ld->L;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1); /* drop value, keep key */
        if (lua_type(L, -1) != LUA_TSTRING) {
            key_err(ld, prefix[0] ? prefix : "(top level)", "keys must be strings, found a %s key",
                    type_at(L, -1));
            continue;
        }
        const char *k = lua_tostring(L, -1);
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok = ok || strcmp(allowed[i], k) == 0;
        if (!ok) {
            hr_buf_t known = HR_BUF_INIT;
            for (size_t i = 0; allowed[i]; i++)
                hr_buf_printf(&known, "%s%s", i ? ", " : "", allowed[i]);
            char *full = prefix[0] ? hr_xasprintf("%s.%s", prefix, k) : hr_xstrdup(k);
            key_err(ld, full, "unknown key (known: %s)", known.data);
            free(full);
            hr_buf_free(&known);
        }
    }
}

/* Count string-keyed entries of the table on top. [-0, +0, -] */
static size_t count_entries(lua_State *L)
{
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    return n;
}

/* ---------------------------------------------------------------- sections */

/* Split s ("host:port", "[ipv6]:port", ":port") into *host (allocated) and *port. Returns 0,
 * or -1 with a message in err (*host unchanged). */
static int parse_address(const char *s, char **host, int *port_out, char *err, size_t errlen)
{
    const char *colon;
    size_t hlen;
    const char *h;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') goto bad;
        h = s + 1;
        hlen = (size_t)(close - s - 1);
        colon = close + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) goto bad;
        h = colon == s ? "0.0.0.0" : s;
        hlen = colon == s ? strlen(h) : (size_t)(colon - s);
    }
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end || errno || port < 0 || port > 65535) goto bad;
    *host = hr_xstrndup(h, hlen);
    *port_out = (int)port;
    return 0;
bad:
    snprintf(err, errlen, "expected \"host:port\" or \"[ipv6]:port\", got \"%s\"", s);
    return -1;
}

static int parse_listen(hr_config_t *c, char *err, size_t errlen)
{
    return parse_address(c->listen, &c->listen_host, &c->listen_port, err, errlen);
}

/* metrics (value on top): token (a non-empty string), store_labels (a bool). [-0, +0, m] */
static void load_metrics(loader_t *ld)
{
    static const char *const keys[] = {"token", "store_labels", NULL};
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    if (!want_table(ld, "metrics")) return;
    check_keys(ld, "metrics", keys);
    if (lua_getfield(L, -1, "token") != LUA_TNIL) {
        want_string(ld, "metrics.token", &c->metrics_token);
        if (c->metrics_token && !c->metrics_token[0])
            key_err(ld, "metrics.token", "must not be empty (leave it out for no token)");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "store_labels") != LUA_TNIL)
        want_bool(ld, "metrics.store_labels", &c->metrics_store_labels);
    lua_pop(L, 1);
}

/* tokens (value on top): a list of non-empty strings. [-0, +0, -] */
static void load_tokens(loader_t *ld)
{
    lua_State *L = ld->L;
    if (!want_table(ld, "tokens")) return;
    size_t n = lua_rawlen(L, -1);
    if (count_entries(L) != n) key_err(ld, "tokens", "expected a list of strings");
    ld->c->tokens = hr_xcalloc(n ? n : 1, sizeof(char *));
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        char key[32];
        snprintf(key, sizeof key, "tokens[%zu]", i);
        char *tok = NULL;
        want_string(ld, key, &tok);
        if (tok && !tok[0]) {
            key_err(ld, key, "empty token");
            free(tok);
            tok = NULL;
        }
        if (tok) ld->c->tokens[ld->c->ntokens++] = tok;
        lua_pop(L, 1);
    }
}

/* ---------------------------------------------------------------- signatures */

static void sign_free(hr_sign_conf_t *s)
{
    if (!s) return;
    hr_sign_conf_clear(s);
    free(s);
}

/* The Standard Webhooks secrets (the list on top, at key) into s: each "whsec_<base64>".
 * Messages name the entry, never its text. [-0, +0, -] */
static void want_whsec_list(loader_t *ld, const char *key, hr_sign_conf_t *s)
{
    lua_State *L = ld->L;
    if (!want_table(ld, key)) return;
    size_t len = lua_rawlen(L, -1);
    if (count_entries(L) != len) {
        key_err(ld, key, "expected a list of whsec_<base64> strings");
        return;
    }
    if (len == 0)
        key_err(ld, key, "no secret (an os.getenv() that returned nil leaves the list empty)");
    for (size_t i = 1; i <= len; i++) {
        lua_rawgeti(L, -1, (lua_Integer)i);
        char *k = hr_xasprintf("%s[%zu]", key, i);
        char err[128];
        if (lua_type(L, -1) != LUA_TSTRING)
            key_err(ld, k, "expected whsec_<base64>, got %s", type_at(L, -1));
        else if (hr_sign_add_whsec(s, lua_tostring(L, -1), err, sizeof err) != 0)
            key_err(ld, k, "%s", err);
        free(k);
        lua_pop(L, 1);
    }
}

/* The string field name of the table on top, at key.name, into *out (left alone when absent);
 * with a line break or empty (unless may_be_empty) it is an error. [-0, +0, -] */
static void sign_string(loader_t *ld, const char *key, const char *name, bool may_be_empty,
                        char **out)
{
    char *sub = hr_xasprintf("%s.%s", key, name);
    if (lua_getfield(ld->L, -1, name) != LUA_TNIL) {
        char *v = NULL;
        want_string(ld, sub, &v);
        if (v && (strpbrk(v, "\r\n") || (!may_be_empty && !v[0]))) {
            key_err(ld, sub, "%s", v[0] ? "must not contain a line break" : "must not be empty");
        } else if (v) {
            free(*out);
            *out = v;
            v = NULL;
        }
        free(v);
    }
    lua_pop(ld->L, 1);
    free(sub);
}

/* hmac-sha256's keys (table on top, at key): header, secret, encoding, prefix. [-0, +0, -] */
static void load_hmac_sign(loader_t *ld, const char *key, hr_sign_conf_t *s)
{
    lua_State *L = ld->L;
    s->header = hr_xstrdup(HR_DEF_SIGN_HEADER);
    s->prefix = hr_xstrdup("");
    char *sub = hr_xasprintf("%s.header", key);
    sign_string(ld, key, "header", false, &s->header);
    if (strpbrk(s->header, ": \t")) key_err(ld, sub, "invalid header name %s", s->header);
    free(sub);
    sign_string(ld, key, "prefix", true, &s->prefix);
    char *enc = hr_xstrdup(HR_DEF_SIGN_ENCODING);
    sign_string(ld, key, "encoding", false, &enc);
    sub = hr_xasprintf("%s.encoding", key);
    if (strcmp(enc, "base64") == 0)
        s->encoding = HR_SIGN_BASE64;
    else if (strcmp(enc, "hex") != 0)
        key_err(ld, sub, "expected \"hex\" or \"base64\", got \"%s\"", enc);
    free(enc);
    free(sub);
    sub = hr_xasprintf("%s.secret", key);
    size_t n = 0;
    if (lua_getfield(L, -1, "secret") == LUA_TNIL)
        key_err(ld, sub, "missing (an os.getenv() that returned nil leaves it out)");
    else if (lua_type(L, -1) != LUA_TSTRING)
        key_err(ld, sub, "expected a string, got %s", type_at(L, -1));
    else if (lua_tolstring(L, -1, &n), n == 0)
        key_err(ld, sub, "must not be empty");
    else
        hr_sign_add_key(s, lua_tostring(L, -1), n);
    lua_pop(L, 1);
    free(sub);
}

/* A target's sign or (verify) an endpoint's verify: the table on top, at key, into a new
 * hr_sign_conf_t. Every problem is reported; NULL if there was one. [-0, +0, m] */
static hr_sign_conf_t *load_sign(loader_t *ld, const char *key, bool verify)
{
    static const char *const sw_keys[] = {"scheme", "secrets", NULL};
    static const char *const hmac_keys[] = {"scheme",   "header", "secret",
                                            "encoding", "prefix", NULL};
    static const char *const verify_keys[] = {"scheme", "secrets", "tolerance_s", NULL};
    lua_State *L = ld->L;
    if (!want_table(ld, key)) return NULL;
    size_t before = ld->errs->n;
    hr_sign_conf_t *s = hr_xcalloc(1, sizeof *s);
    char *sub = hr_xasprintf("%s.scheme", key);
    const char *known =
        verify ? "\"standard-webhooks\"" : "\"standard-webhooks\" or \"hmac-sha256\"";
    if (lua_getfield(L, -1, "scheme") == LUA_TNIL) {
        key_err(ld, sub, "missing: %s", known);
    } else if (lua_type(L, -1) != LUA_TSTRING) {
        key_err(ld, sub, "expected %s, got %s", known, type_at(L, -1));
    } else {
        s->scheme = hr_sign_scheme_of(lua_tostring(L, -1));
        if (s->scheme == HR_SIGN_NONE || (verify && s->scheme != HR_SIGN_STANDARD_WEBHOOKS))
            key_err(ld, sub, "expected %s, got \"%s\"", known, lua_tostring(L, -1));
    }
    lua_pop(L, 1);
    free(sub);
    if (ld->errs->n != before) {
        sign_free(s);
        return NULL;
    }
    if (s->scheme == HR_SIGN_HMAC_SHA256) {
        check_keys(ld, key, hmac_keys);
        load_hmac_sign(ld, key, s);
    } else {
        check_keys(ld, key, verify ? verify_keys : sw_keys);
        sub = hr_xasprintf("%s.secrets", key);
        if (lua_getfield(L, -1, "secrets") == LUA_TNIL)
            key_err(ld, sub, "missing: a list of whsec_<base64> secrets");
        else
            want_whsec_list(ld, sub, s);
        lua_pop(L, 1);
        free(sub);
        if (verify) {
            uint64_t v = HR_DEF_VERIFY_TOLERANCE_S;
            sub = hr_xasprintf("%s.tolerance_s", key);
            if (lua_getfield(L, -1, "tolerance_s") != LUA_TNIL) want_uint(ld, sub, 1, 86400, &v);
            lua_pop(L, 1);
            free(sub);
            s->tolerance_s = (uint32_t)v;
        }
    }
    if (ld->errs->n != before) {
        sign_free(s);
        return NULL;
    }
    return s;
}

static void load_headers(loader_t *ld, const char *key, hr_header_t **h, size_t *n);

/* Read an endpoint's fallback reply (the table on top) into a new hr_reply_t. [-0, +0, m] */
static hr_reply_t *load_reply(loader_t *ld, const char *prefix)
{
    static const char *const keys[] = {"status", "body", "headers", NULL};
    lua_State *L = ld->L;
    if (!want_table(ld, prefix)) return NULL;
    check_keys(ld, prefix, keys);
    hr_reply_t *rp = hr_xcalloc(1, sizeof *rp);
    rp->status = 200;
    char *key = hr_xasprintf("%s.status", prefix);
    if (lua_getfield(L, -1, "status") != LUA_TNIL) {
        uint64_t v = 200;
        want_uint(ld, key, 100, 599, &v);
        rp->status = (int)v;
    }
    lua_pop(L, 1);
    free(key);
    key = hr_xasprintf("%s.body", prefix);
    int t = lua_getfield(L, -1, "body");
    if (t == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        rp->body = hr_xstrndup(s, n);
        rp->body_len = n;
    } else if (t == LUA_TTABLE) {
        hr_buf_t b = HR_BUF_INIT;
        char err[256];
        if (hr_json_encode(L, -1, &b, err, sizeof err) != 0) {
            key_err(ld, key, "%s", err);
            hr_buf_free(&b);
        } else {
            rp->body = hr_buf_steal(&b, &rp->body_len);
            rp->body_is_json = true;
        }
    } else if (t != LUA_TNIL) {
        key_err(ld, key, "expected a table (sent as JSON) or a string, got %s", type_at(L, -1));
    }
    lua_pop(L, 1);
    free(key);
    key = hr_xasprintf("%s.headers", prefix);
    if (lua_getfield(L, -1, "headers") != LUA_TNIL)
        load_headers(ld, key, &rp->headers, &rp->nheaders);
    lua_pop(L, 1);
    free(key);
    return rp;
}

/* One endpoint: "event.type", or { event = ..., reply_timeout_ms = ..., fallback = {...} }
 * on top of the stack. Returns 0 and fills ep, or -1 (errors reported). [-0, +0, m] */
static int load_endpoint(loader_t *ld, const char *key, hr_endpoint_conf_t *ep)
{
    static const char *const keys[] = {"event", "reply_timeout_ms", "fallback", "verify", NULL};
    lua_State *L = ld->L;
    ep->reply_timeout_ms = HR_REPLY_TIMEOUT_DEFAULT_MS;
    if (lua_type(L, -1) != LUA_TTABLE) {
        want_string(ld, key, &ep->event);
        return ep->event ? 0 : -1;
    }
    check_keys(ld, key, keys);
    char *sub = hr_xasprintf("%s.event", key);
    if (lua_getfield(L, -1, "event") == LUA_TNIL)
        key_err(ld, sub, "missing (the event type, e.g. event = \"entry-code.verify\")");
    else
        want_string(ld, sub, &ep->event);
    lua_pop(L, 1);
    free(sub);
    sub = hr_xasprintf("%s.reply_timeout_ms", key);
    if (lua_getfield(L, -1, "reply_timeout_ms") != LUA_TNIL) {
        uint64_t v = HR_REPLY_TIMEOUT_DEFAULT_MS;
        want_uint(ld, sub, 1, 3600000, &v);
        ep->reply_timeout_ms = (uint32_t)v;
    }
    lua_pop(L, 1);
    free(sub);
    sub = hr_xasprintf("%s.fallback", key);
    if (lua_getfield(L, -1, "fallback") != LUA_TNIL) ep->fallback = load_reply(ld, sub);
    lua_pop(L, 1);
    free(sub);
    sub = hr_xasprintf("%s.verify", key);
    if (lua_getfield(L, -1, "verify") != LUA_TNIL) ep->verify = load_sign(ld, sub, true);
    lua_pop(L, 1);
    free(sub);
    return ep->event ? 0 : -1;
}

/* endpoints (value on top): path -> endpoint. [-0, +0, m] */
static void load_endpoints(loader_t *ld)
{
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    if (!want_table(ld, "endpoints")) return;
    c->endpoints = hr_xcalloc(count_entries(L) + 1, sizeof *c->endpoints);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            key_err(ld, "endpoints", "keys must be request paths (strings)");
            lua_pop(L, 1);
            continue;
        }
        const char *path = lua_tostring(L, -2);
        char *key = hr_xasprintf("endpoints[\"%s\"]", path);
        if (path[0] != '/') key_err(ld, key, "a path must start with '/'");
        if (strcmp(path, "/healthz") == 0) key_err(ld, key, "/healthz is reserved");
        hr_endpoint_conf_t *ep = &c->endpoints[c->nendpoints];
        if (load_endpoint(ld, key, ep) == 0) {
            if (!ep->event[0]) key_err(ld, key, "the event type must not be empty");
            ep->path = hr_xstrdup(path);
            c->nendpoints++;
        } else {
            free(ep->event);
            hr_reply_free(ep->fallback);
            sign_free(ep->verify);
            memset(ep, 0, sizeof *ep);
        }
        free(key);
        lua_pop(L, 1);
    }
    if (c->nendpoints == 0) key_err(ld, "endpoints", "no endpoint configured");
}

/* Read a table of string -> string headers on top into *h / *n. [-0, +0, -] */
static void load_headers(loader_t *ld, const char *key, hr_header_t **h, size_t *n)
{
    lua_State *L = ld->L;
    if (!want_table(ld, key)) return;
    *h = hr_xcalloc(count_entries(L) + 1, sizeof **h);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING) {
            key_err(ld, key, "expected header name = value strings");
        } else {
            const char *name = lua_tostring(L, -2), *value = lua_tostring(L, -1);
            if (strpbrk(name, "\r\n: ") || !name[0] || strpbrk(value, "\r\n")) {
                key_err(ld, key, "invalid header %s", name);
            } else {
                (*h)[*n].name = hr_xstrdup(name);
                (*h)[*n].value = hr_xstrdup(value);
                (*n)++;
            }
        }
        lua_pop(L, 1);
    }
}

/* targets.<name>.tls (value on top, key is its name) for target t, whose URL is https if
 * https: the files resolved against the config's folder, then the client TLS context made
 * from them (the files are read now: a reload re-reads them). verify = false is logged as a
 * warning at every load. [-0, +0, m] */
static void load_target_tls(loader_t *ld, const char *key, hr_target_conf_t *t, bool https)
{
    static const char *const keys[] = {"ca_file",     "client_cert", "client_key",
                                       "server_name", "verify",      NULL};
    lua_State *L = ld->L;
    if (!want_table(ld, key)) return;
    check_keys(ld, key, keys);
    if (!https) {
        key_err(ld, key, "only for https:// URLs");
        return;
    }
    size_t before = ld->errs->n;
    char **files[] = {&t->tls_ca_file, &t->tls_client_cert, &t->tls_client_key};
    char k[300];
    for (size_t i = 0; i < 3; i++) {
        snprintf(k, sizeof k, "%s.%s", key, keys[i]);
        char *v = NULL;
        if (lua_getfield(L, -1, keys[i]) != LUA_TNIL) want_string(ld, k, &v);
        lua_pop(L, 1);
        if (v && !*v) key_err(ld, k, "must not be empty");
        if (v && *v) *files[i] = hr_path_join(ld->c->dir, v);
        free(v);
    }
    snprintf(k, sizeof k, "%s.server_name", key);
    if (lua_getfield(L, -1, "server_name") != LUA_TNIL) want_string(ld, k, &t->tls_server_name);
    lua_pop(L, 1);
    snprintf(k, sizeof k, "%s.verify", key);
    if (lua_getfield(L, -1, "verify") != LUA_TNIL) want_bool(ld, k, &t->tls_verify);
    lua_pop(L, 1);
    if (t->tls_client_key && !t->tls_client_cert) {
        snprintf(k, sizeof k, "%s.client_cert", key);
        key_err(ld, k, "missing (client_key is given)");
    }
    if (ld->errs->n != before) return;
    hr_tls_opts_t o = {.role = HR_TLS_CLIENT,
                       .ca_file = t->tls_ca_file,
                       .cert_file = t->tls_client_cert,
                       .key_file = t->tls_client_key,
                       .no_verify = !t->tls_verify,
                       .server_name = t->tls_server_name};
    hr_tls_field_t field;
    char err[1024];
    t->tls = hr_tls_ctx_new(&o, &field, err, sizeof err);
    if (!t->tls) {
        const char *name = field == HR_TLS_FIELD_CA_FILE     ? "ca_file"
                           : field == HR_TLS_FIELD_KEY_FILE  ? "client_key"
                           : field == HR_TLS_FIELD_CERT_FILE ? "client_cert"
                                                             : NULL;
        snprintf(k, sizeof k, "%s%s%s", key, name ? "." : "", name ? name : "");
        key_err(ld, k, "%s", err);
        return;
    }
    if (!t->tls_verify)
        hr_log_warn("%s: %s.verify = false: the certificate and name of %s are not checked",
                    ld->c->file, key, t->url);
}

/* An https target without a tls table is sent with the process's default client context
 * (hr_tls_client_default): build it now, as the config loads, not on the loop at the first
 * request. Once built it is shared, so a reload costs a reference. If it cannot be built, the
 * request says why, as before. */
static void prepare_default_tls(void)
{
    char err[256];
    hr_tls_ctx_unref(hr_tls_client_default(err, sizeof err));
}

/* True if host is excluded by the NO_PROXY list: comma- or space-separated names (a name
 * covers its subdomains, a leading dot is optional), IP literals, or "*" for everything; a
 * ":port" after an entry is ignored. */
static bool no_proxy_match(const char *list, const char *host)
{
    size_t hl = strlen(host);
    for (const char *p = list; *p;) {
        p += strspn(p, ", \t");
        size_t n = strcspn(p, ", \t");
        const char *e = p;
        size_t en = n;
        if (en > 0 && e[0] == '.') e++, en--;
        const char *colon = memchr(e, ':', en);
        if (colon && !memchr(colon + 1, ':', en - (size_t)(colon + 1 - e)))
            en = (size_t)(colon - e);
        if (en == 1 && e[0] == '*') return true;
        if (en > 0 && en <= hl && strncasecmp(host + hl - en, e, en) == 0 &&
            (en == hl || host[hl - en - 1] == '.'))
            return true;
        p += n;
    }
    return false;
}

/* The proxy the environment names for a URL to host (https or not), or NULL: HTTPS_PROXY /
 * https_proxy or HTTP_PROXY / http_proxy, unless NO_PROXY / no_proxy excludes host. *var is
 * the variable's name. */
static const char *env_proxy(const char *host, bool https, const char **var)
{
    const char *names[2][2] = {{"http_proxy", "HTTP_PROXY"}, {"https_proxy", "HTTPS_PROXY"}};
    const char *v = NULL;
    for (size_t i = 0; i < 2 && !(v && *v); i++) {
        *var = names[https][i];
        v = getenv(*var);
    }
    if (!v || !*v) return NULL;
    const char *np = getenv("no_proxy");
    if (!np || !*np) np = getenv("NO_PROXY");
    return np && no_proxy_match(np, host) ? NULL : v;
}

/* targets.<name>.proxy for target t (url parsed into u): the target's own (value on top, nil
 * if absent; "" means none), else the environment's. Checks it is an http:// URL. [-0, +0, -] */
static void load_target_proxy(loader_t *ld, const char *key, hr_target_conf_t *t, const hr_url_t *u)
{
    const char *var = NULL;
    if (lua_type(ld->L, -1) != LUA_TNIL) {
        want_string(ld, key, &t->proxy);
    } else if (u->host) {
        const char *v = env_proxy(u->host, u->tls, &var);
        /* "host:port" without a scheme, as curl takes it, means http://host:port */
        if (v) t->proxy = strstr(v, "://") ? hr_xstrdup(v) : hr_xasprintf("http://%s", v);
    }
    if (t->proxy && !*t->proxy) {
        free(t->proxy);
        t->proxy = NULL;
    }
    if (!t->proxy) return;
    hr_url_t p;
    char err[256];
    int rc = hr_url_parse(t->proxy, &p, err, sizeof err);
    bool ok = rc == 0 && !p.tls && strcmp(p.path, "/") == 0;
    if (rc == 0) hr_url_free(&p);
    if (ok) return;
    const char *from = var ? var : "";
    const char *hint = var ? "; proxy = \"\" on the target ignores the environment" : "";
    const char *auth = strstr(t->proxy, "://");
    auth = auth ? auth + 3 : t->proxy;
    if (memchr(auth, '@', strcspn(auth, "/"))) /* userinfo: never echo it */
        key_err(ld, key,
                "%s%s%sproxy credentials (user:password@) are not supported (value not "
                "shown)%s",
                var ? "(from " : "", from, var ? ") " : "", hint);
    else
        key_err(ld, key, "%s%s%sexpected http://host:port, got \"%s\"%s", var ? "(from " : "", from,
                var ? ") " : "", t->proxy, hint);
}

/* A target before its keys are read. */
static const hr_target_conf_t target_defaults = {
    .timeout_ms = HR_DEF_TARGET_TIMEOUT_MS,
    .max_attempts = HR_DEF_TARGET_MAX_ATTEMPTS,
    .max_age_s = HR_DEF_TARGET_MAX_AGE_S,
    .concurrency = HR_DEF_TARGET_CONCURRENCY,
    .rate = HR_DEF_TARGET_RATE,
    .ordered = HR_DEF_TARGET_ORDERED,
    .circuit_failures = HR_DEF_TARGET_CIRCUIT_FAILURES,
    .circuit_probe_ms = HR_DEF_TARGET_CIRCUIT_PROBE_MS,
    .tls_verify = HR_DEF_TARGET_TLS_VERIFY,
};

/* targets (value on top): name -> target table. [-0, +0, m] */
static void load_targets(loader_t *ld)
{
    static const char *const keys[] = {
        "url",         "headers", "timeout_ms", "max_attempts",     "retry_ms",         "max_age_s",
        "concurrency", "rate",    "ordered",    "circuit_failures", "circuit_probe_ms", "tls",
        "proxy",       "sign",    NULL};
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    if (!want_table(ld, "targets")) return;
    c->targets = hr_xcalloc(count_entries(L) + 1, sizeof *c->targets);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            key_err(ld, "targets", "target names must be strings");
            lua_pop(L, 1);
            continue;
        }
        const char *name = lua_tostring(L, -2);
        char *prefix = hr_xasprintf("targets.%s", name);
        if (want_table(ld, prefix)) {
            hr_target_conf_t *t = &c->targets[c->ntargets++];
            *t = target_defaults;
            t->name = hr_xstrdup(name);
            check_keys(ld, prefix, keys);
            char key[256];
            snprintf(key, sizeof key, "%s.url", prefix);
            bool https = false;
            hr_url_t u = {0};
            if (lua_getfield(L, -1, "url") == LUA_TNIL) {
                key_err(ld, key, "missing (e.g. url = \"http://127.0.0.1:9000/hook\")");
            } else {
                want_string(ld, key, &t->url);
                char uerr[256];
                if (t->url && hr_url_parse(t->url, &u, uerr, sizeof uerr) != 0)
                    key_err(ld, key, "%s", uerr);
                else if (t->url)
                    https = u.tls;
            }
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.proxy", prefix);
            lua_getfield(L, -1, "proxy");
            load_target_proxy(ld, key, t, &u);
            lua_pop(L, 1);
            hr_url_free(&u);
            snprintf(key, sizeof key, "%s.tls", prefix);
            if (lua_getfield(L, -1, "tls") != LUA_TNIL)
                load_target_tls(ld, key, t, https);
            else if (https)
                prepare_default_tls();
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.headers", prefix);
            if (lua_getfield(L, -1, "headers") != LUA_TNIL)
                load_headers(ld, key, &t->headers, &t->nheaders);
            lua_pop(L, 1);
            uint64_t v;
            snprintf(key, sizeof key, "%s.timeout_ms", prefix);
            if (lua_getfield(L, -1, "timeout_ms") != LUA_TNIL) {
                v = t->timeout_ms;
                want_uint(ld, key, 1, 3600000, &v);
                t->timeout_ms = (uint32_t)v;
            }
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.max_attempts", prefix);
            if (lua_getfield(L, -1, "max_attempts") != LUA_TNIL) {
                v = t->max_attempts;
                want_uint(ld, key, 1, 1000, &v);
                t->max_attempts = (uint32_t)v;
            }
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.retry_ms", prefix);
            if (lua_getfield(L, -1, "retry_ms") != LUA_TNIL)
                want_retry_list(ld, key, &t->retry_ms, &t->nretry);
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.max_age_s", prefix);
            if (lua_getfield(L, -1, "max_age_s") != LUA_TNIL)
                want_uint(ld, key, 0, 365ull * 86400, &t->max_age_s);
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.concurrency", prefix);
            if (lua_getfield(L, -1, "concurrency") != LUA_TNIL) {
                v = t->concurrency;
                want_uint(ld, key, 1, 10000, &v);
                t->concurrency = (uint32_t)v;
            }
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.rate", prefix);
            if (lua_getfield(L, -1, "rate") != LUA_TNIL) want_nonneg(ld, key, 1e6, &t->rate);
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.ordered", prefix);
            if (lua_getfield(L, -1, "ordered") != LUA_TNIL) want_bool(ld, key, &t->ordered);
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.circuit_failures", prefix);
            if (lua_getfield(L, -1, "circuit_failures") != LUA_TNIL) {
                v = t->circuit_failures;
                want_uint(ld, key, 1, 1000000, &v);
                t->circuit_failures = (uint32_t)v;
            }
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.circuit_probe_ms", prefix);
            if (lua_getfield(L, -1, "circuit_probe_ms") != LUA_TNIL)
                want_uint(ld, key, 1, 86400000, &t->circuit_probe_ms);
            lua_pop(L, 1);
            snprintf(key, sizeof key, "%s.sign", prefix);
            if (lua_getfield(L, -1, "sign") != LUA_TNIL) t->sign = load_sign(ld, key, false);
            lua_pop(L, 1);
        }
        free(prefix);
        lua_pop(L, 1);
    }
}

/* Read a file mode at the top of the stack: an octal string ("0640", "640") or an integer
 * (its value, e.g. 0x1a0 or 416; Lua has no octal literals), at most 0777. [-0, +0, -] */
static void want_file_mode(loader_t *ld, const char *key, unsigned *out)
{
    lua_State *L = ld->L;
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *s = lua_tostring(L, -1);
        char *end = NULL;
        unsigned long v = strtoul(s, &end, 8);
        if (!*s || *end || strspn(s, "01234567") != strlen(s) || v > 0777) {
            key_err(ld, key, "expected an octal mode between \"0000\" and \"0777\", got \"%s\"", s);
            return;
        }
        *out = (unsigned)v | HR_FILE_MODE_SET;
        return;
    }
    uint64_t v = 0;
    size_t before = ld->errs->n;
    want_uint(ld, key, 0, 0777, &v);
    if (ld->errs->n == before) *out = (unsigned)v | HR_FILE_MODE_SET;
}

/* files (value on top): name -> { path, mode }. [-0, +0, m] */
static void load_files(loader_t *ld)
{
    static const char *const keys[] = {"path", "mode", NULL};
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    if (!want_table(ld, "files")) return;
    c->files = hr_xcalloc(count_entries(L) + 1, sizeof *c->files);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            key_err(ld, "files", "file names must be strings");
            lua_pop(L, 1);
            continue;
        }
        const char *name = lua_tostring(L, -2);
        char *prefix = hr_xasprintf("files.%s", name);
        char *path = NULL;
        unsigned mode = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            want_string(ld, prefix, &path); /* files = { audit = "var/audit.jsonl" } */
        } else if (want_table(ld, prefix)) {
            check_keys(ld, prefix, keys);
            char *key = hr_xasprintf("%s.path", prefix);
            if (lua_getfield(L, -1, "path") == LUA_TNIL)
                key_err(ld, key, "missing (e.g. path = \"var/audit.jsonl\")");
            else
                want_string(ld, key, &path);
            lua_pop(L, 1);
            free(key);
            key = hr_xasprintf("%s.mode", prefix);
            if (lua_getfield(L, -1, "mode") != LUA_TNIL) want_file_mode(ld, key, &mode);
            lua_pop(L, 1);
            free(key);
        }
        if (path) {
            c->files[c->nfiles].mode = mode;
            c->files[c->nfiles].name = hr_xstrdup(name);
            c->files[c->nfiles].path = hr_path_join(c->dir, path);
            c->nfiles++;
            free(path);
        }
        free(prefix);
        lua_pop(L, 1);
    }
}

typedef struct {
    const char *name;
    uint64_t min, max;
    size_t offset; /* into hr_limits_t */
    bool is_size;  /* size_t rather than uint64_t */
} limit_def_t;

/* limits (value on top): each of LIMITS, in its range. [-0, +0, m] */
static void load_limits(loader_t *ld)
{
    static const limit_def_t defs[] = {
        {"body_bytes", 1, 1u << 30, offsetof(hr_limits_t, body_bytes), true},
        {"header_bytes", 256, 1u << 20, offsetof(hr_limits_t, header_bytes), true},
        {"rule_instructions", 1000, 1000000000000ull, offsetof(hr_limits_t, rule_instructions),
         false},
        {"rule_memory_bytes", 1u << 20, 1ull << 40, offsetof(hr_limits_t, rule_memory_bytes), true},
        {"state_memory_bytes", 4u << 20, 1ull << 44, offsetof(hr_limits_t, state_memory_bytes),
         true},
        {"actions_per_event", 1, 100000, offsetof(hr_limits_t, actions_per_event), true},
        {"idle_timeout_ms", 1, 86400000, offsetof(hr_limits_t, idle_timeout_ms), false},
        {"request_timeout_ms", 1, 86400000, offsetof(hr_limits_t, request_timeout_ms), false},
        {"max_connections", 1, 10000000, offsetof(hr_limits_t, max_connections), true},
    };
    static const char *const keys[] = {"body_bytes",         "header_bytes",
                                       "rule_instructions",  "rule_memory_bytes",
                                       "state_memory_bytes", "actions_per_event",
                                       "idle_timeout_ms",    "request_timeout_ms",
                                       "max_connections",    NULL};
    lua_State *L = ld->L;
    if (!want_table(ld, "limits")) return;
    check_keys(ld, "limits", keys);
    for (size_t i = 0; i < HR_ARRAY_SIZE(defs); i++) {
        if (lua_getfield(L, -1, defs[i].name) != LUA_TNIL) {
            char key[64];
            snprintf(key, sizeof key, "limits.%s", defs[i].name);
            char *field = (char *)&ld->c->limits + defs[i].offset;
            uint64_t v = defs[i].is_size ? *(size_t *)field : *(uint64_t *)field;
            want_uint(ld, key, defs[i].min, defs[i].max, &v);
            if (defs[i].is_size)
                *(size_t *)field = (size_t)v;
            else
                *(uint64_t *)field = v;
        }
        lua_pop(L, 1);
    }
}

/* delivery (value on top). [-0, +0, m] */
static void load_delivery(loader_t *ld)
{
    static const char *const keys[] = {"retry_base_ms", "retry_max_ms", "max_connections", NULL};
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    if (!want_table(ld, "delivery")) return;
    check_keys(ld, "delivery", keys);
    if (lua_getfield(L, -1, "retry_base_ms") != LUA_TNIL) {
        want_uint(ld, "delivery.retry_base_ms", 1, 86400000, &c->retry_base_ms);
        c->retry_legacy = true;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "retry_max_ms") != LUA_TNIL) {
        want_uint(ld, "delivery.retry_max_ms", 1, 86400000, &c->retry_max_ms);
        c->retry_legacy = true;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "max_connections") != LUA_TNIL) {
        uint64_t v = c->max_conns_per_target;
        want_uint(ld, "delivery.max_connections", 1, 10000, &v);
        c->max_conns_per_target = (uint32_t)v;
    }
    lua_pop(L, 1);
}

/* The schedule of a target without retry_ms (and of write actions): the legacy
 * delivery.retry_base_ms/retry_max_ms doubling if given, else the default. */
static void default_schedule(const hr_config_t *c, uint64_t **out, size_t *n)
{
    if (c->retry_legacy) {
        uint64_t max = c->retry_max_ms < c->retry_base_ms ? c->retry_base_ms : c->retry_max_ms;
        *n = 16;
        *out = hr_xcalloc(*n, sizeof **out);
        uint64_t b = c->retry_base_ms;
        for (size_t k = 1; k < *n; k++) {
            (*out)[k] = b < max ? b : max;
            if (b < max) b *= 2;
        }
    } else {
        *n = hr_def_nretry;
        *out = hr_xmalloc(hr_def_nretry * sizeof **out);
        memcpy(*out, hr_def_retry_ms, hr_def_nretry * sizeof **out);
    }
}

/* The spool keys at the top level (table on top), then each target's retry schedule: its own
 * retry_ms, else the legacy delivery.retry_base_ms/retry_max_ms doubling, else the default.
 * [-0, +0, m] */
static void load_spool(loader_t *ld)
{
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    char *dir = NULL;
    if (lua_getfield(L, -1, "spool_dir") != LUA_TNIL) want_string(ld, "spool_dir", &dir);
    lua_pop(L, 1);
    c->spool_dir = hr_path_join(c->dir, dir ? dir : HR_DEF_SPOOL_DIR);
    free(dir);
    char *mode = hr_xstrdup(HR_DEF_FSYNC);
    if (lua_getfield(L, -1, "fsync") != LUA_TNIL) want_string(ld, "fsync", &mode);
    lua_pop(L, 1);
    if (strcmp(mode, "always") == 0)
        c->fsync_mode = 0;
    else if (strcmp(mode, "interval") == 0)
        c->fsync_mode = 1;
    else if (strcmp(mode, "never") == 0)
        c->fsync_mode = 2;
    else
        key_err(ld, "fsync", "expected \"always\", \"interval\" or \"never\", got \"%s\"", mode);
    free(mode);
    if (lua_getfield(L, -1, "fsync_interval_ms") != LUA_TNIL)
        want_uint(ld, "fsync_interval_ms", 1, 3600000, &c->fsync_interval_ms);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "max_spool_bytes") != LUA_TNIL)
        want_uint(ld, "max_spool_bytes", 4096, 1ull << 50, &c->max_spool_bytes);
    lua_pop(L, 1);
    for (size_t i = 0; i < c->ntargets; i++) {
        hr_target_conf_t *t = &c->targets[i];
        if (!t->nretry) default_schedule(c, &t->retry_ms, &t->nretry);
    }
    default_schedule(c, &c->write_retry_ms, &c->nwrite_retry);
}

/* Parse outbox.url, "redis://[:password@]host[:port][/db]", into o. Returns 0, or -1 with a
 * message in err, which never repeats the URL (it may hold the password). */
static int parse_redis_url(hr_outbox_conf_t *o, char *err, size_t errlen)
{
    const char *s = o->url;
    if (strncmp(s, "redis://", 8) != 0) {
        snprintf(err, errlen,
                 "expected redis://[:password@]host:port/db (the URL is not echoed: "
                 "it may hold a password)");
        return -1;
    }
    s += 8;
    const char *at = strrchr(s, '@');
    if (at) {
        const char *pw = s;
        if (*pw == ':') pw++; /* redis://:password@host, also user-less password@host */
        o->password = hr_xstrndup(pw, (size_t)(at - pw));
        s = at + 1;
    }
    const char *slash = strchr(s, '/');
    const char *colon = memchr(s, ':', slash ? (size_t)(slash - s) : strlen(s));
    const char *host_end = colon ? colon : slash ? slash : s + strlen(s);
    if (host_end == s) {
        snprintf(err, errlen, "no host after redis://");
        return -1;
    }
    o->host = hr_xstrndup(s, (size_t)(host_end - s));
    o->port = 6379;
    if (colon) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || p < 1 || p > 65535 || (*end && *end != '/')) {
            snprintf(err, errlen, "bad port \"%.*s\" (1 to 65535)", (int)strcspn(colon + 1, "/"),
                     colon + 1);
            return -1;
        }
        o->port = (int)p;
    }
    if (slash && slash[1]) {
        char *end;
        long db = strtol(slash + 1, &end, 10);
        if (*end || db < 0 || db > 65535) {
            snprintf(err, errlen, "bad database number \"%s\"", slash + 1);
            return -1;
        }
        o->db = (uint32_t)db;
    }
    return 0;
}

/* outbox (value on top): { kind = "spool" } or { kind = "redis", url = ..., prefix = ...,
 * claim_idle_ms = ..., wait_replicas = ..., wait_timeout_ms = ... }. [-0, +0, m] */
static void load_outbox(loader_t *ld)
{
    static const char *const keys[] = {
        "kind", "url", "prefix", "claim_idle_ms", "wait_replicas", "wait_timeout_ms", NULL};
    lua_State *L = ld->L;
    hr_outbox_conf_t *o = &ld->c->outbox;
    if (!want_table(ld, "outbox")) return;
    check_keys(ld, "outbox", keys);
    char *kind = hr_xstrdup(HR_DEF_OUTBOX_KIND);
    if (lua_getfield(L, -1, "kind") != LUA_TNIL) want_string(ld, "outbox.kind", &kind);
    lua_pop(L, 1);
    if (strcmp(kind, "spool") == 0) {
        o->kind = HR_OUTBOX_SPOOL;
    } else if (strcmp(kind, "redis") == 0) {
        o->kind = HR_OUTBOX_REDIS;
#ifndef HR_HAVE_REDIS
        key_err(ld, "outbox.kind",
                "\"redis\": this hookrouter was built without Redis support (no hiredis when "
                "it was configured: install libhiredis-dev and rebuild)");
#endif
    } else {
        key_err(ld, "outbox.kind", "expected \"spool\" or \"redis\", got \"%s\"", kind);
    }
    free(kind);
    if (lua_getfield(L, -1, "url") != LUA_TNIL) want_string(ld, "outbox.url", &o->url);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "prefix") != LUA_TNIL) {
        want_string(ld, "outbox.prefix", &o->prefix);
        if (!o->prefix[0] || strpbrk(o->prefix, " \t\r\n"))
            key_err(ld, "outbox.prefix", "must be a non-empty word without spaces");
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "claim_idle_ms") != LUA_TNIL)
        want_uint(ld, "outbox.claim_idle_ms", 100, 86400000, &o->claim_idle_ms);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "wait_replicas") != LUA_TNIL) {
        uint64_t v = o->wait_replicas;
        want_uint(ld, "outbox.wait_replicas", 0, 64, &v);
        o->wait_replicas = (uint32_t)v;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "wait_timeout_ms") != LUA_TNIL)
        want_uint(ld, "outbox.wait_timeout_ms", 1, 60000, &o->wait_timeout_ms);
    lua_pop(L, 1);
    if (o->kind != HR_OUTBOX_REDIS) {
        if (o->url) key_err(ld, "outbox.url", "only for kind = \"redis\"");
        return;
    }
    if (!o->url) {
        key_err(ld, "outbox.url", "missing: redis://[:password@]host:port/db");
        return;
    }
    char err[256];
    if (parse_redis_url(o, err, sizeof err) != 0) key_err(ld, "outbox.url", "%s", err);
}

/* log (value on top): { level = ..., format = ... }. [-0, +0, m] */
static void load_log(loader_t *ld)
{
    static const char *const keys[] = {"level", "format", NULL};
    if (!want_table(ld, "log")) return;
    check_keys(ld, "log", keys);
    if (lua_getfield(ld->L, -1, "level") != LUA_TNIL) {
        want_string(ld, "log.level", &ld->c->log_level);
        if (strcmp(ld->c->log_level, "debug") && strcmp(ld->c->log_level, "info") &&
            strcmp(ld->c->log_level, "warn") && strcmp(ld->c->log_level, "error"))
            key_err(ld, "log.level", "expected debug, info, warn or error, got \"%s\"",
                    ld->c->log_level);
    }
    lua_pop(ld->L, 1);
    hr_log_format_t format;
    if (lua_getfield(ld->L, -1, "format") != LUA_TNIL) {
        want_string(ld, "log.format", &ld->c->log_format);
        if (hr_log_format_parse(ld->c->log_format, &format) < 0)
            key_err(ld, "log.format", "expected text or json, got \"%s\"", ld->c->log_format);
    }
    lua_pop(ld->L, 1);
}

/* workers (value on top): an integer >= 1, or "auto" (stored as 0: one per CPU). [-0, +0, -] */
static void load_workers(loader_t *ld)
{
    if (lua_type(ld->L, -1) == LUA_TSTRING) {
        if (strcmp(lua_tostring(ld->L, -1), "auto") != 0)
            key_err(ld, "workers", "expected an integer >= 1 or \"auto\", got \"%s\"",
                    lua_tostring(ld->L, -1));
        ld->c->workers = 0;
        return;
    }
    uint64_t n = ld->c->workers;
    want_uint(ld, "workers", 1, HR_WORKERS_MAX, &n);
    ld->c->workers = (uint32_t)n;
}

/* The config key a failed server context blames. */
static const char *tls_field_key(hr_tls_field_t f)
{
    switch (f) {
    case HR_TLS_FIELD_KEY_FILE: return "tls.key_file";
    case HR_TLS_FIELD_CLIENT_CA_FILE: return "tls.client_ca_file";
    case HR_TLS_FIELD_CERT_FILE: return "tls.cert_file";
    default: return "tls";
    }
}

/* tls (value on top): { cert_file, key_file, client_ca_file }, paths against the config
 * folder; builds the listener's server context, so unreadable or mismatched files are errors
 * naming their key. [-0, +0, m] */
static void load_tls(loader_t *ld)
{
    static const char *const keys[] = {"cert_file", "key_file", "client_ca_file", NULL};
    static const char *const names[] = {"tls.cert_file", "tls.key_file", "tls.client_ca_file"};
    lua_State *L = ld->L;
    hr_listen_tls_t *t = &ld->c->tls;
    char **paths[] = {&t->cert_file, &t->key_file, &t->client_ca_file};
    if (!want_table(ld, "tls")) return;
    check_keys(ld, "tls", keys);
    size_t before = ld->errs->n;
    for (size_t i = 0; i < HR_ARRAY_SIZE(paths); i++) {
        char *rel = NULL;
        if (lua_getfield(L, -1, keys[i]) != LUA_TNIL) want_string(ld, names[i], &rel);
        lua_pop(L, 1);
        if (rel && !rel[0]) key_err(ld, names[i], "must not be empty");
        if (rel && rel[0]) *paths[i] = hr_path_join(ld->c->dir, rel);
        free(rel);
    }
    if (!t->cert_file && ld->errs->n == before)
        key_err(ld, "tls.cert_file",
                "missing (the listener's certificate chain, e.g. cert_file = \"tls/server.pem\")");
    if (ld->errs->n != before) return;
    hr_tls_opts_t o = {.role = HR_TLS_SERVER,
                       .cert_file = t->cert_file,
                       .key_file = t->key_file,
                       .client_ca_file = t->client_ca_file};
    hr_tls_field_t field;
    char err[512];
    t->ctx = hr_tls_ctx_new(&o, &field, err, sizeof err);
    if (!t->ctx) key_err(ld, tls_field_key(field), "%s", err);
}

/* Walk the table on top of the stack into ld->c. [-0, +0, m] */
static void load_root(loader_t *ld)
{
    static const char *const keys[] = {"listen",
                                       "tokens",
                                       "insecure_no_auth",
                                       "endpoints",
                                       "store_key",
                                       "rules",
                                       "targets",
                                       "files",
                                       "dead_letters",
                                       "limits",
                                       "delivery",
                                       "log",
                                       "shutdown_grace_ms",
                                       "spool_dir",
                                       "fsync",
                                       "fsync_interval_ms",
                                       "max_spool_bytes",
                                       "workers",
                                       "tls",
                                       "metrics",
                                       "admin_listen",
                                       "outbox",
                                       NULL};
    lua_State *L = ld->L;
    hr_config_t *c = ld->c;
    check_keys(ld, "", keys);

    if (lua_getfield(L, -1, "listen") != LUA_TNIL) want_string(ld, "listen", &c->listen);
    lua_pop(L, 1);
    char err[256];
    if (parse_listen(c, err, sizeof err) != 0) key_err(ld, "listen", "%s", err);
    if (lua_getfield(L, -1, "admin_listen") != LUA_TNIL) {
        want_string(ld, "admin_listen", &c->admin_listen);
        if (c->admin_listen &&
            parse_address(c->admin_listen, &c->admin_host, &c->admin_port, err, sizeof err) != 0)
            key_err(ld, "admin_listen", "%s", err);
        else if (c->admin_listen && c->listen_host && c->admin_port != 0 &&
                 c->admin_port == c->listen_port && strcmp(c->admin_host, c->listen_host) == 0)
            key_err(ld, "admin_listen", "must differ from listen (%s)", c->listen);
    }
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "metrics") != LUA_TNIL) load_metrics(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "tls") != LUA_TNIL) load_tls(ld);
    lua_pop(L, 1);

    if (lua_getfield(L, -1, "insecure_no_auth") != LUA_TNIL)
        want_bool(ld, "insecure_no_auth", &c->insecure_no_auth);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "tokens") != LUA_TNIL) load_tokens(ld);
    lua_pop(L, 1);
    if (c->ntokens == 0 && !c->insecure_no_auth)
        key_err(ld, "tokens",
                "no bearer token configured (an os.getenv() that returned nil leaves it empty); "
                "set tokens = { \"...\" }, or insecure_no_auth = true for local testing only");

    if (lua_getfield(L, -1, "endpoints") == LUA_TNIL)
        key_err(ld, "endpoints",
                "missing: map request paths to event types, e.g. "
                "[\"/aifi/checkout-zone/left\"] = \"checkout-zone.left\"");
    else
        load_endpoints(ld);
    lua_pop(L, 1);

    if (lua_getfield(L, -1, "store_key") != LUA_TNIL) want_string(ld, "store_key", &c->store_key);
    lua_pop(L, 1);

    char *rules = NULL;
    if (lua_getfield(L, -1, "rules") == LUA_TNIL)
        key_err(ld, "rules", "missing: the folder of default.lua and stores/<store>.lua");
    else
        want_string(ld, "rules", &rules);
    lua_pop(L, 1);
    if (rules) {
        c->rules_dir = hr_path_join(c->dir, rules);
        free(rules);
    }

    if (lua_getfield(L, -1, "targets") != LUA_TNIL) load_targets(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "files") != LUA_TNIL) load_files(ld);
    lua_pop(L, 1);

    char *dl = NULL;
    if (lua_getfield(L, -1, "dead_letters") != LUA_TNIL) want_string(ld, "dead_letters", &dl);
    lua_pop(L, 1);
    c->dead_letters = hr_path_join(c->dir, dl ? dl : HR_DEF_DEAD_LETTERS);
    free(dl);

    if (lua_getfield(L, -1, "limits") != LUA_TNIL) load_limits(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "delivery") != LUA_TNIL) load_delivery(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "shutdown_grace_ms") != LUA_TNIL)
        want_uint(ld, "shutdown_grace_ms", 0, 3600000, &c->shutdown_grace_ms);
    lua_pop(L, 1);
    load_spool(ld);
    if (lua_getfield(L, -1, "outbox") != LUA_TNIL) load_outbox(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "workers") != LUA_TNIL) load_workers(ld);
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "log") != LUA_TNIL) load_log(ld);
    lua_pop(L, 1);
}

static void set_defaults(hr_config_t *c)
{
    c->listen = hr_xstrdup(HR_DEF_LISTEN);
    c->insecure_no_auth = HR_DEF_INSECURE_NO_AUTH;
    c->store_key = hr_xstrdup(HR_DEF_STORE_KEY);
    c->log_level = hr_xstrdup(HR_DEF_LOG_LEVEL);
    c->log_format = hr_xstrdup(HR_DEF_LOG_FORMAT);
    c->limits.body_bytes = HR_DEF_BODY_BYTES;
    c->limits.header_bytes = HR_DEF_HEADER_BYTES;
    c->limits.rule_instructions = HR_DEF_RULE_INSTRUCTIONS;
    c->limits.rule_memory_bytes = HR_DEF_RULE_MEMORY_BYTES;
    c->limits.state_memory_bytes = HR_DEF_STATE_MEMORY_BYTES;
    c->limits.actions_per_event = HR_DEF_ACTIONS_PER_EVENT;
    c->limits.idle_timeout_ms = HR_DEF_IDLE_TIMEOUT_MS;
    c->limits.request_timeout_ms = HR_DEF_REQUEST_TIMEOUT_MS;
    c->limits.max_connections = HR_DEF_MAX_CONNECTIONS;
    c->retry_base_ms = HR_DEF_RETRY_BASE_MS;
    c->retry_max_ms = HR_DEF_RETRY_MAX_MS;
    c->max_conns_per_target = HR_DEF_MAX_CONNS_PER_TARGET;
    c->shutdown_grace_ms = HR_DEF_SHUTDOWN_GRACE_MS;
    c->fsync_interval_ms = HR_DEF_FSYNC_INTERVAL_MS;
    c->max_spool_bytes = HR_DEF_MAX_SPOOL_BYTES;
    c->workers = HR_DEF_WORKERS;
    c->metrics_store_labels = HR_DEF_METRICS_STORE_LABELS;
    c->outbox.prefix = hr_xstrdup(HR_DEF_OUTBOX_PREFIX);
    c->outbox.claim_idle_ms = HR_DEF_OUTBOX_CLAIM_IDLE_MS;
    c->outbox.wait_replicas = HR_DEF_OUTBOX_WAIT_REPLICAS;
    c->outbox.wait_timeout_ms = HR_DEF_OUTBOX_WAIT_TIMEOUT_MS;
}

/* Open the libraries a config may use: base (without file loading), string, table, math,
 * and os.getenv as the only member of os. [-0, +0, m] */
static void open_config_libs(lua_State *L)
{
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    lua_pop(L, 4);
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0); /* full os, not made global */
    lua_newtable(L);                                /* the config's os */
    lua_getfield(L, -2, "getenv");
    lua_setfield(L, -2, "getenv");
    lua_setglobal(L, "os");
    lua_pop(L, 1); /* full os */
    /* No setmetatable: the config's tables are walked from C after its code ran, outside the
     * budget, so none may carry metamethods that would run Lua there. */
    static const char *const banned[] = {"dofile",  "loadfile",     "load",
                                         "require", "setmetatable", NULL};
    for (size_t i = 0; banned[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, banned[i]);
    }
}

/* [-0, +0, -]: the Lua state is its own, closed before it returns. */
hr_config_t *hr_config_load(const char *path, hr_errors_t *errs)
{
    size_t before = errs->n;
    hr_config_t *c = hr_xcalloc(1, sizeof *c);
    c->file = hr_xstrdup(path);
    const char *slash = strrchr(path, '/');
    c->dir = slash ? hr_xstrndup(path, (size_t)(slash - path + (slash == path))) : hr_xstrdup(".");
    set_defaults(c);

    hr_lua_cap_t cap = {.limit = CONFIG_MEMORY, .on = true};
    lua_State *L = lua_newstate(hr_lua_capped_alloc, &cap);
    if (!L) {
        hr_errors_add(errs, "%s: cannot create a Lua state", path);
        goto fail;
    }
    open_config_libs(L);

    int rc = luaL_loadfilex(L, path, "t");
    if (rc == LUA_ERRFILE) {
        hr_errors_add(errs, "%s: cannot read the config file: %s", path, strerror(errno));
        goto fail;
    }
    char *trace = NULL; /* where the config's code raised, for the message's later lines */
    if (rc == LUA_OK)
        rc = hr_lua_pcall_budget(L, 0, 1, CONFIG_INSTRUCTIONS, "the config's code",
                                 "the fixed config budget", &trace);
    if (rc == LUA_ERRMEM) {
        hr_errors_add(errs, "%s: the config's code needs more than %u MiB of memory", path,
                      CONFIG_MEMORY >> 20);
        free(trace);
        goto fail;
    }
    if (rc != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        /* Lua prefixes errors with the chunk name, which is the path already. */
        hr_errors_add(errs, "%s%s%s", msg ? msg : "unknown error loading the config",
                      trace ? "\n" : "", trace ? trace : "");
        free(trace);
        goto fail;
    }
    /* The config's code is done: what the walk below allocates (key strings) is the
     * router's, and outside any pcall a refused allocation would be a panic. */
    cap.on = false;
    if (lua_type(L, -1) != LUA_TTABLE) {
        hr_errors_add(errs, "%s: the config file must return a table (return { ... }), got %s",
                      path, type_at(L, -1));
        goto fail;
    }
    loader_t ld = {L, c, errs};
    load_root(&ld);
    if (errs->n != before) goto fail;
    lua_close(L);
    return c;
fail:
    if (L) lua_close(L);
    hr_config_free(c);
    return NULL;
}

hr_reply_t *hr_reply_dup(const hr_reply_t *r)
{
    hr_reply_t *c = hr_xcalloc(1, sizeof *c);
    c->status = r->status;
    c->body_is_json = r->body_is_json;
    c->body_len = r->body_len;
    if (r->body) {
        c->body = hr_xmalloc(r->body_len + 1);
        memcpy(c->body, r->body, r->body_len);
        c->body[r->body_len] = '\0';
    }
    c->nheaders = r->nheaders;
    c->headers = hr_xcalloc(r->nheaders + 1, sizeof *c->headers);
    for (size_t i = 0; i < r->nheaders; i++) {
        c->headers[i].name = hr_xstrdup(r->headers[i].name);
        c->headers[i].value = hr_xstrdup(r->headers[i].value);
    }
    return c;
}

void hr_reply_free(hr_reply_t *r)
{
    if (!r) return;
    hr_headers_free(r->headers, r->nheaders);
    free(r->body);
    free(r);
}

void hr_config_free(hr_config_t *c)
{
    if (!c) return;
    free(c->file);
    free(c->dir);
    free(c->listen);
    free(c->listen_host);
    free(c->metrics_token);
    free(c->admin_listen);
    free(c->admin_host);
    free(c->outbox.url);
    free(c->outbox.host);
    free(c->outbox.password);
    free(c->outbox.prefix);
    free(c->tls.cert_file);
    free(c->tls.key_file);
    free(c->tls.client_ca_file);
    hr_tls_ctx_unref(c->tls.ctx);
    for (size_t i = 0; i < c->ntokens; i++)
        free(c->tokens[i]);
    free(c->tokens);
    for (size_t i = 0; i < c->nendpoints; i++) {
        free(c->endpoints[i].path);
        free(c->endpoints[i].event);
        hr_reply_free(c->endpoints[i].fallback);
        sign_free(c->endpoints[i].verify);
    }
    free(c->endpoints);
    free(c->store_key);
    free(c->rules_dir);
    for (size_t i = 0; i < c->ntargets; i++) {
        free(c->targets[i].name);
        free(c->targets[i].url);
        hr_headers_free(c->targets[i].headers, c->targets[i].nheaders);
        free(c->targets[i].retry_ms);
        free(c->targets[i].tls_ca_file);
        free(c->targets[i].tls_client_cert);
        free(c->targets[i].tls_client_key);
        free(c->targets[i].tls_server_name);
        free(c->targets[i].proxy);
        hr_tls_ctx_unref(c->targets[i].tls);
        sign_free(c->targets[i].sign);
    }
    free(c->targets);
    free(c->write_retry_ms);
    for (size_t i = 0; i < c->nfiles; i++) {
        free(c->files[i].name);
        free(c->files[i].path);
    }
    free(c->files);
    free(c->dead_letters);
    free(c->spool_dir);
    free(c->log_level);
    free(c->log_format);
    free(c);
}

const hr_target_conf_t *hr_config_target(const hr_config_t *c, const char *name)
{
    for (size_t i = 0; i < c->ntargets; i++)
        if (strcmp(c->targets[i].name, name) == 0) return &c->targets[i];
    return NULL;
}

const hr_file_conf_t *hr_config_file(const hr_config_t *c, const char *name)
{
    for (size_t i = 0; i < c->nfiles; i++)
        if (strcmp(c->files[i].name, name) == 0) return &c->files[i];
    return NULL;
}

const hr_endpoint_conf_t *hr_config_endpoint(const hr_config_t *c, const char *path)
{
    for (size_t i = 0; i < c->nendpoints; i++)
        if (strcmp(c->endpoints[i].path, path) == 0) return &c->endpoints[i];
    return NULL;
}
