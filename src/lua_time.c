/* Time for rules: time.parse/format/now and the clock of os.time/os.date (see
 * include/hr/lua_time.h). Calendar arithmetic on the proleptic Gregorian calendar, in integers
 * (no time_t, no locale, no time zone database). */
#include "hr/lua_time.h"

#include <lauxlib.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hr/lua_crypto.h"

/* ---------------------------------------------------------------- calendar */

/* Days since 1970-01-01 of the date y-m-d (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* The date of day z since 1970-01-01 (civil_from_days). */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

static bool is_leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int month_days(int64_t y, int m)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : days[m - 1];
}

/* Floor division and its remainder, for times before the epoch. */
static int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* ---------------------------------------------------------------- parse */

/* Read exactly k digits at s[*i] into *v. */
static bool digits(const char *s, size_t n, size_t *i, int k, int *v)
{
    int x = 0;
    for (int j = 0; j < k; j++, (*i)++) {
        if (*i >= n || s[*i] < '0' || s[*i] > '9') return false;
        x = x * 10 + (s[*i] - '0');
    }
    *v = x;
    return true;
}

int hr_time_parse(const char *s, size_t n, int64_t *ms, char *err, size_t errlen)
{
    size_t i = 0;
    int y, mo, d, h, mi, sec, frac = 0;
    const char *what = NULL;
    if (!digits(s, n, &i, 4, &y) || i >= n || s[i++] != '-' || !digits(s, n, &i, 2, &mo) ||
        i >= n || s[i++] != '-' || !digits(s, n, &i, 2, &d))
        what = "expected a date YYYY-MM-DD";
    else if (i >= n || (s[i] != 'T' && s[i] != 't' && s[i] != ' ') || (i++, false))
        what = "expected 'T' after the date";
    else if (!digits(s, n, &i, 2, &h) || i >= n || s[i++] != ':' || !digits(s, n, &i, 2, &mi) ||
             i >= n || s[i++] != ':' || !digits(s, n, &i, 2, &sec))
        what = "expected a time hh:mm:ss";
    if (what) goto fail;
    if (i < n && s[i] == '.') {
        i++;
        size_t start = i;
        for (; i < n && s[i] >= '0' && s[i] <= '9'; i++)
            if (i - start < 3) frac = frac * 10 + (s[i] - '0');
        if (i == start) {
            what = "expected digits after '.'";
            goto fail;
        }
        for (size_t k = i - start; k < 3; k++)
            frac *= 10;
    }
    int offset = 0; /* minutes east of UTC */
    if (i < n && (s[i] == 'Z' || s[i] == 'z')) {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int sign = s[i++] == '-' ? -1 : 1, oh, om;
        if (!digits(s, n, &i, 2, &oh) || i >= n || s[i++] != ':' || !digits(s, n, &i, 2, &om)) {
            what = "expected an offset +hh:mm or -hh:mm";
            goto fail;
        }
        if (oh > 23 || om > 59) {
            snprintf(err, errlen, "offset %c%02d:%02d out of range", sign < 0 ? '-' : '+', oh, om);
            return -1;
        }
        offset = sign * (oh * 60 + om);
    } else {
        what = "expected 'Z' or an offset +hh:mm / -hh:mm";
        goto fail;
    }
    if (i != n) {
        what = "unexpected text after the time";
        goto fail;
    }
    if (mo < 1 || mo > 12) {
        snprintf(err, errlen, "month %d out of range", mo);
        return -1;
    }
    if (d < 1 || d > month_days(y, mo)) {
        snprintf(err, errlen, "day %d out of range for %04d-%02d (%d days)", d, y, mo,
                 month_days(y, mo));
        return -1;
    }
    if (h > 23 || mi > 59 || sec > 60) {
        snprintf(err, errlen, "time %02d:%02d:%02d out of range", h, mi, sec);
        return -1;
    }
    int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset * 60;
    *ms = secs * 1000 + frac;
    return 0;
fail:
    snprintf(err, errlen, "%s at offset %zu", what, i > n ? n : i);
    return -1;
}

