/* JSON <-> Lua, exact both ways (see include/hr/json.h for the mapping).
 *
 * Decoding: validate() checks the text per RFC 8259 (strict where cJSON was lax: numbers out
 * of range, leading zeros, raw control bytes, whitespace other than the four, bad \u hex),
 * names the first error exactly, and records a tape of the containers (start, end, element
 * count, the next container after each) and of the strings (length, escape bit). fill() then
 * makes one table at its exact size from the tape, its containers filled in turn (eager) or
 * left as empty lazy tables that fill themselves on first use (hr_json_decode_lazy: a rule
 * pays for the parts of a body it reads). See "lazy tables" below.
 *
 * Encoding: straight into an hr_buf_t, no intermediate tree. The path of the value being
 * encoded lives in a chain of frames on the C stack and is only formatted on error.
 *
 * Per-state data lives in the Lua registry under the addresses of the constants below; there
 * is no process-wide mutable state. */
#include "hr/json.h"

#include <cjson/cJSON.h>
#include <lauxlib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "hr/lua_budget.h"

/* Deepest nesting of arrays and objects accepted both ways (cJSON's own limit). */
#define HR_JSON_MAX_DEPTH CJSON_NESTING_LIMIT

/* The per-state encode buffer is dropped after use once it grew beyond this. */
#define HR_JSON_KEEP_BUF (64 * 1024)

/* Registry keys: only their addresses matter. */
static const char null_key = 'n';    /* json.null sentinel (a full userdata) */
static const char array_key = 'a';   /* metatable that marks a table as a JSON array */
static const char buf_key = 'b';     /* userdata holding the per-state encode buffer */
static const char scratch_key = 's'; /* userdata holding the lazy fill's string buffer */

/* ================================================================ per-state values */

/* __tostring of json.null: returns "null". [-0, +1, m] */
static int null_tostring(lua_State *L)
{
    lua_pushliteral(L, "null");
    return 1;
}

/* __gc of the encode buffer userdata: frees its memory. [-0, +0, -] */
static int buf_gc(lua_State *L)
{
    hr_buf_t *b = lua_touserdata(L, 1);
    if (b) hr_buf_free(b);
    return 0;
}

void hr_json_push_null(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key) != LUA_TNIL) return;
    lua_pop(L, 1); /* drop nil */
    lua_newuserdatauv(L, 0, 0);
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, null_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "json.null");
    lua_setfield(L, -2, "__name");
    lua_pushliteral(L, "json.null"); /* getmetatable() sees this; setmetatable() refuses */
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &null_key);
}

/* Push the array-marker metatable, creating it on first use. [-0, +1, m] */
static void push_array_mt(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &array_key) != LUA_TNIL) return;
    lua_pop(L, 1); /* drop nil */
    lua_createtable(L, 0, 2);
    lua_pushliteral(L, "array");
    lua_setfield(L, -2, "__jsontype");
    lua_pushliteral(L, "json.array"); /* getmetatable() sees this: the marker stays unchanged */
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &array_key);
}

/* Return the per-state buffer under key (the encode buffer, the lazy fill's scratch),
 * creating it on first use. The buffer belongs to a userdata in the registry whose __gc
 * frees it, so a Lua error raised while it holds data leaks nothing. [-0, +0, m] */
static hr_buf_t *state_buf(lua_State *L, const char *key)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, key) == LUA_TUSERDATA) {
        hr_buf_t *b = lua_touserdata(L, -1);
        lua_pop(L, 1); /* the registry keeps it alive */
        return b;
    }
    lua_pop(L, 1); /* drop nil */
    hr_buf_t *b = lua_newuserdatauv(L, sizeof *b, 0);
    hr_buf_init(b);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, key);
    return b;
}

bool hr_json_is_null(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TUSERDATA) return false;
    idx = lua_absindex(L, idx);
    lua_rawgetp(L, LUA_REGISTRYINDEX, &null_key);
    bool is = lua_rawequal(L, idx, -1);
    lua_pop(L, 1); /* drop the sentinel */
    return is;
}

void hr_json_mark_array(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    push_array_mt(L);
    lua_setmetatable(L, idx);
}

/* ================================================================ decoding: the strict scan */

/* Error and per-token state of one decode. */
typedef struct {
    bool esc;      /* the string scan_string() just passed holds an escape */
    size_t pos;    /* on error, the offending byte (len: the end of the input) */
    char what[96]; /* on error, the reason, or "" for an unexpected byte or end of input */
} scan_t;

/* Longest number token accepted: cJSON reads at most this many bytes of a number. */
#define HR_JSON_MAX_NUMBER 63

/* True for the bytes a number token runs over. */
static inline bool is_num_byte(unsigned char c)
{
    return (c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-';
}

static inline bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Read 4 hex digits at p (p + 4 <= end). Returns the value, or -1 if they are not hex. */
static long hex4(const char *p, const char *end)
{
    if (end - p < 4) return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Fail the scan at pos with the reason fmt (empty: an unexpected byte or end of input, said
 * by scan_message()). Returns false. */
static bool scan_fail(scan_t *sc, size_t pos, const char *fmt, ...) HR_PRINTF(3, 4);
static bool scan_fail(scan_t *sc, size_t pos, const char *fmt, ...)
{
    sc->pos = pos;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sc->what, sizeof sc->what, fmt, ap);
    va_end(ap);
    return false;
}

/* 1 for the bytes a string holds as they are: ASCII from 0x20 but '"' and '\\'. */
static const unsigned char plain[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* Nonzero if one of the eight bytes in x is not plain string content: one a JSON string
 * escapes (hr_swar_json_escape), or 0x80 and up. */
static inline uint64_t swar_special(uint64_t x)
{
    return hr_swar_json_escape(x) | (x & 0x8080808080808080ULL);
}

/* The first byte from p on (p < len) that is not plain string content, or len: eight bytes
 * a step while none needs a look, the first flagged one found by its trailing zeros (the
 * lowest flag of swar_special is exact; on a big-endian machine the byte loop finds it). */
static inline size_t skip_plain(const unsigned char *u, size_t p, size_t len)
{
#ifdef __SSE2__
    /* Sixteen bytes a step: a quote, a backslash, or a byte below 0x20 as a signed byte,
     * which is a control byte or one with its top bit set. */
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'),
                  space = _mm_set1_epi8(0x20);
    while (p + 16 <= len) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(u + p));
        __m128i m = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(x, quote), _mm_cmpeq_epi8(x, bslash)),
                                 _mm_cmplt_epi8(x, space));
        unsigned bits = (unsigned)_mm_movemask_epi8(m);
        if (bits) return p + (size_t)__builtin_ctz(bits);
        p += 16;
    }
#endif
    while (p + 8 <= len) {
        uint64_t x;
        memcpy(&x, u + p, 8);
        uint64_t m = swar_special(x);
        if (m) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return p + ((size_t)__builtin_ctzll(m) >> 3);
#else
            break;
#endif
        }
        p += 8;
    }
    while (p < len && plain[u[p]])
        p++;
    return p;
}

/* Check the string whose opening quote is at *i, per RFC 8259 section 7: no raw bytes below
 * 0x20, only the escapes \" \\ \/ \b \f \n \r \t \uXXXX, a \u escape of a UTF-16 surrogate
 * only as a high-low pair (a lone surrogate has no UTF-8 form: rejected, as RFC 8259 section
 * 8.2 allows), and valid UTF-8 (section 8.1). Returns true and moves *i past the closing
 * quote, or false with the error set. Out of line, so that the plain-string path of
 * validate_string(), inlined in validate(), keeps its few registers. */
__attribute__((noinline)) static bool scan_string(const char *s, size_t len, size_t *i, scan_t *sc)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t p = *i + 1;
    sc->esc = false;
    for (;;) {
        p = skip_plain(u, p, len);
        if (p >= len) return scan_fail(sc, len, "%s", "");
        unsigned char c = u[p];
        if (c == '"') break;
        if (c < 0x20) return scan_fail(sc, p, "unescaped control character 0x%02X in string", c);
        if (c >= 0x80) {
            size_t n = hr_utf8_len(u + p, len - p);
            if (!n) return scan_fail(sc, p, "invalid UTF-8 in string");
            p += n;
            continue;
        }
        /* a backslash */
        sc->esc = true;
        if (p + 1 >= len) return scan_fail(sc, len, "%s", "");
        char e = s[p + 1];
        if (e != 'u') {
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return scan_fail(sc, p, "invalid escape in string");
            p += 2;
            continue;
        }
        for (size_t k = p + 2; k < p + 6; k++) {
            if (k >= len) return scan_fail(sc, len, "%s", ""); /* cut short */
            char h = s[k];
            if (!is_digit(h) && !(h >= 'a' && h <= 'f') && !(h >= 'A' && h <= 'F'))
                return scan_fail(sc, p, "invalid \\u escape in string");
        }
        long hi = hex4(s + p + 2, s + len);
        if (hi >= 0xDC00 && hi <= 0xDFFF)
            return scan_fail(sc, p, "invalid surrogate pair in string");
        if (hi >= 0xD800 && hi <= 0xDBFF) {
            long lo = -1;
            if (p + 12 <= len && s[p + 6] == '\\' && s[p + 7] == 'u') lo = hex4(s + p + 8, s + len);
            if (lo < 0xDC00 || lo > 0xDFFF)
                return scan_fail(sc, p, "invalid surrogate pair in string");
            p += 6;
        }
        p += 6;
    }
    *i = p + 1;
    return true;
}

