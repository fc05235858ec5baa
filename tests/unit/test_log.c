/* Unit tests for src/log.c: the line formatter (text quoting and escaping read back by a
 * logfmt parser, JSON lines checked by the strict decoder, the truncation marker) and writing
 * that never waits for stderr (a full pipe, /dev/full, a reader gone, closed descriptors). */
#include "hr/log.h"

#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "hr/json.h"

#define WALL 1715702531482ULL /* 2024-05-14T16:02:11.482Z */

/* Format into a NUL-terminated static buffer (cap bytes of line at most). */
static const char *fmt_line(size_t cap, hr_log_format_t format, hr_log_level_t level,
                            const char *msg, const hr_log_field_t *f, size_t n, size_t *len)
{
    static char buf[HR_LOG_LINE_MAX * 4];
    size_t l = hr_log_format_line(buf, cap, format, WALL, level, msg, strlen(msg), f, n);
    buf[l] = '\0';
    if (len) *len = l;
    return buf;
}

/* ---- A logfmt reader, with the semantics of go-logfmt / python-logfmt: key=value pairs split
 * on spaces, a value in double quotes unescaped as a Go string literal (\" \\ \n \r \t \xNN),
 * a bare word a key without a value. */

typedef struct {
    char key[64];
    char val[HR_LOG_LINE_MAX];
    size_t vlen;
    bool has_val;
} pair_t;

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Parse s (one line, no '\n') into at most max pairs. Returns the count, or -1 on a syntax
 * error (an unknown escape, an unterminated quote, a quote not followed by a space). */
static int logfmt_parse(const char *s, pair_t *p, int max)
{
    int n = 0;
    size_t i = 0, len = strlen(s);
    while (i < len && n < max) {
        while (i < len && s[i] == ' ')
            i++;
        if (i >= len) break;
        pair_t *q = &p[n++];
        size_t k = 0;
        while (i < len && s[i] != ' ' && s[i] != '=' && s[i] != '"') {
            if (k < sizeof q->key - 1) q->key[k++] = s[i];
            i++;
        }
        q->key[k] = '\0';
        q->has_val = false;
        q->vlen = 0;
        if (i >= len || s[i] == ' ') continue;
        if (s[i] == '"') return -1;
        i++; /* '=' */
        q->has_val = true;
        if (i < len && s[i] == '"') {
            i++;
            for (;;) {
                if (i >= len) return -1;
                char c = s[i++];
                if (c == '"') break;
                if (c != '\\') {
                    q->val[q->vlen++] = c;
                    continue;
                }
                if (i >= len) return -1;
                char e = s[i++];
                if (e == 'n')
                    q->val[q->vlen++] = '\n';
                else if (e == 'r')
                    q->val[q->vlen++] = '\r';
                else if (e == 't')
                    q->val[q->vlen++] = '\t';
                else if (e == '"' || e == '\\')
                    q->val[q->vlen++] = e;
                else if (e == 'x' && i + 1 < len && hexval(s[i]) >= 0 && hexval(s[i + 1]) >= 0) {
                    q->val[q->vlen++] = (char)(hexval(s[i]) * 16 + hexval(s[i + 1]));
                    i += 2;
                } else
                    return -1;
            }
            if (i < len && s[i] != ' ') return -1;
        } else {
            while (i < len && s[i] != ' ')
                q->val[q->vlen++] = s[i++];
        }
    }
    return n;
}

static const pair_t *find_pair(const pair_t *p, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (p[i].has_val && strcmp(p[i].key, key) == 0) return &p[i];
    return NULL;
}

/* ---- JSON lines through the strict decoder */

static lua_State *L;

/* Decode one line (without its '\n') and leave the object on the stack; false (with the
 * error printed) if it is not one valid JSON object. [-0, +(1|0), m] */
static bool json_object(const char *line, size_t len)
{
    char err[256];
    if (len && line[len - 1] == '\n') len--;
    if (hr_json_decode(L, line, len, err, sizeof err) != 0) {
        fprintf(stderr, "not JSON (%s): %.*s\n", err, (int)len, line);
        return false;
    }
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return false;
    }
    return true;
}

