/* Rule sets: the Lua sandbox, rule loading, and running one event in a coroutine. */
#include "hr/rules.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "hr/json.h"
#include "hr/log.h"
#include "hr/lua_budget.h"
#include "hr/lua_crypto.h"
#include "hr/lua_scan.h"
#include "hr/lua_text.h"
#include "hr/lua_time.h"
#include "hr/pattern.h"

#define HOOK_STEP 1000 /* instructions between two count-hook calls */

/* Registry keys. The three an event reads (stores, default, reads) are used by address, with
 * lua_rawgetp: a light userdata key needs no string hashing on every event. */
static const char STORES_KEY[] = "hr.stores";   /* table: store id -> rule function */
static const char DEFAULT_KEY[] = "hr.default"; /* the default rule function */
static const char LIBS_KEY[] = "hr.libs";       /* table: library name -> its view's metatable */
static const char SEEN_KEY[] = "hr.seen";       /* table: key -> true (hr_ruleset_first_time) */
static const char READS_KEY[] = "hr.reads";     /* table: rule function -> its reads_t */

/* How much of its bodies a rule file reads, for the choice between a lazy body (the parts a
 * rule reads become Lua values when it reads them) and one filled whole before the rule runs
 * (cheaper per value when a rule reads most of it: no lazy table to make and fill). */
typedef struct {
    uint32_t share; /* moving average of the share of a body's arrays and objects the rule
                       filled, in 1/1024 (3/4 old, 1/4 new) */
} reads_t;

#define READS_WHOLE 512 /* share from which a body is filled whole (half its containers) */
#define READS_PROBE                                                                                \
    32 /* every this many events the body is lazy whatever the rule, so the                        \
          share of a rule that gets whole bodies follows what it does now */

/* One event's run: what it collects, and its coroutine. Lives on the heap because a run can
 * suspend in request() and be resumed from a later loop callback. Reached from C functions
 * through the coroutine's extra space, which points at the run only during a slice (start or
 * resume until the next yield or return) and is NULL otherwise; the main thread's is always
 * NULL, so calls outside an event are refused. */
struct hr_run {
    hr_ruleset_t *rs;        /* referenced for as long as the run lives */
    const hr_event_in_t *ev; /* the caller keeps it valid until the run ends */
    const void *body;        /* the table the body decoded to (identity only), or NULL */
    hr_run_result_t *out;    /* the caller's result, at a fixed address */
    hr_action_t **tail;      /* where the next action is linked */
    uint64_t executed;       /* instructions so far, over every slice (HOOK_STEP units) */
    bool over_budget;        /* the instruction budget was exceeded */
    lua_State *co;           /* the event's coroutine */
    int co_ref;              /* registry reference that keeps co alive between slices */
    hr_action_t *pending;    /* the request() the rule waits for (owned), or NULL */
    size_t charged;          /* C memory the run holds (action and reply bodies), in bytes */
    bool closing;            /* the run is over: only its to-be-closed handlers still run */
    reads_t *reads;          /* the rule file's reads, when this run measures them, or NULL */
    uint32_t containers;     /* arrays and objects in the body */
    uint32_t fills0;         /* rs->json_fills when the rule started */
    const void *event_table; /* the event table given to the rule (event.raw reads ev->body
                                only for it, not for one a rule kept from an earlier event) */
};
typedef struct hr_run run_ctx_t;

/* Coroutines kept for the next runs: a new one (a state, its stack, a registry slot) costs
 * more than resetting one that ended well. */
#define SPARE_COS 4

struct hr_ruleset {
    lua_State *L;
    hr_config_t *cfg;
    int refs;
    size_t nstores;
    bool has_default;
    hr_lua_cap_t mem;     /* the state's memory: capped while an event or a file's top level runs
                             (rule_memory_bytes more than it held when the slice started, the run's
                             C memory as extra); what it keeps between events is checked against
                             state_memory_bytes after each run instead */
    bool rebuild;         /* the state outgrew limits.state_memory_bytes: replace this rule set */
    int event_mt;         /* registry reference of the event tables' metatable (event.raw); an
                             integer key, so each event finds it without hashing a name */
    int event_new;        /* registry reference of the function that makes event tables */
    uint32_t json_fills;  /* lazy fills of body tables in this state (hr_json_decode_lazy) */
    uint32_t decodes;     /* bodies decoded (wraps) */
    bool whole_bodies;    /* the last event's rule reads most of its bodies: decode the next
                             one whole from the start (its rule is not known before) */
    int spare[SPARE_COS]; /* registry references of coroutines of runs that ended well, reset */
    int nspare;
};

/* The event table is made by a Lua function (rs->event_new): a table constructor's keys are
 * constants of the chunk, interned once at load, where lua_setfield would look up each key's
 * C string on every event. Its arguments in this order; nil ones make no field. */
static const char EVENT_NEW[] =
    "return function(body, id, type, store, method, path, received_at, authenticated, token,\n"
    "                headers)\n"
    "  return {body = body, id = id, type = type, store = store, method = method, path = path,\n"
    "          received_at = received_at, authenticated = authenticated, token = token,\n"
    "          headers = headers}\n"
    "end\n";

static void set_file_env(lua_State *L, int loaded);
static void spend(lua_State *L, struct hr_run *ctx, uint64_t n);
static void pattern_charge(lua_State *L, unsigned steps);

/* ---------------------------------------------------------------- helpers */

/* The run whose slice is running on L, or NULL (the main thread, or between slices).
 * [-0, +0, -] */
static run_ctx_t *ctx_of(lua_State *L)
{
    return *(run_ctx_t **)lua_getextraspace(L);
}

/* The context of the running event, or raise an error naming fn. [-0, +0, v] */
static run_ctx_t *need_ctx(lua_State *L, const char *fn)
{
    run_ctx_t *ctx = ctx_of(L);
    if (!ctx) luaL_error(L, "%s() can only be called while handling an event", fn);
    if (ctx->closing) luaL_error(L, "%s() cannot be called once the rule has returned", fn);
    return ctx;
}

/* Bytes the running slice may still take under its memory cap. */
static size_t mem_room(const hr_ruleset_t *rs)
{
    size_t held = rs->mem.used + rs->mem.extra;
    return held < rs->mem.limit ? rs->mem.limit - held : 0;
}

/* Count n bytes of C memory the run will hold (a body) against its memory cap, or raise the
 * memory-limit error if they do not fit. [-0, +0, v] */
static void charge(lua_State *L, run_ctx_t *ctx, size_t n, const char *fn)
{
    hr_ruleset_t *rs = ctx->rs;
    if (n > mem_room(rs)) {
        rs->mem.denied = true; /* the run fails even if a pcall catches this */
        luaL_error(L, "%s: not enough memory for a body of %I bytes", fn, (lua_Integer)n);
    }
    ctx->charged += n;
    rs->mem.extra += n;
}

static void link_action(run_ctx_t *ctx, hr_action_t *a)
{
    const hr_event_in_t *ev = ctx->ev;
    memcpy(a->event_id, ev->id, HR_ID_LEN);
    a->event_type = hr_action_strdup(a, ev->type);
    a->store = ctx->out->store ? hr_action_strdup(a, ctx->out->store) : NULL;
    a->accepted_ms = ev->received_ms;
    *ctx->tail = a;
    ctx->tail = &a->next;
    ctx->out->nactions++;
}

/* Encode the body argument at idx: a table as JSON (event.body unchanged: the text it came as,
 * unless one_line is asked for and that text has a line break), a string as it is. Raises on
 * anything else, and when the body does not fit in the run's memory cap (the copy is C memory
 * the run holds until its actions are handed on, so it counts). Returns a malloc'd copy.
 * [-0, +0, e] */
