/* Unit tests for src/spool.c: framing, append and recovery, torn tails, corrupt records in
 * the middle, segment deletion, group commit, gathered writes and their failure, prepared
 * (zero-filled) segments, their zero tails and a preparation that fails. */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "spool_util.h"
#include "hr/log.h"
#include "hr/spool.h"

static uv_loop_t *loop;
static char dir[64];

typedef struct {
    int n;           /* records seen */
    char last[64];   /* payload of the last one */
    int types[4096]; /* their types */
    hr_spool_loc_t locs[4096];
} seen_t;

static void on_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    seen_t *s = arg;
    if (s->n < 4096) {
        s->types[s->n] = type;
        s->locs[s->n] = loc;
    }
    s->n++;
    snprintf(s->last, sizeof s->last, "%.*s", (int)(n < 63 ? n : 63), p);
}

static int closed;
static void on_closed(void *arg)
{
    closed++;
}

static void close_spool(hr_spool_t *sp)
{
    int c = closed;
    hr_spool_close(sp, on_closed, NULL);
    while (closed == c)
        uv_run(loop, UV_RUN_ONCE);
}

static int commits_done, commit_status;
static void on_commit(void *arg, int status)
{
    commits_done++;
    commit_status = status;
}

/* Ask for a commit of what sp holds, run the loop until it completes; its status. */
static int commit_wait(hr_spool_t *sp)
{
    commits_done = 0;
    CHECK_INT_EQ(hr_spool_commit(sp, on_commit, NULL), 0);
    while (commits_done == 0)
        uv_run(loop, UV_RUN_ONCE);
    return commit_status;
}

static char *spool_dir(const char *name)
{
    return hr_xasprintf("%s/%s", dir, name);
}

static void test_append_recover(void)
{
    char *d = spool_dir("a");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_ALWAYS};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, 0);
    hr_spool_loc_t loc[10];
    for (int i = 0; i < 10; i++) {
        char p[32];
        int n = snprintf(p, sizeof p, "record-%d", i);
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, (size_t)n, true, &loc[i]), 0);
    }
    CHECK_INT_EQ(hr_spool_commit(sp, on_commit, NULL), 0);
    CHECK_INT_EQ(commits_done, 0); /* never from inside */
    while (commits_done == 0)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(commit_status, 0);
    hr_buf_t b = HR_BUF_INIT;
    CHECK_INT_EQ(hr_spool_read(sp, loc[3], &b), HR_REC_ACTION);
    CHECK_STR_EQ(b.data, "record-3");
    hr_buf_free(&b);
    close_spool(sp);

    /* Reopen: every record comes back in order. */
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, 10);
    CHECK_STR_EQ(s.last, "record-9");
    /* Nobody took references: the old segment goes at the first gc. */
    hr_spool_gc(sp);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.deleted, 1);
    close_spool(sp);
    free(d);
}

/* Write 5 records, close, damage the file with fn, reopen and count. */
static void damaged(const char *name, void (*fn)(const char *path), int want, uint64_t corrupt)
{
    char *d = spool_dir(name);
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_NEVER};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    hr_spool_loc_t loc;
    for (int i = 0; i < 5; i++) {
        char p[64];
        int n = snprintf(p, sizeof p, "payload number %d with some bytes", i);
        hr_spool_append(sp, HR_REC_ACTION, p, (size_t)n, false, &loc); /* live: kept */
    }
    close_spool(sp);
    char *path = newest_segment(d);
    CHECK(path != NULL);
    if (path) fn(path);
    free(path);
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    if (!sp) return;
    CHECK_INT_EQ(s.n, want);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.corrupt, corrupt);
    close_spool(sp);
    free(d);
}

static void truncate_3(const char *path)
{
    struct stat st;
    stat(path, &st);
    CHECK_INT_EQ(truncate(path, st.st_size - 3), 0);
}

/* Flip a payload byte of the third record (each is 16 + 33 bytes). */
static void flip_middle(const char *path)
{
    int fd = open(path, O_RDWR);
    off_t off = 2 * (16 + 33) + 20;
    char c;
    CHECK_INT_EQ(pread(fd, &c, 1, off), 1);
    c ^= 0x40;
    CHECK_INT_EQ(pwrite(fd, &c, 1, off), 1);
    close(fd);
}

/* Garble the second record's length field: the scan resynchronises on the next record. */
static void garble_length(const char *path)
{
    int fd = open(path, O_RDWR);
    unsigned char v[4] = {0xff, 0xff, 0x00, 0x10};
    CHECK_INT_EQ(pwrite(fd, v, 4, (16 + 33) + 4), 4);
    close(fd);
}

static void garbage_tail(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    CHECK_INT_EQ(write(fd, "HRS1\x05garbage", 12), 12);
    close(fd);
}

