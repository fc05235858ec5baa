/* Config loading errors, store id normalisation, rule dispatch, sandbox and limits. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <lauxlib.h>
#include <lualib.h>
#include <uv.h>

#include "hr/lua_budget.h"
#include "rules_util.h"

static const char *BASE_CONFIG =
    "return {\n"
    "  listen = '127.0.0.1:0', tokens = {'t'},\n"
    "  endpoints = { ['/hook'] = 'thing.happened' },\n"
    "  rules = 'rules', store_key = '%s',\n"
    "  targets = { pos = { url = 'http://127.0.0.1:9/base', headers = { ['X-Api-Key'] = 'k' } } "
    "},\n"
    "  files = { audit = { path = 'var/audit.jsonl' } },\n"
    "  limits = { rule_instructions = 100000, rule_memory_bytes = 8388608 },\n"
    "}\n";

/* True if two JSON texts hold the same value (object key order aside). */
static bool json_eq(const char *a, const char *b)
{
    cJSON *ja = cJSON_Parse(a), *jb = cJSON_Parse(b);
    bool eq = ja && jb && cJSON_Compare(ja, jb, true);
    if (!eq) fprintf(stderr, "  json differs:\n  got:  %s\n  want: %s\n", a, b);
    cJSON_Delete(ja);
    cJSON_Delete(jb);
    return eq;
}

static void test_config_errors(void)
{
    char err[4096];
    write_file("hookrouter.lua", "return { listen = 5, tokens = {}, endpoints = {}, bogus = 1,\n"
                                 " targets = { pos = { url = 5 } }, rules = 'rules' }\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "listen: expected a string, got integer") != NULL);
    CHECK(strstr(err, "bogus: unknown key") != NULL);
    CHECK(strstr(err, "targets.pos.url: expected a string, got integer") != NULL);
    CHECK(strstr(err, "tokens: no bearer token") != NULL);
    CHECK(strstr(err, "endpoints: no endpoint") != NULL);

    write_file("hookrouter.lua", "return {\n  endpoints = {\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "hookrouter.lua:3:") != NULL); /* syntax error names path:line */

    write_file("hookrouter.lua", "return { insecure_no_auth = true, endpoints = {['/h']='e'},"
                                 " rules = 'rules', targets = { t = { url = 'ftp://x/' } },"
                                 " limits = { body_bytes = 0 } }\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "targets.t.url: URL must start with http:// or https://") != NULL);
    CHECK(strstr(err, "limits.body_bytes: must be between") != NULL);
}

static void test_rule_errors(void)
{
    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e) end\n");
    write_file("rules/stores/42.lua", "return function(e)\n  if then end\nend\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/stores/42.lua:2:") != NULL);

    write_file("rules/stores/42.lua", "return function(e)\n  forward('nope', {})\nend\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/stores/42.lua:2: forward to 'nope'") != NULL);

    write_file("rules/stores/42.lua", "return 5\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "must return a function") != NULL);
    unlink(strcat(strcpy(err, dir), "/rules/stores/42.lua"));
}

/* hr_lua_pcall keeps the error value as Lua made it and hands the traceback back beside it;
 * the errors operators read (load, event) keep their first line and carry it after. */
static void test_errors_carry_a_traceback(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    char *trace = (char *)"unset";
    CHECK(luaL_loadstring(L, "local function inner() error('deep') end\n"
                             "local function outer() inner() end\n"
                             "outer()\n") == LUA_OK);
    CHECK_INT_EQ(hr_lua_pcall(L, 0, 0, &trace), LUA_ERRRUN);
    CHECK_STR_EQ(lua_tostring(L, -1),
                 "[string \"local function inner() error('deep') end...\"]:1: deep");
    CHECK(trace && strncmp(trace, "stack traceback:\n", 17) == 0);
    CHECK(trace && strstr(trace, "in upvalue 'inner'") && strstr(trace, "in local 'outer'"));
    CHECK(trace && strstr(trace, "]:3: in main chunk"));
    free(trace);
    lua_pop(L, 1);
    /* a non-string error value is kept as it is; a success gives no traceback */
    CHECK(luaL_loadstring(L, "error({code = 7})") == LUA_OK);
    CHECK_INT_EQ(hr_lua_pcall(L, 0, 0, &trace), LUA_ERRRUN);
    CHECK(lua_istable(L, -1));
    free(trace);
    lua_pop(L, 1);
    CHECK(luaL_loadstring(L, "return 1 + 1") == LUA_OK);
    CHECK_INT_EQ(hr_lua_pcall(L, 0, 1, &trace), LUA_OK);
    CHECK(trace == NULL);
    CHECK_INT_EQ(lua_tointeger(L, -1), 2);
    CHECK_INT_EQ(lua_gettop(L), 1); /* the handler is gone from the stack */
    lua_close(L);

    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/lib/tb.lua", "local M = {}\nfunction M.boom() error('module boom') end\n"
                                   "M.boom()\nreturn M\n");
    write_file("rules/default.lua", "local tb = require('lib.tb')\nreturn function(e) end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/lib/tb.lua:2: module boom\nstack traceback:\n") != NULL);
    CHECK(strstr(err, "rules/lib/tb.lua:3: in main chunk") != NULL);
    CHECK(strstr(err, "rules/default.lua:1: in main chunk") != NULL);
    if (!strstr(err, "rules/default.lua:1: in main chunk")) fprintf(stderr, "  got: %s\n", err);

    write_file("rules/lib/tb.lua", "local M = {}\nfunction M.boom() error('event boom') end\n"
                                   "return M\n");
    write_file("rules/default.lua",
               "local tb = require('lib.tb')\nreturn function(e)\n  tb.boom()\nend\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) return;
    hr_run_result_t res;
    run(rs, "{}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    const char *e = res.error ? res.error : "";
    /* the first line is the message as before, the traceback starts on the second */
    const char *first = "rules/lib/tb.lua:2: event boom\nstack traceback:\n";
    const char *at = strstr(e, first);
    CHECK(at != NULL && strchr(e, '\n') == at + strlen(first) - strlen("\nstack traceback:\n"));
    CHECK(strstr(e, "rules/lib/tb.lua:2: in field 'boom'") != NULL);
    CHECK(strstr(e, "rules/default.lua:3: in function <") != NULL);
    if (!strstr(e, "rules/default.lua:3:")) fprintf(stderr, "  got: %s\n", e);
    hr_run_result_free(&res);

    /* the budget's error, raised from the count hook, points at the loop */
    write_file("rules/default.lua", "return function(e)\n  local n = 0\n"
                                    "  while true do n = n + 1 end\nend\n");
    hr_ruleset_unref(rs);
    rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) return;
    run(rs, "{}", &res);
    CHECK(res.error &&
          strstr(res.error, "rule exceeded its instruction budget "
                            "(limits.rule_instructions = 100000)\nstack traceback:\n"));
    CHECK(res.error && strstr(res.error, "rules/default.lua:3: in function <"));
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
    write_file("rules/default.lua", "return function(e) end\n");
}

