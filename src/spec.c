/* Spec files for `hookrouter test`: load and check a .test.lua file, compare expected with
 * actual values (see include/hr/spec.h). */
#include "hr/spec.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/json.h"
#include "hr/lua_budget.h"
#include "hr/lua_time.h"

#define BAD_TYPE (-100) /* ref_field: the key has another type (LUA_NOREF is -2) */

static const char *const CASE_KEYS[] = {"name",         "path",         "headers", "file",
                                        "body",         "now",          "reply",   "expect",
                                        "expect_reply", "expect_error", NULL};

/* ---------------------------------------------------------------- loading */

/* The line of the first "name" or 'name' literal in src, or 1. */
static int line_of(const char *src, const char *name)
{
    if (!src || !name) return 1;
    size_t n = strlen(name);
    for (const char *p = src; (p = strpbrk(p, "\"'")); p++) {
        if (strncmp(p + 1, name, n) == 0 && p[n + 1] == *p) {
            int line = 1;
            for (const char *q = src; q < p; q++)
                line += *q == '\n';
            return line;
        }
    }
    return 1;
}

/* A registry reference to t[key] if it has type want (or any of want, want2), LUA_NOREF if
 * absent; BAD_TYPE for a wrong type. [-0, +0, m] */
static int ref_field(lua_State *L, int t, const char *key, int want, int want2)
{
    int ty = lua_getfield(L, t, key);
    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    if (ty != want && ty != want2) {
        lua_pop(L, 1);
        return BAD_TYPE;
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Check and copy the case table at the top of s->L into c. Returns 0, or -1 with the message
 * (without "file:line: ") in why. [-0, +0, m] */
static int load_case(hr_spec_t *s, hr_spec_case_t *c, char *why, size_t whylen)
{
    lua_State *L = s->L;
    int t = lua_gettop(L);
    c->reply_ref = c->expect_ref = c->expect_reply_ref = LUA_NOREF;
    lua_pushnil(L);
    while (lua_next(L, t)) {
        lua_pop(L, 1);
        const char *k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
        size_t i = 0;
        while (k && CASE_KEYS[i] && strcmp(CASE_KEYS[i], k) != 0)
            i++;
        if (!k || !CASE_KEYS[i]) {
            snprintf(why, whylen,
                     "unknown key %s%s%s (a case has name, path, headers, file or body, now, "
                     "reply, expect, expect_reply, expect_error)",
                     k ? "'" : "", k ? k : luaL_typename(L, -1), k ? "'" : "");
            lua_pop(L, 1);
            return -1;
        }
    }
    if (lua_getfield(L, t, "path") != LUA_TSTRING || *lua_tostring(L, -1) != '/') {
        snprintf(why, whylen, "path must be a request path such as \"/aifi/checkout\"");
        lua_pop(L, 1);
        return -1;
    }
    c->path = hr_xstrdup(lua_tostring(L, -1));
    lua_pop(L, 1);

    int ft = lua_getfield(L, t, "file"), bt = lua_getfield(L, t, "body");
    if ((ft == LUA_TNIL) == (bt == LUA_TNIL)) {
        snprintf(why, whylen, "give exactly one of file (a path) and body (a table or string)");
        lua_pop(L, 2);
        return -1;
    }
    if (ft != LUA_TNIL) {
        if (ft != LUA_TSTRING) {
            snprintf(why, whylen, "file must be a string");
            lua_pop(L, 2);
            return -1;
        }
        const char *rel = lua_tostring(L, -2);
        char *dir = hr_xstrdup(s->file);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(dir, ".");
        char *path = hr_path_join(dir, rel);
        c->body = hr_read_file(path, &c->body_len);
        if (!c->body) snprintf(why, whylen, "file %s: %s", path, strerror(errno));
        free(path);
        free(dir);
        if (!c->body) {
            lua_pop(L, 2);
            return -1;
        }
    } else if (bt == LUA_TSTRING) {
        size_t n;
        const char *b = lua_tolstring(L, -1, &n);
        c->body = hr_xstrndup(b, n);
        c->body_len = n;
    } else if (bt == LUA_TTABLE) {
        hr_buf_t b = HR_BUF_INIT;
        char err[256];
        if (hr_json_encode(L, -1, &b, err, sizeof err) != 0) {
            snprintf(why, whylen, "body: %s", err);
            hr_buf_free(&b);
            lua_pop(L, 2);
            return -1;
        }
        c->body = hr_buf_steal(&b, &c->body_len);
    } else {
        snprintf(why, whylen, "body must be a table (sent as JSON) or a string");
        lua_pop(L, 2);
        return -1;
    }
    lua_pop(L, 2);

    int ht = lua_getfield(L, t, "headers");
    if (ht == LUA_TTABLE) {
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            n++;
        }
        c->headers = hr_xcalloc(n + 1, sizeof *c->headers);
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1)) {
                snprintf(why, whylen, "headers must map names to strings");
                lua_pop(L, 3);
                return -1;
            }
            char *name = hr_xstrdup_lower(lua_tostring(L, -2));
            c->headers[c->nheaders].name = name;
            c->headers[c->nheaders].value = hr_xstrdup(lua_tostring(L, -1));
            c->nheaders++;
            lua_pop(L, 1);
        }
    } else if (ht != LUA_TNIL) {
        snprintf(why, whylen, "headers must be a table");
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);

    int nt = lua_getfield(L, t, "now");
    const char *now = nt == LUA_TNIL ? HR_SPEC_DEFAULT_NOW : lua_tostring(L, -1);
    char err[160];
    if (nt == LUA_TNUMBER && lua_isinteger(L, -1)) {
        c->now_ms = lua_tointeger(L, -1);
    } else if ((nt != LUA_TNIL && nt != LUA_TSTRING) ||
               hr_time_parse(now, strlen(now), &c->now_ms, err, sizeof err) != 0) {
        snprintf(why, whylen, "now must be an RFC 3339 time (or integer ms)%s%s",
                 nt == LUA_TSTRING ? ": " : "", nt == LUA_TSTRING ? err : "");
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);

    if (lua_getfield(L, t, "expect_error") == LUA_TSTRING)
        c->expect_error = hr_xstrdup(lua_tostring(L, -1));
    else if (!lua_isnil(L, -1)) {
        snprintf(why, whylen, "expect_error must be a string (a Lua pattern)");
        lua_pop(L, 1);
        return -1;
    }
    lua_pop(L, 1);
    c->reply_ref = ref_field(L, t, "reply", LUA_TTABLE, LUA_TFUNCTION);
    c->expect_ref = ref_field(L, t, "expect", LUA_TTABLE, LUA_TTABLE);
    c->expect_reply_ref = ref_field(L, t, "expect_reply", LUA_TTABLE, LUA_TTABLE);
    if (c->reply_ref == BAD_TYPE || c->expect_ref == BAD_TYPE || c->expect_reply_ref == BAD_TYPE) {
        snprintf(why, whylen, "%s must be a table%s",
                 c->reply_ref == BAD_TYPE    ? "reply"
                 : c->expect_ref == BAD_TYPE ? "expect"
                                             : "expect_reply",
                 c->reply_ref == BAD_TYPE ? " or a function" : "");
        return -1;
    }
    if (c->expect_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->expect_ref);
        lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            if (lua_rawgeti(L, -1, i) != LUA_TTABLE) {
                snprintf(why, whylen,
                         "expect[%lld] must be a table such as { action = "
                         "\"forward\", target = ... }",
                         (long long)i);
                lua_pop(L, 2);
                return -1;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return 0;
}

