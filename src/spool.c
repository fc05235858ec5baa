/* The spool: segment files, record framing, append, group commit, recovery scan and segment
 * deletion (see include/hr/spool.h for the format and the promises).
 *
 * Segments live in an array ordered by number, oldest first; the last one is written.
 * ACTION and DONE records (the hot path: one of each per delivered action) are gathered in
 * memory, already framed, and written in one pwritev(2) at the segment's end: before a sync
 * starts, before a read of a gathered record, before a rotation or a direct write, at the
 * next turn of the loop (the idle handle) and once WBUF_MAX bytes are gathered. STATE and
 * COPY records (retries, compaction) are written at once, after what is gathered, so their
 * errors still reach the caller. A failed write of the gathered records fails every commit
 * waiting (write_err), cuts the segment back and starts a new one. Commits wait in a list; a
 * uv_idle handle (which also keeps the next poll from blocking) hands them to a sync job in the
 * threadpool that fdatasyncs every segment written since the last sync (and the folder when a
 * segment was created). Commits requested while a job runs wait for the next job, which starts as
 * soon as the running one ends: that is the group commit.
 *
 * With fsync "always", the next segment is prepared in the threadpool too (prep_*, started
 * by the first append to a segment): zeros to segment_bytes under a temporary name, fdatasynced;
 * rotate() links it into place, or makes a plain file when none is ready. Appends then overwrite
 * zeros, so a sync commits no change of the file's size; every reader takes the zero tail as the
 * end.
 *
 * What must stay true: a segment's descriptor is never closed while a sync job may use it
 * (deletion and close wait for the job), the loop never touches a file a preparation may be
 * writing (it gets the file only from after_prep; close waits for the job), and a failed
 * write never leaves a partial record where the next append goes (the segment is cut back,
 * or abandoned for a new one). */
#include "hr/spool.h"

#include <dirent.h>
#include <pthread.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hr/defaults.h"
#include "hr/log.h"

#define DEF_SEGMENT_BYTES (16u << 20)  /* not a config key: tests set smaller segments */
#define WBUF_MAX          (256u << 10) /* gathered bytes that are written without waiting */
#define PREP_PREFIX       "prep-" /* temporary names of prepared segments: prep-<pid>-<n>.tmp */

/* ---- CRC32C ----------------------------------------------------------------------------- */

static uint32_t crc_table[8][256]; /* built once per process (crc_once) */
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = crc_table[0][i];
        for (int t = 1; t < 8; t++) {
            c = crc_table[0][c & 0xff] ^ (c >> 8);
            crc_table[t][i] = c;
        }
    }
}