static void test_damage(void)
{
    damaged("torn", truncate_3, 4, 1);
    damaged("flip", flip_middle, 4, 1);
    damaged("len", garble_length, 4, 1);
    damaged("tail", garbage_tail, 5, 1);
}

static void test_segments_deleted(void)
{
    char *d = spool_dir("segs");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_NEVER, .segment_bytes = 200};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    hr_spool_loc_t loc[20];
    char p[100];
    memset(p, 'x', sizeof p);
    for (int i = 0; i < 20; i++)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, false, &loc[i]), 0);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.segments, 20); /* 116-byte records, 200-byte segments: one each */
    /* Finishing a later record deletes nothing while an older one lives. */
    hr_spool_unref(sp, loc[5]);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.deleted, 0);
    for (int i = 0; i < 5; i++)
        hr_spool_unref(sp, loc[i]);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.deleted, 6); /* 0..5, in order */
    CHECK_INT_EQ(st.segments, 14);
    for (int i = 6; i < 20; i++)
        hr_spool_unref(sp, loc[i]);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.segments, 1); /* the one being written stays */
    close_spool(sp);
    /* A clean close with nothing live leaves no segment. */
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK_INT_EQ(s.n, 0);
    close_spool(sp);

    /* max_bytes: limited appends are refused; unlimited ones are not. */
    o.max_bytes = 300;
    o.segment_bytes = 0;
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[0]), 0);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[1]), 0);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[2]), -ENOSPC);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_DONE, p, 8, false, &loc[2]), 0);
    /* Once both are finished the segment is rotated away and there is room again. */
    hr_spool_unref(sp, loc[0]);
    hr_spool_unref(sp, loc[1]);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[2]), 0);
    close_spool(sp);
    free(d);
}

static void test_group_commit(void)
{
    char *d = spool_dir("group");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_ALWAYS};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    hr_spool_loc_t loc;
    /* 100 commits requested in one loop iteration share one sync. */
    commits_done = 0;
    for (int i = 0; i < 100; i++) {
        hr_spool_append(sp, HR_REC_ACTION, "abc", 3, true, &loc);
        hr_spool_commit(sp, on_commit, NULL);
    }
    while (commits_done < 100)
        uv_run(loop, UV_RUN_ONCE);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.syncs, 1);
    CHECK_INT_EQ(st.commits, 100);
    /* Commits arriving while a sync runs wait for the next one: at most 2 more syncs. */
    commits_done = 0;
    for (int i = 0; i < 50; i++) {
        hr_spool_append(sp, HR_REC_ACTION, "abc", 3, true, &loc);
        hr_spool_commit(sp, on_commit, NULL);
        uv_run(loop, UV_RUN_NOWAIT);
    }
    while (commits_done < 50)
        uv_run(loop, UV_RUN_ONCE);
    hr_spool_stats(sp, &st);
    CHECK(st.syncs >= 2);
    CHECK(st.syncs <= 51);
    fprintf(stderr, "group commit: 50 interleaved commits took %llu syncs\n",
            (unsigned long long)(st.syncs - 1));
    close_spool(sp);

    /* "never": commits complete without any sync. */
    o.fsync = HR_FSYNC_NEVER;
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    commits_done = 0;
    hr_spool_append(sp, HR_REC_ACTION, "abc", 3, true, &loc);
    hr_spool_commit(sp, on_commit, NULL);
    while (commits_done < 1)
        uv_run(loop, UV_RUN_ONCE);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.syncs, 0);
    close_spool(sp);
    free(d);
}

static void test_codec(void)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    strcpy(a->event_id, "0190-abc");
    a->event_type = hr_xstrdup("checkout");
    a->store = hr_xstrdup("42");
    a->name = hr_xstrdup("pos");
    a->method = hr_xstrdup("PUT");
    a->url = hr_xstrdup("http://127.0.0.1:9/x");
    hr_action_add_header(a, "X-Api-Key", "k");
    a->body = hr_xstrndup("{\"a\":\0}", 8);
    a->body_len = 8;
    a->body_is_json = true;
    a->accepted_ms = 123456789;
    a->max_attempts = 7;
    a->timeout_ms = 900;
    hr_buf_t b = HR_BUF_INIT;
    hr_spool_encode_action(&b, a, 99);
    uint64_t id = 0;
    hr_action_t *c = hr_spool_decode_action(b.data, b.len, &id);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT_EQ(id, 99);
        CHECK_STR_EQ(c->event_id, "0190-abc");
        CHECK_STR_EQ(c->store, "42");
        CHECK_STR_EQ(c->url, "http://127.0.0.1:9/x");
        CHECK_STR_EQ(c->headers[0].value, "k");
        CHECK_INT_EQ(c->body_len, 8);
        CHECK(memcmp(c->body, a->body, 8) == 0);
        CHECK(c->file_path == NULL);
        CHECK_INT_EQ(c->max_attempts, 7);
        CHECK_INT_EQ(c->timeout_ms, 900);
        CHECK_INT_EQ(c->accepted_ms, 123456789);
    }
    hr_spool_action_meta_t m;
    CHECK_INT_EQ(hr_spool_action_meta(b.data, b.len, &m), 0);
    CHECK_INT_EQ(m.id, 99);
    CHECK_INT_EQ(m.name_len, 3);
    CHECK(hr_spool_decode_action(b.data, b.len - 1, NULL) == NULL); /* truncated */
    hr_action_free(c);
    hr_action_free(a);
    hr_buf_free(&b);
    /* CRC32C check value. */
    CHECK_INT_EQ(hr_crc32c(0, "123456789", 9), 0xE3069283u);
}

