/* Logging: one line per message on stderr, written with one write(2) so lines from a
 * crashing process are not lost in a stdio buffer. The message is escaped (hr_log_escape),
 * so data in it cannot break or forge a line. */
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

size_t hr_log_escape(char *dst, size_t cap, const char *src, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        char esc[4];
        size_t elen = 0, take = 1;
        if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            elen = 2;
        } else if (c < 0x20 || c == 0x7F ||
                   (c >= 0x80 && (take = hr_utf8_len(s + i, n - i)) == 0)) {
            esc[0] = '\\';
            esc[1] = 'x';
            esc[2] = hex[c >> 4];
            esc[3] = hex[c & 15];
            elen = 4;
            take = 1;
        }
        size_t out = elen ? elen : take;
        if (out > cap - o) break; /* never cut an escape or a character in two */
        memcpy(dst + o, elen ? esc : (const char *)s + i, out);
        o += out;
        i += take;
    }
    return o;
}

void hr_log(hr_log_level_t level, const char *fmt, ...)
{
    if (!hr_log_enabled(level)) return;
    char msg[4096];
    char line[4096];
    char ts[32];
    hr_rfc3339(hr_wall_ms(), ts);
    int n = snprintf(line, sizeof line, "%s %-5s ", ts, level_names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t mlen = m < 0 ? 0 : (size_t)m >= sizeof msg ? sizeof msg - 1 : (size_t)m;
    /* The message carries event data (store ids, paths, rule text): escaped, it can never
     * end the line early or forge one. */
    size_t len = (size_t)n + hr_log_escape(line + n, sizeof line - (size_t)n - 1, msg, mlen);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