/* Check the number token at *i (the longest run of number bytes there) against RFC 8259
 * section 6: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, at most HR_JSON_MAX_NUMBER
 * bytes, and within double range (an underflow such as 1e-400 is fine: it reads as 0 or a
 * denormal). Returns true and moves *i past it, or false with the error set at its start. */
static bool scan_number(const char *s, size_t len, size_t *i, scan_t *sc)
{
    size_t start = *i, end = start;
    while (end < len && is_num_byte((unsigned char)s[end]))
        end++;
    size_t n = end - start, p = start;
    const char *why = NULL;
    char unexpected[16];
    bool exp = false;
    if (s[p] == '+') {
        why = "leading '+'";
    } else {
        if (s[p] == '-') p++;
        if (p == end || !is_digit(s[p])) {
            why = p < end && s[p] == '.' ? "digit expected before '.'" : "digit expected after '-'";
        } else if (s[p] == '0' && p + 1 < end && is_digit(s[p + 1])) {
            why = "leading zero";
        } else {
            while (p < end && is_digit(s[p]))
                p++;
            if (p < end && s[p] == '.') {
                p++;
                if (p == end || !is_digit(s[p])) why = "digit expected after '.'";
                while (p < end && is_digit(s[p]))
                    p++;
            }
            if (!why && p < end && (s[p] == 'e' || s[p] == 'E')) {
                exp = true;
                p++;
                if (p < end && (s[p] == '+' || s[p] == '-')) p++;
                if (p == end || !is_digit(s[p])) why = "digit expected in exponent";
                while (p < end && is_digit(s[p]))
                    p++;
            }
            if (!why && p < end) {
                snprintf(unexpected, sizeof unexpected, "unexpected '%c'", s[p]);
                why = unexpected;
            }
        }
    }
    int shown = n > 24 ? 21 : (int)n;
    const char *more = n > 24 ? "..." : "";
    if (why)
        return scan_fail(sc, start, "invalid number '%.*s%s' (%s)", shown, s + start, more, why);
    if (n > HR_JSON_MAX_NUMBER)
        return scan_fail(sc, start, "number too long (more than %d characters)",
                         HR_JSON_MAX_NUMBER);
    if (exp) { /* without an exponent, 63 digits cannot reach DBL_MAX */
        char tmp[HR_JSON_MAX_NUMBER + 1];
        memcpy(tmp, s + start, n);
        tmp[n] = '\0';
        if (isinf(strtod(tmp, NULL)))
            return scan_fail(sc, start, "number '%.*s%s' out of range", shown, s + start, more);
    }
    *i = end;
    return true;
}

/* ================================================================ decoding: errors */

/* Write "invalid JSON at line L, column C (byte B): <what>" into err for the error at pos.
 * An empty reason becomes "unexpected end of input" (pos >= len) or "unexpected character
 * 'x'" / "unexpected byte 0xNN". Lines and columns count from 1, columns in UTF-8
 * characters; the byte offset counts from 0. */
static void parse_error(const char *text, size_t len, size_t pos, const char *reason, char *err,
                        size_t errlen)
{
    char what[96];
    if (pos > len) pos = len;
    if (reason && *reason) {
        snprintf(what, sizeof what, "%.*s", (int)sizeof what - 1, reason);
    } else if (pos >= len) {
        snprintf(what, sizeof what, "unexpected end of input");
    } else {
        unsigned char c = (unsigned char)text[pos];
        if (c > 0x20 && c < 0x7f)
            snprintf(what, sizeof what, "unexpected character '%c'", c);
        else
            snprintf(what, sizeof what, "unexpected byte 0x%02X", c);
    }
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '\n') {
            line++;
            col = 1;
        } else if ((c & 0xC0) != 0x80) {
            col++;
        }
    }
    snprintf(err, errlen, "invalid JSON at line %zu, column %zu (byte %zu): %s", line, col, pos,
             what);
}

/* ================================================================ decoding: strings */

/* Append code point cp to b as UTF-8. */
static void append_utf8(hr_buf_t *b, unsigned long cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    hr_buf_append(b, u, n);
}

/* Decode the JSON string literal whose opening quote is at text[off] into b (reset first),
 * keeping NUL bytes. The text passed scan(), so escapes are valid; anything odd is
 * copied as it is rather than trusted. */
static void unescape(hr_buf_t *b, const char *text, size_t len, size_t off)
{
    hr_buf_reset(b);
    const char *p = text + off + 1, *end = text + len;
    while (p < end && *p != '"') {
        const char *run = p;
        while (p < end && *p != '"' && *p != '\\')
            p++;
        hr_buf_append(b, run, (size_t)(p - run));
        if (p >= end || *p == '"') break;
        if (end - p < 2) break;
        char e = p[1];
        p += 2;
        switch (e) {
        case 'b': hr_buf_appendc(b, '\b'); break;
        case 'f': hr_buf_appendc(b, '\f'); break;
        case 'n': hr_buf_appendc(b, '\n'); break;
        case 'r': hr_buf_appendc(b, '\r'); break;
        case 't': hr_buf_appendc(b, '\t'); break;
        case 'u': {
            long hi = hex4(p, end);
            if (hi < 0) break;
            p += 4;
            unsigned long cp = (unsigned long)hi;
            if (hi >= 0xD800 && hi <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                long lo = hex4(p + 2, end);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + (((unsigned long)hi - 0xD800) << 10) +
                         ((unsigned long)lo - 0xDC00);
                    p += 6;
                }
            }
            append_utf8(b, cp);
            break;
        }
        default: hr_buf_appendc(b, e); break; /* \" \\ \/ */
        }
    }
}

/* ================================================================ decoding: validation */

/* One array or object of a validated text, in document order (a container comes before the
 * containers inside it, so those are the ordinals up to its `next`). */
typedef struct {
    uint32_t start;   /* offset of its '[' or '{' */
    uint32_t end;     /* offset just past its ']' or '}' */
    uint32_t count;   /* its elements (an object: its key/value pairs, repeats included) */
    uint32_t next;    /* ordinal of the first container after it (past all inside it) */
    uint32_t str0;    /* index (in tape_t.str) of the first string inside it */
    uint32_t str_end; /* index of the first string after it */
} node_t;

/* What validate() records of a text: its containers, and for every string (keys too, in
 * document order) its length between the quotes << 1, | 1 if it holds an escape; so the
 * build never scans a string again. */
typedef struct {
    node_t *v;
    uint32_t n, cap;
    uint32_t *str;
    uint32_t nstr, strcap;
    node_t local[32]; /* small documents need no malloc */
    uint32_t local_str[256];
    bool spaced; /* whitespace between its tokens: walks skip it (else there is none) */
} tape_t;

static void tape_init(tape_t *t)
{
    t->v = t->local;
    t->n = 0;
    t->cap = HR_ARRAY_SIZE(t->local);
    t->str = t->local_str;
    t->nstr = 0;
    t->strcap = HR_ARRAY_SIZE(t->local_str);
    t->spaced = false;
}

static void tape_free(tape_t *t)
{
    if (t->v != t->local) free(t->v);
    if (t->str != t->local_str) free(t->str);
}

/* Double the array *v of *cap elements of size elem (local: its first, in-struct storage). */
static void tape_grow(void **v, const void *local, uint32_t *cap, size_t elem)
{
    void *nv = *v == local ? hr_xmalloc((size_t)*cap * 2 * elem)
                           : hr_xrealloc(*v, (size_t)*cap * 2 * elem);
    if (*v == local) memcpy(nv, local, (size_t)*cap * elem);
    *v = nv;
    *cap *= 2;
}

static uint32_t tape_add(tape_t *t, size_t start)
{
    if (t->n == t->cap) tape_grow((void **)&t->v, t->local, &t->cap, sizeof *t->v);
    t->v[t->n] = (node_t){.start = (uint32_t)start, .str0 = t->nstr};
    return t->n++;
}

/* Record the string that opened at start and closed just before end. */
static void tape_str(tape_t *t, size_t start, size_t end, bool esc)
{
    if (t->nstr == t->strcap) tape_grow((void **)&t->str, t->local_str, &t->strcap, 4);
    t->str[t->nstr++] = (uint32_t)(end - start - 2) << 1 | esc;
}

/* Check the string whose opening quote is at *i (a plain one without leaving the caller,
 * anything else through scan_string) and record it on the tape; moves *i past it. */
static inline bool validate_string(const char *s, size_t len, size_t *i, tape_t *tape, scan_t *sc)
{
    size_t start = *i, p = skip_plain((const unsigned char *)s, start + 1, len);
    bool esc = false;
    if (p < len && s[p] == '"') {
        *i = p + 1;
    } else {
        if (!scan_string(s, len, i, sc)) return false;
        esc = sc->esc;
    }
    tape_str(tape, start, *i, esc);
    return true;
}

