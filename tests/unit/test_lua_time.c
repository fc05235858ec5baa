/* Unit test for src/lua_time.c: RFC 3339 parsing against reference values (leap years,
 * offsets, fractions, invalid input), formatting, and through the sandbox time.parse's
 * integer inputs and the fixed clock of os.time, os.date and time.now. */
#include <unistd.h>

#include "hr/lua_time.h"
#include "rules_util.h"

/* Parse s and compare with want (ms), or expect an error containing the text after '!'. */
static void parse(const char *s, int64_t want, const char *err_part)
{
    int64_t ms = 0;
    char err[160] = "";
    int rc = hr_time_parse(s, strlen(s), &ms, err, sizeof err);
    if (err_part) {
        if (rc == 0 || !strstr(err, err_part))
            fprintf(stderr, "  %s: rc %d err '%s', want '%s'\n", s, rc, err, err_part);
        CHECK(rc != 0 && strstr(err, err_part));
    } else {
        if (rc != 0) fprintf(stderr, "  %s: %s\n", s, err);
        CHECK_INT_EQ(rc, 0);
        CHECK_INT_EQ(ms, want);
    }
}

static void test_parse(void)
{
    parse("1970-01-01T00:00:00Z", 0, NULL);
    parse("2026-01-02T03:04:05Z", INT64_C(1767323045000), NULL); /* date -d ... +%s */
    parse("2026-01-02t03:04:05z", INT64_C(1767323045000), NULL); /* RFC 3339 5.6 NOTE */
    parse("2026-01-02 03:04:05Z", INT64_C(1767323045000), NULL);
    parse("2025-03-14T17:44:05.061Z", INT64_C(1741974245061), NULL);
    parse("2025-03-14T17:44:05.0619999Z", INT64_C(1741974245061), NULL); /* truncated */
    parse("2025-03-14T17:44:05.5Z", INT64_C(1741974245500), NULL);
    parse("2025-03-14T18:44:05.061+01:00", INT64_C(1741974245061), NULL);
    parse("2025-03-14T12:14:05.061-05:30", INT64_C(1741974245061), NULL);
    parse("2025-03-14T17:44:05-00:00", INT64_C(1741974245000), NULL);
    parse("1969-12-31T23:59:59.999Z", -1, NULL);                          /* before the epoch */
    parse("1937-01-01T12:00:27.87+00:20", INT64_C(-1041337172130), NULL); /* RFC 3339 5.8 */
    parse("2000-02-29T00:00:00Z", INT64_C(951782400000), NULL);           /* 400-year leap */
    parse("2024-02-29T23:59:59Z", INT64_C(1709251199000), NULL);
    parse("1990-12-31T23:59:60Z", INT64_C(662688000000), NULL); /* leap second: next minute */
    parse("2023-02-29T00:00:00Z", 0, "day 29 out of range for 2023-02 (28 days)");
    parse("1900-02-29T00:00:00Z", 0, "day 29 out of range"); /* a century, not a leap year */
    parse("2025-04-31T00:00:00Z", 0, "day 31 out of range");
    parse("2025-13-01T00:00:00Z", 0, "month 13 out of range");
    parse("2025-01-01T24:00:00Z", 0, "out of range");
    parse("2025-01-01T00:00:00", 0, "expected 'Z' or an offset");
    parse("2025-01-01T00:00:00+0100", 0, "expected an offset");
    parse("2025-01-01T00:00:00+24:00", 0, "offset +24:00 out of range");
    parse("2025-01-01T00:00Z", 0, "expected a time");
    parse("2025-01-01", 0, "expected 'T'");
    parse("2025-1-01T00:00:00Z", 0, "expected a date");
    parse("2025-01-01T00:00:00.Z", 0, "expected digits after '.'");
    parse("2025-01-01T00:00:00Zjunk", 0, "unexpected text");
    parse("", 0, "expected a date");
}

static void format(int64_t ms, const char *fmt, const char *want)
{
    hr_buf_t b = HR_BUF_INIT;
    char err[128] = "";
    int rc = hr_time_format(ms, fmt, &b, err, sizeof err);
    if (want[0] == '!') {
        CHECK(rc != 0 && strstr(err, want + 1));
        if (rc == 0 || !strstr(err, want + 1)) fprintf(stderr, "  err '%s'\n", err);
    } else {
        CHECK_INT_EQ(rc, 0);
        CHECK_STR_EQ(b.data ? b.data : "", want);
    }
    hr_buf_free(&b);
}

