/* Unit tests for src/outbox.c against the loopback peer (peer.h): each request takes the next
 * scripted answer (status, optional Retry-After, or silence); 200 once the script is used up. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "spool_util.h"
#include "hr/log.h"
#include "hr/outbox.h"
#include "peer.h"

/* ---- Scripted server (peer.h) ------------------------------------------------------- */

#define MAX_SCRIPT 16

static peer_t *srv;
static uv_loop_t *loop;

/* Answer the next n requests with a[0..n), then 200; the request count starts again at 0. */
static void script(int n, const peer_answer_t *a)
{
    peer_script(srv, (size_t)n, a);
}

/* uv_now when request i (since the last script) arrived. */
static uint64_t at(int i)
{
    const peer_req_t *r = peer_req(srv, i);
    CHECK(r != NULL);
    return r ? r->at_ms : 0;
}

/* ---- Helpers ------------------------------------------------------------------------- */

static char dir[64];
static char dlpath[128];

static hr_action_t *forward(const char *id, int port, uint32_t max_attempts)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    snprintf(a->event_id, sizeof a->event_id, "%s", id);
    a->event_type = hr_xstrdup("checkout.completed");
    a->store = hr_xstrdup("7");
    a->name = hr_xstrdup("pos");
    a->accepted_ms = hr_wall_ms();
    a->method = hr_xstrdup("POST");
    a->url = hr_xasprintf("http://127.0.0.1:%d/hook", port);
    hr_action_add_header(a, "Content-Type", "application/json");
    a->body = hr_xstrdup("{\"x\":1}");
    a->body_len = strlen(a->body);
    a->body_is_json = true;
    a->timeout_ms = 2000;
    a->max_attempts = max_attempts;
    return a;
}

/* An outbox on its own spool folder (or on spool when given), target "pos" with the retry
 * schedule retry[0..n) (the circuit breaker out of the way). */
static hr_outbox_t *mk_at(hr_files_t *files, const char *spool, const uint64_t *retry, size_t n)
{
    static int seq;
    char *sd = spool ? hr_xstrdup(spool) : hr_xasprintf("%s/spool%d", dir, seq++);
    hr_outbox_target_t t = {
        .name = "pos", .retry_ms = retry, .nretry = n, .circuit_failures = 1000};
    hr_outbox_opts_t opts = {
        .dead_letters = dlpath, .spool = {.dir = sd}, .targets = &t, .ntargets = 1};
    char err[256] = "";
    hr_outbox_t *o = hr_outbox_open(loop, files, &opts, err, sizeof err);
    if (!o) fprintf(stderr, "hr_outbox_open: %s\n", err);
    CHECK(o != NULL);
    free(sd);
    return o;
}

#define mk(files, ...)                                                                             \
    mk_at(files, NULL, (const uint64_t[]){__VA_ARGS__},                                            \
          sizeof((const uint64_t[]){__VA_ARGS__}) / sizeof(uint64_t))

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
    CHECK_INT_EQ(push_done, d); /* never from inside push */
    while (push_done == d)
        uv_run(loop, UV_RUN_ONCE);
    return push_status;
}

static uint64_t pending(hr_outbox_t *o)
{
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    return st.pending;
}

static void run_until_idle(hr_outbox_t *o)
{
    while (pending(o) > 0)
        uv_run(loop, UV_RUN_ONCE);
}

static int flag_drained, flag_closed;

static void on_drained(void *arg)
{
    flag_drained++;
}

static void on_closed(void *arg)
{
    flag_closed++;
}

/* Number of lines in the dead-letter file; *last gets the last one parsed (caller frees). */
static int dead_lines(cJSON **last)
{
    *last = NULL;
    FILE *fp = fopen(dlpath, "r");
    if (!fp) return 0;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof line, fp)) {
        n++;
        cJSON_Delete(*last);
        *last = cJSON_Parse(line);
        CHECK(*last != NULL);
    }
    fclose(fp);
    return n;
}

