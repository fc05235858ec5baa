/* The durable outbox: spool-backed delivery, per-target scheduling, retries that survive
 * restarts, circuit breakers, dead letters, replays and drain (see include/hr/outbox.h).
 *
 * Every unfinished action has an item in memory: a small index entry (its spool location,
 * target, lane, attempts, next due time). The action itself (URL, headers, body) is read back
 * from the spool when an attempt starts and dropped again while a long retry wait runs, so a
 * large backlog costs little memory and a restart only needs a sequential scan.
 *
 * Records written per action: ACTION once (before the sender gets 200), a STATE after each
 * finished attempt (attempt number, status or error, time, next due time, and the location of
 * the previous STATE, so a dead letter can list every attempt), and DONE when it is delivered
 * or dead-lettered. Recovery replays them in order: an ACTION without a DONE is pending, its
 * latest STATE says how many attempts it had and when the next one is due.
 *
 * An item is in exactly one place: the heap (waiting for its due time), its target's ready
 * queue (due, waiting for a slot: concurrency, rate, an open circuit), a lane (ordered
 * targets: parked behind the head of its store's lane), or in flight. One uv_timer serves the
 * heap; each target has one timer for its circuit probe and rate limit. What to do when (the
 * wait before an attempt, Retry-After, the breaker, the rate bucket, max age, "retry or dead
 * letter" after an attempt) is the target policy's (src/target.c); this file keeps the
 * timers and queues and calls it.
 *
 * Compaction: one action that keeps retrying would pin its segment and, since segments go
 * only from the oldest end, every newer one. So when the oldest segment holds few pending
 * actions (hr_spool_compact_candidate), each of them is copied forward as a COPY record (the
 * action as stored, attempts, last status, next due time and the attempt log), its item
 * points there, and once an fdatasync covered the copies the segment's pin is dropped and
 * it goes. One segment at a time, from a timer (and at once when a push finds the spool
 * full), so the loop never does more than one segment's copies per turn. Recovery: a COPY
 * for an id already seen updates that item in place (the later record holds the later
 * state); one for an id whose ACTION is gone adds it; the list is then put back in id
 * (arrival) order.
 *
 * Drain: attempts due after the deadline are not started; when nothing is in flight (or at
 * the deadline, cancelling what is) the HTTP client closes and every item is let go without a
 * DONE: it stays in the spool for the next start. */
#include "hr/outbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hr/deadletter.h"
#include "hr/defaults.h"
#include "hr/http_client.h"
#include "hr/log.h"
#include "hr/spool_index.h"
#include "hr/target.h"

#define KEEP_LOADED_MS   10000 /* keep the action in memory across waits shorter than this */
#define MAX_LOG_ATTEMPTS 1000
#define COMPACT_MS       1000 /* how often the spool is looked at for compaction */
#define COMPACT_RETRY_MS 100  /* after a candidate whose items were not all found */
#define DL_RETRY_MS      1000 /* wait before writing a dead letter again after it failed */

typedef enum { IT_NONE = 0, IT_HEAP, IT_READY, IT_LANE, IT_FLIGHT } it_where_t;

struct ob_target;
struct ob_lane;

/* One unfinished action. */
typedef struct ob_item {
    hr_outbox_t *o;           /* owner */
    struct ob_target *t;      /* its target (NULL for a write) */
    struct ob_lane *lane;     /* its lane on an ordered target, else NULL */
    struct ob_item *prev;     /* in o->all, arrival order */
    struct ob_item *next;     /* in o->all */
    struct ob_item *rnext;    /* in t's ready queue */
    struct ob_item *lnext;    /* in its lane */
    hr_action_t *a;           /* the action while loaded, else NULL */
    size_t a_weight;          /* what a counts in o->loaded_bytes */
    uint64_t id;              /* spool id of the action */
    hr_spool_loc_t loc;       /* its ACTION record (holds a segment reference) */
    hr_spool_loc_t state_loc; /* its latest STATE record, 0 if none */
    uint64_t accepted_ms;     /* wall time the event was accepted */
    uint64_t due;             /* uv_now of the next attempt */
    uint64_t due_wall;        /* the same in wall time (what the spool keeps) */
    size_t heap_idx;          /* index in o->heap while IT_HEAP */
    uint32_t attempts;        /* attempts finished or running */
    uint32_t max_attempts;    /* from the action */
    int last_status;          /* last HTTP status, 0 if none */
    hr_action_kind_t kind;    /* forward or write */
    it_where_t where;         /* see the file comment */
    const char *dead_reason;  /* a dead letter that could not be written yet (a literal) */
    uint64_t started_ms;      /* uv_now when the attempt in flight started */
} ob_item_t;

/* One store's lane on an ordered target. */
typedef struct ob_lane {
    struct ob_lane *next; /* hash chain */
    char *store;          /* "" for events without a store */
    ob_item_t *head;      /* the item being delivered (or waiting) */
    ob_item_t *tail;      /* the newest */
} ob_lane_t;

#define LANE_BUCKETS 256

typedef struct ob_target {
    struct ob_target *next; /* in o->targets */
    hr_outbox_t *o;         /* owner */
    char *name;             /* owned */
    hr_target_policy_t pol; /* its policy (schedule, max age, concurrency, rate, ...) */
    ob_item_t *ready_head;  /* due items waiting for a slot */
    ob_item_t *ready_tail;  /* ... */
    size_t nready;          /* items in the ready queue */
    uint32_t inflight;      /* requests in flight */
    size_t live;            /* unfinished items */
    hr_circuit_t circuit;   /* breaker (times in uv_now) */
    hr_bucket_t bucket;     /* rate bucket (times in uv_now) */
    uv_timer_t timer;       /* probe / rate wake-up */
    ob_lane_t **lanes;      /* LANE_BUCKETS chains when ordered, else NULL */
} ob_target_t;

struct hr_outbox {
    uv_loop_t *loop;           /* the loop */
    size_t loaded_bytes;       /* about what the loaded actions (it->a) take, see item_unload */
    hr_files_t *files;         /* shared file table (not owned) */
    char *dead_letters;        /* dead-letter path, owned; NULL: log only */
    hr_spool_t *spool;         /* the storage; NULL once closed */
    hr_http_client_t *http;    /* NULL once closed */
    char *incoming_dir;        /* <spool_dir>/incoming */
    ob_target_t *targets;      /* every target seen */
    ob_item_t *all_head;       /* every unfinished item, arrival order */
    ob_item_t *all_tail;       /* ... */
    ob_item_t **heap;          /* waiting items, min-heap on due */
    size_t nheap;              /* items in heap */
    size_t heap_cap;           /* slots allocated */
    uint64_t next_id;          /* id of the next action */
    uint32_t inflight;         /* requests in flight, all targets */
    uv_timer_t retry_timer;    /* armed for heap[0] */
    uv_timer_t drain_timer;    /* grace period end, or 0 when drained early */
    uv_timer_t incoming_timer; /* scans incoming_dir */
    uv_timer_t compact_timer;  /* compaction steps */
    bool compacting;           /* a compaction waits for its sync */
    uint32_t compact_skip;     /* a segment whose compaction sync failed: left alone */
    uint64_t compact_after;    /* uv_now before which a push does not trigger a step */
    bool compact_manual;       /* only hr_outbox_compact runs steps (tests) */
    hr_outbox_stats_t st;      /* counters */
    hr_buf_t scratch;          /* encoding and reading records */
    hr_buf_t line;             /* dead-letter lines */
    bool draining;             /* hr_outbox_drain was called */
    bool drain_finished;       /* finish_drain ran */
    uint64_t drain_deadline;   /* uv_now after which no attempt starts */
    void (*drain_cb)(void *);  /* run once drained */
    void *drain_arg;           /* for drain_cb */
    bool closing;              /* hr_outbox_close was called */
    int open_handles;          /* timers + http client + spool not yet closed */
    void (*close_cb)(void *);  /* run once freed */
    void *close_arg;           /* for close_cb */
    uint64_t last_full_log;    /* uv_now of the last "spool full" line */
    hr_target_policy_t writes; /* policy of write actions: retry_ms, nretry, max_age_s only */
    uint32_t write_attempts;   /* attempts of a write action */
    uint64_t last_dl_log;      /* uv_now of the last "dead-letter file failed" line */
    uint32_t dl_suppressed;    /* such lines left out since */
    bool incoming_scanned;     /* the first scan of incoming_dir ran */
};