/* Compaction's pieces: the candidate rule, a sync that really syncs in "never" mode, the
 * old segment deleted once its pin goes, and the COPY codec. */
static void test_compaction_pieces(void)
{
    char *d = spool_dir("compact");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_NEVER, .segment_bytes = 256};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    hr_spool_loc_t loc[12];
    for (int i = 0; i < 12; i++) { /* 4 records of 60 bytes per segment: 3 segments */
        char p[44];
        memset(p, 'a' + i, sizeof p);
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[i]), 0);
    }
    CHECK_INT_EQ(HR_LOC_SEG(loc[0]), 1);
    CHECK_INT_EQ(HR_LOC_SEG(loc[11]), 3);
    uint64_t refs = 0;
    CHECK_INT_EQ(hr_spool_compact_candidate(sp, &refs), 0); /* 4 of 4 live */
    for (int i = 1; i < 4; i++)
        hr_spool_unref(sp, loc[i]);
    CHECK_INT_EQ(hr_spool_compact_candidate(sp, &refs), 1); /* 1 of 4 live */
    CHECK_INT_EQ(refs, 1);

    /* Copy forward: pin, append the COPY, move the reference, sync, unpin. */
    hr_spool_ref(sp, (hr_spool_loc_t)1 << 32);
    hr_buf_t b = HR_BUF_INIT, act = HR_BUF_INIT;
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    a->name = hr_xstrdup("pos");
    strcpy(a->event_id, "ev-1");
    a->body = hr_xstrdup("{}");
    a->body_len = 2;
    hr_spool_encode_action(&act, a, 77);
    hr_action_free(a);
    hr_spool_state_t log[2] = {{.attempt = 1, .status = 503, .at_ms = 10, .error = ""},
                               {.attempt = 2, .status = 0, .at_ms = 20, .error = "refused"}};
    hr_spool_copy_t c = {.id = 77,
                         .attempts = 2,
                         .last_status = 0,
                         .next_due_ms = 12345,
                         .action = act.data,
                         .action_len = act.len};
    hr_spool_encode_copy(&b, &c, log, 2);
    hr_spool_loc_t cl;
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_COPY, b.data, b.len, false, &cl), 0);
    hr_spool_unref(sp, loc[0]);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    uint64_t syncs = st.syncs;
    commits_done = 0;
    CHECK_INT_EQ(hr_spool_sync(sp, on_commit, NULL), 0);
    while (commits_done == 0)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(commit_status, 0);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.syncs, syncs + 1); /* a real fdatasync although fsync = "never" */
    CHECK_INT_EQ(st.deleted, 0);       /* still pinned */
    hr_spool_unref(sp, (hr_spool_loc_t)1 << 32);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.deleted, 1);

    /* The COPY reads back whole. */
    hr_buf_t r = HR_BUF_INIT;
    CHECK_INT_EQ(hr_spool_read(sp, cl, &r), HR_REC_COPY);
    hr_spool_copy_t dc;
    CHECK_INT_EQ(hr_spool_decode_copy(r.data, r.len, &dc), 0);
    CHECK_INT_EQ(dc.id, 77);
    CHECK_INT_EQ(dc.attempts, 2);
    CHECK_INT_EQ(dc.next_due_ms, 12345);
    CHECK_INT_EQ(dc.nlog, 2);
    hr_action_t *da = hr_spool_decode_action(dc.action, dc.action_len, NULL);
    CHECK(da != NULL);
    if (da) CHECK_STR_EQ(da->event_id, "ev-1");
    hr_action_free(da);
    hr_spool_state_t e;
    char eb[64];
    CHECK_INT_EQ(hr_spool_copy_log_next(&dc, &e, eb, sizeof eb), 1);
    CHECK_INT_EQ(e.attempt, 1);
    CHECK_INT_EQ(e.status, 503);
    CHECK_INT_EQ(hr_spool_copy_log_next(&dc, &e, eb, sizeof eb), 1);
    CHECK_INT_EQ(e.attempt, 2);
    CHECK_STR_EQ(e.error, "refused");
    CHECK_INT_EQ(hr_spool_copy_log_next(&dc, &e, eb, sizeof eb), 0);
    /* A truncated COPY is refused. */
    CHECK_INT_EQ(hr_spool_decode_copy(r.data, 30, &dc), -1);
    hr_buf_free(&r);
    hr_buf_free(&b);
    hr_buf_free(&act);
    close_spool(sp);
    free(d);
}

