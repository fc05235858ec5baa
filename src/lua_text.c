/* Text encodings for rules: url.encode/decode/query, uuid.v4/v7, xml.escape (see
 * include/hr/lua_text.h). */
#include "hr/lua_text.h"

#include <lauxlib.h>
#include <limits.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/json.h"
#include "hr/lua_crypto.h"

/* ---------------------------------------------------------------- pure */

static const char HEXU[] = "0123456789ABCDEF";

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

size_t hr_url_encode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c)) {
            out[o++] = (char)c;
        } else {
            out[o++] = '%';
            out[o++] = HEXU[c >> 4];
            out[o++] = HEXU[c & 15];
        }
    }
    return o;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hr_url_decode(const char *s, size_t n, char *out, size_t *len, char *err, size_t errlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 1 < n ? hexval(s[i + 1]) : -1, lo = i + 2 < n ? hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            snprintf(err, errlen, "'%%' not followed by two hex digits at offset %zu", i);
            return -1;
        }
        out[o++] = (char)(hi << 4 | lo);
        i += 2;
    }
    *len = o;
    return 0;
}

void hr_uuid_format(const unsigned char b[16], char out[HR_UUID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

void hr_uuid_v7(uint64_t ms, unsigned seq, const unsigned char rnd[8], unsigned char b[16])
{
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | ((seq >> 8) & 0x0f)); /* version 7, rand_a = seq */
    b[7] = (unsigned char)seq;
    memcpy(b + 8, rnd, 8);
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f)); /* variant 10 */
}

void hr_uuid_v4(const unsigned char rnd[16], unsigned char b[16])
{
    memcpy(b, rnd, 16);
    b[6] = (unsigned char)(0x40 | (b[6] & 0x0f));
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
}

int hr_xml_escape(const char *s, size_t n, hr_buf_t *out, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '&': hr_buf_appends(out, "&amp;"); continue;
        case '<': hr_buf_appends(out, "&lt;"); continue;
        case '>': hr_buf_appends(out, "&gt;"); continue;
        case '"': hr_buf_appends(out, "&quot;"); continue;
        case '\'': hr_buf_appends(out, "&apos;"); continue;
        default: break;
        }
        if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            snprintf(err, errlen, "control character 0x%02X at offset %zu cannot appear in XML", c,
                     i);
            return -1;
        }
        if (c < 0x80) {
            hr_buf_appendc(out, (char)c);
            continue;
        }
        size_t k = hr_utf8_len((const unsigned char *)s + i, n - i);
        if (!k) {
            snprintf(err, errlen, "invalid UTF-8 at offset %zu", i);
            return -1;
        }
        hr_buf_append(out, s + i, k);
        i += k - 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- Lua */

/* The slot every closure shares: clock, charge, and uuid.v7's last time and sequence. */
typedef struct {
    hr_pattern_charge_fn charge_fn; /* first: hr_lua_charge_bytes reads it */
    hr_lua_clock_fn clock;
    int64_t v7_ms;   /* the time of the last v7 id */
    unsigned v7_seq; /* its 12-bit sequence */
} text_slot_t;

static text_slot_t *slot_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

#define charge hr_lua_charge_bytes /* the slot starts with the charge function */

/* url.encode(s) [-0, +1, v] */
static int l_url_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    if (n > SIZE_MAX / 3) return luaL_error(L, "url.encode: input too large");
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, 3 * n);
    luaL_pushresultsize(&b, hr_url_encode(s, n, out));
    return 1;
}

/* url.decode(s) [-0, +1, v] */
static int l_url_decode(lua_State *L)
{
    size_t n, len;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, n);
    char err[128];
    if (hr_url_decode(s, n, out, &len, err, sizeof err) != 0)
        return luaL_error(L, "url.decode: %s", err);
    luaL_pushresultsize(&b, len);
    return 1;
}

/* Push s percent-encoded. [-0, +1, m] */
static void push_encoded(lua_State *L, const char *s, size_t n)
{
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, 3 * n);
    luaL_pushresultsize(&b, hr_url_encode(s, n, out));
}

/* Append "key=value" (percent-encoded) to the array at parts; the value is at the top and is
 * popped. [-1, +0, v] */
static void add_pair(lua_State *L, int parts, const char *k)
{
    int t = lua_type(L, -1);
    if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN)
        luaL_error(L, "url.query: value of '%s' must be a string, number or boolean, got %s", k,
                   luaL_typename(L, -1));
    if (t == LUA_TBOOLEAN) {
        lua_pushstring(L, lua_toboolean(L, -1) ? "true" : "false");
        lua_replace(L, -2);
    }
    size_t kn = strlen(k), vn;
    const char *v = luaL_tolstring(L, -1, &vn); /* numbers as tostring writes them */
    charge(L, kn + vn);
    push_encoded(L, k, kn);
    lua_pushliteral(L, "=");
    push_encoded(L, v, vn);
    lua_concat(L, 3);
    lua_rawseti(L, parts, (lua_Integer)lua_rawlen(L, parts) + 1);
    lua_pop(L, 2); /* the value and its string */
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* url.query(t) -> "a=1&b=x%20y": keys sorted, an array value repeats its key.
 * [-0, +1, v] */
