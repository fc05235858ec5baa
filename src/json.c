/* JSON <-> Lua, exact both ways (see include/hr/json.h for the mapping).
 *
 * Decoding: one pass over the text validates it per RFC 8259 (strict where cJSON was lax:
 * numbers out of range, leading zeros, raw control bytes, whitespace other than the four,
 * bad \u hex), names the first error exactly, and builds the Lua values as it goes: a string
 * without escapes is pushed straight from the text, an integer token is read exactly, any
 * other number with strtod. The elements of an open container wait on the Lua stack and move
 * into a table made at their exact count when it closes (bounded: past HR_JSON_PENDING slots
 * they move early), so no table is resized and no tree is built in between.
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

#include "hr/lua_budget.h"

/* Deepest nesting of arrays and objects accepted both ways (cJSON's own limit). */
#define HR_JSON_MAX_DEPTH CJSON_NESTING_LIMIT

/* The per-state encode buffer is dropped after use once it grew beyond this. */
#define HR_JSON_KEEP_BUF (64 * 1024)

/* Registry keys: only their addresses matter. */
static const char null_key = 'n';  /* json.null sentinel (a full userdata) */
static const char array_key = 'a'; /* metatable that marks a table as a JSON array */
static const char buf_key = 'b';   /* userdata holding the per-state encode buffer */

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

/* Return the per-state encode buffer, creating it on first use. The buffer belongs to a
 * userdata in the registry whose __gc frees it, so a Lua error raised while it holds data
 * leaks nothing. [-0, +0, m] */
