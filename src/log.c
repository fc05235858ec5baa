/* Logging: one line per message on stderr, text or JSON, written with one write(2) so that lines
 * from a crashing process are not lost in a stdio buffer, and never waiting for stderr. Data in
 * a line is escaped, so it cannot break the line or forge another; the formatter knows each
 * value's extent, so text values are quoted as logfmt wants them and JSON keys carry them. */
#include "hr/log.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

/* Set by whichever thread loads a config (every worker on reload), read by all: atomic, relaxed
 * (a change need not be ordered with anything else). */
static _Atomic int min_level = HR_LOG_INFO;
static _Atomic int log_format = HR_LOG_TEXT;
static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"text", "json"};

void hr_log_set_level(hr_log_level_t level)
{
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

/* The index of s in names[0..n), or -1. */
static int name_index(const char *const *names, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) return (int)i;
    return -1;
}

int hr_log_level_parse(const char *s, hr_log_level_t *level)
{
    int i = strcmp(s, "warning") == 0 ? HR_LOG_WARN
                                      : name_index(level_names, HR_ARRAY_SIZE(level_names), s);
    if (i < 0) return -1;
    *level = (hr_log_level_t)i;
    return 0;
}

bool hr_log_enabled(hr_log_level_t level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

void hr_log_set_format(hr_log_format_t format)
{
    atomic_store_explicit(&log_format, (int)format, memory_order_relaxed);
}

int hr_log_format_parse(const char *s, hr_log_format_t *format)
{
    int i = name_index(format_names, HR_ARRAY_SIZE(format_names), s);
    if (i < 0) return -1;
    *format = (hr_log_format_t)i;
    return 0;
}

static void flush_held(void);

void hr_log_apply(const char *level, const char *format)
{
    hr_log_level_t l;
    hr_log_format_t f;
    if (level && hr_log_level_parse(level, &l) == 0) hr_log_set_level(l);
    if (format && hr_log_format_parse(format, &f) == 0) hr_log_set_format(f);
    flush_held();
}

/* ---- Escaping ----------------------------------------------------------------------------- */

typedef enum {
    ESC_TEXT,   /* a text message: hr_log_escape */
    ESC_QUOTED, /* inside a quoted text value: ESC_TEXT plus \" and \\ */
    ESC_JSON,   /* inside a JSON string */
} esc_mode_t;

/* Escape src[0..n) as mode says into dst (at most cap bytes; dst NULL: only count). Stops
 * before an escape or a character that would not fit whole. *used (if not NULL) gets the
 * bytes of src consumed. Returns the bytes written (or that would be). */
static size_t escape(esc_mode_t mode, char *dst, size_t cap, const char *src, size_t n,
                     size_t *used)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = (const unsigned char *)src;
    size_t o = 0, i = 0;
    while (i < n) {
        /* a run of printable ASCII that stays as it is, in one copy */
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x7F &&
               (mode == ESC_TEXT || (s[run] != '"' && s[run] != '\\')))
            run++;
        if (run > i) {
            size_t k = run - i < cap - o ? run - i : cap - o;
            if (dst) memcpy(dst + o, s + i, k);
            o += k;
            i += k;
            if (i < run) break; /* out of room */
            continue;
        }
        unsigned char c = s[i];
        char esc[6];
        size_t elen = 0, take = 1;
        if (c == '\n' || c == '\r' || c == '\t') {
            esc[0] = '\\';
            esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
            elen = 2;
        } else if ((c == '"' || c == '\\') && mode != ESC_TEXT) {
            esc[0] = '\\';
            esc[1] = (char)c;
            elen = 2;
        } else if ((c < 0x20 || c == 0x7F) && mode == ESC_JSON) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        } else if (c < 0x20 || c == 0x7F ||
                   (c >= 0x80 && (take = hr_utf8_len(s + i, n - i)) == 0)) {
            /* JSON strings must be UTF-8: a stray byte is the text \xNN there too */
            size_t k = 0;
            esc[k++] = '\\';
            if (mode == ESC_JSON) esc[k++] = '\\';
            esc[k++] = 'x';
            esc[k++] = hex[c >> 4];
            esc[k++] = hex[c & 15];
            elen = k;
            take = 1;
        }
        size_t out = elen ? elen : take;
        if (out > cap - o) break; /* never cut an escape or a character in two */
        if (dst) memcpy(dst + o, elen ? esc : (const char *)s + i, out);
        o += out;
        i += take;
    }
    if (used) *used = i;
    return o;
}