/* Slicing-by-8 in software. */
static uint32_t crc32c_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    while (n >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][p[4]] ^
              crc_table[2][p[5]] ^ crc_table[1][p[6]] ^ crc_table[0][p[7]];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* The SSE4.2 crc32 instruction computes CRC32C. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t n)
{
    uint64_t c = ~crc;
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8;
        n -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (n--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}

uint32_t hr_crc32c(uint32_t crc, const void *p, size_t n)
{
    static int hw = -1;
    if (hw < 0) hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    return hw ? crc32c_hw(crc, p, n) : crc32c_sw(crc, p, n);
}
#else
uint32_t hr_crc32c(uint32_t crc, const void *p, size_t n)
{
    return crc32c_sw(crc, p, n);
}
#endif

/* ---- Little-endian helpers -------------------------------------------------------------- */

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void buf_u8(hr_buf_t *b, uint8_t v)
{
    hr_buf_append(b, &v, 1);
}

static void buf_u16(hr_buf_t *b, uint16_t v)
{
    unsigned char p[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    hr_buf_append(b, p, 2);
}

static void buf_u32(hr_buf_t *b, uint32_t v)
{
    unsigned char p[4];
    put32(p, v);
    hr_buf_append(b, p, 4);
}

static void buf_u64(hr_buf_t *b, uint64_t v)
{
    buf_u32(b, (uint32_t)v);
    buf_u32(b, (uint32_t)(v >> 32));
}

/* A string as u32 length + bytes; NULL as length 0xffffffff. */
static void buf_str(hr_buf_t *b, const char *s, size_t n)
{
    if (!s) {
        buf_u32(b, UINT32_MAX);
        return;
    }
    buf_u32(b, (uint32_t)n);
    hr_buf_append(b, s, n);
}

static void buf_cstr(hr_buf_t *b, const char *s)
{
    buf_str(b, s, s ? strlen(s) : 0);
}

/* A bounds-checked reader over a payload. */
typedef struct {
    const unsigned char *p;
    size_t n;
    size_t off;
    bool bad;
} rd_t;

static bool rd_need(rd_t *r, size_t k)
{
    if (r->bad || r->n - r->off < k) {
        r->bad = true;
        return false;
    }
    return true;
}

static uint8_t rd_u8(rd_t *r)
{
    return rd_need(r, 1) ? r->p[r->off++] : 0;
}

static uint16_t rd_u16(rd_t *r)
{
    if (!rd_need(r, 2)) return 0;
    uint16_t v = (uint16_t)(r->p[r->off] | r->p[r->off + 1] << 8);
    r->off += 2;
    return v;
}

static uint32_t rd_u32(rd_t *r)
{
    if (!rd_need(r, 4)) return 0;
    uint32_t v = get32(r->p + r->off);
    r->off += 4;
    return v;
}

static uint64_t rd_u64(rd_t *r)
{
    uint64_t lo = rd_u32(r);
    return lo | (uint64_t)rd_u32(r) << 32;
}

/* The error string (e, elen) of a record, copied into errbuf (cut to fit); "" without a
 * buffer. */
static const char *copy_error(const char *e, size_t elen, char *errbuf, size_t errlen)
{
    if (!errbuf || !errlen) return "";
    if (elen >= errlen) elen = errlen - 1;
    if (e) memcpy(errbuf, e, elen);
    errbuf[e ? elen : 0] = '\0';
    return errbuf;
}

/* A string in place: sets *s (NULL for a NULL string) and returns its length. */
static size_t rd_str(rd_t *r, const char **s)
{
    uint32_t n = rd_u32(r);
    *s = NULL;
    if (n == UINT32_MAX || r->bad) return 0;
    if (!rd_need(r, n)) return 0;
    *s = (const char *)r->p + r->off;
    r->off += n;
    return n;
}

static char *rd_strdup(rd_t *r)
{
    const char *s;
    size_t n = rd_str(r, &s);
    return s ? hr_xstrndup(s, n) : NULL;
}

/* ---- Record payloads -------------------------------------------------------------------- */

/* ACTION payload: u64 id, u64 accepted_ms, u32 max_attempts, u32 timeout_ms, u8 kind,
 * u8 body_is_json, u16 nheaders, str name, str store, str event_id, str event_type,
 * str method, str url, str file_path, nheaders x (str name, str value), str body. The
 * fields a recovery needs come first, so it decodes only those. */
void hr_spool_encode_action(hr_buf_t *out, const hr_action_t *a, uint64_t id)
{
    buf_u64(out, id);
    buf_u64(out, a->accepted_ms);
    buf_u32(out, a->max_attempts);
    buf_u32(out, a->timeout_ms);
    buf_u8(out, (uint8_t)a->kind);
    buf_u8(out, a->body_is_json ? 1 : 0);
    buf_u16(out, (uint16_t)(a->nheaders > UINT16_MAX ? UINT16_MAX : a->nheaders));
    buf_cstr(out, a->name);
    buf_cstr(out, a->store);
    buf_str(out, a->event_id, strnlen(a->event_id, sizeof a->event_id));
    buf_cstr(out, a->event_type);
    buf_cstr(out, a->method);
    buf_cstr(out, a->url);
    buf_cstr(out, a->file_path);
    for (size_t i = 0; i < a->nheaders && i < UINT16_MAX; i++) {
        buf_cstr(out, a->headers[i].name);
        buf_cstr(out, a->headers[i].value);
    }
    buf_str(out, a->body ? a->body : "", a->body ? a->body_len : 0);
}

int hr_spool_action_meta(const char *p, size_t n, hr_spool_action_meta_t *m)
{
    rd_t r = {(const unsigned char *)p, n, 0, false};
    m->id = rd_u64(&r);
    m->accepted_ms = rd_u64(&r);
    m->max_attempts = rd_u32(&r);
    (void)rd_u32(&r);
    m->kind = (hr_action_kind_t)rd_u8(&r);
    (void)rd_u8(&r);
    (void)rd_u16(&r);
    m->name_len = rd_str(&r, &m->name);
    m->store_len = rd_str(&r, &m->store);
    m->event_id_len = rd_str(&r, &m->event_id);
    if (r.bad || (m->kind != HR_ACTION_FORWARD && m->kind != HR_ACTION_WRITE)) return -1;
    return 0;
}

hr_action_t *hr_spool_decode_action(const char *p, size_t n, uint64_t *id)
{
    rd_t r = {(const unsigned char *)p, n, 0, false};
    uint64_t aid = rd_u64(&r);
    uint64_t accepted = rd_u64(&r);
    uint32_t max_attempts = rd_u32(&r);
    uint32_t timeout = rd_u32(&r);
    uint8_t kind = rd_u8(&r);
    uint8_t is_json = rd_u8(&r);
    uint16_t nh = rd_u16(&r);
    if (r.bad || (kind != HR_ACTION_FORWARD && kind != HR_ACTION_WRITE)) return NULL;
    hr_action_t *a = hr_action_new((hr_action_kind_t)kind);
    a->accepted_ms = accepted;
    a->max_attempts = max_attempts;
    a->timeout_ms = timeout;
    a->body_is_json = is_json != 0;
    a->name = rd_strdup(&r);
    a->store = rd_strdup(&r);
    const char *eid;
    size_t eid_len = rd_str(&r, &eid);
    if (eid) {
        if (eid_len >= sizeof a->event_id) eid_len = sizeof a->event_id - 1;
        memcpy(a->event_id, eid, eid_len);
        a->event_id[eid_len] = '\0';
    }
    a->event_type = rd_strdup(&r);
    a->method = rd_strdup(&r);
    a->url = rd_strdup(&r);
    a->file_path = rd_strdup(&r);
    for (uint16_t i = 0; i < nh && !r.bad; i++) {
        char *hn = rd_strdup(&r), *hv = rd_strdup(&r);
        if (hn && hv) hr_action_add_header(a, hn, hv);
        free(hn);
        free(hv);
    }
    const char *body;
    size_t blen = rd_str(&r, &body);
    if (r.bad) {
        hr_action_free(a);
        return NULL;
    }
    a->body = hr_xstrndup(body ? body : "", blen);
    a->body_len = blen;
    if (id) *id = aid;
    return a;
}

/* STATE payload: u64 id, u64 prev, u32 attempt, i32 status, u64 at_ms, u64 next_due_ms,
 * str error. */
void hr_spool_encode_state(hr_buf_t *out, const hr_spool_state_t *s)
{
    buf_u64(out, s->id);
    buf_u64(out, s->prev);
    buf_u32(out, s->attempt);
    buf_u32(out, (uint32_t)s->status);
    buf_u64(out, s->at_ms);
    buf_u64(out, s->next_due_ms);
    buf_cstr(out, s->error ? s->error : "");
}

int hr_spool_decode_state(const char *p, size_t n, hr_spool_state_t *s, char *errbuf, size_t errlen)
{
    rd_t r = {(const unsigned char *)p, n, 0, false};
    s->id = rd_u64(&r);
    s->prev = rd_u64(&r);
    s->attempt = rd_u32(&r);
    s->status = (int32_t)rd_u32(&r);
    s->at_ms = rd_u64(&r);
    s->next_due_ms = rd_u64(&r);
    const char *e;
    size_t elen = rd_str(&r, &e);
    if (r.bad) return -1;
    s->error = copy_error(e, elen, errbuf, errlen);
    return 0;
}

/* COPY payload: see hr_spool_copy_t. */
void hr_spool_encode_copy(hr_buf_t *out, const hr_spool_copy_t *c, const hr_spool_state_t *log,
                          size_t nlog)
{
    buf_u64(out, c->id);
    buf_u32(out, c->attempts);
    buf_u32(out, (uint32_t)c->last_status);
    buf_u64(out, c->next_due_ms);
    buf_u32(out, (uint32_t)c->action_len);
    hr_buf_append(out, c->action, c->action_len);
    buf_u32(out, (uint32_t)nlog);
    for (size_t i = 0; i < nlog; i++) {
        buf_u32(out, log[i].attempt);
        buf_u32(out, (uint32_t)log[i].status);
        buf_u64(out, log[i].at_ms);
        buf_cstr(out, log[i].error ? log[i].error : "");
    }
}

int hr_spool_decode_copy(const char *p, size_t n, hr_spool_copy_t *c)
{
    rd_t r = {(const unsigned char *)p, n, 0, false};
    c->id = rd_u64(&r);
    c->attempts = rd_u32(&r);
    c->last_status = (int32_t)rd_u32(&r);
    c->next_due_ms = rd_u64(&r);
    uint32_t alen = rd_u32(&r);
    if (!rd_need(&r, alen)) return -1;
    c->action = p + r.off;
    c->action_len = alen;
    r.off += alen;
    c->nlog = rd_u32(&r);
    if (r.bad) return -1;
    c->log = p + r.off;
    c->log_len = n - r.off;
    hr_spool_action_meta_t m;
    if (hr_spool_action_meta(c->action, c->action_len, &m) < 0 || m.id != c->id) return -1;
    return 0;
}

int hr_spool_copy_log_next(hr_spool_copy_t *c, hr_spool_state_t *s, char *errbuf, size_t errlen)
{
    if (c->nlog == 0) return 0;
    rd_t r = {(const unsigned char *)c->log, c->log_len, 0, false};
    s->id = c->id;
    s->prev = 0;
    s->attempt = rd_u32(&r);
    s->status = (int32_t)rd_u32(&r);
    s->at_ms = rd_u64(&r);
    s->next_due_ms = 0;
    const char *e;
    size_t elen = rd_str(&r, &e);
    if (r.bad) return -1;
    s->error = copy_error(e, elen, errbuf, errlen);
    c->log += r.off;
    c->log_len -= r.off;
    c->nlog--;
    return 1;
}

/* ---- Framing and parsing ---------------------------------------------------------------- */

static void make_header(unsigned char h[HR_SPOOL_HDR], int type, const void *payload, size_t len)
{
    put32(h, HR_SPOOL_MAGIC);
    put32(h + 4, (uint32_t)len);
    h[8] = (unsigned char)type;
    h[9] = h[10] = h[11] = 0;
    uint32_t crc = hr_crc32c(0, h + 4, 8);
    crc = hr_crc32c(crc, payload, len);
    put32(h + 12, crc);
}

void hr_spool_frame(hr_buf_t *out, int type, const void *payload, size_t len)
{
    unsigned char h[HR_SPOOL_HDR];
    make_header(h, type, payload, len);
    hr_buf_append(out, h, sizeof h);
    hr_buf_append(out, payload, len);
}

/* True if a whole, valid record starts at p[off] within n bytes; sets *len to its payload
 * length. */
static bool record_ok(const unsigned char *p, size_t n, size_t off, uint32_t *len)
{
    if (n - off < HR_SPOOL_HDR || get32(p + off) != HR_SPOOL_MAGIC) return false;
    uint32_t l = get32(p + off + 4);
    if (l > n - off - HR_SPOOL_HDR) return false;
    uint32_t crc = hr_crc32c(0, p + off + 4, 8);
    crc = hr_crc32c(crc, p + off + HR_SPOOL_HDR, l);
    if (crc != get32(p + off + 12)) return false;
    *len = l;
    return true;
}

/* Looks like the start of a record header at p[i] (the bytes there match the magic and
 * the reserved bytes 9..11 are 0, as far as the segment goes). *next gets where the record
 * following it would start (SIZE_MAX if the length field is cut off). */
static bool header_like(const unsigned char *p, size_t n, size_t i, size_t *next)
{
    static const unsigned char magic[4] = {'H', 'R', 'S', '1'};
    size_t avail = n - i;
    if (memcmp(p + i, magic, avail < 4 ? avail : 4) != 0) return false;
    for (size_t j = 9; j < 12 && j < avail; j++)
        if (p[i + j]) return false;
    *next = avail >= 8 ? i + HR_SPOOL_HDR + (size_t)get32(p + i + 4) : SIZE_MAX;
    return true;
}

/* The records that started inside the skipped bytes [s, e) of p[0..n). Exact when the
 * length chain from s lands on e (or runs past the end of the segment: a torn tail);
 * otherwise a lower bound (*exact false): the framing carries no record count, so records
 * whose header was destroyed (zeroed) cannot be counted. The bound is the records of the
 * chain from s and every header-like position after it (at least 1: the spool writes
 * nothing but records). Where the chain breaks is not counted: the length that led there
 * may be the damaged field itself. z is where the zero tail starts (n if there is none): a
 * range that ends there is a torn tail. */
static uint64_t lost_records(const unsigned char *p, size_t n, size_t z, size_t s, size_t e,
                             bool *exact)
{
    size_t i = s, next;
    uint64_t k = 0;
    while (i < e && header_like(p, n, i, &next)) {
        k++;
        if (next == e || (e == z && next > z)) {
            *exact = true;
            return k;
        }
        if (next > e) break; /* runs into the record after the gap: not a real length */
        i = next;
    }
    *exact = false;
    for (size_t j = i + 1; j < e; j++)
        if (p[j] == 'H' && header_like(p, n, j, &next)) k++;
    return k ? k : 1;
}

/* Where the zero tail of p[0..n) starts: after its last byte that is not 0 (n if the last
 * byte is not 0). A prepared segment is zeros past its last record; so is a file whose end
 * never reached the disk. */
static size_t zero_tail(const unsigned char *p, size_t n)
{
    size_t z = n;
    while (z && (z & 7)) {
        if (p[z - 1]) return z;
        z--;
    }
    while (z >= 8) {
        uint64_t w;
        memcpy(&w, p + z - 8, 8);
        if (w) break;
        z -= 8;
    }
    while (z && !p[z - 1])
        z--;
    return z;
}

/* hr_spool_parse_gaps; *used (may be NULL) gets where the records end: the end of the last
 * valid record or skipped range, the zero tail after it not counted. */
static uint64_t parse(const char *data, size_t n, uint32_t seg, hr_spool_rec_cb cb, void *arg,
                      hr_spool_gap_cb gap, void *gap_arg, hr_spool_gaps_t *tot, size_t *used)
{
    const unsigned char *p = (const unsigned char *)data;
    size_t off = 0, gap_at = SIZE_MAX, z = zero_tail(p, n);
    hr_spool_gaps_t t = {0};
    for (;;) {
        uint32_t len;
        bool ok = off < n && record_ok(p, n, off, &len);
        bool end = !ok && off >= z; /* the rest is zeros (a valid record may end in zeros) */
        if ((ok || end) && gap_at != SIZE_MAX) { /* a skipped range ends here */
            hr_spool_gap_t g = {.seg = seg, .start = gap_at, .end = off};
            g.records = lost_records(p, n, z, gap_at, off, &g.exact);
            t.ranges++;
            t.bytes += g.end - g.start;
            t.records += g.records;
            if (gap) gap(gap_arg, &g);
            gap_at = SIZE_MAX;
        }
        if (end) break;
        if (ok) {
            cb(arg, p[off + 8], data + off + HR_SPOOL_HDR, len, (uint64_t)seg << 32 | off);
            off += HR_SPOOL_HDR + len;
            continue;
        }
        if (gap_at == SIZE_MAX) gap_at = off;
        /* A record with a good frame but a bad checksum, followed by a record (or the end):
         * skip just that record. */
        if (n - off >= HR_SPOOL_HDR && get32(p + off) == HR_SPOOL_MAGIC) {
            uint32_t l = get32(p + off + 4);
            size_t next = off + HR_SPOOL_HDR + (size_t)l;
            uint32_t l2;
            if (l <= n - off - HR_SPOOL_HDR && (next >= z || record_ok(p, n, next, &l2))) {
                off = next;
                continue;
            }
        }
        /* Otherwise look for the next place where a valid record starts. Candidates whose
         * reserved bytes are not 0 are passed over before any checksum is computed
         * (record_ok also passes over lengths that run past the end before it). */
        size_t at = off + 1;
        for (; at < z && at + HR_SPOOL_HDR <= n; at++) {
            if (p[at] == 'H' && !p[at + 9] && !p[at + 10] && !p[at + 11] &&
                record_ok(p, n, at, &len))
                break;
        }
        if (at >= z || at + HR_SPOOL_HDR > n) at = z; /* none: the range ends at the zeros */
        off = at;
    }
    if (tot) {
        tot->ranges += t.ranges;
        tot->bytes += t.bytes;
        tot->records += t.records;
    }
    if (used) *used = off;
    return t.records;
}

uint64_t hr_spool_parse_gaps(const char *data, size_t n, uint32_t seg, hr_spool_rec_cb cb,
                             void *arg, hr_spool_gap_cb gap, void *gap_arg, hr_spool_gaps_t *tot)
{
    return parse(data, n, seg, cb, arg, gap, gap_arg, tot, NULL);
}

uint64_t hr_spool_parse(const char *data, size_t n, uint32_t seg, hr_spool_rec_cb cb, void *arg,
                        uint64_t *bad_bytes)
{
    hr_spool_gaps_t t = {0};
    uint64_t lost = hr_spool_parse_gaps(data, n, seg, cb, arg, NULL, NULL, &t);
    if (bad_bytes) *bad_bytes += t.bytes;
    return lost;
}

int hr_spool_gap_format(char *out, size_t cap, const hr_spool_gap_t *g)
{
    if (g->empty)
        return snprintf(out, cap, "segment seg-%016llx.hrs: empty (0 bytes, 0 records)",
                        (unsigned long long)g->seg);
    return snprintf(out, cap,
                    "segment seg-%016llx.hrs: bytes %llu-%llu skipped (%llu bytes, %s%llu "
                    "records lost)",
                    (unsigned long long)g->seg, (unsigned long long)g->start,
                    (unsigned long long)(g->end - 1), (unsigned long long)(g->end - g->start),
                    g->exact ? "" : "at least ", (unsigned long long)g->records);
}

/* ---- Segments --------------------------------------------------------------------------- */

typedef struct {
    uint32_t seq;     /* its number */
    int fd;           /* O_RDWR descriptor */
    uint64_t size;    /* bytes written (= the next append's offset) */
    uint64_t file;    /* bytes of the file: more than size for a prepared one (its zero tail) */
    uint64_t refs;    /* live records the caller holds here */
    uint64_t actions; /* ACTION and COPY records in it (what refs is compared to) */
    bool dirty;       /* written since the last sync started */
} seg_t;

/* A commit waiting for a sync. */
typedef struct commit {
    struct commit *next;
    void (*cb)(void *arg, int status);
    void *arg;
    bool force; /* needs an fdatasync whatever the fsync mode (hr_spool_sync) */
} commit_t;

/* One sync job in the threadpool. */
typedef struct {
    uv_work_t work;
    hr_spool_t *sp;
    int *fds;      /* descriptors to fdatasync */
    size_t nfds;   /* how many */
    int dirfd;     /* the folder, to fsync after a segment was created, or -1 */
    int result;    /* 0 or -errno */
    commit_t *cbs; /* commits this job completes */
} sync_job_t;

/* The job that prepares the next segment in the threadpool: a file under a temporary name,
 * zeros to segment_bytes, fdatasynced. rotate() renames it to its segment name. */
typedef struct {
    uv_work_t work;
    hr_spool_t *sp;
    char *path;     /* the temporary name */
    uint64_t bytes; /* its size */
    int fd;         /* the file, or -1 */
    int result;     /* 0 or -errno */
} prep_job_t;

struct hr_spool {
    uv_loop_t *loop;      /* the loop */
    hr_spool_opts_t opts; /* with defaults; dir owned */
    int dirfd;            /* the folder, O_RDONLY */
    seg_t *segs;          /* oldest first; the last is written */
    size_t nsegs;         /* segments */
    size_t segs_cap;      /* slots */
    bool broken;          /* the current segment had a failed write or sync: start a new one */
    bool prep_failing;    /* the last preparation failed (logged once until one succeeds) */
    bool prep_wanted;     /* prepare the next segment at the next append */
    bool dir_dirty;       /* a segment was created since the last sync */
    commit_t *pending;    /* commits not yet in a sync, oldest first */
    commit_t *pending_tail;
    sync_job_t *job;          /* the sync running, or NULL */
    uv_idle_t idle;           /* runs pending commits at the end of the loop iteration */
    uv_timer_t timer;         /* HR_FSYNC_INTERVAL syncs */
    hr_spool_stats_t st;      /* counters */
    hr_buf_t wbuf;            /* gathered records (framed) for the end of the last segment */
    uint64_t wbuf_off;        /* where wbuf goes in the last segment (its written size) */
    uint64_t wbuf_actions;    /* ACTION records in wbuf */
    uint64_t wbuf_dones;      /* DONE records in wbuf */
    int write_err;            /* a gathered write failed: the commits waiting fail with it */
    prep_job_t *prep_job;     /* the preparation running, or NULL */
    int prep_fd;              /* a prepared segment waiting for the next rotation, or -1 */
    char *prep_path;          /* its temporary name */
    uint64_t prep_bytes;      /* its size */
    unsigned prep_seq;        /* numbers the temporary names */
    bool closing;             /* hr_spool_close was called */
    int open_handles;         /* idle + timer */
    void (*close_cb)(void *); /* after close */
    void *close_arg;
};

static seg_t *seg_find(hr_spool_t *sp, uint32_t seq)
{
    size_t lo = 0, hi = sp->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (sp->segs[mid].seq == seq) return &sp->segs[mid];
        if (sp->segs[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static char *seg_path(const char *dir, uint32_t seq)
{
    return hr_xasprintf("%s/seg-%016llx.hrs", dir, (unsigned long long)seq);
}

static void seg_push(hr_spool_t *sp, seg_t s)
{
    if (sp->nsegs == sp->segs_cap) {
        sp->segs_cap = sp->segs_cap ? sp->segs_cap * 2 : 16;
        sp->segs = hr_xrealloc(sp->segs, sp->segs_cap * sizeof *sp->segs);
    }
    sp->segs[sp->nsegs++] = s;
}

/* Write the iovecs at offset pos of fd, continuing short writes. Returns 0 or a negative
 * errno. */
static int write_at(int fd, struct iovec *v, int iovcnt, uint64_t pos)
{
    while (iovcnt > 0) {
        ssize_t k = pwritev(fd, v, iovcnt, (off_t)pos);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k < 0 ? -errno : -EIO;
        pos += (uint64_t)k;
        hr_iov_advance(&v, &iovcnt, (size_t)k);
    }
    return 0;
}

/* Cut the segment being written back to off after a failed write, so that no partial record
 * stays where the next append goes: truncated there (a prepared segment loses its zero tail
 * and grows from there on). False if that failed too. */
static bool cut_back(hr_spool_t *sp, seg_t *cur, uint64_t off)
{
    if (ftruncate(cur->fd, (off_t)off) < 0) return false;
    if (cur->file > off) {
        sp->st.disk_bytes -= cur->file - off;
        cur->file = off;
    }
    return true;
}

/* Write the gathered records at the end of the last segment, in one pwritev. On failure the
 * segment is cut back to where they start (and abandoned if that fails too), and write_err
 * makes the commits waiting fail: their records may be among the lost ones. Returns 0 or a
 * negative errno. */
static int wbuf_flush(hr_spool_t *sp)
{
    if (sp->wbuf.len == 0) return 0;
    seg_t *cur = &sp->segs[sp->nsegs - 1];
    struct iovec iov = {sp->wbuf.data, sp->wbuf.len};
    int rc = write_at(cur->fd, &iov, 1, sp->wbuf_off);
    size_t n = sp->wbuf.len;
    uint64_t actions = sp->wbuf_actions, dones = sp->wbuf_dones;
    hr_buf_reset(&sp->wbuf);
    sp->wbuf_actions = sp->wbuf_dones = 0;
    if (rc == 0) {
        cur->dirty = true;
        if (sp->opts.fsync == HR_FSYNC_NEVER) sp->st.failing = false; /* no sync will tell */
        return 0;
    }
    sp->st.write_errors++;
    sp->st.failing = true;
    sp->write_err = rc;
    if (!cut_back(sp, cur, sp->wbuf_off)) sp->broken = true;
    cur->size = sp->wbuf_off;
    cur->actions -= actions;
    sp->st.bytes -= n;
    hr_log_error("spool: write to segment %u failed: %s", cur->seq, strerror(-rc));
    if (dones)
        hr_log_warn("spool: %llu done mark(s) not written; those actions may be delivered "
                    "again after a restart",
                    (unsigned long long)dones);
    return rc;
}

/* Complete every commit waiting with write_err, if a gathered write failed. */
static void fail_waiting(hr_spool_t *sp);

static void prep_start(hr_spool_t *sp);

/* Drop the prepared segment waiting for a rotation, if any (its file too). */
static void prep_drop(hr_spool_t *sp)
{
    if (sp->prep_fd < 0) return;
    close(sp->prep_fd);
    unlink(sp->prep_path);
    free(sp->prep_path);
    sp->prep_path = NULL;
    sp->prep_fd = -1;
    sp->st.disk_bytes -= sp->prep_bytes;
    sp->st.next_prepared = false;
}

/* The prepared segment under the name path, or -1 if there is none or it cannot be renamed
 * (then it is dropped). *bytes gets its size. link + unlink: as open(O_EXCL), a file of that
 * name is never replaced. */
static int prep_take(hr_spool_t *sp, const char *path, uint64_t *bytes)
{
    if (sp->prep_fd < 0) return -1;
    if (link(sp->prep_path, path) < 0) {
        hr_log_error("spool: cannot rename the prepared segment %s to %s: %s", sp->prep_path, path,
                     strerror(errno));
        prep_drop(sp);
        return -1;
    }
    unlink(sp->prep_path); /* if this fails, the next start deletes the name */
    int fd = sp->prep_fd;
    *bytes = sp->prep_bytes;
    free(sp->prep_path);
    sp->prep_path = NULL;
    sp->prep_fd = -1;
    sp->st.next_prepared = false;
    sp->st.prepared++;
    return fd;
}

/* Start a new segment for appends (what is gathered is written to the old one first): the
 * prepared one if it is ready (renamed to its segment name), else a new empty file that grows
 * by appends; the first append to it starts the preparation of the next one. Returns 0 or a
 * negative errno. */
static int rotate(hr_spool_t *sp)
{
    wbuf_flush(sp);
    uint32_t seq = sp->nsegs ? sp->segs[sp->nsegs - 1].seq + 1 : 1;
    char *path = seg_path(sp->opts.dir, seq);
    uint64_t bytes = 0;
    int fd = prep_take(sp, path, &bytes);
    if (fd < 0) {
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            int rc = -errno;
            hr_log_error("spool: cannot create %s: %s", path, strerror(errno));
            free(path);
            return rc;
        }
    }
    free(path);
    seg_push(sp, (seg_t){.seq = seq, .fd = fd, .file = bytes});
    sp->st.segments++;
    sp->dir_dirty = true; /* the next sync makes the new name durable */
    sp->broken = false;
    /* At the first append (an idle spool prepares nothing), and only where every commit is a
     * sync: with fsync "interval" or "never" the zeros would only double what is written. */
    sp->prep_wanted = sp->opts.fsync == HR_FSYNC_ALWAYS;
    return 0;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The segment numbers in dir, sorted. Returns the count (*out owned by the caller), or a
 * negative errno. */
static long list_segments(const char *dir, uint32_t **out)
{
    DIR *d = opendir(dir);
    if (!d) return -errno;
    uint32_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        unsigned long long seq;
        char tail[8];
        if (sscanf(e->d_name, "seg-%16llx.%7s", &seq, tail) != 2 || strcmp(tail, "hrs") != 0 ||
            strlen(e->d_name) != 24 || seq == 0 || seq > UINT32_MAX)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = hr_xrealloc(v, cap * sizeof *v);
        }
        v[n++] = (uint32_t)seq;
    }
    closedir(d);
    if (n) qsort(v, n, sizeof *v, cmp_u32);
    *out = v;
    return (long)n;
}

/* Read up to size bytes of fd from offset 0 into a new buffer. Returns the bytes read or a
 * negative errno. */
static long long read_all(int fd, uint64_t size, char **out)
{
    char *b = hr_xmalloc(size ? size : 1);
    uint64_t got = 0;
    while (got < size) {
        ssize_t k =
            pread(fd, b + got, size - got > (1u << 30) ? (1u << 30) : size - got, (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            int rc = -errno;
            free(b);
            return rc;
        }
        if (k == 0) break;
        got += (uint64_t)k;
    }
    *out = b;
    return (long long)got;
}

/* The caller's record callback, counting the ACTION and COPY records of a segment. */
typedef struct {
    hr_spool_rec_cb cb;
    void *arg;
    uint64_t actions;
} scan_ctx_t;

static void on_scan_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    scan_ctx_t *sc = arg;
    if (type == HR_REC_ACTION || type == HR_REC_COPY) sc->actions++;
    sc->cb(sc->arg, type, p, n, loc);
}

/* Scan one segment file; *size gets the bytes its records take (its zero tail not counted),
 * *file the file's size, *actions (may be NULL) its ACTION and COPY records, *gaps its
 * skipped ranges (each also passed to gap, which may be NULL; so is an empty segment: one
 * without a byte that is not 0). Returns 0 or a negative errno. */
static int scan_segment(int fd, uint32_t seq, hr_spool_rec_cb cb, void *arg, uint64_t *size,
                        uint64_t *file, hr_spool_gaps_t *gaps, uint64_t *actions,
                        hr_spool_gap_cb gap, void *gap_arg)
{
    struct stat st;
    if (fstat(fd, &st) < 0) return -errno;
    char *data = NULL;
    long long n = read_all(fd, (uint64_t)st.st_size, &data);
    if (n < 0) return (int)n;
    scan_ctx_t sc = {cb, arg, 0};
    if (zero_tail((const unsigned char *)data, (size_t)n) == 0) {
        hr_spool_gap_t g = {.seg = seq, .empty = true, .exact = true};
        gaps->empty++;
        if (gap) gap(gap_arg, &g);
    }
    size_t used = 0;
    parse(data, (size_t)n, seq, on_scan_rec, &sc, gap, gap_arg, gaps, &used);
    if (actions) *actions = sc.actions;
    *size = used;
    *file = (uint64_t)n;
    free(data);
    return 0;
}

int hr_spool_scan_dir(const char *dir, hr_spool_rec_cb cb, void *arg, hr_spool_stats_t *st,
                      char *err, size_t errlen)
{
    return hr_spool_scan_dir_gaps(dir, cb, arg, NULL, NULL, st, err, errlen);
}

int hr_spool_scan_dir_gaps(const char *dir, hr_spool_rec_cb cb, void *arg, hr_spool_gap_cb gap,
                           void *gap_arg, hr_spool_stats_t *st, char *err, size_t errlen)
{
    hr_spool_gaps_t gaps = {0};
    hr_spool_stats_t local = {0};
    uint32_t *seqs = NULL;
    long n = list_segments(dir, &seqs);
    if (n == -ENOENT) n = 0;
    if (n < 0) {
        snprintf(err, errlen, "spool %s: %s", dir, strerror((int)-n));
        return (int)n;
    }
    int rc = 0;
    for (long i = 0; i < n; i++) {
        char *path = seg_path(dir, seqs[i]);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) { /* deleted by a router meanwhile */
                free(path);
                continue;
            }
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(errno));
            free(path);
            break;
        }
        uint64_t size = 0, file = 0;
        rc = scan_segment(fd, seqs[i], cb, arg, &size, &file, &gaps, NULL, gap, gap_arg);
        close(fd);
        if (rc < 0) {
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
            free(path);
            break;
        }
        free(path);
        local.bytes += size;
        local.disk_bytes += file;
        local.segments++;
    }
    free(seqs);
    local.corrupt = gaps.records;
    local.corrupt_bytes = gaps.bytes;
    local.corrupt_ranges = gaps.ranges;
    local.empty_segments = gaps.empty;
    if (st) *st = local;
    return rc;
}