hr_spec_t *hr_spec_load(const char *file, char *err, size_t errlen)
{
    hr_spec_t *s = hr_xcalloc(1, sizeof *s);
    s->file = hr_xstrdup(file);
    s->L = luaL_newstate();
    lua_State *L = s->L;
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_OSLIBNAME, luaopen_os},
                                    {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->name; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    hr_json_open(L);
    lua_setglobal(L, "json");
    char *src = hr_read_file(file, NULL);
    char *trace = NULL;
    if (!src) {
        snprintf(err, errlen, "%s:1: cannot read: %s", file, strerror(errno));
        goto fail;
    }
    if (luaL_loadfilex(L, file, "t") != LUA_OK || hr_lua_pcall(L, 0, 1, &trace) != LUA_OK) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        goto fail;
    }
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen,
                 "%s:1: a spec file must return a list of cases ({ { name = ..., path = ..., "
                 "... }, ... }), got %s",
                 file, luaL_typename(L, -1));
        goto fail;
    }
    int list = lua_gettop(L);
    size_t n = lua_rawlen(L, list);
    s->cases = hr_xcalloc(n + 1, sizeof *s->cases);
    for (size_t i = 0; i < n; i++) {
        hr_spec_case_t *c = &s->cases[i];
        s->ncases = i + 1;
        c->reply_ref = c->expect_ref = c->expect_reply_ref = LUA_NOREF;
        char why[512];
        if (lua_rawgeti(L, list, (lua_Integer)i + 1) != LUA_TTABLE) {
            snprintf(err, errlen, "%s:1: case %zu is a %s, not a table", file, i + 1,
                     luaL_typename(L, -1));
            goto fail;
        }
        if (lua_getfield(L, -1, "name") == LUA_TSTRING) c->name = hr_xstrdup(lua_tostring(L, -1));
        lua_pop(L, 1);
        c->line = line_of(src, c->name);
        if (!c->name) {
            snprintf(err, errlen, "%s:%d: case %zu has no name (a string)", file, c->line, i + 1);
            goto fail;
        }
        if (load_case(s, c, why, sizeof why) != 0) {
            snprintf(err, errlen, "%s:%d: case %zu (%s): %s", file, c->line, i + 1, c->name, why);
            goto fail;
        }
        lua_pop(L, 1);
    }
    lua_settop(L, 0);
    free(src);
    return s;
