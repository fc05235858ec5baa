/* The outbox's internals, shared by its own files only (src/outbox*.c; nothing else includes
 * this): the structs of the outbox, its targets, lanes and items, and the ob_* functions one
 * part calls in another. The parts: outbox.c (targets and lanes, the heap, items, scheduling,
 * push, drain and close, the public API), outbox_deliver.c (an attempt and its outcome:
 * forwards, writes, the circuit glue, retry or dead letter), outbox_dead.c (dead letters and
 * the attempt log), outbox_compact.c (copying pending actions off the oldest segment),
 * outbox_incoming.c (the replay folder) and outbox_recover.c (items from the spool index at
 * open). The contract to the rest of the program is include/hr/outbox.h. */
#ifndef HR_OUTBOX_INT_H
#define HR_OUTBOX_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "hr/deadletter.h"
#include "hr/http_client.h"
#include "hr/metrics.h"
#include "hr/outbox.h"
#include "hr/spool.h"
#include "hr/spool_index.h"
#include "hr/target.h"

#define COMPACT_MS 1000 /* how often the spool is looked at for compaction */

typedef enum { IT_NONE = 0, IT_HEAP, IT_READY, IT_LANE, IT_FLIGHT } ob_where_t;

struct ob_target;
struct ob_lane;

/* What /metrics reports of one target (or of the write actions, o->writes_m). */
typedef hr_target_stats_t ob_tstats_t;

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
    ob_where_t where;         /* see outbox.c's opening comment */
    const char *dead_reason;  /* a dead letter that could not be written yet (a literal) */
    uint64_t started_ms;      /* uv_now when the attempt in flight started */
    uint64_t started_ns;      /* uv_hrtime then (the attempt's duration for /metrics) */
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
    ob_tstats_t m;          /* for /metrics */
    hr_bucket_t bucket;     /* rate bucket (times in uv_now) */
    uv_timer_t timer;       /* probe / rate wake-up */
    ob_lane_t **lanes;      /* LANE_BUCKETS chains when ordered, else NULL */
} ob_target_t;

struct hr_outbox {
    uv_loop_t *loop;           /* the loop */
    size_t loaded_bytes;       /* about what the loaded actions (it->a) take, see ob_item_unload */
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
    ob_tstats_t writes_m;      /* the write actions' figures for /metrics */
};

/* The /metrics figures it counts in: its target's, or the write actions'. */
static inline ob_tstats_t *ob_tstats(ob_item_t *it)
{
    return it->t ? &it->t->m : &it->o->writes_m;
}

/* it was delivered now: count it and its lag (accepted to now). */
static inline void ob_count_delivered(ob_item_t *it, uint64_t wall_ms)
{
    ob_tstats_t *m = ob_tstats(it);
    m->delivered++;
    uint64_t lag = wall_ms > it->accepted_ms ? wall_ms - it->accepted_ms : 0;
    hr_histogram_observe(&m->lag, lag * 1000);
}

/* An attempt log being collected: v[i].error points into err[i] once it is complete. */
typedef struct {
    hr_attempt_t *v;
    char (*err)[256];
    size_t n;
} ob_attempt_log_t;

/* ---- outbox.c: targets, heap, items, push, drain ---------------------------------------- */

/* The target called name, created with the default policy if it is new. Never NULL. */
ob_target_t *ob_target_get(hr_outbox_t *o, const char *name);
/* Put it in the heap of waiting items (due at it->due); ob_rearm then arms the timer. */
void ob_heap_push(hr_outbox_t *o, ob_item_t *it);
/* Arm the retry timer for the earliest waiting item, or stop it. */
void ob_rearm(hr_outbox_t *o);
/* A new item at the end of o's pending list (counted pending), zeroed but for its owner. */
ob_item_t *ob_item_new(hr_outbox_t *o);
/* Unlink it from everything and free it. With done, its DONE record is written and its
 * segment reference dropped; without, it stays pending in the spool (shutdown). The next item
 * of its lane, if any, is scheduled. */
void ob_item_release(ob_item_t *it, bool done);
/* Make sure it->a is loaded. Returns 0, or -1 if the record cannot be read. */
int ob_item_load(ob_item_t *it);
/* Drop it's loaded action (it stays in the spool; ob_item_load reads it back). */
void ob_item_unload(ob_item_t *it);
/* Append every action of list to the spool (taking them over) and commit. Returns 0 (cb will
 * run) or < 0 (nothing kept; cb will not run). incoming: the replay file they came from
 * (unlinked once committed, given back to the next scan if the commit fails), or NULL. */
int ob_push_list(hr_outbox_t *o, hr_action_t *list, void (*cb)(void *, int), void *arg,
                 const char *incoming);
/* While draining: end the drain on the next loop turn if nothing may start any more. */
void ob_maybe_drained(hr_outbox_t *o);

/* ---- outbox_deliver.c: an attempt and its outcome --------------------------------------- */

/* Start what t may start now: ready items, within concurrency, the circuit and the rate. */
void ob_pump(ob_target_t *t);
/* Put a due forward at the end of its target's ready queue and pump. */
void ob_make_ready(ob_item_t *it);
/* Append a write action's line to its file now: delivered, retried or dead-lettered. */
void ob_deliver_write(ob_item_t *it);

/* ---- outbox_dead.c: dead letters and the attempt log ------------------------------------ */

/* Write the dead letter of it (reason: a literal) and finish it; if the dead-letter file
 * fails, it stays in the spool and is tried again later. */
void ob_dead_item(ob_item_t *it, const char *reason);
/* Collect the attempt log of it (oldest first) from its STATE chain, ending with the log of
 * the COPY the chain reaches, if any. The caller frees lg->v and lg->err. */
void ob_read_attempt_log(ob_item_t *it, ob_attempt_log_t *lg);

/* ---- outbox_compact.c: compaction ------------------------------------------------------- */

/* The compaction timer (o in h->data): one compaction step. */
void ob_on_compact_timer(uv_timer_t *h);
/* Run a compaction step on the next loop turn if one is due now. Cheap: called on every
 * push. */
void ob_compact_kick(hr_outbox_t *o);

/* ---- outbox_incoming.c: the replay folder ----------------------------------------------- */

/* The incoming timer (o in h->data): take in the files of <spool_dir>/incoming/. */
void ob_on_incoming_timer(uv_timer_t *h);

/* ---- outbox_recover.c: recovery at open ------------------------------------------------- */

/* The index's user value for a recovered action (hr_spool_index_create; arg: the outbox):
 * its target, created when first seen; NULL for a write. */
void *ob_recover_target(void *arg, const hr_spool_action_meta_t *m);
/* The spool's record callback at open (hr_spool_open; arg: the index): fold the record. */
void ob_recover_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc);
/* Make the items of what ix holds pending (in arrival order), then free ix. */
void ob_recover_items(hr_outbox_t *o, hr_spool_index_t *ix);

#endif