/* The literal-name check and the respond() lint read code only: a name in a comment or a
 * string is not a call. */
static void test_source_checks_skip_comments_and_strings(void)
{
    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e) end\n");
    write_file("rules/stores/42.lua",
               "-- forward('old-target', e.body) is gone\n"
               "--[==[ write('old-file', x) ]] request('old', {}) ]==]\n"
               "local help = [[ forward('nope', {}) ]]\n"
               "return function(e)\n  log.info(\"write('nope', x)\") forward('pos', {})\nend\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) fprintf(stderr, "  load failed:\n%s", err);
    hr_ruleset_unref(rs);
    /* code after a string holding "--" is still checked, on its own line number */
    write_file("rules/stores/42.lua", "return function(e)\n  write('audit', '--')"
                                      " forward('gone', {})\nend\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/stores/42.lua:2: forward to 'gone', which is not in the config's "
                      "targets") != NULL);
    unlink(strcat(strcpy(err, dir), "/rules/stores/42.lua"));

    /* the lint: respond() in a comment or a string does not count, in a module it does */
    write_file("hookrouter.lua",
               "return {\n"
               "  listen = '127.0.0.1:0', tokens = {'t'},\n"
               "  endpoints = { ['/hook'] = { event = 'thing.happened', reply_timeout_ms = 1000,\n"
               "                 fallback = { status = 200, body = { ok = false } } } },\n"
               "  rules = 'rules', store_key = 'storeId',\n"
               "}\n");
    write_file("rules/lib/answer.lua", "return { ok = function() respond(200, 'ok') end }\n");
    write_file("rules/default.lua", "-- respond(200) comes later\nlocal s = 'respond(200)'\n"
                                    "return function(e) end\n");
    write_file("rules/stores/7.lua", "local a = require('lib.answer')\n"
                                     "return function(e) a.ok() end\n");
    rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) return;
    hr_errors_t warns = {0};
    hr_ruleset_lint(rs, &warns);
    CHECK_INT_EQ(warns.n, 1);
    CHECK(warns.n >= 1 && strstr(warns.msgs[0], "rules/default.lua never calls respond()"));
    hr_errors_free(&warns);
    hr_ruleset_unref(rs);
    unlink(strcat(strcpy(err, dir), "/rules/stores/7.lua"));
    write_file("rules/default.lua", "return function(e) end\n");
}

