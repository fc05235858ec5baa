/* Common helpers: aborting allocators, buffers, time, ids, names, URLs. */
#include "hr/common.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>

/* ---------------------------------------------------------------- allocation */

static void oom(size_t n)
{
    fprintf(stderr, "hookrouter: out of memory allocating %zu bytes\n", n);
    abort();
}

void *hr_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom(n);
    return p;
}

void *hr_xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (!p) oom(count * n);
    return p;
}

void *hr_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) oom(n);
    return q;
}

char *hr_xstrndup(const char *s, size_t n)
{
    char *p = hr_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *hr_xstrcat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = hr_xmalloc(na + nb + 1);
    memcpy(p, a, na);
    memcpy(p + na, b, nb + 1);
    return p;
}

char *hr_xstrdup(const char *s)
{
    return hr_xstrndup(s, strlen(s));
}

void hr_ascii_lower(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = src[i];
        dst[i] = ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
    }
}

char *hr_xstrdup_lower(const char *s)
{
    char *p = hr_xstrdup(s);
    hr_ascii_lower(p, p, strlen(p));
    return p;
}

char *hr_xasprintf(const char *fmt, ...)
{
    hr_buf_t b = HR_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    hr_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    return hr_buf_steal(&b, NULL);
}

/* ---------------------------------------------------------------- buffers */

void hr_buf_init(hr_buf_t *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void hr_buf_free(hr_buf_t *b)
{
    free(b->data);
    hr_buf_init(b);
}

void hr_buf_reset(hr_buf_t *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void hr_buf_reserve(hr_buf_t *b, size_t extra)
{
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    b->data = hr_xrealloc(b->data, cap);
    b->cap = cap;
    b->data[b->len] = '\0'; /* a first allocation is a string too */
}

void hr_buf_grow_append(hr_buf_t *b, const void *p, size_t n)
{
    hr_buf_reserve(b, n);
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void hr_buf_appends(hr_buf_t *b, const char *s)
{
    hr_buf_append(b, s, strlen(s));
}

size_t hr_fmt_i64(char *out, int64_t v)
{
    char tmp[20];
    size_t n = 0;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    size_t len = 0;
    if (v < 0) out[len++] = '-';
    while (n)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

void hr_buf_vprintf(hr_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return;
    hr_buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void hr_buf_printf(hr_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    hr_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void hr_buf_append_json_string(hr_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Eight bytes a step to the first word that may need an escape, then byte by byte to
     * the exact one. */
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, s + i, 8);
        if (hr_swar_json_escape(x)) break;
    }
    while (i < n && (unsigned char)s[i] >= 0x20 && s[i] != '"' && s[i] != '\\')
        i++;
    hr_buf_reserve(b, n + 2);
    if (i == n) { /* nothing to escape (the usual case): one copy */
        char *d = b->data + b->len;
        d[0] = '"';
        if (n) memcpy(d + 1, s, n);
        d[n + 1] = '"';
        d[n + 2] = '\0';
        b->len += n + 2;
        return;
    }
    hr_buf_appendc(b, '"');
    size_t run = 0; /* start of the current run of bytes that need no escape */
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        hr_buf_append(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': hr_buf_append(b, "\\\"", 2); break;
        case '\\': hr_buf_append(b, "\\\\", 2); break;
        case '\n': hr_buf_append(b, "\\n", 2); break;
        case '\r': hr_buf_append(b, "\\r", 2); break;
        case '\t': hr_buf_append(b, "\\t", 2); break;
        case '\b': hr_buf_append(b, "\\b", 2); break;
        case '\f': hr_buf_append(b, "\\f", 2); break;
        default: {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            hr_buf_append(b, esc, 6);
        }
        }
    }
    hr_buf_append(b, s + run, n - run);
    hr_buf_appendc(b, '"');
}

char *hr_buf_steal(hr_buf_t *b, size_t *len)
{
    if (!b->data) hr_buf_reserve(b, 0);
    char *p = b->data;
    if (len) *len = b->len;
    hr_buf_init(b);
    return p;
}

void hr_iov_advance(struct iovec **v, int *iovcnt, size_t n)
{
    while (*iovcnt > 0 && n >= (*v)->iov_len) {
        n -= (*v)->iov_len;
        (*v)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*v)->iov_base = (char *)(*v)->iov_base + n;
        (*v)->iov_len -= n;
    }
}

void hr_headers_free(hr_header_t *h, size_t n)
{
    if (!h) return;
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        free(h[i].value);
    }
    free(h);
}

/* ---------------------------------------------------------------- time */

uint64_t hr_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void hr_rfc3339(uint64_t ms, char out[32])
{
    /* The seconds part of the last time this thread formatted: every event and log line
     * formats one, and most fall in the same second as the one before. */
    static _Thread_local struct {
        uint64_t secs;
        size_t n; /* 0: nothing cached */
        char text[26];
    } last;
    uint64_t secs = ms / 1000;
    if (last.n == 0 || last.secs != secs) {
        time_t t = (time_t)secs;
        struct tm tm;
        gmtime_r(&t, &tm);
        /* strftime keeps the compiler from assuming 11-digit years. */
        last.n = strftime(last.text, sizeof last.text, "%Y-%m-%dT%H:%M:%S", &tm);
        last.secs = secs;
    }
    size_t n = last.n;
    memcpy(out, last.text, n);
    unsigned frac = (unsigned)(ms % 1000); /* no printf: this runs per event */
    out[n] = '.';
    out[n + 1] = (char)('0' + frac / 100);
    out[n + 2] = (char)('0' + frac / 10 % 10);
    out[n + 3] = (char)('0' + frac % 10);
    out[n + 4] = 'Z';
    out[n + 5] = '\0';
}

int hr_rfc3339_parse(const char *s, uint64_t *ms)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!p) {
        p = strptime(s, "%Y-%m-%d", &tm);
        if (!p || *p) return -1;
        *ms = (uint64_t)timegm(&tm) * 1000u;
        return 0;
    }
    uint64_t frac = 0;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            if (digits < 3) frac = frac * 10 + (uint64_t)(*p - '0');
            digits++;
            p++;
        }
        for (; digits < 3; digits++)
            frac *= 10;
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        /* Exactly [+-]hh:mm: checked byte by byte, so a short one is not read past its end. */
        for (int i = 1; i <= 5; i++)
            if (i == 3 ? p[i] != ':' : !isdigit((unsigned char)p[i])) return -1;
        int hh = (p[1] - '0') * 10 + (p[2] - '0'), mm = (p[4] - '0') * 10 + (p[5] - '0');
        if (hh > 23 || mm > 59) return -1;
        offset = (hh * 60 + mm) * 60 * (*p == '-' ? -1 : 1);
        p += 6;
    }
    if (*p) return -1;
    time_t t = timegm(&tm) - offset;
    if (t < 0) return -1;
    *ms = (uint64_t)t * 1000u + frac;
    return 0;
}