static void on_retry_timer(uv_timer_t *t);
static void on_target_timer(uv_timer_t *t);
static void pump(ob_target_t *t);
static void schedule(ob_item_t *it);
static void heap_push(hr_outbox_t *o, ob_item_t *it);
static void rearm(hr_outbox_t *o);

/* Loaded actions (it->a) beyond this many bytes are not kept in memory while they wait: they
 * are read back from the spool when their attempt starts. */
#define MAX_LOADED_BYTES (32u << 20)

/* About the memory a loaded action takes: what loaded_bytes counts. */
static size_t action_weight(const hr_action_t *a)
{
    return sizeof *a + a->body_len + 64 * a->nheaders + (a->url ? strlen(a->url) : 0);
}

/* Drop it's loaded action (it stays in the spool; item_load reads it back). */
static void item_unload(ob_item_t *it)
{
    if (!it->a) return;
    it->o->loaded_bytes -= it->a_weight;
    it->a_weight = 0;
    hr_action_free(it->a);
    it->a = NULL;
}
static void maybe_drained(hr_outbox_t *o);
static void compact_kick(hr_outbox_t *o);

/* ---- Targets ---------------------------------------------------------------------------- */

static void target_set_policy(ob_target_t *t, const hr_outbox_target_t *p)
{
    hr_target_policy_set(&t->pol, p);
    /* Turning ordering off keeps the existing lanes until they empty. */
    if (t->pol.ordered && !t->lanes) t->lanes = hr_xcalloc(LANE_BUCKETS, sizeof *t->lanes);
}

static ob_target_t *target_find(hr_outbox_t *o, const char *name)
{
    for (ob_target_t *t = o->targets; t; t = t->next)
        if (strcmp(t->name, name) == 0) return t;
    return NULL;
}