/* 1 for the four whitespace bytes of RFC 8259. */
static const unsigned char json_ws[256] = {[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1};

/* Move *i past whitespace (setting *spaced if there was some); returns the byte there, or -1
 * at the end. A byte above ' ' is never whitespace, so compact text pays one compare. */
static inline int next_byte(const char *s, size_t len, size_t *i, bool *spaced)
{
    size_t p = *i;
    if (p >= len) return -1;
    unsigned char c = (unsigned char)s[p];
    if (c > ' ') return c;
    if (json_ws[c]) *spaced = true;
    while (json_ws[c]) {
        if (++p >= len) {
            *i = p;
            return -1;
        }
        c = (unsigned char)s[p];
    }
    *i = p;
    return c;
}

/* The common number, checked in one pass: -?(0|[1-9][0-9]*)(\.[0-9]+)? that no other number
 * byte follows and no longer than HR_JSON_MAX_NUMBER. Moves *i past it and returns true;
 * false (nothing moved) for anything else, which scan_number() then checks and names. */
static inline bool plain_number(const char *s, size_t len, size_t *i)
{
    size_t p = *i + (s[*i] == '-');
    if (p >= len || !is_digit(s[p])) return false;
    if (s[p++] != '0')
        while (p < len && is_digit(s[p]))
            p++;
    if (p < len && s[p] == '.') {
        if (++p >= len || !is_digit(s[p])) return false;
        while (p < len && is_digit(s[p]))
            p++;
    }
    if ((p < len && is_num_byte((unsigned char)s[p])) || p - *i > HR_JSON_MAX_NUMBER) return false;
    *i = p;
    return true;
}

/* Validate the text as one JSON value per RFC 8259 (whitespace only space, tab, LF and CR; a
 * leading UTF-8 byte order mark is skipped, as section 8.1 allows) and record its containers
 * in tape. No Lua: nothing is built yet. Returns true with *root at the first byte of the
 * value, or false with sc set at the first error.
 * A state machine whose states are labels: `value` (a value starts at i), `after` (one
 * ended just before i), `key` (a key is due at i); each goes straight to the next. */
static bool validate(const char *s, size_t len, tape_t *tape, size_t *root, scan_t *sc)
{
    uint32_t open[HR_JSON_MAX_DEPTH];  /* ordinals of the containers open here */
    uint32_t count[HR_JSON_MAX_DEPTH]; /* the elements seen of each */
    bool array[HR_JSON_MAX_DEPTH];     /* which of them are arrays */
    int depth = 0, c;
    bool spaced = false;
    sc->what[0] = '\0';
    size_t i = len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    if ((c = next_byte(s, len, &i, &spaced)) < 0) return scan_fail(sc, len, "%s", "");
    *root = i;
value:
    if (c == '"') {
        if (!validate_string(s, len, &i, tape, sc)) return false;
    } else if (c == '{' || c == '[') {
        if (depth >= HR_JSON_MAX_DEPTH)
            return scan_fail(sc, i, "nesting too deep (more than %d levels)", HR_JSON_MAX_DEPTH);
        array[depth] = c == '[';
        count[depth] = 0;
        open[depth++] = tape_add(tape, i);
        i++;
        int first = next_byte(s, len, &i, &spaced);
        if (first < 0) return scan_fail(sc, len, "%s", "");
        if (first == (c == '[' ? ']' : '}')) goto close;
        c = first;
        if (array[depth - 1]) goto value;
        goto key;
    } else if (c == '-' || is_digit((char)c)) {
        if (!plain_number(s, len, &i) && !scan_number(s, len, &i, sc)) return false;
    } else if (c == '+' || c == '.') {
        if (!scan_number(s, len, &i, sc)) return false; /* fails, naming why */
    } else {
        const char *lit = c == 't' ? "true" : c == 'f' ? "false" : c == 'n' ? "null" : "";
        size_t n = strlen(lit), have = len - i;
        if (n && have >= n && memcmp(s + i, lit, n) == 0) {
            i += n;
        } else if (n && have < n && memcmp(s + i, lit, have) == 0) {
            return scan_fail(sc, len, "%s", ""); /* a literal cut short */
        } else {
            return scan_fail(sc, i, "%s", "");
        }
    }
after:
    if (depth == 0) {
        if (next_byte(s, len, &i, &spaced) >= 0)
            return scan_fail(sc, i, "trailing characters after the value");
        tape->spaced = spaced;
        return true;
    }
    count[depth - 1]++;
    if ((c = next_byte(s, len, &i, &spaced)) < 0) return scan_fail(sc, len, "%s", "");
    if (c == ',') {
        i++;
        if ((c = next_byte(s, len, &i, &spaced)) < 0) return scan_fail(sc, len, "%s", "");
        if (array[depth - 1]) goto value;
        goto key;
    }
    if (c != (array[depth - 1] ? ']' : '}')) return scan_fail(sc, i, "%s", "");
close : {
    node_t *o = &tape->v[open[--depth]];
    o->end = (uint32_t)(i + 1);
    o->count = count[depth];
    o->next = tape->n;
    o->str_end = tape->nstr;
    i++;
    goto after;
}
key:
    if (c != '"') return scan_fail(sc, i, "%s", "");
    if (!validate_string(s, len, &i, tape, sc)) return false;
    if ((c = next_byte(s, len, &i, &spaced)) < 0) return scan_fail(sc, len, "%s", "");
    if (c != ':') return scan_fail(sc, i, "%s", "");
    i++;
    if ((c = next_byte(s, len, &i, &spaced)) < 0) return scan_fail(sc, len, "%s", "");
    goto value;
}

/* ================================================================ decoding: the build */

/* Push the number token s[start..end) (valid per scan_number()): an integer token that fits
 * in int64 as an integer, anything else as the double strtod reads. [-0, +1, -] */
static void push_token_number(lua_State *L, const char *s, size_t start, size_t end)
{
    const char *p = s + start, *e = s + end;
    bool neg = false, overflow = false;
    if (*p == '-') {
        neg = true;
        p++;
    }
    uint64_t v = 0;
    for (; p < e && *p >= '0' && *p <= '9'; p++) {
        unsigned dg = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - dg) / 10)
            overflow = true;
        else if (!overflow)
            v = v * 10 + dg;
    }
    uint64_t limit = neg ? (uint64_t)LUA_MAXINTEGER + 1 : (uint64_t)LUA_MAXINTEGER;
    if (p < e || overflow || v > limit) { /* a fraction or exponent, or out of int64 */
        char tmp[HR_JSON_MAX_NUMBER + 1];
        memcpy(tmp, s + start, end - start);
        tmp[end - start] = '\0';
        lua_pushnumber(L, strtod(tmp, NULL));
        return;
    }
    if (!neg)
        lua_pushinteger(L, (lua_Integer)v);
    else if (v == (uint64_t)LUA_MAXINTEGER + 1)
        lua_pushinteger(L, LUA_MININTEGER);
    else
        lua_pushinteger(L, -(lua_Integer)v);
}

/* A validated text and its containers. For a lazy decode it lives in one block a box_t holds
 * (this struct, the text copied in, the nodes, the map from lazy tables to their nodes),
 * which the decode's lazy metatable keeps alive; for an eager one, on the C stack over the
 * caller's text. */
typedef struct {
    const char *text;
    size_t len;
    bool spaced; /* tape_t.spaced */
    const node_t *node;
    uint32_t nnodes;
    const uint32_t *str; /* the strings' lengths and escape bits (tape_t.str) */
    uint32_t mapmask;    /* map size - 1 (lazy only) */
    struct lazy_slot {
        const void *table; /* lua_topointer() of a lazy table, NULL for a free slot */
        uint32_t node;
        uint16_t peeks; /* keys read from its text without filling it (l_lazy_index) */
        bool kids;      /* one of them was a container: it is in the document's cache */
    } * map;
    uint32_t *fills;   /* counts the lazy fills of this document (NULL: not counted) */
    hr_buf_t *scratch; /* strings with escapes, decoded */
    int null_idx;      /* stack slot of json.null during a fill */
    int mt_idx;        /* stack slot of the array marker during a fill */
    int lazy_idx;      /* stack slot of the lazy metatable during a fill (0: eager) */
    int doc_mt_idx;    /* stack slot of the lazy metatable during a fill or peek (0: none) */
    uint16_t *kid;     /* lazy only, by node: 0, or k when a peek handed it out as the table at
                        * [KID0 + k] of the lazy metatable ([0]: how many were) */
} doc_t;

