/* Unit test for src/lua_text.c: url against RFC 3986 (unreserved kept, UTF-8 bytes encoded,
 * bad percent-encoding refused), url.query, UUID version and variant bits and v7 order,
 * xml.escape, and event.raw (the body as received, read lazily) through the sandbox. */
#include <unistd.h>

#include "hr/lua_text.h"
#include "rules_util.h"

static void test_url(void)
{
    char out[256];
    const char *in = "AZaz09-._~ !*'();:@&=+$,/?#[]%\xc3\xa9\xe2\x82\xac";
    size_t n = hr_url_encode(in, strlen(in), out);
    out[n] = '\0';
    CHECK_STR_EQ(out, "AZaz09-._~%20%21%2A%27%28%29%3B%3A%40%26%3D%2B%24%2C%2F%3F%23%5B%5D%25"
                      "%C3%A9%E2%82%AC");
    char back[256];
    size_t len;
    char err[128];
    CHECK_INT_EQ(hr_url_decode(out, n, back, &len, err, sizeof err), 0);
    CHECK_INT_EQ(len, strlen(in));
    CHECK(memcmp(back, in, len) == 0);
    CHECK_INT_EQ(hr_url_decode("a%2fb%2F+c", 10, back, &len, err, sizeof err), 0);
    back[len] = '\0';
    CHECK_STR_EQ(back, "a/b/+c"); /* either case; '+' stays */
    CHECK_INT_EQ(hr_url_decode("ab%4", 4, back, &len, err, sizeof err), -1);
    CHECK(strstr(err, "offset 2") != NULL);
    CHECK_INT_EQ(hr_url_decode("%g0", 3, back, &len, err, sizeof err), -1);
    CHECK_INT_EQ(hr_url_decode("%", 1, back, &len, err, sizeof err), -1);
}