/* The string at key of the table on top, or NULL. [-0, +0, -] */
static const char *jstr(const char *key, size_t *len)
{
    lua_getfield(L, -1, key);
    const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, len) : NULL;
    lua_pop(L, 1); /* the table on top still holds the string */
    return s;
}

/* The integer at key of the table on top, or -1. [-0, +0, -] */
static long long jint(const char *key)
{
    lua_getfield(L, -1, key);
    long long v = lua_isinteger(L, -1) ? (long long)lua_tointeger(L, -1) : -1;
    lua_pop(L, 1);
    return v;
}

/* Values that need every rule: spaces, quotes, '=', backslashes, control bytes, DEL, valid
 * and invalid UTF-8, an empty one. */
static const char *const nasty[] = {
    "plain",
    "two words",
    "say \"hi\"",
    "a=b",
    "C:\\dir\\new",
    "back\\ and space",
    "line\nbreak\r\ttab",
    "bell\x07 esc\x1b[31m del\x7f",
    "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
    "bad \xff\xfe utf8 \xc3",
    "overlong \xc0\xaf surrogate \xed\xa0\x80",
    "",
    "\"",
    "\\\"",
    "=",
    "trailing\\",
};

static void test_text_plain(void)
{
    const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_TEXT, HR_LOG_INFO, "listening on 1.2.3.4:5",
                             NULL, 0, NULL);
    CHECK_STR_EQ(l, "2024-05-14T16:02:11.482Z info  listening on 1.2.3.4:5\n");
    /* a plain message is escaped as before (backslashes and quotes as they are) */
    l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_TEXT, HR_LOG_ERROR, "a\nb \"q\" \\ \xff", NULL, 0, NULL);
    CHECK_STR_EQ(l, "2024-05-14T16:02:11.482Z error a\\nb \"q\" \\ \\xFF\n");
}

static void test_text_fields(void)
{
    hr_log_field_t f[] = {HR_KV_STR("id", "019-abc"),   HR_KV_STR("store", "4 2"),
                          HR_KV_STR("rule", NULL),      HR_KV_INT("status", -3),
                          HR_KV_UINT("attempts", 2),    HR_KV_MS("ms", 0.125),
                          HR_KV_STR("error", "x\"y=z"), HR_KV_STR("path", "C:\\new")};
    const char *l =
        fmt_line(HR_LOG_LINE_MAX, HR_LOG_TEXT, HR_LOG_WARN, "retry", f, HR_ARRAY_SIZE(f), NULL);
    CHECK_STR_EQ(l, "2024-05-14T16:02:11.482Z warn  retry id=019-abc store=\"4 2\" rule=- "
                    "status=-3 attempts=2 ms=0.12 error=\"x\\\"y=z\" path=C:\\new\n");
}

/* Every nasty value, alone and all together, reads back byte for byte through logfmt. */
static void test_text_logfmt_roundtrip(void)
{
    hr_log_field_t f[HR_ARRAY_SIZE(nasty)];
    char keys[HR_ARRAY_SIZE(nasty)][8];
    for (size_t i = 0; i < HR_ARRAY_SIZE(nasty); i++) {
        snprintf(keys[i], sizeof keys[i], "k%zu", i);
        f[i] = HR_KV_STR(keys[i], nasty[i]);
        const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_TEXT, HR_LOG_INFO, "one", &f[i], 1, NULL);
        CHECK(strchr(l, '\n') == l + strlen(l) - 1); /* one line */
        CHECK(strchr(l, '\r') == NULL);
        CHECK(strchr(l, '\x1b') == NULL);
    }
    static pair_t p[64];
    const char *l =
        fmt_line(HR_LOG_LINE_MAX, HR_LOG_TEXT, HR_LOG_INFO, "all", f, HR_ARRAY_SIZE(f), NULL);
    char line[HR_LOG_LINE_MAX];
    snprintf(line, sizeof line, "%.*s", (int)strlen(l) - 1, l);
    int n = logfmt_parse(line, p, 64);
    CHECK_INT_EQ(n, 3 + (int)HR_ARRAY_SIZE(nasty)); /* ts, level, msg as bare words */
    for (size_t i = 0; i < HR_ARRAY_SIZE(nasty); i++) {
        const pair_t *q = find_pair(p, n < 0 ? 0 : n, keys[i]);
        CHECK(q != NULL);
        if (!q) continue;
        if (q->vlen != strlen(nasty[i]) || memcmp(q->val, nasty[i], q->vlen) != 0) {
            fprintf(stderr, "value %zu read back as %.*s\n", i, (int)q->vlen, q->val);
            CHECK(!"logfmt round trip");
        }
    }
    /* what needs no quotes gets none */
    CHECK(strstr(l, " k0=plain ") != NULL);
    CHECK(strstr(l, " k4=C:\\dir\\new ") != NULL);
    CHECK(strstr(l, " k8=caf\xc3\xa9") == NULL); /* it holds spaces */
    CHECK(strstr(l, " k11=\"\" ") != NULL);
}