static uint32_t map_hash(const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

/* Record that the lazy table at p is node (a table freed and its address reused by a later
 * one of the same document overwrites its slot). */
static void map_put(doc_t *d, const void *p, uint32_t node)
{
    for (uint32_t k = map_hash(p) & d->mapmask;; k = (k + 1) & d->mapmask) {
        if (d->map[k].table == NULL || d->map[k].table == p) {
            d->map[k] = (struct lazy_slot){.table = p, .node = node};
            return;
        }
    }
}

/* The slot of the lazy table at p, or NULL. */
static struct lazy_slot *map_slot(const doc_t *d, const void *p)
{
    for (uint32_t k = map_hash(p) & d->mapmask;; k = (k + 1) & d->mapmask) {
        if (d->map[k].table == p) return &d->map[k];
        if (d->map[k].table == NULL) return NULL;
    }
}

/* Where a build is in its text: the byte, and the index of the next string on the tape. */
typedef struct {
    size_t i;
    uint32_t si;
} cur_t;

/* Push the string whose opening quote is at c->i (its length and escape bit from the tape),
 * decoding escapes when it has any; moves past it. [-0, +1, m] */
static void push_string(lua_State *L, const doc_t *d, cur_t *c)
{
    uint32_t le = d->str[c->si++];
    size_t start = c->i, n = le >> 1;
    c->i = start + n + 2;
    if (!(le & 1)) {
        lua_pushlstring(L, d->text + start + 1, n);
        return;
    }
    unescape(d->scratch, d->text, d->len, start);
    lua_pushlstring(L, d->scratch->data ? d->scratch->data : "", d->scratch->len);
}

static void fill(lua_State *L, doc_t *d, int t, uint32_t ord);
static void fill_all(lua_State *L, int idx, int depth);

/* Where the containers peeks handed out are kept in the lazy metatable (see peek). */
#define KID0 5

/* If a peek handed out the container node ord, push that same table (filled in full first
 * when d is a deep fill) and return true; else push nothing. [-0, +(0|1), m] */
static bool push_cached(lua_State *L, doc_t *d, uint32_t ord)
{
    if (!d->doc_mt_idx || !d->kid[ord]) return false;
    lua_rawgeti(L, d->doc_mt_idx, KID0 + d->kid[ord]);
    if (!d->lazy_idx) { /* deep: nothing lazy may stay below */
        bool lazy = false;
        if (lua_getmetatable(L, -1)) {
            lazy = lua_rawequal(L, -1, d->doc_mt_idx);
            lua_pop(L, 1);
        }
        if (lazy)
            fill(L, d, lua_gettop(L), ord);
        else
            fill_all(L, lua_gettop(L), 1);
    }
    return true;
}

/* Push the value at c->i (valid, no leading whitespace) and move past it; a container is the
 * node ord: the table a peek already handed out, made lazy, or filled now. [-0, +1, m] */
static void push_value(lua_State *L, doc_t *d, cur_t *c, uint32_t ord)
{
    const char *s = d->text;
    char ch = s[c->i];
    if (ch == '"') {
        push_string(L, d, c);
    } else if (ch == '[' || ch == '{') {
        const node_t *n = &d->node[ord];
        if (push_cached(L, d, ord)) {
            c->i = n->end;
            c->si = n->str_end;
            return;
        }
        if (ch == '[')
            lua_createtable(L, (int)n->count, 0);
        else
            lua_createtable(L, 0, (int)n->count);
        if (d->lazy_idx) {
            lua_pushvalue(L, d->lazy_idx);
            lua_setmetatable(L, -2);
            map_put(d, lua_topointer(L, -1), ord);
        } else {
            fill(L, d, lua_gettop(L), ord);
        }
        c->i = n->end;
        c->si = n->str_end;
    } else if (ch == 't' || ch == 'f') {
        lua_pushboolean(L, ch == 't');
        c->i += ch == 't' ? 4 : 5;
    } else if (ch == 'n') {
        lua_pushvalue(L, d->null_idx);
        c->i += 4;
    } else {
        size_t start = c->i;
        while (c->i < d->len && is_num_byte((unsigned char)s[c->i])) /* a root number ends it */
            c->i++;
        push_token_number(L, s, start, c->i);
    }
}

static void skip_ws(const char *s, size_t *i)
{
    while (json_ws[(unsigned char)s[*i]])
        ++*i;
}

/* Move c to the next element of a container being walked (past whitespace and a comma). */
static inline void to_element(const doc_t *d, cur_t *c)
{
    const char *s = d->text;
    if (!d->spaced) {
        c->i += s[c->i] == ',';
        return;
    }
    skip_ws(s, &c->i);
    if (s[c->i] == ',') {
        c->i++;
        skip_ws(s, &c->i);
    }
}

/* Move c from the end of an object's key to its value (past the colon). */
static inline void to_value(const doc_t *d, cur_t *c)
{
    const char *s = d->text;
    if (!d->spaced) {
        c->i++;
        return;
    }
    skip_ws(s, &c->i);
    c->i++; /* the colon */
    skip_ws(s, &c->i);
}

/* Fill the empty table at t (absolute) with the elements of node ord: scalars as Lua values,
 * containers lazy (d->lazy_idx) or filled in turn. Then give it the metatable it has as a
 * decoded value: the array marker, or none. Raises on out-of-memory. [-0, +0, m] */
static void fill(lua_State *L, doc_t *d, int t, uint32_t ord)
{
    luaL_checkstack(L, 4, "JSON nesting");
    const char *s = d->text;
    const node_t *n = &d->node[ord];
    bool array = s[n->start] == '[';
    uint32_t child = ord + 1; /* the next container inside, in document order */
    cur_t c = {.i = n->start + 1, .si = n->str0};
    for (uint32_t k = 0; k < n->count; k++) {
        to_element(d, &c);
        if (!array) {
            push_string(L, d, &c);
            to_value(d, &c);
        }
        bool container = s[c.i] == '[' || s[c.i] == '{';
        push_value(L, d, &c, child);
        if (container) child = d->node[child].next;
        if (array)
            lua_rawseti(L, t, (lua_Integer)k + 1);
        else
            lua_rawset(L, t); /* in document order: a repeated key keeps its last value */
    }
    if (array)
        lua_pushvalue(L, d->mt_idx);
    else
        lua_pushnil(L);
    lua_setmetatable(L, t);
}

/* Arguments of the protected part of a decode. */
typedef struct {
    doc_t doc;
    const tape_t *tape;
    size_t root; /* offset of the value */
    bool lazy;
} build_t;

/* What holds a lazy decode's document: a full userdata (kept alive by the document's lazy
 * metatable) whose __gc frees it. The document itself comes from the state's allocator, so
 * it counts against a rule's memory cap, but not from the collector: a body's copy would
 * otherwise count as new Lua memory and make every collection come that much sooner. */
typedef struct {
    doc_t *doc;
    size_t size;
} box_t;

static const char box_key = 'd'; /* registry: the metatable of boxes */

/* __gc of a box: frees its document. [-0, +0, -] */
static int box_gc(lua_State *L)
{
    box_t *box = lua_touserdata(L, 1);
    if (box && box->doc) {
        void *ud;
        lua_Alloc alloc = lua_getallocf(L, &ud);
        alloc(ud, box->doc, box->size, 0);
        box->doc = NULL;
    }
    return 0;
}

/* Push a new empty box. [-0, +1, m] */
static box_t *push_box(lua_State *L)
{
    box_t *box = lua_newuserdatauv(L, sizeof *box, 0);
    *box = (box_t){0};
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &box_key) == LUA_TNIL) {
        lua_pop(L, 1); /* drop nil */
        lua_createtable(L, 0, 1);
        lua_pushcfunction(L, box_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &box_key);
    }
    lua_setmetatable(L, -2);
    return box;
}

/* Registry key of the light userdata that marks a lazy metatable (only its address matters);
 * the metatable holds it at [2] and the document's userdata at [1]. */
static const char lazy_key = 'z';

static int l_lazy_index(lua_State *L);
static int l_lazy_newindex(lua_State *L);
static int l_lazy_len(lua_State *L);
static int l_lazy_pairs(lua_State *L);

/* Protected part of decoding: builds the value of the validated text of the build_t given
 * as a light userdata and returns it. Raises on out-of-memory. [-1, +1, m] */
