/* Unit tests for src/json.c: JSON <-> Lua, exact both ways. */
#include "hr/json.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <lauxlib.h>
#include <lualib.h>
#include <math.h>

#include "check.h"

/* Decode with hr_json_decode_lazy instead: main() runs every decoding test both ways. */
static bool lazy_mode;

/* A Lua state with the standard libraries and `json` as a global, next & co. seeing lazy
 * tables filled (as in the rule sandbox). [-0, +0, -] */
static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    hr_json_install_lazy_base(L);
    hr_json_open(L);
    lua_setglobal(L, "json");
    return L;
}

/* Decode s[0..n) from an exact-size heap copy, so that ASan catches a read past the end.
 * [-0, +(1|0), m] */
static int decode_n(lua_State *L, const char *s, size_t n, char *err, size_t errlen)
{
    char *copy = malloc(n ? n : 1);
    memcpy(copy, s, n);
    int rc = lazy_mode ? hr_json_decode_lazy(L, copy, n, NULL, NULL, err, errlen)
                       : hr_json_decode(L, copy, n, err, errlen);
    if (rc == 0 && lazy_mode) hr_json_force(L, -1); /* C reads of the root below are raw */
    free(copy);
    return rc;
}

/* decode_n on a C string. [-0, +(1|0), m] */
static int decode(lua_State *L, const char *s, char *err, size_t errlen)
{
    return decode_n(L, s, strlen(s), err, errlen);
}

/* Encode the value on top (left there) into a new string, or NULL with err set. [-0, +0, m] */
static char *encode_top(lua_State *L, char *err, size_t errlen)
{
    hr_buf_t b = HR_BUF_INIT;
    if (hr_json_encode(L, -1, &b, err, errlen) != 0) {
        hr_buf_free(&b);
        return NULL;
    }
    return hr_buf_steal(&b, NULL);
}

/* Decode s and encode the result again. Returns a new string, or NULL. [-0, +0, m] */
static char *roundtrip(lua_State *L, const char *s)
{
    char err[256];
    int top = lua_gettop(L);
    if (decode(L, s, err, sizeof err) != 0) {
        fprintf(stderr, "decode(%s): %s\n", s, err);
        return NULL;
    }
    char *out = encode_top(L, err, sizeof err);
    if (!out) fprintf(stderr, "encode(%s): %s\n", s, err);
    lua_settop(L, top);
    return out;
}

/* Check that s round-trips to exactly want. */
static void check_roundtrip(lua_State *L, const char *s, const char *want)
{
    char *out = roundtrip(L, s);
    CHECK_STR_EQ(out, want);
    free(out);
}

/* Check that s and the JSON text got are the same value by cJSON's (double) measure. */
static void check_same_json(const char *want, const char *got)
{
    cJSON *a = cJSON_Parse(want), *b = got ? cJSON_Parse(got) : NULL;
    CHECK(a && b && cJSON_Compare(a, b, 1));
    cJSON_Delete(a);
    cJSON_Delete(b);
}

/* Run Lua code that returns one value, leaving it on the stack. Fails the test on error.
 * [-0, +1, e] */
static void run(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK) {
        fprintf(stderr, "lua error in %s: %s\n", code, lua_tostring(L, -1));
        hr_test_failures++;
        lua_pop(L, 1);
        lua_pushnil(L);
    }
}

/* Run Lua code returning one string and compare it to want. */
static void check_lua_str(lua_State *L, const char *code, const char *want)
{
    run(L, code);
    CHECK_STR_EQ(lua_tostring(L, -1), want);
    lua_pop(L, 1);
}

/* Check that decoding s fails with exactly the message want, pushing nothing. */
static void check_decode_error(lua_State *L, const char *s, const char *want)
{
    char err[256] = "";
    int top = lua_gettop(L);
    CHECK_INT_EQ(decode(L, s, err, sizeof err), -1);
    CHECK_STR_EQ(err, want);
    CHECK_INT_EQ(lua_gettop(L), top);
}

/* Build a value with Lua code and check that encoding fails with exactly want, and that
 * json.encode raises "json.encode: " + want. */
static void check_encode_error(lua_State *L, const char *code, const char *want)
{
    char err[512] = "";
    int top = lua_gettop(L);
    run(L, code);
    char *out = encode_top(L, err, sizeof err);
    CHECK(out == NULL);
    free(out);
    CHECK_STR_EQ(err, want);
    CHECK_INT_EQ(lua_gettop(L), top + 1);
    lua_setglobal(L, "bad");
    run(L, "local ok, e = pcall(json.encode, bad) return not ok and e");
    char expect[600];
    snprintf(expect, sizeof expect, "json.encode: %s", want);
    CHECK_STR_EQ(lua_tostring(L, -1), expect);
    lua_pop(L, 1);
}

/* ---------------------------------------------------------------- fixtures */

/* decode -> encode -> decode -> encode one fixture: the encodings match byte for byte and
 * the first equals the original. Returns 1 if the file was tested. */
static int check_fixture(lua_State *L, const char *path, const char *name)
{
    size_t len;
    char *text = hr_read_file(path, &len);
    CHECK(text != NULL); /* listed but unreadable: a failure, not a fixture fewer */
    if (!text) return 0;
    char err[256];
    int top = lua_gettop(L);
    char *e1 = NULL, *e2 = NULL;
    if (decode_n(L, text, len, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", name, err);
        hr_test_failures++;
        goto done;
    }
    e1 = encode_top(L, err, sizeof err);
    CHECK(e1 != NULL);
    if (!e1) goto done;
    lua_settop(L, top);
    CHECK_INT_EQ(decode(L, e1, err, sizeof err), 0);
    e2 = encode_top(L, err, sizeof err);
    CHECK_STR_EQ(e2, e1);
    check_same_json(text, e1);
    if (strcmp(name, "large-integers.json") == 0) {
        CHECK(strstr(e1, "\"orderId\":9007199254740993") != NULL);
        CHECK(strstr(e1, "\"id\":9223372036854775807") != NULL);
        lua_setglobal(L, "v");
        run(L, "return math.type(v.orderId) .. ' ' .. v.orderId .. ' ' .. v.session.id");
        CHECK_STR_EQ(lua_tostring(L, -1), "integer 9007199254740993 9223372036854775807");
    }
done:
    lua_settop(L, top);
    free(e1);
    free(e2);
    free(text);
    return 1;
}

static void test_fixtures(lua_State *L)
{
    const char *root = getenv("HR_FIXTURES");
    if (!root) root = "tests/fixtures";
    static const char *const subdirs[] = {"", "/variants", "/responses"};
    int tested = 0;
    bool saw_large = false;
    for (size_t i = 0; i < HR_ARRAY_SIZE(subdirs); i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s%s", root, subdirs[i]);
        DIR *d = opendir(dir);
        CHECK(d != NULL);
        if (!d) continue;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            size_t n = strlen(de->d_name);
            if (n < 6 || strcmp(de->d_name + n - 5, ".json") != 0) continue;
            char path[2048];
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            tested += check_fixture(L, path, de->d_name);
            if (strcmp(de->d_name, "large-integers.json") == 0) saw_large = true;
        }
        closedir(d);
    }
    CHECK(tested >= 30);
    CHECK(saw_large);
}

