/* Unit tests for src/spool_index.c: the fold of ACTION / STATE / DONE / COPY records keyed by
 * action id, as a recovery and `hookrouter spool` see it. Records are encoded with the spool's
 * own encoders; locations are made up (the fold only carries them). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hr/spool_index.h"

/* The ACTION payload of a forward to target (or a write to a file when target starts with
 * "file:") with id. */
static void action_rec(hr_buf_t *out, uint64_t id, const char *target, uint64_t accepted_ms)
{
    bool write = strncmp(target, "file:", 5) == 0;
    hr_action_t *a = hr_action_new(write ? HR_ACTION_WRITE : HR_ACTION_FORWARD);
    snprintf(a->event_id, sizeof a->event_id, "ev-%llu", (unsigned long long)id);
    a->name = hr_xstrdup(write ? target + 5 : target);
    a->accepted_ms = accepted_ms;
    a->max_attempts = write ? 1 : 5;
    if (write) {
        a->file_path = hr_xstrdup("/tmp/out.jsonl");
    } else {
        a->url = hr_xstrdup("http://127.0.0.1:9/x");
        a->method = hr_xstrdup("POST");
    }
    a->body = hr_xstrdup("{}");
    a->body_len = 2;
    hr_buf_reset(out);
    hr_spool_encode_action(out, a, id);
    hr_action_free(a);
}

static void state_rec(hr_buf_t *out, uint64_t id, uint32_t attempt, int status, uint64_t due)
{
    hr_spool_state_t s = {.id = id,
                          .attempt = attempt,
                          .status = status,
                          .at_ms = 1000 + attempt,
                          .next_due_ms = due,
                          .error = status ? "" : "connection refused"};
    hr_buf_reset(out);
    hr_spool_encode_state(out, &s);
}

static void done_rec(hr_buf_t *out, uint64_t id)
{
    hr_buf_reset(out);
    for (int i = 0; i < 8; i++)
        hr_buf_appendc(out, (char)(id >> (8 * i)));
}

/* The COPY payload of the action id (target) with attempts, status and due. */
static void copy_rec(hr_buf_t *out, uint64_t id, const char *target, uint32_t attempts, int status,
                     uint64_t due)
{
    hr_buf_t act = HR_BUF_INIT;
    action_rec(&act, id, target, 5000);
    hr_spool_copy_t c = {.id = id,
                         .attempts = attempts,
                         .last_status = status,
                         .next_due_ms = due,
                         .action = act.data,
                         .action_len = act.len};
    hr_spool_state_t log[1] = {{.id = id, .attempt = attempts, .status = status, .error = ""}};
    hr_buf_reset(out);
    hr_spool_encode_copy(out, &c, log, 1);
    hr_buf_free(&act);
}

/* The add callback: records each call and returns a distinct user value per call. */
typedef struct {
    char names[64][32];
    uint64_t ids[64];
    size_t n;
    long calls;
} adds_t;

static void *on_add(void *arg, const hr_spool_action_meta_t *m)
{
    adds_t *ad = arg;
    if (ad->n < 64) {
        snprintf(ad->names[ad->n], sizeof ad->names[0], "%.*s", (int)m->name_len,
                 m->name ? m->name : "");
        ad->ids[ad->n] = m->id;
        ad->n++;
    }
    ad->calls++;
    return (void *)(uintptr_t)ad->calls;
}

/* The pending entries in the order each() gives them. */
typedef struct {
    hr_spool_entry_t v[64];
    size_t n;
} seen_t;

static void collect(void *arg, const hr_spool_entry_t *e)
{
    seen_t *s = arg;
    if (s->n < 64) s->v[s->n] = *e;
    s->n++;
}

/* Fold one record from b, CHECKing it is accepted. */
#define FOLD(ix, type, b, loc)                                                                     \
    CHECK_INT_EQ(hr_spool_index_fold(ix, type, (b).data, (b).len, loc), 0)

/* ACTION starts an entry, STATE records update it in order (the last one wins, its location
 * is where the attempt log starts), DONE after ACTION finishes it. */
