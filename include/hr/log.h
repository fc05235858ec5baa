/* Logging to stderr, one line per message: "2024-05-14T16:02:11.482Z info  message". */
#ifndef HR_LOG_H
#define HR_LOG_H

#include <stdbool.h>

#include "hr/common.h"

typedef enum { HR_LOG_DEBUG = 0, HR_LOG_INFO, HR_LOG_WARN, HR_LOG_ERROR } hr_log_level_t;

void hr_log_set_level(hr_log_level_t level);
/* Parse "debug", "info", "warn" or "error". Returns 0, or -1 if unknown. */
int hr_log_level_parse(const char *s, hr_log_level_t *level);
bool hr_log_enabled(hr_log_level_t level);
/* Log one line. The formatted message (cut at 4 KB) is passed through hr_log_escape, so
 * event data in it (store ids, paths, rule text) cannot break the line or forge another. */
void hr_log(hr_log_level_t level, const char *fmt, ...) HR_PRINTF(2, 3);
/* Copy src[0..n) into dst (at most cap bytes, no NUL added), escaping what must not reach a
 * log line raw: LF, CR and tab as \n, \r, \t; other bytes below 0x20, 0x7F and every byte
 * that is not part of valid UTF-8 as \xNN. Valid UTF-8 and backslashes are copied as they
 * are. Stops before an escape or a character that would not fit whole. Returns the bytes
 * written. Cannot fail. */
size_t hr_log_escape(char *dst, size_t cap, const char *src, size_t n);

#define hr_log_debug(...)                                                                          \
    do {                                                                                           \
        if (hr_log_enabled(HR_LOG_DEBUG)) hr_log(HR_LOG_DEBUG, __VA_ARGS__);                       \
    } while (0)
#define hr_log_info(...)  hr_log(HR_LOG_INFO, __VA_ARGS__)
#define hr_log_warn(...)  hr_log(HR_LOG_WARN, __VA_ARGS__)
#define hr_log_error(...) hr_log(HR_LOG_ERROR, __VA_ARGS__)

#endif