/* ---- Sync jobs -------------------------------------------------------------------------- */

static void on_idle(uv_idle_t *h);
static void gc_now(hr_spool_t *sp);
static void finish_close(hr_spool_t *sp);
static void complete_commits(hr_spool_t *sp, commit_t *c, int status);

static void fail_waiting(hr_spool_t *sp)
{
    if (!sp->write_err) return;
    int rc = sp->write_err;
    sp->write_err = 0;
    commit_t *c = sp->pending;
    sp->pending = sp->pending_tail = NULL;
    complete_commits(sp, c, rc);
}

static void sync_work(uv_work_t *w)
{
    sync_job_t *j = w->data;
    j->result = 0;
    for (size_t i = 0; i < j->nfds; i++) {
        if (fdatasync(j->fds[i]) < 0 && j->result == 0) j->result = -errno;
    }
    if (j->dirfd >= 0 && fsync(j->dirfd) < 0 && j->result == 0) j->result = -errno;
}

static void complete_commits(hr_spool_t *sp, commit_t *c, int status)
{
    while (c) {
        commit_t *next = c->next;
        sp->st.commits++;
        c->cb(c->arg, status);
        free(c);
        c = next;
    }
}

/* Collect what the next sync must cover and clear the dirty marks. */
static sync_job_t *job_new(hr_spool_t *sp)
{
    sync_job_t *j = hr_xcalloc(1, sizeof *j);
    j->sp = sp;
    j->work.data = j;
    j->fds = hr_xmalloc((sp->nsegs ? sp->nsegs : 1) * sizeof *j->fds);
    for (size_t i = 0; i < sp->nsegs; i++) {
        if (!sp->segs[i].dirty) continue;
        j->fds[j->nfds++] = sp->segs[i].fd;
        sp->segs[i].dirty = false;
    }
    j->dirfd = sp->dir_dirty ? sp->dirfd : -1;
    sp->dir_dirty = false;
    return j;
}