static void test_json_fields(void)
{
    hr_log_field_t f[] = {
        HR_KV_STR("id", "019-abc"), HR_KV_STR("store", NULL),
        HR_KV_INT("status", 503),   HR_KV_UINT("attempts", 18446744073709551615ULL),
        HR_KV_MS("ms", 2.5),        HR_KV_STR("error", "connection refused")};
    size_t len;
    const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_ERROR, "dead-letter", f,
                             HR_ARRAY_SIZE(f), &len);
    CHECK_STR_EQ(l,
                 "{\"ts\":\"2024-05-14T16:02:11.482Z\",\"level\":\"error\",\"msg\":\"dead-letter\","
                 "\"id\":\"019-abc\",\"store\":null,\"status\":503,"
                 "\"attempts\":18446744073709551615,\"ms\":2.50,"
                 "\"error\":\"connection refused\"}\n");
    /* a plain line: only ts, level, msg */
    l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_DEBUG, "a \"b\" \\ c", NULL, 0, &len);
    CHECK_STR_EQ(l, "{\"ts\":\"2024-05-14T16:02:11.482Z\",\"level\":\"debug\","
                    "\"msg\":\"a \\\"b\\\" \\\\ c\"}\n");
    CHECK(json_object(l, len));
    lua_pop(L, 1);
}

/* Every nasty value makes a valid JSON line whose value reads back exactly, except bytes that
 * are not UTF-8: those are the text \xNN. */
static void test_json_values(void)
{
    for (size_t i = 0; i < HR_ARRAY_SIZE(nasty); i++) {
        hr_log_field_t f[] = {HR_KV_STR("v", nasty[i])};
        size_t len;
        const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_INFO, nasty[i], f, 1, &len);
        CHECK(memchr(l, '\n', len) == l + len - 1);
        if (!json_object(l, len)) {
            CHECK(!"valid JSON");
            continue;
        }
        size_t vl = 0, ml = 0;
        const char *v = jstr("v", &vl), *m = jstr("msg", &ml);
        CHECK(v && m && vl == ml && memcmp(v, m, vl) == 0);
        if (i != 9 && i != 10) { /* valid UTF-8: exact */
            CHECK(v && vl == strlen(nasty[i]) && memcmp(v, nasty[i], vl) == 0);
        }
        lua_pop(L, 1);
    }
    hr_log_field_t bad = HR_KV_STR("v", "bad \xff\xfe utf8 \xc3");
    size_t len;
    const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_INFO, "m", &bad, 1, &len);
    CHECK(strstr(l, "\"v\":\"bad \\\\xFF\\\\xFE utf8 \\\\xC3\"") != NULL);
    hr_log_field_t ctl = HR_KV_STR("v", "\x01\x7f\b\f");
    l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_INFO, "m", &ctl, 1, &len);
    CHECK(strstr(l, "\"v\":\"\\u0001\\u007F\\u0008\\u000C\"") != NULL);
}

/* The marker's number, and what precedes the marker, in s; -1 if there is none. */
static long long marker(const char *s, const char **at)
{
    const char *m = strstr(s, "...[truncated ");
    if (!m) return -1;
    if (at) *at = m;
    return strtoll(m + 14, NULL, 10);
}