static void test_action_state_done(void)
{
    adds_t ad = {0};
    hr_spool_index_t *ix = hr_spool_index_create(on_add, &ad);
    hr_buf_t b = HR_BUF_INIT;
    action_rec(&b, 1, "pos", 111);
    FOLD(ix, HR_REC_ACTION, b, 0x100000010);
    action_rec(&b, 2, "file:audit", 222);
    FOLD(ix, HR_REC_ACTION, b, 0x100000020);
    CHECK_INT_EQ(ad.n, 2);
    CHECK_STR_EQ(ad.names[0], "pos");
    CHECK_STR_EQ(ad.names[1], "audit");

    const hr_spool_entry_t *e = hr_spool_index_find(ix, 1);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->loc, 0x100000010);
        CHECK_INT_EQ(e->state_loc, 0);
        CHECK_INT_EQ(e->attempts, 0);
        CHECK_INT_EQ(e->next_due_ms, 0);
        CHECK_INT_EQ(e->accepted_ms, 111);
        CHECK_INT_EQ(e->max_attempts, 5);
        CHECK_INT_EQ(e->kind, HR_ACTION_FORWARD);
        CHECK(e->user == (void *)1);
    }
    /* A chain of STATEs: each one newer than the last. */
    state_rec(&b, 1, 1, 503, 7000);
    FOLD(ix, HR_REC_STATE, b, 0x100000030);
    state_rec(&b, 1, 2, 0, 9000);
    FOLD(ix, HR_REC_STATE, b, 0x100000040);
    e = hr_spool_index_find(ix, 1);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->attempts, 2);
        CHECK_INT_EQ(e->last_status, 0);
        CHECK_INT_EQ(e->next_due_ms, 9000);
        CHECK_INT_EQ(e->state_loc, 0x100000040);
        CHECK_INT_EQ(e->loc, 0x100000010); /* the action itself has not moved */
    }
    done_rec(&b, 2);
    FOLD(ix, HR_REC_DONE, b, 0x100000050);
    CHECK(hr_spool_index_find(ix, 2) == NULL);
    CHECK_INT_EQ(hr_spool_index_count(ix), 1);
    /* A STATE after DONE (it cannot be, but a log may hold anything) changes nothing. */
    state_rec(&b, 2, 9, 500, 1);
    FOLD(ix, HR_REC_STATE, b, 0x100000060);
    CHECK(hr_spool_index_find(ix, 2) == NULL);
    CHECK_INT_EQ(hr_spool_index_max_id(ix), 2);

    seen_t seen = {0};
    hr_spool_index_each(ix, collect, &seen);
    CHECK_INT_EQ(seen.n, 1);
    CHECK_INT_EQ(seen.v[0].id, 1);
    CHECK_INT_EQ(seen.v[0].attempts, 2);
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

/* Records of an id the index does not hold are ignored: STATE and DONE before (or without)
 * their ACTION. An ACTION after its id's DONE starts afresh. */
static void test_unknown_ids(void)
{
    adds_t ad = {0};
    hr_spool_index_t *ix = hr_spool_index_create(on_add, &ad);
    hr_buf_t b = HR_BUF_INIT;
    state_rec(&b, 9, 1, 503, 100);
    FOLD(ix, HR_REC_STATE, b, 0x10);
    done_rec(&b, 9);
    FOLD(ix, HR_REC_DONE, b, 0x20);
    CHECK_INT_EQ(hr_spool_index_count(ix), 0);
    CHECK(hr_spool_index_find(ix, 9) == NULL);
    CHECK_INT_EQ(hr_spool_index_max_id(ix), 0); /* only ACTION and COPY name ids */
    CHECK_INT_EQ(ad.calls, 0);

    action_rec(&b, 9, "pos", 1);
    FOLD(ix, HR_REC_ACTION, b, 0x30);
    state_rec(&b, 9, 1, 503, 100);
    FOLD(ix, HR_REC_STATE, b, 0x40);
    done_rec(&b, 9);
    FOLD(ix, HR_REC_DONE, b, 0x50);
    action_rec(&b, 9, "pos", 2);
    FOLD(ix, HR_REC_ACTION, b, 0x60);
    const hr_spool_entry_t *e = hr_spool_index_find(ix, 9);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->loc, 0x60);
        CHECK_INT_EQ(e->attempts, 0);
        CHECK_INT_EQ(e->state_loc, 0);
        CHECK_INT_EQ(e->accepted_ms, 2);
    }
    CHECK_INT_EQ(ad.calls, 2);
    /* An empty index: each() calls nothing; find() of anything is NULL. */
    hr_spool_index_t *empty = hr_spool_index_create(NULL, NULL);
    seen_t seen = {0};
    hr_spool_index_each(empty, collect, &seen);
    CHECK_INT_EQ(seen.n, 0);
    CHECK(hr_spool_index_find(empty, 1) == NULL);
    hr_spool_index_destroy(empty);
    hr_spool_index_destroy(NULL);
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

