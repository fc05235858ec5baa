/* Unit test for src/lua_crypto.c through the rule sandbox (src/rules.c installs it): the
 * values of crypto, hex and base64, their errors, their views being read-only, and their
 * work counted against limits.rule_instructions and limits.rule_memory_bytes. */
#include <unistd.h>

#include "rules_util.h"

static const char *CONFIG = "return {\n"
                            "  listen = '127.0.0.1:0', tokens = {'t'},\n"
                            "  endpoints = { ['/hook'] = 'thing.happened' },\n"
                            "  rules = 'rules', store_key = 'storeId',\n"
                            "  targets = { pos = { url = 'http://127.0.0.1:9/base' } },\n"
                            "  limits = { rule_instructions = %s, rule_memory_bytes = %s },\n"
                            "}\n";

/* Load a default rule that forwards the string expr evaluates to, run it once and compare
 * the body with want (or, when want starts with "!", the rule's error contains the rest). */
static void expect(const char *expr, const char *want)
{
    write_file("rules/default.lua", "return function(e) forward('pos', %s) end\n", expr);
    hr_ruleset_t *rs = must_load();
    if (!rs) return;
    hr_run_result_t res;
    run(rs, "{}", &res);
    if (want[0] == '!') {
        CHECK_INT_EQ(res.status, HR_RUN_RULE_FAILED);
        if (!res.error || !strstr(res.error, want + 1))
            fprintf(stderr, "  %s: error %s, want '%s'\n", expr, res.error ? res.error : "(none)",
                    want + 1);
        CHECK(res.error && strstr(res.error, want + 1));
    } else {
        if (res.status != HR_RUN_OK) fprintf(stderr, "  %s: %s\n", expr, res.error);
        CHECK_INT_EQ(res.status, HR_RUN_OK);
        CHECK_INT_EQ(res.nactions, 1);
        if (res.actions) CHECK_STR_EQ(res.actions->body, want);
    }
    hr_run_result_free(&res);
    hr_ruleset_unref(rs);
}

static void test_values(void)
{
    write_file("hookrouter.lua", CONFIG, "1000000", "67108864");
    /* RFC 4231 case 2, and the digests are raw bytes (32 of them) */
    expect("hex.encode(crypto.hmac_sha256('Jefe', 'what do ya want for nothing?'))",
           "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    expect("hex.encode(crypto.sha256('abc'))",
           "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    expect("tostring(#crypto.sha256('') + #crypto.hmac_sha256('', ''))", "64");
    expect("hex.decode('666F6f626172')", "foobar");
    expect("base64.encode('foob') .. '|' .. base64.decode('Zm9vYmE=')", "Zm9vYg==|fooba");
    expect("base64.encode('\\xfb\\xff') .. '|' .. base64.url_encode('\\xfb\\xff') .. '|' .."
           "hex.encode(base64.url_decode('-_8')) .. hex.encode(base64.url_decode('-_8='))",
           "+/8=|-_8|fbfffbff");
    expect("base64.encode('') .. '|' .. hex.encode('') .. '|' .. base64.url_decode('')", "||");
    /* a rule can build a legacy signature itself */
    expect("'sha256=' .. base64.encode(crypto.hmac_sha256('k', '{\"a\":1}'))",
           "sha256=w6kv+eJ0zczieljBWnjsbcu9vQA4qH56EbrvICj9i/8=");
}

static void test_errors(void)
{
    write_file("hookrouter.lua", CONFIG, "1000000", "67108864");
    expect("hex.decode('abc')", "!hex.decode: odd number of hex digits (3)");
    expect("hex.decode('zz')", "!hex.decode: invalid hex digit 'z' at offset 0");
    expect("base64.decode('Zm9*')", "!base64.decode: invalid character '*' at offset 3");
    expect("base64.decode('Zg=')", "!base64.decode: bad padding");
    expect("base64.decode('-_8=')", "!base64.decode: invalid character '-'");
    expect("base64.url_decode('+/8=')", "!base64.url_decode: invalid character '+'");
    expect("crypto.sha256({})", "!bad argument #1");
    expect("crypto.hmac_sha256('k')", "!bad argument #2");
    /* the error is an ordinary Lua error: pcall catches it */
    expect("select(2, pcall(hex.decode, 'a'))", "hex.decode: odd number of hex digits (1)");
    expect("(function() crypto.sha256 = nil end)()",
           "!attempt to modify the shared library table 'crypto'");
    expect("(function() rawset(base64, 'encode', nil); return base64.encode('f') end)()", "Zg==");
}

static void test_budgets(void)
{
    char err[4096];
    /* 2 MB hashed is 250001 instructions' worth: past 100000, in an event and at top level */
    write_file("hookrouter.lua", CONFIG, "100000", "67108864");
    const char *big = "string.rep('a', 2000000)";
    char expr[128];
    snprintf(expr, sizeof expr, "crypto.sha256(%s)", big);
    expect(expr, "!rule exceeded its instruction budget (limits.rule_instructions = 100000)");
    snprintf(expr, sizeof expr, "crypto.hmac_sha256('k', %s)", big);
    expect(expr, "!rule exceeded its instruction budget");
    snprintf(expr, sizeof expr, "base64.encode(%s)", big);
    expect(expr, "!rule exceeded its instruction budget");
    snprintf(expr, sizeof expr, "hex.decode(string.rep('00', 1000000))");
    expect(expr, "!rule exceeded its instruction budget");
    write_file("rules/default.lua", "local d = hex.encode(%s)\nreturn function(e) end\n", big);
    CHECK(load(err, sizeof err) == NULL);
    CHECK(strstr(err, "top-level code exceeded its instruction budget") != NULL);
    /* the same 200 KB is fine */
    expect("tostring(#hex.encode(string.rep('a', 200000)))", "400000");

    /* results are Lua memory: 3 MB as hex needs 6 MB more, twice over, past an 8 MiB cap */
    write_file("hookrouter.lua", CONFIG, "100000000", "8388608");
    expect("tostring(#hex.encode(string.rep('a', 3000000)))", "!memory limit");
    expect("tostring(#base64.encode(string.rep('a', 5000000)))", "!memory limit");
    expect("tostring(#hex.encode(string.rep('a', 1000000)))", "2000000");
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/hr-test-lua-crypto-XXXXXX");
    if (!mkdtemp(dir)) return 2;
    test_values();
    test_errors();
    test_budgets();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return CHECK_DONE("test_lua_crypto");
}