/* The target called name, created with the default policy if it is new. Never NULL. */
static ob_target_t *target_get(hr_outbox_t *o, const char *name)
{
    ob_target_t *t = target_find(o, name);
    if (t) return t;
    t = hr_xcalloc(1, sizeof *t);
    t->o = o;
    t->name = hr_xstrdup(name);
    target_set_policy(t, NULL);
    uv_timer_init(o->loop, &t->timer);
    t->timer.data = t;
    o->open_handles++;
    t->next = o->targets;
    o->targets = t;
    return t;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

/* The lane of store on t (created if missing). */
static ob_lane_t *lane_get(ob_target_t *t, const char *store)
{
    const char *key = store ? store : "";
    ob_lane_t **b = &t->lanes[hash_str(key) % LANE_BUCKETS];
    for (ob_lane_t *l = *b; l; l = l->next)
        if (strcmp(l->store, key) == 0) return l;
    ob_lane_t *l = hr_xcalloc(1, sizeof *l);
    l->store = hr_xstrdup(key);
    l->next = *b;
    *b = l;
    return l;
}

static void lane_free_if_empty(ob_target_t *t, ob_lane_t *l)
{
    if (l->head) return;
    ob_lane_t **p = &t->lanes[hash_str(l->store) % LANE_BUCKETS];
    while (*p != l)
        p = &(*p)->next;
    *p = l->next;
    free(l->store);
    free(l);
}

/* ---- Min-heap of waiting items ------------------------------------------------------ */

static void heap_swap(hr_outbox_t *o, size_t i, size_t j)
{
    ob_item_t *t = o->heap[i];
    o->heap[i] = o->heap[j];
    o->heap[j] = t;
    o->heap[i]->heap_idx = i;
    o->heap[j]->heap_idx = j;
}

static void heap_up(hr_outbox_t *o, size_t i)
{
    while (i > 0 && o->heap[(i - 1) / 2]->due > o->heap[i]->due) {
        heap_swap(o, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(hr_outbox_t *o, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < o->nheap && o->heap[l]->due < o->heap[m]->due) m = l;
        if (r < o->nheap && o->heap[r]->due < o->heap[m]->due) m = r;
        if (m == i) return;
        heap_swap(o, i, m);
        i = m;
    }
}

static void heap_push(hr_outbox_t *o, ob_item_t *it)
{
    if (o->nheap == o->heap_cap) {
        o->heap_cap = o->heap_cap ? o->heap_cap * 2 : 64;
        o->heap = hr_xrealloc(o->heap, o->heap_cap * sizeof *o->heap);
    }
    it->heap_idx = o->nheap;
    it->where = IT_HEAP;
    o->heap[o->nheap++] = it;
    heap_up(o, it->heap_idx);
}

static void heap_remove(hr_outbox_t *o, ob_item_t *it)
{
    size_t i = it->heap_idx;
    o->nheap--;
    if (i != o->nheap) {
        o->heap[i] = o->heap[o->nheap];
        o->heap[i]->heap_idx = i;
        heap_down(o, i);
        heap_up(o, i);
    }
    it->where = IT_NONE;
}

/* Arm the retry timer for the earliest waiting item, or stop it. */
static void rearm(hr_outbox_t *o)
{
    if (o->closing || o->drain_finished) return;
    if (o->nheap == 0) {
        uv_timer_stop(&o->retry_timer);
        return;
    }
    uint64_t now = uv_now(o->loop);
    uint64_t due = o->heap[0]->due;
    uv_timer_start(&o->retry_timer, on_retry_timer, due > now ? due - now : 0, 0);
}

/* ---- Items ------------------------------------------------------------------------------ */

static ob_item_t *item_new(hr_outbox_t *o)
{
    ob_item_t *it = hr_xcalloc(1, sizeof *it);
    it->o = o;
    it->prev = o->all_tail;
    if (o->all_tail)
        o->all_tail->next = it;
    else
        o->all_head = it;
    o->all_tail = it;
    o->st.pending++;
    return it;
}

/* Take it off o->all (every pending item, in arrival order); it is no longer pending. */
static void all_unlink(hr_outbox_t *o, ob_item_t *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        o->all_head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        o->all_tail = it->prev;
    o->st.pending--;
}

/* Unlink it from everything and free it. With done, its DONE record is written and its
 * segment reference dropped; without, it stays pending in the spool (shutdown). The next item
 * of its lane, if any, is scheduled. */
static void item_release(ob_item_t *it, bool done)
{
    hr_outbox_t *o = it->o;
    if (done && o->spool) {
        unsigned char idb[8];
        for (int i = 0; i < 8; i++)
            idb[i] = (unsigned char)(it->id >> (8 * i));
        hr_spool_loc_t loc;
        if (hr_spool_append(o->spool, HR_REC_DONE, idb, sizeof idb, false, &loc) < 0)
            hr_log_warn("spool: could not mark id=%llu done; it may be delivered again after "
                        "a restart",
                        (unsigned long long)it->id);
        hr_spool_unref(o->spool, it->loc);
    }
    all_unlink(o, it);
    ob_target_t *t = it->t;
    if (t) t->live--;
    ob_lane_t *lane = it->lane;
    ob_item_t *next_head = NULL;
    if (lane && lane->head == it) {
        lane->head = it->lnext;
        if (!lane->head) lane->tail = NULL;
        next_head = lane->head;
        if (!lane->head) lane_free_if_empty(t, lane);
    }
    item_unload(it);
    free(it);
    if (next_head && !o->drain_finished && !o->closing) {
        next_head->where = IT_NONE;
        schedule(next_head);
    }
}

/* Make sure it->a is loaded. Returns 0, or -1 if the record cannot be read. */
static int item_load(ob_item_t *it)
{
    if (it->a) return 0;
    hr_outbox_t *o = it->o;
    int type = o->spool ? hr_spool_read(o->spool, it->loc, &o->scratch) : -EBADF;
    const char *p = o->scratch.data;
    size_t n = o->scratch.len;
    hr_spool_copy_t c;
    if (type == HR_REC_COPY && hr_spool_decode_copy(p, n, &c) == 0) {
        p = c.action;
        n = c.action_len;
    } else if (type != HR_REC_ACTION) {
        hr_log_error("spool: cannot read the action id=%llu back (%s)", (unsigned long long)it->id,
                     type < 0 ? strerror(-type) : "wrong record type");
        return -1;
    }
    it->a = hr_spool_decode_action(p, n, NULL);
    if (!it->a) {
        hr_log_error("spool: malformed action id=%llu", (unsigned long long)it->id);
        return -1;
    }
    it->a->attempts = it->attempts;
    it->a->last_status = it->last_status;
    it->a_weight = action_weight(it->a);
    o->loaded_bytes += it->a_weight;
    return 0;
}

static void set_last_error(hr_action_t *a, const char *msg)
{
    size_t n = strlen(msg);
    if (n >= sizeof a->last_error) n = sizeof a->last_error - 1;
    memcpy(a->last_error, msg, n);
    a->last_error[n] = '\0';
}

static uint64_t ms_since(uint64_t wall_ms)
{
    uint64_t now = hr_wall_ms();
    return now > wall_ms ? now - wall_ms : 0;
}

/* ---- Dead letters ----------------------------------------------------------------------- */

/* An attempt log being collected: v[i].error points into err[i] once it is complete. */
typedef struct {
    hr_attempt_t *v;
    char (*err)[128];
    size_t n;
} attempt_log_t;

/* Room for one more entry in lg (cap: its slots). */
static void log_grow(attempt_log_t *lg, size_t *cap)
{
    if (lg->n < *cap) return;
    *cap = *cap ? *cap * 2 : 8;
    lg->v = hr_xrealloc(lg->v, *cap * sizeof *lg->v);
    lg->err = hr_xrealloc(lg->err, *cap * sizeof *lg->err);
}

/* Reverse the entries [i, j) of lg. */
static void log_reverse(attempt_log_t *lg, size_t i, size_t j)
{
    for (; j > i + 1; i++, j--) {
        hr_attempt_t tv = lg->v[i];
        lg->v[i] = lg->v[j - 1];
        lg->v[j - 1] = tv;
        char te[sizeof lg->err[0]];
        memcpy(te, lg->err[i], sizeof te);
        memcpy(lg->err[i], lg->err[j - 1], sizeof te);
        memcpy(lg->err[j - 1], te, sizeof te);
    }
}

/* Add the attempt log carried by a COPY record (oldest first) to lg, which is built newest
 * first. */
static void log_add_copy(attempt_log_t *lg, size_t *cap, hr_spool_copy_t *c)
{
    size_t first = lg->n;
    hr_spool_state_t s;
    while (lg->n < MAX_LOG_ATTEMPTS) {
        log_grow(lg, cap);
        if (hr_spool_copy_log_next(c, &s, lg->err[lg->n], sizeof lg->err[0]) <= 0) break;
        lg->v[lg->n++] = (hr_attempt_t){s.attempt, s.status, s.at_ms, NULL};
    }
    log_reverse(lg, first, lg->n); /* newest first, as the chain */
}

/* Collect the attempt log of it (oldest first, at most MAX_LOG_ATTEMPTS) from its STATE chain,
 * ending with the log of the COPY the chain reaches, if any. The caller frees lg->v and
 * lg->err. */
static void read_attempt_log(ob_item_t *it, attempt_log_t *lg)
{
    hr_outbox_t *o = it->o;
    memset(lg, 0, sizeof *lg);
    size_t cap = 0;
    hr_spool_loc_t loc = it->state_loc;
    hr_buf_t b = HR_BUF_INIT;
    while (loc && o->spool && lg->n < MAX_LOG_ATTEMPTS) {
        int type = hr_spool_read(o->spool, loc, &b);
        if (type == HR_REC_COPY) { /* the log as it was when the action was moved: the end */
            hr_spool_copy_t c;
            if (hr_spool_decode_copy(b.data, b.len, &c) == 0 && c.id == it->id)
                log_add_copy(lg, &cap, &c);
            break;
        }
        if (type != HR_REC_STATE) break;
        log_grow(lg, &cap);
        hr_spool_state_t s;
        if (hr_spool_decode_state(b.data, b.len, &s, lg->err[lg->n], sizeof lg->err[0]) < 0 ||
            s.id != it->id)
            break;
        lg->v[lg->n] = (hr_attempt_t){s.attempt, s.status, s.at_ms, NULL};
        lg->n++;
        loc = s.prev;
    }
    hr_buf_free(&b);
    log_reverse(lg, 0, lg->n); /* oldest first */
    for (size_t i = 0; i < lg->n; i++)
        lg->v[i].error = lg->err[i];
}

/* The dead letter of it could not be written (err): keep it in the spool (no DONE record)
 * and try the dead-letter file again after DL_RETRY_MS. Logs at most one line a second,
 * counting the ones left out. */
static void dead_later(ob_item_t *it, const char *reason, const char *err)
{
    hr_outbox_t *o = it->o;
    uint64_t now = uv_now(o->loop);
    if (!o->last_dl_log || now - o->last_dl_log >= 1000) {
        hr_log_error("dead-letter file: %s; id=%s reason=%s stays in the spool, trying again in "
                     "%u ms (%u such lines left out)",
                     err, it->a && it->a->event_id[0] ? it->a->event_id : "-", reason,
                     (unsigned)DL_RETRY_MS, (unsigned)o->dl_suppressed);
        o->last_dl_log = now;
        o->dl_suppressed = 0;
    } else {
        o->dl_suppressed++;
    }
    it->dead_reason = reason;
    it->due = now + DL_RETRY_MS;
    it->due_wall = hr_wall_ms() + DL_RETRY_MS;
    item_unload(it);
    heap_push(o, it);
    rearm(o);
}

/* Write the dead letter of it (reason: a literal) and finish it; if the dead-letter file
 * fails, it stays in the spool and is tried again later (dead_later). */
static void dead_item(ob_item_t *it, const char *reason)
{
    hr_outbox_t *o = it->o;
    if (item_load(it) == 0) {
        hr_action_t *a = it->a;
        a->attempts = it->attempts;
        char what[200];
        if (a->last_status > 0)
            snprintf(what, sizeof what, "status=%d", a->last_status);
        else
            snprintf(what, sizeof what, "error=%s", a->last_error[0] ? a->last_error : "none");
        if (a->kind == HR_ACTION_WRITE)
            hr_log_error("dead-letter id=%s file=%s error=%s attempts=%u reason=%s", a->event_id,
                         a->name ? a->name : "-", a->last_error, (unsigned)a->attempts, reason);
        else
            hr_log_error("dead-letter id=%s target=%s %s attempts=%u reason=%s", a->event_id,
                         a->name ? a->name : "-", what, (unsigned)a->attempts, reason);
        attempt_log_t lg;
        read_attempt_log(it, &lg);
        hr_buf_reset(&o->line);
        hr_deadletter_for_action_log(&o->line, a, reason, lg.v, lg.n);
        free(lg.v);
        free(lg.err);
        char err[256];
        if (!o->dead_letters) {
            hr_log_error("dead-letter file not configured; lost line: %s", o->line.data);
        } else if (hr_files_append(o->files, o->dead_letters, o->line.data, o->line.len, err,
                                   sizeof err) < 0) {
            dead_later(it, reason, err);
            return;
        }
    } else {
        hr_log_error("dead-letter id=%llu: the spool record is unreadable; reason=%s",
                     (unsigned long long)it->id, reason);
    }
    o->st.dead++;
    item_release(it, true);
}

/* ---- Circuit breaker -------------------------------------------------------------------- */

/* The target answered (delivered, or rejected: it is up). */
static void circuit_success(ob_target_t *t)
{
    if (hr_circuit_success(&t->circuit) == HR_CIRCUIT_CLOSED_NOW)
        hr_log_info("circuit closed target=%s: the probe succeeded, delivering again", t->name);
}

/* A retriable failure (transport error, 408, 429, 5xx). */
static void circuit_failure(ob_target_t *t)
{
    switch (hr_circuit_failure(&t->circuit, &t->pol, uv_now(t->o->loop))) {
    case HR_CIRCUIT_REOPENED:
        hr_log_warn("circuit open target=%s: the probe failed; next probe in %llu ms", t->name,
                    (unsigned long long)t->pol.circuit_probe_ms);
        break;
    case HR_CIRCUIT_OPENED:
        hr_log_warn("circuit open target=%s after %u consecutive failures: paused, probing "
                    "every %llu ms",
                    t->name, (unsigned)t->circuit.fails,
                    (unsigned long long)t->pol.circuit_probe_ms);
        break;
    case HR_CIRCUIT_SAME:
    case HR_CIRCUIT_CLOSED_NOW: break;
    }
}

/* ---- Retry or dead letter --------------------------------------------------------------- */

/* Write the STATE record of the attempt that just ended. */
static void record_state(ob_item_t *it, const char *error, uint64_t next_due_wall)
{
    hr_outbox_t *o = it->o;
    if (!o->spool) return;
    hr_spool_state_t s = {.id = it->id,
                          .prev = it->state_loc,
                          .attempt = it->attempts,
                          .status = it->last_status,
                          .at_ms = hr_wall_ms(),
                          .next_due_ms = next_due_wall,
                          .error = error};
    hr_buf_reset(&o->scratch);
    hr_spool_encode_state(&o->scratch, &s);
    hr_spool_loc_t loc;
    if (hr_spool_append(o->spool, HR_REC_STATE, o->scratch.data, o->scratch.len, false, &loc) == 0)
        it->state_loc = loc;
}

/* The attempt of it that just ended, for hr_target_after_attempt (no answer: status 0). */
static hr_target_attempt_t attempt_of(const ob_item_t *it, bool retriable, const char *reject)
{
    return (hr_target_attempt_t){.attempts = it->attempts,
                                 .max_attempts = it->max_attempts,
                                 .accepted_ms = it->accepted_ms,
                                 .retriable = retriable,
                                 .reject = reject};
}

/* After an attempt of it (loaded) that did not deliver, a forward or a write: policy p
 * decides. Dead: its last STATE and the dead letter. Retry: the STATE with the next due
 * time, the "retry" line and the heap. error: the attempt's error for the STATE record;
 * what: "status=503" or "error=..." for the line. */
static void retry_or_dead(ob_item_t *it, const hr_target_policy_t *p, const hr_target_attempt_t *at,
                          const char *error, const char *what)
{
    hr_outbox_t *o = it->o;
    hr_action_t *a = it->a;
    uint64_t now = uv_now(o->loop), wall = hr_wall_ms();
    hr_target_next_t next = hr_target_after_attempt(p, at, wall, hr_rand64());
    if (next.dead) {
        record_state(it, error, 0);
        dead_item(it, next.dead);
        return;
    }
    it->due = now + next.wait_ms;
    it->due_wall = wall + next.wait_ms;
    record_state(it, error, it->due_wall);
    hr_log_warn("retry id=%s %s=%s %s attempt=%u/%u in_ms=%llu", a->event_id,
                it->kind == HR_ACTION_WRITE ? "file" : "target", a->name ? a->name : "-", what,
                (unsigned)it->attempts, (unsigned)it->max_attempts,
                (unsigned long long)next.wait_ms);
    o->st.retried++;
    if (next.wait_ms > KEEP_LOADED_MS) item_unload(it);
    heap_push(o, it);
    rearm(o);
}

/* ---- Forward delivery ------------------------------------------------------------------- */

static void start_attempt(ob_item_t *it);

/* Completion of one attempt: delivered, scheduled again, left (shutdown) or dead-lettered. */
static void on_http_done(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    ob_item_t *it = arg;
    hr_outbox_t *o = it->o;
    ob_target_t *t = it->t;
    hr_action_t *a = it->a;
    it->where = IT_NONE;
    t->inflight--;
    o->inflight--;
    if (err == UV_ECANCELED && (o->draining || o->closing)) {
        /* Cut off by shutdown: not an attempt; it stays in the spool. */
        it->attempts--;
        hr_circuit_unprobe(&t->circuit);
        item_release(it, false);
        maybe_drained(o);
        return;
    }
    if (err == 0) {
        a->last_status = res->status;
        a->last_error[0] = '\0';
    } else {
        a->last_status = 0;
        set_last_error(a, errmsg ? errmsg : uv_strerror(err));
    }
    it->last_status = a->last_status;
    a->attempts = it->attempts;
    char what[200];
    if (err == 0)
        snprintf(what, sizeof what, "status=%d", res->status);
    else
        snprintf(what, sizeof what, "error=%s", a->last_error);

    if (err == 0 && res->status >= 200 && res->status < 300) {
        circuit_success(t);
        hr_log_info("delivered id=%s type=%s store=%s action=forward target=%s status=%d "
                    "attempts=%u ms=%llu",
                    a->event_id, a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                    a->name ? a->name : "-", res->status, (unsigned)it->attempts,
                    (unsigned long long)ms_since(a->accepted_ms));
        o->st.delivered++;
        item_release(it, true);
        pump(t);
        maybe_drained(o);
        return;
    }
    hr_target_attempt_t at =
        attempt_of(it, err != 0 || hr_target_status_retriable(res->status), "rejected");
    if (err == 0) {
        at.status = res->status;
        at.headers = res->headers;
        at.nheaders = res->nheaders;
    }
    if (at.retriable)
        circuit_failure(t);
    else
        circuit_success(t); /* the target answered: it is up */
    retry_or_dead(it, &t->pol, &at, a->last_error, what);
    pump(t);
    maybe_drained(o);
}

/* Send the next attempt of it (a forward). */
static void start_attempt(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    ob_target_t *t = it->t;
    if (item_load(it) < 0) {
        o->st.dead++;
        item_release(it, true);
        return;
    }
    hr_action_t *a = it->a;
    it->attempts++;
    a->attempts = it->attempts;
    hr_http_out_t req = {
        .method = a->method ? a->method : "POST",
        .url = a->url ? a->url : "",
        .headers = a->headers,
        .nheaders = a->nheaders,
        .body = a->body,
        .body_len = a->body_len,
        .timeout_ms = a->timeout_ms ? a->timeout_ms : HR_DEF_TARGET_TIMEOUT_MS,
        .tls = t->pol.tls, /* the target's context now, never the spool's */
        .proxy = t->pol.proxy,
    };
    int rc = o->http ? hr_http_client_send(o->http, &req, on_http_done, it) : UV_ECANCELED;
    if (rc < 0) {
        a->last_status = 0;
        it->last_status = 0;
        set_last_error(a, rc == UV_EINVAL ? "invalid URL" : uv_strerror(rc));
        record_state(it, a->last_error, 0);
        dead_item(it, rc == UV_EINVAL ? "invalid url" : "client closed");
        return;
    }
    it->where = IT_FLIGHT;
    it->started_ms = uv_now(o->loop);
    t->inflight++;
    o->inflight++;
}

/* Start what t may start now: ready items, within concurrency, the circuit and the rate. */
static void pump(ob_target_t *t)
{
    hr_outbox_t *o = t->o;
    if (!o->http || o->closing || o->drain_finished) return;
    while (t->ready_head) {
        if (t->inflight >= t->pol.concurrency) return;
        uint64_t now = uv_now(o->loop), wait = 0;
        switch (hr_circuit_gate(&t->circuit, now, &wait)) {
        case HR_GATE_BUSY: return; /* the probe is out */
        case HR_GATE_WAIT: uv_timer_start(&t->timer, on_target_timer, wait, 0); return;
        case HR_GATE_PROBE: hr_log_info("circuit half-open target=%s: sending one probe", t->name);
        /* fall through */
        case HR_GATE_PASS: break;
        }
        if (t->pol.rate > 0 && (wait = hr_bucket_take(&t->bucket, t->pol.rate, now)) > 0) {
            uv_timer_start(&t->timer, on_target_timer, wait, 0);
            hr_circuit_unprobe(&t->circuit);
            return;
        }
        ob_item_t *it = t->ready_head;
        t->ready_head = it->rnext;
        if (!t->ready_head) t->ready_tail = NULL;
        it->rnext = NULL;
        t->nready--;
        it->where = IT_NONE;
        if (hr_target_too_old(t->pol.max_age_s, it->accepted_ms, hr_wall_ms())) {
            hr_circuit_unprobe(&t->circuit);
            if (item_load(it) == 0) set_last_error(it->a, "max age exceeded while waiting");
            dead_item(it, "max age exceeded");
            continue;
        }
        start_attempt(it);
    }
}

static void on_target_timer(uv_timer_t *h)
{
    pump(h->data);
}

/* Put a due forward at the end of its target's ready queue and pump. */
static void make_ready(ob_item_t *it)
{
    ob_target_t *t = it->t;
    it->where = IT_READY;
    it->rnext = NULL;
    if (t->ready_tail)
        t->ready_tail->rnext = it;
    else
        t->ready_head = it;
    t->ready_tail = it;
    t->nready++;
    pump(t);
}

/* ---- Write delivery --------------------------------------------------------------------- */

/* Append a write action's line to its file now: delivered; on an error that may pass
 * (hr_target_write_retriable) scheduled again on the writes' schedule (as a forward), else
 * or when out of attempts or age, dead-lettered. */
static void deliver_write(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    if (item_load(it) < 0) {
        o->st.dead++;
        item_release(it, true);
        return;
    }
    hr_action_t *a = it->a;
    char err[256];
    it->attempts++;
    a->attempts = it->attempts;
    if (!a->file_path) {
        set_last_error(a, "no file path");
        dead_item(it, "write failed");
        return;
    }
    int rc = hr_files_append(o->files, a->file_path, a->body ? a->body : "", a->body_len, err,
                             sizeof err);
    if (rc < 0) {
        set_last_error(a, err);
        char what[sizeof err + 8];
        snprintf(what, sizeof what, "error=%s", err);
        hr_target_attempt_t at = attempt_of(it, hr_target_write_retriable(rc), "write failed");
        retry_or_dead(it, &o->writes, &at, err, what);
        return;
    }
    hr_log_info("delivered id=%s type=%s store=%s action=write file=%s ms=%llu", a->event_id,
                a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                a->name ? a->name : "-", (unsigned long long)ms_since(a->accepted_ms));
    o->st.delivered++;
    item_release(it, true);
}

/* ---- Scheduling ------------------------------------------------------------------------- */

/* Route a new or recovered item (or a lane's next head): writes at once; forwards into the
 * heap or the ready queue, or parked behind their lane's head. */
static void schedule(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    if (it->kind == HR_ACTION_WRITE) {
        if (it->due > uv_now(o->loop)) {
            heap_push(o, it);
            rearm(o);
        } else {
            deliver_write(it);
        }
        return;
    }
    ob_target_t *t = it->t;
    if (t->pol.ordered && !it->lane) {
        const char *store = NULL;
        char buf[256];
        if (it->a) {
            store = it->a->store;
        } else if (item_load(it) == 0) {
            snprintf(buf, sizeof buf, "%s", it->a->store ? it->a->store : "");
            store = it->a->store ? buf : NULL;
            item_unload(it);
        }
        ob_lane_t *l = lane_get(t, store);
        it->lane = l;
        if (l->tail) {
            l->tail->lnext = it;
            l->tail = it;
            it->where = IT_LANE;
            return;
        }
        l->head = l->tail = it;
    }
    uint64_t now = uv_now(o->loop);
    if (it->due > now) {
        heap_push(o, it);
        rearm(o);
    } else {
        make_ready(it);
    }
}

/* The retry timer: move every due item to its ready queue. */
static void on_retry_timer(uv_timer_t *h)
{
    hr_outbox_t *o = h->data;
    uint64_t now = uv_now(o->loop);
    while (o->nheap > 0 && o->heap[0]->due <= now) {
        ob_item_t *it = o->heap[0];
        if (o->draining && it->due > o->drain_deadline) break;
        heap_remove(o, it);
        if (it->dead_reason)
            dead_item(it, it->dead_reason);
        else if (it->kind == HR_ACTION_WRITE)
            deliver_write(it);
        else
            make_ready(it);
    }
    rearm(o);
    maybe_drained(o);
}

/* A new item for action a (taken over) at loc with id; due per its target's first wait. */
static ob_item_t *item_for_action(hr_outbox_t *o, hr_action_t *a, uint64_t id, hr_spool_loc_t loc)
{
    ob_item_t *it = item_new(o);
    it->a = a;
    it->a_weight = action_weight(a);
    o->loaded_bytes += it->a_weight;
    it->id = id;
    it->loc = loc;
    it->kind = a->kind;
    it->accepted_ms = a->accepted_ms;
    it->max_attempts = a->max_attempts ? a->max_attempts : 1;
    if (a->kind == HR_ACTION_WRITE) it->max_attempts = o->write_attempts; /* the outbox's policy */
    if (a->kind == HR_ACTION_FORWARD) {
        it->t = target_get(o, a->name ? a->name : "-");
        it->t->live++;
        uint64_t w = hr_target_wait(&it->t->pol, 1, hr_rand64());
        it->due = uv_now(o->loop) + w;
        it->due_wall = hr_wall_ms() + w;
    }
    return it;
}

/* ---- Push ------------------------------------------------------------------------------- */

/* A push waiting for its commit. */
typedef struct {
    hr_outbox_t *o;
    hr_action_t **acts;   /* the actions, owned until committed */
    uint64_t *ids;        /* their spool ids */
    hr_spool_loc_t *locs; /* their ACTION records */
    size_t n;
    void (*cb)(void *arg, int status);
    void *arg;
    char *incoming; /* for an incoming file: its path, unlinked once committed */
} push_t;

static void push_free(push_t *p)
{
    for (size_t i = 0; i < p->n; i++)
        hr_action_free(p->acts[i]);
    free(p->acts);
    free(p->ids);
    free(p->locs);
    free(p->incoming);
    free(p);
}

/* Undo appended ACTION records (DONE + unref), best effort. */
static void push_undo(hr_outbox_t *o, push_t *p, size_t upto)
{
    for (size_t i = 0; i < upto && o->spool; i++) {
        unsigned char idb[8];
        for (int k = 0; k < 8; k++)
            idb[k] = (unsigned char)(p->ids[i] >> (8 * k));
        hr_spool_loc_t loc;
        hr_spool_append(o->spool, HR_REC_DONE, idb, sizeof idb, false, &loc);
        hr_spool_unref(o->spool, p->locs[i]);
    }
}

static void on_committed(void *arg, int status)
{
    push_t *p = arg;
    hr_outbox_t *o = p->o;
    if (status < 0) {
        push_undo(o, p, p->n);
        o->st.refused++;
        if (p->incoming) { /* give the file back to the next scan */
            char *orig = hr_xstrndup(p->incoming, strlen(p->incoming) - 6);
            rename(p->incoming, orig);
            free(orig);
        }
        hr_log_error("spool: could not make %zu action(s) durable: %s", p->n, strerror(-status));
        if (p->cb) p->cb(p->arg, status);
        push_free(p);
        return;
    }
    if (p->incoming) {
        if (unlink(p->incoming) < 0 && errno != ENOENT)
            hr_log_error("replay: cannot remove %s: %s", p->incoming, strerror(errno));
        o->st.replayed += p->n;
        hr_log_info("replay: took %zu action(s) from %s", p->n, p->incoming);
    }
    for (size_t i = 0; i < p->n; i++) {
        hr_action_t *a = p->acts[i];
        p->acts[i] = NULL;
        if (o->drain_finished || o->closing) { /* stays in the spool for the next start */
            hr_action_free(a);
            continue;
        }
        ob_item_t *it = item_for_action(o, a, p->ids[i], p->locs[i]);
        /* A backlog (a slow target, or fsync modes that answer before delivery catches up)
         * stays on disk: past the cap, actions are read back from the spool on their turn. */
        if (it->kind == HR_ACTION_FORWARD && o->loaded_bytes > MAX_LOADED_BYTES) {
            hr_log_debug("outbox: %zu bytes of actions in memory: id=%llu waits on disk",
                         o->loaded_bytes, (unsigned long long)it->id);
            item_unload(it);
        }
        schedule(it);
    }
    if (p->cb) p->cb(p->arg, 0);
    push_free(p);
}

/* Append every action of list to the spool (taking them over) and commit. Returns 0 (cb will
 * run) or < 0 (nothing kept; cb will not run). */
static int push_list(hr_outbox_t *o, hr_action_t *list, void (*cb)(void *, int), void *arg,
                     const char *incoming)
{
    size_t n = 0;
    for (hr_action_t *a = list; a; a = a->next)
        n++;
    push_t *p = hr_xcalloc(1, sizeof *p);
    p->o = o;
    p->acts = hr_xcalloc(n ? n : 1, sizeof *p->acts);
    p->ids = hr_xcalloc(n ? n : 1, sizeof *p->ids);
    p->locs = hr_xcalloc(n ? n : 1, sizeof *p->locs);
    p->cb = cb;
    p->arg = arg;
    p->incoming = incoming ? hr_xstrdup(incoming) : NULL;
    size_t i = 0;
    while (list) {
        hr_action_t *a = list;
        list = a->next;
        a->next = NULL;
        p->acts[i++] = a;
    }
    p->n = n;
    int rc = o->spool && !o->closing ? 0 : -ESHUTDOWN;
    size_t done = 0;
    for (; rc == 0 && done < n; done++) {
        hr_action_t *a = p->acts[done];
        if (a->kind == HR_ACTION_FORWARD) {
            if (a->max_attempts < 1) a->max_attempts = 1;
            bool has = false;
            for (size_t h = 0; h < a->nheaders && !has; h++)
                has = strcasecmp(a->headers[h].name, "X-Hookrouter-Event-Id") == 0;
            if (!has && a->event_id[0])
                hr_action_add_header(a, "X-Hookrouter-Event-Id", a->event_id);
        }
        p->ids[done] = o->next_id++;
        hr_buf_reset(&o->scratch);
        hr_spool_encode_action(&o->scratch, a, p->ids[done]);
        rc = hr_spool_append(o->spool, HR_REC_ACTION, o->scratch.data, o->scratch.len, true,
                             &p->locs[done]);
        if (rc < 0) break;
    }
    if (rc == 0) rc = hr_spool_commit(o->spool, on_committed, p);
    if (rc < 0) {
        push_undo(o, p, done);
        push_free(p);
        return rc;
    }
    return 0;
}

int hr_outbox_push(hr_outbox_t *o, hr_action_t *list, void (*cb)(void *arg, int status), void *arg)
{
    size_t n = 0;
    for (hr_action_t *a = list; a; a = a->next)
        n++;
    o->st.accepted += n;
    int rc = push_list(o, list, cb, arg, NULL);
    compact_kick(o);
    if (rc < 0) {
        o->st.refused++;
        uint64_t now = uv_now(o->loop);
        if (now - o->last_full_log >= 1000 || o->last_full_log == 0) {
            hr_spool_stats_t ss;
            if (o->spool) hr_spool_stats(o->spool, &ss);
            if (rc == -ENOSPC && o->spool && hr_spool_is_full(o->spool, 0))
                hr_log_error("spool full (%llu bytes, max_spool_bytes reached): answering 503 "
                             "to new webhooks until deliveries free space (refused so far: %llu)",
                             (unsigned long long)ss.bytes, (unsigned long long)o->st.refused);
            else
                hr_log_error("spool: cannot store new actions (%s): answering 503 (refused so "
                             "far: %llu)",
                             strerror(-rc), (unsigned long long)o->st.refused);
            o->last_full_log = now;
        }
    }
    return rc;
}

/* ---- Incoming (replay) ------------------------------------------------------------------ */

typedef struct {
    hr_action_t *head;
    hr_action_t *tail;
    size_t bad;
} incoming_t;

static void on_incoming_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    incoming_t *in = arg;
    (void)loc;
    if (type != HR_REC_ACTION) return;
    hr_action_t *a = hr_spool_decode_action(p, n, NULL);
    if (!a) {
        in->bad++;
        return;
    }
    if (in->tail)
        in->tail->next = a;
    else
        in->head = a;
    in->tail = a;
}

/* Take in one incoming file. Returns 0 or < 0 (left for the next scan). */
static int take_incoming(hr_outbox_t *o, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -errno;
    }
    char *data = hr_xmalloc((size_t)st.st_size + 1);
    ssize_t got = 0;
    while (got < st.st_size) {
        ssize_t k = read(fd, data + got, (size_t)(st.st_size - got));
        if (k <= 0) break;
        got += k;
    }
    close(fd);
    incoming_t in = {0};
    uint64_t corrupt = hr_spool_parse(data, (size_t)got, 0, on_incoming_rec, &in, NULL);
    free(data);
    if (corrupt || in.bad)
        hr_log_warn("replay: %s: %llu corrupt record(s) skipped", path,
                    (unsigned long long)(corrupt + in.bad));
    if (!in.head) {
        unlink(path);
        return 0;
    }
    int rc = push_list(o, in.head, NULL, NULL, path);
    if (rc < 0)
        hr_log_warn("replay: cannot take %s now (%s); trying again in a second", path,
                    strerror(-rc));
    return rc;
}