static int build_main(lua_State *L)
{
    build_t *b = lua_touserdata(L, 1);
    doc_t *d = &b->doc;
    hr_json_push_null(L);
    d->null_idx = lua_gettop(L);
    push_array_mt(L);
    d->mt_idx = lua_gettop(L);
    char c = d->text[b->root];
    if (b->lazy && (c == '[' || c == '{')) {
        /* the document: its own copy of the text, the nodes, the map (a power of two, at
         * least 1.5 times the containers: each gets one slot) */
        uint32_t mapn = 2;
        while (mapn < (uint64_t)b->tape->n + b->tape->n / 2)
            mapn *= 2;
        size_t nodes = (sizeof(doc_t) + d->len + 1 + 7) & ~(size_t)7;
        size_t strs = nodes + b->tape->n * sizeof(node_t);
        size_t map = (strs + b->tape->nstr * sizeof(uint32_t) + 7) & ~(size_t)7;
        size_t kids = map + mapn * sizeof(struct lazy_slot);
        size_t size = kids + b->tape->n * sizeof(uint16_t);
        box_t *box = push_box(L);
        void *aud;
        lua_Alloc alloc = lua_getallocf(L, &aud);
        char *mem = alloc(aud, NULL, 0, size);
        if (!mem) return luaL_error(L, "not enough memory");
        box->doc = (doc_t *)mem;
        box->size = size;
        memcpy(mem + sizeof(doc_t), d->text, d->len);
        mem[sizeof(doc_t) + d->len] = '\0';
        memcpy(mem + nodes, b->tape->v, b->tape->n * sizeof(node_t));
        memcpy(mem + strs, b->tape->str, b->tape->nstr * sizeof(uint32_t));
        memset(mem + map, 0, size - map); /* the map and the kids */
        doc_t *ud = box->doc;
        *ud = (doc_t){.text = mem + sizeof(doc_t),
                      .len = d->len,
                      .spaced = d->spaced,
                      .node = (const node_t *)(mem + nodes),
                      .nnodes = b->tape->n,
                      .str = (const uint32_t *)(mem + strs),
                      .fills = d->fills,
                      .mapmask = mapn - 1,
                      .map = (struct lazy_slot *)(mem + map),
                      .kid = (uint16_t *)(mem + kids)};
        lua_createtable(L, KID0 + 2, 4); /* the lazy metatable of this document (doc_open) */
        lua_insert(L, -2);
        lua_rawseti(L, -2, 1);
        lua_pushlightuserdata(L, (void *)&lazy_key);
        lua_rawseti(L, -2, 2);
        lua_pushvalue(L, d->null_idx);
        lua_rawseti(L, -2, 3);
        lua_pushvalue(L, d->mt_idx);
        lua_rawseti(L, -2, 4);
        state_buf(L, &scratch_key);
        lua_rawgetp(L, LUA_REGISTRYINDEX, &scratch_key);
        lua_rawseti(L, -2, 5);
        lua_pushcfunction(L, l_lazy_index);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_lazy_newindex);
        lua_setfield(L, -2, "__newindex");
        lua_pushcfunction(L, l_lazy_len);
        lua_setfield(L, -2, "__len");
        lua_pushcfunction(L, l_lazy_pairs);
        lua_setfield(L, -2, "__pairs");
        doc_t run = *ud; /* the document with this call's stack slot of its metatable */
        run.lazy_idx = lua_gettop(L);
        cur_t at = {.i = b->root};
        push_value(L, &run, &at, 0);
        return 1;
    }
    d->lazy_idx = 0;
    cur_t at = {.i = b->root};
    push_value(L, d, &at, 0);
    return 1;
}

/* Validate text, then build its value (lazy or not) under a pcall, so that out-of-memory
 * frees what the build made. [-0, +(1|0), m] */
static int decode(lua_State *L, const char *text, size_t len, bool lazy, uint32_t *fills,
                  uint32_t *containers, char *err, size_t errlen)
{
    if (!text) text = "";
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack overflow");
        return -1;
    }
    if (len >= UINT32_MAX) {
        snprintf(err, errlen, "JSON text too large (4 GiB or more)");
        return -1;
    }
    tape_t tape;
    tape_init(&tape);
    scan_t sc;
    size_t root = 0;
    if (!validate(text, len, &tape, &root, &sc)) {
        tape_free(&tape);
        parse_error(text, len, sc.pos, sc.what, err, errlen);
        return -1;
    }
    if (containers) *containers = tape.n;
    hr_buf_t scratch = HR_BUF_INIT;
    build_t b = {.doc = {.text = text,
                         .len = len,
                         .spaced = tape.spaced,
                         .node = tape.v,
                         .nnodes = tape.n,
                         .str = tape.str,
                         .fills = fills,
                         .scratch = &scratch},
                 .tape = &tape,
                 .root = root,
                 .lazy = lazy};
    lua_pushcfunction(L, build_main);
    lua_pushlightuserdata(L, &b);
    /* No traceback: the build is C, and its errors are about memory. */
    int status = hr_lua_pcall(L, 1, 1, NULL);
    hr_buf_free(&scratch);
    tape_free(&tape);
    if (status == LUA_OK) return 0;
    if (status == LUA_ERRMEM) lua_error(L); /* everything is freed: pass it on */
    const char *msg = lua_tostring(L, -1);
    snprintf(err, errlen, "%s", msg ? msg : "error while decoding");
    lua_pop(L, 1); /* drop the message */
    return -1;
}

void hr_json_thread_done(void) {}

int hr_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen)
{
    return decode(L, text, len, false, NULL, NULL, err, errlen);
}

int hr_json_decode_lazy(lua_State *L, const char *text, size_t len, uint32_t *fills,
                        uint32_t *containers, char *err, size_t errlen)
{
    return decode(L, text, len, true, fills, containers, err, errlen);
}

/* ================================================================ lazy tables */

/* If the value at idx is a lazy table, push its lazy metatable and return true (else push
 * nothing). [-0, +(0|1), -] */
static bool push_lazy_mt(lua_State *L, int idx)
{
    if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return false;
    bool lazy = lua_rawgeti(L, -1, 2) == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == &lazy_key;
    lua_pop(L, lazy ? 1 : 2);
    return lazy;
}

/* If the table at idx is lazy, push the box of its document and return the document (else
 * push nothing and return NULL). [-0, +(0|1), -] */
static doc_t *lazy_doc(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (!push_lazy_mt(L, idx)) return NULL;
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    return ((box_t *)lua_touserdata(L, -1))->doc;
}

bool hr_json_is_lazy(lua_State *L, int idx)
{
    if (!push_lazy_mt(L, idx)) return false;
    lua_pop(L, 1);
    return true;
}

/* Fill the lazy table at idx (anything else is left alone): its containers lazy in turn, or
 * (deep) filled too, with nothing lazy left below it. [-0, +0, m] */
/* The document of the lazy metatable at mt (absolute, the top of the stack), with this call's
 * stack slots: pushes what a fill needs above it. [-0, +4, m] */
static doc_t doc_open(lua_State *L, int mt)
{
    luaL_checkstack(L, 10, "JSON");
    /* the lazy metatable: [1] box, [2] the marker, [3] json.null, [4] the array marker,
     * [5] the scratch buffer's userdata, [KID0 + k] the containers peeks handed out */
    lua_rawgeti(L, mt, 1);
    doc_t run = *((box_t *)lua_touserdata(L, -1))->doc;
    lua_rawgeti(L, mt, 3);
    lua_rawgeti(L, mt, 4);
    lua_rawgeti(L, mt, 5);
    run.lazy_idx = mt;
    run.null_idx = mt + 2; /* above the metatable: the box, then [3], [4] and [5] */
    run.mt_idx = mt + 3;
    run.scratch = lua_touserdata(L, mt + 4);
    run.doc_mt_idx = mt;
    return run;
}

/* After a fill or a peek: the scratch buffer back to its idle size. */
static void doc_close(doc_t *run)
{
    hr_buf_reset(run->scratch);
    if (run->scratch->cap > HR_JSON_KEEP_BUF) hr_buf_free(run->scratch);
}

static void force(lua_State *L, int idx, bool deep)
{
    idx = lua_absindex(L, idx);
    if (!push_lazy_mt(L, idx)) return; /* a plain table, an array, not a table */
    int mt = lua_gettop(L), top = mt - 1;
    doc_t run = doc_open(L, mt);
    if (deep) run.lazy_idx = 0;
    struct lazy_slot *slot = map_slot(&run, lua_topointer(L, idx));
    if (!slot) { /* cannot happen: every lazy table is in the map */
        lua_pushnil(L);
        lua_setmetatable(L, idx);
    } else {
        if (run.fills && !deep && !slot->peeks) (*run.fills)++; /* a peek counted it */
        fill(L, &run, idx, slot->node);
        doc_close(&run);
    }
    lua_settop(L, top);
}

void hr_json_force(lua_State *L, int idx)
{
    force(L, idx, false);
}

/* hr_json_fill_all below its first level, depth levels down. [-0, +0, m] */
static void fill_all(lua_State *L, int idx, int depth)
{
    if (lua_type(L, idx) != LUA_TTABLE || depth > HR_JSON_MAX_DEPTH) return;
    if (hr_json_is_lazy(L, idx)) {
        force(L, idx, true);
        return;
    }
    luaL_checkstack(L, 4, "JSON");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        fill_all(L, lua_gettop(L), depth + 1);
        lua_pop(L, 1); /* the value */
    }
}

void hr_json_fill_all(lua_State *L, int idx)
{
    fill_all(L, lua_absindex(L, idx), 0);
}

/* Peeks a lazy object takes before it is filled: a peek walks the object's members in the
 * text (~20 instructions a member) where a fill makes a Lua value of each (~10 times that),
 * so a few peeks cost less than a fill, and a rule that reads a big object key by key pays
 * at most about twice the fill. */
#define PEEK_MAX 8

/* Move c past the value at c->i (valid, no leading whitespace); *child is the next container
 * node in document order, moved past this one if it is one. */
static void skip_value(const doc_t *d, cur_t *c, uint32_t *child)
{
    char ch = d->text[c->i];
    if (ch == '"') {
        c->i += (d->str[c->si++] >> 1) + 2;
    } else if (ch == '[' || ch == '{') {
        const node_t *n = &d->node[*child];
        c->i = n->end;
        c->si = n->str_end;
        *child = n->next;
    } else if (ch == 't' || ch == 'n') {
        c->i += 4;
    } else if (ch == 'f') {
        c->i += 5;
    } else {
        while (c->i < d->len && is_num_byte((unsigned char)d->text[c->i]))
            c->i++;
    }
}