size_t hr_log_escape(char *dst, size_t cap, const char *src, size_t n)
{
    return escape(ESC_TEXT, dst, cap, src, n, NULL);
}

/* A text value needs quotes when it is empty or holds a space, a control byte, '"', '=', DEL
 * or bytes that are not valid UTF-8 (logfmt reads an unquoted value up to the next space). */
static bool needs_quotes(const char *src, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    if (n == 0) return true;
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c <= 0x20 || c == '"' || c == '=' || c == 0x7F) return true;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len = hr_utf8_len(s + i, n - i);
        if (len == 0) return true;
        i += len;
    }
    return false;
}

/* ---- The formatter ------------------------------------------------------------------------ */

/* A string of the line: the message or a string field's value. */
typedef struct {
    const char *p;   /* its bytes (NULL: the field's value is NULL) */
    size_t n;        /* bytes at p */
    size_t total;    /* its length before a cut by the caller (>= n) */
    esc_mode_t mode; /* how it is escaped whole */
    bool value;      /* a text value: quoted when cut */
    bool quoted;     /* whole, it is written in quotes */
    size_t esc;      /* its escaped length, quotes not included */
    size_t room;     /* what the plan leaves of it, escaped (SIZE_MAX: all of it) */
} str_t;

#define MAX_FIELDS    32 /* more are left out (and counted as truncated) */
#define MARKER_FMT    "...[truncated %zu bytes]"
#define MARKER_LEN    21        /* MARKER_FMT without the number */
#define TRUNC_KEY_LEN (13 + 20) /* ,"truncated":N */

