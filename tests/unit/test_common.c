/* Unit tests for src/common.c: URLs, RFC 3339 times, the constant-time compare, safe names,
 * UTF-8 sequences, reading files, buffers and the small helpers around them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "check.h"
#include "hr/common.h"

static char dir[64];

/* ---- URLs ------------------------------------------------------------------------------ */

/* Parse url, which must be accepted with these parts. */
static void url_ok(const char *url, const char *host, int port, const char *path)
{
    hr_url_t u;
    char err[256] = "";
    int rc = hr_url_parse(url, &u, err, sizeof err);
    if (rc != 0) fprintf(stderr, "  %s: %s\n", url, err);
    CHECK_INT_EQ(rc, 0);
    if (rc != 0) return;
    CHECK_STR_EQ(u.host, host);
    CHECK_INT_EQ(u.port, port);
    CHECK_STR_EQ(u.path, path);
    CHECK(u.tls == (strncmp(url, "https:", 6) == 0));
    hr_url_free(&u);
    CHECK(u.host == NULL && u.path == NULL);
}

/* Parse url, which must be refused with a message containing want (and the URL). */
static void url_bad(const char *url, const char *want)
{
    hr_url_t u;
    char err[256] = "";
    int rc = hr_url_parse(url, &u, err, sizeof err);
    if (rc == 0) fprintf(stderr, "  %s: accepted (host \"%s\")\n", url, u.host);
    CHECK_INT_EQ(rc, -1);
    if (rc == 0) {
        hr_url_free(&u);
        return;
    }
    if (!strstr(err, want) || !strstr(err, url))
        fprintf(stderr, "  %s: message \"%s\" lacks \"%s\"\n", url, err, want);
    CHECK(strstr(err, want) != NULL);
    CHECK(strstr(err, url) != NULL);
    /* Refused: nothing for the caller to free. */
    CHECK(u.host == NULL && u.path == NULL);
}

static void test_url(void)
{
    url_ok("http://example.com", "example.com", 80, "/");
    url_ok("http://example.com/", "example.com", 80, "/");
    url_ok("http://127.0.0.1:9000/hook", "127.0.0.1", 9000, "/hook");
    url_ok("http://h:1/a/b/c", "h", 1, "/a/b/c");
    url_ok("http://h:65535/", "h", 65535, "/");
    /* The query is part of the path; a query without a path gets one. */
    url_ok("http://h/p?x=1&y=2", "h", 80, "/p?x=1&y=2");
    url_ok("http://h?x=1", "h", 80, "/?x=1");
    url_ok("http://h:8080?x=1", "h", 8080, "/?x=1");
    /* The fragment is not sent. */
    url_ok("http://h/p#frag", "h", 80, "/p");
    url_ok("http://h/p?q=1#frag", "h", 80, "/p?q=1");
    /* An '@' past the authority is data. */
    url_ok("http://h/a@b", "h", 80, "/a@b");
    url_ok("http://h?u=a@b", "h", 80, "/?u=a@b");
    /* IPv6 literals, without their brackets. */
    url_ok("http://[::1]:8080/x", "::1", 8080, "/x");
    url_ok("http://[::1]/", "::1", 80, "/");
    url_ok("http://[fe80::1:2]?q", "fe80::1:2", 80, "/?q");

    /* https: port 443 unless given. */
    url_ok("https://example.com/", "example.com", 443, "/");
    url_ok("https://127.0.0.1:8443/hook?x", "127.0.0.1", 8443, "/hook?x");
    url_ok("https://[::1]", "::1", 443, "/");
    url_bad("https://", "invalid URL");
    url_bad("https://user@h/", "userinfo");
    url_bad("HTTPS://h/", "must start with http:// or https://");
    url_bad("ftp://example.com/", "must start with http://");
    url_bad("example.com/hook", "must start with http://");
    url_bad("", "must start with http://");
    url_bad("http://", "invalid URL");
    url_bad("http:///path", "invalid URL");
    url_bad("http://:80/", "invalid URL");
    url_bad("http://h:/", "invalid URL");
    url_bad("http://h:0/", "invalid URL");
    url_bad("http://h:65536/", "invalid URL");
    url_bad("http://h:-1/", "invalid URL");
    url_bad("http://h:99999999999999999999/", "invalid URL");
    url_bad("http://h:80x/", "invalid URL");
    url_bad("http://[::1/", "invalid URL");
    url_bad("http://[]:80/", "invalid URL");
    url_bad("http://[::1]x/", "invalid URL");
    url_bad("http://::1/", "invalid URL");
    /* Nothing that would end or split the request line or a header. */
    url_bad("http://h/a b", "invalid URL");
    url_bad("http://h/a\r\nX-Evil: 1", "invalid URL");
    url_bad("http://h/\t", "invalid URL");
    url_bad("http://h/\x7f", "invalid URL");
    url_bad("http://a b/", "invalid URL");
    /* Credentials in the URL are refused, not taken for a host name ("user@h") or a port;
     * "http://good.example@127.0.0.1/" must not pass as some host. */
    url_bad("http://user@h/", "userinfo");
    url_bad("http://user:secret@h:80/", "userinfo");
    url_bad("http://good.example@127.0.0.1/", "userinfo");
}

