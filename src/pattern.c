/* Budgeted Lua 5.4 patterns: find, match, gmatch and gsub whose matcher charges its steps
 * (see include/hr/pattern.h). Written from the Lua 5.4 reference manual (§6.4, §6.4.1) and
 * checked against the real library by tests/unit/test_pattern.c.
 *
 * The matcher is a backtracking recursive descent over the pattern text, as the manual's
 * semantics require (the shortest/longest expansions and back-references cannot be matched
 * by an automaton). What must stay true for the results and errors to equal Lua's:
 *   - pattern errors are raised lazily, when the matcher reaches the faulty item, so
 *     string.find("", "a%") is nil while string.find("a", "a%") raises;
 *   - the recursion happens at the same places as in Lua's matcher (captures, '?', '*', '+',
 *     '-'), so "pattern too complex" triggers on the same patterns;
 *   - reading at the end of the subject or pattern yields '\0', as Lua's NUL-terminated
 *     strings do (this matters for %f at the end and for '[' sets).
 */
#include "hr/pattern.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define ESC      '%'
#define CAP_OPEN (-1) /* capture started, not closed yet */
#define CAP_POS  (-2) /* position capture "()" */

/* Characters that make find() run the matcher rather than a plain substring search. */
#define SPECIALS "^$*+?.([%-"

typedef struct {
    const char *init; /* where the capture starts in the subject */
    ptrdiff_t len;    /* its length, or CAP_OPEN / CAP_POS */
} capture_t;

typedef struct {
    lua_State *L;                /* state to raise errors on and to charge */
    const char *src;             /* subject start */
    const char *src_end;         /* one past the subject's last byte */
    const char *pat_end;         /* one past the pattern's last byte */
    hr_pattern_charge_fn charge; /* NULL: count only */
    size_t steps;                /* steps not charged yet */
    int depth;                   /* recursion levels left before "pattern too complex" */
    int level;                   /* captures started (open or closed) */
    capture_t cap[HR_PATTERN_MAXCAPTURES];
} matcher_t;

/* ---------------------------------------------------------------- budget */

/* Charge the steps counted so far. May raise (the charge function's business). */
static void steps_flush(matcher_t *m)
{
    size_t n = m->steps;
    m->steps = 0;
    if (n && m->charge) m->charge(m->L, n > UINT_MAX ? UINT_MAX : (unsigned)n);
}

/* Count n steps; charge them once HR_PATTERN_STEP have gathered. */
static inline void steps_add(matcher_t *m, size_t n)
{
    m->steps += n;
    if (m->steps >= HR_PATTERN_STEP) steps_flush(m);
}

/* ---------------------------------------------------------------- characters */

static inline int pat_at(const matcher_t *m, const char *p)
{
    return p < m->pat_end ? (unsigned char)*p : 0;
}

static inline int src_at(const matcher_t *m, const char *s)
{
    return s < m->src_end ? (unsigned char)*s : 0;
}

static inline bool is_upper(int c)
{
    return c >= 'A' && c <= 'Z';
}
static inline bool is_lower(int c)
{
    return c >= 'a' && c <= 'z';
}
static inline bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}
static inline bool is_alpha(int c)
{
    return is_upper(c) || is_lower(c);
}
static inline bool is_alnum(int c)
{
    return is_alpha(c) || is_digit(c);
}
static inline bool is_graph(int c)
{
    return c > ' ' && c < 127;
}

/* Does c belong to the class named by the letter after '%' (C locale)? A non-letter, or a
 * letter naming no class, stands for itself; an upper-case class letter is the complement. */
static bool class_has(int c, int cl)
{
    bool in;
    switch (is_upper(cl) ? cl - 'A' + 'a' : cl) {
    case 'a': in = is_alpha(c); break;
    case 'c': in = c < ' ' || c == 127; break;
    case 'd': in = is_digit(c); break;
    case 'g': in = is_graph(c); break;
    case 'l': in = is_lower(c); break;
    case 'p': in = is_graph(c) && !is_alnum(c); break;
    case 's': in = c == ' ' || (c >= '\t' && c <= '\r'); break;
    case 'u': in = is_upper(c); break;
    case 'w': in = is_alnum(c); break;
    case 'x': in = is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); break;
    case 'z': in = c == 0; break; /* deprecated, still in 5.4 */
    default: return cl == c;
    }
    return is_upper(cl) ? !in : in;
}