/* ---------------------------------------------------------------- decoding */

static void test_empty_containers(lua_State *L)
{
    check_roundtrip(L, "[]", "[]");
    check_roundtrip(L, "{}", "{}");
    check_roundtrip(L, " [ [ ] , { } , [ [ ] ] ] ", "[[],{},[[]]]");
    check_roundtrip(L, "{\"a\":{\"b\":[]}}", "{\"a\":{\"b\":[]}}");
    check_roundtrip(L, "{\"b\":{},\"a\":[]}", "{\"a\":[],\"b\":{}}");
    /* Lua sees an empty array as a table with the marker, an empty object as a plain table. */
    check_lua_str(L,
                  "local v = json.decode('{\"a\":[],\"b\":{}}') "
                  "return tostring(getmetatable(v.a) ~= nil) .. tostring(getmetatable(v.b) == nil)",
                  "truetrue");
}

static void test_null(lua_State *L)
{
    char err[256];
    CHECK_INT_EQ(decode(L, " null ", err, sizeof err), 0);
    CHECK(hr_json_is_null(L, -1));
    char *out = encode_top(L, err, sizeof err);
    CHECK_STR_EQ(out, "null");
    free(out);
    lua_pop(L, 1);

    check_roundtrip(L, "{\"a\":null}", "{\"a\":null}");
    check_roundtrip(L, "[1,null,3]", "[1,null,3]");
    check_roundtrip(L, "[null]", "[null]");
    check_lua_str(L,
                  "local v = json.decode('[1,null,3]') "
                  "return #v .. ' ' .. tostring(v[2] == json.null) .. ' ' .. tostring(v[2])",
                  "3 true null");
    check_lua_str(L,
                  "local v = json.decode('{\"a\":null}') "
                  "local n = 0 for k in pairs(v) do n = n + 1 end "
                  "return n .. tostring(v.a == json.null) .. tostring(json.null == nil)",
                  "1truefalse");
    check_lua_str(L, "return json.encode({a = json.null, b = {json.null}})",
                  "{\"a\":null,\"b\":[null]}");
    hr_json_push_null(L);
    CHECK(hr_json_is_null(L, -1));
    lua_pop(L, 1);
    lua_pushnil(L);
    CHECK(!hr_json_is_null(L, -1));
    lua_pop(L, 1);
}

static void test_numbers(lua_State *L)
{
    char err[256];
    CHECK_INT_EQ(decode(L, "42", err, sizeof err), 0);
    CHECK(lua_isinteger(L, -1));
    CHECK_INT_EQ(lua_tointeger(L, -1), 42);
    lua_pop(L, 1);
    check_roundtrip(L, "42", "42");
    check_roundtrip(L, "-7", "-7");
    check_roundtrip(L, "0", "0");

    CHECK_INT_EQ(decode(L, "1.0", err, sizeof err), 0);
    CHECK(lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1));
    lua_pop(L, 1);
    check_roundtrip(L, "1.0", "1.0");
    check_roundtrip(L, "[1,1.0,-2.50,1e2,1E+2]", "[1,1.0,-2.5,100.0,100.0]");
    check_roundtrip(L, "1e20", "1e+20");

    /* Integers exact to int64; beyond that, floats. */
    check_roundtrip(L, "9223372036854775807", "9223372036854775807");
    check_roundtrip(L, "-9223372036854775808", "-9223372036854775808");
    check_roundtrip(L, "9007199254740993", "9007199254740993");
    CHECK_INT_EQ(decode(L, "[9223372036854775807,-9223372036854775808]", err, sizeof err), 0);
    lua_rawgeti(L, -1, 1);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == LUA_MAXINTEGER);
    lua_rawgeti(L, -2, 2);
    CHECK(lua_isinteger(L, -1) && lua_tointeger(L, -1) == LUA_MININTEGER);
    lua_pop(L, 3);
    static const char *const too_big[] = {"9223372036854775808", "-9223372036854775809",
                                          "123456789012345678901234567890"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(too_big); i++) {
        CHECK_INT_EQ(decode(L, too_big[i], err, sizeof err), 0);
        CHECK(!lua_isinteger(L, -1));
        CHECK(lua_tonumber(L, -1) == strtod(too_big[i], NULL));
        lua_pop(L, 1);
    }

    /* Floats come back as the same double. */
    static const char *const floats[] = {"0.1",           "1e-7",
                                         "-2.5e300",      "3.14159",
                                         "123456789.125", "2.2250738585072014e-308",
                                         "5e-324",        "1.7976931348623157e308",
                                         "-0.0"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(floats); i++) {
        double want = strtod(floats[i], NULL);
        CHECK_INT_EQ(decode(L, floats[i], err, sizeof err), 0);
        CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == want);
        char *out = encode_top(L, err, sizeof err);
        lua_pop(L, 1);
        CHECK(out != NULL);
        if (!out) continue;
        CHECK(strtod(out, NULL) == want && signbit(strtod(out, NULL)) == signbit(want));
        CHECK_INT_EQ(decode(L, out, err, sizeof err), 0);
        CHECK(!lua_isinteger(L, -1) && lua_tonumber(L, -1) == want);
        lua_pop(L, 1);
        free(out);
    }
    check_roundtrip(L, "0.1", "0.1");
    check_roundtrip(L, "123456789.125", "123456789.125");

    /* Integer arithmetic stays integer. */
    CHECK_INT_EQ(decode(L, "42", err, sizeof err), 0);
    CHECK(luaL_loadstring(L, "local v = ... return v + 1") == LUA_OK);
    lua_insert(L, -2);
    CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK);
    CHECK(lua_isinteger(L, -1));
    CHECK_INT_EQ(lua_tointeger(L, -1), 43);
    lua_pop(L, 1);
    check_lua_str(L, "return math.type(json.decode('{\"n\":41}').n + 1)", "integer");
    check_lua_str(L, "return json.encode(json.decode('[10]')[1] // 3)", "3");
    check_lua_str(L, "return json.encode(json.decode('[10]')[1] / 4)", "2.5");
    check_lua_str(L, "return json.encode({math.maxinteger, math.mininteger, 2^63, -0.0})",
                  "[9223372036854775807,-9223372036854775808,9.223372036854776e+18,-0.0]");
}

