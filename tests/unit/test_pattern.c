/* Unit tests for src/pattern.c: budgeted find/match/gmatch/gsub equal Lua 5.4's string library
 * (differential test against the real one) and stop a pathological pattern on budget. */
#include "hr/pattern.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdbool.h>

#include "check.h"

/* ---------------------------------------------------------------- charge functions */

static unsigned long long g_steps;   /* steps charged so far */
static unsigned long long g_limit;   /* charge_limited raises past this */
static unsigned g_max_charge;        /* the largest single charge */
static unsigned long long g_charges; /* number of calls */

static void charge_limited(lua_State *L, unsigned steps)
{
    g_steps += steps;
    g_charges++;
    if (steps > g_max_charge) g_max_charge = steps;
    if (g_steps > g_limit) luaL_error(L, "pattern budget exceeded");
}

static void counters_reset(unsigned long long limit)
{
    g_steps = 0;
    g_charges = 0;
    g_max_charge = 0;
    g_limit = limit;
}

/* A state with the standard libraries; with ours, string.find & co are replaced. */
static lua_State *new_state(bool ours, hr_pattern_charge_fn charge)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (ours) {
        lua_getglobal(L, "string");
        hr_pattern_install(L, -1, charge);
        lua_pop(L, 1);
    }
    return L;
}

/* ---------------------------------------------------------------- differential test */