/* ---- Recovery reports (issue 9) ------------------------------------------------------- */

typedef struct {
    int n;
    hr_spool_gap_t g[8];
    char line[8][160];
} gaps_seen_t;

static void on_gap(void *arg, const hr_spool_gap_t *g)
{
    gaps_seen_t *gs = arg;
    if (gs->n < 8) {
        gs->g[gs->n] = *g;
        hr_spool_gap_format(gs->line[gs->n], sizeof gs->line[0], g);
    }
    gs->n++;
}

static void on_rec_count(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    (void)type, (void)p, (void)n, (void)loc;
    (*(int *)arg)++;
}

/* 30 records of 16 + 300 bytes: record i starts at 316 * i. */
#define R_SIZE 316
static void thirty_records(hr_buf_t *b)
{
    char p[300];
    for (int i = 0; i < 30; i++) {
        memset(p, 'a' + i % 26, sizeof p);
        hr_spool_frame(b, HR_REC_ACTION, p, sizeof p);
    }
}

/* Parse b as segment 7 and collect records, ranges and totals. */
static int parse7(const hr_buf_t *b, gaps_seen_t *gs, hr_spool_gaps_t *tot)
{
    int recs = 0;
    memset(gs, 0, sizeof *gs);
    memset(tot, 0, sizeof *tot);
    uint64_t lost = hr_spool_parse_gaps(b->data, b->len, 7, on_rec_count, &recs, on_gap, gs, tot);
    CHECK_INT_EQ(lost, tot->records);
    return recs;
}