/* True if the key whose opening quote is at c->i is key[0..klen); moves past it. A key with
 * an escape is decoded into d->scratch, taken from the lazy metatable at mt if d has none.
 * [-0, +0, -] */
static bool key_is(lua_State *L, int mt, doc_t *d, cur_t *c, const char *key, size_t klen)
{
    uint32_t le = d->str[c->si++];
    size_t start = c->i, n = le >> 1;
    c->i = start + n + 2;
    if (!(le & 1)) return n == klen && memcmp(d->text + start + 1, key, klen) == 0;
    if (n < klen) return false; /* an escape is longer than what it stands for */
    if (!d->scratch) {
        lua_rawgeti(L, mt, 5);
        d->scratch = lua_touserdata(L, -1); /* kept alive by the metatable */
        lua_pop(L, 1);
    }
    unescape(d->scratch, d->text, d->len, start);
    return d->scratch->len == klen && memcmp(d->scratch->data, key, klen) == 0;
}

/* t[k] of the lazy table t (index 1) for the string k (index 2) read from its text without
 * filling t, with t's lazy metatable at mt (the top): pushes it and returns true. False
 * (nothing pushed) when t is to be filled instead: an array, or an object peeked PEEK_MAX
 * times. A container is made a lazy table once and kept in the lazy metatable (doc_t.kid),
 * so a second peek, or the fill of t, gives the same table. [-0, +(0|1), m] */
static bool peek(lua_State *L, int mt)
{
    lua_rawgeti(L, mt, 1);
    doc_t *home = ((box_t *)lua_touserdata(L, -1))->doc, d = *home;
    lua_pop(L, 1);
    d.scratch = NULL; /* only for a key with an escape (key_is) */
    struct lazy_slot *slot = map_slot(home, lua_topointer(L, 1));
    const node_t *n = slot ? &home->node[slot->node] : NULL;
    if (!n || home->text[n->start] != '{' || slot->peeks >= PEEK_MAX || home->kid[0] == UINT16_MAX)
        return false;
    if (home->fills && !slot->peeks) (*home->fills)++; /* read: counts as a fill would */
    slot->peeks++;
    size_t klen;
    const char *key = lua_tolstring(L, 2, &klen);
    const char *s = home->text;
    cur_t c = {.i = n->start + 1, .si = n->str0}, at = {0};
    uint32_t child = slot->node + 1, at_child = 0;
    bool found = false;
    for (uint32_t k = 0; k < n->count; k++) {
        to_element(home, &c);
        bool match = key_is(L, mt, &d, &c, key, klen);
        to_value(home, &c);
        if (match) { /* not the end: a repeated key keeps its last value */
            found = true;
            at = c;
            at_child = child;
        }
        skip_value(home, &c, &child);
    }
    if (d.scratch) doc_close(&d);
    char ch = found ? s[at.i] : 0;
    if (!found) {
        lua_pushnil(L);
    } else if (ch != 'n' && ch != '[' && ch != '{' && (ch != '"' || !(home->str[at.si] & 1))) {
        push_value(L, home, &at, 0); /* a plain string, a number, a boolean */
    } else {
        doc_t run = doc_open(L, mt);
        bool container = ch == '[' || ch == '{';
        if (!container || !push_cached(L, &run, at_child)) {
            push_value(L, &run, &at, at_child);
            if (container) {
                uint16_t k = ++home->kid[0];
                home->kid[at_child] = k;
                lua_pushvalue(L, -1);
                lua_rawseti(L, mt, KID0 + k);
                slot->kids = true;
            }
        }
        doc_close(&run);
        lua_replace(L, mt + 1);
        lua_settop(L, mt + 1);
    }
    return true;
}

/* __index of a lazy table: t[k] read from the text for a string k (see peek), else fill t,
 * then read t[k]. [-0, +1, m] */
static int l_lazy_index(lua_State *L)
{
    lua_settop(L, 2);
    if (lua_type(L, 2) == LUA_TSTRING && push_lazy_mt(L, 1) && peek(L, 3)) return 1;
    lua_settop(L, 2);
    hr_json_force(L, 1);
    lua_rawget(L, 1);
    return 1;
}

/* __newindex of a lazy table: fill it, then set t[k] = v as a plain table would. [-0, +0, e] */
static int l_lazy_newindex(lua_State *L)
{
    hr_json_force(L, 1);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 0;
}

/* __len of a lazy table: fill it, then #t. [-0, +1, m] */
static int l_lazy_len(lua_State *L)
{
    hr_json_force(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

/* next(t [, k]) that fills a lazy t first. [-0, +(1|2), e] */
static int l_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    hr_json_force(L, 1);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

/* next(t [, k]) as the base library's (what pairs() of a plain table returns). [-0, +(1|2), e] */
static int l_next_raw(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_next(L, 1)) return 2;
    lua_pushnil(L);
    return 1;
}

/* __pairs of a lazy table: fill it, then iterate it as pairs() does a plain table.
 * [-0, +3, m] */
static int l_lazy_pairs(lua_State *L)
{
    hr_json_force(L, 1);
    lua_pushcfunction(L, l_next_raw);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* rawget(t, k) that fills a lazy t first. [-0, +1, e] */
static int l_rawget(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    return l_lazy_index(L);
}

/* rawset(t, k, v) that fills a lazy t first. [-0, +1, e] */
static int l_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    l_lazy_newindex(L); /* leaves t */
    return 1;
}

/* rawlen(v) that fills a lazy table first. [-0, +1, e] */
static int l_rawlen(lua_State *L)
{
    int t = lua_type(L, 1);
    luaL_argexpected(L, t == LUA_TTABLE || t == LUA_TSTRING, 1, "table or string");
    hr_json_force(L, 1);
    lua_pushinteger(L, (lua_Integer)lua_rawlen(L, 1));
    return 1;
}

/* getmetatable(v) that fills a lazy table first (so it never shows its lazy metatable).
 * [-0, +1, e] */
static int l_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    hr_json_force(L, 1);
    if (!lua_getmetatable(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    luaL_getmetafield(L, 1, "__metatable");
    return 1; /* the __metatable field if there is one, else the metatable */
}

void hr_json_install_lazy_base(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"next", l_next},
        {"rawget", l_rawget},
        {"rawset", l_rawset},
        {"rawlen", l_rawlen},
        {"getmetatable", l_getmetatable},
        {NULL, NULL},
    };
    lua_pushglobaltable(L);
    luaL_setfuncs(L, funcs, 0);
    lua_pop(L, 1);
}

/* ================================================================ matching a text */

/* State of one hr_json_matches() call. */
typedef struct {
    const char *s;    /* the text (valid JSON) */
    size_t len;       /* its length */
    size_t i;         /* position */
    int null_idx;     /* stack slot of json.null */
    int mt_idx;       /* stack slot of the array marker */
    hr_buf_t scratch; /* strings with escapes, decoded */
} match_t;

/* Keys of one object compared for repeats (more: the object is not matched). */
#define HR_JSON_MATCH_KEYS 64

static void match_ws(match_t *m)
{
    while (m->i < m->len &&
           (m->s[m->i] == ' ' || m->s[m->i] == '\n' || m->s[m->i] == '\r' || m->s[m->i] == '\t'))
        m->i++;
}

/* Move past the string whose opening quote is at m->i; return its bytes (decoded into
 * m->scratch when it has escapes) in *out, *outlen. */
static void match_string(match_t *m, const char **out, size_t *outlen)
{
    size_t start = m->i, p = start + 1;
    bool esc = false;
    while (p < m->len && m->s[p] != '"') {
        if (m->s[p] == '\\') {
            esc = true;
            p++;
        }
        p++;
    }
    m->i = p + 1;
    if (!esc) {
        *out = m->s + start + 1;
        *outlen = p - start - 1;
        return;
    }
    unescape(&m->scratch, m->s, m->len, start);
    *out = m->scratch.data ? m->scratch.data : "";
    *outlen = m->scratch.len;
}

/* True if the table at idx (absolute) is a lazy part of a decoded body, never read, whose
 * text is byte for byte the text at m->i (then it is the value of that text, whatever it
 * holds: it moves m->i past it). A lazy table whose text differs is filled, for the caller
 * to compare as any other. [-0, +0, m] */
static bool match_lazy(lua_State *L, match_t *m, int idx)
{
    doc_t *d = lazy_doc(L, idx);
    if (!d) return false;
    struct lazy_slot *slot = map_slot(d, lua_topointer(L, idx));
    /* A container a peek handed out may have been changed since: compare member by member. */
    if (slot && !slot->kids) {
        const node_t *n = &d->node[slot->node];
        size_t span = n->end - n->start;
        if (m->len - m->i >= span && memcmp(m->s + m->i, d->text + n->start, span) == 0) {
            lua_pop(L, 1); /* the document */
            m->i += span;
            return true;
        }
    }
    lua_pop(L, 1); /* the document */
    hr_json_force(L, idx);
    return false;
}

/* True if the value at idx (absolute) is what the text at m->i decodes to and encodes back
 * to the same value; moves m->i past it. [-0, +0, m] */