static void start_sync(hr_spool_t *sp, commit_t *cbs);

static bool has_forced(const commit_t *c)
{
    for (; c; c = c->next)
        if (c->force) return true;
    return false;
}

static void after_sync(uv_work_t *w, int status)
{
    sync_job_t *j = w->data;
    hr_spool_t *sp = j->sp;
    int rc = status < 0 ? status : j->result;
    sp->job = NULL;
    sp->st.syncs++;
    sp->st.failing = rc < 0;
    if (rc < 0) {
        sp->st.write_errors++;
        sp->broken = true; /* after a failed fsync the page cache is not to be trusted */
        hr_log_error("spool: fsync failed: %s; new webhooks get 503 until a sync succeeds",
                     strerror(-rc));
    }
    commit_t *cbs = j->cbs;
    free(j->fds);
    free(j);
    complete_commits(sp, cbs, rc);
    if (sp->pending && (sp->opts.fsync == HR_FSYNC_ALWAYS || has_forced(sp->pending))) {
        commit_t *next = sp->pending;
        sp->pending = sp->pending_tail = NULL;
        start_sync(sp, next);
    }
    gc_now(sp);
    if (sp->closing) finish_close(sp);
}

static void start_sync(hr_spool_t *sp, commit_t *cbs)
{
    wbuf_flush(sp); /* the sync covers what is gathered */
    if (sp->write_err) {
        int rc = sp->write_err;
        complete_commits(sp, cbs, rc);
        fail_waiting(sp);
        return;
    }
    sync_job_t *j = job_new(sp);
    j->cbs = cbs;
    sp->job = j;
    int rc = uv_queue_work(sp->loop, &j->work, sync_work, after_sync);
    if (rc < 0) { /* cannot happen with a valid loop; fail the commits rather than hang */
        sp->job = NULL;
        free(j->fds);
        free(j);
        complete_commits(sp, cbs, rc);
    }
}