static void test_recovery_report(void)
{
    gaps_seen_t gs;
    hr_spool_gaps_t tot;
    /* 4 KiB of bit rot from inside record 5 over 14 records (5..18), headers intact: one
     * range from record 5 to record 19, 14 records, exact. */
    hr_buf_t b = {0};
    thirty_records(&b);
    for (size_t i = 5 * R_SIZE + 100; i < 5 * R_SIZE + 100 + 4096; i++)
        if (i % R_SIZE >= HR_SPOOL_HDR) b.data[i] ^= 0x55;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 16);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(tot.ranges, 1);
    CHECK_INT_EQ(gs.g[0].start, 5 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 19 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].records, 14);
    CHECK(gs.g[0].exact);
    CHECK_STR_EQ(gs.line[0],
                 "segment seg-0000000000000007.hrs: bytes 1580-6003 skipped (4424 bytes, 14 "
                 "records lost)");
    hr_buf_free(&b);

    /* The same 4 KiB zeroed: the headers of records 6..18 are gone, so only a lower bound
     * can be given: record 5, whose header survives (the zeroed bytes where its length
     * points might as well be the damage of record 5's own length field). */
    thirty_records(&b);
    memset(b.data + 5 * R_SIZE + 100, 0, 4096);
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 16);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 1580);
    CHECK_INT_EQ(gs.g[0].end, 6004);
    CHECK_INT_EQ(tot.bytes, 4424);
    CHECK(!gs.g[0].exact);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK_STR_EQ(gs.line[0],
                 "segment seg-0000000000000007.hrs: bytes 1580-6003 skipped (4424 bytes, at "
                 "least 1 records lost)");
    hr_buf_free(&b);

    /* Zeroed from a record boundary (record 5's header gone too): at least 1. */
    thirty_records(&b);
    memset(b.data + 5 * R_SIZE, 0, 4096);
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 17); /* 0..4 and 18..29 */
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 5 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 18 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK(!gs.g[0].exact);
    hr_buf_free(&b);

    /* One record's length field damaged to point inside its own payload: one record lost,
     * not two (where the chain breaks is not counted). */
    thirty_records(&b);
    b.data[3 * R_SIZE + 4] = 100;
    b.data[3 * R_SIZE + 5] = 0;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 29);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 3 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 4 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK(!gs.g[0].exact);
    hr_buf_free(&b);

    /* Two separate damaged records: two ranges, one line each. */
    thirty_records(&b);
    b.data[3 * R_SIZE + 50] ^= 1;
    b.data[10 * R_SIZE + 200] ^= 1;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 28);
    CHECK_INT_EQ(gs.n, 2);
    CHECK_INT_EQ(tot.ranges, 2);
    CHECK_INT_EQ(tot.records, 2);
    CHECK_INT_EQ(tot.bytes, 2 * R_SIZE);
    CHECK_STR_EQ(gs.line[0], "segment seg-0000000000000007.hrs: bytes 948-1263 skipped (316 "
                             "bytes, 1 records lost)");
    CHECK_STR_EQ(gs.line[1], "segment seg-0000000000000007.hrs: bytes 3160-3475 skipped (316 "
                             "bytes, 1 records lost)");
    hr_buf_free(&b);

    /* A torn tail: one range at the end, exact, whether the payload or the header is cut. */
    thirty_records(&b);
    b.len -= 5;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 29);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 29 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 30 * R_SIZE - 5);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK(gs.g[0].exact);
    b.len = 29 * R_SIZE + 3; /* "HRS" */
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 29);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 29 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK(gs.g[0].exact);
    CHECK_STR_EQ(gs.line[0], "segment seg-0000000000000007.hrs: bytes 9164-9166 skipped (3 "
                             "bytes, 1 records lost)");
    /* Undamaged: nothing reported. */
    b.len = 30 * R_SIZE;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 30);
    CHECK_INT_EQ(gs.n, 0);
    CHECK_INT_EQ(tot.ranges, 0);
    hr_buf_free(&b);

    /* A crash right after a start leaves the newest segment empty: reported by the
     * read-only scan and by recovery, with the totals in the stats of both. */
    char *d = spool_dir("empty");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_NEVER};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    hr_spool_loc_t loc;
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, "x", 1, false, &loc), 0); /* live */
    close_spool(sp);
    char *empty = hr_xasprintf("%s/seg-%016llx.hrs", d, (unsigned long long)HR_LOC_SEG(loc) + 1);
    int fd = open(empty, O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0);
    close(fd);
    hr_spool_stats_t st;
    memset(&gs, 0, sizeof gs);
    CHECK_INT_EQ(hr_spool_scan_dir_gaps(d, on_rec, &s, on_gap, &gs, &st, err, sizeof err), 0);
    CHECK_INT_EQ(gs.n, 1);
    CHECK(gs.g[0].empty);
    CHECK_INT_EQ(gs.g[0].seg, HR_LOC_SEG(loc) + 1);
    CHECK_INT_EQ(st.empty_segments, 1);
    CHECK_INT_EQ(st.corrupt_ranges, 0);
    CHECK_INT_EQ(st.segments, 2);
    char want[80];
    snprintf(want, sizeof want, "segment seg-%016llx.hrs: empty (0 bytes, 0 records)",
             (unsigned long long)HR_LOC_SEG(loc) + 1);
    CHECK_STR_EQ(gs.line[0], want);
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, 1);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.empty_segments, 1);
    CHECK_INT_EQ(st.corrupt_ranges, 0);
    CHECK_INT_EQ(st.corrupt, 0);
    close_spool(sp);
    free(empty);
    free(d);
}

/* ACTION and DONE records are gathered and written at the next turn of the loop: a read of
 * one before that finds it all the same, and a failed write of the gathered records (here:
 * past RLIMIT_FSIZE, EFBIG) fails the commit waiting for them, counts a write error and
 * leaves no trace in the segment; a DONE record alone is written at the next turn of the
 * loop; the next records and commits work, and a reopen finds exactly the records that were
 * written. */
