/* Logging: one line per message on stderr, written with one write(2) so lines from a
 * crashing process are not lost in a stdio buffer. */
#include "hr/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Set by whichever thread loads a config (every worker on reload), read by all: atomic, relaxed
 * (a level change need not be ordered with anything else). */
static _Atomic int min_level = HR_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

void hr_log_set_level(hr_log_level_t level)
{
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

int hr_log_level_parse(const char *s, hr_log_level_t *level)
{
    for (size_t i = 0; i < HR_ARRAY_SIZE(level_names); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *level = (hr_log_level_t)i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *level = HR_LOG_WARN;
        return 0;
    }
    return -1;
}

bool hr_log_enabled(hr_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

void hr_log(hr_log_level_t level, const char *fmt, ...)
{
    if (!hr_log_enabled(level)) return;
    char line[4096];
    char ts[32];
    hr_rfc3339(hr_wall_ms(), ts);
    int n = snprintf(line, sizeof line, "%s %-5s ", ts, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2) len = sizeof line - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
