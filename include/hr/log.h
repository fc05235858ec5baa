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
void hr_log(hr_log_level_t level, const char *fmt, ...) HR_PRINTF(2, 3);

#define hr_log_debug(...)                                                                          \
    do {                                                                                           \
        if (hr_log_enabled(HR_LOG_DEBUG)) hr_log(HR_LOG_DEBUG, __VA_ARGS__);                       \
    } while (0)
#define hr_log_info(...)  hr_log(HR_LOG_INFO, __VA_ARGS__)
#define hr_log_warn(...)  hr_log(HR_LOG_WARN, __VA_ARGS__)
#define hr_log_error(...) hr_log(HR_LOG_ERROR, __VA_ARGS__)

#endif