static void on_idle(uv_idle_t *h)
{
    hr_spool_t *sp = h->data;
    uv_idle_stop(h);
    wbuf_flush(sp);
    fail_waiting(sp);
    if (!sp->pending) return;
    if (sp->opts.fsync != HR_FSYNC_ALWAYS) {
        /* Complete the plain commits now; forced ones (hr_spool_sync) stay for a sync. */
        commit_t *now = NULL, **nt = &now, *c = sp->pending;
        sp->pending = sp->pending_tail = NULL;
        while (c) {
            commit_t *next = c->next;
            c->next = NULL;
            if (c->force) {
                if (sp->pending_tail)
                    sp->pending_tail->next = c;
                else
                    sp->pending = c;
                sp->pending_tail = c;
            } else {
                *nt = c;
                nt = &c->next;
            }
            c = next;
        }
        complete_commits(sp, now, 0);
        if (!sp->pending) return;
    }
    if (sp->job) return; /* they go with the next sync, started when this one ends */
    commit_t *cbs = sp->pending;
    sp->pending = sp->pending_tail = NULL;
    start_sync(sp, cbs);
}

static void on_interval(uv_timer_t *t)
{
    hr_spool_t *sp = t->data;
    if (sp->job) return;
    wbuf_flush(sp);
    fail_waiting(sp);
    bool dirty = sp->dir_dirty;
    for (size_t i = 0; i < sp->nsegs && !dirty; i++)
        dirty = sp->segs[i].dirty;
    if (dirty) start_sync(sp, NULL);
}

