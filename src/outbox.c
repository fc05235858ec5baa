/* The durable outbox's core: targets and their lanes, the heap of waiting items, the items,
 * scheduling, push, drain and close, and the public API (see include/hr/outbox.h). The other
 * parts share the types of src/outbox_int.h: an attempt and its outcome (forwards, writes,
 * the circuit, retry or dead letter) in outbox_deliver.c, dead letters and the attempt log in
 * outbox_dead.c, compaction in outbox_compact.c, the replay folder in outbox_incoming.c and
 * recovery at open in outbox_recover.c.
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
 * letter" after an attempt) is the target policy's (src/target.c); the outbox's files keep the
 * timers and queues and call it.
 *
 * Drain: attempts due after the deadline are not started; when nothing is in flight (or at
 * the deadline, cancelling what is) the HTTP client closes and every item is let go without a
 * DONE: it stays in the spool for the next start. */
#include "hr/outbox.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hr/defaults.h"
#include "hr/http_client.h"
#include "hr/log.h"
#include "hr/spool_index.h"
#include "hr/target.h"
#include "outbox_int.h"

static void on_retry_timer(uv_timer_t *t);
static void schedule(ob_item_t *it);

/* Loaded actions (it->a) beyond this many bytes are not kept in memory while they wait: they
 * are read back from the spool when their attempt starts. */
#define MAX_LOADED_BYTES (32u << 20)

/* About the memory a loaded action takes: what loaded_bytes counts. */
static size_t action_weight(const hr_action_t *a)
{
    return sizeof *a + a->body_len + 64 * a->nheaders + (a->url ? strlen(a->url) : 0);
}

/* Drop it's loaded action (it stays in the spool; ob_item_load reads it back). */
void ob_item_unload(ob_item_t *it)
{
    if (!it->a) return;
    it->o->loaded_bytes -= it->a_weight;
    it->a_weight = 0;
    hr_action_free(it->a);
    it->a = NULL;
}

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
ob_target_t *ob_target_get(hr_outbox_t *o, const char *name)
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

void ob_heap_push(hr_outbox_t *o, ob_item_t *it)
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
void ob_rearm(hr_outbox_t *o)
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

ob_item_t *ob_item_new(hr_outbox_t *o)
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
void ob_item_release(ob_item_t *it, bool done)
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
    ob_item_unload(it);
    free(it);
    if (next_head && !o->drain_finished && !o->closing) {
        next_head->where = IT_NONE;
        schedule(next_head);
    }
}

/* Make sure it->a is loaded. Returns 0, or -1 if the record cannot be read. */
int ob_item_load(ob_item_t *it)
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

/* ---- Scheduling ------------------------------------------------------------------------- */

/* Route a new or recovered item (or a lane's next head): writes at once; forwards into the
 * heap or the ready queue, or parked behind their lane's head. */
static void schedule(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    if (it->kind == HR_ACTION_WRITE) {
        if (it->due > uv_now(o->loop)) {
            ob_heap_push(o, it);
            ob_rearm(o);
        } else {
            ob_deliver_write(it);
        }
        return;
    }
    ob_target_t *t = it->t;
    if (t->pol.ordered && !it->lane) {
        const char *store = NULL;
        char buf[256];
        if (it->a) {
            store = it->a->store;
        } else if (ob_item_load(it) == 0) {
            snprintf(buf, sizeof buf, "%s", it->a->store ? it->a->store : "");
            store = it->a->store ? buf : NULL;
            ob_item_unload(it);
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
        ob_heap_push(o, it);
        ob_rearm(o);
    } else {
        ob_make_ready(it);
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
            ob_dead_item(it, it->dead_reason);
        else if (it->kind == HR_ACTION_WRITE)
            ob_deliver_write(it);
        else
            ob_make_ready(it);
    }
    ob_rearm(o);
    ob_maybe_drained(o);
}

/* A new item for action a (taken over) at loc with id; due per its target's first wait. */
static ob_item_t *item_for_action(hr_outbox_t *o, hr_action_t *a, uint64_t id, hr_spool_loc_t loc)
{
    ob_item_t *it = ob_item_new(o);
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
        it->t = ob_target_get(o, a->name ? a->name : "-");
        it->t->live++;
        uint64_t w = hr_target_wait(&it->t->pol, 1, hr_rand64());
        it->due = uv_now(o->loop) + w;
        it->due_wall = hr_wall_ms() + w;
    }
    ob_tstats(it)->accepted++;
    return it;
}

/* ---- Push ------------------------------------------------------------------------------- */

/* A push waiting for its commit: one block, its three arrays after it. */
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
            ob_item_unload(it);
        }
        schedule(it);
    }
    if (p->cb) p->cb(p->arg, 0);
    push_free(p);
}

/* Append every action of list to the spool (taking them over) and commit. Returns 0 (cb will
 * run) or < 0 (nothing kept; cb will not run). */