static void test_store_dispatch(void)
{
    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e) write('audit', {rule='default', "
                                    "store=e.store or json.null}) end\n");
    write_file("rules/stores/42.lua", "return function(e) write('audit', {rule='42', "
                                      "store=e.store, h=e.headers['x-test']}) end\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) {
        fprintf(stderr, "%s", err);
        return;
    }
    static const struct {
        const char *body, *store, *line;
    } cases[] = {
        {"{\"storeId\":42}", "42", "{\"rule\":\"42\",\"store\":\"42\",\"h\":\"yes\"}"},
        {"{\"storeId\":\"42\"}", "42", "{\"rule\":\"42\",\"store\":\"42\",\"h\":\"yes\"}"},
        {"{\"storeId\":42.0}", "42", NULL},
        {"{\"storeId\":7}", "7", "{\"rule\":\"default\",\"store\":\"7\"}"},
        {"{\"storeId\":\"../42\"}", "../42", "{\"rule\":\"default\",\"store\":\"../42\"}"},
        {"{\"storeId\":\"..\"}", "..", NULL},
        {"{\"storeId\":\"a/b\"}", "a/b", NULL},
        {"{\"storeId\":null}", NULL, "{\"rule\":\"default\",\"store\":null}"},
        {"{\"storeId\":true}", NULL, NULL},
        {"{}", NULL, NULL},
        {"[1,2]", NULL, NULL},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        hr_run_result_t res;
        run(rs, cases[i].body, &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        if (cases[i].store)
            CHECK_STR_EQ(res.store, cases[i].store);
        else
            CHECK(res.store == NULL);
        CHECK_INT_EQ(res.nactions, 1);
        if (res.actions && cases[i].line) CHECK(json_eq(res.actions->body, cases[i].line));
        if (res.actions) CHECK(strstr(res.actions->file_path, "/var/audit.jsonl") != NULL);
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);

    /* Dotted store_key */
    write_file("hookrouter.lua", BASE_CONFIG, "store.aifiUniqueStoreId");
    write_file("rules/stores/us-east-42.lua", "return function(e) drop('mine') end\n");
    rs = load(err, sizeof err);
    CHECK(rs != NULL);
    hr_run_result_t res;
    run(rs, "{\"store\":{\"aifiUniqueStoreId\":\"us-east-42\"}}", &res);
    CHECK_STR_EQ(res.store, "us-east-42");
    CHECK(res.dropped);
    CHECK_STR_EQ(res.drop_reason, "mine");
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

/* Float store ids: integral values give the integer text, others their shortest round-trip
 * text (42.5 once ran stores/42.lua: it was truncated). */
static void test_store_id_floats(void)
{
    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e) write('audit', {rule='default'}) end\n");
    write_file("rules/stores/42.lua", "return function(e) write('audit', {rule='42'}) end\n");
    write_file("rules/stores/42.5.lua", "return function(e) write('audit', {rule='42.5'}) end\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) {
        fprintf(stderr, "%s", err);
        return;
    }
    static const struct {
        const char *body, *store, *rule;
    } cases[] = {
        {"{\"storeId\":42.5}", "42.5", "42.5"},
        {"{\"storeId\":4.25e1}", "42.5", "42.5"},
        {"{\"storeId\":42.0}", "42", "42"},
        {"{\"storeId\":4.2e1}", "42", "42"},
        {"{\"storeId\":42.000000000000001}", "42", "42"}, /* the same double as 42 */
        {"{\"storeId\":42.00000000000001}", "42.00000000000001", "default"},
        {"{\"storeId\":0.1}", "0.1", "default"},
        {"{\"storeId\":-0.0}", "0", "default"},
        {"{\"storeId\":-7.5}", "-7.5", "default"},
        {"{\"storeId\":1e300}", "1e+300", "default"},
        {"{\"storeId\":1e-400}", "0", "default"}, /* underflow reads as 0.0 */
        {"{\"storeId\":9223372036854775808.0}", "9.223372036854776e+18", "default"},
        {"{\"storeId\":0.30000000000000004}", "0.30000000000000004", "default"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        hr_run_result_t res;
        run(rs, cases[i].body, &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        if (res.store)
            CHECK_STR_EQ(res.store, cases[i].store);
        else
            CHECK(res.store != NULL);
        CHECK_INT_EQ(res.nactions, 1);
        char want[64];
        snprintf(want, sizeof want, "{\"rule\":\"%s\"}", cases[i].rule);
        if (res.actions) CHECK(json_eq(res.actions->body, want));
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);
    unlink(strcat(strcpy(err, dir), "/rules/stores/42.5.lua"));
}

static void test_forward_and_sandbox(void)
{
    char err[4096];
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/lib/util.lua", "return { twice = function(x) return x * 2 end }\n");
    write_file(
        "rules/default.lua",
        "local u = require('lib.util')\n"
        "return function(e)\n"
        "  local b = e.body\n"
        "  if b.kind == 'sandbox' then\n"
        "    write('audit', { io = type(io), exec = type(os.execute), exit = type(os.exit),\n"
        "      remove = type(os.remove), loadfile = type(loadfile), dofile = type(dofile),\n"
        "      load = type(load), time = type(os.time), getenv = type(os.getenv),\n"
        "      utf8 = type(utf8), req = type(package) })\n"
        "  elseif b.kind == 'loop' then while true do end\n"
        "  elseif b.kind == 'pcall-loop' then\n"
        "    while true do pcall(function() while true do end end) end\n"
        "  elseif b.kind == 'memory' then\n"
        "    local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. i end\n"
        "  elseif b.kind == 'error' then error('boom')\n"
        "  elseif b.kind == 'escape' then require('../hookrouter')\n"
        "  elseif b.kind == 'clobber-lib' then string.format = nil\n"
        "  elseif b.kind == 'clobber-global' then forward = nil; error('clobbered')\n"
        "  else\n"
        "    forward('pos', { n = u.twice(b.n), f = b.f, z = b.z, a = b.a },\n"
        "      { path = '/x?y=1', method = 'PUT', headers = { ['X-Api-Key'] = 'rule' } })\n"
        "    forward('pos', 'plain text', { content_type = 'text/csv' })\n"
        "  end\n"
        "end\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) {
        fprintf(stderr, "%s", err);
        return;
    }
    hr_run_result_t res;
    run(rs, "{\"n\":21,\"f\":1.0,\"z\":null,\"a\":[]}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    CHECK_INT_EQ(res.nactions, 2);
    hr_action_t *a = res.actions;
    if (a) {
        CHECK(json_eq(a->body, "{\"n\":42,\"f\":1.0,\"z\":null,\"a\":[]}"));
        CHECK(strstr(a->body, "\"f\":1.0") && strstr(a->body, "\"n\":42") &&
              strstr(a->body, "\"a\":[]"));
        CHECK_STR_EQ(a->url, "http://127.0.0.1:9/base/x?y=1");
        CHECK_STR_EQ(a->method, "PUT");
        CHECK(a->body_is_json);
        int seen = 0;
        for (size_t i = 0; i < a->nheaders; i++) {
            if (!strcmp(a->headers[i].name, "X-Api-Key")) {
                CHECK_STR_EQ(a->headers[i].value, "rule");
                seen++;
            }
            if (!strcmp(a->headers[i].name, "Content-Type")) {
                CHECK_STR_EQ(a->headers[i].value, "application/json");
                seen++;
            }
            if (!strcmp(a->headers[i].name, "X-Hookrouter-Event-Id")) {
                CHECK_STR_EQ(a->headers[i].value, "0190a7e0-0000-7000-8000-000000000001");
                seen++;
            }
            if (!strcmp(a->headers[i].name, "User-Agent")) {
                CHECK_STR_EQ(a->headers[i].value, "hookrouter/" HR_VERSION);
                seen++;
            }
        }
        CHECK_INT_EQ(seen, 4);
        a = a->next;
    }
    if (a) {
        CHECK_STR_EQ(a->body, "plain text");
        CHECK(!a->body_is_json);
        CHECK_STR_EQ(a->headers[0].value, "text/csv");
    }
    hr_run_result_free(&res);

    run(rs, "{\"kind\":\"sandbox\"}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.actions)
        CHECK(json_eq(res.actions->body,
                      "{\"io\":\"nil\",\"exec\":\"nil\",\"exit\":\"nil\","
                      "\"remove\":\"nil\",\"loadfile\":\"nil\",\"dofile\":\"nil\","
                      "\"load\":\"nil\",\"time\":\"function\",\"getenv\":"
                      "\"function\",\"utf8\":\"table\",\"req\":\"nil\"}"));
    hr_run_result_free(&res);

    static const struct {
        const char *kind, *error;
    } fails[] = {
        {"loop", "instruction budget"},
        {"pcall-loop", "instruction budget"},
        {"memory", "memory limit"},
        {"error", "default.lua:14: boom"},
        {"escape", "invalid module name"},
        {"clobber-lib", "attempt to modify the shared library table 'string'"},
        {"clobber-global", "clobbered"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(fails); i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"kind\":\"%s\"}", fails[i].kind);
        run(rs, body, &res);
        CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
        CHECK(res.error && strstr(res.error, fails[i].error));
        if (!res.error || !strstr(res.error, fails[i].error))
            fprintf(stderr, "  %s: got %s\n", fails[i].kind, res.error ? res.error : "(null)");
        CHECK(res.actions == NULL);
        hr_run_result_free(&res);
        /* The state still works after every failure. */
        run(rs, "{\"n\":1}", &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        CHECK_INT_EQ(res.nactions, 2);
        hr_run_result_free(&res);
    }

    run(rs, "{\"n\":1,}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_BAD_JSON);
    CHECK(res.error && strstr(res.error, "invalid JSON") && strstr(res.error, "line 1"));
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

/* ---------------------------------------------------------------- rules that answer */

/* forward(target, event.body) with the body unchanged sends the sender's bytes as they came
 * (numbers as written, key order, escapes, whitespace), repeated keys too when the rule only
 * read keys of it; any change, even of a number's kind, and a text with a repeated key whose
 * table was filled (here by the peek of a container and # of it), get an encoding. */
static void test_forward_original_bytes(void)
{
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e)\n"
                                    "  local b = e.body\n"
                                    "  if b.op == 'touch' then b.list[2] = 3\n"
                                    "  elseif b.op == 'add' then b.extra = true\n"
                                    "  elseif b.op == 'float' then b.n = 5.0\n"
                                    "  elseif b.op == 'same-value' then b.x = 1.1\n"
                                    "  elseif b.op == 'dup-list' then local _ = #b.list end\n"
                                    "  forward('pos', b)\n"
                                    "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    static const struct {
        const char *in;   /* the event body */
        const char *want; /* the forwarded body, byte for byte */
    } cases[] = {
        {"{\"op\":\"same\", \"x\":1.10,\"tiny\":1e-400,\"big\":12345678901234567890,"
         "\"u\":\"caf\\u00e9 \\ud83d\\ude00 \\u0000\",\"z\":null,\"n\":5,"
         "\"list\":[1,2,{\"b\":[],\"a\":{}}] }",
         NULL},
        {"{\"op\":\"same-value\",\"x\":1.10}", NULL},
        {"\xEF\xBB\xBF{\"op\":\"bom\",\"x\":1E2}", "{\"op\":\"bom\",\"x\":1E2}"},
        {"{\"op\":\"touch\",\"list\":[1,2]}", "{\"list\":[1,3],\"op\":\"touch\"}"},
        {"{\"op\":\"add\",\"x\":1.10}", "{\"extra\":true,\"op\":\"add\",\"x\":1.1}"},
        {"{\"op\":\"float\",\"n\":5}", "{\"n\":5.0,\"op\":\"float\"}"},
        {"{\"op\":\"dup\",\"a\":1,\"a\":1}", NULL}, /* read, not changed: as it came */
        {"{\"op\":\"dup-list\",\"list\":[1,2],\"a\":1,\"a\":1}",
         "{\"a\":1,\"list\":[1,2],\"op\":\"dup-list\"}"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        hr_run_result_t res;
        run(rs, cases[i].in, &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        CHECK_INT_EQ(res.nactions, 1);
        if (res.actions) {
            const char *want = cases[i].want ? cases[i].want : cases[i].in;
            CHECK_INT_EQ(res.actions->body_len, strlen(want));
            CHECK(memcmp(res.actions->body, want, strlen(want)) == 0);
            CHECK(res.actions->body_is_json);
        }
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);
}

/* The body is decoded lazily: a rule sees plain tables whatever it does with them, and the
 * C side of forward() and respond() reads parts of the body it never touched. */
static void test_lazy_body(void)
{
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua",
               "return function(e)\n"
               "  local b = e.body\n"
               "  local keys = {}\n"
               "  for k in next, b.meta do keys[#keys + 1] = k end\n"
               "  table.sort(keys)\n"
               "  setmetatable(b.extra, {__index = function() return 'dflt' end})\n"
               "  local ok = pcall(setmetatable, b.list, {})\n"
               "  forward('pos', {keys = table.concat(keys, ','), raw = rawget(b.meta, 'a'),\n"
               "                  n = rawlen(b.list), mt = getmetatable(b.list2),\n"
               "                  q = url.query(b.query), x = b.extra.x, d = b.extra.nope,\n"
               "                  set_array_mt = ok},\n"
               "          {headers = b.hdrs})\n"
               "  respond(200, b.answer, b.rhdrs)\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    hr_run_result_t res;
    run(rs,
        "{\"meta\":{\"b\":2,\"a\":1},\"list\":[1,2,3],\"list2\":[],\"query\":{\"k\":[\"1\",\"2\"]},"
        "\"extra\":{\"x\":\"y\"},\"hdrs\":{\"X-From-Body\":\"yes\"},"
        "\"answer\":{\"ok\":true,\"v\":[1,{\"w\":null}]},\"rhdrs\":{\"X-Reply\":\"r\"}}",
        &res);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    CHECK_INT_EQ(res.nactions, 1);
    if (res.actions) {
        CHECK(json_eq(res.actions->body,
                      "{\"keys\":\"a,b\",\"raw\":1,\"n\":3,\"mt\":\"json.array\",\"q\":\"k=1&k=2\","
                      "\"x\":\"y\",\"d\":\"dflt\",\"set_array_mt\":false}"));
        bool seen = false;
        for (size_t i = 0; i < res.actions->nheaders; i++)
            seen |= !strcmp(res.actions->headers[i].name, "X-From-Body") &&
                    !strcmp(res.actions->headers[i].value, "yes");
        CHECK(seen);
    }
    CHECK(res.reply != NULL);
    if (res.reply) {
        CHECK(res.reply->body && json_eq(res.reply->body, "{\"ok\":true,\"v\":[1,{\"w\":null}]}"));
        CHECK_INT_EQ(res.reply->nheaders, 1);
        if (res.reply->nheaders == 1) CHECK_STR_EQ(res.reply->headers[0].name, "X-Reply");
    }
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

/* A rule that reads all of every body gets it decoded whole after a few events (and lazily
 * again every 32nd, to measure): what it sees and sends is the same either way, event after
 * event, original bytes included. */
static void test_whole_bodies(void)
{
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua",
               "local function walk(v)\n"
               "  local n = 1\n"
               "  if type(v) == 'table' then for _, x in pairs(v) do n = n + walk(x) end end\n"
               "  return n\n"
               "end\n"
               "return function(e)\n"
               "  local n = walk(e.body)\n"
               "  if e.body.change then e.body.list[1] = n end\n"
               "  forward('pos', e.body)\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    for (int i = 0; i < 70; i++) {
        char in[160];
        snprintf(in, sizeof in,
                 "{\"n\": %d, \"list\":[1.50, {\"k\":[]}], \"o\":{\"a\":{\"b\":null}}%s}", i,
                 i % 7 == 3 ? ", \"change\":true" : "");
        hr_run_result_t res;
        run(rs, in, &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        if (res.actions) {
            if (i % 7 == 3) {
                /* 10 values: the root, n, list, 1.5, {k}, [], o, a, b and change */
                char want[160];
                snprintf(want, sizeof want,
                         "{\"change\":true,\"list\":[10,{\"k\":[]}],\"n\":%d,\"o\":{\"a\":{\"b\":"
                         "null}}}",
                         i);
                CHECK_STR_EQ(res.actions->body, want);
            } else {
                CHECK_STR_EQ(res.actions->body, in); /* unchanged: the sender's bytes */
            }
        }
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);
}

/* write(file, event.body) unchanged keeps the sender's bytes when they are one line, and
 * encodes the table when they are not (a pretty-printed body, a trailing newline): a record
 * of a JSONL file is one line. */
static void test_write_body_one_line(void)
{
    write_file("hookrouter.lua", BASE_CONFIG, "storeId");
    write_file("rules/default.lua", "return function(e) write('audit', e.body) end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"{\"b\": 1.10, \"a\":[1]}", "{\"b\": 1.10, \"a\":[1]}"},
        {"{\n  \"b\": 1.10,\n  \"a\": [1]\n}\n", "{\"a\":[1],\"b\":1.1}"},
        {"{\"b\":1}\r\n", "{\"b\":1}"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        hr_run_result_t res;
        run(rs, cases[i].in, &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        CHECK(res.actions != NULL);
        if (res.actions) {
            CHECK_STR_EQ(res.actions->body, cases[i].want);
            CHECK(res.actions->body_is_json);
        }
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);
}

static void start_ev(hr_event_in_t *ev, const char *body)
{
    static hr_header_t h[] = {{"x-test", "yes"}};
    *ev = (hr_event_in_t){"0190a7e0-0000-7000-8000-000000000002",
                          "thing.happened",
                          "POST",
                          "/hook",
                          h,
                          1,
                          body,
                          strlen(body),
                          "2026-01-01T00:00:00.000Z",
                          0,
                          1,
                          false};
}

static const hr_header_t JSON_H[] = {
    {"content-type", "application/json; charset=utf-8"}, {"x-dup", "a"}, {"x-dup", "b"}};

static hr_rule_answer_t json_answer(const char *body)
{
    return (hr_rule_answer_t){.status = 200,
                              .headers = JSON_H,
                              .nheaders = 3,
                              .body = body,
                              .body_len = strlen(body),
                              .ms = 1.5};
}

static void test_request_suspend_resume(void)
{
    char err[4096];
    write_file(
        "hookrouter.lua",
        "return {\n"
        "  listen = '127.0.0.1:0', tokens = {'t'},\n"
        "  endpoints = { ['/hook'] = 'thing.happened',\n"
        "    ['/verify'] = { event = 'v', reply_timeout_ms = 1500,\n"
        "      fallback = { status = 200, body = { status = 'FAILED', reason = 'x' } } } },\n"
        "  rules = 'rules',\n"
        "  targets = { members = { url = 'http://127.0.0.1:9/m', timeout_ms = 700 } },\n"
        "  files = { audit = { path = 'var/audit.jsonl' } },\n"
        "  limits = { rule_instructions = 100000, rule_memory_bytes = 8388608 },\n"
        "}\n");
    write_file(
        "rules/default.lua",
        "return function(e)\n"
        "  local b = e.body\n"
        "  if b.kind == 'two' then\n"
        "    local r1 = request('members', { q = 1 }, { path = '/a', timeout_ms = 250 })\n"
        "    write('audit', { first = r1.body.n, dup = r1.headers['x-dup'], ms = r1.ms })\n"
        "    local r2, err = request('members', 'raw', { method = 'PUT' })\n"
        "    respond(201, { second = r2 == nil and err or r2.body }, { ['X-Mine'] = 'y' })\n"
        "    forward('members', { done = true })\n"
        "  elseif b.kind == 'spin-after' then\n"
        "    local n = 0\n"
        "    for i = 1, 3 do for j = 1, b.n do n = n + 1 end request('members', {}) end\n"
        "    respond(200, 'spun ' .. n)\n"
        "  elseif b.kind == 'respond-twice' then\n"
        "    respond(200, 'first') respond(202)\n"
        "  elseif b.kind == 'sort' then\n"
        "    table.sort({3, 2, 1}, function(x, y) request('members', {}) return x < y end)\n"
        "  elseif b.kind == 'fail-after' then\n"
        "    forward('members', {}) request('members', {}) respond(200, 'no') error('late boom')\n"
        "  elseif b.kind == 'pcall' then\n"
        "    local ok, r = pcall(request, 'members', {})\n"
        "    respond(200, { ok = ok, body = r and r.body or json.null })\n"
        "  end\n"
        "end\n");
    unlink(strcat(strcpy(err, dir), "/rules/stores/us-east-42.lua"));
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) {
        fprintf(stderr, "%s", err);
        return;
    }
    const hr_endpoint_conf_t *ep = hr_config_endpoint(hr_ruleset_config(rs), "/verify");
    CHECK(ep && ep->reply_timeout_ms == 1500 && ep->fallback && ep->fallback->status == 200);
    if (ep && ep->fallback)
        CHECK(json_eq(ep->fallback->body, "{\"status\":\"FAILED\",\"reason\":\"x\"}"));
    ep = hr_config_endpoint(hr_ruleset_config(rs), "/hook");
    CHECK(ep && ep->reply_timeout_ms == HR_REPLY_TIMEOUT_DEFAULT_MS && !ep->fallback);

    /* Two requests in a row; the rule set may be dropped by its owner meanwhile. */
    hr_event_in_t ev;
    hr_run_result_t res;
    start_ev(&ev, "{\"kind\":\"two\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    CHECK(res.run != NULL && res.request != NULL);
    hr_ruleset_ref(rs);
    hr_ruleset_unref(rs); /* the run holds its own reference */
    if (res.request) {
        CHECK_STR_EQ(res.request->name, "members");
        CHECK_STR_EQ(res.request->url, "http://127.0.0.1:9/m/a");
        CHECK_STR_EQ(res.request->method, "POST");
        CHECK_INT_EQ(res.request->timeout_ms, 250);
        CHECK(json_eq(res.request->body, "{\"q\":1}"));
    }
    hr_rule_answer_t ans = json_answer("{\"n\":7}");
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_SUSPENDED);
    if (res.request) {
        CHECK_STR_EQ(res.request->method, "PUT");
        CHECK_INT_EQ(res.request->timeout_ms, 700);
        CHECK_STR_EQ(res.request->body, "raw");
    }
    ans = (hr_rule_answer_t){.err = UV_ETIMEDOUT, .errmsg = "timed out"};
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_DONE);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    CHECK(res.run == NULL);
    CHECK_INT_EQ(res.requests, 2);
    CHECK_INT_EQ(res.nactions, 2);
    if (res.actions) CHECK(json_eq(res.actions->body, "{\"first\":7,\"dup\":\"a, b\",\"ms\":1.5}"));
    CHECK(res.reply != NULL);
    if (res.reply) {
        CHECK_INT_EQ(res.reply->status, 201);
        CHECK(res.reply->body_is_json);
        CHECK(json_eq(res.reply->body,
                      "{\"second\":\"timeout: target 'members' did not answer within 700 ms\"}"));
        CHECK_INT_EQ(res.reply->nheaders, 1);
    }
    hr_run_result_free(&res);

    /* A non-JSON answer stays a string; a connect error says so. */
    start_ev(&ev, "{\"kind\":\"pcall\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    ans = (hr_rule_answer_t){.status = 200, .body = "{not json", .body_len = 9};
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_DONE);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.reply) CHECK(json_eq(res.reply->body, "{\"ok\":true,\"body\":\"{not json\"}"));
    hr_run_result_free(&res);
    start_ev(&ev, "{\"kind\":\"two\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    ans = json_answer("{\"n\":1}");
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_SUSPENDED);
    ans = (hr_rule_answer_t){.err = UV_ECONNREFUSED, .errmsg = "connection refused"};
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_DONE);
    if (res.reply)
        CHECK(strstr(res.reply->body, "connect error: target 'members': connection refused"));
    hr_run_result_free(&res);

    /* The budget counts the rule's own work over all its slices, never the time it waits:
     * 3 x 8000 loop turns fit in 100000 instructions however long the waits, 3 x 20000 do
     * not (each slice alone would). */
    start_ev(&ev, "{\"kind\":\"spin-after\",\"n\":8000}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    ans = json_answer("{}");
    for (int i = 0; i < 3; i++) {
        usleep(100000); /* waiting costs nothing */
        CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), i < 2 ? HR_STEP_SUSPENDED : HR_STEP_DONE);
    }
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.reply) CHECK_STR_EQ(res.reply->body, "spun 24000");
    hr_run_result_free(&res);
    start_ev(&ev, "{\"kind\":\"spin-after\",\"n\":20000}");
    hr_run_step_t st = hr_ruleset_start(rs, &ev, &res);
    for (int i = 0; i < 3 && st == HR_STEP_SUSPENDED; i++)
        st = hr_ruleset_resume(&res, &ans);
    CHECK_INT_EQ(st, HR_STEP_DONE);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK(res.error && strstr(res.error, "instruction budget"));
    hr_run_result_free(&res);

    /* respond() twice: the last call wins. */
    start_ev(&ev, "{\"kind\":\"respond-twice\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_DONE);
    CHECK(res.reply && res.reply->status == 202 && res.reply->body == NULL);
    hr_run_result_free(&res);

    /* request() where a coroutine cannot yield is a clear error. */
    start_ev(&ev, "{\"kind\":\"sort\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_DONE);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK(res.error && strstr(res.error, "request() cannot wait here"));
    hr_run_result_free(&res);

    /* A rule that fails after a request: its actions and reply are discarded. */
    start_ev(&ev, "{\"kind\":\"fail-after\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    ans = json_answer("{}");
    CHECK_INT_EQ(hr_ruleset_resume(&res, &ans), HR_STEP_DONE);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK(res.error && strstr(res.error, "late boom"));
    CHECK(res.actions == NULL && res.reply == NULL);
    hr_run_result_free(&res);

    /* Abandon (the deadline): actions discarded, the reason becomes the error, and the rule
     * set reference is released (the last one frees the set: ASan/valgrind check it). */
    start_ev(&ev, "{\"kind\":\"fail-after\"}");
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    CHECK_INT_EQ(res.nactions, 1);
    hr_ruleset_unref(rs); /* only the run holds the set now */
    hr_ruleset_abandon(&res, "reply deadline exceeded (1500 ms)");
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK_STR_EQ(res.error, "reply deadline exceeded (1500 ms)");
    CHECK(res.actions == NULL && res.run == NULL && res.request == NULL);
    hr_run_result_free(&res);

    /* request() outside an event (at load time) is refused. */
    write_file("rules/default.lua", "request('members', {})\nreturn function(e) end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "request() can only be called while handling an event") != NULL);
}

/* The synchronous run answers request() through a stub, as `hookrouter test --reply`. */
static void stub_answer(void *arg, const hr_action_t *req, hr_rule_answer_t *ans)
{
    int *calls = arg;
    (*calls)++;
    CHECK_STR_EQ(req->name, "members");
    *ans = json_answer("{\"valid\":true}");
}

static void test_run_with_stub(void)
{
    char err[4096];
    write_file("rules/default.lua", "return function(e)\n"
                                    "  local r = request('members', {})\n"
                                    "  local r2, e2 = request('members', {})\n"
                                    "  respond(200, { valid = r.body.valid, again = r2.status })\n"
                                    "end\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) return;
    hr_event_in_t ev;
    hr_run_result_t res;
    start_ev(&ev, "{}");
    int calls = 0;
    hr_ruleset_run_stub(rs, &ev, &res, stub_answer, &calls);
    CHECK_INT_EQ(calls, 2);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.reply) CHECK(json_eq(res.reply->body, "{\"valid\":true,\"again\":200}"));
    hr_run_result_free(&res);
    /* Without a stub, request() gets nil and a message. */
    hr_ruleset_run(rs, &ev, &res);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK(res.error && strstr(res.error, "attempt to index a nil value"));
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/hr-test-rules-XXXXXX");
    if (!mkdtemp(dir)) return 2;
    test_config_errors();
    test_rule_errors();
    test_errors_carry_a_traceback();
    test_source_checks_skip_comments_and_strings();
    test_store_dispatch();
    test_store_id_floats();
    test_forward_and_sandbox();
    test_forward_original_bytes();
    test_lazy_body();
    test_whole_bodies();
    test_write_body_one_line();
    test_request_suspend_resume();
    test_run_with_stub();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE("test_rules");
}