/* ---- RFC 3339 -------------------------------------------------------------------------- */

static void rfc_ok(const char *s, uint64_t want)
{
    uint64_t ms = 1;
    int rc = hr_rfc3339_parse(s, &ms);
    if (rc != 0) fprintf(stderr, "  \"%s\": refused\n", s);
    CHECK_INT_EQ(rc, 0);
    CHECK_INT_EQ(ms, want);
}

static void rfc_bad(const char *s)
{
    /* On the heap and exactly as long as s: reading past its end is an ASan error. */
    char *copy = hr_xstrdup(s);
    uint64_t ms = 12345;
    int rc = hr_rfc3339_parse(copy, &ms);
    if (rc == 0) fprintf(stderr, "  \"%s\": accepted as %llu\n", s, (unsigned long long)ms);
    CHECK_INT_EQ(rc, -1);
    CHECK_INT_EQ(ms, 12345); /* untouched */
    free(copy);
}

static void test_rfc3339(void)
{
    char out[32];
    hr_rfc3339(0, out);
    CHECK_STR_EQ(out, "1970-01-01T00:00:00.000Z");
    hr_rfc3339(1715702531482ull, out);
    CHECK_STR_EQ(out, "2024-05-14T16:02:11.482Z");
    hr_rfc3339(1715702531005ull, out);
    CHECK_STR_EQ(out, "2024-05-14T16:02:11.005Z"); /* milliseconds keep their zeros */
    hr_rfc3339(1715702532000ull, out); /* the next second: not the one formatted before */
    CHECK_STR_EQ(out, "2024-05-14T16:02:12.000Z");
    hr_rfc3339(1715702531999ull, out); /* and back */
    CHECK_STR_EQ(out, "2024-05-14T16:02:11.999Z");
    hr_rfc3339(1715788931999ull, out); /* a day later, the same time of day */
    CHECK_STR_EQ(out, "2024-05-15T16:02:11.999Z");
    hr_rfc3339(951782400000ull, out); /* a leap day */
    CHECK_STR_EQ(out, "2000-02-29T00:00:00.000Z");
    hr_rfc3339(253402300799999ull, out); /* the last millisecond of 9999 */
    CHECK_STR_EQ(out, "9999-12-31T23:59:59.999Z");
    CHECK_INT_EQ(strlen(out), 24);

    /* What hr_rfc3339 writes reads back to the same millisecond. */
    const uint64_t samples[] = {0, 1, 999, 1000, 1715702531482ull, 4102444799999ull};
    for (size_t i = 0; i < HR_ARRAY_SIZE(samples); i++) {
        hr_rfc3339(samples[i], out);
        rfc_ok(out, samples[i]);
    }

    rfc_ok("2024-05-14T16:02:11Z", 1715702531000ull);
    rfc_ok("2024-05-14T16:02:11z", 1715702531000ull);
    rfc_ok("2024-05-14T16:02:11.4Z", 1715702531400ull);
    rfc_ok("2024-05-14T16:02:11.48Z", 1715702531480ull);
    rfc_ok("2024-05-14T16:02:11.482999Z", 1715702531482ull); /* past ms: cut, not rounded */
    rfc_ok("2024-05-14T18:02:11.482+02:00", 1715702531482ull);
    rfc_ok("2024-05-14T10:32:11.482-05:30", 1715702531482ull);
    rfc_ok("2024-05-14T16:02:11+00:00", 1715702531000ull);
    rfc_ok("2024-05-14", 1715644800000ull); /* a date alone: its midnight UTC */

    rfc_bad("");
    rfc_bad("yesterday");
    rfc_bad("2024-05-14T");
    rfc_bad("2024-05-14x");
    rfc_bad("2024-05-14T16:02:11Zjunk");
    rfc_bad("2024-05-14T16:02:11.482Q");
    rfc_bad("2024-05-14T16:02:11+0200");
    rfc_bad("2024-05-14T16:02:11+02:00junk");
    rfc_bad("2024-05-14T16:02:11+02");
    /* Short or signed offsets: refused, and never read past the end of the string. */
    rfc_bad("2024-05-14T16:02:11+2:00");
    rfc_bad("2024-05-14T16:02:11+2:0");
    rfc_bad("2024-05-14T16:02:11+02:0");
    rfc_bad("2024-05-14T16:02:11+-1:00");
    rfc_bad("2024-05-14T16:02:11+ 2:00");
    rfc_bad("2024-05-14T16:02:11+24:00");
    rfc_bad("2024-05-14T16:02:11+02:60");
    /* Before the epoch: refused rather than wrapped to a huge unsigned time. */
    rfc_bad("1969-12-31T23:59:59Z");
    rfc_bad("1970-01-01T00:30:00+01:00");
}

