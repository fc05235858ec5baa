/* Logging to stderr, one line per message, as text or as JSON:
 *   text: 2024-05-14T16:02:11.482Z info  delivered id=019... target=pos status=200 ms=3
 *   json: {"ts":"2024-05-14T16:02:11.482Z","level":"info","msg":"delivered","id":"019...",...}
 * Plain lines (hr_log) are a printf message; structured lines (hr_log_kv) are a message plus
 * fields whose extent the formatter knows: in text they are logfmt pairs (key=value, the value
 * quoted when it must be), in JSON keys of the object. A line is at most HR_LOG_LINE_MAX bytes:
 * longer ones are cut with a marker, never dropped by the formatter. Writing never waits for
 * stderr (once hr_log_never_block ran): a line stderr cannot take at once is counted, and the
 * count is logged when a line gets through again. */
#ifndef HR_LOG_H
#define HR_LOG_H

#include <stdbool.h>

#include "hr/common.h"

typedef enum { HR_LOG_DEBUG = 0, HR_LOG_INFO, HR_LOG_WARN, HR_LOG_ERROR } hr_log_level_t;
typedef enum { HR_LOG_TEXT = 0, HR_LOG_JSON } hr_log_format_t;

/* The longest line, its '\n' included: PIPE_BUF, so that a line is one atomic write on a pipe
 * (lines from several worker threads never interleave). */
#define HR_LOG_LINE_MAX 4096
/* The smallest cap hr_log_format_line accepts. */
#define HR_LOG_LINE_MIN 512

/* ---- Settings (any thread; a change need not be ordered with anything else) */

void hr_log_set_level(hr_log_level_t level);
/* Parse "debug", "info", "warn" or "error". Returns 0, or -1 if unknown. */
int hr_log_level_parse(const char *s, hr_log_level_t *level);
bool hr_log_enabled(hr_log_level_t level);
void hr_log_set_format(hr_log_format_t format);
/* Parse "text" or "json". Returns 0, or -1 if unknown. */
int hr_log_format_parse(const char *s, hr_log_format_t *format);
/* Apply a config's log.level and log.format (either may be NULL; a name that does not parse
 * leaves that setting as it was: config.c has refused it already), then write the lines held
 * since hr_log_hold in that format (those the level still enables). Cannot fail. */
void hr_log_apply(const char *level, const char *format);
/* Until the next hr_log_apply, keep lines (the first 16; later ones are written at once)
 * instead of writing them, so that lines logged while the config loads come out in the format
 * it sets. Call before threads start. Cannot fail. */
void hr_log_hold(void);

/* ---- Where lines go */

/* Make sure descriptors 0, 1 and 2 are open (on /dev/null where they were closed), so that no
 * file or socket the process opens later becomes stderr and receives log lines. Call first
 * thing in main(). Cannot fail (without /dev/null nothing changes). */
void hr_log_reserve_stdio(void);
/* From now on a line never waits for stderr: a pipe, FIFO or terminal is written through a
 * descriptor of its own opened non-blocking (the one other processes share is left as it is),
 * a socket with MSG_DONTWAIT | MSG_NOSIGNAL, a regular file as it is. A line that cannot be
 * written at once (a full pipe nobody reads, /dev/full, a closed reader) is dropped and
 * counted; the next line that gets through is preceded by a warn line with the count. Call
 * before starting threads; calling again re-examines stderr. SIGPIPE must be ignored by the
 * caller (a pipe whose reader is gone). Cannot fail. */
void hr_log_never_block(void);
/* Lines dropped since the start because stderr could not take them. */
unsigned long long hr_log_dropped(void);

/* ---- Lines */

/* Log one plain line: the printf-formatted message, escaped as hr_log_escape says (JSON mode:
 * as a JSON string), so event data in it cannot break the line or forge another. */
void hr_log(hr_log_level_t level, const char *fmt, ...) HR_PRINTF(2, 3);

typedef enum { HR_LOG_STR, HR_LOG_INT, HR_LOG_UINT, HR_LOG_MS } hr_log_type_t;

/* One field of a structured line; build them with the HR_KV_* macros. */
typedef struct {
    const char *key;    /* a literal, [a-z0-9_]+, not ts, level, msg or truncated */
    hr_log_type_t type; /* which member below */
    union {
        const char *s;        /* HR_LOG_STR: NUL-terminated; NULL is "-" in text, null in JSON */
        long long i;          /* HR_LOG_INT */
        unsigned long long u; /* HR_LOG_UINT */
        double ms;            /* HR_LOG_MS: written with two decimals */
    };
} hr_log_field_t;

#define HR_KV_STR(k, v)  ((hr_log_field_t){.key = (k), .type = HR_LOG_STR, .s = (v)})
#define HR_KV_INT(k, v)  ((hr_log_field_t){.key = (k), .type = HR_LOG_INT, .i = (v)})
#define HR_KV_UINT(k, v) ((hr_log_field_t){.key = (k), .type = HR_LOG_UINT, .u = (v)})
#define HR_KV_MS(k, v)   ((hr_log_field_t){.key = (k), .type = HR_LOG_MS, .ms = (v)})

/* Log one structured line: msg (a literal that names what happened) and n fields, in order.
 * Text: "<msg> key=value ..."; a string value that is empty or holds a space, a control byte,
 * '"', '=', DEL or bytes that are not valid UTF-8 is quoted ("..." with \" \\ \n \r \t \xNN
 * inside, which logfmt parsers read back byte for byte); other values are written as they are.
 * JSON: msg and each field a key; numbers as numbers. */
void hr_log_fields(hr_log_level_t level, const char *msg, const hr_log_field_t *f, size_t n);
/* hr_log_kv(HR_LOG_INFO, "delivered", HR_KV_STR("id", id), HR_KV_INT("status", 200)); the
 * fields are evaluated only when the level is enabled. */
#define hr_log_kv(level, msg, ...)                                                                 \
    do {                                                                                           \
        if (hr_log_enabled(level)) {                                                               \
            const hr_log_field_t hr_kv_[] = {__VA_ARGS__};                                         \
            hr_log_fields(level, msg, hr_kv_, HR_ARRAY_SIZE(hr_kv_));                              \
        }                                                                                          \
    } while (0)

/* ---- The formatter (pure, for tests) */

/* Format one line, '\n' included, into dst (cap bytes, HR_LOG_LINE_MIN <= cap; no NUL added)
 * as format says, at wall time wall_ms: the message msg[0..msg_len) and n fields. A line that
 * would be longer than cap is cut to fit: the longest string values (the message counts as
 * one) are shortened first, each to the same length, and each cut one ends in
 * "...[truncated N bytes]" (N: its bytes left out, before escaping), inside its quotes (a cut
 * text value is quoted); JSON adds "truncated": the total left out. Fields that would not fit
 * even then are left out from the end (counted in N). Always a whole line (and in JSON mode
 * one valid JSON object). Returns its length. Cannot fail. */
size_t hr_log_format_line(char *dst, size_t cap, hr_log_format_t format, uint64_t wall_ms,
                          hr_log_level_t level, const char *msg, size_t msg_len,
                          const hr_log_field_t *f, size_t n);

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