static const char *jstr(cJSON *j, const char *k)
{
    cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- Tests --------------------------------------------------------------------------- */

static void test_retry_then_delivered(hr_files_t *files)
{
    hr_outbox_t *o = mk(files, 0, 10, 20);
    script(3, (peer_answer_t[]){{.status = 500}, {.status = 500}, {.status = 200}});
    CHECK_INT_EQ(push(o, forward("ev-1", peer_port(srv), 5)), 0);
    run_until_idle(o);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(peer_requests(srv), 3);
    CHECK_INT_EQ(st.accepted, 1);
    CHECK_INT_EQ(st.delivered, 1);
    CHECK_INT_EQ(st.retried, 2);
    CHECK_INT_EQ(st.dead, 0);
    CHECK_INT_EQ(st.pending, 0);
    /* waits 10 then 20 ms, jittered +-20%. */
    CHECK(at(1) - at(0) >= 7);
    CHECK(at(2) - at(1) >= 15);
    /* Every attempt carries the action's method, path, headers and body. */
    for (int i = 0; i < 3; i++) {
        const peer_req_t *r = peer_req(srv, i);
        CHECK(r != NULL);
        if (!r) continue;
        CHECK_STR_EQ(r->method, "POST");
        CHECK_STR_EQ(r->path, "/hook");
        CHECK(strcasestr(r->raw, "\r\nContent-Type: application/json\r\n") != NULL);
        CHECK_INT_EQ(r->body_len, strlen("{\"x\":1}"));
        CHECK(memcmp(r->body, "{\"x\":1}", r->body_len) == 0);
    }
    cJSON *j;
    CHECK_INT_EQ(dead_lines(&j), 0);
    cJSON_Delete(j);
    shutdown_outbox(loop, o);
}

static void test_rejected(hr_files_t *files)
{
    hr_outbox_t *o = mk(files, 0, 10);
    script(1, (peer_answer_t[]){{.status = 400}});
    cJSON *j;
    int before = dead_lines(&j);
    cJSON_Delete(j);
    push(o, forward("ev-400", peer_port(srv), 5));
    run_until_idle(o);
    CHECK_INT_EQ(peer_requests(srv), 1);
    CHECK_INT_EQ(dead_lines(&j), before + 1);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(jstr(cJSON_GetObjectItem(j, "event"), "id"), "ev-400");
        CHECK_STR_EQ(jstr(cJSON_GetObjectItem(j, "event"), "type"), "checkout.completed");
        CHECK_STR_EQ(jstr(cJSON_GetObjectItem(j, "event"), "store"), "7");
        CHECK(jstr(cJSON_GetObjectItem(j, "event"), "accepted_at") != NULL);
        CHECK(jstr(j, "dead_at") != NULL);
        CHECK_STR_EQ(jstr(j, "reason"), "rejected");
        CHECK_STR_EQ(jstr(j, "action"), "forward");
        CHECK_STR_EQ(jstr(j, "target"), "pos");
        CHECK_STR_EQ(jstr(j, "method"), "POST");
        CHECK(strstr(jstr(j, "url"), "/hook") != NULL);
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "attempts")->valueint, 1);
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "last_status")->valueint, 400);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "last_error")));
        CHECK_INT_EQ(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "body"), "x")->valueint, 1);
    }
    cJSON_Delete(j);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.dead, 1);
    CHECK_INT_EQ(st.retried, 0);
    CHECK_INT_EQ(st.delivered, 0);
    shutdown_outbox(loop, o);
}

static void test_refused(hr_files_t *files)
{
    int port = peer_closed_port();

    hr_outbox_t *o = mk(files, 0, 5, 10, 20);
    push(o, forward("ev-refused", port, 3));
    run_until_idle(o);
    cJSON *j;
    dead_lines(&j);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(jstr(cJSON_GetObjectItem(j, "event"), "id"), "ev-refused");
        CHECK_STR_EQ(jstr(j, "reason"), "attempts exhausted");
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "attempts")->valueint, 3);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "last_status")));
        const char *e = jstr(j, "last_error");
        CHECK(e && strstr(e, "refused") != NULL);
    }
    cJSON_Delete(j);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.retried, 2);
    CHECK_INT_EQ(st.dead, 1);
    shutdown_outbox(loop, o);
}