/* A COPY of an id that is pending supersedes its state and location (a crash between the copy
 * and the deletion of the old segment: both records are read); one whose ACTION is gone
 * starts the entry; STATEs after a COPY continue from it. each() gives id order even when
 * COPYs come late in the log. */
static void test_copy_supersedes(void)
{
    adds_t ad = {0};
    hr_spool_index_t *ix = hr_spool_index_create(on_add, &ad);
    hr_buf_t b = HR_BUF_INIT;
    action_rec(&b, 5, "pos", 50);
    FOLD(ix, HR_REC_ACTION, b, 0x100000010);
    state_rec(&b, 5, 1, 503, 600);
    FOLD(ix, HR_REC_STATE, b, 0x100000020);
    action_rec(&b, 6, "crm", 60);
    FOLD(ix, HR_REC_ACTION, b, 0x100000030);
    copy_rec(&b, 5, "pos", 3, 500, 7777);
    FOLD(ix, HR_REC_COPY, b, 0x200000010);
    CHECK_INT_EQ(ad.calls, 2); /* the same entry: no new one */
    const hr_spool_entry_t *e = hr_spool_index_find(ix, 5);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->loc, 0x200000010);
        CHECK_INT_EQ(e->state_loc, 0x200000010);
        CHECK_INT_EQ(e->attempts, 3);
        CHECK_INT_EQ(e->last_status, 500);
        CHECK_INT_EQ(e->next_due_ms, 7777);
        CHECK_INT_EQ(e->accepted_ms, 50); /* from its ACTION, not the copy's */
        CHECK(e->user == (void *)1);
    }
    state_rec(&b, 5, 4, 502, 8888);
    FOLD(ix, HR_REC_STATE, b, 0x200000020);
    e = hr_spool_index_find(ix, 5);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->attempts, 4);
        CHECK_INT_EQ(e->state_loc, 0x200000020);
        CHECK_INT_EQ(e->loc, 0x200000010);
    }
    /* Its ACTION went with a compacted segment: the COPY starts the entry, out of id order. */
    copy_rec(&b, 3, "file:audit", 1, 0, 4444);
    FOLD(ix, HR_REC_COPY, b, 0x200000030);
    CHECK_INT_EQ(ad.calls, 3);
    CHECK_STR_EQ(ad.names[2], "audit");
    e = hr_spool_index_find(ix, 3);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->kind, HR_ACTION_WRITE);
        CHECK_INT_EQ(e->attempts, 1);
        CHECK_INT_EQ(e->next_due_ms, 4444);
        CHECK_INT_EQ(e->accepted_ms, 5000);
        CHECK(e->user == (void *)3);
    }
    /* A COPY after its id's DONE starts a new entry too. */
    done_rec(&b, 6);
    FOLD(ix, HR_REC_DONE, b, 0x200000040);
    copy_rec(&b, 6, "crm", 2, 429, 99);
    FOLD(ix, HR_REC_COPY, b, 0x200000050);
    CHECK_INT_EQ(ad.calls, 4);
    CHECK_INT_EQ(hr_spool_index_count(ix), 3);
    CHECK_INT_EQ(hr_spool_index_max_id(ix), 6);

    seen_t seen = {0};
    hr_spool_index_each(ix, collect, &seen);
    CHECK_INT_EQ(seen.n, 3);
    CHECK_INT_EQ(seen.v[0].id, 3);
    CHECK_INT_EQ(seen.v[1].id, 5);
    CHECK_INT_EQ(seen.v[2].id, 6);
    CHECK_INT_EQ(seen.v[2].attempts, 2);
    CHECK_INT_EQ(seen.v[2].last_status, 429);
    /* Sorting kept the index whole: lookups still work, a second each() says the same. */
    e = hr_spool_index_find(ix, 5);
    CHECK(e != NULL && e->attempts == 4);
    seen_t again = {0};
    hr_spool_index_each(ix, collect, &again);
    CHECK_INT_EQ(again.n, 3);
    CHECK(again.n == 3 && again.v[0].id == 3 && again.v[2].id == 6);
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