/* ---------------------------------------------------------------- format */

static const char *const WDAY[] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                   "Thursday", "Friday", "Saturday"};
static const char *const MONTH[] = {"January",   "February", "March",    "April",
                                    "May",       "June",     "July",     "August",
                                    "September", "October",  "November", "December"};

int hr_time_format(int64_t ms, const char *fmt, hr_buf_t *out, char *err, size_t errlen)
{
    if (!fmt) fmt = "%Y-%m-%dT%H:%M:%S.%fZ";
    int64_t days = floor_div(ms, 86400000), in_day = ms - days * 86400000;
    int64_t y;
    int mo, d;
    civil_from_days(days, &y, &mo, &d);
    int h = (int)(in_day / 3600000), mi = (int)(in_day / 60000 % 60);
    int sec = (int)(in_day / 1000 % 60), msec = (int)(in_day % 1000);
    int wday = (int)((days % 7 + 11) % 7); /* 1970-01-01 was a Thursday (4) */
    int yday = (int)(days - days_from_civil(y, 1, 1)) + 1;
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') {
            hr_buf_appendc(out, *p);
            continue;
        }
        char c = *++p;
        if (strchr("YyFj", c) && (y < 0 || y > 9999)) {
            snprintf(err, errlen, "year %lld is outside 0..9999", (long long)y);
            return -1;
        }
        switch (c) {
        case 'Y': hr_buf_printf(out, "%04d", (int)y); break;
        case 'y': hr_buf_printf(out, "%02d", (int)(y % 100)); break;
        case 'm': hr_buf_printf(out, "%02d", mo); break;
        case 'd': hr_buf_printf(out, "%02d", d); break;
        case 'e': hr_buf_printf(out, "%2d", d); break;
        case 'H': hr_buf_printf(out, "%02d", h); break;
        case 'I': hr_buf_printf(out, "%02d", h % 12 ? h % 12 : 12); break;
        case 'p': hr_buf_appends(out, h < 12 ? "AM" : "PM"); break;
        case 'M': hr_buf_printf(out, "%02d", mi); break;
        case 'S': hr_buf_printf(out, "%02d", sec); break;
        case 'f': hr_buf_printf(out, "%03d", msec); break;
        case 'j': hr_buf_printf(out, "%03d", yday); break;
        case 'a': hr_buf_append(out, WDAY[wday], 3); break;
        case 'A': hr_buf_appends(out, WDAY[wday]); break;
        case 'b': hr_buf_append(out, MONTH[mo - 1], 3); break;
        case 'B': hr_buf_appends(out, MONTH[mo - 1]); break;
        case 'F': hr_buf_printf(out, "%04d-%02d-%02d", (int)y, mo, d); break;
        case 'T': hr_buf_printf(out, "%02d:%02d:%02d", h, mi, sec); break;
        case 's': hr_buf_printf(out, "%lld", (long long)floor_div(ms, 1000)); break;
        case 'z': hr_buf_appends(out, "+0000"); break;
        case 'Z': hr_buf_appends(out, "UTC"); break;
        case '%': hr_buf_appendc(out, '%'); break;
        default:
            if (c)
                snprintf(err, errlen, "unsupported conversion '%%%c'", c);
            else
                snprintf(err, errlen, "'%%' at the end of the format");
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- Lua */

/* The slot shared by every closure: the clock and the charge function. */
typedef struct {
    hr_pattern_charge_fn charge_fn; /* first: hr_lua_charge_bytes reads it */
    hr_lua_clock_fn clock;
} time_slot_t;

static time_slot_t *slot_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

#define charge hr_lua_charge_bytes /* the slot starts with the charge function */

static int64_t now_ms(lua_State *L)
{
    time_slot_t *s = slot_of(L);
    return s->clock ? s->clock(L) : (int64_t)hr_wall_ms();
}

/* time.now() -> integer ms. [-0, +1, -] */
static int l_now(lua_State *L)
{
    lua_pushinteger(L, now_ms(L));
    return 1;
}

/* time.parse(s | n) -> integer ms, or raise. [-0, +1, v] */
static int l_parse(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TNUMBER) {
        int64_t v;
        if (lua_isinteger(L, 1)) {
            v = lua_tointeger(L, 1);
        } else {
            double x = lua_tonumber(L, 1);
            if (!isfinite(x) || fabs(x) >= 9.2e15)
                return luaL_error(L, "time.parse: number %f out of range", x);
            v = (int64_t)floor(fabs(x) < (double)HR_TIME_SECONDS_BELOW ? x * 1000 : x);
            lua_pushinteger(L, v);
            return 1;
        }
        if (v > -HR_TIME_SECONDS_BELOW && v < HR_TIME_SECONDS_BELOW) v *= 1000;
        lua_pushinteger(L, v);
        return 1;
    }
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    charge(L, n);
    int64_t ms;
    char err[160];
    if (hr_time_parse(s, n, &ms, err, sizeof err) != 0)
        return luaL_error(L, "time.parse: %s in '%s'", err, n > 64 ? "(long text)" : s);
    lua_pushinteger(L, ms);
    return 1;
}