/* ---------------------------------------------------------------- ids */

static _Thread_local uint64_t rng_state;

uint64_t hr_rand64(void)
{
    if (rng_state == 0) {
        if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || rng_state == 0)
            rng_state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15u | 1u;
    }
    /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Du;
}

void hr_id_new(char out[HR_ID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    uint64_t ms = hr_wall_ms();
    uint64_t r1 = hr_rand64(), r2 = hr_rand64();
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    for (int i = 0; i < 8; i++) {
        b[6 + i] = (unsigned char)(r1 >> (8 * i));
    }
    b[14] = (unsigned char)r2;
    b[15] = (unsigned char)(r2 >> 8);
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f)); /* version 7 */
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f)); /* variant 10 */
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

/* ---------------------------------------------------------------- strings and paths */

bool hr_consttime_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Compare over the length of b (the secret) so that timing does not reveal a prefix. */
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < blen; i++) {
        unsigned char ca = i < alen ? (unsigned char)a[i] : 0;
        diff |= (unsigned char)(ca ^ (unsigned char)b[i]);
    }
    return diff == 0;
}

bool hr_is_safe_name(const char *s, size_t n)
{
    if (n == 0 || n > 128) return false;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '.' || c == '_' || c == '-')) return false;
    }
    return true;
}

char *hr_path_join(const char *dir, const char *path)
{
    if (path[0] == '/' || !dir || !dir[0] || strcmp(dir, ".") == 0) return hr_xstrdup(path);
    size_t dl = strlen(dir);
    return hr_xasprintf("%s%s%s", dir, dir[dl - 1] == '/' ? "" : "/", path);
}

int hr_mkdir_p(const char *dir)
{
    if (!dir[0]) return -ENOENT;
    char *d = hr_xstrdup(dir);
    int rc = 0;
    for (char *p = d + 1;; p++) { /* d + 1: "/" itself is never made */
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(d, 0700) < 0) {
            struct stat st;
            if (errno != EEXIST)
                rc = -errno;
            else if (stat(d, &st) < 0)
                rc = -errno;
            else if (!S_ISDIR(st.st_mode))
                rc = -ENOTDIR;
        }
        *p = saved;
        if (rc < 0 || !saved) break;
    }
    free(d);
    return rc;
}

/* ---------------------------------------------------------------- URLs */

int hr_url_parse(const char *url, hr_url_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    const char *p;
    bool tls = strncmp(url, "https://", 8) == 0;
    if (strncmp(url, "http://", 7) == 0 || tls) {
        p = url + (tls ? 8 : 7);
    } else {
        snprintf(err, errlen, "URL must start with http:// or https://: %s", url);
        return -1;
    }
    const char *host_end, *host_start = p;
    const char *at = memchr(p, '@', strcspn(p, "/?#"));
    if (at) {
        snprintf(err, errlen, "credentials (userinfo) in the URL are not supported: %s", url);
        return -1;
    }
    if (*p == '[') {
        host_start = p + 1;
        host_end = strchr(p, ']');
        if (!host_end) goto bad;
        p = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/?#");
        p = host_end;
    }
    if (host_end == host_start) goto bad;
    int port = tls ? 443 : 80;
    if (*p == ':') {
        char *end;
        errno = 0;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || v < 1 || v > 65535) goto bad;
        port = (int)v;
        p = end;
    }
    if (*p && *p != '/' && *p != '?') goto bad;
    for (const char *q = url; *q; q++) {
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) goto bad;
    }
    u->host = hr_xstrndup(host_start, (size_t)(host_end - host_start));
    u->port = port;
    u->tls = tls;
    if (*p == '?')
        u->path = hr_xasprintf("/%s", p);
    else
        u->path = hr_xstrdup(*p ? p : "/");
    char *hash = strchr(u->path, '#');
    if (hash) *hash = '\0';
    return 0;
bad:
    snprintf(err, errlen, "invalid URL: %s", url);
    return -1;
}

void hr_url_free(hr_url_t *u)
{
    free(u->host);
    free(u->path);
    u->host = u->path = NULL;
}

size_t hr_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    size_t len;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

char *hr_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    hr_buf_t b = HR_BUF_INIT;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        hr_buf_append(&b, chunk, n);
    bool err = ferror(f);
    fclose(f);
    if (err) {
        hr_buf_free(&b);
        return NULL;
    }
    size_t used = b.len;
    hr_buf_appendc(&b, '\0');
    if (len) *len = used;
    return hr_buf_steal(&b, NULL);
}