static void test_gathered_writes(void)
{
    char *d = spool_dir("gather");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_ALWAYS};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    hr_spool_loc_t loc[8];
    char p[100];
    memset(p, 'g', sizeof p);
    for (int i = 0; i < 3; i++)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[i]), 0);
    hr_buf_t b = HR_BUF_INIT;
    CHECK_INT_EQ(hr_spool_read(sp, loc[2], &b), HR_REC_ACTION); /* before the loop turned */
    CHECK_INT_EQ(b.len, sizeof p);
    hr_buf_free(&b);
    CHECK_INT_EQ(commit_wait(sp), 0);

    /* The segment may not grow: the next gathered records cannot be written. */
    char *path = newest_segment(d);
    CHECK(path != NULL);
    struct stat fst;
    CHECK_INT_EQ(stat(path, &fst), 0);
    struct rlimit old, lim;
    CHECK_INT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = (rlim_t)fst.st_size;
    CHECK_INT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    for (int i = 3; i < 6; i++)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[i]), 0);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_DONE, p, 8, false, &loc[6]), 0);
    int status = commit_wait(sp);
    CHECK_INT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    CHECK_INT_EQ(status, -EFBIG);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.write_errors, 1);
    CHECK(st.failing);
    struct stat fst2;
    CHECK_INT_EQ(stat(path, &fst2), 0);
    CHECK_INT_EQ(fst2.st_size, fst.st_size); /* nothing of them stayed */
    CHECK(hr_spool_read(sp, loc[4], &b) < 0);
    hr_buf_free(&b);
    for (int i = 3; i < 6; i++) /* what the outbox does for a refused push */
        hr_spool_unref(sp, loc[i]);

    /* A DONE record with no commit after it is written at the next turn of the loop. */
    CHECK_INT_EQ(stat(path, &fst), 0);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_DONE, p, 8, false, &loc[6]), 0);
    CHECK_INT_EQ(stat(path, &fst2), 0);
    CHECK_INT_EQ(fst2.st_size, fst.st_size); /* gathered */
    uv_run(loop, UV_RUN_NOWAIT);
    CHECK_INT_EQ(stat(path, &fst2), 0);
    CHECK_INT_EQ(fst2.st_size, fst.st_size + HR_SPOOL_HDR + 8);

    /* And the spool goes on. */
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, "after", 5, true, &loc[7]), 0);
    CHECK_INT_EQ(commit_wait(sp), 0);
    hr_spool_stats(sp, &st);
    CHECK(!st.failing);
    close_spool(sp);
    free(path);

    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, 5); /* 3 actions, the DONE, "after" */
    CHECK_STR_EQ(s.last, "after");
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.corrupt, 0);
    close_spool(sp);
    free(d);
}

/* A zero tail is the clean end of a segment: no range, no lost record, even when the last
 * record's own bytes end in zeros; a torn record before it is still one. */
static void test_zero_tail(void)
{
    gaps_seen_t gs;
    hr_spool_gaps_t tot;
    hr_buf_t b = HR_BUF_INIT;
    thirty_records(&b);
    unsigned char id[8] = {1, 0, 0, 0, 0, 0, 0, 0}; /* a DONE whose payload ends in zeros */
    hr_spool_frame(&b, HR_REC_DONE, id, sizeof id);
    size_t end = b.len;
    hr_buf_reserve(&b, 8192);
    memset(b.data + end, 0, 8192);
    b.len = end + 8192;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 31);
    CHECK_INT_EQ(gs.n, 0);
    CHECK_INT_EQ(tot.ranges, 0);

    /* Only zeros: nothing, and nothing lost. */
    hr_buf_t z = HR_BUF_INIT;
    hr_buf_reserve(&z, 4096);
    memset(z.data, 0, 4096);
    z.len = 4096;
    CHECK_INT_EQ(parse7(&z, &gs, &tot), 0);
    CHECK_INT_EQ(gs.n, 0);
    hr_buf_free(&z);

    /* The DONE torn (its payload never written: zeros, as in a prepared segment): one range,
     * the record as its frame gives it, exactly 1 record lost. */
    b.data[end - 8] = 0;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 30);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 30 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 30 * R_SIZE + HR_SPOOL_HDR + 8);
    CHECK(gs.g[0].exact);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK_INT_EQ(tot.records, 1);

    /* A record torn in the middle of its payload, then zeros. */
    b.len = 30 * R_SIZE;
    memset(b.data + 29 * R_SIZE + 100, 0, R_SIZE - 100);
    hr_buf_reserve(&b, 8192);
    memset(b.data + b.len, 0, 8192);
    b.len += 8192;
    CHECK_INT_EQ(parse7(&b, &gs, &tot), 29);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].start, 29 * R_SIZE);
    CHECK_INT_EQ(gs.g[0].end, 30 * R_SIZE);
    CHECK(gs.g[0].exact);
    CHECK_INT_EQ(gs.g[0].records, 1);
    hr_buf_free(&b);
}

/* Run the loop until the preparation under way ends: a segment is ready, or one more
 * preparation failed (an earlier failure does not count: the loop had not run since). */