/* Runs every case through find, match, gmatch and gsub; returns (results, descriptions). */
static const char driver[] =
    "-- Differential driver: the same code runs in a state with the real string library and in "
    "one\n"
    "-- with hr_pattern_install's versions; it returns the results (one string per call) and a\n"
    "-- description of each call.\n"
    "local find, match, gmatch, gsub = string.find, string.match, string.gmatch, string.gsub\n"
    "local byte, char, rep, fmt = string.byte, string.char, string.rep, string.format\n"
    "local concat, pack, unpack = table.concat, table.pack, table.unpack\n"
    "local out, desc = {}, {}\n"
    "\n"
    "local function esc(v)\n"
    "  local ty = type(v)\n"
    "  if ty == \"number\" then return math.type(v) .. \":\" .. tostring(v) end\n"
    "  if ty ~= \"string\" then return ty end\n"
    "  local t = {}\n"
    "  for i = 1, #v do\n"
    "    local b = byte(v, i)\n"
    "    if b >= 32 and b < 127 and b ~= 92 and b ~= 34 then t[#t + 1] = char(b)\n"
    "    else t[#t + 1] = \"\\\\\" .. b .. \";\" end\n"
    "  end\n"
    "  return '\"' .. concat(t) .. '\"'\n"
    "end\n"
    "\n"
    "local function ser(r, from)\n"
    "  local t = {}\n"
    "  for i = from, r.n do t[#t + 1] = esc(r[i]) end\n"
    "  return concat(t, \" \")\n"
    "end\n"
    "\n"
    "local function gm(s, p, init)\n"
    "  local acc = {}\n"
    "  local it = gmatch(s, p, init)\n"
    "  for _ = 1, 300 do\n"
    "    local r = pack(it())\n"
    "    if r.n == 0 then acc[#acc + 1] = \"end\"; break end\n"
    "    acc[#acc + 1] = ser(r, 1)\n"
    "  end\n"
    "  return concat(acc, \" | \")\n"
    "end\n"
    "\n"
    "local names = { [find] = \"find\", [match] = \"match\", [gm] = \"gmatch\", [gsub] = \"gsub\" "
    "}\n"
    "local function run(f, ...)\n"
    "  local args = pack(...)\n"
    "  local r = pack(pcall(f, ...))\n"
    "  out[#out + 1] = (r[1] and \"ok \" or \"err \") .. ser(r, 2)\n"
    "  desc[#desc + 1] = (names[f] or \"?\") .. \"(\" .. ser(args, 1) .. \")\"\n"
    "end\n"
    "\n"
    "local function repl_fn(...)\n"
    "  local t = pack(...)\n"
    "  if t[1] == \"b\" then return false end\n"
    "  if t[1] == \"c\" then return nil end\n"
    "  if t[1] == \"d\" then return 42 end\n"
    "  return \"<\" .. concat(t, \",\", 1, t.n) .. \">\"\n"
    "end\n"
    "local repl_tbl = { a = \"A\", b = false, [\"1\"] = \"one\", [1] = \"pos1\", [3] = 3.5, x = {} "
    "}\n"
    "\n"
    "local subjects = { \"\", \"a\", \"aaa\", \"aab\", \"abc\", \"hello world\", \"  padded  \", "
    "\"a.b-c%d]e\",\n"
    "  \"x(a(b)c)y\", \"12-34\", \"THE (quick) fox\", \"a\\0b\\0c\", \"\\1\\127\\128\\200\\255 \", "
    "\"key=val; k2=v2\",\n"
    "  \"b\", \"xyx\", \"aaaa\", \"-a-\", \"f(o)(o)\", \"'q' 'r'\", \"^a^a\", \"a$b\", \"[x]\", "
    "\"d1x\" }\n"
    "local patterns = { \"\", \"a\", \"^a\", \"a$\", \"^$\", \"$\", \"^\", \"a*\", \"a+\", \"a-\", "
    "\"a?\", \".\", \".-\", \".*\",\n"
    "  \".+b\", \"^(a+)(b*)$\", \"%a+\", \"%A+\", \"%c\", \"%C\", \"%d+\", \"%D+\", \"%g+\", "
    "\"%G\", \"%l+\", \"%L+\", \"%p+\",\n"
    "  \"%P+\", \"%s+\", \"%S+\", \"%u+\", \"%U+\", \"%w+\", \"%W+\", \"%x+\", \"%X+\", \"%z\", "
    "\"%Z+\", \"%.\", \"%%\", \"%]\",\n"
    "  \"%-\", \"%(\", \"%q\", \"[abc]\", \"[^abc]\", \"[a-c]+\", \"[%a_][%w_]*\", \"[]]\", "
    "\"[^]]+\", \"[]a]\", \"[a-]\",\n"
    "  \"[-a]\", \"[%]]\", \"[%-a]\", \"[a%-z]\", \"[^%s]+\", \"[%d%.]+\", \"[z-a]\", "
    "\"[\\0-\\31]\", \"[%a-z]\", \"()\",\n"
    "  \"()a()\", \"(a)(b)\", \"((a)(b))\", \"(a*(.)%w(%s*))\", \"(.)%1\", \"(a+)%1\", \"()%1\", "
    "\"%1\", \"(a)%2\",\n"
    "  \"(a%1)\", \"%0\", \"%bxy\", \"%b()\", \"%b(\", \"%b\", \"%b''\", \"%f[%w]%w+\", "
    "\"%f[%W]\", \"%f[%a]%a+%f[%A]\",\n"
    "  \"%f\", \"%fa\", \"%f[a\", \"%f[^\\0]\", \"%f[%z]\", \"(\", \")\", \"(()\", \"a)\", \"%\", "
    "\"a%\", \"[a\", \"[^\", \"[%\",\n"
    "  \"[\", \"[]\", \"[^]\", \"x*$\", \"a-$\", \"a.-b\", \"(%d+)-(%d+)\", \"^(%d+)-(%d+)$\", "
    "\"%s*$\", \"^%s*(.-)%s*$\",\n"
    "  \"a\\0b\", \"%z+\", \"\\0\", \"[\\0]\", \"(h)(e)(l)(l)(o)\", \"[%w.-]+@[%w.-]+\", \"$a\", "
    "\"a$b\", \"^^\", \"a^\",\n"
    "  \"%x\", \"%1%2\", \"(a?)+\", \"(a)-\", \"[a]*?\", \"%a*-\", \".-$\", \"(.-)%s\", \"^(.)\", "
    "\"%^a\", \"a.b\", \"%$\" }\n"
    "local inits = { 2, -3, 0, 100, -100 }\n"
    "\n"
    "for _, p in ipairs(patterns) do\n"
    "  for _, s in ipairs(subjects) do\n"
    "    run(find, s, p)\n"
    "    for _, i in ipairs(inits) do run(find, s, p, i) end\n"
    "    run(find, s, p, 1, true)\n"
    "    run(find, s, p, 2, 1)\n"
    "    run(match, s, p)\n"
    "    run(match, s, p, -2)\n"
    "    run(gm, s, p)\n"
    "    run(gm, s, p, 3)\n"
    "    run(gm, s, p, -2)\n"
    "    run(gsub, s, p, \"<%0>\")\n"
    "    run(gsub, s, p, \"%1-%%\")\n"
    "    run(gsub, s, p, repl_fn)\n"
    "    run(gsub, s, p, repl_tbl)\n"
    "    run(gsub, s, p, \"x\", 1)\n"
    "    run(gsub, s, p, \"%2\", 2)\n"
    "  end\n"
    "end\n"
    "\n"
    "-- Arguments, replacements and limits.\n"
    "run(find, nil, \"a\"); run(find, \"a\", nil); run(find, 123, \"2\"); run(find, \"abc\", "
    "\"b\", 1.5)\n"
    "run(find, \"abc\", \"b\", \"2\"); run(find, \"abc\", \"b\", \"x\"); run(find, \"abc\", \"b\", "
    "math.mininteger)\n"
    "run(find, \"abc\", \"b\", math.maxinteger); run(find, \"abc\", \"\", 4); run(find, \"abc\", "
    "\"\", 5)\n"
    "run(find, \"a.c\", \".\", 1, true); run(find, \"a.c\", \"\", 2, true); run(find, \"a+b\", "
    "\"+\", 1, true)\n"
    "run(find, \"abc\", \"b\", 1, false); run(find, \"abc\", \"b\", nil, true); run(find, \"abc\", "
    "\"[b\")\n"
    "run(match, \"abc\"); run(match, {}, \"a\"); run(match, \"2024-01-02\", "
    "\"(%d+)-(%d+)-(%d+)\")\n"
    "run(gm, \"abc\", nil); run(gm, \"abc\", \"\", 10); run(gm, \"abc\", \"\", 4); run(gm, "
    "\"abc\", \"b\", 1.5)\n"
    "run(gm, \"^a^a\", \"^a\"); run(gm, \"aaa\", \"a*\"); run(gm, \"abc\", \"()\"); run(gm, "
    "\"a,b,,c\", \"([^,]*)\")\n"
    "run(gsub, \"abc\", \"b\"); run(gsub, \"abc\", \"b\", nil); run(gsub, \"abc\", \"b\", true)\n"
    "run(gsub, \"abc\", \"b\", 5); run(gsub, \"abc\", \"b\", 5.5); run(gsub, 123, \"2\", 9)\n"
    "run(gsub, \"abc\", \"b\", \"x\", 0); run(gsub, \"abc\", \"\", \"-\", -1); run(gsub, \"abc\", "
    "\"\", \"-\", 2)\n"
    "run(gsub, \"abc\", \"b\", \"x\", 1.5); run(gsub, \"abc\", \"b\", \"x\", \"1\"); run(gsub, "
    "\"abc\", \"b\", \"x\", \"z\")\n"
    "run(gsub, \"abc\", \"b\", \"x\", nil); run(gsub, \"abc\", nil, \"x\", \"z\")\n"
    "run(gsub, \"abc\", \"b\", \"%\"); run(gsub, \"abc\", \"b\", \"%x\"); run(gsub, \"abc\", "
    "\"b\", \"a%\"); run(gsub, \"abc\", \"b\", \"%\\0\")\n"
    "run(gsub, \"abc\", \"(b)\", \"%2\"); run(gsub, \"abc\", \"(b)()\", \"%2%1%0\"); run(gsub, "
    "\"abc\", \"b\", \"%1%1\")\n"
    "run(gsub, \"abc\", \"(b\", \"x\"); run(gsub, \"abc\", \"b\", function() return {} end)\n"
    "run(gsub, \"abc\", \"b\", function() return true end); run(gsub, \"abc\", \"b\", function() "
    "error(\"boom\") end)\n"
    "run(gsub, \"abc\", \"b\", function() error({}) end)\n"
    "run(gsub, \"abc\", \"%w\", setmetatable({}, { __index = function(_, k) return k .. k end }))\n"
    "run(gsub, \"hello world\", \"%w+\", function(w) return (gsub(w, \"o\", \"0\")) end)\n"
    "run(gsub, \"hello world\", \"(o)\", { o = \"0\" }); run(gsub, \"abc\", \"\", \"-\")\n"
    "run(gsub, \"abc\", \"^\", \"-\"); run(gsub, \"abc\", \"$\", \"-\"); run(gsub, \"abc\", "
    "\"^a*\", \"-\")\n"
    "run(gsub, \"  x  y  \", \"%s+\", \" \"); run(gsub, \"abc\", \".\", { a = 1, b = true })\n"
    "run(find, rep(\"a\", 300), rep(\"a?\", 300)); run(match, rep(\"a\", 300), rep(\"a?\", 199))\n"
    "run(match, rep(\"a\", 300), rep(\"a?\", 200)); run(match, rep(\"a\", 300), rep(\"a?\", 201))\n"
    "run(match, rep(\"a\", 50), rep(\"(a)\", 32)); run(match, rep(\"a\", 50), rep(\"(a)\", 33))\n"
    "run(find, \"x\", rep(\"()\", 33)); run(match, \"abc\", rep(\"(\", 40)); run(gsub, \"aaa\", "
    "rep(\"(a)\", 3), \"%9\")\n"
    "run(match, rep(\"a\", 10), rep(\"(a\", 5) .. rep(\")\", 5)); run(find, \"abc\", "
    "\"(a)(b)(c)\", -3)\n"
    "run(find, \"THE (quick) fox\", \"%((%a+)%)\"); run(match, \"  trim me  \", \"^%s*(.-)%s*$\")\n"
    "run(find, \"a\\0b\", \"\\0\", 1, true); run(find, \"a\\0b\", \"%z\"); run(find, \"a\\0b\", "
    "\"[%z]\")\n"
    "run(find, \"a\\0b\", \".\\0.\"); run(gsub, \"a\\0b\", \"%z\", \"Z\")\n"
    "-- Called from Lua code, so that errors carry the caller's position as with the real "
    "library.\n"
    "run(function(s, p) return find(s, p) end, \"a\", \"a%\")\n"
    "run(function(s, p) return match(s, p) end, \"a\", \"(()\")\n"
    "run(function(s, p) return gsub(s, p, \"%9\") end, \"a\", \"a\")\n"
    "run(function(s, p) for _ in gmatch(s, p) do end end, \"a\", \"[a\")\n"
    "run(function(s) return s:find(\"%f\") end, \"a\")\n"
    "\n"
    "-- Random patterns and subjects from a small alphabet, fixed seed.\n"
    "local seed = 20261202\n"
    "local function rnd(n)\n"
    "  seed = seed * 6364136223846793005 + 1442695040888963407\n"
    "  return ((seed >> 33) % n) + 1\n"
    "end\n"
    "local tokens = { \"a\", \"b\", \".\", \"%a\", \"%d\", \"%s\", \"[ab]\", \"[^a]\", \"[a-c]\", "
    "\"(\", \")\", \"()\", \"*\",\n"
    "  \"+\", \"-\", \"?\", \"%1\", \"%2\", \"^\", \"$\", \"%b()\", \"%f[a]\", \"%f[%s]\", \"x\", "
    "\"(a)\", \"(.-)\", \"%\", \"[\",\n"
    "  \"]\", \"%w+\", \"1\" }\n"
    "local alpha = { \"a\", \"b\", \"(\", \")\", \" \", \"1\", \"x\", \".\" }\n"
    "for _ = 1, 1500 do\n"
    "  local t = {}\n"
    "  for k = 1, rnd(6) do t[k] = tokens[rnd(#tokens)] end\n"
    "  local p = concat(t)\n"
    "  local u = {}\n"
    "  for k = 1, rnd(13) - 1 do u[k] = alpha[rnd(#alpha)] end\n"
    "  local s = concat(u)\n"
    "  local init = ({ nil, 1, 2, -1, -3, 0, 20 })[rnd(7)]\n"
    "  run(find, s, p, init)\n"
    "  run(match, s, p, init)\n"
    "  run(gm, s, p, init)\n"
    "  run(gsub, s, p, \"[%0]\", rnd(4) - 2 + #s)\n"
    "  run(gsub, s, p, \"%1\")\n"
    "end\n"
    "return out, desc\n";

