/* Lua source scanning: calls of named globals, outside comments and strings. */
#include "hr/lua_scan.h"

#include <string.h>

/* Where the scan is in the text. */
typedef struct {
    const char *p, *end;
    int line;
} cursor_t;

static bool is_ident_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static bool is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

static bool is_ident(char ch)
{
    return is_ident_start(ch) || is_digit(ch);
}

/* The level of the long bracket opening at p ("[[" 0, "[=[" 1, ...), or -1 if none does. */
static int long_open(const char *p, const char *end)
{
    if (p >= end || *p != '[') return -1;
    const char *q = p + 1;
    while (q < end && *q == '=')
        q++;
    return q < end && *q == '[' ? (int)(q - p - 1) : -1;
}

/* Skip the long bracket of level at c->p (which opens one); its contents go to *body and
 * *blen (without the newline Lua drops right after the opening). Unclosed, it runs to the
 * end of the text. Returns whether it was closed. */
static bool skip_long(cursor_t *c, int level, const char **body, size_t *blen)
{
    c->p += level + 2;
    if (c->p < c->end && *c->p == '\r') c->p++;
    if (c->p < c->end && *c->p == '\n') {
        c->p++;
        c->line++;
    }
    *body = c->p;
    for (; c->p < c->end; c->p++) {
        if (*c->p == '\n') c->line++;
        if (*c->p != ']') continue;
        const char *q = c->p + 1;
        while (q < c->end && *q == '=')
            q++;
        if (q < c->end && *q == ']' && q - c->p - 1 == level) {
            *blen = (size_t)(c->p - *body);
            c->p = q + 1;
            return true;
        }
    }
    *blen = (size_t)(c->p - *body);
    return false;
}

/* Skip the short string whose quote is at c->p; its raw contents go to *body and *blen.
 * Returns whether it is a plain literal: closed, with no escape in it. An unclosed one
 * (a line break, or the end of the text, before its quote) stops before the line break. */
static bool skip_short(cursor_t *c, const char **body, size_t *blen)
{
    char quote = *c->p++;
    bool plain = true;
    *body = c->p;
    while (c->p < c->end && *c->p != quote && *c->p != '\n') {
        if (*c->p == '\\') {
            plain = false;
            if (++c->p < c->end && *c->p == '\n') c->line++; /* an escaped line break */
        }
        if (c->p < c->end) c->p++;
    }
    *blen = (size_t)(c->p - *body);
    if (c->p >= c->end || *c->p != quote) return false;
    c->p++;
    return plain;
}

/* Skip white space and comments (-- to the end of the line, --[[ ]], --[==[ ]==]). */
static void skip_blank(cursor_t *c)
{
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == '\n') {
            c->line++;
            c->p++;
        } else if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v') {
            c->p++;
        } else if (ch == '-' && c->p + 1 < c->end && c->p[1] == '-') {
            c->p += 2;
            int level = long_open(c->p, c->end);
            const char *body;
            size_t blen;
            if (level >= 0)
                skip_long(c, level, &body, &blen);
            else
                while (c->p < c->end && *c->p != '\n')
                    c->p++;
        } else {
            return;
        }
    }
}

/* Skip a string literal (short or long) at c->p if one starts there; *arg is set to its
 * contents when it is a plain literal, NULL otherwise. Returns whether one started. */
static bool skip_string(cursor_t *c, const char **arg, size_t *alen)
{
    const char *body = NULL;
    size_t blen = 0;
    bool plain;
    int level = long_open(c->p, c->end);
    if (c->p < c->end && (*c->p == '"' || *c->p == '\''))
        plain = skip_short(c, &body, &blen);
    else if (level >= 0)
        plain = skip_long(c, level, &body, &blen);
    else
        return false;
    *arg = plain ? body : NULL;
    *alen = plain ? blen : 0;
    return true;
}

/* With c just past a name: whether a call follows (after blanks, '(', a string or '{'), and
 * its literal first argument. c is not moved. */
static bool call_follows(const cursor_t *c, const char **arg, size_t *alen)
{
    cursor_t la = *c;
    *arg = NULL;
    *alen = 0;
    skip_blank(&la);
    if (la.p >= la.end) return false;
    if (*la.p == '{') return true;
    if (*la.p != '(') return skip_string(&la, arg, alen);
    la.p++;
    skip_blank(&la);
    skip_string(&la, arg, alen);
    return true;
}

void hr_lua_scan_calls(const char *src, size_t len, const char *const *names, hr_lua_call_cb cb,
                       void *ud)
{
    cursor_t c = {src, src + len, 1};
    enum { PLAIN, FIELD, DEFINED } before = PLAIN; /* after '.' or ':', after 'function' */
    for (;;) {
        skip_blank(&c);
        if (c.p >= c.end) return;
        char ch = *c.p;
        const char *arg;
        size_t alen;
        if (skip_string(&c, &arg, &alen)) {
            before = PLAIN;
        } else if (is_ident_start(ch)) {
            const char *name = c.p;
            while (c.p < c.end && is_ident(*c.p))
                c.p++;
            size_t n = (size_t)(c.p - name);
            for (size_t k = 0; names[k] && before == PLAIN; k++) {
                if (strlen(names[k]) != n || memcmp(names[k], name, n) != 0) continue;
                if (!call_follows(&c, &arg, &alen)) break;
                hr_lua_call_t call = {.fn = k, .arg = arg, .arg_len = alen, .line = c.line};
                if (!cb(ud, &call)) return;
                break;
            }
            before = n == 8 && memcmp(name, "function", 8) == 0 ? DEFINED : PLAIN;
        } else if (is_digit(ch) || (ch == '.' && c.p + 1 < c.end && is_digit(c.p[1]))) {
            /* a numeral, read as Lua does: greedily, with a sign only after an exponent */
            for (c.p++; c.p < c.end; c.p++) {
                char x = *c.p;
                if ((x == '+' || x == '-') && c.p[-1] && strchr("eEpP", c.p[-1])) continue;
                if (!is_ident(x) && x != '.') break;
            }
            before = PLAIN;
        } else if (ch == '.' || ch == ':') {
            const char *s = c.p;
            while (c.p < c.end && *c.p == ch)
                c.p++;
            before = c.p - s == 1 ? FIELD : PLAIN; /* '..', '...' and '::' end no prefix */
        } else {
            c.p++;
            before = PLAIN;
        }
    }
}