/* A second ACTION for a pending id replaces the entry: the new record, no state. */
static void test_action_replaces(void)
{
    adds_t ad = {0};
    hr_spool_index_t *ix = hr_spool_index_create(on_add, &ad);
    hr_buf_t b = HR_BUF_INIT;
    action_rec(&b, 7, "pos", 70);
    FOLD(ix, HR_REC_ACTION, b, 0x10);
    action_rec(&b, 8, "pos", 80);
    FOLD(ix, HR_REC_ACTION, b, 0x20);
    state_rec(&b, 7, 2, 503, 1234);
    FOLD(ix, HR_REC_STATE, b, 0x30);
    action_rec(&b, 7, "other", 71);
    FOLD(ix, HR_REC_ACTION, b, 0x40);
    CHECK_INT_EQ(hr_spool_index_count(ix), 2);
    const hr_spool_entry_t *e = hr_spool_index_find(ix, 7);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT_EQ(e->loc, 0x40);
        CHECK_INT_EQ(e->attempts, 0);
        CHECK_INT_EQ(e->next_due_ms, 0);
        CHECK_INT_EQ(e->accepted_ms, 71);
        CHECK(e->user == (void *)3);
    }
    seen_t seen = {0};
    hr_spool_index_each(ix, collect, &seen);
    CHECK_INT_EQ(seen.n, 2);
    CHECK(seen.n == 2 && seen.v[0].id == 7 && seen.v[1].id == 8);
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