/* ---- Prepared segments ------------------------------------------------------------------ */

/* In the threadpool: create the file, reserve its blocks, write zeros over them and
 * fdatasync, so that appends overwrite blocks that are already allocated and written and a
 * sync commits no change of the file's size or extents. */
static void prep_work(uv_work_t *w)
{
    static char zeros[64u << 10]; /* never written; not const, so that it is in .bss */
    prep_job_t *j = w->data;
    j->fd = open(j->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (j->fd < 0) {
        j->result = -errno;
        return;
    }
    int rc = posix_fallocate(j->fd, 0, (off_t)j->bytes); /* a full disk fails here, at once */
    if (rc == EINVAL || rc == EOPNOTSUPP) rc = 0;        /* not supported: the zeros will do */
    for (uint64_t off = 0; rc == 0 && off < j->bytes;) {
        size_t k = j->bytes - off < sizeof zeros ? (size_t)(j->bytes - off) : sizeof zeros;
        struct iovec v = {zeros, k};
        rc = -write_at(j->fd, &v, 1, off);
        off += k;
    }
    if (rc == 0 && fdatasync(j->fd) < 0) rc = errno;
    if (rc == 0) return;
    j->result = -rc;
    close(j->fd);
    unlink(j->path);
    j->fd = -1;
}

static void after_prep(uv_work_t *w, int status)
{
    prep_job_t *j = w->data;
    hr_spool_t *sp = j->sp;
    int rc = status < 0 ? status : j->result;
    sp->prep_job = NULL;
    if (rc == 0 && j->fd >= 0) {
        sp->prep_fd = j->fd;
        sp->prep_path = j->path;
        sp->prep_bytes = j->bytes;
        sp->st.disk_bytes += j->bytes;
        sp->st.next_prepared = true;
        if (sp->prep_failing)
            hr_log_info("spool: the next segment is prepared again (%llu bytes of zeros)",
                        (unsigned long long)j->bytes);
        sp->prep_failing = false;
        free(j);
        if (sp->closing) prep_drop(sp);
    } else {
        if (rc < 0 && rc != UV_ECANCELED) {
            sp->st.prep_errors++;
            if (!sp->prep_failing)
                hr_log_warn("spool: cannot prepare the next segment (%s: %s); new segments grow "
                            "by appends (each sync costs more) until a preparation succeeds",
                            j->path, strerror(-rc));
            sp->prep_failing = true;
        }
        free(j->path);
        free(j);
    }
    if (sp->closing) finish_close(sp);
}

/* Prepare the next segment in the threadpool unless one is ready or being prepared. */
static void prep_start(hr_spool_t *sp)
{
    sp->prep_wanted = false;
    if (sp->closing || sp->prep_job || sp->prep_fd >= 0) return;
    prep_job_t *j = hr_xcalloc(1, sizeof *j);
    j->sp = sp;
    j->work.data = j;
    j->fd = -1;
    j->bytes = sp->opts.segment_bytes;
    j->path =
        hr_xasprintf("%s/%s%ld-%u.tmp", sp->opts.dir, PREP_PREFIX, (long)getpid(), ++sp->prep_seq);
    sp->prep_job = j;
    if (uv_queue_work(sp->loop, &j->work, prep_work, after_prep) < 0) { /* no preparation */
        sp->prep_job = NULL;
        free(j->path);
        free(j);
    }
}

/* Delete the prepared segments a process left behind (it ended before it used them). */
static void prep_remove_stale(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    size_t pl = strlen(PREP_PREFIX);
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len <= pl + 4 || strncmp(e->d_name, PREP_PREFIX, pl) != 0 ||
            strcmp(e->d_name + len - 4, ".tmp") != 0)
            continue;
        char *path = hr_xasprintf("%s/%s", dir, e->d_name);
        if (unlink(path) == 0) hr_log_debug("spool: deleted unused prepared segment %s", path);
        free(path);
    }
    closedir(d);
}

