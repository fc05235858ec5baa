/* The Lua source scanner: calls of named globals with their literal first argument, and
 * nothing inside comments or strings. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "hr/lua_scan.h"

static const char *const NAMES[] = {"forward", "write", NULL};

/* The calls found in src as "name:line:arg" lines ("-" for no literal argument). */
typedef struct {
    char text[1024];
    int stop_after; /* stop the scan after this many calls (0: never) */
    int n;
} found_t;

static bool collect(void *ud, const hr_lua_call_t *call)
{
    found_t *f = ud;
    size_t used = strlen(f->text);
    if (call->arg)
        snprintf(f->text + used, sizeof f->text - used, "%s:%d:%.*s\n", NAMES[call->fn], call->line,
                 (int)call->arg_len, call->arg);
    else
        snprintf(f->text + used, sizeof f->text - used, "%s:%d:-\n", NAMES[call->fn], call->line);
    f->n++;
    return f->stop_after == 0 || f->n < f->stop_after;
}

static const char *scan(const char *src)
{
    static found_t f;
    memset(&f, 0, sizeof f);
    hr_lua_scan_calls(src, strlen(src), NAMES, collect, &f);
    return f.text;
}

static void test_calls_and_arguments(void)
{
    CHECK_STR_EQ(scan("forward('pos', {})\nwrite(\"audit\", x)\n"),
                 "forward:1:pos\nwrite:2:audit\n");
    CHECK_STR_EQ(scan("forward 'pos'\nforward{1}\nforward(t, 'x')\nforward([[pos]])\n"),
                 "forward:1:pos\nforward:2:-\nforward:3:-\nforward:4:pos\n");
    /* blanks and comments between the name, '(' and the argument; the name's line counts */
    CHECK_STR_EQ(scan("x = 1\nforward\n  ( --[[ why ]] -- note\n 'pos')\n"), "forward:2:pos\n");
    /* an escape makes the literal's value unknown: the call is found, its name is not */
    CHECK_STR_EQ(scan("forward('p\\'os')\nforward('p\\\nos')\nforward('x')\n"),
                 "forward:1:-\nforward:2:-\nforward:4:x\n");
    CHECK_STR_EQ(scan("return function(e) forward(\"pos\", e.body) end"), "forward:1:pos\n");
    CHECK_STR_EQ(scan("local s = 'a' .. forward('pos')"), "forward:1:pos\n");
}

static void test_not_calls(void)
{
    /* fields, methods, definitions, longer names, and names not followed by a call */
    CHECK_STR_EQ(scan("a.forward('x') a:forward('x') a . forward('x') M.write{'x'}\n"
                      "function forward(t) end local function write(f) end\n"
                      "function M.forward() end\n"
                      "xforward('x') forward_x('x') forward2('x') local f = forward\n"
                      "::forward:: goto forward\n"),
                 "");
    CHECK_STR_EQ(scan("local x = 1e+5 forward('pos') y = 0x1p-4 write('f')"),
                 "forward:1:pos\nwrite:1:f\n");
}

static void test_comments_are_skipped(void)
{
    CHECK_STR_EQ(scan("-- forward('old')\nforward('pos') -- write('old')\n"), "forward:2:pos\n");
    CHECK_STR_EQ(scan("--[[ forward('old')\nwrite('old')\n]] forward('pos')\n"), "forward:3:pos\n");
    CHECK_STR_EQ(scan("--[==[ forward('a') ]] write('b') ]=]\n]==] write('f')"), "write:2:f\n");
    /* "--[" without a second bracket is a line comment; so is "---[[" */
    CHECK_STR_EQ(scan("--[ forward('a')\n---[[ forward('b')\nforward('c')\n"), "forward:3:c\n");
    /* an unclosed long comment runs to the end */
    CHECK_STR_EQ(scan("--[[ forward('a')\nforward('b')\n"), "");
}

static void test_strings_are_skipped(void)
{
    CHECK_STR_EQ(scan("log.info(\"forward('old')\") forward('pos')\n"), "forward:1:pos\n");
    CHECK_STR_EQ(scan("local s = [[\nforward('old')\n]] forward('pos')\n"), "forward:3:pos\n");
    CHECK_STR_EQ(scan("local s = [=[ ]] forward('a') ]=] write('f')"), "write:1:f\n");
    /* "--" inside a string starts no comment; a quote inside a string ends nothing */
    CHECK_STR_EQ(scan("write('f', '--') forward('pos')\n"), "write:1:f\nforward:1:pos\n");
    CHECK_STR_EQ(scan("local s = \"it's \\\" forward('a')\" write('f')"), "write:1:f\n");
    CHECK_STR_EQ(scan("local s = 'a[[' forward('pos') -- ]]\n"), "forward:1:pos\n");
    /* an unclosed short string ends at its line */
    CHECK_STR_EQ(scan("local s = 'oops\nforward('pos')\n"), "forward:2:pos\n");
}

static void test_callback_stops_the_scan(void)
{
    static found_t f;
    memset(&f, 0, sizeof f);
    f.stop_after = 1;
    const char *src = "forward('a') forward('b') write('c')";
    hr_lua_scan_calls(src, strlen(src), NAMES, collect, &f);
    CHECK_STR_EQ(f.text, "forward:1:a\n");
    /* the length bounds the scan, not a NUL */
    memset(&f, 0, sizeof f);
    hr_lua_scan_calls(src, 12, NAMES, collect, &f);
    CHECK_STR_EQ(f.text, "forward:1:a\n");
    memset(&f, 0, sizeof f);
    hr_lua_scan_calls(src, 10, NAMES, collect, &f);
    CHECK_STR_EQ(f.text, "forward:1:-\n");
}

int main(void)
{
    test_calls_and_arguments();
    test_not_calls();
    test_comments_are_skipped();
    test_strings_are_skipped();
    test_callback_stops_the_scan();
    return CHECK_DONE("test_lua_scan");
}