static void on_incoming_timer(uv_timer_t *h)
{
    hr_outbox_t *o = h->data;
    if (o->closing || !o->spool) return;
    DIR *d = opendir(o->incoming_dir);
    if (!d) return;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        bool fresh = len > 4 && strcmp(e->d_name + len - 4, ".hrs") == 0;
        bool left = len > 10 && strcmp(e->d_name + len - 10, ".hrs.taken") == 0;
        if (!fresh && !(left && !o->incoming_scanned)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            names = hr_xrealloc(names, cap * sizeof *names);
        }
        names[n++] = hr_xasprintf("%s/%s", o->incoming_dir, e->d_name);
    }
    closedir(d);
    /* A fresh file is renamed first, so it is never taken twice while its commit runs; the
     * first scan also takes ".taken" files a crash left behind (a duplicate is possible, a
     * loss is not). */
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if (strcmp(names[i] + len - 6, ".taken") == 0) {
            take_incoming(o, names[i]);
        } else {
            char *taken = hr_xasprintf("%s.taken", names[i]);
            if (rename(names[i], taken) == 0 && take_incoming(o, taken) < 0)
                rename(taken, names[i]);
            free(taken);
        }
        free(names[i]);
    }
    free(names);
    o->incoming_scanned = true;
}

/* ---- Recovery --------------------------------------------------------------------------- */

