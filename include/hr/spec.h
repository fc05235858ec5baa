/* Spec files for `hookrouter test` (src/spec.c): loading and checking a <name>.test.lua file,
 * and comparing what a rule did with what a case expects.
 *
 * A spec file is a Lua chunk (its own plain state: the base, string, table, math and utf8
 * libraries, os.getenv and json) returning a list of cases; each case is a table with name,
 * path, headers, file or body, now, reply, expect, expect_reply and expect_error (README,
 * "Testing rules"). Loading checks every case: an unknown key, a missing name or path, a body
 * file that cannot be read is an error "file:line: message", the line being that of the
 * case's name in the source when it can be found, so a typo fails the spec and not silently
 * nothing. Expected values stay in the state (registry references) for hr_spec_diff. */
#ifndef HR_SPEC_H
#define HR_SPEC_H

#include <lua.h>

#include "hr/common.h"

#define HR_SPEC_DEFAULT_NOW "2026-01-01T00:00:00Z" /* a case's clock without `now` */

/* One case, as loaded. */
typedef struct {
    char *name;
    char *path;           /* the request path, an endpoint of the config */
    hr_header_t *headers; /* names lower-case */
    size_t nheaders;
    char *body; /* the request body: the file's bytes, a table as JSON, a string */
    size_t body_len;
    int64_t now_ms;       /* the case's clock (now, or HR_SPEC_DEFAULT_NOW) */
    int reply_ref;        /* registry ref of reply (a table or a function), or LUA_NOREF */
    int expect_ref;       /* registry ref of expect (a list of action tables), or LUA_NOREF */
    int expect_reply_ref; /* registry ref of expect_reply, or LUA_NOREF */
    char *expect_error;   /* a Lua pattern the rule's error must match, or NULL */
    int line;             /* where the case is in the file, for messages */
} hr_spec_case_t;

/* A loaded spec file. */
typedef struct {
    char *file;   /* as given */
    lua_State *L; /* the spec's state: expected values and reply functions */
    hr_spec_case_t *cases;
    size_t ncases;
} hr_spec_t;

/* Load and check file. Returns the spec, or NULL with "file:line: message" in err. */
hr_spec_t *hr_spec_load(const char *file, char *err, size_t errlen);
/* Close the spec's state and free it. Accepts NULL. */
void hr_spec_free(hr_spec_t *s);

/* The spec files of a rules folder: <rules_dir>/tests/<name>.test.lua, sorted by name. Returns a
 * malloc'd array of malloc'd paths (NULL and *n = 0 if there is none or no such folder). */
char **hr_spec_find(const char *rules_dir, size_t *n);

/* Compare the expected value at e with the actual one at a, as a subset: every key of an
 * expected table must match in the actual one (keys not named are not checked); an expected
 * array (a table with [1], or json.array) must have as many elements, compared one by one;
 * a key named "headers" is looked up case-insensitively (actual names are lower case); numbers
 * compare by value (1 == 1.0); json.null only matches json.null. Appends one line
 * "# <path>: expected X, got Y\n" per difference to out and returns how many there were.
 * [-0, +0, m] */
int hr_spec_diff(lua_State *L, int e, int a, const char *path, hr_buf_t *out);
/* Append the value at idx as diff lines show it: a JSON string, a number, true/false, null,
 * "nothing" for nil, a table as JSON (cut after 160 bytes). [-0, +0, m] */
void hr_spec_show(lua_State *L, int idx, hr_buf_t *out);

#endif