static void test_retry_after(hr_files_t *files)
{
    /* Retry-After: 0 beats a 2 s backoff. */
    hr_outbox_t *o = mk(files, 0, 2000);
    script(1, (peer_answer_t[]){{.status = 429, .retry_after = "0"}});
    push(o, forward("ev-429-0", peer_port(srv), 3));
    run_until_idle(o);
    CHECK_INT_EQ(peer_requests(srv), 2);
    CHECK(at(1) - at(0) < 500);
    shutdown_outbox(loop, o);

    /* Retry-After: 1 beats a 10 ms backoff. */
    o = mk(files, 0, 10);
    script(1, (peer_answer_t[]){{.status = 503, .retry_after = "1"}});
    push(o, forward("ev-503-1", peer_port(srv), 3));
    run_until_idle(o);
    CHECK_INT_EQ(peer_requests(srv), 2);
    CHECK(at(1) - at(0) >= 990);
    CHECK(at(1) - at(0) < 1500);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.delivered, 1);
    shutdown_outbox(loop, o);
}

/* Transport failures are failed attempts too: an answer later than the action's timeout, and
 * a connection closed in the middle of the answer, are each retried; the third attempt is
 * delivered. */
static void test_timeout_and_cut(hr_files_t *files)
{
    hr_outbox_t *o = mk(files, 0, 10);
    script(2, (peer_answer_t[]){{.status = 200, .delay_ms = 400}, {.status = 200, .cut = 12}});
    hr_action_t *a = forward("ev-slow", peer_port(srv), 5);
    a->timeout_ms = 100;
    push(o, a);
    run_until_idle(o);
    CHECK_INT_EQ(peer_requests(srv), 3);
    CHECK(at(1) - at(0) >= 90); /* the first attempt waited for its timeout */
    CHECK(at(1) - at(0) < 400); /* and not for the late answer */
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.retried, 2);
    CHECK_INT_EQ(st.delivered, 1);
    CHECK_INT_EQ(st.dead, 0);
    shutdown_outbox(loop, o);
}

static void test_write(hr_files_t *files)
{
    hr_outbox_t *o = mk(files, 0);
    hr_action_t *w1 = hr_action_new(HR_ACTION_WRITE);
    strcpy(w1->event_id, "ev-w");
    w1->name = hr_xstrdup("audit");
    w1->file_path = hr_xasprintf("%s/sub/audit.jsonl", dir);
    w1->body = hr_xstrdup("{\"line\":1}");
    w1->body_len = strlen(w1->body);
    hr_action_t *w2 = hr_action_new(HR_ACTION_WRITE);
    strcpy(w2->event_id, "ev-w2");
    w2->name = hr_xstrdup("bad");
    w2->file_path = hr_xasprintf("%s/sub/audit.jsonl/not-a-dir/x", dir);
    w2->body = hr_xstrdup("{\"line\":2}");
    w2->body_len = strlen(w2->body);
    w2->body_is_json = true;
    w1->next = w2;
    push(o, w1);
    char *path = hr_xasprintf("%s/sub/audit.jsonl", dir);
    FILE *fp = fopen(path, "r");
    CHECK(fp != NULL);
    if (fp) {
        char buf[256] = "";
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        buf[n] = '\0';
        CHECK_STR_EQ(buf, "{\"line\":1}\n");
        fclose(fp);
    }
    free(path);
    cJSON *j;
    dead_lines(&j);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(jstr(j, "action"), "write");
        CHECK_STR_EQ(jstr(j, "reason"), "write failed");
        CHECK_STR_EQ(jstr(j, "file"), "bad");
        CHECK_INT_EQ(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "record"), "line")->valueint, 2);
    }
    cJSON_Delete(j);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.accepted, 2);
    CHECK_INT_EQ(st.delivered, 1);
    CHECK_INT_EQ(st.dead, 1);
    CHECK_INT_EQ(st.pending, 0);
    shutdown_outbox(loop, o);
}