static bool match_value(lua_State *L, match_t *m, int idx)
{
    match_ws(m);
    if (m->i >= m->len) return false;
    char c = m->s[m->i];
    int t = lua_type(L, idx);
    if (c == '"') {
        const char *v;
        size_t n, have;
        match_string(m, &v, &n);
        if (t != LUA_TSTRING) return false;
        const char *s = lua_tolstring(L, idx, &have);
        return have == n && memcmp(s, v, n) == 0;
    }
    if (c == 't' || c == 'f') {
        m->i += c == 't' ? 4 : 5;
        return t == LUA_TBOOLEAN && lua_toboolean(L, idx) == (c == 't');
    }
    if (c == 'n') {
        m->i += 4;
        return lua_rawequal(L, idx, m->null_idx);
    }
    if (c == '[' || c == '{') {
        if (t != LUA_TTABLE || !lua_checkstack(L, 4)) return false;
        if (match_lazy(L, m, idx)) return true;
        bool marked = false;
        if (lua_getmetatable(L, idx)) {
            marked = lua_rawequal(L, -1, m->mt_idx);
            lua_pop(L, 1); /* the metatable */
            if (!marked) return false;
        }
        if (marked != (c == '[')) return false;
        m->i++;
        const char *keys[HR_JSON_MATCH_KEYS];
        lua_Integer n = 0;
        for (;;) {
            match_ws(m);
            if (m->s[m->i] == ']' || m->s[m->i] == '}') break;
            if (m->s[m->i] == ',') {
                m->i++;
                match_ws(m);
            }
            if (c == '[') {
                lua_rawgeti(L, idx, ++n);
            } else {
                const char *k;
                size_t klen;
                match_string(m, &k, &klen);
                /* short strings are interned: equal keys are one pointer */
                if (n >= HR_JSON_MATCH_KEYS || klen > 40) return false;
                lua_pushlstring(L, k, klen);
                keys[n] = lua_tostring(L, -1);
                for (lua_Integer j = 0; j < n; j++) {
                    if (keys[j] == keys[n]) {
                        lua_pop(L, 1); /* a repeated key: the table holds one of them */
                        return false;
                    }
                }
                n++;
                lua_rawget(L, idx);
                match_ws(m);
                m->i++; /* the colon */
            }
            bool same = match_value(L, m, lua_gettop(L));
            lua_pop(L, 1); /* the element */
            if (!same) return false;
        }
        m->i++;
        if (c == '[') return (lua_Integer)lua_rawlen(L, idx) == n;
        lua_Integer have = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pop(L, 1); /* the value */
            if (++have > n) {
                lua_pop(L, 1); /* the key */
                return false;
            }
        }
        return have == n;
    }
    /* a number: the same integer, or a float equal to what the text reads as */
    size_t start = m->i;
    while (m->i < m->len && is_num_byte((unsigned char)m->s[m->i]))
        m->i++;
    if (t != LUA_TNUMBER) return false;
    push_token_number(L, m->s, start, m->i);
    bool same =
        lua_isinteger(L, -1) == lua_isinteger(L, idx) && lua_rawequal(L, -1, idx) &&
        (lua_isinteger(L, -1) || signbit(lua_tonumber(L, -1)) == signbit(lua_tonumber(L, idx)));
    lua_pop(L, 1); /* the number read */
    return same;
}

bool hr_json_matches(lua_State *L, int idx, const char *text, size_t len)
{
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 4)) return false;
    int top = lua_gettop(L);
    match_t m = {.s = text, .len = len, .scratch = HR_BUF_INIT};
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) m.i = 3;
    hr_json_push_null(L);
    m.null_idx = lua_gettop(L);
    push_array_mt(L);
    m.mt_idx = lua_gettop(L);
    bool same = match_value(L, &m, idx);
    hr_buf_free(&m.scratch);
    lua_settop(L, top);
    return same;
}

/* ================================================================ encoding */

/* One container on the path from the root to the value being encoded. */
typedef struct frame {
    const struct frame *up; /* enclosing container, NULL for the root */
    const void *table;      /* lua_topointer() of this table, to find cycles */
    const char *key;        /* key of the child being encoded, or NULL if index is used */
    size_t keylen;          /* length of key */
    lua_Integer index;      /* Lua index of the child being encoded */
} frame_t;

/* State of one encode call. */
typedef struct {
    hr_buf_t *out;  /* where the text goes */
    int null_idx;   /* stack slot of json.null */
    int mt_idx;     /* stack slot of the array marker */
    char *err;      /* message buffer */
    size_t errlen;  /* its size */
    size_t max;     /* refuse output longer than this */
    bool too_large; /* the output reached max */
} enc_t;

/* True if s[0..n) can follow a dot in a path: [A-Za-z_][A-Za-z0-9_]*. */
static bool is_ident(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

/* Append the path from the root down to the child that frame f is encoding. */
static void append_path(hr_buf_t *b, const frame_t *f)
{
    if (!f) return;
    append_path(b, f->up);
    if (!f->key) {
        hr_buf_printf(b, "[%lld]", (long long)f->index);
    } else if (is_ident(f->key, f->keylen)) {
        hr_buf_appendc(b, '.');
        hr_buf_append(b, f->key, f->keylen);
    } else {
        hr_buf_appendc(b, '[');
        hr_buf_append_json_string(b, f->key, f->keylen);
        hr_buf_appendc(b, ']');
    }
}

/* Write "<what> at <path>" into the error buffer, the path being that of the value that the
 * frame `at` is encoding (the root "." when at is NULL). Returns -1. */
static int enc_fail(enc_t *e, const frame_t *at, const char *what)
{
    hr_buf_t path = HR_BUF_INIT;
    if (at)
        append_path(&path, at);
    else
        hr_buf_appendc(&path, '.');
    if (path.data[0] != '.') {
        /* a path that starts with an index reads better as .[1] than [1] */
        hr_buf_t dotted = HR_BUF_INIT;
        hr_buf_appendc(&dotted, '.');
        hr_buf_append(&dotted, path.data, path.len);
        hr_buf_free(&path);
        path = dotted;
    }
    snprintf(e->err, e->errlen, "%s at %s", what, path.data);
    hr_buf_free(&path);
    return -1;
}

/* Append d, finite, as the shortest of %.14g..%.17g that reads back as d, with ".0" added
 * when it would otherwise read as an integer. */
static void append_double(hr_buf_t *b, double d)
{
    char tmp[40];
    int n = 0;
    for (int prec = 14; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (prec == 17 || strtod(tmp, NULL) == d) break;
    }
    hr_buf_append(b, tmp, (size_t)n);
    if (!strpbrk(tmp, ".eni")) hr_buf_append(b, ".0", 2);
}

/* Append v in decimal (what %lld prints, without the printf machinery). */
static void append_integer(hr_buf_t *b, lua_Integer v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--p = '-';
    hr_buf_append(b, p, (size_t)(tmp + sizeof tmp - p));
}

static int encode_value(lua_State *L, enc_t *e, int idx, const frame_t *at, int depth);

/* Check that the output is still within e->max, after an append: it overshoots by one
 * value at most (a string, at most 6 times its length once escaped). Returns 0, or -1 with
 * the message set. [-0, +0, -] */
static int enc_room(enc_t *e, const frame_t *at)
{
    if (e->out->len <= e->max) return 0;
    e->too_large = true;
    char what[96];
    snprintf(what, sizeof what, "output larger than %zu bytes", e->max);
    return enc_fail(e, at, what);
}

/* Append the elements 1..n of the table at idx as a JSON array, me being the table's frame.
 * Returns 0, or -1 with the message set (a nil element is an error). [-0, +0, -] */
static int encode_array(lua_State *L, enc_t *e, int idx, frame_t *me, lua_Integer n, int depth)
{
    hr_buf_appendc(e->out, '[');
    for (lua_Integer i = 1; i <= n; i++) {
        if (i > 1) hr_buf_appendc(e->out, ',');
        me->key = NULL;
        me->index = i;
        if (lua_rawgeti(L, idx, i) == LUA_TNIL)
            return enc_fail(e, me, "array has a hole (nil; use json.null for null)");
        if (encode_value(L, e, lua_gettop(L), me, depth) != 0) return -1;
        lua_pop(L, 1); /* drop the element */
    }
    hr_buf_appendc(e->out, ']');
    return 0;
}

/* Explain why the key at kidx cannot be a key of the table at `at` (object: the table has
 * string keys). Returns -1. [-0, +0, -] */
static int bad_key(lua_State *L, enc_t *e, const frame_t *at, bool object, int kidx)
{
    int t = lua_type(L, kidx);
    if (t == LUA_TSTRING || (object && lua_isinteger(L, kidx)))
        return enc_fail(e, at, "table has both array and string keys");
    if (lua_isinteger(L, kidx))
        return enc_fail(e, at, "sparse array (integer keys are not exactly 1..n)");
    if (t == LUA_TNUMBER) return enc_fail(e, at, "table has a non-integer number key");
    char what[64];
    snprintf(what, sizeof what, "table has a %s key", lua_typename(L, t));
    return enc_fail(e, at, what);
}

/* A string key of an object being encoded, and the stack slot of its value. */
typedef struct {
    const char *key; /* bytes of the key (kept alive by the table) */
    size_t len;      /* length of key */
    int slot;        /* stack slot of the value */
} okey_t;

/* Order two keys bytewise, a prefix first (qsort comparator). */
static int okey_cmp(const void *pa, const void *pb)
{
    const okey_t *a = pa, *b = pb;
    int c = memcmp(a->key, b->key, a->len < b->len ? a->len : b->len);
    if (c) return c;
    return (a->len > b->len) - (a->len < b->len);
}

/* Sort n keys: insertion sort for the usual handful, qsort beyond. */
static void okeys_sort(okey_t *k, size_t n)
{
    if (n > 16) {
        qsort(k, n, sizeof *k, okey_cmp);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        okey_t x = k[i];
        size_t j = i;
        while (j > 0 && okey_cmp(&k[j - 1], &x) > 0) {
            k[j] = k[j - 1];
            j--;
        }
        k[j] = x;
    }
}

/* Append an object whose n string keys and values sit in pairs on the stack from slot
 * base + 1, keys sorted bytewise so that the output does not depend on the table's history.
 * Returns 0, or -1 with the message set. [-0, +0, -] */
static int encode_object(lua_State *L, enc_t *e, int base, size_t n, frame_t *me, int depth)
{
    okey_t local[32];
    okey_t *keys = n <= HR_ARRAY_SIZE(local) ? local : hr_xmalloc(n * sizeof *keys);
    for (size_t i = 0; i < n; i++) {
        int slot = base + 1 + 2 * (int)i;
        keys[i].key = lua_tolstring(L, slot, &keys[i].len); /* a string: no conversion */
        keys[i].slot = slot + 1;
    }
    okeys_sort(keys, n);
    int rc = 0;
    hr_buf_appendc(e->out, '{');
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (i) hr_buf_appendc(e->out, ',');
        me->key = keys[i].key;
        me->keylen = keys[i].len;
        hr_buf_append_json_string(e->out, keys[i].key, keys[i].len);
        hr_buf_appendc(e->out, ':');
        rc = enc_room(e, me);
        if (rc == 0) rc = encode_value(L, e, keys[i].slot, me, depth);
    }
    hr_buf_appendc(e->out, '}');
    if (keys != local) free(keys);
    return rc;
}