static void test_strings(lua_State *L)
{
    char err[256];
    CHECK_INT_EQ(decode(L, "\"caf\\u00e9 \\\"q\\\" a\\nb \\ud83d\\ude00 \xc3\xbc \\/\\\\\\t\"", err,
                        sizeof err),
                 0);
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    const char want[] = "caf\xc3\xa9 \"q\" a\nb \xf0\x9f\x98\x80 \xc3\xbc /\\\t";
    CHECK_INT_EQ(n, sizeof want - 1);
    CHECK(s && memcmp(s, want, sizeof want - 1) == 0);
    char *out = encode_top(L, err, sizeof err);
    CHECK_STR_EQ(out, "\"caf\xc3\xa9 \\\"q\\\" a\\nb \xf0\x9f\x98\x80 \xc3\xbc /\\\\\\t\"");
    free(out);
    lua_pop(L, 1);

    /* "\u0000" survives, in values and keys, with other strings around it. */
    CHECK_INT_EQ(decode(L, "\"a\\u0000b\"", err, sizeof err), 0);
    s = lua_tolstring(L, -1, &n);
    CHECK_INT_EQ(n, 3);
    CHECK(s && memcmp(s, "a\0b", 3) == 0);
    lua_pop(L, 1);
    check_roundtrip(L, "\"a\\u0000b\"", "\"a\\u0000b\"");
    check_roundtrip(L, "[\"x\\\\u0000\",\"\\u0000\",\"\\ud83d\\ude00\\u00e9\"]",
                    "[\"x\\\\u0000\",\"\\u0000\",\"\xf0\x9f\x98\x80\xc3\xa9\"]");
    check_lua_str(L,
                  "local v = json.decode('{\"k\\\\u0000\":[\"p\",{\"q\":\"r\\\\u0000s\"}]}') "
                  "return #v['k\\0'][2].q .. v['k\\0'][1]",
                  "3p");
    /* A raw NUL inside a string is a control byte: RFC 8259 wants it escaped. */
    CHECK_INT_EQ(decode_n(L, "[\"a\0b\"]", 7, err, sizeof err), -1);
    CHECK_STR_EQ(err, "invalid JSON at line 1, column 4 (byte 3): unescaped control character "
                      "0x00 in string");
    check_roundtrip(L, "\"\"", "\"\"");
    check_roundtrip(L, "{\"\":\"\"}", "{\"\":\"\"}");
}

static void test_decode_errors(lua_State *L)
{
    check_decode_error(L, "{\"a\":1,}",
                       "invalid JSON at line 1, column 8 (byte 7): unexpected character '}'");
    check_decode_error(L, "{\"a\" 1}",
                       "invalid JSON at line 1, column 6 (byte 5): unexpected character '1'");
    check_decode_error(L, "{\"a\":1",
                       "invalid JSON at line 1, column 7 (byte 6): unexpected end of input");
    check_decode_error(L, "{\"a\":[1,2",
                       "invalid JSON at line 1, column 10 (byte 9): unexpected end of input");
    check_decode_error(L, "[1,2x",
                       "invalid JSON at line 1, column 5 (byte 4): unexpected character 'x'");
    check_decode_error(L, "{\"a\":\"xyz",
                       "invalid JSON at line 1, column 10 (byte 9): unexpected end of input");
    check_decode_error(L, "[tru",
                       "invalid JSON at line 1, column 5 (byte 4): unexpected end of input");
    check_decode_error(L, "", "invalid JSON at line 1, column 1 (byte 0): unexpected end of input");
    check_decode_error(L, "   ",
                       "invalid JSON at line 1, column 4 (byte 3): unexpected end of input");
    check_decode_error(
        L, "{\"a\":1} x",
        "invalid JSON at line 1, column 9 (byte 8): trailing characters after the value");
    check_decode_error(
        L, "[1]]",
        "invalid JSON at line 1, column 4 (byte 3): trailing characters after the value");
    check_decode_error(L, "{\n  \"\xc3\xa9\": [1,\n   x]\n}",
                       "invalid JSON at line 3, column 4 (byte 17): unexpected character 'x'");
    check_decode_error(L, "[1,\x01]", /* only space, tab, LF and CR are whitespace */
                       "invalid JSON at line 1, column 4 (byte 3): unexpected byte 0x01");
    check_decode_error(L, "\xc3\xa9",
                       "invalid JSON at line 1, column 1 (byte 0): unexpected byte 0xC3");

    check_decode_error(L, "[\"a\\qb\"]",
                       "invalid JSON at line 1, column 4 (byte 3): invalid escape in string");
    check_decode_error(
        L, "\"\\ud800x\"",
        "invalid JSON at line 1, column 2 (byte 1): invalid surrogate pair in string");
    check_decode_error(L, "\"\\u12g4\"",
                       "invalid JSON at line 1, column 2 (byte 1): invalid \\u escape in string");
    check_decode_error(L, "{\"a\"}",
                       "invalid JSON at line 1, column 5 (byte 4): unexpected character '}'");
    check_decode_error(L, "nul",
                       "invalid JSON at line 1, column 4 (byte 3): unexpected end of input");

    /* Through Lua. */
    check_lua_str(
        L, "local ok, e = pcall(json.decode, '{\"a\":') return e",
        "json.decode: invalid JSON at line 1, column 6 (byte 5): unexpected end of input");
    run(L, "return select(2, pcall(json.decode, {}))");
    CHECK(strstr(lua_tostring(L, -1), "string expected, got table") != NULL);
    lua_pop(L, 1);
}

/* RFC 8259 strictness: what cJSON alone accepted (numbers out of range, leading zeros, "1.",
 * "-.5", raw control bytes, bytes up to 0x20 as whitespace, invalid UTF-8) is an error that
 * says where and why; what the RFC allows still decodes. */