/* An outbox like mk() whose write actions wait 1 ms between attempts, at most tries. */
static hr_outbox_t *mk_writes(hr_files_t *files, const char *spool, uint32_t tries)
{
    static const uint64_t retry[] = {0, 1};
    hr_outbox_target_t t = {
        .name = "pos", .retry_ms = retry, .nretry = 1, .circuit_failures = 1000};
    hr_outbox_opts_t opts = {.dead_letters = dlpath,
                             .spool = {.dir = spool},
                             .targets = &t,
                             .ntargets = 1,
                             .writes = {.retry_ms = retry, .nretry = 2},
                             .write_attempts = tries};
    char err[256] = "";
    hr_outbox_t *o = hr_outbox_open(loop, files, &opts, err, sizeof err);
    if (!o) fprintf(stderr, "hr_outbox_open: %s\n", err);
    CHECK(o != NULL);
    return o;
}

static hr_action_t *write_action(const char *id, const char *path)
{
    hr_action_t *w = hr_action_new(HR_ACTION_WRITE);
    snprintf(w->event_id, sizeof w->event_id, "%s", id);
    w->name = hr_xstrdup("audit");
    w->file_path = hr_xstrdup(path);
    w->body = hr_xstrdup("{\"n\":1}");
    w->body_len = strlen(w->body);
    w->body_is_json = true;
    w->accepted_ms = hr_wall_ms();
    return w;
}

/* Regression (issue 9.1): a write that fails with ENOSPC (the file is a symlink to /dev/full)
 * is retried, kept in the spool, and delivered once the disk has room (the link is gone). */
static void test_write_retried(hr_files_t *files)
{
    char *spool = hr_xasprintf("%s/spool-wr", dir);
    char *path = hr_xasprintf("%s/full.jsonl", dir);
    CHECK_INT_EQ(symlink("/dev/full", path), 0);
    hr_outbox_t *o = mk_writes(files, spool, 100);
    cJSON *j;
    int before = dead_lines(&j);
    cJSON_Delete(j);
    push(o, write_action("ev-full", path));
    hr_outbox_stats_t st;
    do {
        uv_run(loop, UV_RUN_ONCE);
        hr_outbox_stats(o, &st);
    } while (st.retried < 2);
    CHECK_INT_EQ(st.pending, 1);
    CHECK_INT_EQ(st.dead, 0);
    /* A restart keeps it: it is in the spool with its attempts. */
    shutdown_outbox(loop, o);
    o = mk_writes(files, spool, 100);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.recovered, 1);
    CHECK_INT_EQ(unlink(path), 0); /* room again */
    run_until_idle(o);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.delivered, 1);
    CHECK_INT_EQ(st.dead, 0);
    CHECK_INT_EQ(dead_lines(&j), before);
    cJSON_Delete(j);
    FILE *fp = fopen(path, "r");
    CHECK(fp != NULL);
    if (fp) {
        char buf[64] = "";
        size_t n = fread(buf, 1, sizeof buf - 1, fp);
        buf[n] = '\0';
        CHECK_STR_EQ(buf, "{\"n\":1}\n");
        fclose(fp);
    }
    shutdown_outbox(loop, o);
    free(path);
    free(spool);
}

/* Regression (issue 9.1): a write failing on every attempt is dead-lettered after
 * write_attempts with every attempt logged, not at its first error. */
