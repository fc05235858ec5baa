/* Text encodings for rules (src/lua_text.c): the globals url (encode, decode, query), uuid
 * (v4, v7) and xml (escape), for legacy formats a rule builds by hand.
 *
 * url.encode keeps RFC 3986's unreserved characters (A-Z a-z 0-9 - . _ ~) and writes every
 * other byte as %XX (upper-case hex), so UTF-8 text becomes its percent-encoded bytes;
 * url.decode reverses any %XX (either case) and leaves '+' alone; url.query builds an
 * application/x-www-form-urlencoded body from a table. uuid.v4 is random (OpenSSL's RAND_bytes);
 * uuid.v7 puts the script's clock in its first 48 bits (RFC 9562) and keeps ids made in the
 * same millisecond in order. Bad input is a Lua error naming the function and the problem, as
 * in src/lua_crypto.c, whose charging these functions share. */
#ifndef HR_LUA_TEXT_H
#define HR_LUA_TEXT_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/common.h"
#include "hr/lua_time.h"
#include "hr/pattern.h"

#define HR_UUID_LEN 37 /* 36 characters and the NUL */

/* Percent-encode s (n bytes) into out, which holds 3 n bytes. Returns the length written. */
size_t hr_url_encode(const char *s, size_t n, char *out);
/* Decode %XX sequences of s into out (n bytes room). Returns 0 and the length in *len, or -1
 * with err naming the offset of a '%' not followed by two hex digits. */
int hr_url_decode(const char *s, size_t n, char *out, size_t *len, char *err, size_t errlen);
/* Write the 16 bytes b as a lower-case UUID string. */
void hr_uuid_format(const unsigned char b[16], char out[HR_UUID_LEN]);
/* Make a version 7 UUID of ms (48 bits), a 12-bit sequence and 62 random bits from rnd. */
void hr_uuid_v7(uint64_t ms, unsigned seq, const unsigned char rnd[8], unsigned char b[16]);
/* Make a version 4 UUID from 16 random bytes (its version and variant bits set). */
void hr_uuid_v4(const unsigned char rnd[16], unsigned char b[16]);
/* Append s with & < > " ' as XML entities. Returns 0, or -1 with err when s holds a byte
 * XML 1.0 cannot carry (a control character other than tab, LF, CR, or invalid UTF-8). */
int hr_xml_escape(const char *s, size_t n, hr_buf_t *out, char *err, size_t errlen);

/* Set the globals url, uuid and xml of L. uuid.v7 reads clock; charge as in
 * hr_lua_crypto_install. [-0, +0, m] */
void hr_lua_text_install(lua_State *L, hr_lua_clock_fn clock, hr_pattern_charge_fn charge);

#endif