/* ---- Compare, names, UTF-8 ------------------------------------------------------------- */

static bool eq(const char *a, const char *b)
{
    return hr_consttime_eq(a, strlen(a), b, strlen(b));
}

static void test_consttime_eq(void)
{
    CHECK(eq("secret-token", "secret-token"));
    CHECK(eq("", ""));
    CHECK(!eq("secret-token", "secret-tokeN"));
    CHECK(!eq("Secret-token", "secret-token"));
    /* A prefix is not a match, either way round. */
    CHECK(!eq("secret", "secret-token"));
    CHECK(!eq("secret-token", "secret"));
    CHECK(!eq("", "x"));
    CHECK(!eq("x", ""));
    /* Lengths, not NULs, bound the strings. */
    CHECK(hr_consttime_eq("a\0b", 3, "a\0b", 3));
    CHECK(!hr_consttime_eq("a\0b", 3, "a\0c", 3));
    CHECK(!hr_consttime_eq("a\0b", 3, "a", 1));
    CHECK(!hr_consttime_eq("a", 1, "a\0", 2));
    /* Only len bytes are compared. */
    CHECK(hr_consttime_eq("abcX", 3, "abcY", 3));
}

static bool safe(const char *s)
{
    return hr_is_safe_name(s, strlen(s));
}

static void test_safe_name(void)
{
    CHECK(safe("42"));
    CHECK(safe("store-42_b.v2"));
    CHECK(safe("...")); /* not a path step */
    CHECK(safe(".hidden"));
    CHECK(safe("a..b"));
    CHECK(!safe(""));
    CHECK(!safe("."));
    CHECK(!safe(".."));
    CHECK(!safe("a/b"));
    CHECK(!safe("../etc"));
    CHECK(!safe("/abs"));
    CHECK(!safe("a\\b"));
    CHECK(!safe("a b"));
    CHECK(!safe("a:b"));
    CHECK(!safe("caf\xc3\xa9")); /* ASCII only */
    CHECK(!safe("a\nb"));
    CHECK(!hr_is_safe_name("ab\0c", 4)); /* a NUL inside */
    CHECK(hr_is_safe_name("ab/c", 2));   /* only n bytes count */
    char name[130];
    memset(name, 'a', sizeof name);
    CHECK(hr_is_safe_name(name, 128));
    CHECK(!hr_is_safe_name(name, 129));
}