/* Run the driver; leaves the results and descriptions tables on the stack. */
static int run_driver(lua_State *L)
{
    if (luaL_loadbuffer(L, driver, sizeof driver - 1, "=driver") != LUA_OK ||
        lua_pcall(L, 0, 2, 0) != LUA_OK) {
        fprintf(stderr, "driver: %s\n", lua_tostring(L, -1));
        return -1;
    }
    return 0;
}

static void test_differential(void)
{
    lua_State *real = new_state(false, NULL);
    counters_reset(~0ULL);
    lua_State *ours = new_state(true, charge_limited);
    int rc_real = run_driver(real), rc_ours = run_driver(ours);
    CHECK_INT_EQ(rc_real, 0);
    CHECK_INT_EQ(rc_ours, 0);
    if (rc_real == 0 && rc_ours == 0) {
        lua_Integer n = luaL_len(real, -2);
        CHECK_INT_EQ(luaL_len(ours, -2), n);
        CHECK(n > 40000);
        int bad = 0;
        for (lua_Integer i = 1; i <= n; i++) {
            lua_geti(real, -2, i);
            lua_geti(ours, -2, i);
            const char *want = lua_tostring(real, -1), *got = lua_tostring(ours, -1);
            if (!want || !got || strcmp(want, got) != 0) {
                if (bad++ < 25) {
                    lua_geti(real, -2, i);
                    fprintf(stderr, "case %lld %s\n  real: %s\n  ours: %s\n", (long long)i,
                            lua_tostring(real, -1), want ? want : "(none)", got ? got : "(none)");
                    lua_pop(real, 1);
                }
            }
            lua_pop(real, 1);
            lua_pop(ours, 1);
        }
        CHECK_INT_EQ(bad, 0);
        fprintf(stderr, "differential: %lld cases, %d mismatches, %llu steps charged\n",
                (long long)n, bad, g_steps);
    }
    CHECK(g_steps > 0);
    lua_close(real);
    lua_close(ours);
}