static void test_write_attempts_exhausted(hr_files_t *files)
{
    char *spool = hr_xasprintf("%s/spool-wx", dir);
    char *path = hr_xasprintf("%s/full2.jsonl", dir);
    CHECK_INT_EQ(symlink("/dev/full", path), 0);
    hr_outbox_t *o = mk_writes(files, spool, 3);
    cJSON *j;
    int before = dead_lines(&j);
    cJSON_Delete(j);
    push(o, write_action("ev-full2", path));
    run_until_idle(o);
    CHECK_INT_EQ(dead_lines(&j), before + 1);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(jstr(j, "reason"), "attempts exhausted");
        CHECK_STR_EQ(jstr(j, "action"), "write");
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "attempts")->valueint, 3);
        CHECK_INT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(j, "attempt_log")), 3);
        CHECK(jstr(j, "last_error") && strstr(jstr(j, "last_error"), "No space") != NULL);
    }
    cJSON_Delete(j);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.retried, 2);
    CHECK_INT_EQ(st.dead, 1);
    shutdown_outbox(loop, o);
    unlink(path);
    free(path);
    free(spool);
}

/* Regression (issue 9.2): a dead letter that cannot be written (the dead-letter file is a
 * symlink to /dev/full: ENOSPC) stays in the spool, across a restart too, and is written once
 * the file works again. */
static void test_deadletter_file_fails(hr_files_t *files)
{
    char *spool = hr_xasprintf("%s/spool-dlf", dir);
    char *dl = hr_xasprintf("%s/dl-full.jsonl", dir);
    CHECK_INT_EQ(symlink("/dev/full", dl), 0);
    hr_outbox_t *o = mk_at(files, spool, (const uint64_t[]){0}, 1);
    hr_outbox_set_dead_letters(o, dl);
    script(2, (peer_answer_t[]){{.status = 400}, {.status = 400}});
    push(o, forward("ev-dlf", peer_port(srv), 1));
    while (peer_requests(srv) < 1)
        uv_run(loop, UV_RUN_ONCE);
    uv_run(loop, UV_RUN_NOWAIT);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.pending, 1);
    CHECK_INT_EQ(st.dead, 0);
    shutdown_outbox(loop, o);
    o = mk_at(files, spool, (const uint64_t[]){0}, 1);
    hr_outbox_set_dead_letters(o, dl);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.recovered, 1);
    CHECK_INT_EQ(unlink(dl), 0); /* the dead-letter file works again */
    run_until_idle(o);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.dead, 1);
    FILE *fp = fopen(dl, "r");
    CHECK(fp != NULL);
    if (fp) {
        char line[8192] = "";
        CHECK(fgets(line, sizeof line, fp) != NULL);
        CHECK(strstr(line, "\"ev-dlf\"") != NULL);
        CHECK(strstr(line, "\"rejected\"") != NULL);
        fclose(fp);
    }
    shutdown_outbox(loop, o);
    free(dl);
    free(spool);
}