static size_t u8(const char *s, size_t n)
{
    return hr_utf8_len((const unsigned char *)s, n);
}

static void test_utf8_len(void)
{
    CHECK_INT_EQ(u8("\xc3\xa9", 2), 2);         /* U+00E9 */
    CHECK_INT_EQ(u8("\xc2\x80", 2), 2);         /* U+0080, the smallest of 2 bytes */
    CHECK_INT_EQ(u8("\xdf\xbf", 2), 2);         /* U+07FF */
    CHECK_INT_EQ(u8("\xe0\xa0\x80", 3), 3);     /* U+0800 */
    CHECK_INT_EQ(u8("\xe2\x82\xac", 3), 3);     /* U+20AC */
    CHECK_INT_EQ(u8("\xed\x9f\xbf", 3), 3);     /* U+D7FF, just below the surrogates */
    CHECK_INT_EQ(u8("\xee\x80\x80", 3), 3);     /* U+E000, just above */
    CHECK_INT_EQ(u8("\xef\xbf\xbf", 3), 3);     /* U+FFFF */
    CHECK_INT_EQ(u8("\xf0\x90\x80\x80", 4), 4); /* U+10000 */
    CHECK_INT_EQ(u8("\xf0\x9f\x98\x80", 4), 4); /* U+1F600 */
    CHECK_INT_EQ(u8("\xf4\x8f\xbf\xbf", 4), 4); /* U+10FFFF */
    CHECK_INT_EQ(u8("\xc3\xa9rest", 6), 2);     /* only the sequence counts */
    CHECK_INT_EQ(u8("a", 1), 0);                /* ASCII is not a sequence of 2 to 4 */
    CHECK_INT_EQ(u8("\x80", 1), 0);             /* a lone continuation byte */
    CHECK_INT_EQ(u8("\xbf\xbf", 2), 0);
    CHECK_INT_EQ(u8("\xc0\x80", 2), 0);         /* overlong NUL */
    CHECK_INT_EQ(u8("\xc1\xbf", 2), 0);         /* overlong */
    CHECK_INT_EQ(u8("\xe0\x80\x80", 3), 0);     /* overlong */
    CHECK_INT_EQ(u8("\xe0\x9f\xbf", 3), 0);     /* overlong U+07FF */
    CHECK_INT_EQ(u8("\xf0\x80\x80\x80", 4), 0); /* overlong */
    CHECK_INT_EQ(u8("\xf0\x8f\xbf\xbf", 4), 0); /* overlong U+FFFF */
    CHECK_INT_EQ(u8("\xed\xa0\x80", 3), 0);     /* U+D800, a surrogate */
    CHECK_INT_EQ(u8("\xed\xbf\xbf", 3), 0);     /* U+DFFF */
    CHECK_INT_EQ(u8("\xf4\x90\x80\x80", 4), 0); /* U+110000 */
    CHECK_INT_EQ(u8("\xf5\x80\x80\x80", 4), 0); /* past F4 */
    CHECK_INT_EQ(u8("\xff", 1), 0);
    CHECK_INT_EQ(u8("\xc3\x41", 2), 0); /* second byte not a continuation */
    CHECK_INT_EQ(u8("\xc3\xc3", 2), 0);
    CHECK_INT_EQ(u8("\xe2\x82\x41", 3), 0);     /* third byte */
    CHECK_INT_EQ(u8("\xf0\x9f\x98\x41", 4), 0); /* fourth byte */
    /* Cut short by n: never read past it. */
    CHECK_INT_EQ(u8("\xc3\xa9", 1), 0);
    CHECK_INT_EQ(u8("\xe2\x82\xac", 2), 0);
    CHECK_INT_EQ(u8("\xf0\x9f\x98\x80", 3), 0);
}