static void test_decode_strict(lua_State *L)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"1e400", "line 1, column 1 (byte 0): number '1e400' out of range"},
        {"[-1e400]", "line 1, column 2 (byte 1): number '-1e400' out of range"},
        {"{\"a\":2E+308}", "line 1, column 6 (byte 5): number '2E+308' out of range"},
        {"01", "line 1, column 1 (byte 0): invalid number '01' (leading zero)"},
        {"[-01]", "line 1, column 2 (byte 1): invalid number '-01' (leading zero)"},
        {"[00]", "line 1, column 2 (byte 1): invalid number '00' (leading zero)"},
        {"1.", "line 1, column 1 (byte 0): invalid number '1.' (digit expected after '.')"},
        {"[1.e5]", "line 1, column 2 (byte 1): invalid number '1.e5' (digit expected after '.')"},
        {".5", "line 1, column 1 (byte 0): invalid number '.5' (digit expected before '.')"},
        {"-.5", "line 1, column 1 (byte 0): invalid number '-.5' (digit expected before '.')"},
        {"[-]", "line 1, column 2 (byte 1): invalid number '-' (digit expected after '-')"},
        {"+1", "line 1, column 1 (byte 0): invalid number '+1' (leading '+')"},
        {"1e", "line 1, column 1 (byte 0): invalid number '1e' (digit expected in exponent)"},
        {"1e+", "line 1, column 1 (byte 0): invalid number '1e+' (digit expected in exponent)"},
        {"[1,1.5.3]", "line 1, column 4 (byte 3): invalid number '1.5.3' (unexpected '.')"},
        {"[1-2]", "line 1, column 2 (byte 1): invalid number '1-2' (unexpected '-')"},
        {"123456789012345678901234567890.5e-",
         "line 1, column 1 (byte 0): invalid number '123456789012345678901...' (digit expected "
         "in exponent)"},
        {"1234567890123456789012345678901234567890123456789012345678901234",
         "line 1, column 1 (byte 0): number too long (more than 63 characters)"},
        {"\"a\nb\"", "line 1, column 3 (byte 2): unescaped control character 0x0A in string"},
        {"{\"k\":\"\t\"}", "line 1, column 7 (byte 6): unescaped control character 0x09 in string"},
        {"[\"\x1f\"]", "line 1, column 3 (byte 2): unescaped control character 0x1F in string"},
        {"{\"a\x01\":1}", "line 1, column 4 (byte 3): unescaped control character 0x01 in string"},
        {"[1,\f2]", "line 1, column 4 (byte 3): unexpected byte 0x0C"},
        {"\v1", "line 1, column 1 (byte 0): unexpected byte 0x0B"},
        {"[\"\xff\"]", "line 1, column 3 (byte 2): invalid UTF-8 in string"},
        {"[\"\xc3\"]", "line 1, column 3 (byte 2): invalid UTF-8 in string"},
        {"[\"\xc0\xaf\"]", "line 1, column 3 (byte 2): invalid UTF-8 in string"},     /* overlong */
        {"[\"\xed\xa0\x80\"]", "line 1, column 3 (byte 2): invalid UTF-8 in string"}, /* D800 */
        {"[\"\xf4\x90\x80\x80\"]", "line 1, column 3 (byte 2): invalid UTF-8 in string"},
        {"\"\\udc00\"", "line 1, column 2 (byte 1): invalid surrogate pair in string"},
        {"\"\\ud800\\u0041\"", "line 1, column 2 (byte 1): invalid surrogate pair in string"},
        {"\"\\u12\"", "line 1, column 2 (byte 1): invalid \\u escape in string"},
        {"\"\\U0041\"", "line 1, column 2 (byte 1): invalid escape in string"},
        {"[1] /* c */", "line 1, column 5 (byte 4): trailing characters after the value"},
        {"// c\n1", "line 1, column 1 (byte 0): unexpected character '/'"},
        {"[1,]", "line 1, column 4 (byte 3): unexpected character ']'"},
        {"{'a':1}", "line 1, column 2 (byte 1): unexpected character '''"},
        {"[NaN]", "line 1, column 2 (byte 1): unexpected character 'N'"},
        {"[True]", "line 1, column 2 (byte 1): unexpected character 'T'"},
        {"[nulx]", "line 1, column 2 (byte 1): unexpected character 'n'"},
        {"{\"a\":1 \"b\":2}", "line 1, column 8 (byte 7): unexpected character '\"'"},
        {"{\"a\":[1}", "line 1, column 8 (byte 7): unexpected character '}'"},
        {"{\n\"a\": 01}", "line 2, column 6 (byte 7): invalid number '01' (leading zero)"},
    };
    char want[256];
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad); i++) {
        snprintf(want, sizeof want, "invalid JSON at %s", bad[i].want);
        check_decode_error(L, bad[i].text, want);
    }
    /* The same decoder behind json.decode, with the same message. */
    check_lua_str(L, "return select(2, pcall(json.decode, '[1, 1e400]'))",
                  "json.decode: invalid JSON at line 1, column 5 (byte 4): number '1e400' out of "
                  "range");

    /* Valid per RFC 8259 (and kept): underflow, -0, exponents, escapes of control bytes,
     * a surrogate pair, a byte order mark, 63-byte numbers, all four whitespace bytes. */
    check_roundtrip(L, "[1e-400,-1e-400]", "[0.0,-0.0]");
    check_roundtrip(L, "[-0,0,0.0,-0.0,0e0,1E+2,1e-2,10,1.5e1]",
                    "[0,0,0.0,-0.0,0.0,100.0,0.01,10,15.0]");
    check_roundtrip(L, "1.7976931348623157e308", "1.7976931348623157e+308");
    check_roundtrip(L, "\"\\u0001\\u001f\\n\\t\"", "\"\\u0001\\u001f\\n\\t\"");
    check_roundtrip(L, "\"\\ud83d\\ude00\"", "\"\xf0\x9f\x98\x80\"");
    check_roundtrip(L, "\xEF\xBB\xBF[1]", "[1]");
    check_roundtrip(L, " \t\r\n[ 1 ,\t2\r\n] \n", "[1,2]");
    check_roundtrip(L, "[\"\xf4\x8f\xbf\xbf\xe0\xa0\x80\xc2\x80\"]",
                    "[\"\xf4\x8f\xbf\xbf\xe0\xa0\x80\xc2\x80\"]");
    check_roundtrip(L, "100000000000000000000000000000000000000000000000000000000000000", "1e+62");
}