static void test_uuid(void)
{
    unsigned char r[16], b[16];
    memset(r, 0xff, sizeof r);
    char s[HR_UUID_LEN];
    hr_uuid_v4(r, b);
    hr_uuid_format(b, s);
    CHECK_STR_EQ(s, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    memset(r, 0, sizeof r);
    hr_uuid_v4(r, b);
    hr_uuid_format(b, s);
    CHECK_STR_EQ(s, "00000000-0000-4000-8000-000000000000");
    /* RFC 9562 appendix A.6: 2022-02-22T19:22:22Z = 0x017F22E279B0 ms */
    unsigned char rnd[8] = {0x18, 0xc4, 0xdc, 0x0c, 0x0c, 0x07, 0x39, 0x8f};
    hr_uuid_v7(UINT64_C(0x017F22E279B0), 0xCC3, rnd, b);
    hr_uuid_format(b, s);
    CHECK_STR_EQ(s, "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
}

static void test_xml(void)
{
    hr_buf_t b = HR_BUF_INIT;
    char err[128];
    const char *in = "<a href=\"x\">Tom & Jerry's</a>\t\xc3\xa9";
    CHECK_INT_EQ(hr_xml_escape(in, strlen(in), &b, err, sizeof err), 0);
    CHECK_STR_EQ(b.data, "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&apos;s&lt;/a&gt;\t\xc3\xa9");
    hr_buf_reset(&b);
    CHECK_INT_EQ(hr_xml_escape("a\x01", 2, &b, err, sizeof err), -1);
    CHECK(strstr(err, "0x01 at offset 1") != NULL);
    CHECK_INT_EQ(hr_xml_escape("\xc3(", 2, &b, err, sizeof err), -1);
    CHECK(strstr(err, "invalid UTF-8") != NULL);
    hr_buf_free(&b);
}

static const char *CONFIG = "return { listen = '127.0.0.1:0', tokens = {'t'},\n"
                            "  endpoints = { ['/hook'] = 'thing.happened' }, rules = 'rules',\n"
                            "  targets = { pos = { url = 'http://127.0.0.1:9/b' } },\n"
                            "  files = { out = { path = 'out.jsonl' } } }\n";

/* Run `return function(e) <body> end` for the event body json; compare the written string
 * with want ('!' prefix: the rule's error contains the rest). */
static void rule(const char *body, const char *json, const char *want)
{
    write_file("rules/default.lua", "return function(e) %s end\n", body);
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    hr_run_result_t res;
    run(rs, json, &res);
    if (want[0] == '!') {
        CHECK(res.status == HR_RUN_RULE_FAILED && strstr(res.error, want + 1));
        if (!res.error || !strstr(res.error, want + 1))
            fprintf(stderr, "  %s: %s\n", body, res.error ? res.error : "(no error)");
    } else {
        if (res.status != HR_RUN_OK) fprintf(stderr, "  %s: %s\n", body, res.error);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        if (res.actions) CHECK_STR_EQ(res.actions->body, want);
    }
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

static void test_sandbox(void)
{
    write_file("hookrouter.lua", "%s", CONFIG);
    rule("write('out', url.encode('a b/é') .. '|' .. url.decode('a%20b%2F%C3%A9'))", "{}",
         "a%20b%2F%C3%A9|a b/\xc3\xa9");
    rule("write('out', url.query({ b = 'x y', a = 1, c = { 'p&q', true }, d = 1.5 }))", "{}",
         "a=1&b=x%20y&c=p%26q&c=true&d=1.5");
    rule("write('out', url.query({ a = { {} } }))", "{}", "!url.query: value of 'a' must be");
    rule("write('out', url.query({ a = {} }) .. '|' .. url.query({}))", "{}", "|");
    rule("write('out', url.decode('%zz'))", "{}", "!url.decode: '%' not followed by two hex");
    rule("write('out', xml.escape('<x>'))", "{}", "&lt;x&gt;");
    rule("local a, b = uuid.v4(), uuid.v7()\n"
         "write('out', (a:match('^%x+%-%x+%-4%x%x%x%-[89ab]%x%x%x%-%x+$') and 'v4' or a) ..\n"
         "  (b:match('^%x+%-%x+%-7%x%x%x%-[89ab]%x%x%x%-%x+$') and 'v7' or b))",
         "{}", "v4v7");
    /* v7 ids made one after another sort in that order, even within one millisecond */
    rule("local prev, ok = '', true\n"
         "for i = 1, 500 do local u = uuid.v7(); ok = ok and u > prev; prev = u end\n"
         "write('out', tostring(ok))",
         "{}", "true");
    /* event.raw: the bytes as received (key order, spacing, number text), read lazily */
    rule("write('out', e.raw)", "{\"b\": 1.50, \"a\":[ ]}", "{\"b\": 1.50, \"a\":[ ]}");
    rule("local r1 = e.raw; write('out', tostring(rawequal(r1, rawget(e, 'raw'))))", "{}", "true");
    rule("write('out', tostring(rawget(e, 'raw')) .. tostring(e.nothing))", "{}", "nilnil");
    rule("write('out', tostring(getmetatable(e)))", "{}", "event");
    /* a form body */
    write_file("rules/default.lua",
               "return function(e) forward('pos', url.query({ a = 'b c' }),\n"
               "  { content_type = 'application/x-www-form-urlencoded' }) end\n");
    hr_ruleset_t *rs = must_load();
    if (rs) {
        hr_run_result_t res;
        run(rs, "{}", &res);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        if (res.actions) {
            CHECK_STR_EQ(res.actions->body, "a=b%20c");
            CHECK_STR_EQ(res.actions->headers[0].value, "application/x-www-form-urlencoded");
        }
        hr_run_result_free(&res);
        hr_ruleset_unref(rs);
    }
}

int main(void)
{
    char tmpl[] = "/tmp/hr-text-XXXXXX";
    snprintf(dir, sizeof dir, "%s", mkdtemp(tmpl));
    test_url();
    test_uuid();
    test_xml();
    test_sandbox();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE("test_lua_text");
}