/* Records that do not decode are refused and change nothing; unknown types are ignored. */
static void test_malformed(void)
{
    hr_spool_index_t *ix = hr_spool_index_create(NULL, NULL);
    hr_buf_t b = HR_BUF_INIT;
    action_rec(&b, 1, "pos", 1);
    FOLD(ix, HR_REC_ACTION, b, 0x10);
    const char junk[] = "\x01\x02\x03";
    CHECK_INT_EQ(hr_spool_index_fold(ix, HR_REC_ACTION, junk, 3, 0x20), -1);
    CHECK_INT_EQ(hr_spool_index_fold(ix, HR_REC_COPY, junk, 3, 0x30), -1);
    CHECK_INT_EQ(hr_spool_index_fold(ix, HR_REC_STATE, junk, 3, 0x40), -1);
    CHECK_INT_EQ(hr_spool_index_fold(ix, HR_REC_DONE, "\x01", 1, 0x50), -1);
    CHECK_INT_EQ(hr_spool_index_fold(ix, 99, junk, 3, 0x60), 0);
    /* An ACTION cut short: the meta fields need the whole front of it. */
    CHECK_INT_EQ(hr_spool_index_fold(ix, HR_REC_ACTION, b.data, 10, 0x70), -1);
    CHECK_INT_EQ(hr_spool_index_count(ix), 1);
    const hr_spool_entry_t *e = hr_spool_index_find(ix, 1);
    CHECK(e != NULL && e->loc == 0x10 && e->attempts == 0);
    CHECK(e == NULL || e->user == NULL); /* no add callback */
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

static uint64_t count_calls;
static uint64_t last_seen_id;
static bool in_order = true;
static void check_order(void *arg, const hr_spool_entry_t *e)
{
    (void)arg;
    if (e->id <= last_seen_id) in_order = false;
    last_seen_id = e->id;
    count_calls++;
}

/* Many actions, most finished as the log goes (the index compacts itself on the way), some
 * copied forward late (in place), some copied after they finished (new entries, out of id
 * order): every pending one is found with its state, each() gives each once, in id order. */
static void test_growth(void)
{
    enum { N = 200000 };
    hr_spool_index_t *ix = hr_spool_index_create(NULL, NULL);
    hr_buf_t b = HR_BUF_INIT;
    size_t pending = 0;
    for (uint64_t id = 1; id <= N; id++) {
        action_rec(&b, id, "pos", id);
        FOLD(ix, HR_REC_ACTION, b, id << 8);
        pending++;
        if (id % 3 == 0) {
            state_rec(&b, id, 1, 503, id * 10);
            FOLD(ix, HR_REC_STATE, b, (id << 8) | 1);
        }
        if (id > 16 && (id - 16) % 10 != 0) { /* finish the one 16 back unless a tenth */
            done_rec(&b, id - 16);
            FOLD(ix, HR_REC_DONE, b, (id << 8) | 2);
            pending--;
        }
    }
    /* COPYs at the end of the log: of pending ids 10, 20, ... 1000 (in place), and of
     * finished ids 11, 21, ... 1001 (new entries). */
    for (uint64_t id = 10; id <= 1001; id += id % 10 == 0 ? 1 : 9) {
        copy_rec(&b, id, "pos", 7, 500, 42);
        FOLD(ix, HR_REC_COPY, b, ((uint64_t)N + id) << 8);
        if (id % 10 == 1) pending++;
    }
    CHECK_INT_EQ(hr_spool_index_count(ix), pending);
    CHECK_INT_EQ(hr_spool_index_max_id(ix), N);
    size_t bad = 0;
    for (uint64_t id = 1; id <= N; id++) {
        const hr_spool_entry_t *e = hr_spool_index_find(ix, id);
        bool copied = id >= 10 && id <= 1001 && (id % 10 == 0 || id % 10 == 1);
        bool want = id % 10 == 0 || id > N - 16 || copied;
        if (want != (e != NULL)) bad++;
        if (!e) continue;
        if (copied) {
            if (e->attempts != 7 || e->loc != (((uint64_t)N + id) << 8) || e->next_due_ms != 42)
                bad++;
        } else if (id % 3 == 0) {
            if (e->attempts != 1 || e->next_due_ms != id * 10 || e->state_loc != ((id << 8) | 1))
                bad++;
        } else if (e->attempts != 0 || e->loc != id << 8) {
            bad++;
        }
    }
    CHECK_INT_EQ(bad, 0);
    hr_spool_index_each(ix, check_order, NULL);
    CHECK_INT_EQ(count_calls, pending);
    CHECK(in_order);
    hr_spool_index_destroy(ix);
    hr_buf_free(&b);
}

/* The real path: framed records parsed by hr_spool_parse straight into the index. */
static void test_through_parse(void)
{
    hr_buf_t file = HR_BUF_INIT, b = HR_BUF_INIT;
    action_rec(&b, 1, "pos", 1);
    hr_spool_frame(&file, HR_REC_ACTION, b.data, b.len);
    size_t second = file.len;
    action_rec(&b, 2, "pos", 2);
    hr_spool_frame(&file, HR_REC_ACTION, b.data, b.len);
    done_rec(&b, 1);
    hr_spool_frame(&file, HR_REC_DONE, b.data, b.len);
    hr_spool_index_t *ix = hr_spool_index_create(NULL, NULL);
    CHECK_INT_EQ(hr_spool_parse(file.data, file.len, 3, hr_spool_index_on_rec, ix, NULL), 0);
    CHECK_INT_EQ(hr_spool_index_count(ix), 1);
    const hr_spool_entry_t *e = hr_spool_index_find(ix, 2);
    CHECK(e != NULL && e->loc == ((uint64_t)3 << 32 | second));
    hr_spool_index_destroy(ix);
    hr_buf_free(&file);
    hr_buf_free(&b);
}

int main(void)
{
    test_action_state_done();
    test_unknown_ids();
    test_copy_supersedes();
    test_action_replaces();
    test_malformed();
    test_growth();
    test_through_parse();
    return CHECK_DONE("test_spool_index");
}