static char *body_arg(lua_State *L, run_ctx_t *ctx, int idx, const char *fn, bool one_line,
                      size_t *len, bool *is_json)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, idx, len);
        charge(L, ctx, *len, fn);
        *is_json = false;
        return hr_xstrndup(s, *len);
    }
    if (lua_type(L, idx) != LUA_TTABLE)
        luaL_error(L, "%s: the body must be a table or a string, got %s", fn,
                   luaL_typename(L, idx));
    /* event.body as it came (unchanged): the sender's own bytes, not an encoding of them */
    const hr_event_in_t *ev = ctx->ev;
    if (ctx->body && lua_topointer(L, idx) == ctx->body &&
        !(one_line &&
          (memchr(ev->body, '\n', ev->body_len) || memchr(ev->body, '\r', ev->body_len))) &&
        hr_json_matches(L, idx, ev->body, ev->body_len)) {
        size_t skip = ev->body_len >= 3 && memcmp(ev->body, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
        *len = ev->body_len - skip;
        charge(L, ctx, *len, fn);
        *is_json = true;
        char *copy = hr_xmalloc(*len + 1);
        memcpy(copy, ev->body + skip, *len);
        copy[*len] = '\0';
        return copy;
    }
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_reserve(&b, 255); /* one malloc for a legacy body of a few fields, not three */
    char err[256];
    int rc = hr_json_encode_max(L, idx, &b, mem_room(ctx->rs), err, sizeof err);
    if (rc != 0) {
        hr_buf_free(&b);
        if (rc == HR_JSON_TOO_LARGE) charge(L, ctx, SIZE_MAX, fn); /* raises */
        luaL_error(L, "%s: %s", fn, err);
    }
    charge(L, ctx, b.len, fn); /* fits: encode stopped at the room left */
    *is_json = true;
    return hr_buf_steal(&b, len);
}

/* Refuse one more action once the event has limits.actions_per_event. [-0, +0, v] */
static void check_action_count(lua_State *L, run_ctx_t *ctx, const char *fn)
{
    size_t max = ctx->rs->cfg->limits.actions_per_event;
    if (ctx->out->nactions >= max)
        luaL_error(L, "%s: too many actions for one event (limits.actions_per_event = %I)", fn,
                   (lua_Integer)max);
}

static bool valid_header_name(const char *s)
{
    if (!*s) return false;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= 32 || c >= 127 || strchr("()<>@,;:\\\"/[]?={}", c)) return false;
    }
    return true;
}

/* Add or replace (case-insensitively) a header of a forward action. */
static void set_header(hr_action_t *a, const char *name, const char *value)
{
    for (size_t i = 0; i < a->nheaders; i++) {
        if (strcasecmp(a->headers[i].name, name) == 0) {
            hr_action_str_free(a, a->headers[i].value);
            a->headers[i].value = hr_action_strdup(a, value);
            return;
        }
    }
    hr_action_add_header(a, name, value);
}

/* ---------------------------------------------------------------- rule API */

/* Build the forward-kind action of forward() or request(): target at 1, body at 2, opts at
 * 3 (path, method, headers, content_type, timeout_ms). The action is handed to keep (which
 * takes ownership) before anything below can raise, so a raise never leaks it.
 * [-0, +0, e] */
static hr_action_t *http_action(lua_State *L, run_ctx_t *ctx, const char *fn,
                                void (*keep)(run_ctx_t *ctx, hr_action_t *a))
{
    const char *name = luaL_checkstring(L, 1);
    const hr_target_conf_t *t = hr_config_target(ctx->rs->cfg, name);
    if (!t) luaL_error(L, "%s: unknown target '%s' (not in the config's targets)", fn, name);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);

    const char *path = "", *method = "POST", *ctype = NULL;
    lua_Integer timeout = t->timeout_ms;
    if (lua_istable(L, 3)) {
        if (lua_getfield(L, 3, "path") != LUA_TNIL) path = luaL_checkstring(L, -1);
        if (lua_getfield(L, 3, "method") != LUA_TNIL) method = luaL_checkstring(L, -1);
        if (lua_getfield(L, 3, "content_type") != LUA_TNIL) ctype = luaL_checkstring(L, -1);
        if (lua_getfield(L, 3, "timeout_ms") != LUA_TNIL) {
            timeout = luaL_checkinteger(L, -1);
            if (timeout < 1 || timeout > 3600000)
                luaL_error(L, "%s: opts.timeout_ms must be between 1 and 3600000", fn);
        }
        lua_pop(L, 4); /* the strings stay valid: opts still references them */
        for (const char *p = method; *p; p++)
            if (*p < 'A' || *p > 'Z') luaL_error(L, "%s: invalid method '%s'", fn, method);
        /* Event data often ends up in a path: it must never move the request elsewhere. */
        if (*path && *path != '/')
            luaL_error(L,
                       "%s: opts.path must start with '/' (it is joined under the target's URL), "
                       "got '%s'",
                       fn, path);
        if (strpbrk(path, " \r\n\t#\\")) luaL_error(L, "%s: invalid path '%s'", fn, path);
        if (ctype && strpbrk(ctype, "\r\n")) luaL_error(L, "%s: invalid content_type", fn);
    }

    size_t len;
    bool is_json;
    char *body = body_arg(L, ctx, 2, fn, false, &len, &is_json);
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    a->body = body;
    a->body_len = len;
    a->body_is_json = is_json;
    a->name = hr_action_strdup(a, name);
    a->method = hr_action_strdup(a, method);
    a->url = hr_action_strcat(a, t->url, path);
    a->timeout_ms = (uint32_t)timeout;
    a->max_attempts = t->max_attempts;
    hr_action_add_header(a, "Content-Type",
                         ctype     ? ctype
                         : is_json ? "application/json"
                                   : "text/plain; charset=utf-8");
    hr_action_add_header(a, "User-Agent", "hookrouter/" HR_VERSION);
    hr_action_add_header(a, "X-Hookrouter-Event-Id", ctx->ev->id);
    for (size_t i = 0; i < t->nheaders; i++)
        set_header(a, t->headers[i].name, t->headers[i].value);
    keep(ctx, a); /* owned elsewhere first, so a raise below cannot leak it */

    if (lua_istable(L, 3) && lua_getfield(L, 3, "headers") != LUA_TNIL) {
        luaL_checktype(L, -1, LUA_TTABLE);
        hr_json_force(L, -1); /* read raw below */
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || !valid_header_name(lua_tostring(L, -2)))
                luaL_error(L, "%s: invalid header name in opts.headers", fn);
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "%s: header '%s' must be a string", fn, lua_tostring(L, -2));
            const char *v = lua_tostring(L, -1);
            if (strpbrk(v, "\r\n"))
                luaL_error(L, "%s: header '%s' contains a line break", fn, lua_tostring(L, -2));
            set_header(a, lua_tostring(L, -2), v);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return a;
}

/* forward(target, body [, opts]) [-0, +0, e] */
static int l_forward(lua_State *L)
{
    run_ctx_t *ctx = need_ctx(L, "forward");
    check_action_count(L, ctx, "forward");
    http_action(L, ctx, "forward", link_action);
    return 0;
}

static void keep_pending(run_ctx_t *ctx, hr_action_t *a)
{
    hr_action_free(ctx->pending);
    ctx->pending = a;
}

/* request(target, body [, opts]): record the request and suspend the coroutine; the caller
 * performs it and resumes with (res) or (nil, err), which become request()'s results.
 * [-0, +(1|2), e] */
static int l_request(lua_State *L)
{
    run_ctx_t *ctx = need_ctx(L, "request");
    if (!lua_isyieldable(L))
        luaL_error(L, "request() cannot wait here (inside a metamethod, a sort comparator, a "
                      "gsub callback or a module's top level): call it from the rule itself");
    http_action(L, ctx, "request", keep_pending);
    ctx->pending->max_attempts = 1; /* no retries: the sender is waiting */
    ctx->out->requests++;
    return lua_yield(L, 0);
}

/* respond(status [, body [, headers]]): set the reply to the sender; the last call wins.
 * [-0, +0, e] */
