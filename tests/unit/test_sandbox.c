/* Hostile rules (issue 8): nothing a rule does may crash the process, run past its budgets,
 * or reach another store's event, reply, actions or globals. Each test is named after what it
 * guards; a rule that escapes its budget makes the test hang, which ctest's timeout fails. */
#include <unistd.h>

#include "rules_util.h"

/* A config whose limits are small enough to trip quickly. */
static const char *CONFIG =
    "return {\n"
    "  listen = '127.0.0.1:0', tokens = {'t'},\n"
    "  endpoints = { ['/hook'] = 'thing.happened' },\n"
    "  rules = 'rules', store_key = 'storeId',\n"
    "  targets = { pos = { url = 'http://127.0.0.1:9/base' } },\n"
    "  files = { audit = { path = 'var/audit.jsonl' } },\n"
    "  limits = { rule_instructions = 100000, rule_memory_bytes = 8388608,\n"
    "             state_memory_bytes = %s, actions_per_event = %s },\n"
    "}\n";

static void config(const char *state_memory, const char *actions)
{
    write_file("hookrouter.lua", CONFIG, state_memory, actions);
}

/* Run body and check the rule failed with an error containing want. */
static void expect_failure(hr_ruleset_t *rs, const char *body, const char *want)
{
    hr_run_result_t res;
    run(rs, body, &res);
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    CHECK_INT_EQ(res.nactions, 0);
    CHECK(res.reply == NULL);
    if (!res.error || !strstr(res.error, want))
        fprintf(stderr, "  %s: error %s, want it to contain '%s'\n", body,
                res.error ? res.error : "(none)", want);
    CHECK(res.error && strstr(res.error, want));
    hr_run_result_free(&res);
}

/* Run body and check the rule succeeded with one forward whose body is want. */
static void expect_forward(hr_ruleset_t *rs, const char *body, const char *want)
{
    hr_run_result_t res;
    run(rs, body, &res);
    if (res.status != HR_RUN_OK) fprintf(stderr, "  %s: %s\n", body, res.error);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    CHECK_INT_EQ(res.nactions, 1);
    CHECK(res.reply == NULL);
    if (res.actions) CHECK_STR_EQ(res.actions->body, want);
    hr_run_result_free(&res);
}

/* The "victim" store: forwards what the shared libraries do, so another store's tampering
 * would show in its body. */
static const char *VICTIM =
    "local util = require('util')\n"
    "return function(e)\n"
    "  forward('pos', string.format('%d|%s|%s|%s|%s|%s', 5, ('ab'):upper(),\n"
    "    json.encode({x = 1}), tostring(util.mode), tostring(json.array), string.rep('z', 2)))\n"
    "end\n";

static void test_finalizers_refused(void)
{
    config("268435456", "100");
    write_file("rules/util.lua", "return { mode = 'clean' }\n");
    write_file("rules/stores/2.lua", "%s", VICTIM);
    write_file("rules/stores/1.lua",
               "return function(e)\n"
               "  local k = e.body.kind\n"
               "  if k == 'gc' then\n"
               "    setmetatable({}, { __gc = function() json.decode('[1,2,3]') end })\n"
               "  elseif k == 'gc-true' then\n"
               "    local mt = { __gc = true }\n"
               "    setmetatable({}, mt); mt.__gc = function() respond(299, 'hijacked') end\n"
               "  elseif k == 'gc-later' then\n"
               "    local mt = {}\n"
               "    setmetatable({}, mt); mt.__gc = function() respond(299, 'hijacked') end\n"
               "    forward('pos', 'ok')\n"
               "  end\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"gc\"}", "__gc is not allowed");
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"gc-true\"}", "__gc is not allowed");
    hr_run_result_t res;
    run(rs, "{\"storeId\":1,\"kind\":\"gc-later\"}", &res); /* a later __gc marks nothing */
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    hr_run_result_free(&res);
    for (int i = 0; i < 50; i++) { /* collections run during these: no finalizer may fire */
        run(rs, "{\"storeId\":2}", &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        CHECK(res.reply == NULL);
        CHECK_INT_EQ(res.nactions, 1);
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs); /* lua_close runs no Lua code either */
}

static void test_close_handlers_run_within_budget(void)
{
    config("268435456", "100");
    write_file("rules/stores/2.lua", "return function(e) forward('pos', 'fine') end\n");
    write_file("rules/stores/1.lua",
               "return function(e)\n"
               "  local k = e.body.kind\n"
               "  local h = {}\n"
               "  if k == 'loop' then h.__close = function() while true do end end\n"
               "  elseif k == 'alloc' then\n"
               "    h.__close = function() local t = {} for i = 1, 1e9 do t[i] = {i} end end\n"
               "  elseif k == 'act' then\n"
               "    h.__close = function() forward('pos', 'late'); respond(299, 'late') end\n"
               "  end\n"
               "  local x <close> = setmetatable({}, h)\n"
               "  if e.body.wait then request('pos', 'q') end\n"
               "  error('boom')\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"loop\"}", "boom");
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"alloc\"}", "boom");
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"act\"}", "boom");
    expect_forward(rs, "{\"storeId\":2}", "fine");

    /* Abandoned while suspended in request(): its __close handler runs as it, bounded. */
    const char *body = "{\"storeId\":1,\"kind\":\"loop\",\"wait\":true}";
    hr_event_in_t ev = test_event(body);
    hr_run_result_t res;
    CHECK_INT_EQ(hr_ruleset_start(rs, &ev, &res), HR_STEP_SUSPENDED);
    hr_ruleset_abandon(&res, "deadline");
    CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
    hr_run_result_free(&res);
    expect_forward(rs, "{\"storeId\":2}", "fine");
    hr_ruleset_unref(rs);
}