static void test_deep(lua_State *L)
{
    char err[256];
    hr_buf_t b = HR_BUF_INIT;
    for (int i = 0; i < 2000; i++)
        hr_buf_appendc(&b, '[');
    for (int i = 0; i < 2000; i++)
        hr_buf_appendc(&b, ']');
    check_decode_error(L, b.data,
                       "invalid JSON at line 1, column 1001 (byte 1000): nesting too deep (more "
                       "than 1000 levels)");
    /* Level 1001 is the '{' of the 501st "{"a":[". */
    hr_buf_reset(&b);
    for (int i = 0; i < 1000; i++)
        hr_buf_appends(&b, "{\"a\":[");
    for (int i = 0; i < 1000; i++)
        hr_buf_appends(&b, "]}");
    check_decode_error(L, b.data,
                       "invalid JSON at line 1, column 3001 (byte 3000): nesting too deep (more "
                       "than 1000 levels)");
    /* 1000 levels are fine both ways. */
    hr_buf_reset(&b);
    for (int i = 0; i < 1000; i++)
        hr_buf_appendc(&b, '[');
    for (int i = 0; i < 1000; i++)
        hr_buf_appendc(&b, ']');
    check_roundtrip(L, b.data, b.data);
    hr_buf_free(&b);

    run(L, "local t = {} local r = t for i = 1, 2000 do t.x = {} t = t.x end return r");
    char *out = encode_top(L, err, sizeof err);
    CHECK(out == NULL);
    free(out);
    const char want[] = "nesting deeper than 1000 levels at .x.x.x.x";
    CHECK(strncmp(err, want, sizeof want - 1) == 0);
    lua_setglobal(L, "bad");
    run(L, "return select(2, pcall(json.encode, bad))");
    CHECK(strncmp(lua_tostring(L, -1), "json.encode: nesting deeper", 27) == 0);
    lua_pop(L, 1);
    (void)err;
}

/* Large containers (more than fit in the decoder's first tape, and thousands of
 * elements): every element arrives, in order, and a repeated key keeps its last value. */
static void test_large(lua_State *L)
{
    hr_buf_t in = HR_BUF_INIT;
    hr_buf_appendc(&in, '[');
    for (int i = 0; i < 2000; i++)
        hr_buf_printf(&in, "%s%d", i ? "," : "", i * 7);
    hr_buf_appendc(&in, ']');
    check_roundtrip(L, in.data, in.data);

    hr_buf_reset(&in);
    hr_buf_appendc(&in, '[');
    for (int i = 0; i < 1200; i++)
        hr_buf_printf(&in, "%s[%d,{\"k\":\"v%d\"}]", i ? "," : "", i, i);
    hr_buf_appendc(&in, ']');
    check_roundtrip(L, in.data, in.data);

    hr_buf_reset(&in);
    hr_buf_appendc(&in, '{');
    for (int i = 0; i < 1500; i++)
        hr_buf_printf(&in, "%s\"k%04d\":%d", i ? "," : "", i, i);
    hr_buf_appendc(&in, '}');
    check_roundtrip(L, in.data, in.data);

    /* k0000 first, then 700 keys (past one move), then k0000 and k0001 again */
    hr_buf_reset(&in);
    hr_buf_appends(&in, "{\"k0000\":\"first\",\"k0001\":1");
    for (int i = 2; i < 700; i++)
        hr_buf_printf(&in, ",\"k%04d\":%d", i, i);
    hr_buf_appends(&in, ",\"k0000\":\"last\",\"k0001\":2}");
    char err[256];
    CHECK_INT_EQ(decode(L, in.data, err, sizeof err), 0);
    lua_setglobal(L, "big");
    check_lua_str(L,
                  "local n = 0 for _ in pairs(big) do n = n + 1 end "
                  "return big.k0000 .. ' ' .. big.k0001 .. ' ' .. big.k0699 .. ' ' .. n",
                  "last 2 699 700");
    CHECK_INT_EQ(decode(L, "{\"a\":1,\"b\":[],\"a\":2}", err, sizeof err), 0);
    lua_setglobal(L, "dup");
    check_lua_str(L, "return tostring(dup.a)", "2");
    hr_buf_free(&in);
}

/* Mutated fixtures: never a crash (run under ASan) or an internal error; whatever decodes
 * encodes (unless it holds inf, from a number like 1e999). */
static void test_mutations(lua_State *L)
{
    const char *root = getenv("HR_FIXTURES");
    if (!root) root = "tests/fixtures";
    char path[1024];
    snprintf(path, sizeof path, "%s/variants/unicode-names.json", root);
    size_t n;
    char *src = hr_read_file(path, &n);
    CHECK(src != NULL && n > 0);
    if (!src) return;
    static const char set[] = "{}[],:\"\\0123456789.eE-+ tfnu\x01\n";
    uint64_t r = 88172645463325252u;
    char *b = malloc(n);
    int ok = 0;
    for (int it = 0; it < 3000; it++) {
        memcpy(b, src, n);
        size_t len = n;
        for (int k = 0; k < 2; k++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            size_t p = (size_t)(r % len);
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            if (r % 8 == 0)
                len = p + 1;
            else
                b[p] = set[r % (sizeof set - 1)];
        }
        char err[256];
        int top = lua_gettop(L);
        if (decode_n(L, b, len, err, sizeof err) == 0) {
            ok++;
            char *out = encode_top(L, err, sizeof err);
            CHECK(out != NULL || strstr(err, "inf") != NULL);
            free(out);
        } else {
            CHECK(strncmp(err, "invalid JSON at line ", 21) == 0);
        }
        lua_settop(L, top);
    }
    CHECK(ok > 0);
    free(b);
    free(src);
}

/* ---------------------------------------------------------------- encoding */