static int l_url_query(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    hr_json_force(L, 1); /* read raw below */
    lua_newtable(L);     /* 2: the keys, which keep the strings keys[] points to alive */
    lua_newtable(L);     /* 3: the "k=v" parts */
    lua_Integer nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "url.query: keys must be strings, got %s", luaL_typename(L, -1));
        lua_pushvalue(L, -1);
        lua_rawseti(L, 2, ++nkeys);
    }
    const char **keys = lua_newuserdatauv(L, (size_t)nkeys * sizeof *keys + 1, 0); /* 4 */
    for (lua_Integer i = 0; i < nkeys; i++) {
        lua_rawgeti(L, 2, i + 1);
        keys[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    qsort(keys, (size_t)nkeys, sizeof *keys, cmp_str);
    for (lua_Integer i = 0; i < nkeys; i++) {
        lua_getfield(L, 1, keys[i]);
        if (lua_type(L, -1) == LUA_TTABLE) {
            hr_json_force(L, -1);
            lua_Integer len = (lua_Integer)lua_rawlen(L, -1);
            for (lua_Integer j = 1; j <= len; j++) {
                lua_rawgeti(L, -1, j);
                add_pair(L, 3, keys[i]);
            }
        } else {
            lua_pushvalue(L, -1);
            add_pair(L, 3, keys[i]);
        }
        lua_pop(L, 1);
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer nparts = (lua_Integer)lua_rawlen(L, 3);
    for (lua_Integer i = 1; i <= nparts; i++) {
        if (i > 1) luaL_addchar(&b, '&');
        lua_rawgeti(L, 3, i);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    return 1;
}

/* uuid.v4() [-0, +1, v] */
static int l_uuid_v4(lua_State *L)
{
    charge(L, 16);
    unsigned char r[16], b[16];
    if (RAND_bytes(r, sizeof r) != 1) return luaL_error(L, "uuid.v4: no random bytes");
    hr_uuid_v4(r, b);
    char s[HR_UUID_LEN];
    hr_uuid_format(b, s);
    lua_pushstring(L, s);
    return 1;
}

/* uuid.v7(): the clock's ms, then a 12-bit sequence that goes up within one ms (random
 * start in its lower half), then random bits. [-0, +1, v] */
static int l_uuid_v7(lua_State *L)
{
    charge(L, 16);
    text_slot_t *s = slot_of(L);
    int64_t ms = s->clock ? s->clock(L) : (int64_t)hr_wall_ms();
    unsigned char r[10], b[16];
    if (RAND_bytes(r, sizeof r) != 1) return luaL_error(L, "uuid.v7: no random bytes");
    if (ms <= s->v7_ms && s->v7_seq < 0xfff) {
        ms = s->v7_ms; /* a clock that went back, or the same ms: keep the order */
        s->v7_seq++;
    } else {
        if (ms <= s->v7_ms) ms = s->v7_ms + 1; /* sequence exhausted: borrow the next ms */
        s->v7_seq = ((unsigned)r[8] << 8 | r[9]) & 0x7ff;
    }
    s->v7_ms = ms;
    hr_uuid_v7((uint64_t)ms, s->v7_seq, r, b);
    char out[HR_UUID_LEN];
    hr_uuid_format(b, out);
    lua_pushstring(L, out);
    return 1;
}

/* xml.escape(s) [-0, +1, v] */
static int l_xml_escape(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    hr_buf_t out = HR_BUF_INIT;
    char err[128];
    if (hr_xml_escape(s, n, &out, err, sizeof err) != 0) {
        hr_buf_free(&out);
        return luaL_error(L, "xml.escape: %s", err);
    }
    /* The C copy is short-lived; the result is Lua memory, under the state's cap. */
    lua_pushlstring(L, out.data ? out.data : "", out.len);
    hr_buf_free(&out);
    return 1;
}

/* t[name] = fn closed over the slot at idx. [-0, +0, m] */
static void set_fn(lua_State *L, int slot, const char *name, lua_CFunction fn)
{
    lua_pushvalue(L, slot);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
}

void hr_lua_text_install(lua_State *L, hr_lua_clock_fn clock, hr_pattern_charge_fn charge_fn)
{
    text_slot_t *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->clock = clock;
    s->charge_fn = charge_fn;
    s->v7_ms = INT64_MIN;
    int slot = lua_gettop(L);
    lua_createtable(L, 0, 3);
    set_fn(L, slot, "encode", l_url_encode);
    set_fn(L, slot, "decode", l_url_decode);
    set_fn(L, slot, "query", l_url_query);
    lua_setglobal(L, "url");
    lua_createtable(L, 0, 2);
    set_fn(L, slot, "v4", l_uuid_v4);
    set_fn(L, slot, "v7", l_uuid_v7);
    lua_setglobal(L, "uuid");
    lua_createtable(L, 0, 1);
    set_fn(L, slot, "escape", l_xml_escape);
    lua_setglobal(L, "xml");
    lua_pop(L, 1); /* slot */
}
