/* JSON <-> Lua, exact both ways. No I/O, no process-wide or per-thread state (the decoder
 * checks the text, then builds Lua values from it, all at once or as they are read; cJSON is
 * not involved).
 * Decoding is RFC 8259 strict (the pass validates as it builds): numbers only per the grammar,
 * within double range (underflow reads as 0 or a denormal), at most 63 characters; no raw bytes
 * below 0x20 in strings, valid UTF-8, \u surrogates only in pairs; whitespace only space, tab, LF,
 * CR; a leading UTF-8 BOM is skipped. Numbers are read from their text so that integers stay
 * Lua integers (exact to 2^63-1) and floats stay floats. A repeated object key keeps its last
 * value.
 *
 * Mapping:
 *   object  <-> table with string keys
 *   array   <-> table with keys 1..n whose metatable is the array marker (json.array(t))
 *   null    <-> json.null (a unique sentinel, kept as a value so keys and array slots survive)
 *   integer <-> Lua integer; other numbers <-> Lua float ("1.0" encodes back as 1.0)
 *   string  <-> Lua string, byte-exact
 * Encoding an unmarked table: empty -> {}; keys exactly 1..n -> array; string keys -> object;
 * anything else (mixed keys, sparse arrays, non-string keys), NaN/inf, a cycle, a function
 * or userdata other than json.null is an error whose message names the path of the offending
 * value, jq style, relative to the encoded root: "." is the root, ".cart[2].price" a key then
 * a Lua (1-based) index, ".[\"a b\"]" a key that is not an identifier
 * ("cannot encode NaN at .cart[2].price"). A marked array is encoded over 1..rawlen (a nil
 * slot is an error, json.null gives null; other keys are ignored). Object keys come out sorted
 * bytewise, so equal values give equal text. Nesting is capped at 1000 levels both ways.
 * Decode errors read "invalid JSON at line L, column C (byte B): <reason>" (line and column
 * from 1, column in UTF-8 characters, byte offset from 0).
 */
#ifndef HR_JSON_H
#define HR_JSON_H

#include <lua.h>

#include "hr/common.h"

/* Decode text into a Lua value and push it. Returns 0, or -1 with a message in err
 * ("invalid JSON at line 3, column 7 (byte 41): unexpected character") and nothing pushed.
 * Nesting deeper than 1000 levels is an error. [-0, +(1|0), m] */
int hr_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen);
/* hr_json_decode, but lazy: the text is validated (the same errors) and copied, and each
 * array or object becomes a Lua table on first use: it starts empty with a metatable whose
 * __index, __newindex, __len and __pairs fill it from the text (its scalars as values, its
 * containers lazy in turn), then drop back to what a decoded table has (the array marker or
 * none). __index of a string key on an object does not fill it for its first 8 reads: it
 * reads the value from the text (a container once, then always that same table). Reads, writes, #,
 * pairs, ipairs and the table library see a plain decoded value. What skips metamethods does not:
 * rule code gets the base functions of hr_json_install_lazy_base(), and C code calls
 * hr_json_force() on a table before it reads it raw (the encoder and hr_json_matches() do it
 * themselves). A table never touched costs no Lua values. *containers (when not NULL) gets the
 * number of arrays and objects in the text; each lazy fill adds 1 to *fills (when not NULL: it must
 * stay valid for as long as the state lives, since tables outlive the call). [-0, +(1|0), m] */
int hr_json_decode_lazy(lua_State *L, const char *text, size_t len, uint32_t *fills,
                        uint32_t *containers, char *err, size_t errlen);
/* If the value at idx is a lazy table not yet filled, fill it (one level: its containers
 * stay lazy). Anything else is left alone. [-0, +0, m] */
void hr_json_force(lua_State *L, int idx);
/* Fill every lazy table reachable from the value at idx, in full (nothing lazy is left):
 * cheaper than filling them one by one when most will be read. [-0, +0, m] */
void hr_json_fill_all(lua_State *L, int idx);
/* True if the value at idx is a lazy table not yet filled. [-0, +0, -] */
bool hr_json_is_lazy(lua_State *L, int idx);
/* Replace next, rawget, rawset, rawlen and getmetatable in the global table with versions
 * that fill a lazy table first (the originals would see it empty, or its lazy metatable).
 * [-0, +0, m] */
void hr_json_install_lazy_base(lua_State *L);
/* True if the value at idx is the value of text (which must be valid JSON: it decoded) and
 * encodes to the same JSON value: the same strings, equal numbers of the same kind (integer or
 * float), json.null for null, arrays marked and of the same length, objects with no metatable,
 * exactly the same keys, none repeated in the text (nor more than 64 keys, or one longer than
 * 40 bytes: those are not compared and give false). A lazy table never filled matches when its
 * own text is byte for byte the text at its place (repeats and all: it is that text's value).
 * Then the text itself can be sent in place of an encoding of the value. [-0, +0, m] */
bool hr_json_matches(lua_State *L, int idx, const char *text, size_t len);

/* Kept for threads that call it before they exit: the decoder holds nothing per thread any
 * more (it did while it decoded through cJSON), so this does nothing. */
void hr_json_thread_done(void);

/* Encode the value at idx as compact JSON appended to out. Returns 0, or -1 with a message
 * in err (out may then hold a partial result: the caller resets it). [-0, +0, m] */
int hr_json_encode(lua_State *L, int idx, hr_buf_t *out, char *err, size_t errlen);

/* What hr_json_encode_max returns when the text would be longer than max. */
#define HR_JSON_TOO_LARGE (-2)

/* hr_json_encode, refusing output longer than max bytes (appended to out): returns
 * HR_JSON_TOO_LARGE with a message once the text grows past it (out then holds up to max
 * plus one value's text). [-0, +0, m] */
int hr_json_encode_max(lua_State *L, int idx, hr_buf_t *out, size_t max, char *err, size_t errlen);

/* Encode the value at idx through the state's reusable buffer and push the text as a Lua
 * string. Returns 0, or -1 / HR_JSON_TOO_LARGE with a message in err and nothing pushed.
 * No Lua code runs meanwhile (the encoder reads tables raw). [-0, +(1|0), m] */
int hr_json_push_encoded(lua_State *L, int idx, size_t max, char *err, size_t errlen);

/* Push the json.null sentinel. [-0, +1, m] */
void hr_json_push_null(lua_State *L);
/* True if the value at idx is json.null. [-0, +0, -] */
bool hr_json_is_null(lua_State *L, int idx);
/* Mark the table at idx as a JSON array. [-0, +0, m] */
void hr_json_mark_array(lua_State *L, int idx);

/* Push the `json` library table: encode(v) -> string (raises on error), decode(s) -> value
 * (raises on error), null, array(t) -> t marked as array. [-0, +1, m] */
int hr_json_open(lua_State *L);

#endif