static void test_shared_libraries_cannot_be_changed(void)
{
    config("268435456", "100");
    write_file("rules/util.lua", "return { mode = 'clean' }\n");
    write_file("rules/stores/2.lua", "%s", VICTIM);
    write_file("rules/stores/1.lua",
               "local util = require('util')\n"
               "return function(e)\n"
               "  local k = e.body.kind\n"
               "  if k == 'rawset' then\n"
               "    rawset(string, 'format', function() return 'evil' end)\n"
               "    rawset(json, 'encode', function() return 'evil' end)\n"
               "    rawset(string, 'rep', function() return 'evil' end)\n"
               "  elseif k == 'module' then util.mode = 'evil'\n"
               "  elseif k == 'strmeta' then getmetatable('').__index.upper = nil\n"
               "  elseif k == 'arraymeta' then getmetatable(json.array({})).__jsontype = nil\n"
               "  elseif k == 'setarray' then setmetatable(json.array({}), {})\n"
               "  elseif k == 'assign' then string.format = nil\n"
               "  end\n"
               "  forward('pos', string.format('%%s', 'own'))\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"assign\"}", "shared library table 'string'");
    hr_run_result_t res;
    run(rs, "{\"storeId\":1,\"kind\":\"rawset\"}", &res); /* changes its own view only */
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.actions) CHECK_STR_EQ(res.actions->body, "evil");
    hr_run_result_free(&res);
    run(rs, "{\"storeId\":1,\"kind\":\"module\"}", &res); /* its own instance of util */
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    hr_run_result_free(&res);
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"strmeta\"}", "attempt to index");
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"arraymeta\"}", "attempt to index");
    expect_failure(rs, "{\"storeId\":1,\"kind\":\"setarray\"}", "protected metatable");

    run(rs, "{\"storeId\":2}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (res.actions) {
        /* everything but the function address of json.array */
        const char *b = res.actions->body;
        const char *want = "5|AB|{\"x\":1}|clean|function: ";
        CHECK(strncmp(b, want, strlen(want)) == 0);
        CHECK(strlen(b) > 3 && strcmp(b + strlen(b) - 3, "|zz") == 0);
    }
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

static void test_pattern_matching_is_budgeted(void)
{
    config("268435456", "100");
    write_file("rules/stores/2.lua",
               "return function(e) forward('pos', (('a-b'):gsub('-', '+'))) end\n");
    write_file("rules/stores/1.lua",
               "local s = string.rep('a', 30000)\n"
               "return function(e)\n"
               "  local k = e.body.kind\n"
               "  if k == 'find' then string.find(s, '.-.-.-.-b')\n"
               "  elseif k == 'method' then s:match('(.-)(.-)(.-)b')\n"
               "  elseif k == 'gsub' then s:gsub('.-.-.-b', 'x')\n"
               "  elseif k == 'gmatch' then for w in s:gmatch('.-.-.-b') do end\n"
               "  elseif k == 'pcall' then\n"
               "    while true do pcall(string.find, s, '.-.-.-.-b') end\n"
               "  end\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    const char *kinds[] = {"find", "method", "gsub", "gmatch", "pcall"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(kinds); i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"storeId\":1,\"kind\":\"%s\"}", kinds[i]);
        expect_failure(rs, body, "instruction budget");
    }
    expect_forward(rs, "{\"storeId\":2}", "a+b");
    hr_ruleset_unref(rs);

    char err[4096];
    write_file("rules/stores/1.lua", "string.rep('a', 30000):find('.-.-.-.-b')\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "top-level code exceeded its instruction budget") != NULL);
}

static void test_c_side_memory_is_capped(void)
{
    config("268435456", "100");
    write_file("rules/stores/1.lua",
               "return function(e)\n"
               "  local k = e.body.kind\n"
               "  local big = string.rep('x', 1 << 20)\n"
               "  local many = {} for i = 1, 2000 do many[i] = big end\n"
               "  if k == 'encode' then local s = json.encode(many)\n"
               "  elseif k == 'encode-pcall' then pcall(json.encode, many); forward('pos', 'x')\n"
               "  elseif k == 'forward' then forward('pos', many)\n"
               "  elseif k == 'respond' then respond(200, many)\n"
               "  elseif k == 'rep' then local s = string.rep('y', 1 << 30)\n"
               "  elseif k == 'concat' then local s = table.concat(many)\n"
               "  elseif k == 'bodies' then for i = 1, 20 do write('audit', big) end\n"
               "  end\n"
               "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    const char *kinds[] = {"encode", "encode-pcall", "forward", "respond",
                           "rep",    "concat",       "bodies"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(kinds); i++) {
        char body[128];
        snprintf(body, sizeof body, "{\"storeId\":1,\"kind\":\"%s\"}", kinds[i]);
        expect_failure(rs, body, "memory limit");
    }
    hr_ruleset_unref(rs);
}