static hr_buf_t *state_buf(lua_State *L)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &buf_key) == LUA_TUSERDATA) {
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
    lua_rawsetp(L, LUA_REGISTRYINDEX, &buf_key);
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

/* Check the string whose opening quote is at *i, per RFC 8259 section 7: no raw bytes below
 * 0x20, only the escapes \" \\ \/ \b \f \n \r \t \uXXXX, a \u escape of a UTF-16 surrogate
 * only as a high-low pair (a lone surrogate has no UTF-8 form: rejected, as RFC 8259 section
 * 8.2 allows), and valid UTF-8 (section 8.1). Returns true and moves *i past the closing
 * quote, or false with the error set. */
static bool scan_string(const char *s, size_t len, size_t *i, scan_t *sc)
{
    /* 1 for the bytes a string holds as they are: ASCII from 0x20 but '"' and '\\'. */
    static const unsigned char plain[256] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    };
    const unsigned char *u = (const unsigned char *)s;
    size_t p = *i + 1;
    sc->esc = false;
    for (;;) {
        while (p < len && plain[u[p]])
            p++;
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

/* ================================================================ decoding: the build */

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

/* One open array or object of a decode. Its elements (an object: key, value, key, ...) wait
 * on the Lua stack above its slot until it closes, so that its table is made at its final
 * size in one go; past HR_JSON_PENDING of them they move into the table early (made then). */
typedef struct {
    int slot;   /* stack slot of the table (nil until it is made) */
    int set;    /* elements (an object: pairs) already in the table */
    bool made;  /* the table exists */
    bool array; /* an array, else an object */
} open_t;

/* Stack slots a container may hold before they move into its table. */
#define HR_JSON_PENDING 512

/* State of one decode of text into Lua values. */
typedef struct {
    const char *text;               /* the JSON text */
    size_t len;                     /* its length */
    scan_t sc;                      /* the error, once one is found */
    bool failed;                    /* the text is not valid JSON (sc says why) */
    hr_buf_t scratch;               /* strings with escapes, decoded */
    int null_idx;                   /* stack slot of json.null */
    int mt_idx;                     /* stack slot of the array marker */
    open_t open[HR_JSON_MAX_DEPTH]; /* the containers open at the current position */
} dec_t;

/* Move the elements waiting above the slot of o into its table, making it first (sized for
 * what waits when it is final). Raises on out-of-memory. [-k, +0, m] */
static void flush_open(lua_State *L, const dec_t *d, open_t *o, bool final)
{
    int top = lua_gettop(L), k = top - o->slot;
    if (!o->made) {
        int hint = final ? k : 2 * k;
        if (o->array)
            lua_createtable(L, hint, 0);
        else
            lua_createtable(L, 0, hint / 2);
        if (o->array) {
            lua_pushvalue(L, d->mt_idx);
            lua_setmetatable(L, -2);
        }
        lua_replace(L, o->slot);
        o->made = true;
    }
    if (o->array) {
        for (int i = 1; i <= k; i++) {
            lua_pushvalue(L, o->slot + i);
            lua_rawseti(L, o->slot, ++o->set);
        }
    } else {
        /* in document order: a repeated key keeps its last value, as cJSON's tree did */
        for (int i = 1; i + 1 <= k; i += 2) {
            lua_pushvalue(L, o->slot + i);
            lua_pushvalue(L, o->slot + i + 1);
            lua_rawset(L, o->slot);
            o->set++;
        }
    }
    lua_settop(L, o->slot);
}

/* Push the string whose opening quote is at s[start] and whose closing quote is at
 * s[end - 1], decoding escapes when it has any. [-0, +1, m] */
static void push_token_string(lua_State *L, dec_t *d, size_t start, size_t end, bool esc)
{
    if (!esc) {
        lua_pushlstring(L, d->text + start + 1, end - start - 2);
        return;
    }
    unescape(&d->scratch, d->text, d->len, start);
    lua_pushlstring(L, d->scratch.data ? d->scratch.data : "", d->scratch.len);
}

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

/* Validate the text as one JSON value per RFC 8259 (whitespace only space, tab, LF and CR; a
 * leading UTF-8 byte order mark is skipped, as section 8.1 allows) and build its Lua value
 * in the same pass. Returns true with the value pushed, or false with d->sc set at the first
 * error (the stack is then left as it is: the caller drops it). Raises on out-of-memory or
 * a Lua stack overflow. [-0, +(1|k), m] */
static bool build(lua_State *L, dec_t *d)
{
    enum { VALUE, FIRST_VALUE, KEY, FIRST_KEY, COLON, AFTER } state = VALUE;
    const char *s = d->text;
    size_t len = d->len;
    scan_t *sc = &d->sc;
    int depth = 0;
    sc->what[0] = '\0';
    size_t i = len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
    for (;;) {
        while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
            i++;
        if (i >= len) {
            if (state == AFTER && depth == 0) return true;
            return scan_fail(sc, len, "%s", "");
        }
        char c = s[i];
        switch (state) {
        case FIRST_KEY:
        case KEY: {
            if (state == FIRST_KEY && c == '}') goto close;
            if (c != '"') return scan_fail(sc, i, "%s", "");
            size_t start = i;
            if (!scan_string(s, len, &i, sc)) return false;
            push_token_string(L, d, start, i, sc->esc);
            state = COLON;
            break;
        }
        case COLON:
            if (c != ':') return scan_fail(sc, i, "%s", "");
            i++;
            state = VALUE;
            break;
        case AFTER: {
            if (depth == 0) return scan_fail(sc, i, "trailing characters after the value");
            open_t *o = &d->open[depth - 1];
            char want = o->array ? ']' : '}';
            if (c == ',') {
                i++;
                state = o->array ? VALUE : KEY;
                break;
            }
            if (c != want) return scan_fail(sc, i, "%s", "");
        }
        close:
            flush_open(L, d, &d->open[depth - 1], !d->open[depth - 1].made);
            depth--;
            i++;
            state = AFTER;
            break;
        case FIRST_VALUE:
        case VALUE: {
            if (state == FIRST_VALUE && c == ']') goto close;
            state = AFTER;
            size_t start = i;
            if (c == '"') {
                if (!scan_string(s, len, &i, sc)) return false;
                push_token_string(L, d, start, i, sc->esc);
            } else if (c == '-' || c == '+' || c == '.' || is_digit(c)) {
                if (!scan_number(s, len, &i, sc)) return false;
                push_token_number(L, s, start, i);
            } else if (c == '[' || c == '{') {
                if (depth >= HR_JSON_MAX_DEPTH)
                    return scan_fail(sc, i, "nesting too deep (more than %d levels)",
                                     HR_JSON_MAX_DEPTH);
                luaL_checkstack(L, HR_JSON_PENDING + 8, "JSON nesting");
                lua_pushnil(L); /* the table's slot */
                d->open[depth++] = (open_t){.slot = lua_gettop(L), .array = c == '['};
                i++;
                state = c == '[' ? FIRST_VALUE : FIRST_KEY;
                break;
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
                if (c == 'n')
                    lua_pushvalue(L, d->null_idx);
                else
                    lua_pushboolean(L, c == 't');
            }
            /* a value is complete: keep what waits on the stack bounded */
            if (depth > 0 && lua_gettop(L) - d->open[depth - 1].slot >= HR_JSON_PENDING)
                flush_open(L, d, &d->open[depth - 1], false);
            break;
        }
        }
    }
}

/* Protected part of decoding: builds the value of the dec_t given as a light userdata.
 * Returns it, or nothing with d->failed set when the text is not valid JSON. Raises on
 * out-of-memory or a Lua stack overflow. [-1, +(1|0), m] */
static int decode_main(lua_State *L)
{
    dec_t *d = lua_touserdata(L, 1);
    hr_json_push_null(L);
    d->null_idx = lua_gettop(L);
    push_array_mt(L);
    d->mt_idx = lua_gettop(L);
    if (!build(L, d)) {
        d->failed = true;
        return 0;
    }
    return 1;
}

void hr_json_thread_done(void) {}

int hr_json_decode(lua_State *L, const char *text, size_t len, char *err, size_t errlen)
{
    if (!text) text = "";
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack overflow");
        return -1;
    }
    dec_t storage; /* about 12 KB, on the stack: a malloc of that size per decode costs more */
    dec_t *d = &storage;
    d->text = text;
    d->len = len;
    d->failed = false;
    hr_buf_init(&d->scratch);
    lua_pushcfunction(L, decode_main);
    lua_pushlightuserdata(L, d);
    /* No traceback: the decode is C, and its errors are about the text (they reach the
     * sender as they are). */
    int status = hr_lua_pcall(L, 1, 1, NULL);
    hr_buf_free(&d->scratch);
    bool failed = d->failed;
    if (failed) parse_error(text, len, d->sc.pos, d->sc.what, err, errlen);
    if (status == LUA_OK && !failed) return 0;
    if (status == LUA_ERRMEM) lua_error(L); /* everything is freed: pass it on */
    if (status == LUA_OK) {
        lua_pop(L, 1); /* the nil of a failed decode */
        return -1;
    }
    const char *msg = lua_tostring(L, -1);
    snprintf(err, errlen, "%s", msg ? msg : "error while decoding");
    lua_pop(L, 1); /* drop the message */
    return -1;
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
    bool same = lua_isinteger(L, -1) == lua_isinteger(L, idx) && lua_rawequal(L, -1, idx);
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
    hr_buf_t *b = state_buf(L);
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
    state_buf(L);
    luaL_newlib(L, funcs);
    hr_json_push_null(L);
    lua_setfield(L, -2, "null");
    return 1;
}