/* ---------------------------------------------------------------- pattern items */

/* The end of the single-character item at p ('%x', a '[' set, or one byte). Raises on a
 * pattern ending in '%' or a set missing its ']'. [-0, +0, v] */
static const char *item_end(matcher_t *m, const char *p)
{
    const char *q = p + 1;
    if (*p == ESC) {
        if (q >= m->pat_end) luaL_error(m->L, "malformed pattern (ends with '%%')");
        return q + 1;
    }
    if (*p != '[') return q;
    if (pat_at(m, q) == '^') q++;
    /* The first byte after '[' or '[^' is a member even if it is ']'. */
    do {
        if (q >= m->pat_end) luaL_error(m->L, "malformed pattern (missing ']')");
        if (*q++ == ESC && q < m->pat_end) q++; /* an escaped byte, '%]' included */
    } while (pat_at(m, q) != ']');
    steps_add(m, (size_t)(q - p) / 8);
    return q + 1;
}

/* Does c belong to the set p[0] == '[' .. close[0] == ']'? */
static bool set_has(matcher_t *m, int c, const char *p, const char *close)
{
    bool want = true;
    steps_add(m, (size_t)(close - p) / 8);
    if (pat_at(m, p + 1) == '^') {
        want = false;
        p++;
    }
    for (p++; p < close; p++) {
        int lo = (unsigned char)*p;
        if (lo == ESC) {
            p++;
            if (class_has(c, pat_at(m, p))) return want;
        } else if (pat_at(m, p + 1) == '-' && p + 2 < close) {
            int hi = (unsigned char)p[2];
            p += 2;
            if (lo <= c && c <= hi) return want;
        } else if (lo == c) {
            return want;
        }
    }
    return !want;
}