/* ---------------------------------------------------------------- budget */

/* Run chunk; returns the lua_pcall status and leaves its first result (or error) on top. */
static int run(lua_State *L, const char *chunk)
{
    int rc = luaL_loadstring(L, chunk);
    if (rc == LUA_OK) rc = lua_pcall(L, 0, 1, 0);
    return rc;
}

/* Steps charged for one chunk (no limit). */
static unsigned long long steps_of(lua_State *L, const char *chunk)
{
    counters_reset(~0ULL);
    int rc = run(L, chunk);
    CHECK_INT_EQ(rc, LUA_OK);
    lua_pop(L, 1);
    return g_steps;
}

static void test_budget_stops_backtracking(void)
{
    lua_State *L = new_state(true, charge_limited);
    static const char *const chunks[] = {
        "local ok, err = pcall(string.find, string.rep('a', 30000), '.-.-.-.-b')\n"
        "assert(not ok) return err",
        "local ok, err = pcall(string.match, string.rep('a', 30000), '(.-)(.-)(.-)b')\n"
        "assert(not ok) return err",
        "local ok, err = pcall(function()\n"
        "  for x in string.gmatch(string.rep('a', 30000), '.-.-.-b') do end end)\n"
        "assert(not ok) return err",
        "local ok, err = pcall(string.gsub, string.rep('a', 30000), '.-.-.-b', '')\n"
        "assert(not ok) return err",
        /* Through a method call and a replacement function. */
        "local s = string.rep('a', 30000)\n"
        "local ok, err = pcall(function() return ('x'):gsub('x', function()\n"
        "  return s:find('.-.-.-.-b') end) end)\n"
        "assert(not ok) return err",
    };
    for (size_t i = 0; i < sizeof chunks / sizeof chunks[0]; i++) {
        counters_reset(1000000);
        int rc = run(L, chunks[i]);
        CHECK_INT_EQ(rc, LUA_OK);
        const char *err = lua_tostring(L, -1);
        CHECK(err && strstr(err, "pattern budget exceeded"));
        /* Stopped at the first charge past the limit. */
        CHECK(g_steps > g_limit);
        CHECK(g_steps <= g_limit + HR_PATTERN_STEP);
        CHECK(g_max_charge <= HR_PATTERN_STEP);
        lua_pop(L, 1);
    }
    /* Without a pcall in Lua the error reaches the C caller. */
    counters_reset(100000);
    CHECK_INT_EQ(run(L, "return string.find(string.rep('a', 30000), '.-.-.-.-b')"), LUA_ERRRUN);
    CHECK(strstr(lua_tostring(L, -1), "pattern budget exceeded") != NULL);
    lua_pop(L, 1);
    /* The state is fine afterwards. */
    counters_reset(~0ULL);
    CHECK_INT_EQ(run(L, "return select(2, string.find('hello', 'l+'))"), LUA_OK);
    CHECK_INT_EQ(lua_tointeger(L, -1), 4);
    lua_pop(L, 1);
    lua_close(L);
}