static int l_respond(lua_State *L)
{
    run_ctx_t *ctx = need_ctx(L, "respond");
    lua_Integer status = luaL_checkinteger(L, 1);
    if (status < 100 || status > 599)
        luaL_error(L, "respond: status must be between 100 and 599, got %d", (int)status);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    hr_reply_t *rp = hr_xcalloc(1, sizeof *rp);
    rp->status = (int)status;
    hr_reply_free(ctx->out->reply);
    ctx->out->reply = rp; /* owned by out first, so a raise below cannot leak it */
    if (!lua_isnoneornil(L, 2))
        rp->body = body_arg(L, ctx, 2, "respond", false, &rp->body_len, &rp->body_is_json);
    if (lua_istable(L, 3)) {
        size_t n = 0;
        hr_json_force(L, 3); /* read raw below */
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            lua_pop(L, 1);
            n++;
        }
        rp->headers = hr_xcalloc(n + 1, sizeof *rp->headers);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || !valid_header_name(lua_tostring(L, -2)))
                luaL_error(L, "respond: invalid header name in headers");
            if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                luaL_error(L, "respond: header '%s' must be a string", lua_tostring(L, -2));
            const char *v = lua_tostring(L, -1);
            if (strpbrk(v, "\r\n"))
                luaL_error(L, "respond: header '%s' contains a line break", lua_tostring(L, -2));
            const char *k = lua_tostring(L, -2);
            if (strcasecmp(k, "content-length") == 0 || strcasecmp(k, "connection") == 0 ||
                strcasecmp(k, "transfer-encoding") == 0)
                luaL_error(L, "respond: header '%s' is set by hookrouter", k);
            rp->headers[rp->nheaders].name = hr_xstrdup(k);
            rp->headers[rp->nheaders].value = hr_xstrdup(v);
            rp->nheaders++;
            lua_pop(L, 1);
        }
    }
    return 0;
}

/* write(file, record) [-0, +0, e] */
static int l_write(lua_State *L)
{
    run_ctx_t *ctx = need_ctx(L, "write");
    const char *name = luaL_checkstring(L, 1);
    const hr_file_conf_t *f = hr_config_file(ctx->rs->cfg, name);
    if (!f) luaL_error(L, "write: unknown file '%s' (not in the config's files)", name);
    check_action_count(L, ctx, "write");
    size_t len;
    bool is_json;
    char *line = body_arg(L, ctx, 2, "write", true, &len, &is_json); /* a record is one line */
    if (memchr(line, '\n', len)) {
        free(line);
        luaL_error(L, "write: a string record must be one line (it contains a newline)");
    }
    hr_action_t *a = hr_action_new(HR_ACTION_WRITE);
    a->body = line;
    a->body_len = len;
    a->body_is_json = is_json;
    a->name = hr_action_strdup(a, name);
    a->file_path = hr_action_strdup(a, f->path);
    link_action(ctx, a);
    return 0;
}

/* drop(reason) [-0, +0, e] */
static int l_drop(lua_State *L)
{
    run_ctx_t *ctx = need_ctx(L, "drop");
    const char *reason = luaL_optstring(L, 1, "dropped by rule");
    ctx->out->dropped = true;
    free(ctx->out->drop_reason);
    ctx->out->drop_reason = hr_xstrdup(reason);
    return 0;
}

/* log.<level>(...): arguments joined by spaces through tostring. [-0, +0, e] */
static int l_log(lua_State *L)
{
    hr_log_level_t level = (hr_log_level_t)lua_tointeger(L, lua_upvalueindex(1));
    if (!hr_log_enabled(level)) return 0;
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1) luaL_addchar(&b, ' ');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    run_ctx_t *ctx = ctx_of(L);
    if (ctx)
        hr_log_kv(level, "rule", HR_KV_STR("id", ctx->ev->id), HR_KV_STR("store", ctx->out->store),
                  HR_KV_STR("text", lua_tostring(L, -1)));
    else
        hr_log_kv(level, "rule", HR_KV_STR("text", lua_tostring(L, -1)));
    return 0;
}

static bool valid_module_name(const char *s)
{
    if (!*s || *s == '.') return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || (c == '.' && p[1] && p[1] != '.');
        if (!ok) return false;
    }
    return true;
}

/* require(name): load rules/<name with dots as slashes>.lua once per rule file, in the
 * sandbox. Upvalues: the rule set, and the module table of the rule file that (directly or
 * through other modules) requires it. Each rule file gets its own instance of a module, so
 * what one store's rule changes in a module's tables never reaches another store. Top-level
 * code of a module required while its rule file loads counts against that file's budget;
 * required during an event, against the event's. [-0, +1, e] */
static int l_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    hr_ruleset_t *rs = lua_touserdata(L, lua_upvalueindex(1));
    if (!valid_module_name(name))
        luaL_error(L, "require: invalid module name '%s' (use letters, digits, _ - and .)", name);
    if (lua_getfield(L, lua_upvalueindex(2), name) != LUA_TNIL) return 1;
    lua_pop(L, 1); /* drop nil */
    char *rel = hr_xstrdup(name);
    for (char *p = rel; *p; p++)
        if (*p == '.') *p = '/';
    char *file = hr_xasprintf("%s/%s.lua", rs->cfg->rules_dir, rel);
    free(rel);
    int rc = luaL_loadfilex(L, file, "t");
    free(file);
    if (rc != LUA_OK) return lua_error(L); /* message already says path:line */
    set_file_env(L, lua_upvalueindex(2));
    lua_pushstring(L, name);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1); /* drop nil */
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(2), name); /* loaded[name] = value */
    return 1;
}

/* setmetatable(t, mt): the base library's, except that a metatable with a __gc field is
 * refused. A finalizer runs whenever the collector gets to its object: during another
 * store's event, a reload or shutdown, outside any budget. Without __gc no Lua code can run
 * there (__gc marks an object only if present when the metatable is set, so adding it later
 * does nothing). [-0, +1, e] */
static int l_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    hr_json_force(L, 1); /* a lazy body table gets its values before its metatable goes */
    if (luaL_getmetafield(L, 1, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "setmetatable: __gc is not allowed in rules (a finalizer would "
                                 "run outside the rule's budget, during other events)");
        lua_pop(L, 1); /* drop nil */
    }
    lua_settop(L, 2);
    lua_setmetatable(L, 1);
    return 1;
}

/* json.encode(v) in the sandbox: the library's, with the text capped at what the running
 * slice may still allocate (the C buffer it is built in counts too, and a body that
 * references one large string many times would otherwise grow without bound). Upvalue: the
 * rule set. [-0, +1, e] */
static int l_json_encode(lua_State *L)
{
    hr_ruleset_t *rs = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    char err[512];
    size_t max = rs->mem.on ? mem_room(rs) : SIZE_MAX;
    int rc = hr_json_push_encoded(L, 1, max, err, sizeof err);
    if (rc == HR_JSON_TOO_LARGE) {
        rs->mem.denied = true;
        return luaL_error(L, "json.encode: the text would exceed the rule's memory limit "
                             "(limits.rule_memory_bytes)");
    }
    if (rc != 0) return luaL_error(L, "json.encode: %s", err);
    return 1;
}

/* The clock of os.time, os.date, time.now and uuid.v7: the event's received_ms when the run
 * has a fixed clock (hookrouter test), else the wall clock (also outside events).
 * [-0, +0, -] */
static int64_t rule_clock(lua_State *L)
{
    run_ctx_t *ctx = ctx_of(L);
    if (ctx && ctx->ev->fixed_clock) return (int64_t)ctx->ev->received_ms;
    return (int64_t)hr_wall_ms();
}

/* __index of event tables: event.raw is the body as received, copied into Lua only when a
 * rule first reads it (then kept in the table), so rules that never read it pay nothing.
 * Other missing keys are nil. [-0, +1, m] */
static int l_event_index(lua_State *L)
{
    run_ctx_t *ctx = ctx_of(L);
    const char *k = lua_tostring(L, 2);
    if (!ctx || lua_type(L, 2) != LUA_TSTRING || strcmp(k, "raw") != 0 ||
        lua_topointer(L, 1) != ctx->event_table) {
        lua_pushnil(L);
        return 1;
    }
    spend(L, ctx, 1 + ctx->ev->body_len / HR_LUA_CRYPTO_BYTES_PER_STEP);
    lua_pushlstring(L, ctx->ev->body, ctx->ev->body_len);
    lua_pushvalue(L, -1);
    lua_setfield(L, 1, "raw"); /* read once: later reads are plain table reads */
    return 1;
}