/* The spool's records are folded into an hr_spool_index_t while hr_spool_open scans them;
 * the items are made from what is pending once the scan is over, in id (arrival) order. */

/* The target of a recovered forward action (created when first seen, as a push would),
 * kept as its index entry's user value; NULL for a write. */
static void *rec_target(void *arg, const hr_spool_action_meta_t *m)
{
    if (m->kind != HR_ACTION_FORWARD) return NULL;
    char name[256];
    size_t k = m->name_len < sizeof name - 1 ? m->name_len : sizeof name - 1;
    memcpy(name, m->name ? m->name : "-", m->name ? k : 1);
    name[m->name ? k : 1] = '\0';
    return target_get(arg, name);
}

static void on_recover_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    if (hr_spool_index_fold(arg, type, p, n, loc) == 0) return;
    if (type == HR_REC_ACTION) hr_log_warn("spool: malformed action record skipped");
    if (type == HR_REC_COPY) hr_log_warn("spool: malformed copy record skipped");
}

typedef struct {
    hr_outbox_t *o;
    uint64_t now;  /* uv_now */
    uint64_t wall; /* hr_wall_ms at the same time */
} recover_t;

/* An item for the recovered pending action e: it takes a reference on its record's segment
 * and is due at its persisted next-attempt time (at once if that is past). */