static void wait_prepared(hr_spool_t *sp)
{
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    uint64_t errors = st.prep_errors;
    while (!st.next_prepared && st.prep_errors == errors) {
        uv_run(loop, UV_RUN_ONCE); /* the preparation's completion wakes the loop */
        hr_spool_stats(sp, &st);
    }
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* How many prep-*.tmp files are in d. */
static int prep_files(const char *d)
{
    char *cmd = hr_xasprintf("exit $(ls '%s' | grep -c '^prep-.*\\.tmp$')", d);
    int rc = system(cmd);
    free(cmd);
    return WEXITSTATUS(rc);
}

/* Rotation goes onto the segment prepared in the threadpool (zeros to segment_bytes, under a
 * temporary name until then); bytes counts the records, disk_bytes the files. What a crash
 * leaves (a copy of the folder while the spool is open) recovers every record with no range
 * reported; a torn last record before the zeros is reported as one; a clean close cuts the
 * zeros off and removes the prepared file nobody used. */
static void test_prepared_segments(void)
{
    char *d = spool_dir("prep");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_ALWAYS, .segment_bytes = 4096};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK(!st.next_prepared); /* nothing is prepared before the first append */
    CHECK_INT_EQ(prep_files(d), 0);
    char p[200];
    memset(p, 'p', sizeof p);
    hr_spool_loc_t loc[64];
    int n = 0;
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    wait_prepared(sp);
    hr_spool_stats(sp, &st);
    CHECK(st.next_prepared);
    CHECK_INT_EQ(st.prep_errors, 0);
    CHECK_INT_EQ(prep_files(d), 1);
    CHECK_INT_EQ(st.bytes, HR_SPOOL_HDR + sizeof p);
    CHECK_INT_EQ(st.disk_bytes, st.bytes + 4096);

    /* Fill the first segment (it grows by appends) and go past it. */
    uint32_t first = HR_LOC_SEG(loc[0]);
    while (n < 64 && HR_LOC_SEG(loc[n - 1]) == first)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    CHECK_INT_EQ(commit_wait(sp), 0);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.prepared, 1);
    CHECK_INT_EQ(st.segments, 2);
    char *second = hr_xasprintf("%s/seg-%016llx.hrs", d, (unsigned long long)first + 1);
    CHECK_INT_EQ(file_size(second), 4096); /* prepared: the records overwrite its zeros */
    CHECK_INT_EQ(st.bytes, (uint64_t)n * (HR_SPOOL_HDR + sizeof p));
    /* The second segment's first append asked for the next one: wait for it, so that the
     * figures below do not depend on when it is ready. */
    wait_prepared(sp);
    hr_spool_stats(sp, &st);
    uint64_t first_bytes = (uint64_t)(n - 1) * (HR_SPOOL_HDR + sizeof p);
    CHECK_INT_EQ(st.disk_bytes, first_bytes + 4096 + 4096);
    for (int i = 0; i < 3; i++)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    CHECK_INT_EQ(commit_wait(sp), 0);
    CHECK_INT_EQ(file_size(second), 4096);
    int want = n;

    /* A crash now: the copy holds the second segment with its zero tail. */
    char *crash = hr_xasprintf("%s/prep-crash", dir), *torn = hr_xasprintf("%s/prep-torn", dir);
    char *cmd = hr_xasprintf("cp -a '%s' '%s' && cp -a '%s' '%s'", d, crash, d, torn);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    uint64_t rec_bytes = (uint64_t)want * (HR_SPOOL_HDR + sizeof p);
    /* The read-only scan (hookrouter spool): every record, no range, the zeros not counted in
     * bytes but in disk_bytes (the prepared file is no segment). */
    gaps_seen_t gs = {0};
    memset(&s, 0, sizeof s);
    CHECK_INT_EQ(hr_spool_scan_dir_gaps(crash, on_rec, &s, on_gap, &gs, &st, err, sizeof err), 0);
    CHECK_INT_EQ(s.n, want);
    CHECK_INT_EQ(gs.n, 0);
    CHECK_INT_EQ(st.corrupt_ranges, 0);
    CHECK_INT_EQ(st.bytes, rec_bytes);
    CHECK_INT_EQ(st.disk_bytes, first_bytes + 4096);
    /* Recovery: the same, and the prepared file the crash left is deleted. */
    hr_spool_opts_t oc = o;
    oc.dir = crash;
    memset(&s, 0, sizeof s);
    hr_spool_t *sc = hr_spool_open(loop, &oc, on_rec, &s, err, sizeof err);
    CHECK(sc != NULL);
    CHECK_INT_EQ(s.n, want);
    hr_spool_stats(sc, &st);
    CHECK_INT_EQ(st.corrupt, 0);
    CHECK_INT_EQ(st.corrupt_ranges, 0);
    CHECK_INT_EQ(st.empty_segments, 0);
    CHECK_INT_EQ(st.bytes, rec_bytes);
    CHECK_INT_EQ(prep_files(crash), 0);
    close_spool(sc);

    /* The last record torn: its last bytes zeros, like the tail after it. */
    char *tseg = hr_xasprintf("%s/seg-%016llx.hrs", torn, (unsigned long long)first + 1);
    tear_last_record(tseg, 3);
    CHECK_INT_EQ(file_size(tseg), 4096);
    memset(&gs, 0, sizeof gs);
    memset(&s, 0, sizeof s);
    CHECK_INT_EQ(hr_spool_scan_dir_gaps(torn, on_rec, &s, on_gap, &gs, &st, err, sizeof err), 0);
    CHECK_INT_EQ(s.n, want - 1);
    CHECK_INT_EQ(gs.n, 1);
    CHECK_INT_EQ(gs.g[0].seg, first + 1);
    CHECK_INT_EQ(gs.g[0].start, 3 * (HR_SPOOL_HDR + sizeof p));
    CHECK(gs.g[0].exact);
    CHECK_INT_EQ(gs.g[0].records, 1);
    CHECK_INT_EQ(st.corrupt, 1);
    hr_spool_opts_t ot = o;
    ot.dir = torn;
    memset(&s, 0, sizeof s);
    sc = hr_spool_open(loop, &ot, on_rec, &s, err, sizeof err);
    CHECK(sc != NULL);
    CHECK_INT_EQ(s.n, want - 1);
    hr_spool_stats(sc, &st);
    CHECK_INT_EQ(st.corrupt, 1);
    CHECK_INT_EQ(st.corrupt_ranges, 1);
    close_spool(sc);

    /* A clean close with records still live: the zeros are cut off, the prepared file goes. */
    close_spool(sp);
    CHECK_INT_EQ(file_size(second), 4 * (HR_SPOOL_HDR + sizeof p));
    CHECK_INT_EQ(prep_files(d), 0);
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, want);
    close_spool(sp);
    free(tseg);
    free(second);
    free(crash);
    free(torn);
    free(d);
}