/* ---- Files and paths ------------------------------------------------------------------- */

static void test_read_file(void)
{
    char *path = hr_xasprintf("%s/data.bin", dir);
    /* Larger than one read, with NUL bytes inside. */
    size_t n = 200000;
    char *data = hr_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        data[i] = (char)(i % 251);
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK_INT_EQ(fwrite(data, 1, n, f), n);
        fclose(f);
    }
    size_t len = 0;
    char *got = hr_read_file(path, &len);
    CHECK(got != NULL);
    CHECK_INT_EQ(len, n);
    if (got && len == n) {
        CHECK(memcmp(got, data, n) == 0);
        CHECK_INT_EQ(got[n], 0); /* NUL-terminated past the data */
    }
    free(got);
    got = hr_read_file(path, NULL); /* len is optional */
    CHECK(got != NULL);
    free(got);
    free(data);

    /* An empty file is an empty string, not NULL. */
    char *empty = hr_xasprintf("%s/empty", dir);
    f = fopen(empty, "w");
    CHECK(f != NULL);
    if (f) fclose(f);
    len = 99;
    got = hr_read_file(empty, &len);
    CHECK(got != NULL);
    CHECK_INT_EQ(len, 0);
    CHECK_STR_EQ(got, "");
    free(got);

    /* Missing, or a folder: NULL with errno set. */
    char *missing = hr_xasprintf("%s/missing", dir);
    errno = 0;
    CHECK(hr_read_file(missing, &len) == NULL);
    CHECK_INT_EQ(errno, ENOENT);
    errno = 0;
    CHECK(hr_read_file(dir, &len) == NULL);
    CHECK_INT_EQ(errno, EISDIR);
    free(missing);
    free(empty);
    free(path);
}

static void path_join_is(const char *d, const char *p, const char *want)
{
    char *got = hr_path_join(d, p);
    CHECK_STR_EQ(got, want);
    free(got);
}

static void test_path_join(void)
{
    path_join_is("/etc/hr", "rules", "/etc/hr/rules");
    path_join_is("/etc/hr/", "rules", "/etc/hr/rules");
    path_join_is("/etc/hr", "var/spool", "/etc/hr/var/spool");
    path_join_is("/etc/hr", "/abs/x", "/abs/x");
    path_join_is(".", "rules", "rules");
    path_join_is("", "rules", "rules");
    path_join_is(NULL, "rules", "rules");
    path_join_is("/", "x", "/x");
    path_join_is("rel", "x", "rel/x");
}

/* ---- Buffers and small helpers --------------------------------------------------------- */