/* Append the table at idx, whose own path is given by `at`. Returns 0, or -1 with the message
 * set (the stack may then hold extra values: the caller restores it). [-0, +0, -] */
static int encode_table(lua_State *L, enc_t *e, int idx, const frame_t *at, int depth)
{
    if (depth > HR_JSON_MAX_DEPTH) {
        char what[64];
        snprintf(what, sizeof what, "nesting deeper than %d levels", HR_JSON_MAX_DEPTH);
        return enc_fail(e, at, what);
    }
    const void *self = lua_topointer(L, idx);
    for (const frame_t *f = at; f; f = f->up) {
        if (f->table == self) return enc_fail(e, at, "cycle (a table contains itself)");
    }
    if (!lua_checkstack(L, 3)) return enc_fail(e, at, "Lua stack overflow");
    hr_json_force(L, idx); /* a lazy part of a decoded body: its values first */
    frame_t me = {.up = at, .table = self};

    if (lua_getmetatable(L, idx)) {
        bool marked = lua_rawequal(L, -1, e->mt_idx);
        lua_pop(L, 1); /* drop the metatable */
        if (marked) return encode_array(L, e, idx, &me, (lua_Integer)lua_rawlen(L, idx), depth);
    }

    /* One pass over the keys: string keys stay on the stack with their values (for sorting);
     * integer keys are only counted (an array is then read in order with rawgeti). */
    int base = lua_gettop(L);
    size_t nstr = 0;
    lua_Integer nint = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            if (nint) return bad_key(L, e, at, false, -2);
            if (!lua_checkstack(L, 3)) return enc_fail(e, at, "table too large");
            nstr++;
            lua_pushvalue(L, -2); /* key for lua_next; the pair stays */
            continue;
        }
        if (nstr || !lua_isinteger(L, -2) || lua_tointeger(L, -2) < 1)
            return bad_key(L, e, at, nstr > 0, -2);
        lua_Integer k = lua_tointeger(L, -2);
        if (k > max) max = k;
        nint++;
        lua_pop(L, 1); /* drop the value, keep the key for lua_next */
    }
    int rc;
    if (nstr) {
        rc = encode_object(L, e, base, nstr, &me, depth);
    } else if (nint == 0) {
        hr_buf_append(e->out, "{}", 2);
        rc = 0;
    } else if (max != nint) {
        rc = enc_fail(e, at, "sparse array (integer keys are not exactly 1..n)");
    } else {
        rc = encode_array(L, e, idx, &me, nint, depth);
    }
    lua_settop(L, base);
    return rc;
}

/* Append the value at idx (absolute), whose path is given by `at` and which sits depth
 * containers deep. Returns 0, or -1 with the message set. [-0, +0, -] */
static int encode_value(lua_State *L, enc_t *e, int idx, const frame_t *at, int depth)
{
    char what[64];
    switch (lua_type(L, idx)) {
    case LUA_TNIL: hr_buf_append(e->out, "null", 4); return 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx))
            hr_buf_append(e->out, "true", 4);
        else
            hr_buf_append(e->out, "false", 5);
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            append_integer(e->out, lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (isnan(d)) return enc_fail(e, at, "cannot encode NaN");
            if (isinf(d))
                return enc_fail(e, at, d > 0 ? "cannot encode inf" : "cannot encode -inf");
            append_double(e->out, d);
        }
        return 0;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        hr_buf_append_json_string(e->out, s, n);
        return enc_room(e, at);
    }
    case LUA_TTABLE: return encode_table(L, e, idx, at, depth + 1);
    case LUA_TUSERDATA:
        if (lua_rawequal(L, idx, e->null_idx)) {
            hr_buf_append(e->out, "null", 4);
            return 0;
        }
        break;
    default: break;
    }
    snprintf(what, sizeof what, "cannot encode a %s", luaL_typename(L, idx));
    return enc_fail(e, at, what);
}

int hr_json_encode(lua_State *L, int idx, hr_buf_t *out, char *err, size_t errlen)
{
    return hr_json_encode_max(L, idx, out, SIZE_MAX, err, errlen);
}

int hr_json_encode_max(lua_State *L, int idx, hr_buf_t *out, size_t max, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    int top = lua_gettop(L);
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack overflow");
        return -1;
    }
    size_t start = out->len;
    enc_t e = {.out = out, .err = err, .errlen = errlen};
    e.max = max > SIZE_MAX - start ? SIZE_MAX : start + max;
    hr_json_push_null(L);
    e.null_idx = lua_gettop(L);
    push_array_mt(L);
    e.mt_idx = lua_gettop(L);
    int rc = encode_value(L, &e, idx, NULL, 0);
    lua_settop(L, top);
    return rc == 0 ? 0 : e.too_large ? HR_JSON_TOO_LARGE : -1;
}

/* ================================================================ the Lua library */

int hr_json_push_encoded(lua_State *L, int idx, size_t max, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    hr_json_push_null(L); /* make sure nothing below allocates in Lua while buf is busy */
    push_array_mt(L);
    lua_pop(L, 2);
    hr_buf_t *b = state_buf(L, &buf_key);
    hr_buf_reset(b);
    int rc = hr_json_encode_max(L, idx, b, max, err, errlen);
    if (rc == 0) lua_pushlstring(L, b->data ? b->data : "", b->len);
    hr_buf_reset(b);
    if (b->cap > HR_JSON_KEEP_BUF) hr_buf_free(b);
    return rc;
}

/* json.encode(v): returns the JSON text of v, or raises "json.encode: <message>".
 * [-0, +1, e] */
static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    char err[512];
    if (hr_json_push_encoded(L, 1, SIZE_MAX, err, sizeof err) != 0)
        return luaL_error(L, "json.encode: %s", err);
    return 1;
}

/* json.decode(s): returns the value of the JSON text s, or raises "json.decode: <message>".
 * [-0, +1, e] */
static int l_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char err[256];
    if (hr_json_decode(L, s, len, err, sizeof err) != 0)
        return luaL_error(L, "json.decode: %s", err);
    return 1;
}

/* json.array([t]): marks t (or a new empty table) as a JSON array and returns it.
 * [-0, +1, e] */
static int l_array(lua_State *L)
{
    if (lua_isnoneornil(L, 1)) {
        lua_settop(L, 0);
        lua_createtable(L, 0, 0);
    } else {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_settop(L, 1);
        hr_json_force(L, 1);
    }
    hr_json_mark_array(L, 1);
    return 1;
}

int hr_json_open(lua_State *L)
{
    static const luaL_Reg funcs[] = {
        {"encode", l_encode},
        {"decode", l_decode},
        {"array", l_array},
        {NULL, NULL},
    };
    state_buf(L, &buf_key);
    state_buf(L, &scratch_key);
    luaL_newlib(L, funcs);
    hr_json_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
