/* Unit tests for spool compaction (src/outbox_compact.c + src/spool.c): one long-retrying
 * forward among many finished actions must not pin old segments. The forward goes to a closed
 * port on 127.0.0.1 (connection refused); the finished actions are file writes. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "spool_util.h"
#include "hr/log.h"
#include "hr/outbox.h"
#include "peer.h"

static uv_loop_t *loop;
static char dir[64];
static char dlpath[128];
static int dead_port;

/* ---- Helpers ------------------------------------------------------------------------- */

static hr_action_t *forward(const char *id, uint32_t max_attempts)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    snprintf(a->event_id, sizeof a->event_id, "%s", id);
    a->event_type = hr_xstrdup("checkout.completed");
    a->store = hr_xstrdup("7");
    a->name = hr_xstrdup("pos");
    a->accepted_ms = hr_wall_ms();
    a->method = hr_xstrdup("POST");
    a->url = hr_xasprintf("http://127.0.0.1:%d/hook", dead_port);
    a->body = hr_xstrdup("{\"x\":1}");
    a->body_len = strlen(a->body);
    a->body_is_json = true;
    a->timeout_ms = 2000;
    a->max_attempts = max_attempts;
    return a;
}

static hr_action_t *write_action(int i)
{
    hr_action_t *a = hr_action_new(HR_ACTION_WRITE);
    snprintf(a->event_id, sizeof a->event_id, "w-%d", i);
    a->name = hr_xstrdup("audit");
    a->file_path = hr_xasprintf("%s/audit.jsonl", dir);
    a->body = hr_xasprintf("{\"n\":%d,\"pad\":\"%0300d\"}", i, 0);
    a->body_len = strlen(a->body);
    return a;
}

/* An outbox on spool folder sd: target "pos" with retry[0..n), segments of seg_bytes. */
static hr_outbox_t *mk(const char *sd, const uint64_t *retry, size_t n, uint64_t seg_bytes,
                       uint64_t max_bytes, hr_files_t *files, bool manual)
{
    hr_outbox_target_t t = {
        .name = "pos", .retry_ms = retry, .nretry = n, .circuit_failures = 1000};
    hr_outbox_opts_t opts = {
        .dead_letters = dlpath,
        .spool = {.dir = sd, .segment_bytes = seg_bytes, .max_bytes = max_bytes},
        .targets = &t,
        .ntargets = 1,
        .manual_compaction = manual};
    char err[256] = "";
    hr_outbox_t *o = hr_outbox_open(loop, files, &opts, err, sizeof err);
    if (!o) fprintf(stderr, "hr_outbox_open: %s\n", err);
    CHECK(o != NULL);
    return o;
}

static int push_status, push_done;

static void on_pushed(void *arg, int status)
{
    push_status = status;
    push_done++;
}

/* Push list and run the loop until it is durable; returns the push status. */
static int push(hr_outbox_t *o, hr_action_t *list)
{
    int d = push_done;
    int rc = hr_outbox_push(o, list, on_pushed, NULL);
    if (rc < 0) return rc;
    while (push_done == d)
        uv_run(loop, UV_RUN_ONCE);
    return push_status;
}

static hr_outbox_stats_t stats(hr_outbox_t *o)
{
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    return st;
}

/* The pending set of an outbox. */
typedef struct {
    int n;
    hr_outbox_pending_t v[8];
} pend_t;

static void on_pending(void *arg, const hr_outbox_pending_t *p)
{
    pend_t *ps = arg;
    if (ps->n < 8) ps->v[ps->n] = *p;
    ps->n++;
}

static pend_t pending_set(hr_outbox_t *o)
{
    pend_t ps = {0};
    hr_outbox_each_pending(o, on_pending, &ps);
    return ps;
}

static bool seg_exists(const char *sd, unsigned seq)
{
    char *p = hr_xasprintf("%s/seg-%016x.hrs", sd, seq);
    struct stat st;
    bool ok = stat(p, &st) == 0;
    free(p);
    return ok;
}