/* ---- Public API ------------------------------------------------------------------------- */

/* Recovery logs every skipped range and every empty segment on a line of its own. */
static void log_gap(void *arg, const hr_spool_gap_t *g)
{
    (void)arg;
    char line[160];
    hr_spool_gap_format(line, sizeof line, g);
    if (g->empty)
        hr_log_info("spool: %s", line);
    else
        hr_log_warn("spool: %s", line);
}

hr_spool_t *hr_spool_open(uv_loop_t *loop, const hr_spool_opts_t *opts, hr_spool_rec_cb cb,
                          void *arg, char *err, size_t errlen)
{
    hr_spool_t *sp = hr_xcalloc(1, sizeof *sp);
    sp->loop = loop;
    sp->opts = *opts;
    sp->opts.dir = hr_xstrdup(opts->dir);
    if (!sp->opts.segment_bytes) sp->opts.segment_bytes = DEF_SEGMENT_BYTES;
    if (sp->opts.max_bytes && sp->opts.segment_bytes > sp->opts.max_bytes / 8)
        sp->opts.segment_bytes = sp->opts.max_bytes / 8 > 1024 ? sp->opts.max_bytes / 8 : 1024;
    if (!sp->opts.fsync_interval_ms) sp->opts.fsync_interval_ms = HR_DEF_FSYNC_INTERVAL_MS;
    sp->dirfd = -1;
    sp->prep_fd = -1;
    int rc = hr_mkdir_p(sp->opts.dir);
    if (rc < 0) {
        snprintf(err, errlen, "spool_dir %s: %s", sp->opts.dir, strerror(-rc));
        goto fail;
    }
    sp->dirfd = open(sp->opts.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0) {
        snprintf(err, errlen, "spool_dir %s: %s", sp->opts.dir, strerror(errno));
        goto fail;
    }
    prep_remove_stale(sp->opts.dir);
    uint32_t *seqs = NULL;
    long n = list_segments(sp->opts.dir, &seqs);
    if (n < 0) {
        snprintf(err, errlen, "spool_dir %s: %s", sp->opts.dir, strerror((int)-n));
        goto fail;
    }
    for (long i = 0; i < n; i++) {
        char *path = seg_path(sp->opts.dir, seqs[i]);
        int fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            snprintf(err, errlen, "spool segment %s: %s", path, strerror(errno));
            free(path);
            free(seqs);
            goto fail;
        }
        seg_t s = {.seq = seqs[i], .fd = fd};
        hr_spool_gaps_t gaps = {0};
        rc = scan_segment(fd, seqs[i], cb, arg, &s.size, &s.file, &gaps, &s.actions, log_gap, NULL);
        seg_push(sp, s);
        if (rc < 0) {
            snprintf(err, errlen, "spool segment %s: %s", path, strerror(-rc));
            free(path);
            free(seqs);
            goto fail;
        }
        if (gaps.ranges)
            hr_log_warn("spool: %s: skipped %llu corrupt or torn record(s), %llu bytes in %llu "
                        "range(s) (a crash mid-write leaves a torn tail; the rest was recovered)",
                        path, (unsigned long long)gaps.records, (unsigned long long)gaps.bytes,
                        (unsigned long long)gaps.ranges);
        sp->st.corrupt += gaps.records;
        sp->st.corrupt_bytes += gaps.bytes;
        sp->st.corrupt_ranges += gaps.ranges;
        sp->st.empty_segments += gaps.empty;
        sp->st.bytes += s.size;
        sp->st.disk_bytes += s.file;
        sp->st.segments++;
        free(path);
    }
    free(seqs);
    rc = rotate(sp);
    if (rc < 0) {
        snprintf(err, errlen, "spool_dir %s: cannot create a segment: %s", sp->opts.dir,
                 strerror(-rc));
        goto fail;
    }
    uv_idle_init(loop, &sp->idle);
    sp->idle.data = sp;
    uv_timer_init(loop, &sp->timer);
    sp->timer.data = sp;
    sp->open_handles = 2;
    if (sp->opts.fsync == HR_FSYNC_INTERVAL)
        uv_timer_start(&sp->timer, on_interval, sp->opts.fsync_interval_ms,
                       sp->opts.fsync_interval_ms);
    return sp;
fail:
    for (size_t i = 0; i < sp->nsegs; i++)
        close(sp->segs[i].fd);
    if (sp->dirfd >= 0) close(sp->dirfd);
    free(sp->segs);
    free((char *)sp->opts.dir);
    free(sp);
    return NULL;
}

bool hr_spool_is_full(const hr_spool_t *sp, size_t len)
{
    return sp->opts.max_bytes && sp->st.bytes + HR_SPOOL_HDR + len > sp->opts.max_bytes;
}

int hr_spool_append(hr_spool_t *sp, int type, const void *payload, size_t len, bool limited,
                    hr_spool_loc_t *loc)
{
    if (sp->closing) return -ESHUTDOWN;
    if (len > UINT32_MAX - HR_SPOOL_HDR) return -EFBIG;
    uint64_t rec = HR_SPOOL_HDR + len;
    bool gather = (type == HR_REC_ACTION || type == HR_REC_DONE) && rec <= WBUF_MAX;
    if (!gather) { /* written at once, after what is gathered, so its error is the caller's */
        int rc = wbuf_flush(sp);
        if (rc < 0) return rc;
    }
    if (limited && hr_spool_is_full(sp, len)) {
        /* Full, but maybe only of finished records in the segment being written: start a
         * new one so that one can be deleted, and look again. */
        seg_t *c = &sp->segs[sp->nsegs - 1];
        if (c->refs > 0 || c->size == 0 || rotate(sp) < 0) return -ENOSPC;
        gc_now(sp);
        if (hr_spool_is_full(sp, len)) return -ENOSPC;
    }
    seg_t *cur = &sp->segs[sp->nsegs - 1];
    if (sp->broken || (cur->size > 0 && cur->size + rec > sp->opts.segment_bytes) ||
        cur->size + rec > UINT32_MAX) {
        int rc = rotate(sp);
        if (rc < 0) {
            sp->st.write_errors++;
            sp->st.failing = true;
            return rc;
        }
        gc_now(sp); /* the old segment may hold nothing live any more */
        cur = &sp->segs[sp->nsegs - 1];
    }
    if (sp->prep_wanted) prep_start(sp);
    unsigned char h[HR_SPOOL_HDR];
    make_header(h, type, payload, len);
    uint64_t off = cur->size;
    if (gather) {
        if (sp->wbuf.len == 0) sp->wbuf_off = off;
        hr_buf_reserve(&sp->wbuf, rec);
        hr_buf_append(&sp->wbuf, h, sizeof h);
        hr_buf_append(&sp->wbuf, payload, len);
        if (type == HR_REC_ACTION)
            sp->wbuf_actions++;
        else
            sp->wbuf_dones++;
        uv_idle_start(&sp->idle, on_idle); /* written at the next turn of the loop at the latest */
    } else {
        struct iovec iov[2] = {{h, sizeof h}, {(void *)payload, len}};
        int rc = write_at(cur->fd, iov, 2, off);
        if (rc < 0) {
            sp->st.write_errors++;
            sp->st.failing = true;
            if (!cut_back(sp, cur, off)) sp->broken = true;
            hr_log_error("spool: write to segment %u failed: %s", cur->seq, strerror(-rc));
            return rc;
        }
        cur->dirty = true;
        if (sp->opts.fsync == HR_FSYNC_NEVER) sp->st.failing = false; /* no sync will tell */
    }
    cur->size += rec;
    sp->st.bytes += rec;
    if (cur->size > cur->file) { /* past the zeros (or none): the file grows */
        sp->st.disk_bytes += cur->size - cur->file;
        cur->file = cur->size;
    }
    if (type == HR_REC_ACTION || type == HR_REC_COPY) {
        cur->refs++;
        cur->actions++;
    }
    *loc = (uint64_t)cur->seq << 32 | off;
    if (sp->wbuf.len >= WBUF_MAX) wbuf_flush(sp); /* an error fails the waiting commits */
    return 0;
}