/* ---------------------------------------------------------------- sandbox */

/* Give the chunk at the top of the stack its own global table, with its own views of the
 * libraries and its own require (sharing the module table at index loaded, or a new one
 * when loaded is 0). Reads fall through to the shared sandbox globals, writes stay in the
 * file's own table; so a rule that assigns a global (`forward = nil`), rawsets into
 * `string` or changes a module's table only changes its own file. [-0, +0, m] */
static void set_file_env(lua_State *L, int loaded)
{
    if (loaded) loaded = lua_absindex(L, loaded);
    lua_newtable(L);          /* env */
    lua_createtable(L, 0, 2); /* its metatable */
    lua_pushglobaltable(L);
    lua_setfield(L, -2, "__index");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable"); /* getmetatable(_ENV) cannot reach the shared table */
    lua_setmetatable(L, -2);
    lua_getfield(L, LUA_REGISTRYINDEX, LIBS_KEY);
    lua_pushnil(L);
    while (lua_next(L, -2)) { /* env[name] = setmetatable({}, view metatable of name) */
        lua_newtable(L);
        lua_insert(L, -2);
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -2); /* name */
        lua_insert(L, -2);
        lua_rawset(L, -5);
    }
    lua_pop(L, 1); /* drop the libs table */
    void *ud;
    lua_getallocf(L, &ud); /* the rule set's hr_lua_cap_t */
    lua_pushlightuserdata(L, hr_container_of(ud, hr_ruleset_t, mem));
    if (loaded)
        lua_pushvalue(L, loaded);
    else
        lua_newtable(L);
    lua_pushcclosure(L, l_require, 2);
    lua_setfield(L, -2, "require");
    if (!lua_setupvalue(L, -2, 1)) lua_pop(L, 1); /* _ENV is a main chunk's first upvalue */
}

/* __newindex of a library view: refuse. Upvalue: the library's name. [-0, +0, v] */
static int l_readonly_newindex(lua_State *L)
{
    return luaL_error(L, "attempt to modify the shared library table '%s'",
                      lua_tostring(L, lua_upvalueindex(1)));
}

/* Record in the registry's libs table the metatable of a read-only view of the global
 * library table name: __index reads it, __newindex refuses, __metatable hides it. Each rule
 * file gets an empty table with this metatable (set_file_env), so even rawset on its view
 * changes nothing another file sees. [-0, +0, m] */
static void add_lib_view(lua_State *L, int libs, const char *name)
{
    lua_createtable(L, 0, 3);
    lua_getglobal(L, name);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_pushcclosure(L, l_readonly_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable");
    lua_setfield(L, libs, name);
}

/* Open the libraries rules may use and install the rule API as globals. [-0, +0, m] */
static void open_sandbox(hr_ruleset_t *rs)
{
    lua_State *L = rs->L;
    luaL_requiref(L, LUA_GNAME, luaopen_base, 1);
    luaL_requiref(L, LUA_STRLIBNAME, luaopen_string, 1);
    hr_pattern_install(L, -1, pattern_charge); /* strings' methods use this table too */
    luaL_requiref(L, LUA_TABLIBNAME, luaopen_table, 1);
    luaL_requiref(L, LUA_MATHLIBNAME, luaopen_math, 1);
    luaL_requiref(L, LUA_UTF8LIBNAME, luaopen_utf8, 1);
    lua_pop(L, 5);
    luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0); /* copy four functions, not the library */
    lua_newtable(L);
    static const char *const os_keep[] = {"time", "date", "clock", "getenv", NULL};
    for (size_t i = 0; os_keep[i]; i++) {
        lua_getfield(L, -2, os_keep[i]);
        lua_setfield(L, -2, os_keep[i]);
    }
    hr_lua_time_install(L, -1, rule_clock, pattern_charge); /* time; os.time/date's clock */
    lua_setglobal(L, "os");
    lua_pop(L, 1);
    static const char *const banned[] = {"dofile", "loadfile", "load", "collectgarbage", NULL};
    for (size_t i = 0; banned[i]; i++) {
        lua_pushnil(L);
        lua_setglobal(L, banned[i]);
    }
    lua_pushcfunction(L, l_setmetatable);
    lua_setglobal(L, "setmetatable");
    hr_json_install_lazy_base(L); /* next, rawget, ... see lazy body tables filled */
    /* Strings share one metatable whose __index is the string library: hide it, so that
     * getmetatable("").__index cannot reach (and change) what every store's strings use. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushliteral(L, "string");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2); /* drop the metatable and "" */

    hr_json_open(L);
    lua_pushlightuserdata(L, rs);
    lua_pushcclosure(L, l_json_encode, 1);
    lua_setfield(L, -2, "encode");
    lua_setglobal(L, "json");
    lua_pushcfunction(L, l_forward);
    lua_setglobal(L, "forward");
    lua_pushcfunction(L, l_write);
    lua_setglobal(L, "write");
    lua_pushcfunction(L, l_drop);
    lua_setglobal(L, "drop");
    lua_pushcfunction(L, l_request);
    lua_setglobal(L, "request");
    lua_pushcfunction(L, l_respond);
    lua_setglobal(L, "respond");
    hr_lua_crypto_install(L, pattern_charge); /* crypto, hex, base64: charged as patterns are */
    hr_lua_text_install(L, rule_clock, pattern_charge); /* url, uuid, xml: the same way */
    lua_createtable(L, 0, 2);                           /* the event tables' metatable */
    lua_pushcfunction(L, l_event_index);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "event");
    lua_setfield(L, -2, "__metatable");
    rs->event_mt = luaL_ref(L, LUA_REGISTRYINDEX);
    if (luaL_loadbuffer(L, EVENT_NEW, sizeof EVENT_NEW - 1, "=event") != LUA_OK) lua_error(L);
    lua_call(L, 0, 1);
    rs->event_new = luaL_ref(L, LUA_REGISTRYINDEX);

    static const char *const levels[] = {"debug", "info", "warn", "error"};
    lua_createtable(L, 0, 4);
    for (int i = 0; i < 4; i++) {
        lua_pushinteger(L, i);
        lua_pushcclosure(L, l_log, 1);
        lua_setfield(L, -2, levels[i]);
    }
    lua_getfield(L, -1, "info");
    lua_setglobal(L, "print"); /* print goes to the log, not stdout */
    lua_setglobal(L, "log");

    static const char *const libs[] = {"string", "table", "math",   "utf8", "os",
                                       "json",   "log",   "crypto", "hex",  "base64",
                                       "time",   "url",   "uuid",   "xml",  NULL};
    lua_newtable(L);
    for (size_t i = 0; libs[i]; i++)
        add_lib_view(L, lua_gettop(L), libs[i]);
    lua_setfield(L, LUA_REGISTRYINDEX, LIBS_KEY);
    for (size_t i = 0; libs[i]; i++) { /* only the views reach them */
        lua_pushnil(L);
        lua_setglobal(L, libs[i]);
    }
    lua_pushnil(L);
    lua_setglobal(L, "_G"); /* rules reach globals through their own _ENV only */

    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, STORES_KEY);
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, READS_KEY);
}

/* ---------------------------------------------------------------- loading */

/* The calls check_names looks at, and the config table each one's name must be in. */
static const char *const NAMED_CALLS[] = {"forward", "write", "request", NULL};
static const bool NAMES_A_FILE[] = {false, true, false};

/* What check_names' scan reports to. */
typedef struct {
    const hr_config_t *cfg;
    const char *file;
    hr_errors_t *errs;
} names_scan_t;