int ob_push_list(hr_outbox_t *o, hr_action_t *list, void (*cb)(void *, int), void *arg,
                 const char *incoming)
{
    size_t n = 0;
    for (hr_action_t *a = list; a; a = a->next)
        n++;
    push_t *p = hr_xcalloc(1, sizeof *p + n * (sizeof *p->acts + sizeof *p->ids + sizeof *p->locs));
    p->o = o;
    p->ids = (uint64_t *)(p + 1); /* the 8-byte arrays first, the pointers after them */
    p->locs = (hr_spool_loc_t *)(p->ids + n);
    p->acts = (hr_action_t **)(p->locs + n);
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
    int rc = ob_push_list(o, list, cb, arg, NULL);
    ob_compact_kick(o);
    o->st.spool_full = rc == -ENOSPC;
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

void ob_maybe_drained(hr_outbox_t *o)
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
        ob_item_release(it, false);
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
        target_set_policy(ob_target_get(o, opts->targets[i].name), &opts->targets[i]);
    hr_target_policy_set(&o->writes, &opts->writes);
    o->write_attempts = opts->write_attempts ? opts->write_attempts : HR_DEF_WRITE_ATTEMPTS;
    uint64_t t0 = uv_hrtime();
    hr_spool_index_t *ix = hr_spool_index_create(ob_recover_target, o);
    o->spool = hr_spool_open(loop, &opts->spool, ob_recover_rec, ix, err, errlen);
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
    ob_recover_items(o, ix);
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
    uv_timer_start(&o->incoming_timer, ob_on_incoming_timer, 0, scan);
    o->compact_manual = opts->manual_compaction;
    if (!o->compact_manual)
        uv_timer_start(&o->compact_timer, ob_on_compact_timer, COMPACT_MS, COMPACT_MS);
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
        ob_target_t *tg = ob_target_get(o, t[i].name);
        target_set_policy(tg, &t[i]);
        ob_pump(tg);
    }
}

void hr_outbox_stats(const hr_outbox_t *o, hr_outbox_stats_t *st)
{
    *st = o->st;
    if (st->pending == 0) st->spool_full = false; /* the next push finds the room */
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

/* Append a histogram as {"buckets":[per-bucket counts, not cumulative],"sum_us":N}. */
static void histogram_json(hr_buf_t *out, const hr_histogram_t *h)
{
    hr_buf_appends(out, "{\"buckets\":[");
    for (size_t i = 0; i <= HR_METRICS_NBUCKETS; i++)
        hr_buf_printf(
            out, "%s%llu", i ? "," : "",
            (unsigned long long)atomic_load_explicit(&h->bucket[i], memory_order_relaxed));
    hr_buf_printf(out, "],\"sum_us\":%llu}",
                  (unsigned long long)atomic_load_explicit(&h->sum_us, memory_order_relaxed));
}

void hr_target_stats_json(hr_buf_t *out, const hr_target_stats_t *m, uint64_t pending,
                          uint64_t oldest)
{
    uint64_t wall = hr_wall_ms();
    hr_buf_printf(out,
                  "\"pending\":%llu,\"oldest_age_ms\":%llu,\"accepted\":%llu,"
                  "\"delivered\":%llu,\"retried\":%llu,\"dead\":%llu,\"duration\":",
                  (unsigned long long)pending,
                  (unsigned long long)(oldest && wall > oldest ? wall - oldest : 0),
                  (unsigned long long)m->accepted, (unsigned long long)m->delivered,
                  (unsigned long long)m->retried, (unsigned long long)m->dead);
    histogram_json(out, &m->duration);
    hr_buf_appends(out, ",\"lag\":");
    histogram_json(out, &m->lag);
}

/* accepted_ms of the oldest unfinished action of t (a write when t is NULL), 0 if none. The
 * items are in arrival order, so the first one found is the oldest; O(items) at worst. */
static uint64_t oldest_of(const hr_outbox_t *o, const ob_target_t *t)
{
    for (const ob_item_t *it = o->all_head; it; it = it->next)
        if (it->t == t) return it->accepted_ms ? it->accepted_ms : 1;
    return 0;
}

void hr_outbox_targets_json(const hr_outbox_t *o, hr_buf_t *out)
{
    static const char *const names[] = {"closed", "open", "half-open"};
    uint64_t forwards = 0;
    hr_buf_appendc(out, '{');
    for (const ob_target_t *t = o->targets; t; t = t->next) {
        hr_buf_append_json_string(out, t->name, strlen(t->name));
        hr_buf_printf(out, ":{\"circuit\":\"%s\",\"in_flight\":%u,\"queued\":%zu,",
                      names[t->circuit.state], (unsigned)t->inflight, t->live);
        hr_target_stats_json(out, &t->m, t->live, t->live ? oldest_of(o, t) : 0);
        hr_buf_appends(out, "},");
        forwards += t->live;
    }
    /* the write actions, under a name no target can have ("(" is not allowed in one) */
    uint64_t writes = o->st.pending > forwards ? o->st.pending - forwards : 0;
    hr_buf_appends(out, "\"(writes)\":{");
    hr_target_stats_json(out, &o->writes_m, writes, writes ? oldest_of(o, NULL) : 0);
    hr_buf_appends(out, "}}");
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
