/* The outbox's dead letters: finishing an item as a dead letter (its line with the attempt
 * log, read back from the STATE chain and the COPY it reaches), and, when the dead-letter file
 * fails, keeping it in the spool and trying again a second later. Part of the outbox
 * (src/outbox.c; the shared types in src/outbox_int.h, the contract in include/hr/outbox.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/deadletter.h"
#include "hr/delivery_log.h"
#include "hr/log.h"
#include "outbox_int.h"

#define MAX_LOG_ATTEMPTS 1000
#define DL_RETRY_MS      1000 /* wait before writing a dead letter again after it failed */

/* ---- Dead letters ----------------------------------------------------------------------- */

/* Room for one more entry in lg (cap: its slots). */
static void log_grow(ob_attempt_log_t *lg, size_t *cap)
{
    if (lg->n < *cap) return;
    *cap = *cap ? *cap * 2 : 8;
    lg->v = hr_xrealloc(lg->v, *cap * sizeof *lg->v);
    lg->err = hr_xrealloc(lg->err, *cap * sizeof *lg->err);
}

/* Reverse the entries [i, j) of lg. */
static void log_reverse(ob_attempt_log_t *lg, size_t i, size_t j)
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
static void log_add_copy(ob_attempt_log_t *lg, size_t *cap, hr_spool_copy_t *c)
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
void ob_read_attempt_log(ob_item_t *it, ob_attempt_log_t *lg)
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
        hr_log_kv(HR_LOG_ERROR, "dead letter stays in the spool: the dead-letter file failed",
                  HR_KV_STR("id", it->a && it->a->event_id[0] ? it->a->event_id : NULL),
                  HR_KV_STR("error", err), HR_KV_STR("reason", reason),
                  HR_KV_UINT("retry_in_ms", DL_RETRY_MS),
                  HR_KV_UINT("lines_left_out", o->dl_suppressed));
        o->last_dl_log = now;
        o->dl_suppressed = 0;
    } else {
        o->dl_suppressed++;
    }
    it->dead_reason = reason;
    it->due = now + DL_RETRY_MS;
    it->due_wall = hr_wall_ms() + DL_RETRY_MS;
    ob_item_unload(it);
    ob_heap_push(o, it);
    ob_rearm(o);
}

/* Write the dead letter of it (reason: a literal) and finish it; if the dead-letter file
 * fails, it stays in the spool and is tried again later (dead_later). */
void ob_dead_item(ob_item_t *it, const char *reason)
{
    hr_outbox_t *o = it->o;
    if (ob_item_load(it) == 0) {
        hr_action_t *a = it->a;
        a->attempts = it->attempts;
        hr_dlog_dead(a, reason);
        ob_attempt_log_t lg;
        ob_read_attempt_log(it, &lg);
        hr_buf_reset(&o->line);
        hr_deadletter_for_action_log(&o->line, a, reason, lg.v, lg.n);
        free(lg.v);
        free(lg.err);
        char err[256];
        if (!o->dead_letters) {
            hr_log_kv(HR_LOG_ERROR, "dead-letter file not configured: the dead letter is only here",
                      HR_KV_STR("id", a->event_id), HR_KV_STR("dead_letter", o->line.data));
        } else if (hr_files_append(o->files, o->dead_letters, o->line.data, o->line.len, err,
                                   sizeof err) < 0) {
            dead_later(it, reason, err);
            return;
        }
    } else {
        hr_log_kv(HR_LOG_ERROR, "dead-letter", HR_KV_UINT("spool_id", it->id),
                  HR_KV_STR("error", "the spool record is unreadable"),
                  HR_KV_STR("reason", reason));
    }
    o->st.dead++;
    ob_tstats(it)->dead++;
    ob_item_release(it, true);
}
