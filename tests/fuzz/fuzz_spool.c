/* Fuzz spool recovery: the input becomes a segment file, and hr_spool_open recovers it.
 * Checked: every record handed over checks out (magic, type, CRC32C) and reads back the same
 * through hr_spool_read; records come in order without overlapping; and every byte of the
 * file is either in a record, counted as skipped (corrupt_bytes) or in the zero tail after
 * the last record or range, with a corrupt count exactly when bytes were skipped. The read-only
 * scan (hr_spool_scan_dir) must agree. Payloads of valid records go through the decoders the outbox
 * recovery uses, and through the record fold (hr_spool_index_t): what it calls pending comes out
 * once each, in id order, and is found by id.
 *
 * Input: a first byte with bit 0 clear is a raw segment; with bit 0 set the rest is a list
 * of records (u8 type, u16 little-endian length, payload) framed with valid checksums, so
 * the payload decoders see arbitrary payloads too. */
#include <dirent.h>
#include <sys/stat.h>
#include <uv.h>

#include "fuzz.h"
#include "hr/action.h"
#include "hr/log.h"
#include "hr/spool.h"
#include "hr/spool_index.h"

#define MAX_RECS 4096

typedef struct {
    size_t n;
    int type[MAX_RECS];
    size_t len[MAX_RECS];
    hr_spool_loc_t loc[MAX_RECS];
    uint32_t crc[MAX_RECS]; /* of the payload, to compare the two scans */
} recs_t;

static uv_loop_t loop;
static char spool_dir[300], seg_file[400];

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void decode_payload(int type, const char *p, size_t n)
{
    char errbuf[256];
    if (type == HR_REC_ACTION) {
        uint64_t id;
        hr_action_t *a = hr_spool_decode_action(p, n, &id);
        hr_spool_action_meta_t m;
        int rc = hr_spool_action_meta(p, n, &m);
        if (a) FUZZ_CHECK(rc == 0 && m.id == id);
        hr_action_free(a);
    } else if (type == HR_REC_STATE) {
        hr_spool_state_t s;
        if (hr_spool_decode_state(p, n, &s, errbuf, sizeof errbuf) == 0)
            FUZZ_CHECK(s.error != NULL);
    } else if (type == HR_REC_COPY) {
        hr_spool_copy_t c;
        if (hr_spool_decode_copy(p, n, &c) == 0) {
            hr_spool_state_t s;
            int rc;
            uint32_t k = 0;
            while ((rc = hr_spool_copy_log_next(&c, &s, errbuf, sizeof errbuf)) == 1)
                k++;
            FUZZ_CHECK(rc == 0 || rc == -1);
            FUZZ_CHECK(k <= c.nlog);
        }
    }
}

static void on_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    recs_t *r = arg;
    FUZZ_CHECK(r->n < MAX_RECS);
    r->type[r->n] = type;
    r->len[r->n] = n;
    r->loc[r->n] = loc;
    r->crc[r->n] = hr_crc32c(0, p, n);
    r->n++;
}

/* each() of the fold: ids strictly ascending, each one found. */
typedef struct {
    const hr_spool_index_t *ix;
    size_t n;
    uint64_t last;
} fold_seen_t;

static void on_pending(void *arg, const hr_spool_entry_t *e)
{
    fold_seen_t *f = arg;
    FUZZ_CHECK(f->n == 0 || e->id > f->last);
    FUZZ_CHECK(e->id <= hr_spool_index_max_id(f->ix));
    f->last = e->id;
    f->n++;
}

static void on_closed(void *arg)
{
    *(int *)arg = 1;
}

/* Remove every file of the spool folder (the open before made segments there). */
static void empty_dir(void)
{
    DIR *d = opendir(spool_dir);
    FUZZ_CHECK(d != NULL);
    struct dirent *e;
    char path[600];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", spool_dir, e->d_name);
        FUZZ_CHECK(unlink(path) == 0);
    }
    closedir(d);
}