static void test_actions_per_event_capped(void)
{
    config("268435456", "5");
    write_file("rules/stores/1.lua", "return function(e)\n"
                                     "  for i = 1, e.body.n do forward('pos', 'x') end\n"
                                     "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    hr_run_result_t res;
    run(rs, "{\"storeId\":1,\"n\":5}", &res);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    CHECK_INT_EQ(res.nactions, 5);
    hr_run_result_free(&res);
    expect_failure(rs, "{\"storeId\":1,\"n\":6}", "limits.actions_per_event = 5");
    hr_ruleset_unref(rs);

    config("268435456", "nil"); /* the default: 100 */
    rs = must_load();
    if (!rs) return;
    expect_failure(rs, "{\"storeId\":1,\"n\":100000}", "limits.actions_per_event = 100");
    hr_ruleset_unref(rs);
}

static void test_state_memory_capped_across_events(void)
{
    config("8388608", "100");
    write_file("rules/stores/2.lua", "return function(e) forward('pos', 'fine') end\n");
    write_file("rules/stores/1.lua", "local cache = {}\n"
                                     "return function(e)\n"
                                     "  cache[#cache + 1] = string.rep('x', 1 << 20) .. #cache\n"
                                     "  forward('pos', 'kept ' .. #cache)\n"
                                     "end\n");
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    CHECK(!hr_ruleset_needs_rebuild(rs));
    int ok = 0;
    hr_run_result_t res;
    for (int i = 0; i < 20; i++) {
        run(rs, "{\"storeId\":1}", &res);
        bool failed = res.status == HR_RUN_RULE_FAILED;
        if (failed) {
            CHECK(strstr(res.error, "limits.state_memory_bytes = 8388608") != NULL);
            CHECK_INT_EQ(res.nactions, 0);
        }
        hr_run_result_free(&res);
        if (failed) break;
        ok++;
    }
    CHECK(ok >= 3 && ok < 8); /* ~1 MiB a run against an 8 MiB cap */
    CHECK(hr_ruleset_needs_rebuild(rs));
    hr_ruleset_unref(rs);

    /* a fresh load (what the router does next) runs clean */
    rs = must_load();
    if (!rs) return;
    CHECK(!hr_ruleset_needs_rebuild(rs));
    expect_forward(rs, "{\"storeId\":1}", "kept 1");
    hr_ruleset_unref(rs);
}

static void test_top_level_code_is_budgeted(void)
{
    char err[4096];
    config("268435456", "100");
    write_file("rules/stores/1.lua", "while true do end\nreturn function(e) end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/stores/1.lua:1: top-level code exceeded its instruction budget "
                      "(limits.rule_instructions = 100000)") != NULL);

    write_file("rules/stores/1.lua", "while true do pcall(function() while true do end end) end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "top-level code exceeded its instruction budget") != NULL);

    write_file("rules/stores/1.lua", "local s = 'x' for i = 1, 40 do s = s .. s end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/stores/1.lua: top-level code exceeded its memory limit") != NULL);

    write_file("rules/spin.lua", "while true do end\n");
    write_file("rules/stores/1.lua", "local s = require('spin')\nreturn function(e) end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "rules/spin.lua:1: top-level code exceeded its instruction budget") != NULL);

    write_file("rules/stores/1.lua", "return function(e) end\n");
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    hr_ruleset_unref(rs);

    write_file("hookrouter.lua", "while true do end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "hookrouter.lua:1: the config's code exceeded its instruction budget") !=
          NULL);
    write_file("hookrouter.lua", "local t = {} for i = 1, 1e8 do t[i] = {i} end\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "the config's code needs more than 64 MiB") != NULL);
    write_file("hookrouter.lua", "return setmetatable({}, {__index = function() end})\n");
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "setmetatable") != NULL);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/hr-test-sandbox-XXXXXX");
    if (!mkdtemp(dir)) return 2;
    test_finalizers_refused();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/rules'", dir);
    CHECK(system(cmd) == 0);
    test_close_handlers_run_within_budget();
    CHECK(system(cmd) == 0);
    test_shared_libraries_cannot_be_changed();
    CHECK(system(cmd) == 0);
    test_pattern_matching_is_budgeted();
    CHECK(system(cmd) == 0);
    test_c_side_memory_is_capped();
    test_actions_per_event_capped();
    CHECK(system(cmd) == 0);
    test_state_memory_capped_across_events();
    CHECK(system(cmd) == 0);
    test_top_level_code_is_budgeted();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE("test_sandbox");
}