fail:
    free(trace);
    free(src);
    hr_spec_free(s);
    return NULL;
}

void hr_spec_free(hr_spec_t *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->ncases; i++) {
        hr_spec_case_t *c = &s->cases[i];
        free(c->name);
        free(c->path);
        hr_headers_free(c->headers, c->nheaders);
        free(c->body);
        free(c->expect_error);
    }
    free(s->cases);
    lua_close(s->L);
    free(s->file);
    free(s);
}

static int cmp_path(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **hr_spec_find(const char *rules_dir, size_t *n)
{
    *n = 0;
    char *dir = hr_xasprintf("%s/tests", rules_dir);
    DIR *d = opendir(dir);
    char **files = NULL;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 10 || strcmp(de->d_name + len - 9, ".test.lua") != 0) continue;
        files = hr_xrealloc(files, (*n + 1) * sizeof *files);
        files[(*n)++] = hr_xasprintf("%s/%s", dir, de->d_name);
    }
    if (d) closedir(d);
    free(dir);
    if (*n) qsort(files, *n, sizeof *files, cmp_path);
    return files;
}

/* ---------------------------------------------------------------- comparing */

void hr_spec_show(lua_State *L, int idx, hr_buf_t *out)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TNIL: hr_buf_appends(out, "nothing"); return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        hr_buf_append_json_string(out, s, n);
        return;
    }
    case LUA_TNUMBER:
    case LUA_TBOOLEAN:
        hr_buf_appends(out, luaL_tolstring(L, idx, NULL));
        lua_pop(L, 1);
        return;
    default: break;
    }
    hr_buf_t b = HR_BUF_INIT;
    char err[128];
    if (hr_json_encode(L, idx, &b, err, sizeof err) != 0) {
        hr_buf_appends(out, luaL_typename(L, idx));
    } else if (b.len > 160) {
        hr_buf_append(out, b.data, 160);
        hr_buf_appends(out, "...");
    } else {
        hr_buf_append(out, b.data, b.len);
    }
    hr_buf_free(&b);
}

