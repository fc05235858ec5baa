/* The outbox's attempts and their outcomes: sending a forward (pump, within concurrency, the
 * circuit and the rate), appending a write, and after an attempt the circuit glue, the STATE
 * record and "retry or dead letter" as the target policy decides (src/target.c). Part of the
 * outbox (src/outbox.c; the shared types in src/outbox_int.h, the contract in
 * include/hr/outbox.h). */
#include <stdio.h>
#include <string.h>

#include "hr/defaults.h"
#include "hr/delivery_log.h"
#include "hr/http_client.h"
#include "hr/log.h"
#include "hr/sign.h"
#include "hr/target.h"
#include "outbox_int.h"

#define KEEP_LOADED_MS 10000 /* keep the action in memory across waits shorter than this */

static void on_target_timer(uv_timer_t *t);

static void set_last_error(hr_action_t *a, const char *msg)
{
    size_t n = strlen(msg);
    if (n >= sizeof a->last_error) n = sizeof a->last_error - 1;
    memcpy(a->last_error, msg, n);
    a->last_error[n] = '\0';
}

/* ---- Circuit breaker -------------------------------------------------------------------- */

/* The target answered (delivered, or rejected: it is up). */
static void circuit_success(ob_target_t *t)
{
    hr_dlog_circuit(t->name, hr_circuit_success(&t->circuit), &t->circuit, t->pol.circuit_probe_ms);
}

/* A retriable failure (transport error, 408, 429, 5xx). */
static void circuit_failure(ob_target_t *t)
{
    hr_dlog_circuit(t->name, hr_circuit_failure(&t->circuit, &t->pol, uv_now(t->o->loop)),
                    &t->circuit, t->pol.circuit_probe_ms);
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
 * time, the "retry" line and the heap. error: the attempt's error for the STATE record (and
 * the line, when the attempt got no HTTP status). */
static void retry_or_dead(ob_item_t *it, const hr_target_policy_t *p, const hr_target_attempt_t *at,
                          const char *error)
{
    hr_outbox_t *o = it->o;
    hr_action_t *a = it->a;
    uint64_t now = uv_now(o->loop), wall = hr_wall_ms();
    hr_target_next_t next = hr_target_after_attempt(p, at, wall, hr_rand64());
    if (next.dead) {
        record_state(it, error, 0);
        ob_dead_item(it, next.dead);
        return;
    }
    it->due = now + next.wait_ms;
    it->due_wall = wall + next.wait_ms;
    record_state(it, error, it->due_wall);
    hr_dlog_retry(a, it->last_status, error, it->attempts, it->max_attempts, next.wait_ms);
    o->st.retried++;
    ob_tstats(it)->retried++;
    if (next.wait_ms > KEEP_LOADED_MS) ob_item_unload(it);
    ob_heap_push(o, it);
    ob_rearm(o);
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
    bool cut_off = err == UV_ECANCELED && (o->draining || o->closing);
    if (!cut_off) hr_histogram_observe(&t->m.duration, (uv_hrtime() - it->started_ns) / 1000);
    if (cut_off) {
        /* Cut off by shutdown: not an attempt; it stays in the spool. */
        it->attempts--;
        hr_circuit_unprobe(&t->circuit);
        ob_item_release(it, false);
        ob_maybe_drained(o);
        return;
    }
    char what[sizeof a->last_error + 8];
    bool delivered = hr_target_outcome(a, err, errmsg, res, what, sizeof what);
    it->last_status = a->last_status;
    a->attempts = it->attempts;

    if (delivered) {
        circuit_success(t);
        hr_dlog_delivered(a, res->status, it->attempts);
        o->st.delivered++;
        ob_count_delivered(it, hr_wall_ms());
        ob_item_release(it, true);
        ob_pump(t);
        ob_maybe_drained(o);
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
    retry_or_dead(it, &t->pol, &at, a->last_error);
    ob_pump(t);
    ob_maybe_drained(o);
}

/* Send the next attempt of it (a forward). */
static void start_attempt(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    ob_target_t *t = it->t;
    if (ob_item_load(it) < 0) {
        o->st.dead++;
        ob_tstats(it)->dead++;
        ob_item_release(it, true);
        return;
    }
    hr_action_t *a = it->a;
    it->attempts++;
    a->attempts = it->attempts;
    /* Signed now, as the target's current policy says, over the bytes this attempt sends. */
    hr_signed_headers_t sh;
    hr_http_out_t req;
    hr_target_request(&t->pol, a, hr_wall_ms() / 1000, &sh, &req);
    int rc = o->http ? hr_http_client_send(o->http, &req, on_http_done, it) : UV_ECANCELED;
    hr_signed_headers_free(&sh); /* the client copied what it sends */
    if (rc < 0) {
        a->last_status = 0;
        it->last_status = 0;
        set_last_error(a, rc == UV_EINVAL ? "invalid URL" : uv_strerror(rc));
        record_state(it, a->last_error, 0);
        ob_dead_item(it, rc == UV_EINVAL ? "invalid url" : "client closed");
        return;
    }
    it->where = IT_FLIGHT;
    it->started_ms = uv_now(o->loop);
    it->started_ns = uv_hrtime();
    t->inflight++;
    o->inflight++;
}

/* Start what t may start now: ready items, within concurrency, the circuit and the rate. */
void ob_pump(ob_target_t *t)
{
    hr_outbox_t *o = t->o;
    if (!o->http || o->closing || o->drain_finished) return;
    while (t->ready_head) {
        if (t->inflight >= t->pol.concurrency) return;
        uint64_t now = uv_now(o->loop), wait = 0;
        switch (hr_circuit_gate(&t->circuit, now, &wait)) {
        case HR_GATE_BUSY: return; /* the probe is out */
        case HR_GATE_WAIT: uv_timer_start(&t->timer, on_target_timer, wait, 0); return;
        case HR_GATE_PROBE: hr_dlog_probe(t->name);
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
            if (ob_item_load(it) == 0) set_last_error(it->a, "max age exceeded while waiting");
            ob_dead_item(it, "max age exceeded");
            continue;
        }
        start_attempt(it);
    }
}

static void on_target_timer(uv_timer_t *h)
{
    ob_pump(h->data);
}

/* Put a due forward at the end of its target's ready queue and pump. */
void ob_make_ready(ob_item_t *it)
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
    ob_pump(t);
}

/* ---- Write delivery --------------------------------------------------------------------- */

/* Append a write action's line to its file now: delivered; on an error that may pass
 * (hr_target_write_retriable) scheduled again on the writes' schedule (as a forward), else
 * or when out of attempts or age, dead-lettered. */
void ob_deliver_write(ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    if (ob_item_load(it) < 0) {
        o->st.dead++;
        ob_tstats(it)->dead++;
        ob_item_release(it, true);
        return;
    }
    hr_action_t *a = it->a;
    char err[256];
    it->attempts++;
    a->attempts = it->attempts;
    if (!a->file_path) {
        set_last_error(a, "no file path");
        ob_dead_item(it, "write failed");
        return;
    }
    int rc = hr_files_append(o->files, a->file_path, a->body ? a->body : "", a->body_len, err,
                             sizeof err);
    if (rc < 0) {
        set_last_error(a, err);
        hr_target_attempt_t at = attempt_of(it, hr_target_write_retriable(rc), "write failed");
        retry_or_dead(it, &o->writes, &at, err);
        return;
    }
    hr_dlog_delivered(a, 0, it->attempts);
    o->st.delivered++;
    ob_count_delivered(it, hr_wall_ms());
    ob_item_release(it, true);
}