static void rec_item(void *arg, const hr_spool_entry_t *e)
{
    recover_t *r = arg;
    hr_outbox_t *o = r->o;
    ob_item_t *it = item_new(o);
    it->id = e->id;
    it->loc = e->loc;
    it->state_loc = e->state_loc;
    it->kind = e->kind;
    it->accepted_ms = e->accepted_ms;
    it->attempts = e->attempts;
    it->last_status = e->last_status;
    it->due_wall = e->next_due_ms;
    it->due = r->now + (it->due_wall > r->wall ? it->due_wall - r->wall : 0);
    it->max_attempts = e->max_attempts ? e->max_attempts : 1;
    if (e->kind == HR_ACTION_WRITE) it->max_attempts = o->write_attempts;
    it->t = e->user;
    if (it->t) it->t->live++;
    hr_spool_ref(o->spool, it->loc);
}

/* Make the items of what ix holds pending (in arrival order), then free ix. */
static void recover_items(hr_outbox_t *o, hr_spool_index_t *ix)
{
    uint64_t max_id = hr_spool_index_max_id(ix);
    if (max_id >= o->next_id) o->next_id = max_id + 1;
    recover_t r = {o, uv_now(o->loop), hr_wall_ms()};
    hr_spool_index_each(ix, rec_item, &r);
    hr_spool_index_destroy(ix);
}

/* ---- Compaction ------------------------------------------------------------------------- */

/* A compaction waiting for the sync of its copies. */
typedef struct {
    hr_outbox_t *o;  /* owner */
    hr_spool_t *sp;  /* the spool (o->spool is NULL once the outbox closes) */
    uint32_t seq;    /* the segment being emptied (pinned by one reference) */
    size_t moved;    /* actions copied forward */
    size_t total;    /* actions it held */
    uint64_t copied; /* bytes of the copies */
} compact_t;

/* Append a COPY of it (its action as stored, attempts, last status, next due time, attempt
 * log) and point it there; its segment reference moves with it. Returns 0, or < 0 with it
 * unchanged (the old record cannot be read, or the append failed). */