/* Queue a commit (force: it needs a real sync) for the end of the loop iteration. */
static int commit_add(hr_spool_t *sp, void (*cb)(void *arg, int status), void *arg, bool force)
{
    if (sp->closing) return -ESHUTDOWN;
    commit_t *c = hr_xcalloc(1, sizeof *c);
    c->cb = cb;
    c->arg = arg;
    c->force = force;
    if (sp->pending_tail)
        sp->pending_tail->next = c;
    else
        sp->pending = c;
    sp->pending_tail = c;
    uv_idle_start(&sp->idle, on_idle);
    return 0;
}

int hr_spool_commit(hr_spool_t *sp, void (*cb)(void *arg, int status), void *arg)
{
    return commit_add(sp, cb, arg, false);
}

int hr_spool_sync(hr_spool_t *sp, void (*cb)(void *arg, int status), void *arg)
{
    return commit_add(sp, cb, arg, true);
}

uint32_t hr_spool_compact_candidate(const hr_spool_t *sp, uint64_t *refs)
{
    if (sp->closing || sp->nsegs < 2) return 0;
    const seg_t *s = &sp->segs[0];
    if (refs) *refs = s->refs;
    if (s->refs == 0) return 0;
    bool pressure = sp->opts.max_bytes && sp->st.bytes > sp->opts.max_bytes / 2;
    if (sp->nsegs >= 3 && s->refs * 4 <= s->actions) return s->seq;
    if (pressure && s->refs * 4 <= s->actions * 3) return s->seq;
    return 0;
}

int hr_spool_read(hr_spool_t *sp, hr_spool_loc_t loc, hr_buf_t *out)
{
    seg_t *s = seg_find(sp, HR_LOC_SEG(loc));
    if (!s) return -ENOENT;
    if (sp->wbuf.len && s == &sp->segs[sp->nsegs - 1] && HR_LOC_OFF(loc) >= sp->wbuf_off)
        wbuf_flush(sp); /* a gathered record: written first (a failure leaves it past the end) */
    unsigned char h[HR_SPOOL_HDR];
    off_t off = (off_t)HR_LOC_OFF(loc);
    ssize_t k = pread(s->fd, h, sizeof h, off);
    if (k < 0) return -errno;
    if (k != (ssize_t)sizeof h || get32(h) != HR_SPOOL_MAGIC) return -EILSEQ;
    uint32_t len = get32(h + 4);
    if ((uint64_t)off + HR_SPOOL_HDR + len > s->size) return -EILSEQ;
    hr_buf_reset(out);
    hr_buf_reserve(out, len);
    size_t got = 0;
    while (got < len) {
        k = pread(s->fd, out->data + got, len - got, off + HR_SPOOL_HDR + (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) return -errno;
        if (k == 0) return -EILSEQ;
        got += (size_t)k;
    }
    out->len = len;
    out->data[len] = '\0';
    uint32_t crc = hr_crc32c(0, h + 4, 8);
    crc = hr_crc32c(crc, out->data, len);
    if (crc != get32(h + 12)) return -EILSEQ;
    return h[8];
}

void hr_spool_ref(hr_spool_t *sp, hr_spool_loc_t loc)
{
    seg_t *s = seg_find(sp, HR_LOC_SEG(loc));
    if (s) s->refs++;
}

void hr_spool_unref(hr_spool_t *sp, hr_spool_loc_t loc)
{
    seg_t *s = seg_find(sp, HR_LOC_SEG(loc));
    if (!s || s->refs == 0) return;
    if (--s->refs == 0 && s == &sp->segs[0]) gc_now(sp);
}

/* Delete the oldest segments without references (never the current one), unless a sync job
 * may be using their descriptors. */
static void gc_now(hr_spool_t *sp)
{
    if (sp->job) return;
    size_t k = 0;
    while (k + 1 < sp->nsegs && sp->segs[k].refs == 0) {
        seg_t *s = &sp->segs[k];
        char *path = seg_path(sp->opts.dir, s->seq);
        if (unlink(path) < 0 && errno != ENOENT) {
            hr_log_error("spool: cannot delete finished segment %s: %s", path, strerror(errno));
            free(path);
            break;
        }
        hr_log_debug("spool: deleted finished segment %s", path);
        free(path);
        close(s->fd);
        sp->st.bytes -= s->size;
        sp->st.disk_bytes -= s->file;
        sp->st.segments--;
        sp->st.deleted++;
        k++;
    }
    if (k) {
        memmove(sp->segs, sp->segs + k, (sp->nsegs - k) * sizeof *sp->segs);
        sp->nsegs -= k;
    }
}

void hr_spool_gc(hr_spool_t *sp)
{
    gc_now(sp);
}

void hr_spool_stats(const hr_spool_t *sp, hr_spool_stats_t *st)
{
    *st = sp->st;
}

static void on_handle_closed(uv_handle_t *h)
{
    hr_spool_t *sp = h->data;
    if (--sp->open_handles > 0) return;
    void (*cb)(void *) = sp->close_cb;
    void *arg = sp->close_arg;
    free(sp->segs);
    hr_buf_free(&sp->wbuf);
    free((char *)sp->opts.dir);
    free(sp);
    if (cb) cb(arg);
}

/* Once no sync runs: sync the rest here (shutdown may block briefly), complete what waits,
 * close the files and the handles. */
static void finish_close(hr_spool_t *sp)
{
    if (sp->job || sp->prep_job || sp->open_handles == 0 || uv_is_closing((uv_handle_t *)&sp->idle))
        return;
    prep_drop(sp);
    wbuf_flush(sp);
    fail_waiting(sp);
    int rc = 0;
    for (size_t i = 0; i < sp->nsegs; i++) { /* a clean close syncs in every mode */
        if (sp->segs[i].dirty && fdatasync(sp->segs[i].fd) < 0 && rc == 0) rc = -errno;
        sp->segs[i].dirty = false;
    }
    if (sp->dir_dirty && fsync(sp->dirfd) < 0 && rc == 0) rc = -errno;
    commit_t *cbs = sp->pending;
    sp->pending = sp->pending_tail = NULL;
    complete_commits(sp, cbs, rc);
    gc_now(sp);
    /* At a clean close the segment being written goes too when nothing in it is live (every
     * older one is gone then, so no record it holds matters any more). */
    if (sp->nsegs == 1 && sp->segs[0].refs == 0) {
        char *path = seg_path(sp->opts.dir, sp->segs[0].seq);
        unlink(path);
        free(path);
    }
    for (size_t i = 0; i < sp->nsegs; i++) {
        seg_t *s = &sp->segs[i];
        if (s->file > s->size && ftruncate(s->fd, (off_t)s->size) < 0) /* the zero tail goes */
            hr_log_debug("spool: cannot cut the zeros off segment %u: %s", s->seq, strerror(errno));
        close(s->fd);
    }
    close(sp->dirfd);
    uv_close((uv_handle_t *)&sp->idle, on_handle_closed);
    uv_close((uv_handle_t *)&sp->timer, on_handle_closed);
}

void hr_spool_close(hr_spool_t *sp, void (*cb)(void *arg), void *arg)
{
    if (sp->closing) return;
    sp->closing = true;
    sp->close_cb = cb;
    sp->close_arg = arg;
    uv_timer_stop(&sp->timer);
    uv_idle_stop(&sp->idle);
    finish_close(sp);
}