static void test_drain(hr_files_t *files)
{
    /* A retry far in the future is not waited for: it stays in the spool, not in dead letters,
     * and the next start has it with its attempt count. */
    char *sd = hr_xasprintf("%s/spool-drain", dir);
    const uint64_t slow[] = {0, 60000};
    hr_outbox_t *o = mk_at(files, sd, slow, 2);
    script(1, (peer_answer_t[]){{.status = 503}});
    cJSON *j;
    int dl_before = dead_lines(&j);
    cJSON_Delete(j);
    push(o, forward("ev-drain", peer_port(srv), 5));
    hr_outbox_stats_t st;
    do {
        uv_run(loop, UV_RUN_ONCE);
        hr_outbox_stats(o, &st);
    } while (st.retried == 0);
    CHECK_INT_EQ(st.pending, 1);
    uv_update_time(loop);
    uint64_t t0 = uv_now(loop);
    int d = flag_drained;
    hr_outbox_drain(o, 5000, on_drained, NULL);
    CHECK_INT_EQ(flag_drained, d); /* never inside drain */
    while (flag_drained == d)
        uv_run(loop, UV_RUN_ONCE);
    CHECK(uv_now(loop) - t0 < 1000);
    CHECK_INT_EQ(dead_lines(&j), dl_before);
    cJSON_Delete(j);

    /* Pushing after the drain still stores (the next start delivers it). */
    CHECK_INT_EQ(push(o, forward("ev-late", peer_port(srv), 5)), 0);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.accepted, 2);
    CHECK_INT_EQ(st.dead, 0);
    int c = flag_closed;
    hr_outbox_close(o, on_closed, NULL);
    while (flag_closed == c)
        uv_run(loop, UV_RUN_ONCE);

    /* The restart: both are pending; ev-late is delivered at once, ev-drain waits 60 s. */
    script(1, (peer_answer_t[]){{.status = 200}});
    o = mk_at(files, sd, slow, 2);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.recovered, 2);
    CHECK_INT_EQ(st.pending, 2);
    while (pending(o) > 1)
        uv_run(loop, UV_RUN_ONCE);
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.delivered, 1);
    CHECK_INT_EQ(st.pending, 1);
    shutdown_outbox(loop, o);

    /* An attempt in flight at the end of the grace period is cancelled and stays pending
     * (not counted as an attempt). */
    o = mk(files, 0, 10);
    script(1, (peer_answer_t[]){{.status = 0}});
    push(o, forward("ev-inflight", peer_port(srv), 5));
    while (peer_requests(srv) == 0)
        uv_run(loop, UV_RUN_ONCE);
    uv_update_time(loop);
    t0 = uv_now(loop);
    d = flag_drained;
    hr_outbox_drain(o, 100, on_drained, NULL);
    while (flag_drained == d)
        uv_run(loop, UV_RUN_ONCE);
    uint64_t el = uv_now(loop) - t0;
    CHECK(el >= 95 && el < 1000);
    CHECK_INT_EQ(dead_lines(&j), dl_before);
    cJSON_Delete(j);
    c = flag_closed;
    hr_outbox_close(o, on_closed, NULL);
    while (flag_closed == c)
        uv_run(loop, UV_RUN_ONCE);
    free(sd);
}

static void test_backoff_bounds(hr_files_t *files)
{
    /* Many actions against 500s with max_attempts 2: all dead-lettered, counters add up. */
    hr_outbox_t *o = mk(files, 0, 5, 10);
    peer_answer_t s[MAX_SCRIPT];
    for (int i = 0; i < MAX_SCRIPT; i++)
        s[i] = (peer_answer_t){.status = 500};
    script(MAX_SCRIPT, s);
    hr_action_t *head = NULL;
    for (int i = 0; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof id, "ev-b%d", i);
        hr_action_t *a = forward(id, peer_port(srv), 2);
        a->next = head;
        head = a;
    }
    push(o, head);
    run_until_idle(o);
    hr_outbox_stats_t st;
    hr_outbox_stats(o, &st);
    CHECK_INT_EQ(st.accepted, 8);
    CHECK_INT_EQ(st.retried, 8);
    CHECK_INT_EQ(st.dead, 8);
    CHECK_INT_EQ(st.delivered, 0);
    CHECK_INT_EQ(peer_requests(srv), 16);
    shutdown_outbox(loop, o);
}

int main(void)
{
    hr_log_set_level(HR_LOG_WARN);
    snprintf(dir, sizeof dir, "/tmp/hr_test_outbox.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(dlpath, sizeof dlpath, "%s/dl/dead.jsonl", dir);
    loop = hr_xmalloc(sizeof *loop);
    uv_loop_init(loop);
    srv = peer_start(loop);
    CHECK(srv != NULL);
    if (!srv) return CHECK_DONE("test_outbox");
    hr_files_t *files = hr_files_create();

    test_retry_then_delivered(files);
    test_rejected(files);
    test_refused(files);
    test_retry_after(files);
    test_timeout_and_cut(files);
    test_write(files);
    test_write_retried(files);
    test_write_attempts_exhausted(files);
    test_deadletter_file_fails(files);
    test_drain(files);
    test_backoff_bounds(files);

    hr_files_destroy(files);
    peer_stop(srv);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    free(loop);
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_outbox");
}
