/* Lua source scanning: find the calls of named global functions in a Lua file's text, with
 * their literal first argument, skipping comments and strings as Lua's lexer does
 * (src/lua_scan.c).
 *
 * For checks made before any code runs (a forward() to a target the config lacks, a rule
 * file that never calls respond()): a name inside a comment (--, --[[ ]], --[==[ ]==]) or a
 * string ('', "", [[ ]], [==[ ]==]) is text, not a call, and a field or method (a.forward,
 * a:forward) or a definition (function forward) is not the global. It reads text only: a
 * call made through another name (local f = forward) is not found. */
#ifndef HR_LUA_SCAN_H
#define HR_LUA_SCAN_H

#include <stdbool.h>
#include <stddef.h>

/* One call found. */
typedef struct {
    size_t fn;       /* index of the called name in the names array */
    const char *arg; /* the first argument when it is a literal string with no escapes (its
                        bytes, inside the source text), else NULL */
    size_t arg_len;
    int line; /* 1-based line of the name */
} hr_lua_call_t;

/* Called for each call in source order; returns false to stop the scan. */
typedef bool (*hr_lua_call_cb)(void *ud, const hr_lua_call_t *call);

/* Scan src (len bytes) for calls of the global functions in names (NULL-terminated): the
 * name followed (after spaces and comments) by '(', a string or '{'. */
void hr_lua_scan_calls(const char *src, size_t len, const char *const *names, hr_lua_call_cb cb,
                       void *ud);

#endif
