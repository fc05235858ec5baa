/* Helpers for the rule set tests: a temporary config folder, loading it, running an event. */
#ifndef HR_TEST_RULES_UTIL_H
#define HR_TEST_RULES_UTIL_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hr/config.h"
#include "hr/rules.h"

static char dir[256]; /* the test's folder, made by the test's main() with mkdtemp */

/* Write dir/rel (making its folders) from a printf format. */
static void write_file(const char *rel, const char *fmt, ...)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    CHECK(system(cmd) == 0);
    *slash = '/';
    FILE *f = fopen(path, "w");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* Load dir/hookrouter.lua and its rules; returns the rule set or NULL, errors joined into
 * errbuf (one per line). */
static hr_ruleset_t *load(char *errbuf, size_t errlen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/hookrouter.lua", dir);
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(path, &errs);
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    errbuf[0] = '\0';
    for (size_t i = 0; i < errs.n; i++) {
        strncat(errbuf, errs.msgs[i], errlen - strlen(errbuf) - 2);
        strcat(errbuf, "\n");
    }
    hr_errors_free(&errs);
    return rs;
}

/* Load, or CHECK-fail with the errors printed and return NULL. */
static inline hr_ruleset_t *must_load(void)
{
    char err[4096];
    hr_ruleset_t *rs = load(err, sizeof err);
    CHECK(rs != NULL);
    if (!rs) fprintf(stderr, "  load failed:\n%s", err);
    return rs;
}

/* A POST /hook event with body (kept by the caller) and one header, x-test: yes. */
static hr_event_in_t test_event(const char *body)
{
    static const hr_header_t h[] = {{"x-test", "yes"}};
    return (hr_event_in_t){.id = "0190a7e0-0000-7000-8000-000000000001",
                           .type = "thing.happened",
                           .method = "POST",
                           .path = "/hook",
                           .headers = h,
                           .nheaders = 1,
                           .body = body,
                           .body_len = strlen(body),
                           .received_at = "2026-01-01T00:00:00.000Z",
                           .token = 1};
}

/* Run the rule for a POST /hook with body. */
static void run(hr_ruleset_t *rs, const char *body, hr_run_result_t *res)
{
    hr_event_in_t ev = test_event(body);
    hr_ruleset_run(rs, &ev, res);
}

#endif