static void test_truncation(void)
{
    static char big[10000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = (char)('a' + i % 26);
    big[sizeof big - 1] = '\0';
    size_t len;
    /* a plain message: cut at the cap, marker at the end, N = the bytes left out */
    const char *l = fmt_line(600, HR_LOG_TEXT, HR_LOG_INFO, big, NULL, 0, &len);
    CHECK(len <= 600 && len > 500);
    CHECK(l[len - 1] == '\n');
    const char *at = l;
    long long n = marker(l, &at);
    size_t kept = (size_t)(at - l) - strlen("2024-05-14T16:02:11.482Z info  ");
    CHECK_INT_EQ(n, (long long)(sizeof big - 1 - kept));
    CHECK(strcmp(strchr(at, ']'), "]\n") == 0);

    /* fields: the long ones are cut to the same length, the short ones stay whole, in JSON a
     * "truncated" key with the total */
    hr_log_field_t f[] = {HR_KV_STR("id", "019-abc"), HR_KV_STR("error", big),
                          HR_KV_INT("status", 503), HR_KV_STR("dead_letter", big + 5000),
                          HR_KV_STR("reason", "two words")};
    static pair_t p[16];
    l = fmt_line(1000, HR_LOG_TEXT, HR_LOG_ERROR, "x", f, HR_ARRAY_SIZE(f), &len);
    CHECK(len <= 1000 && len > 900);
    char line[HR_LOG_LINE_MAX];
    snprintf(line, sizeof line, "%.*s", (int)len - 1, l);
    int np = logfmt_parse(line, p, 16);
    CHECK_INT_EQ(np, 8);
    const pair_t *e = find_pair(p, np, "error"), *d = find_pair(p, np, "dead_letter");
    CHECK(find_pair(p, np, "id") && strcmp(find_pair(p, np, "id")->val, "019-abc") == 0);
    CHECK(find_pair(p, np, "status") && strcmp(find_pair(p, np, "status")->val, "503") == 0);
    const pair_t *r = find_pair(p, np, "reason");
    CHECK(r && r->vlen == 9 && memcmp(r->val, "two words", 9) == 0);
    CHECK(e && d);
    if (e && d) {
        long long ne = marker(e->val, &at);
        size_t ke = (size_t)(at - e->val);
        CHECK_INT_EQ(ne, (long long)(strlen(big) - ke));
        CHECK(memcmp(e->val, big, ke) == 0);
        long long nd = marker(d->val, &at);
        size_t kd = (size_t)(at - d->val);
        CHECK_INT_EQ(nd, (long long)(strlen(big + 5000) - kd));
        CHECK(kd + 2 >= ke && ke + 2 >= kd); /* the same room each (digits aside) */
        CHECK(ke > 300);
    }
    l = fmt_line(1000, HR_LOG_JSON, HR_LOG_ERROR, "x", f, HR_ARRAY_SIZE(f), &len);
    CHECK(len <= 1000 && len > 900);
    CHECK(json_object(l, len));
    size_t el = 0, dl = 0;
    const char *es = jstr("error", &el), *ds = jstr("dead_letter", &dl);
    long long ne = es ? marker(es, &at) : -1;
    long long nd = ds ? marker(ds, NULL) : -1;
    CHECK(ne > 0 && nd > 0);
    CHECK_INT_EQ(jint("truncated"), ne + nd);
    CHECK_INT_EQ(jint("status"), 503);
    CHECK(jstr("reason", NULL) && strcmp(jstr("reason", NULL), "two words") == 0);
    lua_pop(L, 1);
}

/* At every cap, with values full of escapes and multi-byte characters, the line fits, is whole
 * and (JSON) parses; in text no escape or character is cut in two. */
static void test_truncation_every_cap(void)
{
    static char v[3000];
    static const char piece[] = "\xe2\x82\xac\"\\\n\x01\xff ab=";
    size_t o = 0;
    while (o + sizeof piece < sizeof v) {
        memcpy(v + o, piece, sizeof piece - 1);
        o += sizeof piece - 1;
    }
    v[o] = '\0';
    hr_log_field_t f[] = {HR_KV_STR("a", v), HR_KV_UINT("n", 7), HR_KV_STR("b", v + 17),
                          HR_KV_STR("c", "short")};
    int bad = 0;
    for (size_t cap = HR_LOG_LINE_MIN; cap <= 1600 && bad < 5; cap += 7) {
        size_t len;
        const char *l = fmt_line(cap, HR_LOG_JSON, HR_LOG_INFO, v, f, HR_ARRAY_SIZE(f), &len);
        if (len > cap || l[len - 1] != '\n' || memchr(l, '\n', len) != l + len - 1) bad++;
        if (!json_object(l, len)) {
            bad++;
            continue;
        }
        if (jint("n") != 7 || !jstr("c", NULL) || jint("truncated") <= 0) bad++;
        lua_pop(L, 1);
        l = fmt_line(cap, HR_LOG_TEXT, HR_LOG_INFO, v, f, HR_ARRAY_SIZE(f), &len);
        if (len > cap || l[len - 1] != '\n') bad++;
        static char line[HR_LOG_LINE_MAX];
        snprintf(line, sizeof line, "%.*s", (int)len - 1, l);
        const char *fa = strstr(line, " a=\"");
        static pair_t p[200];
        int np = fa ? logfmt_parse(fa, p, 200) : -1;
        if (np < 0 || !find_pair(p, np, "a") || !find_pair(p, np, "c")) {
            fprintf(stderr, "cap %zu: text line does not parse: %s\n", cap, line);
            bad++;
        }
    }
    CHECK_INT_EQ(bad, 0);
}

/* More fields than a line holds: the first ones, and the count of what went. */
static void test_too_many_fields(void)
{
    hr_log_field_t f[40];
    char keys[40][8];
    for (int i = 0; i < 40; i++) {
        snprintf(keys[i], sizeof keys[i], "k%d", i);
        f[i] = HR_KV_INT(keys[i], i);
    }
    size_t len;
    const char *l = fmt_line(HR_LOG_LINE_MAX, HR_LOG_JSON, HR_LOG_INFO, "m", f, 40, &len);
    CHECK(json_object(l, len));
    CHECK_INT_EQ(jint("k31"), 31);
    CHECK_INT_EQ(jint("k32"), -1);
    CHECK(jint("truncated") > 0);
    lua_pop(L, 1);
}

static void test_parse(void)
{
    hr_log_format_t f = HR_LOG_TEXT;
    CHECK_INT_EQ(hr_log_format_parse("json", &f), 0);
    CHECK_INT_EQ(f, HR_LOG_JSON);
    CHECK_INT_EQ(hr_log_format_parse("text", &f), 0);
    CHECK_INT_EQ(f, HR_LOG_TEXT);
    CHECK_INT_EQ(hr_log_format_parse("JSON", &f), -1);
    CHECK_INT_EQ(hr_log_format_parse("logfmt", &f), -1);
}

/* ---- Writing */

/* Point stderr at fd for the body of a test; returns the saved stderr. */
static int stderr_to(int fd)
{
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    hr_log_never_block();
    return saved;
}

static void stderr_back(int saved)
{
    dup2(saved, STDERR_FILENO);
    close(saved);
    hr_log_never_block();
}

/* A pipe nobody reads: logging goes on without waiting; every line that got in is whole, and
 * once the pipe drains the count of dropped lines comes first. */
static void test_full_pipe(void)
{
    int pfd[2];
    CHECK_INT_EQ(pipe(pfd), 0);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    fcntl(pfd[1], F_SETPIPE_SZ, 4096); /* one page: a few lines fill it */
    int saved = stderr_to(pfd[1]);
    hr_log_set_format(HR_LOG_JSON);
    unsigned long long before = hr_log_dropped();
    for (int i = 0; i < 200; i++)
        hr_log_kv(HR_LOG_INFO, "filler", HR_KV_INT("i", i), HR_KV_STR("pad", "0123456789abcdef"));
    unsigned long long dropped = hr_log_dropped() - before;
    CHECK(dropped > 100);
    /* drain it: every line is a whole JSON object */
    static char buf[1 << 16];
    ssize_t n = read(pfd[0], buf, sizeof buf);
    CHECK(n > 0);
    int lines = 0;
    for (char *s = buf, *e; n > 0 && s < buf + n; s = e + 1) {
        e = memchr(s, '\n', (size_t)(buf + n - s));
        CHECK(e != NULL);
        if (!e) break;
        CHECK(json_object(s, (size_t)(e - s)));
        lua_pop(L, 1);
        lines++;
    }
    CHECK_INT_EQ(lines + (long long)dropped, 200);
    hr_log_kv(HR_LOG_INFO, "after");
    n = read(pfd[0], buf, sizeof buf - 1);
    CHECK(n > 0);
    buf[n > 0 ? n : 0] = '\0';
    char want[96];
    snprintf(want, sizeof want,
             "\"msg\":\"log lines dropped: stderr did not take them\",\"lines\":%llu}\n", dropped);
    CHECK(strstr(buf, want) != NULL);
    CHECK(strstr(buf, "\"msg\":\"after\"") > strstr(buf, want));
    hr_log_set_format(HR_LOG_TEXT);
    stderr_back(saved);
    close(pfd[0]);
    close(pfd[1]);
}

/* Lines logged before the config is applied come out in the format it sets, if its level
 * still wants them. */
static void test_hold(void)
{
    int pfd[2];
    CHECK_INT_EQ(pipe(pfd), 0);
    fcntl(pfd[0], F_SETFL, O_NONBLOCK);
    int saved = stderr_to(pfd[1]);
    hr_log_hold();
    hr_log_info("held %d", 1);
    hr_log_kv(HR_LOG_WARN, "held", HR_KV_INT("n", 2));
    char buf[4096];
    CHECK(read(pfd[0], buf, sizeof buf) < 0); /* nothing yet */
    hr_log_apply("warn", "json");
    ssize_t n = read(pfd[0], buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    CHECK(strstr(buf, "held 1") == NULL); /* info: below the level now */
    CHECK(strstr(buf, "\"level\":\"warn\",\"msg\":\"held\",\"n\":2}\n") != NULL);
    hr_log_info("after");
    hr_log_warn("after");
    n = read(pfd[0], buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = '\0';
    CHECK(strstr(buf, "\"msg\":\"after\"") != NULL && strchr(buf, '\n') == buf + n - 1);
    hr_log_apply("info", "text");
    stderr_back(saved);
    close(pfd[0]);
    close(pfd[1]);
}

/* The other side of the pipe is gone (EPIPE; SIGPIPE is ignored as in `run`), and /dev/full
 * (ENOSPC): lines are counted, nothing waits or dies. */
static void test_failing_stderr(void)
{
    signal(SIGPIPE, SIG_IGN);
    int pfd[2];
    CHECK_INT_EQ(pipe(pfd), 0);
    close(pfd[0]);
    int saved = stderr_to(pfd[1]);
    unsigned long long before = hr_log_dropped();
    hr_log_info("to nobody");
    hr_log_info("to nobody again");
    stderr_back(saved);
    close(pfd[1]);
    CHECK(hr_log_dropped() - before >= 2);
    int full = open("/dev/full", O_WRONLY);
    if (full >= 0) {
        saved = stderr_to(full);
        before = hr_log_dropped();
        hr_log_info("to a full disk");
        stderr_back(saved);
        close(full);
        CHECK(hr_log_dropped() - before >= 1);
    }
}

/* Closed stdin, stdout and stderr are reopened on /dev/null, so the next file opened cannot
 * become stderr. */
static void test_reserve_stdio(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        close(0);
        close(1);
        close(2);
        hr_log_reserve_stdio();
        int fd = open("/dev/null", O_RDONLY);
        char link[64] = "";
        ssize_t n = readlink("/proc/self/fd/2", link, sizeof link - 1);
        if (n > 0) link[n] = '\0';
        _exit(fd > 2 && fcntl(0, F_GETFD) >= 0 && fcntl(1, F_GETFD) >= 0 &&
                      strcmp(link, "/dev/null") == 0
                  ? 0
                  : 1);
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    hr_json_open(L);
    lua_setglobal(L, "json");
    test_text_plain();
    test_text_fields();
    test_text_logfmt_roundtrip();
    test_json_fields();
    test_json_values();
    test_truncation();
    test_truncation_every_cap();
    test_too_many_fields();
    test_parse();
    test_full_pipe();
    test_hold();
    test_failing_stderr();
    test_reserve_stdio();
    lua_close(L);
    return CHECK_DONE("test_log");
}
