/* Crypto and encodings for rules (src/lua_crypto.c): the globals crypto (sha256, hmac_sha256:
 * raw 32-byte digests), hex (encode, decode) and base64 (encode, decode: the standard alphabet
 * with padding; url_encode, url_decode: the URL-safe one, written without padding, read with
 * or without it), over src/crypto.c.
 *
 * Every function charges its work to the running script before doing it: 1 step plus one per
 * HR_LUA_CRYPTO_BYTES_PER_STEP bytes of input, through the same kind of charge function as
 * pattern matching (hr/pattern.h), which may raise to stop the rule. Results are built in
 * memory of the Lua state (a luaL_Buffer), so its allocator's cap holds. Bad input (a digit
 * that is not hex, bad base64 padding) is a Lua error naming the function and the problem:
 * "hex.decode: odd number of hex digits (3)". */
#ifndef HR_LUA_CRYPTO_H
#define HR_LUA_CRYPTO_H

#include <lua.h>
#include <stddef.h>

#include "hr/pattern.h"

#define HR_LUA_CRYPTO_BYTES_PER_STEP 8 /* input bytes charged as one instruction */

/* Charge the work of n input bytes to the running script, before the work is done, for a C
 * function whose upvalue 1 is a full userdata starting with the charge function (NULL: free):
 * the closures of this file, src/lua_time.c and src/lua_text.c. May raise. [-0, +0, v] */
void hr_lua_charge_bytes(lua_State *L, size_t n);

/* Set the globals crypto, hex and base64 of L, whose functions report to charge (NULL: free).
 * [-0, +0, m] */
void hr_lua_crypto_install(lua_State *L, hr_pattern_charge_fn charge);

#endif