static void mismatch(lua_State *L, int e, int a, const char *path, const char *what, hr_buf_t *out)
{
    hr_buf_printf(out, "# %s: expected ", path);
    if (what)
        hr_buf_appends(out, what);
    else
        hr_spec_show(L, e, out);
    hr_buf_appends(out, ", got ");
    hr_spec_show(L, a, out);
    hr_buf_appendc(out, '\n');
}

static bool is_ident(const char *k)
{
    if (!isalpha((unsigned char)*k) && *k != '_') return false;
    for (; *k; k++)
        if (!isalnum((unsigned char)*k) && *k != '_') return false;
    return true;
}

static int diff_at(lua_State *L, int e, int a, const char *path, bool lower, hr_buf_t *out);

static int cmp_cstr(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* Compare the expected object at e key by key (sorted) with a. [-0, +0, m] */
static int diff_object(lua_State *L, int e, int a, const char *path, bool lower, hr_buf_t *out)
{
    lua_newtable(L); /* keeps the key strings alive */
    int keep = lua_gettop(L);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, e)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, keep, (lua_Integer)++n);
    }
    const char **keys = hr_xcalloc(n + 1, sizeof *keys);
    size_t nk = 0;
    int diffs = 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, keep, (lua_Integer)i);
        if (lua_type(L, -1) == LUA_TSTRING) keys[nk++] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(keys, nk, sizeof *keys, cmp_cstr);
    for (size_t i = 0; i < nk; i++) {
        char *sub = is_ident(keys[i]) ? hr_xasprintf("%s%s%s", path, *path ? "." : "", keys[i])
                                      : hr_xasprintf("%s[\"%s\"]", path, keys[i]);
        lua_getfield(L, e, keys[i]);
        if (lower) {
            char *lk = hr_xstrdup_lower(keys[i]);
            lua_getfield(L, a, lk);
            free(lk);
        } else {
            lua_getfield(L, a, keys[i]);
        }
        diffs += diff_at(L, -2, -1, sub, strcmp(keys[i], "headers") == 0, out);
        lua_pop(L, 2);
        free(sub);
    }
    free(keys);
    lua_pop(L, 1); /* keep */
    return diffs;
}

static int diff_at(lua_State *L, int e, int a, const char *path, bool lower, hr_buf_t *out)
{
    e = lua_absindex(L, e);
    a = lua_absindex(L, a);
    if (hr_json_is_null(L, e) || lua_type(L, e) != LUA_TTABLE) {
        if (lua_rawequal(L, e, a)) return 0;
        mismatch(L, e, a, path, NULL, out);
        return 1;
    }
    if (lua_type(L, a) != LUA_TTABLE || hr_json_is_null(L, a)) {
        mismatch(L, e, a, path, "a table", out);
        return 1;
    }
    hr_json_force(L, e); /* read raw below */
    hr_json_force(L, a);
    size_t ne = lua_rawlen(L, e);
    bool array = ne > 0;
    if (!array && lua_getmetatable(L, e)) { /* json.array({}) */
        lua_pop(L, 1);
        array = true;
    }
    if (!array) return diff_object(L, e, a, path, lower, out);
    size_t na = lua_rawlen(L, a);
    int diffs = 0;
    if (na != ne) {
        char what[64];
        snprintf(what, sizeof what, "%zu element%s", ne, ne == 1 ? "" : "s");
        mismatch(L, e, a, path, what, out);
        diffs++;
    }
    for (size_t i = 1; i <= ne && i <= na; i++) {
        char *sub = hr_xasprintf("%s[%zu]", path, i);
        lua_rawgeti(L, e, (lua_Integer)i);
        lua_rawgeti(L, a, (lua_Integer)i);
        diffs += diff_at(L, -2, -1, sub, false, out);
        lua_pop(L, 2);
        free(sub);
    }
    return diffs;
}

int hr_spec_diff(lua_State *L, int e, int a, const char *path, hr_buf_t *out)
{
    return diff_at(L, e, a, path, false, out);
}