static void test_buf(void)
{
    hr_buf_t b = HR_BUF_INIT;
    CHECK(b.data == NULL);
    CHECK_INT_EQ(b.len, 0);
    hr_buf_appends(&b, "abc");
    CHECK_STR_EQ(b.data, "abc");
    CHECK_INT_EQ(b.len, 3);
    CHECK(b.cap > b.len); /* room for the NUL */
    hr_buf_appendc(&b, 'd');
    hr_buf_append(&b, "e\0f", 3);
    CHECK_INT_EQ(b.len, 7);
    CHECK(memcmp(b.data, "abcde\0f", 8) == 0);
    hr_buf_append(&b, NULL, 0); /* appending nothing is fine, even from NULL */
    CHECK_INT_EQ(b.len, 7);
    hr_buf_reset(&b);
    CHECK_INT_EQ(b.len, 0);
    CHECK_STR_EQ(b.data, "");
    size_t cap = b.cap;
    CHECK(cap > 0); /* reset keeps the memory */
    hr_buf_printf(&b, "%d-%s-%05.1f", 42, "x", 3.14159);
    CHECK_STR_EQ(b.data, "42-x-003.1");
    /* Growth keeps the content and the NUL. */
    hr_buf_reset(&b);
    for (int i = 0; i < 10000; i++)
        hr_buf_appendc(&b, (char)('a' + i % 26));
    CHECK_INT_EQ(b.len, 10000);
    CHECK_INT_EQ(b.data[10000], 0);
    CHECK_INT_EQ(b.data[9999], 'a' + 9999 % 26);
    hr_buf_reserve(&b, 100000);
    CHECK(b.cap >= b.len + 100000 + 1);
    CHECK_INT_EQ(b.len, 10000);
    /* Stealing hands the bytes over and leaves b empty. */
    size_t len = 0;
    char *s = hr_buf_steal(&b, &len);
    CHECK_INT_EQ(len, 10000);
    CHECK_INT_EQ(s[0], 'a');
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    free(s);
    /* An empty buffer steals as "", never NULL. */
    s = hr_buf_steal(&b, &len);
    CHECK(s != NULL);
    CHECK_STR_EQ(s, "");
    CHECK_INT_EQ(len, 0);
    free(s);
    hr_buf_free(&b);
    CHECK(b.data == NULL);

    char *a = hr_xasprintf("%s=%u", "n", 7u);
    CHECK_STR_EQ(a, "n=7");
    free(a);
    a = hr_xstrndup("abcdef", 3);
    CHECK_STR_EQ(a, "abc");
    free(a);
    a = hr_xstrcat("http://h/base", "/path?q=1");
    CHECK_STR_EQ(a, "http://h/base/path?q=1");
    free(a);
    a = hr_xstrcat("", "");
    CHECK_STR_EQ(a, "");
    free(a);
}

static void json_string_is(const char *s, size_t n, const char *want)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_append_json_string(&b, s, n);
    CHECK_STR_EQ(b.data, want);
    hr_buf_free(&b);
}