static void test_encode(lua_State *L)
{
    check_lua_str(L, "return json.encode(json.array({}))", "[]");
    check_lua_str(L, "return json.encode(json.array())", "[]");
    check_lua_str(L, "return json.encode({})", "{}");
    check_lua_str(L, "return json.encode({1, 'two', true, false, 2.5})",
                  "[1,\"two\",true,false,2.5]");
    check_lua_str(L, "local t = {} t[3] = 'c' t[1] = 'a' t[2] = 'b' return json.encode(t)",
                  "[\"a\",\"b\",\"c\"]");
    check_lua_str(L, "return json.encode({a = {b = {c = 'd'}}})", "{\"a\":{\"b\":{\"c\":\"d\"}}}");
    check_lua_str(L, "return json.encode('tab\\there \"q\" \\1')",
                  "\"tab\\there \\\"q\\\" \\u0001\"");
    check_lua_str(L, "return json.encode(nil)", "null");
    check_lua_str(L, "local t = json.decode('[1,2,3]') t[3] = nil return json.encode(t)", "[1,2]");
    check_lua_str(L, "local t = json.decode('[]') t[1] = 'x' return json.encode(t)", "[\"x\"]");
    run(L, "return select(2, pcall(json.encode))");
    CHECK(strstr(lua_tostring(L, -1), "value expected") != NULL);
    lua_pop(L, 1);
    check_lua_str(L, "return tostring(json.array(setmetatable({}, {})) ~= nil)", "true");

    check_encode_error(L, "return {1, 2, x = 3}", "table has both array and string keys at .");
    check_encode_error(L, "return {items = {1, x = 2}}",
                       "table has both array and string keys at .items");
    check_encode_error(L, "return {[1] = 1, [3] = 3}",
                       "sparse array (integer keys are not exactly 1..n) at .");
    check_encode_error(L, "return {a = {[0] = 'z'}}",
                       "sparse array (integer keys are not exactly 1..n) at .a");
    check_encode_error(L, "return {cart = {{price = 1}, {price = 0/0}}}",
                       "cannot encode NaN at .cart[2].price");
    check_encode_error(L, "return {a = math.huge}", "cannot encode inf at .a");
    check_encode_error(L, "return {{}, {-math.huge}}", "cannot encode -inf at .[2][1]");
    check_encode_error(L, "local t = {} t.self = t return t",
                       "cycle (a table contains itself) at .self");
    check_encode_error(L, "local t = {a = {b = {}}} t.a.b.c = t.a return t",
                       "cycle (a table contains itself) at .a.b.c");
    check_encode_error(L, "return {f = print}", "cannot encode a function at .f");
    check_encode_error(L, "return {['a b'] = {io.stdout}}",
                       "cannot encode a userdata at .[\"a b\"][1]");
    check_encode_error(L, "return {co = coroutine.create(print)}", "cannot encode a thread at .co");
    check_encode_error(L, "return print", "cannot encode a function at .");
    check_encode_error(L, "return json.array({1, nil, 3})",
                       "array has a hole (nil; use json.null for null) at .[2]");
    check_encode_error(L, "return {[1.5] = 1}", "table has a non-integer number key at .");
    check_encode_error(L, "return {x = {[true] = 1}}", "table has a boolean key at .x");
    check_encode_error(L, "return {x = {a = 1, [2] = 1}}",
                       "table has both array and string keys at .x");

    /* The same table twice (not a cycle) is fine. */
    check_lua_str(L, "local s = {1} return json.encode({s, s})", "[[1],[1]]");
    /* Relative index, stack kept. */
    lua_pushinteger(L, 5);
    lua_pushliteral(L, "x");
    hr_buf_t b = HR_BUF_INIT;
    char err[128];
    CHECK_INT_EQ(hr_json_encode(L, -2, &b, err, sizeof err), 0);
    CHECK_STR_EQ(b.data, "5");
    CHECK_INT_EQ(lua_gettop(L), 2);
    lua_pop(L, 2);
    hr_buf_free(&b);
}

/* Two states do not share json.null or the array marker. */
/* ---------------------------------------------------------------- lazy decoding */

/* Lazily decode s into the global `name`. */
static void lazy_global(lua_State *L, const char *name, const char *s)
{
    char err[256];
    CHECK_INT_EQ(hr_json_decode_lazy(L, s, strlen(s), NULL, NULL, err, sizeof err), 0);
    lua_setglobal(L, name);
}

/* Every way a rule reads or changes a table sees a lazy one as the plain decoded table:
 * each check runs on a fresh document, so the operation named is the first touch. */