static size_t digits(size_t v)
{
    size_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

/* What s costs whole. */
static size_t whole_cost(const str_t *s)
{
    return s->esc + (s->quoted ? 2 : 0);
}

/* What cutting s costs beyond the escaped bytes it keeps: the marker (its number at most
 * s->total) and the quotes (a cut text value is quoted). */
static size_t cut_cost(const str_t *s)
{
    return MARKER_LEN + digits(s->total) + (s->mode == ESC_JSON || s->value ? 2 : 0);
}

/* Shorten the strings v[0..nv) so that they fit in budget bytes, markers included
 * (water-filling: the short ones stay whole; the others keep the same room each). */
static void plan_cut(str_t **v, size_t nv, size_t budget)
{
    /* sort by cost (insertion: a line has a few strings) */
    for (size_t i = 1; i < nv; i++)
        for (size_t j = i; j > 0 && whole_cost(v[j - 1]) > whole_cost(v[j]); j--) {
            str_t *t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    size_t left = budget;
    for (size_t j = 0; j < nv; j++) {
        size_t reserve = 0; /* the markers if every one from j on is cut */
        for (size_t k = j; k < nv; k++)
            reserve += cut_cost(v[k]);
        size_t share = left > reserve ? (left - reserve) / (nv - j) : 0;
        if (whole_cost(v[j]) <= share) {
            left -= whole_cost(v[j]);
            continue;
        }
        for (size_t k = j; k < nv; k++)
            v[k]->room = share;
        return;
    }
}

typedef struct {
    char *d;    /* the line */
    size_t len; /* bytes in it */
    size_t cap; /* bytes it may have */
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (n > o->cap - o->len) n = o->cap - o->len; /* the plan keeps this from happening */
    memcpy(o->d + o->len, s, n);
    o->len += n;
}

static void put_s(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Write s as the plan says; returns the bytes of it left out. */
static size_t put_str(out_t *o, const str_t *s)
{
    if (!s->p) {
        put_s(o, s->mode == ESC_JSON ? "null" : "-");
        return 0;
    }
    bool cut = s->room != SIZE_MAX;
    bool quote = s->quoted || (cut && s->value);
    esc_mode_t mode = cut && s->value ? ESC_QUOTED : s->mode;
    if (quote) put(o, "\"", 1);
    size_t used = 0, room = cut ? s->room : s->esc;
    if (room > o->cap - o->len) room = o->cap - o->len;
    o->len += escape(mode, o->d + o->len, room, s->p, s->n, &used);
    size_t lost = s->total - used;
    if (cut) {
        char m[48];
        int k = snprintf(m, sizeof m, MARKER_FMT, lost);
        put(o, m, (size_t)k);
    }
    if (quote) put(o, "\"", 1);
    return cut ? lost : 0;
}

/* A number field as text (the same in both formats; JSON has no NaN: null). */
static size_t number(const hr_log_field_t *f, char out[32])
{
    int k;
    switch (f->type) {
    case HR_LOG_INT: k = snprintf(out, 32, "%lld", f->i); break;
    case HR_LOG_UINT: k = snprintf(out, 32, "%llu", f->u); break;
    default: k = isfinite(f->ms) ? snprintf(out, 32, "%.2f", f->ms) : snprintf(out, 32, "null");
    }
    return k < 0 ? 0 : (size_t)k;
}

/* The message (value false) or a string value. */
static void str_init(str_t *s, hr_log_format_t format, const char *p, size_t n, size_t total,
                     bool value)
{
    s->p = p;
    s->n = n;
    s->total = total;
    s->value = value && format == HR_LOG_TEXT;
    s->quoted = p && (format == HR_LOG_JSON || (s->value && needs_quotes(p, n)));
    /* an unquoted text value holds nothing to escape (and backslashes stay as they are) */
    s->mode = format == HR_LOG_JSON ? ESC_JSON : s->quoted ? ESC_QUOTED : ESC_TEXT;
    s->esc = p ? escape(s->mode, NULL, SIZE_MAX, p, n, NULL) : s->mode == ESC_JSON ? 4 : 1;
    s->room = SIZE_MAX;
}

/* hr_log_format_line, where the message may have been cut by the caller already: msg_total is
 * its length before that (msg_len < msg_total only when msg_len >= cap: the line is cut). */
static size_t format_line(char *dst, size_t cap, hr_log_format_t format, uint64_t wall_ms,
                          hr_log_level_t level, const char *msg, size_t msg_len, size_t msg_total,
                          const hr_log_field_t *f, size_t n)
{
    bool json = format == HR_LOG_JSON;
    char ts[32], head[96];
    hr_rfc3339(wall_ms, ts);
    int hk = json ? snprintf(head, sizeof head, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", ts,
                             level_names[level])
                  : snprintf(head, sizeof head, "%s %-5s ", ts, level_names[level]);
    size_t hlen = hk < 0 ? 0 : (size_t)hk;
    size_t keep = n < MAX_FIELDS ? n : MAX_FIELDS, lost = 0;
    for (size_t i = keep; i < n; i++)
        lost += strlen(f[i].key) + (f[i].type == HR_LOG_STR && f[i].s ? strlen(f[i].s) : 1);
    /* The strings: the message, then each string field's value, in field order. */
    str_t strs[MAX_FIELDS + 1];
    size_t si[MAX_FIELDS]; /* the index in strs of string field i's value */
    size_t nv = 0;
    str_init(&strs[nv++], format, msg, msg_len, msg_total, false);
    size_t fixed = hlen + (json ? 2 : 1); /* "}\n" or "\n" */
    char num[MAX_FIELDS][32];             /* number fields as text */
    size_t numlen[MAX_FIELDS], ffix[MAX_FIELDS];
    for (size_t i = 0; i < keep; i++) {
        numlen[i] = f[i].type == HR_LOG_STR ? 0 : number(&f[i], num[i]);
        ffix[i] = strlen(f[i].key) + (json ? 4 : 2) + numlen[i];
        fixed += ffix[i];
    }
    size_t all = fixed + whole_cost(&strs[0]);
    for (size_t i = 0; i < keep; i++) {
        if (f[i].type != HR_LOG_STR) continue;
        size_t len = f[i].s ? strlen(f[i].s) : 0;
        si[i] = nv;
        str_init(&strs[nv], format, f[i].s, len, len, true);
        all += whole_cost(&strs[nv++]);
    }
    bool cut = all > cap || keep < n;
    if (cut) {
        /* What is not a string, the markers and JSON's "truncated" key must fit: fields that
         * leave too little room go, from the end. */
        size_t extra = json ? TRUNC_KEY_LEN : 0;
        for (;;) {
            size_t need = fixed + extra;
            for (size_t i = 0; i < nv; i++)
                need += cut_cost(&strs[i]);
            if (need <= cap || keep == 0) break;
            keep--;
            fixed -= ffix[keep];
            if (f[keep].type == HR_LOG_STR) {
                lost += strlen(f[keep].key) + strs[nv - 1].total;
                nv--; /* the last string is this field's */
            } else {
                lost += strlen(f[keep].key) + 1;
            }
        }
        str_t *order[MAX_FIELDS + 1];
        for (size_t i = 0; i < nv; i++)
            order[i] = &strs[i];
        plan_cut(order, nv, cap > fixed + extra ? cap - fixed - extra : 0);
    }
    out_t o = {dst, 0, cap - 1}; /* the '\n' always fits */
    put(&o, head, hlen);
    lost += put_str(&o, &strs[0]);
    for (size_t i = 0; i < keep; i++) {
        put_s(&o, json ? ",\"" : " ");
        put_s(&o, f[i].key);
        put_s(&o, json ? "\":" : "=");
        if (f[i].type == HR_LOG_STR)
            lost += put_str(&o, &strs[si[i]]);
        else
            put(&o, num[i], numlen[i]);
    }
    if (json && cut) {
        char t[40];
        int k = snprintf(t, sizeof t, ",\"truncated\":%zu", lost);
        put(&o, t, (size_t)k);
    }
    if (json) put(&o, "}", 1);
    dst[o.len++] = '\n';
    return o.len;
}

size_t hr_log_format_line(char *dst, size_t cap, hr_log_format_t format, uint64_t wall_ms,
                          hr_log_level_t level, const char *msg, size_t msg_len,
                          const hr_log_field_t *f, size_t n)
{
    return format_line(dst, cap, format, wall_ms, level, msg, msg_len, msg_len, f, n);
}

/* ---- Writing ------------------------------------------------------------------------------ */

/* Set once by hr_log_never_block before threads start, read-only afterwards. */
static int out_fd = STDERR_FILENO; /* where lines go */
static int own_fd = -1;            /* out_fd when it is a descriptor of our own */
static bool out_socket;            /* send with MSG_DONTWAIT | MSG_NOSIGNAL */
static bool out_nonblock;          /* a write may not wait */
static _Atomic unsigned long long dropped_total;
static _Atomic unsigned long long dropped_unreported;
static _Atomic bool need_newline; /* a line was cut off mid-way: end it before the next */

void hr_log_reserve_stdio(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF) continue;
        int nfd = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (nfd < 0) return;
        if (nfd != fd) { /* cannot happen: the lowest free descriptor is fd */
            dup2(nfd, fd);
            close(nfd);
        }
    }
}

void hr_log_never_block(void)
{
    if (own_fd >= 0) close(own_fd);
    own_fd = -1;
    out_fd = STDERR_FILENO;
    out_socket = out_nonblock = false;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) < 0) return;
    if (S_ISSOCK(st.st_mode)) {
        out_socket = out_nonblock = true;
        return;
    }
    if (!S_ISFIFO(st.st_mode) && !S_ISCHR(st.st_mode)) return; /* a file: never waits long */
    /* A descriptor of our own onto the same pipe or device, so that O_NONBLOCK does not change
     * the file description a shell or supervisor shares with us. */
    int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
        own_fd = out_fd = fd;
        out_nonblock = true;
    } else if (S_ISFIFO(st.st_mode)) {
        /* no /proc, or no reader left (ENXIO: writes fail at once anyway) */
        int fl = fcntl(STDERR_FILENO, F_GETFL);
        if (fl >= 0 && fcntl(STDERR_FILENO, F_SETFL, fl | O_NONBLOCK) == 0) out_nonblock = true;
    }
}

