/* Crypto and encodings for rules: crypto.sha256/hmac_sha256, hex and base64 as Lua functions,
 * charged to the running script by input length, results in Lua memory (see
 * include/hr/lua_crypto.h). */
#include "hr/lua_crypto.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdint.h>

#include "hr/crypto.h"

void hr_lua_charge_bytes(lua_State *L, size_t n)
{
    const hr_pattern_charge_fn *slot = lua_touserdata(L, lua_upvalueindex(1));
    if (!slot || !*slot) return;
    size_t steps = 1 + n / HR_LUA_CRYPTO_BYTES_PER_STEP;
    (*slot)(L, steps > UINT_MAX ? UINT_MAX : (unsigned)steps);
}

#define charge hr_lua_charge_bytes

/* crypto.sha256(msg) -> the 32-byte digest. [-0, +1, v] */
static int l_sha256(lua_State *L)
{
    size_t n;
    const char *msg = luaL_checklstring(L, 1, &n);
    charge(L, n);
    unsigned char d[HR_SHA256_LEN];
    hr_sha256(msg, n, d);
    lua_pushlstring(L, (const char *)d, sizeof d);
    return 1;
}

/* crypto.hmac_sha256(key, msg) -> the 32-byte HMAC. [-0, +1, v] */
static int l_hmac_sha256(lua_State *L)
{
    size_t klen, n;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *msg = luaL_checklstring(L, 2, &n);
    charge(L, klen + n);
    unsigned char d[HR_SHA256_LEN];
    hr_hmac_sha256(key, klen, msg, n, d);
    lua_pushlstring(L, (const char *)d, sizeof d);
    return 1;
}

#define HEX (-1) /* the flavour of hex.encode/decode; else HR_B64_* flags */

/* The encoding of an encode/decode closure: upvalue 2, HEX or base64 flags (upvalue 3 is
 * the name its errors give). [-0, +0, -] */
static int flavour(lua_State *L)
{
    return (int)lua_tointeger(L, lua_upvalueindex(2));
}

/* hex.encode(s), base64.encode(s), base64.url_encode(s). [-0, +1, v] */
static int l_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    int f = flavour(L);
    if (n > SIZE_MAX / 4 - 3)
        return luaL_error(L, "%s: input too large", lua_tostring(L, lua_upvalueindex(3)));
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, f == HEX ? 2 * n : hr_base64_encoded_len(n, f));
    luaL_pushresultsize(&b, f == HEX ? hr_hex_encode(s, n, out) : hr_base64_encode(s, n, out, f));
    return 1;
}

/* hex.decode(s), base64.decode(s), base64.url_decode(s): the bytes, or raise naming the
 * problem (an odd length, a character outside the alphabet, bad padding). [-0, +1, v] */
static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    int f = flavour(L);
    luaL_Buffer b;
    unsigned char *out =
        (unsigned char *)luaL_buffinitsize(L, &b, f == HEX ? n / 2 : hr_base64_decoded_max(n));
    size_t len;
    char err[128];
    int rc = f == HEX ? hr_hex_decode(s, n, out, &len, err, sizeof err)
                      : hr_base64_decode(s, n, out, &len, f, err, sizeof err);
    if (rc != 0) return luaL_error(L, "%s: %s", lua_tostring(L, lua_upvalueindex(3)), err);
    luaL_pushresultsize(&b, len);
    return 1;
}

/* Set t[name] (t at the top) to fn closed over the charge slot at slot and, for the
 * encodings, its flavour and the name its errors give. [-0, +0, m] */
static void set_fn(lua_State *L, int slot, const char *name, lua_CFunction fn, int flags,
                   const char *errname)
{
    lua_pushvalue(L, slot);
    int nup = 1;
    if (errname) {
        lua_pushinteger(L, flags);
        lua_pushstring(L, errname);
        nup = 3;
    }
    lua_pushcclosure(L, fn, nup);
    lua_setfield(L, -2, name);
}

void hr_lua_crypto_install(lua_State *L, hr_pattern_charge_fn charge_fn)
{
    /* A full userdata holds the function pointer (it does not fit a light userdata in ISO C);
     * every closure shares it, as hr_pattern_install does. */
    hr_pattern_charge_fn *slot = lua_newuserdatauv(L, sizeof *slot, 0);
    *slot = charge_fn;
    int s = lua_gettop(L);
    lua_createtable(L, 0, 2);
    set_fn(L, s, "sha256", l_sha256, 0, NULL);
    set_fn(L, s, "hmac_sha256", l_hmac_sha256, 0, NULL);
    lua_setglobal(L, "crypto");
    lua_createtable(L, 0, 2);
    set_fn(L, s, "encode", l_encode, HEX, "hex.encode");
    set_fn(L, s, "decode", l_decode, HEX, "hex.decode");
    lua_setglobal(L, "hex");
    lua_createtable(L, 0, 4);
    set_fn(L, s, "encode", l_encode, HR_B64_STD, "base64.encode");
    set_fn(L, s, "decode", l_decode, HR_B64_STD, "base64.decode");
    set_fn(L, s, "url_encode", l_encode, HR_B64_URL | HR_B64_NOPAD, "base64.url_encode");
    set_fn(L, s, "url_decode", l_decode, HR_B64_URL | HR_B64_NOPAD, "base64.url_decode");
    lua_setglobal(L, "base64");
    lua_pop(L, 1); /* slot */
}