static void test_budget_counts_work(void)
{
    lua_State *L = new_state(true, charge_limited);
    /* Quadratic backtracking: 10 times the subject, about 100 times the steps. */
    unsigned long long q1 = steps_of(L, "string.find(string.rep('a', 100), 'a-b')");
    unsigned long long q2 = steps_of(L, "string.find(string.rep('a', 1000), 'a-b')");
    CHECK(q1 > 100 * 50);
    CHECK(q2 > 50 * q1);
    /* Linear work: twice the subject, about twice the steps. */
    unsigned long long l1 = steps_of(L, "string.gsub(string.rep('ab  c ', 400), '%s+', ' ')");
    unsigned long long l2 = steps_of(L, "string.gsub(string.rep('ab  c ', 800), '%s+', ' ')");
    CHECK(l1 > 2400);
    CHECK(l2 * 10 >= l1 * 18 && l2 * 10 <= l1 * 22);
    /* Long sets and replacement templates are charged by their length. */
    unsigned long long set =
        steps_of(L, "string.find(string.rep('a', 1000), '[' .. string.rep('b', 8000) .. ']')");
    CHECK(set >= 1000ULL * 1000);
    unsigned long long tpl =
        steps_of(L, "string.gsub(string.rep('a', 1000), '', string.rep('%0', 4000))");
    CHECK(tpl >= 1000ULL * 1000);
    /* Small calls are charged too (the remainder at the end of each call). */
    unsigned long long one = steps_of(L, "assert(('abc'):find('b+') == 2)");
    CHECK(one > 0);
    CHECK_INT_EQ(g_charges, 1);
    unsigned long long gm = steps_of(L, "for w in ('a b c'):gmatch('%a') do end");
    CHECK(gm > 0);
    CHECK_INT_EQ(g_charges, 4); /* three matches and the final miss */
    lua_close(L);
}

/* NULL charge: the functions work, nothing is ever stopped. */
static void test_null_charge(void)
{
    lua_State *L = new_state(true, NULL);
    CHECK_INT_EQ(run(L, "return (string.gsub(string.rep('a b ', 100), '%s+', '') ..\n"
                        "  string.match('12-34', '^(%d+)-(%d+)$'))"),
                 LUA_OK);
    CHECK_INT_EQ(lua_rawlen(L, -1), 202);
    lua_pop(L, 1);
    CHECK_INT_EQ(run(L, "local n = 0 for a, b in ('k=v, x=y'):gmatch('(%w+)=(%w+)') do\n"
                        "  n = n + #a + #b end return n"),
                 LUA_OK);
    CHECK_INT_EQ(lua_tointeger(L, -1), 4);
    lua_pop(L, 1);
    lua_close(L);
}

int main(void)
{
    test_differential();
    test_budget_stops_backtracking();
    test_budget_counts_work();
    test_null_charge();
    return CHECK_DONE("test_pattern");
}