unsigned long long hr_log_dropped(void)
{
    return atomic_load_explicit(&dropped_total, memory_order_relaxed);
}

static ssize_t out_write(const char *p, size_t n)
{
    ssize_t w;
    do {
        w = out_socket ? send(out_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL) : write(out_fd, p, n);
    } while (w < 0 && errno == EINTR);
    return w;
}

/* Write one whole line. A line nothing of which was taken is dropped; one taken in part (a
 * stream socket) gets at most 10 ms more, then the rest is dropped and the next line starts on
 * a line of its own. Returns true if the line went out whole. */
static bool write_line(const char *p, size_t n)
{
    if (atomic_exchange_explicit(&need_newline, false, memory_order_relaxed) &&
        out_write("\n", 1) != 1)
        atomic_store_explicit(&need_newline, true, memory_order_relaxed);
    size_t done = 0;
    int waited = 0;
    while (done < n) {
        ssize_t w = out_write(p + done, n - done);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && out_nonblock && done > 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
            waited < 10) {
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            poll(&pfd, 1, 1);
            waited++;
            continue;
        }
        break;
    }
    if (done == n) return true;
    if (done > 0) atomic_store_explicit(&need_newline, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&dropped_total, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&dropped_unreported, 1, memory_order_relaxed);
    return false;
}