/* hr_lua_call_cb of check_names: report a literal name the config lacks. */
static bool check_name(void *ud, const hr_lua_call_t *call)
{
    names_scan_t *ns = ud;
    if (!call->arg) return true;
    char *name = hr_xstrndup(call->arg, call->arg_len);
    bool file = NAMES_A_FILE[call->fn];
    bool known =
        file ? hr_config_file(ns->cfg, name) != NULL : hr_config_target(ns->cfg, name) != NULL;
    if (!known)
        hr_errors_add(ns->errs, "%s:%d: %s to '%s', which is not in the config's %s", ns->file,
                      call->line, NAMED_CALLS[call->fn], name, file ? "files" : "targets");
    free(name);
    return true;
}

/* Scan a rule's source for forward("name", …), write("name", …) and request("name", …)
 * with a literal name (outside comments and strings) and report names the config lacks, as
 * path:line: message. */
static void check_names(hr_ruleset_t *rs, const char *file, hr_errors_t *errs)
{
    size_t len;
    char *src = hr_read_file(file, &len);
    if (!src) return;
    names_scan_t ns = {rs->cfg, file, errs};
    hr_lua_scan_calls(src, len, NAMED_CALLS, check_name, &ns);
    free(src);
}

/* Compile file and run its chunk; it must return a function, left on the stack.
 * Returns 0, or -1 with a message added to errs and nothing pushed. [-0, +(1|0), m] */
static int load_rule_file(hr_ruleset_t *rs, const char *file, hr_errors_t *errs)
{
    lua_State *L = rs->L;
    char *trace = NULL; /* where top-level code raised: the message's later lines */
    int rc = luaL_loadfilex(L, file, "t");
    if (rc == LUA_ERRFILE) {
        hr_errors_add(errs, "%s: cannot read: %s", file, strerror(errno));
        lua_pop(L, 1);
        return -1;
    }
    if (rc == LUA_OK) {
        set_file_env(L, 0);
        /* Top-level code (and the modules it requires) runs under the same budgets as an
         * event: a file that never finishes loading fails the load, not the router. */
        rs->mem.denied = false;
        rs->mem.limit = rs->mem.used + rs->cfg->limits.rule_memory_bytes;
        rs->mem.on = true;
        rc = hr_lua_pcall_budget(L, 0, 1, rs->cfg->limits.rule_instructions, "top-level code",
                                 "limits.rule_instructions", &trace);
        rs->mem.on = false;
    }
    if (rc != LUA_OK) {
        const char *nl = trace ? "\n" : "", *tb = trace ? trace : "";
        if (rs->mem.denied)
            hr_errors_add(errs,
                          "%s: top-level code exceeded its memory limit "
                          "(limits.rule_memory_bytes = %zu)%s%s",
                          file, rs->cfg->limits.rule_memory_bytes, nl, tb);
        else if (lua_type(L, -1) == LUA_TSTRING)
            hr_errors_add(errs, "%s%s%s", lua_tostring(L, -1), nl, tb);
        else
            hr_errors_add(errs, "%s: top-level code raised a %s value%s%s", file,
                          luaL_typename(L, -1), nl, tb);
        free(trace);
        lua_pop(L, 1);
        return -1;
    }
    if (!lua_isfunction(L, -1)) {
        hr_errors_add(errs,
                      "%s: a rule file must return a function (return function(event) ... end), "
                      "got %s",
                      file, luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    check_names(rs, file, errs);
    return 0;
}

/* ---------------------------------------------------------------- lint */

/* What reaches_respond's scan of one file reports to. */
typedef struct {
    const hr_ruleset_t *rs;
    int depth;  /* how many more require levels to follow */
    bool found; /* respond() is called here or in a module required from here */
} respond_scan_t;

static bool reaches_respond(const hr_ruleset_t *rs, const char *file, int depth);

/* The calls reaches_respond looks at. */
static const char *const RESPOND_CALLS[] = {"respond", "require", NULL};

/* hr_lua_call_cb of reaches_respond: stop at respond(), follow require("literal"). */
static bool respond_call(void *ud, const hr_lua_call_t *call)
{
    respond_scan_t *sc = ud;
    if (call->fn == 0) {
        sc->found = true;
        return false;
    }
    if (!call->arg || sc->depth <= 0) return true;
    char *name = hr_xstrndup(call->arg, call->arg_len);
    if (valid_module_name(name)) {
        for (char *c = name; *c; c++)
            if (*c == '.') *c = '/';
        char *mod = hr_xasprintf("%s/%s.lua", sc->rs->cfg->rules_dir, name);
        sc->found = reaches_respond(sc->rs, mod, sc->depth - 1);
        free(mod);
    }
    free(name);
    return !sc->found;
}

/* True if file, or a module it requires by a literal name (to depth levels), calls respond
 * (outside comments and strings). */
static bool reaches_respond(const hr_ruleset_t *rs, const char *file, int depth)
{
    size_t len;
    char *src = hr_read_file(file, &len);
    if (!src) return true; /* unreadable: the load said so already */
    respond_scan_t sc = {rs, depth, false};
    hr_lua_scan_calls(src, len, RESPOND_CALLS, respond_call, &sc);
    free(src);
    return sc.found;
}

/* The answering endpoints (those with a fallback) as "path, path", or NULL if none. */
static char *answering_paths(const hr_config_t *cfg)
{
    hr_buf_t b = HR_BUF_INIT;
    for (size_t i = 0; i < cfg->nendpoints; i++)
        if (cfg->endpoints[i].fallback)
            hr_buf_printf(&b, "%s%s", b.len ? ", " : "", cfg->endpoints[i].path);
    if (!b.len) return NULL;
    hr_buf_appendc(&b, '\0');
    return hr_buf_steal(&b, NULL);
}

void hr_ruleset_lint(const hr_ruleset_t *rs, hr_errors_t *warns)
{
    char *paths = answering_paths(rs->cfg);
    if (!paths) return;
    char *dir = hr_xasprintf("%s/stores", rs->cfg->rules_dir);
    char **files = NULL;
    size_t n = 0;
    if (rs->has_default) {
        files = hr_xrealloc(files, (n + 1) * sizeof *files);
        files[n++] = hr_xasprintf("%s/default.lua", rs->cfg->rules_dir);
    }
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".lua") != 0) continue;
        if (!hr_is_safe_name(de->d_name, len - 4)) continue;
        files = hr_xrealloc(files, (n + 1) * sizeof *files);
        files[n++] = hr_xasprintf("%s/%s", dir, de->d_name);
    }
    if (d) closedir(d);
    for (size_t i = 0; i < n; i++) {
        if (!reaches_respond(rs, files[i], 8))
            hr_errors_add(warns,
                          "%s never calls respond(): an event for %s that reaches it is "
                          "answered with the endpoint's fallback (fine if intended)",
                          files[i], paths);
        free(files[i]);
    }
    free(files);
    free(dir);
    free(paths);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Load rules/stores/<store>.lua files into the registry table. [-0, +0, m] */
static void load_stores(hr_ruleset_t *rs, hr_errors_t *errs)
{
    lua_State *L = rs->L;
    char *dir = hr_xasprintf("%s/stores", rs->cfg->rules_dir);
    DIR *d = opendir(dir);
    if (!d) {
        if (errno != ENOENT) hr_errors_add(errs, "%s: cannot open: %s", dir, strerror(errno));
        free(dir);
        return;
    }
    lua_rawgetp(L, LUA_REGISTRYINDEX, STORES_KEY);
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 5 || strcmp(de->d_name + n - 4, ".lua") != 0) continue;
        char *file = hr_xasprintf("%s/%s", dir, de->d_name);
        if (!hr_is_safe_name(de->d_name, n - 4)) {
            /* No store id can reach it (ids must be safe file names): say so, load the rest. */
            hr_log_warn("%s: ignored: a store rule's name may only use letters, digits, '.', "
                        "'_' and '-', and not be '.' or '..'",
                        file);
        } else if (load_rule_file(rs, file, errs) == 0) {
            char *store = hr_xstrndup(de->d_name, n - 4);
            lua_setfield(L, -2, store); /* stores[store] = rule */
            free(store);
            rs->nstores++;
        }
        free(file);
    }
    lua_pop(L, 1);
    closedir(d);
    free(dir);
}

