/* Common helpers: allocation policy, growable buffers, small utilities.
 *
 * Out-of-memory policy: small internal objects come from hr_xmalloc & co, which abort on
 * failure (Redis zmalloc). Anything sized by a client is checked against a configured
 * limit first and fails softly with the right HTTP status. */
#ifndef HR_COMMON_H
#define HR_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

#ifndef HR_VERSION
#define HR_VERSION "0.0.0"
#endif

#define HR_ARRAY_SIZE(a)                   (sizeof(a) / sizeof((a)[0]))
#define hr_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define HR_PRINTF(fmt, args)               __attribute__((format(printf, fmt, args)))

/* Aborting allocators: never return NULL. */
void *hr_xmalloc(size_t n);
void *hr_xcalloc(size_t count, size_t n);
void *hr_xrealloc(void *p, size_t n);
char *hr_xstrdup(const char *s);
char *hr_xstrndup(const char *s, size_t n);
/* hr_xstrdup with ASCII letters lower-cased (header names). */
char *hr_xstrdup_lower(const char *s);
/* n bytes of src into dst (which may be src) with ASCII letters lower-cased. */
void hr_ascii_lower(char *dst, const char *src, size_t n);
/* a then b in one new string (what hr_xasprintf("%s%s", a, b) makes, without printf). */
char *hr_xstrcat(const char *a, const char *b);
char *hr_xasprintf(const char *fmt, ...) HR_PRINTF(1, 2);

/* A growable byte buffer. data is always NUL-terminated when cap > 0 (the NUL is not
 * counted in len), so data can be used as a C string when it holds text. */
typedef struct {
    char *data; /* bytes, or NULL before the first append */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated (including room for the NUL) */
} hr_buf_t;

#define HR_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }
void hr_buf_init(hr_buf_t *b);
void hr_buf_free(hr_buf_t *b);
void hr_buf_reset(hr_buf_t *b); /* len = 0, keeps the memory */
void hr_buf_reserve(hr_buf_t *b, size_t extra);
/* Growth of hr_buf_append / hr_buf_appendc when the bytes and the NUL do not fit. */
void hr_buf_grow_append(hr_buf_t *b, const void *p, size_t n);
/* Append n bytes (p may be NULL when n is 0). Inline where they fit, since encoders and the
 * spool's records append many small pieces. */
static inline void hr_buf_append(hr_buf_t *b, const void *p, size_t n)
{
    if (b->len + n >= b->cap) {
        hr_buf_grow_append(b, p, n);
        return;
    }
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}
static inline void hr_buf_appendc(hr_buf_t *b, char c)
{
    hr_buf_append(b, &c, 1);
}
void hr_buf_appends(hr_buf_t *b, const char *s);
/* The top bit of each of the eight bytes of x that a JSON string must escape: below 0x20,
 * '"' or '\\' (the usual SWAR tests: a byte b < n sets the top bit of (b - n) & ~b, and
 * b == c is b ^ c < 1). The lowest flag is exact; a borrow can flag a byte above a true one,
 * never a word without one. */
static inline uint64_t hr_swar_json_escape(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, tops = 0x8080808080808080ULL;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');
    return (((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b)) & tops;
}
void hr_buf_printf(hr_buf_t *b, const char *fmt, ...) HR_PRINTF(2, 3);
void hr_buf_vprintf(hr_buf_t *b, const char *fmt, va_list ap);
/* Append s as a JSON string literal (with quotes), escaping as RFC 8259 requires.
 * Bytes are copied as they are (UTF-8 passes through). */
void hr_buf_append_json_string(hr_buf_t *b, const char *s, size_t n);
/* Write v in decimal into out (at least 21 bytes), NUL-terminated; returns the length (what
 * "%lld" gives, without printf's cost on a hot path). */
size_t hr_fmt_i64(char *out, int64_t v);
/* Hand the memory over to the caller (who frees it) and leave b empty. Never NULL. */
char *hr_buf_steal(hr_buf_t *b, size_t *len);

struct iovec;
/* Skip n bytes written from the front of the iovec array *v of *iovcnt entries (after a short
 * writev): whole entries are dropped, a partial one is trimmed. */
void hr_iov_advance(struct iovec **v, int *iovcnt, size_t n);

/* A header as name and value, both NUL-terminated and owned by whoever owns the array. */
typedef struct {
    char *name;
    char *value;
} hr_header_t;

void hr_headers_free(hr_header_t *h, size_t n);

/* Wall clock in milliseconds since the epoch. */
uint64_t hr_wall_ms(void);
/* Format ms since the epoch as RFC 3339 UTC with milliseconds: 2024-05-14T16:02:11.482Z.
 * out must hold 32 bytes. */
void hr_rfc3339(uint64_t ms, char out[32]);
/* Parse an RFC 3339 time (as hr_rfc3339 writes it, or with seconds only / a +hh:mm offset).
 * Returns 0 and sets *ms, or -1 (times before the epoch too). */
int hr_rfc3339_parse(const char *s, uint64_t *ms);

/* A new event id: a UUIDv7 string (time-ordered, 36 chars + NUL). Thread-safe. */
#define HR_ID_LEN 37
void hr_id_new(char out[HR_ID_LEN]);

/* Random 64 bits from a per-thread xorshift generator seeded from the OS. */
uint64_t hr_rand64(void);

/* Compare two byte strings in time that depends only on the lengths. */
bool hr_consttime_eq(const char *a, size_t alen, const char *b, size_t blen);
/* Length of the valid UTF-8 sequence of 2 to 4 bytes at s (n >= 1 bytes left), or 0 if the
 * bytes there are not one: overlong forms, UTF-16 surrogates (U+D800..U+DFFF) and code points
 * past U+10FFFF are invalid (RFC 3629). */
size_t hr_utf8_len(const unsigned char *s, size_t n);
/* Read the file at path whole. Returns a malloc'd copy, NUL-terminated (len, if not NULL,
 * excludes the NUL), or NULL with errno set if it cannot be opened or read. */
char *hr_read_file(const char *path, size_t *len);

/* True if s is a safe single path component: [A-Za-z0-9._-]+, not "." or "..". */
bool hr_is_safe_name(const char *s, size_t n);

/* Join dir and path unless path is absolute. Returns a new string. */
char *hr_path_join(const char *dir, const char *path);
/* Create the directory dir and every missing parent (mkdir -p), each new one with mode 0700
 * (less the umask). Existing directories are fine; a component that exists but is not a
 * directory is -ENOTDIR. Returns 0, or a negative errno (the first failure stops it). */
int hr_mkdir_p(const char *dir);

/* An http:// or https:// URL split into parts (credentials, user@, are refused). */
typedef struct {
    char *host; /* without brackets for IPv6 */
    int port;   /* 80 (http) or 443 (https) if absent */
    char *path; /* "/" if absent; includes the query */
    bool tls;   /* https:// */
} hr_url_t;

/* Parse url into u. Returns 0, or -1 with a message in err. u owns its strings. */
int hr_url_parse(const char *url, hr_url_t *u, char *err, size_t errlen);
void hr_url_free(hr_url_t *u);

#endif