/* ---- Lines held until the config says how to write them -------------------------------- */

#define HELD_MAX 16 /* past this, lines go out at once, as the defaults say */

/* A line formatted both ways. */
typedef struct {
    hr_log_level_t level; /* written if still enabled when flushed */
    char *text, *json;    /* the line in each format (malloc'd) */
    size_t tlen, jlen;    /* their lengths */
} held_t;

/* Touched only while holding, which is before threads start. */
static bool holding;
static held_t held[HELD_MAX];
static size_t nheld;

void hr_log_hold(void)
{
    holding = true;
}

static void flush_held(void)
{
    if (!holding) return;
    holding = false;
    bool json = atomic_load_explicit(&log_format, memory_order_relaxed) == HR_LOG_JSON;
    for (size_t i = 0; i < nheld; i++) {
        if (hr_log_enabled(held[i].level))
            write_line(json ? held[i].json : held[i].text, json ? held[i].jlen : held[i].tlen);
        free(held[i].text);
        free(held[i].json);
    }
    nheld = 0;
}

/* While holding: keep the line in both formats. Returns false when there is no room left. */
static bool hold(hr_log_level_t level, uint64_t now, const char *msg, size_t msg_len,
                 size_t msg_total, const hr_log_field_t *f, size_t n)
{
    if (nheld == HELD_MAX) return false;
    held_t *h = &held[nheld++];
    char line[HR_LOG_LINE_MAX];
    h->level = level;
    h->tlen =
        format_line(line, sizeof line, HR_LOG_TEXT, now, level, msg, msg_len, msg_total, f, n);
    h->text = hr_xmalloc(h->tlen);
    memcpy(h->text, line, h->tlen);
    h->jlen =
        format_line(line, sizeof line, HR_LOG_JSON, now, level, msg, msg_len, msg_total, f, n);
    h->json = hr_xmalloc(h->jlen);
    memcpy(h->json, line, h->jlen);
    return true;
}

static void emit(hr_log_level_t level, const char *msg, size_t msg_len, size_t msg_total,
                 const hr_log_field_t *f, size_t n)
{
    if (holding && hold(level, hr_wall_ms(), msg, msg_len, msg_total, f, n)) return;
    hr_log_format_t format =
        (hr_log_format_t)atomic_load_explicit(&log_format, memory_order_relaxed);
    uint64_t now = hr_wall_ms();
    char line[HR_LOG_LINE_MAX];
    unsigned long long lost =
        atomic_exchange_explicit(&dropped_unreported, 0, memory_order_relaxed);
    if (lost) {
        static const char what[] = "log lines dropped: stderr did not take them";
        hr_log_field_t nf = HR_KV_UINT("lines", lost);
        size_t len = format_line(line, sizeof line, format, now, HR_LOG_WARN, what, sizeof what - 1,
                                 sizeof what - 1, &nf, 1);
        if (!write_line(line, len)) { /* still full: the count waits for the next line */
            atomic_fetch_sub_explicit(&dropped_total, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&dropped_unreported, lost - 1, memory_order_relaxed);
        }
    }
    size_t len = format_line(line, sizeof line, format, now, level, msg, msg_len, msg_total, f, n);
    write_line(line, len);
}

void hr_log(hr_log_level_t level, const char *fmt, ...)
{
    if (!hr_log_enabled(level)) return;
    char msg[HR_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t total = m < 0 ? 0 : (size_t)m;
    emit(level, msg, total >= sizeof msg ? sizeof msg - 1 : total, total, NULL, 0);
}

void hr_log_fields(hr_log_level_t level, const char *msg, const hr_log_field_t *f, size_t n)
{
    if (!hr_log_enabled(level)) return;
    emit(level, msg, strlen(msg), strlen(msg), f, n);
}
