/* hookrouter test (src/cli_test.c): spec files run against the rules, or one request path and
 * its payloads printed as JSON lines. Nothing is sent or written.
 *
 * Spec form (no --path): every case of each spec file (default: the rules folder's
 * tests/<name>.test.lua) runs as a POST to its path, on a fixed clock (the case's now) with an
 * event id derived from the file name, the case's position and its name (the same on every
 * run); its request() calls are answered by the case's reply; what the rule did (request,
 * forward, write and drop actions in call order; the reply the sender would get; the error)
 * is compared with expect, expect_reply and expect_error. Output is TAP (`ok 1 - name`,
 * `not ok 2 - name` followed by `# path: expected X, got Y` lines), then `1..N` and
 * `N passed, M failed`; a spec file that does not load counts as one failure reported as
 * `file:line: message`. junit (or NULL) is a file to write JUnit XML to.
 *
 * Payload form (--path): as before, with now (RFC 3339, or NULL: the wall clock) fixing the
 * clock and id (or NULL: a new UUIDv7) the event id. */
#ifndef HR_CLI_TEST_H
#define HR_CLI_TEST_H

#include <stddef.h>

typedef struct {
    const char *config;
    const char *path; /* --path: the payload form; NULL: spec files */
    char **headers;   /* --header "Name: value" (payload form) */
    size_t nheaders;
    char **files; /* payloads, or spec files (none: the default folder) */
    size_t nfiles;
    const char *reply; /* --reply FILE.json | FILE.lua (payload form) */
    const char *now;   /* --now TIME (payload form) */
    const char *id;    /* --id ID (payload form) */
    const char *junit; /* --junit FILE (spec form) */
} hr_test_opts_t;

/* Run `hookrouter test`. Returns the exit status: 0 when everything passed (or ran), 1 when
 * a case failed, a spec did not load or a rule failed, 2 for unusable options. */
int hr_cmd_test(const hr_test_opts_t *o);

#endif
