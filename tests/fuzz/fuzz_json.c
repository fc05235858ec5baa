/* Fuzz the JSON bridge: decode arbitrary text into Lua; when it decodes, encode it, decode
 * that and encode again: the two encodings must be equal (a round trip is a fixed point),
 * and the first must decode (encode only writes JSON). The one documented way a decoded
 * value cannot be encoded is a number that overflows to inf ("1e999"). The lazy decode must
 * agree: it decodes exactly what the eager one does, untouched it matches its own text, and
 * it encodes to the same text; read key by key (peeks, then fills), every value is the eager
 * one's, and it still encodes to the same text. */
#include <lauxlib.h>
#include <lualib.h>

#include "fuzz.h"
#include "hr/json.h"

static lua_State *L;

/* The value at p (a lazy decode, read through __index) equals the value at e (an eager decode
 * of the same text): the same scalars, numbers of the same kind, tables of the same keys. */
static void same_value(int e, int p, int depth)
{
    FUZZ_CHECK(lua_type(L, e) == lua_type(L, p));
    if (lua_type(L, e) != LUA_TTABLE) {
        FUZZ_CHECK(lua_rawequal(L, e, p)); /* json.null is one value per state */
        FUZZ_CHECK(lua_isinteger(L, e) == lua_isinteger(L, p));
        return;
    }
    if (depth > 50) return;
    lua_checkstack(L, 8);
    lua_pushnil(L);
    while (lua_next(L, e)) { /* key at -2, eager value at -1 */
        lua_pushvalue(L, -2);
        lua_gettable(L, p); /* a peek, or a fill */
        same_value(lua_gettop(L) - 1, lua_gettop(L), depth + 1);
        lua_pop(L, 2);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = luaL_newstate();
    FUZZ_CHECK(L != NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    lua_settop(L, 0);
    if (hr_json_decode(L, (const char *)data, size, err, sizeof err) != 0) {
        FUZZ_CHECK(lua_gettop(L) == 0); /* nothing pushed on error */
        FUZZ_CHECK(strncmp(err, "invalid JSON at line ", 21) == 0);
        char err2[256];
        FUZZ_CHECK(
            hr_json_decode_lazy(L, (const char *)data, size, NULL, NULL, err2, sizeof err2) != 0);
        FUZZ_CHECK(strcmp(err, err2) == 0 && lua_gettop(L) == 0);
        return 0;
    }
    FUZZ_CHECK(lua_gettop(L) == 1);
    hr_buf_t a = HR_BUF_INIT, b = HR_BUF_INIT;
    if (hr_json_encode(L, 1, &a, err, sizeof err) != 0) {
        if (!strstr(err, "cannot encode inf") && !strstr(err, "cannot encode -inf")) {
            fprintf(stderr, "decoded but cannot encode: %s\n", err);
            abort();
        }
        goto done;
    }
    FUZZ_CHECK(lua_gettop(L) == 1);
    if (hr_json_decode(L, a.data, a.len, err, sizeof err) != 0) {
        fprintf(stderr, "own output does not decode: %s\n%.*s\n", err, (int)a.len, a.data);
        abort();
    }
    if (hr_json_encode(L, 2, &b, err, sizeof err) != 0) {
        fprintf(stderr, "second encode failed: %s\n", err);
        abort();
    }
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
        fprintf(stderr, "round trip differs:\n1: %.*s\n2: %.*s\n", (int)a.len, a.data, (int)b.len,
                b.data);
        abort();
    }
    lua_settop(L, 0);
    FUZZ_CHECK(hr_json_decode_lazy(L, (const char *)data, size, NULL, NULL, err, sizeof err) == 0);
    FUZZ_CHECK(hr_json_matches(L, 1, (const char *)data, size));
    hr_buf_reset(&b);
    FUZZ_CHECK(hr_json_encode(L, 1, &b, err, sizeof err) == 0);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
        fprintf(stderr, "lazy differs:\n1: %.*s\n2: %.*s\n", (int)a.len, a.data, (int)b.len,
                b.data);
        abort();
    }
    lua_settop(L, 0);
    FUZZ_CHECK(hr_json_decode(L, (const char *)data, size, err, sizeof err) == 0);
    FUZZ_CHECK(hr_json_decode_lazy(L, (const char *)data, size, NULL, NULL, err, sizeof err) == 0);
    same_value(1, 2, 0);
    hr_buf_reset(&b);
    FUZZ_CHECK(hr_json_encode(L, 2, &b, err, sizeof err) == 0);
    FUZZ_CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
done:
    hr_buf_free(&a);
    hr_buf_free(&b);
    lua_settop(L, 0);
    return 0;
}