/* Creates the state and leaves its stack empty: [-0, +0, -] on rs->L. */
hr_ruleset_t *hr_ruleset_load(hr_config_t *cfg, hr_errors_t *errs)
{
    size_t before = errs->n;
    hr_ruleset_t *rs = hr_xcalloc(1, sizeof *rs);
    rs->cfg = cfg;
    rs->refs = 1;
    rs->mem.limit = cfg->limits.rule_memory_bytes;
    rs->L = lua_newstate(hr_lua_capped_alloc, &rs->mem);
    if (!rs->L) {
        hr_errors_add(errs, "cannot create a Lua state");
        goto fail;
    }
    *(run_ctx_t **)lua_getextraspace(rs->L) = NULL;
    open_sandbox(rs);

    if (!is_dir(cfg->rules_dir)) {
        hr_errors_add(errs,
                      "%s: rules: %s is not a folder (it should hold default.lua and "
                      "stores/<store>.lua)",
                      cfg->file, cfg->rules_dir);
        goto fail;
    }
    char *def = hr_xasprintf("%s/default.lua", cfg->rules_dir);
    struct stat st;
    if (stat(def, &st) == 0) {
        if (load_rule_file(rs, def, errs) == 0) {
            lua_rawsetp(rs->L, LUA_REGISTRYINDEX, DEFAULT_KEY);
            rs->has_default = true;
        }
    }
    free(def);
    load_stores(rs, errs);
    if (errs->n != before) goto fail;
    lua_gc(rs->L, LUA_GCCOLLECT);
    if (rs->mem.used > cfg->limits.state_memory_bytes) {
        hr_errors_add(errs,
                      "%s: the rules hold %zu bytes once loaded, more than "
                      "limits.state_memory_bytes = %zu",
                      cfg->rules_dir, rs->mem.used, cfg->limits.state_memory_bytes);
        goto fail;
    }
    lua_gc(rs->L, LUA_GCGEN, 0, 0); /* events make short-lived garbage */
    return rs;
fail:
    if (rs->L) lua_close(rs->L);
    hr_config_free(cfg);
    free(rs);
    return NULL;
}

void hr_ruleset_ref(hr_ruleset_t *rs)
{
    rs->refs++;
}

/* The last reference closes the state; the others leave it alone. [-0, +0, -] */
void hr_ruleset_unref(hr_ruleset_t *rs)
{
    if (!rs || --rs->refs > 0) return;
    lua_close(rs->L);
    hr_config_free(rs->cfg);
    free(rs);
}

const hr_config_t *hr_ruleset_config(const hr_ruleset_t *rs)
{
    return rs->cfg;
}

size_t hr_ruleset_store_count(const hr_ruleset_t *rs)
{
    return rs->nstores;
}

bool hr_ruleset_has_default(const hr_ruleset_t *rs)
{
    return rs->has_default;
}

bool hr_ruleset_needs_rebuild(const hr_ruleset_t *rs)
{
    return rs->rebuild;
}

/* On rs->L: [-0, +0, m] */
bool hr_ruleset_first_time(hr_ruleset_t *rs, const char *key)
{
    lua_State *L = rs->L;
    if (lua_getfield(L, LUA_REGISTRYINDEX, SEEN_KEY) != LUA_TTABLE) {
        lua_pop(L, 1); /* drop nil */
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, SEEN_KEY);
    }
    bool seen = lua_getfield(L, -1, key) != LUA_TNIL;
    lua_pop(L, 1); /* drop the value */
    if (!seen) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, key);
    }
    lua_pop(L, 1); /* drop the table */
    return !seen;
}

/* ---------------------------------------------------------------- running */

static void count_hook(lua_State *L, lua_Debug *ar);

/* Add n instructions' worth of work to the event's count; past the budget, make the count
 * hook fire on every instruction (so a pcall inside the rule cannot swallow the error for
 * long) and raise. [-0, +0, v] */
static void spend(lua_State *L, run_ctx_t *ctx, uint64_t n)
{
    ctx->executed += n;
    if (ctx->executed <= ctx->rs->cfg->limits.rule_instructions) return;
    if (!ctx->over_budget) {
        ctx->over_budget = true;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "rule exceeded its instruction budget (limits.rule_instructions = %I)",
               (lua_Integer)ctx->rs->cfg->limits.rule_instructions);
}

/* Count hook: stop a rule that ran past its budget. [-0, +0, v] */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    run_ctx_t *ctx = ctx_of(L);
    if (ctx) spend(L, ctx, ctx->over_budget ? 1 : HOOK_STEP);
}

/* Charge for pattern matching (string.find, match, gmatch, gsub run in C, where the count
 * hook never fires): steps count as instructions against the event's budget, or the loading
 * file's. [-0, +0, v] */
static void pattern_charge(lua_State *L, unsigned steps)
{
    run_ctx_t *ctx = ctx_of(L);
    if (ctx)
        spend(L, ctx, steps);
    else
        hr_lua_budget_charge(L, steps);
}

/* Push the value at the dotted path key of the table at idx (nil if any step is missing).
 * [-0, +1, -] */
static void push_path(lua_State *L, int idx, const char *key)
{
    idx = lua_absindex(L, idx);
    lua_pushvalue(L, idx);
    const char *p = key;
    while (*p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return;
        }
        bool lazy = hr_json_is_lazy(L, -1);
        lua_pushlstring(L, p, n);
        if (lazy)
            lua_gettable(L, -2); /* a peek: the rule may never read more of it */
        else
            lua_rawget(L, -2);
        lua_remove(L, -2);
        p += n + (dot ? 1 : 0);
    }
}

/* The store id at the top of the stack as a string: integers, and floats with an integral
 * value that fits in an integer, in decimal ("42", 42.0 -> "42", -0.0 -> "0"); other finite
 * floats in the shortest text that reads back as the same double (42.5 -> "42.5", 1e300 ->
 * "1e+300"); strings as they are; anything else (NaN, inf, booleans, tables) gives NULL.
 * Pops it. [-1, +0, -] */
static char *pop_store(lua_State *L)
{
    char *s = NULL;
    if (lua_isinteger(L, -1)) {
        char num[21];
        hr_fmt_i64(num, (int64_t)lua_tointeger(L, -1));
        s = hr_xstrdup(num);
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
        double d = lua_tonumber(L, -1);
        lua_Integer i;
        if (floor(d) == d && lua_numbertointeger(d, &i)) { /* the macro truncates */
            s = hr_xasprintf("%lld", (long long)i);
        } else if (isfinite(d)) {
            char buf[32];
            for (int prec = 1; prec <= 17; prec++) {
                snprintf(buf, sizeof buf, "%.*g", prec, d);
                if (strtod(buf, NULL) == d) break;
            }
            s = hr_xstrdup(buf);
        }
    } else if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *v = lua_tolstring(L, -1, &n);
        if (n > 0 && strlen(v) == n) s = hr_xstrndup(v, n);
    }
    lua_pop(L, 1);
    return s;
}

/* Push the event table made by the function at registry index fn, with the metatable at
 * registry index mt (event.raw); the decoded body is on top and is consumed. Before the run
 * has its context: a spare coroutine's count hook charges no budget for it. [-1, +1, m] */
static void push_event(lua_State *L, const hr_event_in_t *ev, const char *store, int fn, int mt)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, fn);
    lua_insert(L, -2); /* fn, body */
    lua_pushstring(L, ev->id);
    lua_pushstring(L, ev->type);
    if (store)
        lua_pushstring(L, store);
    else
        lua_pushnil(L);
    lua_pushstring(L, ev->method);
    lua_pushstring(L, ev->path);
    lua_pushstring(L, ev->received_at);
    lua_pushboolean(L, ev->token > 0);
    if (ev->token > 0)
        lua_pushinteger(L, ev->token);
    else
        lua_pushnil(L);
    lua_createtable(L, 0, (int)ev->nheaders);
    for (size_t i = 0; i < ev->nheaders; i++) {
        /* The sender's credential stays out of rules: one that logs or forwards headers
         * would leak it. event.authenticated and event.token say what it proved. */
        if (strcmp(ev->headers[i].name, "authorization") == 0) continue;
        lua_pushstring(L, ev->headers[i].name);
        lua_pushstring(L, ev->headers[i].value);
        lua_rawset(L, -3);
    }
    lua_call(L, 10, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, mt); /* event.raw, on first read */
    lua_setmetatable(L, -2);
}