/* Does the subject byte at s match the single-character item p..ep? Counts one step. */
static bool item_matches(matcher_t *m, const char *s, const char *p, const char *ep)
{
    steps_add(m, 1);
    if (s >= m->src_end) return false;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return true;
    case ESC: return class_has(c, pat_at(m, p + 1));
    case '[': return set_has(m, c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* ---------------------------------------------------------------- the matcher */

static const char *match(matcher_t *m, const char *s, const char *p);

/* %bxy at p (pointing at x): a balanced run starting at s, or NULL. [-0, +0, e] */
static const char *match_balance(matcher_t *m, const char *s, const char *p)
{
    if (p + 1 >= m->pat_end) luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != *p) return NULL;
    int open = *p, close = p[1], depth = 1;
    while (++s < m->src_end) {
        steps_add(m, 1);
        if (*s == close) {
            if (--depth == 0) return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* The index of capture `digit` ('1'..'9') for a back-reference; raises if it is not closed.
 * [-0, +0, v] */
static int capture_index(matcher_t *m, int digit)
{
    int i = digit - '1';
    if (i < 0 || i >= m->level || m->cap[i].len == CAP_OPEN)
        return luaL_error(m->L, "invalid capture index %%%d", i + 1);
    return i;
}

/* %1..%9 at s: the text of that capture again, or NULL. A position capture never matches. */
static const char *match_backref(matcher_t *m, const char *s, int digit)
{
    const capture_t *c = &m->cap[capture_index(m, digit)];
    if (c->len < 0) return NULL; /* CAP_POS */
    size_t len = (size_t)c->len;
    steps_add(m, len / 8);
    if ((size_t)(m->src_end - s) < len || memcmp(c->init, s, len) != 0) return NULL;
    return s + len;
}

/* Open a capture at s (kind CAP_OPEN or CAP_POS) and match the rest p; undone on failure.
 * [-0, +0, e] */
static const char *capture_open(matcher_t *m, const char *s, const char *p, ptrdiff_t kind)
{
    if (m->level >= HR_PATTERN_MAXCAPTURES) luaL_error(m->L, "too many captures");
    m->cap[m->level].init = s;
    m->cap[m->level].len = kind;
    m->level++;
    const char *e = match(m, s, p);
    if (!e) m->level--;
    return e;
}

/* Close the innermost open capture at s and match the rest p; reopened on failure.
 * [-0, +0, e] */
static const char *capture_close(matcher_t *m, const char *s, const char *p)
{
    int i = m->level - 1;
    while (i >= 0 && m->cap[i].len != CAP_OPEN)
        i--;
    if (i < 0) luaL_error(m->L, "invalid pattern capture");
    m->cap[i].len = s - m->cap[i].init;
    const char *e = match(m, s, p);
    if (!e) m->cap[i].len = CAP_OPEN;
    return e;
}

/* Item p..ep repeated as often as possible from s, then the rest after ep[0] (the
 * quantifier); backs off one repetition at a time. */
static const char *expand_longest(matcher_t *m, const char *s, const char *p, const char *ep)
{
    size_t n = 0;
    while (item_matches(m, s + n, p, ep))
        n++;
    for (;;) {
        const char *e = match(m, s + n, ep + 1);
        if (e) return e;
        if (n == 0) return NULL;
        n--;
    }
}

/* Item p..ep repeated as few times as possible from s, then the rest after ep[0]. */
static const char *expand_shortest(matcher_t *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *e = match(m, s, ep + 1);
        if (e) return e;
        if (!item_matches(m, s, p, ep)) return NULL;
        s++;
    }
}

/* Match the pattern from p to its end against the subject from s. Returns the end of the
 * match in the subject, or NULL. Raises on a malformed pattern, on recursion deeper than
 * HR_PATTERN_MAXDEPTH, or when the charge function raises. Tail positions loop rather than
 * recurse. [-0, +0, e] */
static const char *match(matcher_t *m, const char *s, const char *p)
{
    if (m->depth-- == 0) luaL_error(m->L, "pattern too complex");
    steps_add(m, 1);
    while (s && p < m->pat_end) {
        switch (*p) {
        case '(':
            if (pat_at(m, p + 1) == ')')
                s = capture_open(m, s, p + 2, CAP_POS);
            else
                s = capture_open(m, s, p + 1, CAP_OPEN);
            goto done;
        case ')': s = capture_close(m, s, p + 1); goto done;
        case '$':
            if (p + 1 == m->pat_end) {
                if (s != m->src_end) s = NULL;
                goto done;
            }
            break; /* a '$' elsewhere is a literal */
        case ESC:
            switch (pat_at(m, p + 1)) {
            case 'b':
                s = match_balance(m, s, p + 2);
                p += 4;
                continue;
            case 'f': {
                p += 2;
                if (pat_at(m, p) != '[') luaL_error(m->L, "missing '[' after '%%f' in pattern");
                const char *ep = item_end(m, p);
                int prev = s == m->src ? 0 : (unsigned char)s[-1];
                if (!set_has(m, prev, p, ep - 1) && set_has(m, src_at(m, s), p, ep - 1))
                    p = ep;
                else
                    s = NULL;
                continue;
            }
            case '0':
            case '1':
            case '2':
            case '3':
            case '4':
            case '5':
            case '6':
            case '7':
            case '8':
            case '9':
                s = match_backref(m, s, pat_at(m, p + 1));
                p += 2;
                continue;
            default: break; /* a class or an escaped byte */
            }
            break;
        default: break;
        }
        /* A single-character item, maybe quantified. */
        const char *ep = item_end(m, p);
        int q = pat_at(m, ep);
        if (!item_matches(m, s, p, ep)) {
            if (q == '*' || q == '?' || q == '-') {
                p = ep + 1; /* zero repetitions are fine */
                continue;
            }
            s = NULL;
            goto done;
        }
        switch (q) {
        case '?': {
            const char *e = match(m, s + 1, ep + 1);
            if (e) {
                s = e;
                goto done;
            }
            p = ep + 1;
            continue;
        }
        case '+': s = expand_longest(m, s + 1, p, ep); goto done;
        case '*': s = expand_longest(m, s, p, ep); goto done;
        case '-': s = expand_shortest(m, s, p, ep); goto done;
        default:
            s++;
            p = ep;
            continue;
        }
    }
done:
    m->depth++;
    return s;
}

/* ---------------------------------------------------------------- captures to Lua */

/* Set m up to match pattern p against subject s on L, charging to charge. [-0, +0, -] */
static void matcher_init(matcher_t *m, lua_State *L, const char *s, size_t ls, const char *p,
                         size_t lp, hr_pattern_charge_fn charge)
{
    m->L = L;
    m->src = s;
    m->src_end = s + ls;
    m->pat_end = p + lp;
    m->charge = charge;
    m->steps = 0;
    m->depth = HR_PATTERN_MAXDEPTH;
    m->level = 0;
}

/* Forget the captures of a failed attempt before the next one. */
static void matcher_reset(matcher_t *m)
{
    m->depth = HR_PATTERN_MAXDEPTH;
    m->level = 0;
}

/* Capture i of the match s..e (capture 0 is the whole match when there are none). Sets *text
 * and returns its length, or pushes the position and returns CAP_POS. Raises on an
 * unfinished capture or an index past the captures. [-0, +(0|1), e] */
static ptrdiff_t capture_get(matcher_t *m, int i, const char *s, const char *e, const char **text)
{
    if (i >= m->level) {
        if (i != 0) luaL_error(m->L, "invalid capture index %%%d", i + 1);
        *text = s;
        return e - s;
    }
    ptrdiff_t len = m->cap[i].len;
    *text = m->cap[i].init;
    if (len == CAP_OPEN) luaL_error(m->L, "unfinished capture");
    if (len == CAP_POS) lua_pushinteger(m->L, (m->cap[i].init - m->src) + 1);
    return len;
}

/* Push capture i of the match s..e. [-0, +1, e] */
static void capture_push(matcher_t *m, int i, const char *s, const char *e)
{
    const char *text;
    ptrdiff_t len = capture_get(m, i, s, e, &text);
    if (len != CAP_POS) lua_pushlstring(m->L, text, (size_t)len);
}

/* Push every capture, or the whole match s..e if there are none and s is not NULL. Returns
 * how many values were pushed. [-0, +n, e] */
static int captures_push(matcher_t *m, const char *s, const char *e)
{
    int n = (m->level == 0 && s) ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        capture_push(m, i, s, e);
    return n;
}

/* ---------------------------------------------------------------- find, match */

/* The charge function stored as upvalue `up` of the running C closure. [-0, +0, -] */
static hr_pattern_charge_fn charge_of(lua_State *L, int up)
{
    const hr_pattern_charge_fn *slot = lua_touserdata(L, lua_upvalueindex(up));
    return slot ? *slot : NULL;
}

/* A 1-based, possibly negative, start position turned into a 0-based offset in 0..len
 * (or len + 1 and more when it starts past the end). */
static size_t start_offset(lua_Integer pos, size_t len)
{
    if (pos > 0) return (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)len) return 0;
    return len + (size_t)pos; /* pos in -len..-1 */
}

/* Does the pattern p[0..lp) hold none of the magic characters (embedded zeros allowed)? */
static bool is_plain(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (p[i] && strchr(SPECIALS, p[i])) return false;
    return true;
}

/* The first occurrence of needle[0..ln) in hay[0..lh), or NULL. */
static const char *find_plain(const char *hay, size_t lh, const char *needle, size_t ln)
{
    if (ln == 0) return hay;
    if (ln > lh) return NULL;
    const char *last = hay + (lh - ln);
    for (const char *h = hay; h <= last; h++) {
        h = memchr(h, needle[0], (size_t)(last - h) + 1);
        if (!h) return NULL;
        if (memcmp(h + 1, needle + 1, ln - 1) == 0) return h;
    }
    return NULL;
}

/* string.find (find = true) and string.match. [-0, +n, e] */
static int find_or_match(lua_State *L, bool find)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    if (find && (lua_toboolean(L, 4) || is_plain(p, lp))) {
        const char *at = find_plain(s + init, ls - init, p, lp);
        if (!at) {
            luaL_pushfail(L);
            return 1;
        }
        lua_pushinteger(L, (at - s) + 1);
        lua_pushinteger(L, (lua_Integer)((size_t)(at - s) + lp));
        return 2;
    }
    matcher_t m;
    bool anchored = lp > 0 && *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    matcher_init(&m, L, s, ls, p, lp, charge_of(L, 1));
    const char *from = s + init;
    for (;;) {
        matcher_reset(&m);
        const char *e = match(&m, from, p);
        if (e) {
            steps_flush(&m);
            if (!find) return captures_push(&m, from, e);
            lua_pushinteger(L, (from - s) + 1);
            lua_pushinteger(L, e - s);
            return 2 + captures_push(&m, NULL, NULL);
        }
        if (anchored || from >= m.src_end) break;
        from++;
    }
    steps_flush(&m);
    luaL_pushfail(L);
    return 1;
}

/* string.find. [-0, +n, e] */
static int l_find(lua_State *L)
{
    return find_or_match(L, true);
}

/* string.match. [-0, +n, e] */
static int l_match(lua_State *L)
{
    return find_or_match(L, false);
}

/* ---------------------------------------------------------------- gmatch */

typedef struct {
    size_t next;          /* offset where the next search starts (> length: done) */
    const char *last_end; /* end of the previous match, never matched empty again */
    const char *pat;      /* the pattern (kept alive as upvalue 2) */
    matcher_t m;          /* subject kept alive as upvalue 1 */
} gmatch_t;

/* The iterator: upvalues subject, pattern, gmatch_t. [-0, +n, e] */
static int gmatch_next(lua_State *L)
{
    gmatch_t *g = lua_touserdata(L, lua_upvalueindex(3));
    g->m.L = L; /* may run on another coroutine than the one that made it */
    size_t len = (size_t)(g->m.src_end - g->m.src);
    for (size_t off = g->next; off <= len; off++) {
        const char *from = g->m.src + off;
        matcher_reset(&g->m);
        const char *e = match(&g->m, from, g->pat);
        if (e && e != g->last_end) {
            g->last_end = e;
            g->next = (size_t)(e - g->m.src);
            steps_flush(&g->m);
            return captures_push(&g->m, from, e);
        }
    }
    g->next = len + 1; /* done: later calls return at once */
    steps_flush(&g->m);
    return 0;
}

/* string.gmatch(s, pattern [, init]): '^' is a literal here, not an anchor. [-0, +1, m] */
static int l_gmatch(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_offset(luaL_optinteger(L, 3, 1), ls);
    if (init > ls) init = ls + 1; /* past the end: no match */
    lua_settop(L, 2);             /* subject and pattern stay referenced by the iterator */
    gmatch_t *g = lua_newuserdatauv(L, sizeof *g, 0);
    matcher_init(&g->m, L, s, ls, p, lp, charge_of(L, 1));
    g->next = init;
    g->last_end = NULL;
    g->pat = p;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* ---------------------------------------------------------------- gsub */

/* Append the replacement string (argument 3) for the match s..e, expanding %0-%9 and %%.
 * [-0, +0, e] (what the buffer keeps aside) */
static void append_template(matcher_t *m, luaL_Buffer *b, const char *s, const char *e)
{
    size_t len;
    const char *r = lua_tolstring(m->L, 3, &len);
    const char *end = r + len;
    steps_add(m, len / 8);
    for (;;) {
        const char *pc = memchr(r, ESC, (size_t)(end - r));
        if (!pc) break;
        luaL_addlstring(b, r, (size_t)(pc - r));
        int c = pc + 1 < end ? (unsigned char)pc[1] : 0;
        if (c == ESC) {
            luaL_addchar(b, ESC);
        } else if (c == '0') {
            luaL_addlstring(b, s, (size_t)(e - s));
        } else if (is_digit(c)) {
            const char *text;
            ptrdiff_t n = capture_get(m, c - '1', s, e, &text);
            if (n == CAP_POS)
                luaL_addvalue(b); /* the position pushed by capture_get */
            else
                luaL_addlstring(b, text, (size_t)n);
        } else {
            luaL_error(m->L, "invalid use of '%c' in replacement string", ESC);
        }
        r = pc + 2;
    }
    luaL_addlstring(b, r, (size_t)(end - r));
}

/* Append the replacement for the match s..e according to the type of argument 3. Returns
 * whether the text changed (false when a table or function gave false or nil). Calls the
 * replacement function or indexes the table: any Lua may run. [-0, +0, e] (what the buffer
 * keeps aside) */
static bool append_replacement(matcher_t *m, luaL_Buffer *b, const char *s, const char *e, int type)
{
    lua_State *L = m->L;
    if (type == LUA_TFUNCTION) {
        lua_pushvalue(L, 3);
        int n = captures_push(m, s, e);
        lua_call(L, n, 1);
    } else if (type == LUA_TTABLE) {
        capture_push(m, 0, s, e);
        lua_gettable(L, 3);
    } else {
        append_template(m, b, s, e);
        return true;
    }
    if (!lua_toboolean(L, -1)) {
        lua_pop(L, 1); /* drop false/nil: keep the original text */
        luaL_addlstring(b, s, (size_t)(e - s));
        return false;
    }
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    luaL_addvalue(b);
    return true;
}

/* string.gsub(s, pattern, repl [, n]) -> new string, number of matches. [-0, +2, e] */
static int l_gsub(lua_State *L)
{
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    int type = lua_type(L, 3);
    lua_Integer max = luaL_optinteger(L, 4, (lua_Integer)ls + 1);
    luaL_argexpected(L,
                     type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                         type == LUA_TTABLE,
                     3, "string/function/table");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    bool anchored = lp > 0 && *p == '^';
    if (anchored) {
        p++;
        lp--;
    }
    matcher_t m;
    matcher_init(&m, L, s, ls, p, lp, charge_of(L, 1));
    const char *from = s, *last_end = NULL;
    lua_Integer n = 0;
    bool changed = false;
    while (n < max) {
        matcher_reset(&m);
        const char *e = match(&m, from, p);
        if (e && e != last_end) {
            n++;
            changed = append_replacement(&m, &b, from, e, type) || changed;
            from = last_end = e;
        } else if (from < m.src_end) {
            luaL_addchar(&b, *from++);
        } else {
            break;
        }
        if (anchored) break;
    }
    steps_flush(&m);
    if (!changed) {
        lua_pushvalue(L, 1);
    } else {
        luaL_addlstring(&b, from, (size_t)(m.src_end - from));
        luaL_pushresult(&b);
    }
    lua_pushinteger(L, n);
    return 2;
}

/* ---------------------------------------------------------------- install */

void hr_pattern_install(lua_State *L, int idx, hr_pattern_charge_fn charge)
{
    static const luaL_Reg fns[] = {
        {"find", l_find}, {"match", l_match}, {"gmatch", l_gmatch}, {"gsub", l_gsub}};
    idx = lua_absindex(L, idx);
    /* A full userdata holds the function pointer (a function pointer does not fit a light
     * userdata in ISO C); the four closures share it. */
    hr_pattern_charge_fn *slot = lua_newuserdatauv(L, sizeof *slot, 0);
    *slot = charge;
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        lua_pushvalue(L, -1);
        lua_pushcclosure(L, fns[i].func, 1);
        lua_setfield(L, idx, fns[i].name);
    }
    lua_pop(L, 1); /* slot */
}