static int compact_item(hr_outbox_t *o, ob_item_t *it, uint64_t *bytes)
{
    hr_buf_t rec = HR_BUF_INIT, out = HR_BUF_INIT;
    hr_spool_copy_t c = {0};
    int type = hr_spool_read(o->spool, it->loc, &rec);
    int rc = 0;
    if (type == HR_REC_ACTION) {
        c.action = rec.data;
        c.action_len = rec.len;
    } else if (type != HR_REC_COPY || hr_spool_decode_copy(rec.data, rec.len, &c) < 0) {
        rc = type < 0 ? type : -EILSEQ;
        hr_log_error("spool: compaction cannot read the action id=%llu (%s); its segment stays",
                     (unsigned long long)it->id, strerror(-rc));
        goto out;
    }
    c.id = it->id;
    /* What a recovery would have computed: the attempt in flight has not finished. */
    c.attempts = it->attempts - (it->where == IT_FLIGHT && it->attempts > 0 ? 1 : 0);
    c.last_status = it->last_status;
    c.next_due_ms = it->due_wall;
    attempt_log_t lg;
    read_attempt_log(it, &lg);
    hr_spool_state_t *log = hr_xcalloc(lg.n ? lg.n : 1, sizeof *log);
    for (size_t i = 0; i < lg.n; i++)
        log[i] = (hr_spool_state_t){.id = it->id,
                                    .attempt = lg.v[i].attempt,
                                    .status = lg.v[i].status,
                                    .at_ms = lg.v[i].at_ms,
                                    .error = lg.v[i].error};
    hr_spool_encode_copy(&out, &c, log, lg.n);
    free(log);
    free(lg.v);
    free(lg.err);
    hr_spool_loc_t loc;
    rc = hr_spool_append(o->spool, HR_REC_COPY, out.data, out.len, false, &loc);
    if (rc < 0) goto out;
    hr_spool_unref(o->spool, it->loc); /* the old segment is pinned: it stays for now */
    it->loc = loc;
    it->state_loc = loc;
    *bytes += HR_SPOOL_HDR + out.len;
out:
    hr_buf_free(&rec);
    hr_buf_free(&out);
    return rc;
}

/* The copies are durable (or not): drop the pin, which deletes the old segment (and the
 * newer ones it kept) from the oldest end. After a failed sync the pin stays: the segment
 * is kept until the next start, whose recovery resolves old record and copy to one. */
static void on_compact_synced(void *arg, int status)
{
    compact_t *c = arg;
    hr_outbox_t *o = c->o;
    o->compacting = false;
    if (status < 0) {
        o->compact_skip = c->seq;
        hr_log_error("spool: compaction of seg-%016llx.hrs: sync failed (%s); the segment is "
                     "kept until the next start",
                     (unsigned long long)c->seq, strerror(-status));
        free(c);
        return;
    }
    hr_spool_stats_t before, after;
    hr_spool_stats(c->sp, &before);
    hr_spool_unref(c->sp, (hr_spool_loc_t)c->seq << 32);
    hr_spool_stats(c->sp, &after);
    o->st.compactions++;
    uint64_t freed = before.bytes > after.bytes ? before.bytes - after.bytes : 0;
    if (c->moved == c->total)
        hr_log_info("spool: compacted seg-%016llx.hrs (%zu pending moved, %llu bytes freed)",
                    (unsigned long long)c->seq, c->moved, (unsigned long long)freed);
    else
        hr_log_warn("spool: compacted seg-%016llx.hrs only in part (%zu of %zu pending moved); "
                    "it stays until the rest is finished",
                    (unsigned long long)c->seq, c->moved, c->total);
    free(c);
    if (freed && !o->closing && !o->drain_finished) compact_kick(o); /* maybe the next one */
}

/* One compaction step: if the spool has a candidate, copy its pending actions forward and
 * ask for a sync; the segment goes in on_compact_synced. Returns true if one started. Work:
 * the copies of one segment's pending actions, plus a walk of the oldest items. */
static bool compact_step(hr_outbox_t *o)
{
    if (!o->spool || o->closing || o->draining || o->compacting) return false;
    uint64_t refs = 0;
    uint32_t seq = hr_spool_compact_candidate(o->spool, &refs);
    if (!seq || seq == o->compact_skip) return false;
    /* Its items are among the oldest (arrival order is id order, and copies keep their
     * place), so the walk from the head stops early. */
    ob_item_t **v = hr_xmalloc(refs * sizeof *v);
    size_t n = 0;
    for (ob_item_t *it = o->all_head; it && n < refs; it = it->next)
        if (HR_LOC_SEG(it->loc) == seq) v[n++] = it;
    if (n < refs) { /* a push not committed yet holds the rest: later */
        free(v);
        o->compact_after = uv_now(o->loop) + COMPACT_RETRY_MS;
        return false;
    }
    compact_t *c = hr_xcalloc(1, sizeof *c);
    c->o = o;
    c->sp = o->spool;
    c->seq = seq;
    c->total = n;
    hr_spool_ref(o->spool, (hr_spool_loc_t)seq << 32); /* pinned until the copies are synced */
    for (size_t i = 0; i < n; i++) {
        if (compact_item(o, v[i], &c->copied) < 0) break;
        c->moved++;
    }
    free(v);
    o->compacting = true;
    if (hr_spool_sync(o->spool, on_compact_synced, c) < 0) { /* closing: the pin stays */
        o->compacting = false;
        free(c);
    }
    return true;
}

static void on_compact_timer(uv_timer_t *h)
{
    compact_step(h->data);
}

/* Run a compaction step on the next loop turn if one is due now (a push found the spool
 * full, or a segment just became a candidate). Cheap: called on every push. */
static void compact_kick(hr_outbox_t *o)
{
    if (!o->spool || o->closing || o->draining || o->compacting || o->compact_manual) return;
    if (uv_now(o->loop) < o->compact_after) return;
    uint32_t seq = hr_spool_compact_candidate(o->spool, NULL);
    if (!seq || seq == o->compact_skip) return;
    uv_timer_start(&o->compact_timer, on_compact_timer, 0, COMPACT_MS);
}

int hr_outbox_compact(hr_outbox_t *o)
{
    return compact_step(o) ? 1 : 0;
}

/* ---- Drain and close -------------------------------------------------------------------- */

static void on_http_closed(void *arg);

/* Stop: no more attempts; the HTTP client closes (requests in flight come back cancelled and
 * stay in the spool); drain_cb runs in on_http_closed. */
static void finish_drain(hr_outbox_t *o)
{
    if (o->drain_finished) return;
    o->drain_finished = true;
    uv_timer_stop(&o->drain_timer);
    uv_timer_stop(&o->retry_timer);
    uv_timer_stop(&o->incoming_timer);
    uv_timer_stop(&o->compact_timer);
    for (ob_target_t *t = o->targets; t; t = t->next)
        uv_timer_stop(&t->timer);
    if (o->http) hr_http_client_close(o->http, on_http_closed, o);
}

static void on_drain_timer(uv_timer_t *t)
{
    finish_drain(t->data);
}

/* True while draining if something may still start before the deadline. */
static bool drain_has_work(hr_outbox_t *o)
{
    if (o->inflight > 0) return true;
    if (o->nheap > 0 && o->heap[0]->due <= o->drain_deadline) return true;
    for (ob_target_t *t = o->targets; t; t = t->next)
        if (t->nready > 0 && t->circuit.state == HR_CIRCUIT_CLOSED) return true;
    return false;
}

static void maybe_drained(hr_outbox_t *o)
{
    if (o->draining && !o->drain_finished && !drain_has_work(o))
        uv_timer_start(&o->drain_timer, on_drain_timer, 0, 0);
}

static void outbox_maybe_free(hr_outbox_t *o);

/* The HTTP client is gone: let every item go (they stay in the spool) and end the drain. */
static void on_http_closed(void *arg)
{
    hr_outbox_t *o = arg;
    o->http = NULL;
    o->open_handles--;
    for (ob_target_t *t = o->targets; t; t = t->next) {
        t->ready_head = t->ready_tail = NULL;
        t->nready = 0;
    }
    size_t left = 0;
    while (o->all_head) {
        ob_item_t *it = o->all_head;
        if (it->where == IT_HEAP) heap_remove(o, it);
        if (it->lane) it->lane->head = NULL; /* lanes are freed with their target */
        it->lane = NULL;
        item_release(it, false);
        left++;
    }
    if (left)
        hr_log_info("shutdown: %zu undelivered action(s) stay in the spool for the next start",
                    left);
    if (o->drain_cb) {
        void (*cb)(void *) = o->drain_cb;
        o->drain_cb = NULL;
        cb(o->drain_arg);
    }
    outbox_maybe_free(o);
}

static void on_handle_closed(uv_handle_t *h)
{
    hr_outbox_t *o = h->data;
    o->open_handles--;
    outbox_maybe_free(o);
}

static void on_target_closed(uv_handle_t *h)
{
    ob_target_t *t = h->data;
    hr_outbox_t *o = t->o;
    o->open_handles--;
    outbox_maybe_free(o);
}