/* The reads_t of the rule function on top of the stack, made on its first run (one function
 * per rule file: keyed by the function, a pointer, not by its file's name). [-0, +0, m] */
static reads_t *rule_reads(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, READS_KEY);
    lua_pushvalue(L, -2);
    if (lua_rawget(L, -2) != LUA_TUSERDATA) {
        lua_pop(L, 1); /* drop nil */
        reads_t *r = lua_newuserdatauv(L, sizeof *r, 0);
        *r = (reads_t){0};
        lua_pushvalue(L, -3); /* the function */
        lua_insert(L, -2);
        lua_rawset(L, -3);
        lua_pop(L, 1); /* the table */
        return r;      /* the table keeps it */
    }
    reads_t *r = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return r;
}

/* "stores/<store>.lua", the name a store's rule goes by in logs and metrics. */
static char *rule_name(const char *store)
{
    static const char dir[] = "stores/", ext[] = ".lua";
    size_t n = strlen(store);
    char *s = hr_xmalloc(sizeof dir - 1 + n + sizeof ext);
    memcpy(s, dir, sizeof dir - 1);
    memcpy(s + sizeof dir - 1, store, n);
    memcpy(s + sizeof dir - 1 + n, ext, sizeof ext); /* with its NUL */
    return s;
}

/* Free a run that is over or abandoned: close its coroutine, drop what it holds, and its
 * reference to the rule set (which may free the rule set). A coroutine whose function
 * returned is emptied; any other is reset (its to-be-closed handlers run, their errors
 * dropped). Either goes back to the spares if there is room. The main thread's stack is
 * untouched. [-0, +0, -] on rs->L */
static void run_free(run_ctx_t *run)
{
    hr_ruleset_t *rs = run->rs;
    if (run->reads) {
        uint64_t filled = rs->json_fills - run->fills0; /* wraps: unsigned */
        uint32_t share =
            (uint32_t)(filled >= run->containers ? 1024 : filled * 1024 / run->containers);
        run->reads->share = (run->reads->share * 3 + share) / 4;
    }
    /* A run that failed or was abandoned may have to-be-closed variables left: their
     * __close handlers run now, still as this run (its instruction budget, its memory cap),
     * but may no longer add actions or answer. */
    lua_Debug ar;
    int reset = LUA_OK;
    if (lua_status(run->co) == LUA_OK && !lua_getstack(run->co, 0, &ar)) {
        /* It returned: nothing is left to close. Emptied, not reset, its stack keeps the
         * size it grew to (a reset shrinks it, and the next run would grow it again). */
        lua_settop(run->co, 0);
    } else {
        run->closing = true;
        *(run_ctx_t **)lua_getextraspace(run->co) = run;
        rs->mem.limit = rs->mem.used + rs->cfg->limits.rule_memory_bytes;
        rs->mem.on = true;
        reset = lua_resetthread(run->co);
        rs->mem.on = false;
        *(run_ctx_t **)lua_getextraspace(run->co) = NULL;
    }
    if (reset == LUA_OK && !rs->mem.denied && rs->nspare < SPARE_COS)
        rs->spare[rs->nspare++] = run->co_ref; /* its stack is empty, its status OK */
    else
        luaL_unref(rs->L, LUA_REGISTRYINDEX, run->co_ref);
    if (rs->mem.denied) lua_gc(rs->L, LUA_GCCOLLECT);
    hr_action_free(run->pending);
    if (run->out->run == run) {
        run->out->run = NULL;
        run->out->request = NULL;
    }
    free(run);
    hr_ruleset_unref(rs);
}

/* Run one slice: resume the coroutine with the nargs values on its stack until it yields in
 * request() or ends. Applies the memory cap for the slice; the instruction count goes on
 * from earlier slices. Frees the run unless it is suspended. [-nargs, +0, -] on the
 * coroutine (what it yields or returns is dropped, an error read before the reset); the
 * main thread's stack is untouched. */
static hr_run_step_t run_slice(run_ctx_t *run, int nargs)
{
    hr_ruleset_t *rs = run->rs;
    hr_run_result_t *out = run->out;
    lua_State *co = run->co;
    *(run_ctx_t **)lua_getextraspace(co) = run;
    rs->mem.denied = false;
    rs->mem.limit = rs->mem.used + rs->cfg->limits.rule_memory_bytes;
    rs->mem.extra = run->charged;
    rs->mem.on = true;
    int nres = 0;
    int rc = lua_resume(co, rs->L, nargs, &nres);
    rs->mem.on = false;
    rs->mem.extra = 0;
    *(run_ctx_t **)lua_getextraspace(co) = NULL;

    bool failed = rs->mem.denied || run->over_budget;
    bool state_full = false;
    if (rc != LUA_YIELD && rs->mem.used > rs->cfg->limits.state_memory_bytes) {
        lua_gc(rs->L, LUA_GCCOLLECT); /* what it keeps, not what it left for the collector */
        state_full = rs->mem.used > rs->cfg->limits.state_memory_bytes;
    }
    if (rc == LUA_YIELD && run->pending && !failed) {
        lua_pop(co, nres); /* request() yields nothing */
        out->run = run;
        out->request = run->pending;
        return HR_STEP_SUSPENDED;
    }
    if (rc == LUA_OK && !failed && !state_full) {
        out->status = HR_RUN_OK;
    } else {
        out->status = HR_RUN_RULE_FAILED;
        if (state_full) {
            rs->rebuild = true;
            out->error = hr_xasprintf("%s: the rule state holds %zu bytes between events, more "
                                      "than limits.state_memory_bytes = %zu (data kept across "
                                      "events?): the rules are reloaded",
                                      out->rule, rs->mem.used, rs->cfg->limits.state_memory_bytes);
        } else if (rs->mem.denied)
            out->error = hr_xasprintf("%s: rule exceeded its memory limit "
                                      "(limits.rule_memory_bytes = %zu)",
                                      out->rule, rs->cfg->limits.rule_memory_bytes);
        else if (run->over_budget)
            out->error =
                hr_xasprintf("%s: rule exceeded its instruction budget "
                             "(limits.rule_instructions = %llu)",
                             out->rule, (unsigned long long)rs->cfg->limits.rule_instructions);
        else if (rc == LUA_YIELD)
            out->error = hr_xasprintf("%s: rule yielded outside of a request", out->rule);
        else if (lua_type(co, -1) == LUA_TSTRING)
            out->error = hr_xstrdup(lua_tostring(co, -1));
        else
            out->error =
                hr_xasprintf("%s: rule raised a %s value", out->rule, luaL_typename(co, -1));
        /* A coroutine's error runs no message handler: its stack, kept until run_free
         * resets it, gives the traceback. After a newline, so the message's first line is
         * the same; the log line escapes it, the dead letter and `test` carry it whole. */
        char *trace = rc != LUA_OK && rc != LUA_YIELD ? hr_lua_thread_trace(rs->L, co) : NULL;
        if (trace) {
            char *e = hr_xasprintf("%s\n%s", out->error, trace);
            free(out->error);
            free(trace);
            out->error = e;
        }
        hr_action_list_free(out->actions);
        out->actions = NULL;
        out->nactions = 0;
        hr_reply_free(out->reply);
        out->reply = NULL;
    }
    run_free(run);
    return HR_STEP_DONE;
}

/* hr_ruleset_start ends before the rule runs: a spare coroutine goes back, emptied (Lua
 * code never ran on it). */