/* A preparation that fails (here: past RLIMIT_FSIZE, EFBIG; a full disk fails the same way)
 * is counted, and the spool goes on with segments that grow by appends: every record is
 * written, committed and recovered. The next preparation that works is used again. */
static void test_prep_fails(void)
{
    char *d = spool_dir("prepfail");
    char err[256];
    hr_spool_opts_t o = {.dir = d, .fsync = HR_FSYNC_ALWAYS, .segment_bytes = 8192};
    seen_t s = {0};
    hr_spool_t *sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    char p[200];
    memset(p, 'f', sizeof p);
    hr_spool_loc_t loc[128];
    int n = 0;
    struct rlimit old, lim;
    CHECK_INT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 4096; /* below segment_bytes: the zeros cannot be written */
    CHECK_INT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    wait_prepared(sp);
    CHECK_INT_EQ(commit_wait(sp), 0);
    CHECK_INT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    hr_spool_stats_t st;
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.prep_errors, 1);
    CHECK(!st.next_prepared);
    CHECK(!st.failing); /* the records are fine */
    CHECK_INT_EQ(st.write_errors, 0);
    CHECK_INT_EQ(prep_files(d), 0); /* the half-made file is deleted */

    /* Past the first segment: the next one is a plain file (nothing was prepared). */
    uint32_t first = HR_LOC_SEG(loc[0]);
    while (n < 128 && HR_LOC_SEG(loc[n - 1]) == first)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    CHECK_INT_EQ(commit_wait(sp), 0);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.prepared, 0);
    char *second = hr_xasprintf("%s/seg-%016llx.hrs", d, (unsigned long long)first + 1);
    CHECK_INT_EQ(file_size(second), HR_SPOOL_HDR + sizeof p);
    /* Its first append asked for a preparation again, which works now: the third segment is
     * prepared. */
    wait_prepared(sp);
    hr_spool_stats(sp, &st);
    CHECK(st.next_prepared);
    CHECK_INT_EQ(st.prep_errors, 1);
    while (n < 128 && HR_LOC_SEG(loc[n - 1]) == first + 1)
        CHECK_INT_EQ(hr_spool_append(sp, HR_REC_ACTION, p, sizeof p, true, &loc[n++]), 0);
    CHECK_INT_EQ(commit_wait(sp), 0);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.prepared, 1);
    int want = n;
    close_spool(sp);
    memset(&s, 0, sizeof s);
    sp = hr_spool_open(loop, &o, on_rec, &s, err, sizeof err);
    CHECK(sp != NULL);
    CHECK_INT_EQ(s.n, want);
    hr_spool_stats(sp, &st);
    CHECK_INT_EQ(st.corrupt, 0);
    close_spool(sp);
    free(second);
    free(d);
}

int main(void)
{
    hr_log_set_level(HR_LOG_ERROR);
    snprintf(dir, sizeof dir, "/tmp/hr_test_spool.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    loop = hr_xmalloc(sizeof *loop);
    uv_loop_init(loop);
    test_codec();
    test_append_recover();
    test_damage();
    test_segments_deleted();
    test_group_commit();
    test_gathered_writes();
    test_compaction_pieces();
    test_recovery_report();
    test_zero_tail();
    test_prepared_segments();
    test_prep_fails();
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    free(loop);
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_spool");
}