static void test_format(void)
{
    format(0, NULL, "1970-01-01T00:00:00.000Z");
    format(INT64_C(1741974245061), NULL, "2025-03-14T17:44:05.061Z");
    format(-1, NULL, "1969-12-31T23:59:59.999Z");
    format(INT64_C(951782400000), "%d.%m.%Y %H:%M:%S.%f %j %a %A %b %B",
           "29.02.2000 00:00:00.000 060 Tue Tuesday Feb February");
    format(INT64_C(1741974245061), "%y%m%d|%e|%I%p|%F %T|%s|%z %Z|%%",
           "250314|14|05PM|2025-03-14 17:44:05|1741974245|+0000 UTC|%");
    format(INT64_C(1741974245061), "%q", "!unsupported conversion '%q'");
    format(INT64_C(1741974245061), "abc%", "!at the end");
    format(INT64_C(253402300800000), NULL, "!year 10000"); /* 10000-01-01 */
}

static const char *CONFIG = "return { listen = '127.0.0.1:0', tokens = {'t'},\n"
                            "  endpoints = { ['/hook'] = 'thing.happened' }, rules = 'rules',\n"
                            "  files = { out = { path = 'out.jsonl' } } }\n";

/* Run a default rule that writes the string expr gives; compare with want. */
static void rule_value(const char *expr, bool fixed, const char *want)
{
    write_file("rules/default.lua", "return function(e) write('out', %s) end\n", expr);
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    hr_event_in_t ev = test_event("{\"a\":1}");
    ev.received_ms = UINT64_C(1767323045250); /* 2026-01-02T03:04:05.250Z */
    ev.fixed_clock = fixed;
    hr_run_result_t res;
    hr_ruleset_run(rs, &ev, &res);
    if (res.status != HR_RUN_OK) fprintf(stderr, "  %s: %s\n", expr, res.error);
    CHECK_INT_EQ(res.status, HR_RUN_OK);
    if (want[0] == '!') {
        CHECK(res.actions && strstr(res.actions->body, want + 1));
    } else if (res.actions) {
        CHECK_STR_EQ(res.actions->body, want);
    }
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

static void test_sandbox(void)
{
    write_file("hookrouter.lua", "%s", CONFIG);
    rule_value("tostring(time.parse(1700000000))", false, "1700000000000");    /* seconds */
    rule_value("tostring(time.parse(1700000000123))", false, "1700000000123"); /* ms */
    rule_value("tostring(time.parse(99999999999))", false, "99999999999000");
    rule_value("tostring(time.parse(100000000000))", false, "100000000000");
    rule_value("tostring(time.parse(1700000000.5))", false, "1700000000500");
    rule_value("tostring(time.parse('2026-01-02T03:04:05Z'))", false, "1767323045000");
    rule_value("select(2, pcall(time.parse, '2026-02-30T00:00:00Z'))", false,
               "!time.parse: day 30 out of range for 2026-02");
    rule_value("time.format(time.parse('2026-01-02T04:04:05.5+01:00'))", false,
               "2026-01-02T03:04:05.500Z");
    /* the fixed clock: time.now, os.time, os.date, uuid.v7 */
    rule_value("tostring(time.now())", true, "1767323045250");
    rule_value("tostring(os.time())", true, "1767323045");
    rule_value("os.date('!%Y-%m-%d %H:%M:%S')", true, "2026-01-02 03:04:05");
    rule_value("os.date('!%H', 0)", true, "00");
    rule_value("tostring(os.time({year=2026, month=1, day=2, hour=3}) ~= nil)", true, "true");
    rule_value("uuid.v7():sub(1, 13)", true, "019b7ca9-8d82");     /* 0x019b7ca98d82 ms */
    rule_value("e.received_at", true, "2026-01-01T00:00:00.000Z"); /* the caller sets it */
    /* without it, the wall clock */
    rule_value("tostring(math.abs(time.now() - 1767323045250) > 1000)", false, "true");
    rule_value("tostring(os.time() > 1767323045)", false, "true");
}

int main(void)
{
    char tmpl[] = "/tmp/hr-time-XXXXXX";
    snprintf(dir, sizeof dir, "%s", mkdtemp(tmpl));
    (void)run; /* rules_util.h helper this test does not need */
    test_parse();
    test_format();
    test_sandbox();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE("test_lua_time");
}