static void test_lazy(void)
{
    lua_State *L = new_state();
    static const char doc[] =
        "{\"s\":\"x\\u00e9\",\"n\":1.5,\"i\":7,\"t\":true,\"z\":null,\"e\":{},\"ea\":[],"
        "\"o\":{\"k\":\"v\",\"deep\":{\"a\":[1,2,{\"b\":\"c\"}]}},\"a\":[3,1,2],"
        "\"w\":[\"p\",\"q\"]}";
    static const struct {
        const char *code, *want;
    } cases[] = {
        {"return b.o.deep.a[3].b", "c"},
        {"return b.s .. ' ' .. b.n .. ' ' .. math.type(b.i) .. ' ' .. tostring(b.t)",
         "x\xc3\xa9 1.5 integer true"},
        {"return tostring(b.z == json.null) .. tostring(b.missing)", "truenil"},
        {"return #b.a .. #b.ea .. #b.w", "302"},
        {"local s = 0 for i, v in ipairs(b.a) do s = s + i * v end return s", "11"},
        {"local n = 0 for k, v in pairs(b) do n = n + 1 end return n", "10"},
        {"local n = 0 for k, v in pairs(b.o.deep) do n = n + #v end return n", "3"},
        {"return tostring(next(b.o) ~= nil) .. tostring(next(b.e) == nil)", "truetrue"},
        {"return tostring(next(b.e)) .. tostring(next(b.ea))", "nilnil"},
        {"return rawget(b.o, 'k') .. rawlen(b.a) .. rawget(b.a, 1)", "v33"},
        {"return rawequal(b.o, b.o) and 'same' or 'not'", "same"},
        {"return tostring(getmetatable(b.a)) .. ' ' .. tostring(getmetatable(b.o))",
         "json.array nil"},
        {"return tostring(getmetatable(b.o.deep.a)) .. tostring(getmetatable(b.e))",
         "json.arraynil"},
        {"return table.concat(b.w, ',') .. ' ' .. select('#', table.unpack(b.a))", "p,q 3"},
        {"table.sort(b.a) return json.encode(b.a)", "[1,2,3]"},
        {"table.insert(b.a, 9) return #b.a .. ' ' .. json.encode(b.a)", "4 [3,1,2,9]"},
        {"b.o.new = 1 return json.encode(b.o)",
         "{\"deep\":{\"a\":[1,2,{\"b\":\"c\"}]},\"k\":\"v\",\"new\":1}"},
        {"rawset(b.o, 'k', 'w') return b.o.k .. tostring(b.o.deep ~= nil)", "wtrue"},
        {"b.ea[1] = 5 return json.encode(b.ea)", "[5]"},
        {"json.array(b.e) return json.encode(b.e) .. json.encode(b.o.deep)",
         "[]{\"a\":[1,2,{\"b\":\"c\"}]}"},
        {"return type(b.o) .. type(b.a) .. type(b.z)", "tabletableuserdata"},
        {"return json.encode(b)",
         "{\"a\":[3,1,2],\"e\":{},\"ea\":[],\"i\":7,\"n\":1.5,\"o\":{\"deep\":{\"a\":[1,2,"
         "{\"b\":\"c\"}]},\"k\":\"v\"},\"s\":\"x\xc3\xa9\",\"t\":true,\"w\":[\"p\",\"q\"],"
         "\"z\":null}"},
        {"local k = {} for key in next, b.o do k[#k + 1] = key end table.sort(k) "
         "return table.concat(k, ',')",
         "deep,k"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        lazy_global(L, "b", doc);
        check_lua_str(L, cases[i].code, cases[i].want);
    }
    /* Untouched, a lazy table is empty and marked; reading a key of an object peeks (it
     * stays lazy, and a container read is lazy in turn and the same table every time, and
     * after a fill); PEEK_MAX peeks, an array read or a fill make it plain. */
    lazy_global(L, "b", doc);
    lua_getglobal(L, "b");
    CHECK(hr_json_is_lazy(L, -1));
    lua_getfield(L, -1, "o"); /* through __index: a peek */
    CHECK(hr_json_is_lazy(L, -2));
    CHECK(hr_json_is_lazy(L, -1));
    lua_getfield(L, -2, "o");
    CHECK(lua_rawequal(L, -1, -2));
    lua_pop(L, 1);
    lua_pushnil(L);
    CHECK(lua_next(L, -2) == 0); /* the C API sees it empty until forced */
    hr_json_force(L, -1);
    CHECK(!hr_json_is_lazy(L, -1));
    CHECK(!lua_getmetatable(L, -1));
    lua_pushnil(L);
    CHECK(lua_next(L, -2) != 0);
    lua_pop(L, 3);        /* the key, the value, o */
    hr_json_force(L, -1); /* b: its o is the table the peek handed out */
    CHECK(!hr_json_is_lazy(L, -1));
    lua_pushliteral(L, "o");
    lua_rawget(L, -2);
    lua_getfield(L, -1, "k");
    CHECK_STR_EQ(lua_tostring(L, -1), "v");
    lua_settop(L, 0);
    lazy_global(L, "b", doc);
    lua_getglobal(L, "b");
    for (int i = 0; i < 8; i++) {
        lua_getfield(L, -1, "i");
        CHECK_INT_EQ(lua_tointeger(L, -1), 7);
        lua_pop(L, 1);
    }
    CHECK(hr_json_is_lazy(L, -1));
    lua_getfield(L, -1, "i"); /* the ninth read fills it */
    CHECK(!hr_json_is_lazy(L, -2));
    lua_settop(L, 0);
    /* Peeks, then changes: a changed or removed container, a removed key, a repeated key,
     * an escaped key, a fill after all of them. */
    static const struct {
        const char *doc, *code, *want;
    } peeks[] = {
        {doc, "local o = b.o o.k = 'w' return json.encode(b)",
         "{\"a\":[3,1,2],\"e\":{},\"ea\":[],\"i\":7,\"n\":1.5,\"o\":{\"deep\":{\"a\":[1,2,"
         "{\"b\":\"c\"}]},\"k\":\"w\"},\"s\":\"x\xc3\xa9\",\"t\":true,\"w\":[\"p\",\"q\"],"
         "\"z\":null}"},
        {doc, "local o = b.o b.o = nil return tostring(b.o) .. o.k .. tostring(b.i)", "nilv7"},
        {doc,
         "local _ = b.i b.i = nil local n = 0 for _ in pairs(b) do n = n + 1 end "
         "return tostring(b.i) .. n",
         "nil9"},
        {doc,
         "local d = b.o.deep local _ = b.s local n = 0 for _ in pairs(b.o) do n = n + 1 end "
         "return tostring(rawequal(d, b.o.deep)) .. n .. b.o.deep.a[3].b",
         "true2c"},
        {"{\"x\":1,\"x\":{\"y\":2},\"x\":3}", "return tostring(b.x)", "3"},
        {"{\"x\":1,\"x\":{\"y\":2}}", "return b.x.y", "2"},
        {"{\"\\u0041\":1,\"A\\\"\":2,\"B\":3}", "return b.A .. b['A\"'] .. b.B", "123"},
        {"{\"n\":12,\"s\":\"\\u00e9\\u4e2d\",\"z\":null}", "return b.n .. b.s .. tostring(b.z)",
         "12\xc3\xa9\xe4\xb8\xadnull"},
        /* scalars read after a peek handed out the container that follows them */
        {"{\"z\":null,\"s\":\"\\u00e9\",\"o\":{\"k\":1}}",
         "local o = b.o return tostring(b.z) .. b.s .. o.k .. tostring(rawequal(o, b.o))",
         "null\xc3\xa9"
         "1true"},
        {"{\"a\":{},\"b\":[]}", "return tostring(b.c) .. tostring(b[1]) .. tostring(b[true])",
         "nilnilnil"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(peeks); i++) {
        lazy_global(L, "b", peeks[i].doc);
        check_lua_str(L, peeks[i].code, peeks[i].want);
    }
    /* hr_json_fill_all after peeks: nothing lazy left, the tables peeks handed out kept. */
    lazy_global(L, "b", doc);
    check_lua_str(L, "kept = b.o.deep return b.o.k", "v");
    lua_getglobal(L, "b");
    hr_json_fill_all(L, -1);
    CHECK(!hr_json_is_lazy(L, -1));
    lua_settop(L, 0);
    check_lua_str(L, "return tostring(rawequal(kept, b.o.deep)) .. #kept.a .. kept.a[3].b",
                  "true3c");
    lua_getglobal(L, "kept");
    CHECK(!hr_json_is_lazy(L, -1));
    lua_pushliteral(L, "a");
    lua_rawget(L, -2);
    CHECK(!hr_json_is_lazy(L, -1));
    lua_rawgeti(L, -1, 3);
    CHECK(!hr_json_is_lazy(L, -1));
    lua_settop(L, 0);
    /* A document that is a scalar is just the value. */
    lazy_global(L, "b", " \"only\" ");
    check_lua_str(L, "return b", "only");

    /* The counts: containers in the text; one fill per table a read fills; none for
     * hr_json_fill_all, which leaves nothing lazy. */
    uint32_t fills = 0, containers = 0;
    char err[256];
    CHECK_INT_EQ(hr_json_decode_lazy(L, doc, strlen(doc), &fills, &containers, err, sizeof err), 0);
    CHECK_INT_EQ(containers, 9);
    lua_setglobal(L, "b");
    check_lua_str(L, "return b.o.deep.a[3].b", "c");
    CHECK_INT_EQ(fills, 5); /* b, o, deep, a, a[3] */
    lua_getglobal(L, "b");
    hr_json_fill_all(L, -1);
    lua_getfield(L, -1, "w");
    CHECK(!hr_json_is_lazy(L, -1));
    lua_pushnil(L);
    CHECK(lua_next(L, -2) != 0); /* filled: the C API sees its elements */
    lua_settop(L, 0);
    CHECK_INT_EQ(fills, 5);
    check_lua_str(L, "return json.encode(b)",
                  "{\"a\":[3,1,2],\"e\":{},\"ea\":[],\"i\":7,\"n\":1.5,\"o\":{\"deep\":{\"a\":[1,2,"
                  "{\"b\":\"c\"}]},\"k\":\"v\"},\"s\":\"x\xc3\xa9\",\"t\":true,\"w\":[\"p\",\"q\"],"
                  "\"z\":null}");
    CHECK_INT_EQ(fills, 5);
    lua_close(L);
}

/* A lazy table outlives the request it came from: its document (a copy of the text) stays
 * with it through garbage collections and later decodes. */
static void test_lazy_lifetime(void)
{
    lua_State *L = new_state();
    char *text = strdup("{\"keep\":{\"x\":[10,{\"y\":\"kept\"}]},\"drop\":[1,2,3]}");
    char err[256];
    CHECK_INT_EQ(hr_json_decode_lazy(L, text, strlen(text), NULL, NULL, err, sizeof err), 0);
    memset(text, ' ', strlen(text)); /* the caller's buffer is gone */
    free(text);
    lua_setglobal(L, "b");
    run(L, "saved = b.keep b = nil return true");
    lua_pop(L, 1);
    for (int i = 0; i < 200; i++) { /* churn: many documents, tables freed and reused */
        hr_buf_t t = HR_BUF_INIT;
        hr_buf_printf(&t, "{\"a\":{\"b\":[%d,{}]},\"c\":[[],[%d]]}", i, i);
        CHECK_INT_EQ(hr_json_decode_lazy(L, t.data, t.len, NULL, NULL, err, sizeof err), 0);
        lua_setglobal(L, "tmp");
        run(L, "return tmp.a.b[1] + tmp.c[2][1]");
        CHECK_INT_EQ(lua_tointeger(L, -1), 2 * i);
        lua_pop(L, 1);
        lua_gc(L, LUA_GCCOLLECT);
        hr_buf_free(&t);
    }
    check_lua_str(L, "return saved.x[2].y .. ' ' .. saved.x[1]", "kept 10");
    check_lua_str(L, "return json.encode(saved)", "{\"x\":[10,{\"y\":\"kept\"}]}");
    lua_close(L);
}

/* hr_json_matches on lazy tables: untouched parts match by their bytes; a touched one is
 * compared value by value; a change is seen. */
static void test_lazy_matches(void)
{
    lua_State *L = new_state();
    static const char doc[] = "{\"a\" : {\"x\":1.10, \"x\":2}, \"b\":[1, 2], \"c\":\"s\"}";
    static const struct {
        const char *code;
        bool same;
    } cases[] = {
        {"return b", true},                             /* nothing read */
        {"local _ = b.c return b", true},               /* the root read, a and b untouched */
        {"local _ = b.b[1] return b", true},            /* b read, unchanged */
        {"local _ = b.a.x return b", true},             /* a peek: a is still its text */
        {"local _ = b.a return b", true},               /* a peek of a container, unchanged */
        {"b.a.x = 2 return b", false},                  /* a change to what a peek handed out */
        {"local _ = #b.b return b", true},              /* b.b filled, unchanged */
        {"for _ in pairs(b.a) do end return b", false}, /* a filled: its repeated key shows */
        {"b.b[2] = 3 return b", false},                 /* a change */
        {"b.b[2] = 2.0 return b", false},               /* a change of kind */
        {"b.extra = 1 return b", false},                /* a key more */
        {"b.c = nil return b", false},                  /* a key fewer */
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        lazy_global(L, "b", doc);
        run(L, cases[i].code);
        CHECK(hr_json_matches(L, -1, doc, strlen(doc)) == cases[i].same);
        if (hr_json_matches(L, -1, doc, strlen(doc)) != cases[i].same)
            fprintf(stderr, "  lazy match case %zu: %s\n", i, cases[i].code);
        lua_pop(L, 1);
    }
    /* -0.0 and 0.0 are equal numbers but not the same JSON: a change */
    lazy_global(L, "b", "{\"z\":-0.0}");
    run(L, "b.z = 0.0 return b");
    CHECK(!hr_json_matches(L, -1, "{\"z\":-0.0}", 11));
    lua_pop(L, 1);
    lazy_global(L, "b", "{\"z\":-0.0}");
    run(L, "local _ = b.z return b");
    CHECK(hr_json_matches(L, -1, "{\"z\":-0.0}", 11));
    lua_pop(L, 1);
    /* the text of another document is compared, not trusted */
    lazy_global(L, "b", doc);
    lua_getglobal(L, "b");
    CHECK(!hr_json_matches(L, -1, "{\"a\":{},\"b\":[1,2],\"c\":\"s\"}", 26));
    lua_pop(L, 1);
    lua_close(L);
}

static void test_states(void)
{
    lua_State *a = new_state(), *b = new_state();
    hr_json_push_null(a);
    hr_json_push_null(b);
    CHECK(lua_topointer(a, -1) != lua_topointer(b, -1));
    lua_pop(a, 1);
    lua_pop(b, 1);
    check_lua_str(b, "return tostring(getmetatable(json.null))", "json.null");
    lua_close(a);
    lua_close(b);
}

int main(void)
{
    for (int lazy = 0; lazy <= 1; lazy++) {
        lazy_mode = lazy;
        lua_State *L = new_state();
        test_fixtures(L);
        test_empty_containers(L);
        test_null(L);
        test_numbers(L);
        test_strings(L);
        test_decode_errors(L);
        test_decode_strict(L);
        test_deep(L);
        test_large(L);
        test_mutations(L);
        test_encode(L);
        CHECK_INT_EQ(lua_gettop(L), 0);
        lua_close(L);
    }
    test_lazy();
    test_lazy_lifetime();
    test_lazy_matches();
    test_states();
    return CHECK_DONE("test_json");
}