static void start_abandon(hr_ruleset_t *rs, lua_State *co, int spare)
{
    if (spare == LUA_NOREF) return;
    lua_settop(co, 0);
    rs->spare[rs->nspare++] = spare;
}

/* [-0, +0, m] on rs->L: the coroutine is anchored in the registry, not on the stack. */
hr_run_step_t hr_ruleset_start(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out)
{
    memset(out, 0, sizeof *out);
    lua_State *L = rs->L;
    int top = lua_gettop(L);
    /* co is anchored on L's stack until referenced below (a spare one: in the registry too) */
    int spare = rs->nspare ? rs->spare[--rs->nspare] : LUA_NOREF;
    lua_State *co;
    if (spare != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, spare);
        co = lua_tothread(L, -1);
    } else {
        co = lua_newthread(L);
    }

    char err[512];
    /* Lazy: a rule pays for the parts of the body it reads (validated whole here); whole
     * when the last event's rule read most of its body (but for a probe now and then). */
    uint32_t containers = 0;
    bool probe = rs->decodes++ % READS_PROBE == 0, whole = rs->whole_bodies && !probe;
    int rc = whole ? hr_json_decode(co, ev->body, ev->body_len, err, sizeof err)
                   : hr_json_decode_lazy(co, ev->body, ev->body_len, &rs->json_fills, &containers,
                                         err, sizeof err);
    if (rc != 0) {
        out->status = HR_RUN_BAD_JSON;
        out->error = hr_xstrdup(err);
        start_abandon(rs, co, spare);
        lua_settop(L, top);
        return HR_STEP_DONE;
    }
    const void *body = lua_type(co, -1) == LUA_TTABLE ? lua_topointer(co, -1) : NULL;
    push_path(co, -1, rs->cfg->store_key);
    out->store = pop_store(co);

    /* stores/<store>.lua if it exists and the id is a safe file name, else default.lua. */
    bool found = false;
    if (out->store && hr_is_safe_name(out->store, strlen(out->store))) {
        lua_rawgetp(co, LUA_REGISTRYINDEX, STORES_KEY);
        found = lua_getfield(co, -1, out->store) == LUA_TFUNCTION;
        lua_remove(co, -2);
        if (found)
            out->rule = rule_name(out->store);
        else
            lua_pop(co, 1);
    }
    if (!found && rs->has_default) {
        lua_rawgetp(co, LUA_REGISTRYINDEX, DEFAULT_KEY);
        out->rule = hr_xstrdup("default.lua");
        found = true;
    }
    if (!found) {
        out->dropped = true;
        out->drop_reason = hr_xasprintf("no rule for store %s and no default.lua",
                                        out->store ? out->store : "(none)");
        start_abandon(rs, co, spare);
        lua_settop(L, top);
        return HR_STEP_DONE;
    }
    reads_t *reads = rule_reads(co);
    rs->whole_bodies = reads->share >= READS_WHOLE;
    bool measure = !whole && (probe || !rs->whole_bodies);
    if (!whole && !measure) hr_json_fill_all(co, -2); /* lazy, for a rule that reads it all */
    lua_insert(co, -2);                               /* fn, body */
    push_event(co, ev, out->store, rs->event_new, rs->event_mt);

    run_ctx_t *run = hr_xcalloc(1, sizeof *run);
    if (measure && containers) {
        run->reads = reads;
        run->containers = containers;
        run->fills0 = rs->json_fills;
    }
    run->rs = rs;
    hr_ruleset_ref(rs);
    run->ev = ev;
    run->body = body;
    run->out = out;
    run->tail = &out->actions;
    run->co = co;
    run->event_table = lua_topointer(co, -1);
    if (spare != LUA_NOREF) {
        run->co_ref = spare;
        lua_pop(L, 1);
    } else {
        run->co_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* pops co off L's stack */
    }
    lua_settop(L, top);
    lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_STEP);
    return run_slice(run, 1);
}

/* Push request()'s results for ans: res, or nil and a message. [-0, +2, m] */
static void push_answer(lua_State *co, const hr_action_t *req, const hr_rule_answer_t *ans)
{
    if (ans->err < 0) {
        lua_pushnil(co);
        const char *msg = ans->errmsg ? ans->errmsg : uv_strerror(ans->err);
        switch (ans->err) {
        case UV_ETIMEDOUT:
            lua_pushfstring(co, "timeout: target '%s' did not answer within %d ms", req->name,
                            (int)req->timeout_ms);
            break;
        case UV_ECONNREFUSED:
        case UV_ECONNRESET:
        case UV_ECONNABORTED:
        case UV_EHOSTUNREACH:
        case UV_ENETUNREACH:
        case UV_EAI_NONAME:
        case UV_EAI_AGAIN:
        case UV_EAI_FAIL:
            lua_pushfstring(co, "connect error: target '%s': %s", req->name, msg);
            break;
        default: lua_pushfstring(co, "request failed: target '%s': %s", req->name, msg);
        }
        return;
    }
    lua_createtable(co, 0, 4);
    lua_pushinteger(co, ans->status);
    lua_setfield(co, -2, "status");
    bool json = false;
    lua_createtable(co, 0, (int)ans->nheaders);
    for (size_t i = 0; i < ans->nheaders; i++) {
        const hr_header_t *h = &ans->headers[i];
        if (strcmp(h->name, "content-type") == 0 && strstr(h->value, "json")) json = true;
        if (lua_getfield(co, -1, h->name) == LUA_TSTRING) { /* repeated: join as HTTP does */
            lua_pushliteral(co, ", ");
            lua_pushstring(co, h->value);
            lua_concat(co, 3);
        } else {
            lua_pop(co, 1);
            lua_pushstring(co, h->value);
        }
        lua_setfield(co, -2, h->name);
    }
    lua_setfield(co, -2, "headers");
    char err[256];
    if (!json || !ans->body || hr_json_decode(co, ans->body, ans->body_len, err, sizeof err) != 0)
        lua_pushlstring(co, ans->body ? ans->body : "", ans->body ? ans->body_len : 0);
    lua_setfield(co, -2, "body");
    lua_pushnumber(co, ans->ms);
    lua_setfield(co, -2, "ms");
    lua_pushnil(co); /* second result */
}

hr_run_step_t hr_ruleset_resume(hr_run_result_t *out, const hr_rule_answer_t *ans)
{
    run_ctx_t *run = out->run;
    if (!run) return HR_STEP_DONE;
    out->run = NULL;
    out->request = NULL;
    hr_action_t *req = run->pending;
    run->pending = NULL;
    push_answer(run->co, req, ans);
    hr_action_free(req);
    return run_slice(run, 2);
}

void hr_ruleset_abandon(hr_run_result_t *out, const char *reason)
{
    if (!out->run) return;
    run_free(out->run);
    hr_action_list_free(out->actions);
    out->actions = NULL;
    out->nactions = 0;
    hr_reply_free(out->reply);
    out->reply = NULL;
    out->status = HR_RUN_RULE_FAILED;
    free(out->error);
    out->error = hr_xstrdup(reason);
}

void hr_ruleset_run_stub(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out,
                         hr_request_stub_cb stub, void *arg)
{
    hr_run_step_t st = hr_ruleset_start(rs, ev, out);
    while (st == HR_STEP_SUSPENDED) {
        hr_rule_answer_t ans = {0};
        if (stub) {
            stub(arg, out->request, &ans);
        } else {
            ans.err = UV_ENOTSUP;
            ans.errmsg = "no target is reachable here";
        }
        st = hr_ruleset_resume(out, &ans);
    }
}

void hr_ruleset_run(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out)
{
    hr_ruleset_run_stub(rs, ev, out, NULL, NULL);
}

void hr_run_result_free(hr_run_result_t *r)
{
    hr_ruleset_abandon(r, "abandoned");
    hr_reply_free(r->reply);
    free(r->store);
    free(r->rule);
    hr_action_list_free(r->actions);
    free(r->drop_reason);
    free(r->error);
    memset(r, 0, sizeof *r);
}