/* Free a target (its timer is closed). */
static void target_free(ob_target_t *t)
{
    if (t->lanes) {
        for (size_t i = 0; i < LANE_BUCKETS; i++) {
            while (t->lanes[i]) {
                ob_lane_t *l = t->lanes[i];
                t->lanes[i] = l->next;
                free(l->store);
                free(l);
            }
        }
        free(t->lanes);
    }
    hr_target_policy_free(&t->pol);
    free(t->name);
    free(t);
}

static void on_spool_closed(void *arg)
{
    hr_outbox_t *o = arg;
    o->open_handles--;
    outbox_maybe_free(o);
}

static void outbox_maybe_free(hr_outbox_t *o)
{
    if (!o->closing || o->open_handles > 0) return;
    void (*cb)(void *) = o->close_cb;
    void *arg = o->close_arg;
    while (o->targets) {
        ob_target_t *t = o->targets;
        o->targets = t->next;
        target_free(t);
    }
    free(o->heap);
    hr_target_policy_free(&o->writes);
    free(o->dead_letters);
    free(o->incoming_dir);
    hr_buf_free(&o->scratch);
    hr_buf_free(&o->line);
    free(o);
    if (cb) cb(arg);
}

/* ---- Public API ------------------------------------------------------------------------- */

hr_outbox_t *hr_outbox_open(uv_loop_t *loop, hr_files_t *files, const hr_outbox_opts_t *opts,
                            char *err, size_t errlen)
{
    hr_outbox_t *o = hr_xcalloc(1, sizeof *o);
    o->loop = loop;
    o->files = files;
    o->dead_letters = opts->dead_letters ? hr_xstrdup(opts->dead_letters) : NULL;
    o->next_id = 1;
    o->incoming_dir = hr_xasprintf("%s/incoming", opts->spool.dir);
    for (size_t i = 0; i < opts->ntargets; i++)
        target_set_policy(target_get(o, opts->targets[i].name), &opts->targets[i]);
    hr_target_policy_set(&o->writes, &opts->writes);
    o->write_attempts = opts->write_attempts ? opts->write_attempts : HR_DEF_WRITE_ATTEMPTS;
    uint64_t t0 = uv_hrtime();
    hr_spool_index_t *ix = hr_spool_index_create(rec_target, o);
    o->spool = hr_spool_open(loop, &opts->spool, on_recover_rec, ix, err, errlen);
    if (!o->spool) {
        /* The targets' timers close from the loop; the rest is freed then. */
        hr_spool_index_destroy(ix);
        o->closing = true;
        for (ob_target_t *t = o->targets; t; t = t->next)
            uv_close((uv_handle_t *)&t->timer, on_target_closed);
        if (o->open_handles == 0) outbox_maybe_free(o);
        return NULL;
    }
    hr_http_client_opts_t ho = {.max_conns_per_host = opts->max_conns_per_host};
    o->http = hr_http_client_open(loop, &ho);
    uv_timer_init(loop, &o->retry_timer);
    uv_timer_init(loop, &o->drain_timer);
    uv_timer_init(loop, &o->incoming_timer);
    uv_timer_init(loop, &o->compact_timer);
    o->retry_timer.data = o;
    o->drain_timer.data = o;
    o->incoming_timer.data = o;
    o->compact_timer.data = o;
    o->open_handles += 6; /* four timers, the HTTP client and the spool */
    hr_mkdir_p(o->incoming_dir);

    /* Take the references of what is pending, then let the spool drop what is finished. */
    recover_items(o, ix);
    hr_spool_gc(o->spool);
    o->st.recovered = o->st.pending;
    hr_spool_stats(o->spool, &o->st.spool);
    double ms = (double)(uv_hrtime() - t0) / 1e6;
    if (o->st.recovered || o->st.spool.corrupt)
        hr_log_info("spool %s: recovered %llu pending action(s) in %.1f ms (%llu segments, "
                    "%llu bytes, %llu corrupt records skipped); delivering them again",
                    opts->spool.dir, (unsigned long long)o->st.recovered, ms,
                    (unsigned long long)o->st.spool.segments, (unsigned long long)o->st.spool.bytes,
                    (unsigned long long)o->st.spool.corrupt);
    /* Schedule in arrival order (lanes depend on it). */
    ob_item_t *it = o->all_head;
    while (it) {
        ob_item_t *next = it->next;
        schedule(it);
        it = next;
    }
    uint64_t scan = opts->incoming_scan_ms ? opts->incoming_scan_ms : 1000;
    uv_timer_start(&o->incoming_timer, on_incoming_timer, 0, scan);
    o->compact_manual = opts->manual_compaction;
    if (!o->compact_manual)
        uv_timer_start(&o->compact_timer, on_compact_timer, COMPACT_MS, COMPACT_MS);
    return o;
}

void hr_outbox_set_dead_letters(hr_outbox_t *o, const char *path)
{
    free(o->dead_letters);
    o->dead_letters = path ? hr_xstrdup(path) : NULL;
}

void hr_outbox_set_writes(hr_outbox_t *o, const hr_outbox_target_t *p, uint32_t max_attempts)
{
    hr_target_policy_set(&o->writes, p);
    o->write_attempts = max_attempts ? max_attempts : HR_DEF_WRITE_ATTEMPTS;
}

void hr_outbox_set_targets(hr_outbox_t *o, const hr_outbox_target_t *t, size_t n)
{
    if (o->closing) return;
    for (size_t i = 0; i < n; i++) {
        ob_target_t *tg = target_get(o, t[i].name);
        target_set_policy(tg, &t[i]);
        pump(tg);
    }
}

void hr_outbox_stats(const hr_outbox_t *o, hr_outbox_stats_t *st)
{
    *st = o->st;
    if (o->spool) hr_spool_stats(o->spool, &st->spool);
}

void hr_outbox_each_pending(const hr_outbox_t *o,
                            void (*cb)(void *arg, const hr_outbox_pending_t *p), void *arg)
{
    for (const ob_item_t *it = o->all_head; it; it = it->next) {
        hr_outbox_pending_t p = {
            .id = it->id,
            .target = it->t ? it->t->name : NULL,
            .attempts = it->attempts - (it->where == IT_FLIGHT && it->attempts > 0 ? 1 : 0),
            .last_status = it->last_status,
            .next_due_ms = it->due_wall,
            .loc = it->loc,
        };
        cb(arg, &p);
    }
}

void hr_outbox_targets_json(const hr_outbox_t *o, hr_buf_t *out)
{
    static const char *const names[] = {"closed", "open", "half-open"};
    hr_buf_appendc(out, '{');
    bool first = true;
    for (const ob_target_t *t = o->targets; t; t = t->next) {
        if (!first) hr_buf_appendc(out, ',');
        first = false;
        hr_buf_append_json_string(out, t->name, strlen(t->name));
        hr_buf_printf(out, ":{\"circuit\":\"%s\",\"in_flight\":%u,\"queued\":%zu}",
                      names[t->circuit.state], (unsigned)t->inflight, t->live);
    }
    hr_buf_appendc(out, '}');
}

void hr_outbox_drain(hr_outbox_t *o, uint64_t grace_ms, void (*cb)(void *arg), void *arg)
{
    if (o->draining) return;
    o->draining = true;
    o->drain_cb = cb;
    o->drain_arg = arg;
    o->drain_deadline = uv_now(o->loop) + grace_ms;
    uv_timer_stop(&o->incoming_timer);
    if (!drain_has_work(o))
        uv_timer_start(&o->drain_timer, on_drain_timer, 0, 0);
    else
        uv_timer_start(&o->drain_timer, on_drain_timer, grace_ms, 0);
}

void hr_outbox_close(hr_outbox_t *o, void (*cb)(void *arg), void *arg)
{
    if (o->closing) return;
    o->draining = true;
    o->drain_cb = NULL;
    finish_drain(o);
    o->closing = true;
    o->close_cb = cb;
    o->close_arg = arg;
    uv_close((uv_handle_t *)&o->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&o->drain_timer, on_handle_closed);
    uv_close((uv_handle_t *)&o->incoming_timer, on_handle_closed);
    uv_close((uv_handle_t *)&o->compact_timer, on_handle_closed);
    for (ob_target_t *t = o->targets; t; t = t->next)
        uv_close((uv_handle_t *)&t->timer, on_target_closed);
    hr_spool_t *sp = o->spool;
    o->spool = NULL;
    if (sp) hr_spool_close(sp, on_spool_closed, o);
}
