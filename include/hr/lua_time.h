/* Time for rules (src/lua_time.c): the global time (parse, format, now) and the clock behind
 * os.time() and os.date().
 *
 * Times are integer milliseconds since the Unix epoch (UTC), negative before 1970. Parsing
 * takes RFC 3339 strictly (date, 'T' or 't' or one space, time with seconds, an optional
 * fraction of any length truncated to milliseconds, then 'Z', 'z' or a +hh:mm / -hh:mm
 * offset), checking day-of-month against the month and leap years; second 60 (a leap second)
 * is read as the first second of the next minute, as POSIX time has no leap seconds.
 * Formatting is UTC only, with its own strftime subset (no locale). Every Lua function
 * charges its input length to the running script, as src/lua_crypto.c does. */
#ifndef HR_LUA_TIME_H
#define HR_LUA_TIME_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/common.h"
#include "hr/pattern.h"

/* The current time for the script running on L, in ms since the epoch: the wall clock, or a
 * fixed time (hookrouter test). Must not raise. */
typedef int64_t (*hr_lua_clock_fn)(lua_State *L);

/* Integers with an absolute value below this are seconds in time.parse, others ms. */
#define HR_TIME_SECONDS_BELOW INT64_C(100000000000)

/* Parse the RFC 3339 time s (n bytes) into *ms. Returns 0, or -1 with the reason in err
 * ("day 30 is past the end of month 2 of 2023 (28 days)"). */
int hr_time_parse(const char *s, size_t n, int64_t *ms, char *err, size_t errlen);

/* Append ms formatted by fmt (NULL: RFC 3339 with milliseconds, 2026-01-02T03:04:05.000Z) to
 * out. Conversions: %Y %y %m %d %e %H %I %p %M %S %f (milliseconds, 3 digits) %j %a %A %b %B
 * %F (%Y-%m-%d) %T (%H:%M:%S) %s (epoch seconds) %z (+0000) %Z (UTC) %%. Returns 0, or -1
 * with err naming an unsupported conversion or a year outside 0..9999 (out is then partly
 * written). */
int hr_time_format(int64_t ms, const char *fmt, hr_buf_t *out, char *err, size_t errlen);

/* Set the global time of L (parse, format, now) and replace os.time and os.date in the table
 * at os_idx so that, without a time argument, they use clock instead of the wall clock. The
 * functions charge their work to charge (NULL: free). [-0, +0, m] */
void hr_lua_time_install(lua_State *L, int os_idx, hr_lua_clock_fn clock,
                         hr_pattern_charge_fn charge);

#endif