/* time.format(ms [, fmt]) -> string. [-0, +1, v] */
static int l_format(lua_State *L)
{
    lua_Integer ms;
    if (lua_isinteger(L, 1))
        ms = lua_tointeger(L, 1);
    else
        ms = (lua_Integer)floor(luaL_checknumber(L, 1));
    const char *fmt = luaL_optstring(L, 2, NULL);
    charge(L, fmt ? strlen(fmt) : 0);
    hr_buf_t b = HR_BUF_INIT;
    char err[128];
    if (hr_time_format(ms, fmt, &b, err, sizeof err) != 0) {
        hr_buf_free(&b);
        return luaL_error(L, "time.format: %s", err);
    }
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    hr_buf_free(&b);
    return 1;
}

/* os.time([t]): the library's for a table; without one, the clock's seconds.
 * Upvalue 2: the original. [-0, +1, v] */
static int l_os_time(lua_State *L)
{
    if (!lua_isnoneornil(L, 1)) {
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_insert(L, 1);
        lua_call(L, lua_gettop(L) - 1, 1);
        return 1;
    }
    lua_pushinteger(L, floor_div(now_ms(L), 1000));
    return 1;
}

/* os.date([fmt [, t]]): the library's, given the clock's seconds when t is absent.
 * Upvalue 2: the original. [-0, +1, v] */
static int l_os_date(lua_State *L)
{
    const char *fmt = luaL_optstring(L, 1, "%c");
    bool has_t = !lua_isnoneornil(L, 2);
    lua_Integer t = has_t ? luaL_checkinteger(L, 2) : floor_div(now_ms(L), 1000);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_pushstring(L, fmt);
    lua_pushinteger(L, t);
    lua_call(L, 2, 1);
    return 1;
}

void hr_lua_time_install(lua_State *L, int os_idx, hr_lua_clock_fn clock,
                         hr_pattern_charge_fn charge_fn)
{
    os_idx = lua_absindex(L, os_idx);
    time_slot_t *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->clock = clock;
    s->charge_fn = charge_fn;
    int slot = lua_gettop(L);
    static const struct {
        const char *name;
        lua_CFunction fn;
    } fns[] = {{"parse", l_parse}, {"format", l_format}, {"now", l_now}};
    lua_createtable(L, 0, 3);
    for (size_t i = 0; i < HR_ARRAY_SIZE(fns); i++) {
        lua_pushvalue(L, slot);
        lua_pushcclosure(L, fns[i].fn, 1);
        lua_setfield(L, -2, fns[i].name);
    }
    lua_setglobal(L, "time");
    lua_pushvalue(L, slot);
    lua_getfield(L, os_idx, "time");
    lua_pushcclosure(L, l_os_time, 2);
    lua_setfield(L, os_idx, "time");
    lua_pushvalue(L, slot);
    lua_getfield(L, os_idx, "date");
    lua_pushcclosure(L, l_os_date, 2);
    lua_setfield(L, os_idx, "date");
    lua_pop(L, 1); /* slot */
}