static recs_t rec_open, rec_scan;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    hr_log_set_level(HR_LOG_ERROR);
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    snprintf(spool_dir, sizeof spool_dir, "%s/spool", fuzz_tmpdir());
    snprintf(seg_file, sizeof seg_file, "%s/seg-%016x.hrs", spool_dir, 1u);
    FUZZ_CHECK(mkdir(spool_dir, 0700) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hr_buf_t seg = HR_BUF_INIT;
    if (size > 0 && (data[0] & 1)) {
        size_t off = 1;
        while (off + 3 <= size) {
            int type = data[off] & 7;
            size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
            off += 3;
            if (len > size - off) len = size - off;
            hr_spool_frame(&seg, type, data + off, len);
            off += len;
        }
    } else if (size > 0) {
        hr_buf_append(&seg, data + 1, size - 1);
    }
    empty_dir();
    fuzz_write_file(seg_file, seg.data ? seg.data : "", seg.len);

    /* The read-only scan first (the open below adds a segment). */
    rec_scan.n = 0;
    hr_spool_stats_t sst = {0};
    char err[256];
    FUZZ_CHECK(hr_spool_scan_dir(spool_dir, on_rec, &rec_scan, &sst, err, sizeof err) == 0);

    rec_open.n = 0;
    hr_spool_opts_t o = {.dir = spool_dir, .fsync = HR_FSYNC_NEVER};
    hr_spool_t *sp = hr_spool_open(&loop, &o, on_rec, &rec_open, err, sizeof err);
    FUZZ_CHECK(sp != NULL);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);

    /* Every byte is in a record or skipped, in order. */
    hr_spool_index_t *ix = hr_spool_index_create(NULL, NULL);
    const unsigned char *p = (const unsigned char *)seg.data;
    uint64_t end = 0, gaps = 0, ngaps = 0;
    for (size_t i = 0; i < rec_open.n; i++) {
        FUZZ_CHECK(HR_LOC_SEG(rec_open.loc[i]) == 1);
        uint64_t off = HR_LOC_OFF(rec_open.loc[i]);
        FUZZ_CHECK(off >= end);
        if (off > end) ngaps++;
        gaps += off - end;
        end = off + HR_SPOOL_HDR + rec_open.len[i];
        FUZZ_CHECK(end <= seg.len);
        FUZZ_CHECK(get32(p + off) == HR_SPOOL_MAGIC);
        FUZZ_CHECK(get32(p + off + 4) == rec_open.len[i]);
        FUZZ_CHECK(p[off + 8] == rec_open.type[i]);
        uint32_t crc = hr_crc32c(0, p + off + 4, 8);
        crc = hr_crc32c(crc, p + off + HR_SPOOL_HDR, rec_open.len[i]);
        FUZZ_CHECK(get32(p + off + 12) == crc);
        hr_buf_t b = HR_BUF_INIT;
        FUZZ_CHECK(hr_spool_read(sp, rec_open.loc[i], &b) == rec_open.type[i]);
        FUZZ_CHECK(b.len == rec_open.len[i]);
        FUZZ_CHECK(b.len == 0 || memcmp(b.data, p + off + HR_SPOOL_HDR, b.len) == 0);
        decode_payload(rec_open.type[i], b.data ? b.data : "", b.len);
        hr_spool_index_fold(ix, rec_open.type[i], b.data ? b.data : "", b.len, rec_open.loc[i]);
        hr_buf_free(&b);
    }
    /* After the last record: a skipped range, then a zero tail (a segment's clean end), either
     * possibly empty; the range covers at least every byte up to the last one that is not 0. */
    uint64_t nz = seg.len;
    while (nz > end && p[nz - 1] == 0)
        nz--;
    FUZZ_CHECK(st.corrupt_bytes >= gaps + (nz - end));
    FUZZ_CHECK(st.corrupt_bytes <= gaps + (seg.len - end));
    uint64_t tail = st.corrupt_bytes - gaps;
    if (tail) ngaps++;
    gaps += tail;
    if (gaps != st.corrupt_bytes || (gaps > 0) != (st.corrupt > 0) || st.corrupt < ngaps) {
        fprintf(stderr, "skipped %llu bytes in %llu gaps, reported %llu bytes in %llu records\n",
                (unsigned long long)gaps, (unsigned long long)ngaps,
                (unsigned long long)st.corrupt_bytes, (unsigned long long)st.corrupt);
        abort();
    }

    fold_seen_t fs = {.ix = ix};
    hr_spool_index_each(ix, on_pending, &fs);
    FUZZ_CHECK(fs.n == hr_spool_index_count(ix));
    if (fs.n) {
        const hr_spool_entry_t *e = hr_spool_index_find(ix, fs.last);
        FUZZ_CHECK(e != NULL && e->id == fs.last);
    }
    hr_spool_index_destroy(ix);

    /* The read-only scan saw the same. */
    FUZZ_CHECK(rec_scan.n == rec_open.n);
    FUZZ_CHECK(sst.corrupt == st.corrupt && sst.corrupt_bytes == st.corrupt_bytes);
    for (size_t i = 0; i < rec_open.n; i++)
        FUZZ_CHECK(rec_scan.loc[i] == rec_open.loc[i] && rec_scan.type[i] == rec_open.type[i] &&
                   rec_scan.len[i] == rec_open.len[i] && rec_scan.crc[i] == rec_open.crc[i]);

    int closed = 0;
    hr_spool_close(sp, on_closed, &closed);
    while (!closed)
        uv_run(&loop, UV_RUN_ONCE);
    hr_buf_free(&seg);
    return 0;
}
