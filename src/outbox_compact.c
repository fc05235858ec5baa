/* The outbox's compaction: copying the few pending actions of the oldest segment forward so
 * that it can go. Part of the outbox (src/outbox.c; the shared types in src/outbox_int.h, the
 * contract in include/hr/outbox.h).
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
 * (arrival) order. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hr/log.h"
#include "outbox_int.h"

#define COMPACT_RETRY_MS 100 /* after a candidate whose items were not all found */

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
    ob_attempt_log_t lg;
    ob_read_attempt_log(it, &lg);
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
    if (freed && !o->closing && !o->drain_finished) ob_compact_kick(o); /* maybe the next one */
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

void ob_on_compact_timer(uv_timer_t *h)
{
    compact_step(h->data);
}

/* Run a compaction step on the next loop turn if one is due now (a push found the spool
 * full, or a segment just became a candidate). Cheap: called on every push. */
void ob_compact_kick(hr_outbox_t *o)
{
    if (!o->spool || o->closing || o->draining || o->compacting || o->compact_manual) return;
    if (uv_now(o->loop) < o->compact_after) return;
    uint32_t seq = hr_spool_compact_candidate(o->spool, NULL);
    if (!seq || seq == o->compact_skip) return;
    uv_timer_start(&o->compact_timer, ob_on_compact_timer, 0, COMPACT_MS);
}

int hr_outbox_compact(hr_outbox_t *o)
{
    return compact_step(o) ? 1 : 0;
}