static void run_ms(uint64_t ms)
{
    uint64_t end = uv_now(loop) + ms;
    while (uv_now(loop) < end) {
        uv_update_time(loop);
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
}

/* One pending forward (attempt 1 failed, the next an hour away) in the first segment, then
 * enough finished writes to fill several segments: the first segment is a candidate.
 * Returns the pending entry. */
static hr_outbox_pending_t pin_and_fill(hr_outbox_t *o, int writes)
{
    CHECK_INT_EQ(push(o, forward("ev-pinned", 10)), 0);
    for (int i = 0; i < 500 && pending_set(o).v[0].attempts < 1; i++)
        run_ms(2);
    for (int i = 0; i < writes; i++)
        CHECK_INT_EQ(push(o, write_action(i)), 0);
    pend_t ps = pending_set(o);
    CHECK_INT_EQ(ps.n, 1);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(HR_LOC_SEG(ps.v[0].loc), 1);
    CHECK(ps.v[0].next_due_ms > hr_wall_ms() + 600000);
    return ps.v[0];
}

/* ---- Tests --------------------------------------------------------------------------- */

static const uint64_t HOUR[] = {0, 3600000};

/* Many finished actions and one pending in the oldest segment: it is compacted and deleted;
 * after a restart the pending set is exactly that action, with its attempts and due time. */
static void test_compact_and_recover(hr_files_t *files)
{
    char *sd = hr_xasprintf("%s/s1", dir);
    hr_outbox_t *o = mk(sd, HOUR, 2, 4096, 0, files, true);
    hr_outbox_pending_t before = pin_and_fill(o, 40);
    CHECK(seg_exists(sd, 1));
    CHECK_INT_EQ(hr_outbox_compact(o), 1);
    for (int i = 0; i < 1000 && stats(o).compactions == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(stats(o).compactions, 1);
    CHECK(!seg_exists(sd, 1));
    pend_t ps = pending_set(o);
    CHECK_INT_EQ(ps.n, 1);
    CHECK(HR_LOC_SEG(ps.v[0].loc) > 1);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(ps.v[0].next_due_ms, before.next_due_ms);
    /* Only the segment holding the copy (and the one being written) are left. */
    CHECK(stats(o).spool.segments <= 2);
    shutdown_outbox(loop, o);

    o = mk(sd, HOUR, 2, 4096, 0, files, true);
    ps = pending_set(o);
    CHECK_INT_EQ(stats(o).recovered, 1);
    CHECK_INT_EQ(ps.n, 1);
    CHECK_INT_EQ(ps.v[0].id, before.id);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(ps.v[0].next_due_ms, before.next_due_ms);
    /* And a second compaction (a COPY of a COPY) keeps it too. */
    for (int i = 0; i < 40; i++)
        CHECK_INT_EQ(push(o, write_action(100 + i)), 0);
    CHECK_INT_EQ(hr_outbox_compact(o), 1);
    for (int i = 0; i < 1000 && stats(o).compactions == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(stats(o).compactions, 1);
    shutdown_outbox(loop, o);
    o = mk(sd, HOUR, 2, 4096, 0, files, true);
    ps = pending_set(o);
    CHECK_INT_EQ(ps.n, 1);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(ps.v[0].next_due_ms, before.next_due_ms);
    shutdown_outbox(loop, o);
    free(sd);
}

/* A crash between the copies and the deletion: both records are on disk; recovery yields
 * one pending action with the latest state, and the old segment then goes. A crash before
 * the copy was whole (torn) recovers from the old record. */
static void test_crash_mid_compaction(hr_files_t *files)
{
    char *sd = hr_xasprintf("%s/s2", dir);
    char *snap = hr_xasprintf("%s/s2-snap", dir);
    char *torn = hr_xasprintf("%s/s2-torn", dir);
    hr_outbox_t *o = mk(sd, HOUR, 2, 4096, 0, files, true);
    /* Copy the files right after the copies were appended, before their sync (and so the
     * deletion) ran: what a crash at that point leaves. */
    hr_outbox_pending_t before = pin_and_fill(o, 40);
    CHECK_INT_EQ(hr_outbox_compact(o), 1);
    CHECK_INT_EQ(stats(o).compactions, 0);
    char *cmd = hr_xasprintf("cp -a '%s' '%s' && cp -a '%s' '%s'", sd, snap, sd, torn);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    for (int i = 0; i < 1000 && stats(o).compactions == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    shutdown_outbox(loop, o);
    CHECK(seg_exists(snap, 1));

    o = mk(snap, HOUR, 2, 4096, 0, files, true);
    pend_t ps = pending_set(o);
    CHECK_INT_EQ(ps.n, 1);
    CHECK_INT_EQ(stats(o).recovered, 1);
    CHECK_INT_EQ(ps.v[0].id, before.id);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(ps.v[0].next_due_ms, before.next_due_ms);
    CHECK(HR_LOC_SEG(ps.v[0].loc) > 1);
    CHECK_INT_EQ(hr_outbox_compact(o), 0);
    CHECK(!seg_exists(snap, 1)); /* nothing references it any more: deleted at start */
    CHECK_INT_EQ(stats(o).pending, 1);
    shutdown_outbox(loop, o);

    /* Torn copy: the newest segment lost the last bytes of its last record (the copy). */
    char *last = newest_segment(torn);
    CHECK(last != NULL);
    if (last) tear_last_record(last, 3);
    free(last);
    o = mk(torn, HOUR, 2, 4096, 0, files, true);
    ps = pending_set(o);
    CHECK_INT_EQ(ps.n, 1);
    CHECK_INT_EQ(ps.v[0].id, before.id);
    CHECK_INT_EQ(ps.v[0].attempts, 1);
    CHECK_INT_EQ(ps.v[0].next_due_ms, before.next_due_ms);
    CHECK_INT_EQ(HR_LOC_SEG(ps.v[0].loc), 1);
    CHECK_INT_EQ(stats(o).spool.corrupt, 1);
    shutdown_outbox(loop, o);
    free(sd);
    free(snap);
    free(torn);
}

/* A dead letter after a compaction still lists every attempt (the ones before it come from
 * the copy, the later ones from STATE records chained to it). */
static void test_dead_letter_keeps_attempt_log(hr_files_t *files)
{
    char *sd = hr_xasprintf("%s/s3", dir);
    static const uint64_t retry[] = {0, 1500};
    hr_outbox_t *o = mk(sd, retry, 2, 4096, 0, files, true);
    CHECK_INT_EQ(push(o, forward("ev-dl", 2)), 0);
    for (int i = 0; i < 500 && pending_set(o).v[0].attempts < 1; i++)
        run_ms(2);
    for (int i = 0; i < 40; i++)
        CHECK_INT_EQ(push(o, write_action(i)), 0);
    CHECK_INT_EQ(hr_outbox_compact(o), 1);
    for (int i = 0; i < 1000 && stats(o).compactions == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(stats(o).compactions, 1);
    CHECK(!seg_exists(sd, 1));
    for (int i = 0; i < 5000 && stats(o).dead == 0; i++)
        run_ms(2);
    CHECK_INT_EQ(stats(o).dead, 1);
    FILE *fp = fopen(dlpath, "r");
    CHECK(fp != NULL);
    char line[16384] = "";
    if (fp) {
        CHECK(fgets(line, sizeof line, fp) != NULL);
        fclose(fp);
    }
    cJSON *j = cJSON_Parse(line);
    CHECK(j != NULL);
    cJSON *log = cJSON_GetObjectItem(j, "attempt_log");
    CHECK_INT_EQ(cJSON_GetArraySize(log), 2);
    for (int i = 0; i < cJSON_GetArraySize(log); i++) {
        cJSON *e = cJSON_GetArrayItem(log, i);
        CHECK_INT_EQ(cJSON_GetObjectItem(e, "attempt")->valueint, i + 1);
        CHECK(cJSON_IsString(cJSON_GetObjectItem(e, "error")));
        CHECK(cJSON_IsString(cJSON_GetObjectItem(e, "at")));
    }
    cJSON_Delete(j);
    shutdown_outbox(loop, o);
    free(sd);
}

/* max_spool_bytes with a pinned backlog: pushes keep being accepted, the spool stays under
 * its limit because compaction frees the segments the pending action would pin. */
static void test_full_spool_compacts(hr_files_t *files)
{
    char *sd = hr_xasprintf("%s/s4", dir);
    const uint64_t max = 16384; /* segments of max / 8 = 2 KiB */
    /* Reached: with steps only on demand, the pinned spool fills up and refuses; one step
     * frees it and pushes are taken again. */
    hr_outbox_t *o = mk(sd, HOUR, 2, 0, max, files, true);
    CHECK_INT_EQ(push(o, forward("ev-full", 10)), 0);
    int n = 0, rc = 0;
    while (n < 200 && (rc = push(o, write_action(n))) == 0)
        n++;
    CHECK_INT_EQ(rc, -ENOSPC);
    CHECK(n > 10);
    CHECK_INT_EQ(hr_outbox_compact(o), 1);
    for (int i = 0; i < 1000 && stats(o).compactions == 0; i++)
        uv_run(loop, UV_RUN_ONCE);
    CHECK_INT_EQ(stats(o).compactions, 1);
    CHECK(stats(o).spool.bytes < max / 2);
    CHECK_INT_EQ(push(o, write_action(n)), 0);
    CHECK_INT_EQ(stats(o).pending, 1);
    shutdown_outbox(loop, o);

    /* With the automatic steps, a long stream never reaches the limit. */
    o = mk(sd, HOUR, 2, 0, max, files, false);
    CHECK_INT_EQ(stats(o).recovered, 1);
    int refused = 0, ok = 0;
    uint64_t peak = 0;
    for (int i = 0; i < 300 && refused < 50; i++) {
        rc = push(o, write_action(i));
        if (rc == 0) {
            ok++;
        } else {
            CHECK_INT_EQ(rc, -ENOSPC);
            refused++;
            run_ms(20); /* the compaction a full push kicked */
            i--;
        }
        uint64_t b = stats(o).spool.bytes;
        if (b > peak) peak = b;
    }
    CHECK_INT_EQ(ok, 300);
    CHECK_INT_EQ(refused, 0);
    CHECK(peak <= max + 4096); /* copies may go past the limit by a little */
    CHECK(stats(o).compactions >= 5);
    CHECK_INT_EQ(stats(o).pending, 1);
    fprintf(stderr,
            "  full spool: 300 pushes, %d refused and retried, peak %llu bytes, %llu "
            "compactions\n",
            refused, (unsigned long long)peak, (unsigned long long)stats(o).compactions);
    shutdown_outbox(loop, o);
    free(sd);
}

int main(void)
{
    hr_log_set_level(HR_LOG_WARN);
    snprintf(dir, sizeof dir, "/tmp/hr_test_compact.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(dlpath, sizeof dlpath, "%s/dead.jsonl", dir);
    loop = hr_xmalloc(sizeof *loop);
    uv_loop_init(loop);
    dead_port = peer_closed_port(); /* nobody listens: connection refused */
    hr_files_t *files = hr_files_create();

    test_compact_and_recover(files);
    test_crash_mid_compaction(files);
    test_dead_letter_keeps_attempt_log(files);
    test_full_spool_compacts(files);

    hr_files_destroy(files);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    free(loop);
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_compact");
}