static void test_json_string(void)
{
    json_string_is("", 0, "\"\"");
    json_string_is("plain", 5, "\"plain\"");
    json_string_is("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
    json_string_is("\n\r\t\b\f", 5, "\"\\n\\r\\t\\b\\f\"");
    json_string_is("\x01\x1f", 2, "\"\\u0001\\u001f\"");
    json_string_is("a\0b", 3, "\"a\\u0000b\"");
    json_string_is("\x7f/", 2, "\"\x7f/\"");             /* DEL and '/' need no escape */
    json_string_is("caf\xc3\xa9", 5, "\"caf\xc3\xa9\""); /* UTF-8 passes through */
    json_string_is("abc", 2, "\"ab\"");                  /* n bytes only */
    /* Past eight bytes (the word-wide scan): each special byte at every position, and the
     * bytes next to them in value that need no escape. */
    static const char special[] = {'"', '\\', '\n', '\x01', '\0', '\x1f'};
    static const char *const escaped[] = {"\\\"", "\\\\", "\\n", "\\u0001", "\\u0000", "\\u001f"};
    for (size_t k = 0; k < HR_ARRAY_SIZE(special); k++) {
        for (size_t pos = 0; pos < 24; pos++) {
            char in[24], want[64];
            memset(in, 'x', sizeof in);
            in[pos] = special[k];
            snprintf(want, sizeof want, "\"%.*s%s%.*s\"", (int)pos, in, escaped[k],
                     (int)(sizeof in - pos - 1), in + pos + 1);
            json_string_is(in, sizeof in, want);
        }
    }
    json_string_is(" !#[]~\x7f\x80\xff\xc3\xa9 0123456789", 22,
                   "\" !#[]~\x7f\x80\xff\xc3\xa9 0123456789\"");
    /* Appends to what is there. */
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_appends(&b, "{\"k\":");
    hr_buf_append_json_string(&b, "v", 1);
    hr_buf_appendc(&b, '}');
    CHECK_STR_EQ(b.data, "{\"k\":\"v\"}");
    hr_buf_free(&b);
}

static void test_iov_advance(void)
{
    char a[] = "aaaa", b[] = "bb", c[] = "cccccc";
    struct iovec iov[3] = {{a, 4}, {b, 2}, {c, 6}};
    struct iovec *v = iov;
    int cnt = 3;
    hr_iov_advance(&v, &cnt, 0);
    CHECK(v == iov && cnt == 3 && v->iov_len == 4);
    hr_iov_advance(&v, &cnt, 3); /* part of the first */
    CHECK(v == iov && cnt == 3);
    CHECK_INT_EQ(v->iov_len, 1);
    CHECK(v->iov_base == a + 3);
    hr_iov_advance(&v, &cnt, 1); /* exactly the rest of it */
    CHECK(v == iov + 1 && cnt == 2);
    hr_iov_advance(&v, &cnt, 4); /* all of the second, 2 of the third */
    CHECK(v == iov + 2 && cnt == 1);
    CHECK_INT_EQ(v->iov_len, 4);
    CHECK(v->iov_base == c + 2);
    hr_iov_advance(&v, &cnt, 4); /* everything */
    CHECK_INT_EQ(cnt, 0);
}

static void test_headers_free(void)
{
    hr_headers_free(NULL, 0);
    hr_header_t *h = hr_xcalloc(2, sizeof *h);
    h[0].name = hr_xstrdup("A");
    h[0].value = hr_xstrdup("1");
    h[1].name = hr_xstrdup("B");
    h[1].value = hr_xstrdup("2");
    hr_headers_free(h, 2); /* ASan's leak check is the assertion */
}

/* ---- Ids and clocks -------------------------------------------------------------------- */

static void test_ids(void)
{
    uint64_t before = hr_wall_ms();
    char id[HR_ID_LEN];
    hr_id_new(id);
    uint64_t after = hr_wall_ms();
    CHECK_INT_EQ(strlen(id), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            CHECK(id[i] == '-');
        else
            CHECK(strchr("0123456789abcdef", id[i]) != NULL);
    }
    CHECK(id[14] == '7');                  /* version 7 */
    CHECK(strchr("89ab", id[19]) != NULL); /* variant 10 */
    /* The first 48 bits are the wall clock in ms. */
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    uint64_t ms = strtoull(hex, NULL, 16);
    CHECK(ms >= before && ms <= after);
    /* Time-ordered across milliseconds, and distinct. */
    char prev[HR_ID_LEN];
    memcpy(prev, id, sizeof id);
    usleep(2000);
    hr_id_new(id);
    CHECK(strcmp(prev, id) < 0);
    int dups = 0;
    for (int i = 0; i < 1000; i++) {
        memcpy(prev, id, sizeof id);
        hr_id_new(id);
        dups += strcmp(prev, id) == 0;
    }
    CHECK_INT_EQ(dups, 0);

    uint64_t r1 = hr_rand64(), r2 = hr_rand64(), r3 = hr_rand64();
    CHECK(r1 != r2 && r2 != r3 && r1 != r3);
    CHECK(hr_wall_ms() > 1700000000000ull); /* after 2023: a wall clock, not a monotonic one */
}

/* hr_fmt_i64 writes what "%lld" writes, at both ends of the range too. */
static void test_fmt_i64(void)
{
    static const int64_t cases[] = {0, 7, -1, 42, 1000, -9876543210LL, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        char got[21], want[32];
        size_t n = hr_fmt_i64(got, cases[i]);
        snprintf(want, sizeof want, "%lld", (long long)cases[i]);
        CHECK_STR_EQ(got, want);
        CHECK_INT_EQ(n, strlen(want));
    }
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/hr_test_common.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    test_url();
    test_rfc3339();
    test_consttime_eq();
    test_safe_name();
    test_utf8_len();
    test_read_file();
    test_path_join();
    test_buf();
    test_json_string();
    test_iov_advance();
    test_headers_free();
    test_ids();
    test_fmt_i64();
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_common");
}
