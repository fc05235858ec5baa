/* The Redis outbox's delivering: entries this node works on (decoded from their COPY
 * payload), attempts under the target policy, the outcome (XACK + XDEL, the delayed set, the
 * dead letter), reading (XREADGROUP), claiming (XAUTOCLAIM) and ordered lanes under leases.
 * Part of the Redis outbox (src/redis_outbox.c; the shared structs in src/redis_int.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/deadletter.h"
#include "hr/defaults.h"
#include "hr/delivery_log.h"
#include "hr/log.h"
#include "redis_int.h"

static void start_item(rd_item_t *it);

/* ---------------------------------------------------------------- items */

void rd_item_free(rd_item_t *it)
{
    if (!it) return;
    hr_action_free(it->a);
    free(it->key);
    free(it->log);
    free(it->logerr);
    free(it);
}

/* An item for the entry id of stream key from its COPY payload p[0..n). NULL if malformed. */
static rd_item_t *item_decode(rd_target_t *t, const char *key, const char *id, const char *p,
                              size_t n)
{
    hr_spool_copy_t c;
    if (hr_spool_decode_copy(p, n, &c) < 0) return NULL;
    hr_action_t *a = hr_spool_decode_action(c.action, c.action_len, NULL);
    if (!a) return NULL;
    rd_item_t *it = hr_xcalloc(1, sizeof *it);
    it->t = t;
    it->key = hr_xstrdup(key);
    snprintf(it->id, sizeof it->id, "%s", id);
    it->a = a;
    it->aid = c.id;
    it->attempts = c.attempts;
    it->last_status = c.last_status;
    it->due_wall = c.next_due_ms;
    size_t cap = c.nlog < MAX_LOG ? c.nlog : MAX_LOG;
    if (cap) {
        it->log = hr_xcalloc(cap + 1, sizeof *it->log);
        it->logerr = hr_xcalloc(cap + 1, sizeof *it->logerr);
    }
    hr_spool_state_t s;
    while (it->nlog < cap &&
           hr_spool_copy_log_next(&c, &s, it->logerr[it->nlog], sizeof it->logerr[0]) > 0) {
        it->log[it->nlog] = s;
        it->log[it->nlog].error = it->logerr[it->nlog];
        it->nlog++;
    }
    return it;
}

/* Add the attempt that just ended (error: "" or the transport error) to it's log. */
static void item_log_attempt(rd_item_t *it, const char *error)
{
    if (it->nlog >= MAX_LOG) return;
    it->log = hr_xrealloc(it->log, (it->nlog + 1) * sizeof *it->log);
    it->logerr = hr_xrealloc(it->logerr, (it->nlog + 1) * sizeof *it->logerr);
    snprintf(it->logerr[it->nlog], sizeof it->logerr[0], "%s", error ? error : "");
    for (size_t i = 0; i <= it->nlog; i++)
        it->log[i].error = it->logerr[i]; /* realloc moved them */
    it->log[it->nlog] = (hr_spool_state_t){.attempt = it->attempts,
                                           .status = it->last_status,
                                           .at_ms = hr_wall_ms(),
                                           .error = it->logerr[it->nlog]};
    it->nlog++;
}

static void flight_unlink(rd_item_t *it)
{
    for (rd_item_t **pp = &it->t->flight; *pp; pp = &(*pp)->fnext)
        if (*pp == it) {
            *pp = it->fnext;
            return;
        }
}

static bool in_flight_here(const rd_target_t *t, const char *key, const char *id)
{
    for (const rd_item_t *it = t->flight; it; it = it->fnext)
        if (strcmp(it->id, id) == 0 && strcmp(it->key, key) == 0) return true;
    if (t->lanes)
        for (int i = 0; i < RD_LANES; i++) {
            const rd_item_t *h = t->lanes[i].head;
            if (h && strcmp(h->id, id) == 0 && strcmp(h->key, key) == 0) return true;
        }
    return false;
}

/* ---------------------------------------------------------------- finishing an entry */

/* Append one command (lens: the arguments' lengths, NULL: strlen) to f. */
static void finish_add(rd_finish_t *f, int argc, const char *const *argv, const size_t *lens)
{
    uint32_t n = (uint32_t)argc;
    hr_buf_append(&f->cmds, &n, sizeof n);
    for (int i = 0; i < argc; i++) {
        uint32_t len = (uint32_t)(lens ? lens[i] : strlen(argv[i]));
        hr_buf_append(&f->cmds, &len, sizeof len);
        hr_buf_append(&f->cmds, argv[i], len);
    }
}

static void finish_send(rd_t *d, rd_finish_t *f);

static void on_finished(rd_t *d, redisReply *r, void *priv)
{
    rd_finish_t *f = priv;
    if (f->lane && f->lane->busy) f->lane->busy--;
    if (!r) { /* the connection went: keep it for the reconnect */
        f->next = NULL;
        *d->unfinished_tail = f;
        d->unfinished_tail = &f->next;
        return;
    }
    const char *e = rd_reply_error(r);
    if (e) hr_log_error("redis: finishing an entry: %s (it will be claimed and sent again)", e);
    if (f->lane) rd_pump(f->lane->t);
    hr_buf_free(&f->cmds);
    free(f);
}

/* Send f's commands in one MULTI/EXEC (or keep f for the reconnect). */
static void finish_send(rd_t *d, rd_finish_t *f)
{
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    if (rd_cmdv(d, NULL, NULL, 1, multi) < 0) {
        on_finished(d, NULL, f);
        return;
    }
    const char *argv[16];
    size_t lens[16];
    for (size_t off = 0; off + 4 <= f->cmds.len;) {
        uint32_t argc;
        memcpy(&argc, f->cmds.data + off, 4);
        off += 4;
        for (uint32_t i = 0; i < argc && i < 16; i++) {
            uint32_t len;
            memcpy(&len, f->cmds.data + off, 4);
            argv[i] = f->cmds.data + off + 4;
            lens[i] = len;
            off += 4 + len;
        }
        rd_cmd(d, NULL, NULL, (int)argc, argv, lens);
    }
    if (f->lane) f->lane->busy++;
    if (rd_cmdv(d, on_finished, f, 1, exec) < 0) on_finished(d, NULL, f);
}

void rd_resend_unfinished(rd_t *d)
{
    rd_finish_t *f = d->unfinished;
    size_t n = 0;
    d->unfinished = NULL;
    d->unfinished_tail = &d->unfinished;
    while (f) {
        rd_finish_t *next = f->next;
        finish_send(d, f);
        f = next;
        n++;
    }
    if (n)
        hr_log_info("redis: sent the %zu acknowledgement(s) that were cut off with the "
                    "connection",
                    n);
}

void rd_unfinished_free(rd_t *d)
{
    while (d->unfinished) {
        rd_finish_t *f = d->unfinished;
        d->unfinished = f->next;
        hr_buf_free(&f->cmds);
        free(f);
    }
    d->unfinished_tail = &d->unfinished;
}

/* The entry of it is finished (delivered, waiting in the delayed set, or dead): acknowledge
 * and delete it (with an ordered head, its state too, then the lane moves on), with extra
 * commands in the same MULTI. Kept until EXEC answers (rd_finish_t). */
static void finish_entry(rd_item_t *it, int nextra, const char **const *extra,
                         const size_t *const *extra_lens, const int *extra_argc)
{
    rd_t *d = it->t->d;
    rd_finish_t *f = hr_xcalloc(1, sizeof *f);
    for (int i = 0; i < nextra; i++)
        finish_add(f, extra_argc[i], extra[i], extra_lens[i]);
    const char *ack[] = {"XACK", it->key, GROUP, it->id};
    finish_add(f, 4, ack, NULL);
    const char *del[] = {"XDEL", it->key, it->id};
    finish_add(f, 3, del, NULL);
    if (it->lane) {
        char field[256];
        snprintf(field, sizeof field, "%s/%s", it->key, it->id);
        const char *hdel[] = {"HDEL", d->k_state, field};
        finish_add(f, 3, hdel, NULL);
        f->lane = it->lane;
    }
    finish_send(d, f);
}

static void item_done(rd_item_t *it)
{
    if (it->lane) it->lane->head = NULL;
    rd_item_free(it);
}

/* Dead-letter it (reason: a literal): the local file and <prefix>:dead, then finish. */
static void dead_item(rd_item_t *it, const char *reason)
{
    rd_t *d = it->t->d;
    hr_action_t *a = it->a;
    a->attempts = it->attempts;
    a->last_status = it->last_status;
    hr_dlog_dead(a, reason);
    hr_attempt_t *lg = hr_xcalloc(it->nlog + 1, sizeof *lg);
    for (size_t i = 0; i < it->nlog; i++)
        lg[i] =
            (hr_attempt_t){it->log[i].attempt, it->log[i].status, it->log[i].at_ms, it->logerr[i]};
    hr_buf_t line = HR_BUF_INIT;
    hr_deadletter_for_action_log(&line, a, reason, lg, it->nlog);
    free(lg);
    char err[256];
    if (d->dead_letters &&
        hr_files_append(d->files, d->dead_letters, line.data, line.len, err, sizeof err) < 0)
        hr_log_error("dead-letter file %s: %s (the dead letter is in %s)", d->dead_letters, err,
                     d->k_dead);
    const char *xadd[] = {"XADD", d->k_dead, "*", "line", line.data};
    const size_t xlens[] = {4, strlen(d->k_dead), 1, 4, line.len};
    const char **ex[] = {xadd};
    const size_t *exl[] = {xlens};
    const int exn[] = {5};
    finish_entry(it, 1, ex, exl, exn);
    hr_buf_free(&line);
    d->st.dead++;
    rd_tstats(it->t)->dead++;
    item_done(it);
}

/* After an attempt that did not deliver: the policy decides retry or dead letter. A retry of
 * an unordered entry goes to the delayed set (and leaves its stream); an ordered head keeps
 * its place, its state in <prefix>:state. */
static void retry_or_dead(rd_item_t *it, const hr_target_policy_t *p, bool retriable,
                          const char *reject, const hr_http_response_t *res)
{
    rd_t *d = it->t->d;
    hr_action_t *a = it->a;
    hr_target_attempt_t at = {.attempts = it->attempts,
                              .max_attempts = it->t->write      ? HR_DEF_WRITE_ATTEMPTS
                                              : a->max_attempts ? a->max_attempts
                                                                : 1,
                              .accepted_ms = a->accepted_ms,
                              .retriable = retriable,
                              .reject = reject,
                              .status = res ? res->status : 0,
                              .headers = res ? res->headers : NULL,
                              .nheaders = res ? res->nheaders : 0};
    uint64_t wall = hr_wall_ms();
    hr_target_next_t next = hr_target_after_attempt(p, &at, wall, hr_rand64());
    if (next.dead) {
        dead_item(it, next.dead);
        return;
    }
    uint64_t due = wall + next.wait_ms;
    hr_dlog_retry(a, it->last_status, a->last_error, it->attempts, at.max_attempts, next.wait_ms);
    d->st.retried++;
    rd_tstats(it->t)->retried++;
    hr_redis_encode_entry(&d->scratch, a, it->aid, it->attempts, it->last_status, due, it->log,
                          it->nlog);
    if (it->lane) {
        char field[256];
        snprintf(field, sizeof field, "%s/%s", it->key, it->id);
        const char *argv[] = {"HSET", d->k_state, field, d->scratch.data};
        const size_t lens[] = {4, strlen(d->k_state), strlen(field), d->scratch.len};
        rd_cmd(d, NULL, NULL, 4, argv, lens);
        it->due_wall = due; /* the tick sends it again */
        return;
    }
    hr_buf_t member = HR_BUF_INIT;
    hr_buf_printf(&member, "%s\n", it->key);
    hr_buf_append(&member, d->scratch.data, d->scratch.len);
    char score[24];
    snprintf(score, sizeof score, "%llu", (unsigned long long)due);
    const char *zadd[] = {"ZADD", d->k_delay, score, member.data};
    const size_t zlens[] = {4, strlen(d->k_delay), strlen(score), member.len};
    const char **ex[] = {zadd};
    const size_t *exl[] = {zlens};
    const int exn[] = {4};
    finish_entry(it, 1, ex, exl, exn);
    hr_buf_free(&member);
    item_done(it);
}

static void set_last_error(hr_action_t *a, const char *msg)
{
    snprintf(a->last_error, sizeof a->last_error, "%s", msg);
}

/* ---------------------------------------------------------------- attempts */

static void circuit_failure(rd_target_t *t)
{
    hr_dlog_circuit(t->name, hr_circuit_failure(&t->circuit, &t->pol, uv_now(t->d->loop)),
                    &t->circuit, t->pol.circuit_probe_ms);
}

static void circuit_success(rd_target_t *t)
{
    hr_dlog_circuit(t->name, hr_circuit_success(&t->circuit), &t->circuit, t->pol.circuit_probe_ms);
}

/* it was delivered now: count it and its lag (accepted to now). */
static void count_delivered(rd_item_t *it)
{
    hr_target_stats_t *m = rd_tstats(it->t);
    uint64_t now = hr_wall_ms(), acc = it->a->accepted_ms;
    m->delivered++;
    hr_histogram_observe(&m->lag, (now > acc ? now - acc : 0) * 1000);
}

static void attempt_over(rd_item_t *it)
{
    rd_target_t *t = it->t;
    it->in_flight = false;
    if (!it->lane) flight_unlink(it);
    t->inflight--;
    t->d->inflight--;
}

static void on_http_done(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    rd_item_t *it = arg;
    rd_target_t *t = it->t;
    rd_t *d = t->d;
    hr_action_t *a = it->a;
    attempt_over(it);
    if (err != UV_ECANCELED)
        hr_histogram_observe(&t->m.duration, (uv_hrtime() - it->started_ns) / 1000);
    if (err == UV_ECANCELED && (d->draining || d->closing)) {
        /* Cut off by shutdown: not an attempt; the entry stays pending and is claimed. */
        hr_circuit_unprobe(&t->circuit);
        if (it->lane) it->lane->head = NULL;
        rd_item_free(it);
        return;
    }
    char what[sizeof a->last_error + 8];
    bool delivered = hr_target_outcome(a, err, errmsg, res, what, sizeof what);
    it->last_status = a->last_status;
    item_log_attempt(it, a->last_error);
    if (delivered) {
        circuit_success(t);
        hr_dlog_delivered(a, res->status, it->attempts);
        d->st.delivered++;
        count_delivered(it);
        finish_entry(it, 0, NULL, NULL, NULL);
        item_done(it);
    } else {
        bool retriable = err != 0 || hr_target_status_retriable(res->status);
        if (retriable)
            circuit_failure(t);
        else
            circuit_success(t);
        retry_or_dead(it, &t->pol, retriable, "rejected", err == 0 ? res : NULL);
    }
    rd_pump(t);
}

/* A write action: append its line now. */
static void deliver_write(rd_item_t *it)
{
    rd_t *d = it->t->d;
    hr_action_t *a = it->a;
    it->attempts++;
    char err[256];
    int rc = a->file_path ? hr_files_append(d->files, a->file_path, a->body ? a->body : "",
                                            a->body_len, err, sizeof err)
                          : -EINVAL;
    if (rc < 0) {
        if (!a->file_path) snprintf(err, sizeof err, "no file path");
        set_last_error(a, err);
        it->last_status = 0;
        item_log_attempt(it, err);
        retry_or_dead(it, &d->writes, a->file_path && hr_target_write_retriable(rc), "write failed",
                      NULL);
        return;
    }
    hr_dlog_delivered(a, 0, it->attempts);
    d->st.delivered++;
    count_delivered(it);
    finish_entry(it, 0, NULL, NULL, NULL);
    item_done(it);
}

/* Start the next attempt of it (taken from its stream, or an ordered head that is due). */
static void start_item(rd_item_t *it)
{
    rd_target_t *t = it->t;
    rd_t *d = t->d;
    hr_action_t *a = it->a;
    if (t->write) {
        deliver_write(it);
        return;
    }
    if (hr_target_too_old(t->pol.max_age_s, a->accepted_ms, hr_wall_ms())) {
        hr_circuit_unprobe(&t->circuit); /* not the probe after all */
        set_last_error(a, "max age exceeded while waiting");
        dead_item(it, "max age exceeded");
        return;
    }
    if (t->circuit.state == HR_CIRCUIT_HALF) /* only the probe starts while half-open */
        hr_dlog_probe(t->name);
    it->attempts++;
    a->attempts = it->attempts;
    hr_signed_headers_t sh;
    hr_http_out_t req;
    hr_target_request(&t->pol, a, hr_wall_ms() / 1000, &sh, &req);
    it->started_ns = uv_hrtime();
    int rc = d->http ? hr_http_client_send(d->http, &req, on_http_done, it) : UV_ECANCELED;
    hr_signed_headers_free(&sh);
    if (rc < 0) {
        it->last_status = 0;
        set_last_error(a, rc == UV_EINVAL ? "invalid URL" : uv_strerror(rc));
        item_log_attempt(it, a->last_error);
        dead_item(it, rc == UV_EINVAL ? "invalid url" : "client closed");
        return;
    }
    it->in_flight = true;
    if (!it->lane) {
        it->fnext = t->flight;
        t->flight = it;
    }
    t->inflight++;
    d->inflight++;
}

/* ---------------------------------------------------------------- reading and claiming */

/* The value of field "c" in an entry's field array, or NULL. */
static const redisReply *entry_copy(const redisReply *fields)
{
    if (!fields || fields->type != REDIS_REPLY_ARRAY) return NULL;
    for (size_t i = 0; i + 1 < fields->elements; i += 2)
        if (fields->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(fields->element[i]->str, "c") == 0 &&
            fields->element[i + 1]->type == REDIS_REPLY_STRING)
            return fields->element[i + 1];
    return NULL;
}

/* An entry of stream key that is not ours (no "c", or it does not decode): acknowledge it so
 * that nobody reads it again, and say so; it stays in the stream for a person to look at. */
static void skip_entry(rd_t *d, const char *key, const char *id)
{
    hr_log_error("redis: %s entry %s is not a hookrouter action: acknowledged and skipped", key,
                 id);
    const char *ack[] = {"XACK", key, GROUP, id};
    rd_cmdv(d, NULL, NULL, 4, ack);
}

/* Take an entry [id, [fields]] of stream key: start it (or drop a malformed one). */
static void take_entry(rd_target_t *t, const char *key, const redisReply *e)
{
    rd_t *d = t->d;
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *id = e->element[0]->str;
    if (in_flight_here(t, key, id)) return; /* claimed back from ourselves: already running */
    const redisReply *c = entry_copy(e->element[1]);
    rd_item_t *it = c ? item_decode(t, key, id, c->str, c->len) : NULL;
    if (!it) {
        skip_entry(d, key, id);
        return;
    }
    start_item(it);
}

/* Start the entries of an XREADGROUP reply [[key, [entries]]] or of XAUTOCLAIM's. Returns the
 * number of entries. */
static size_t take_entries(rd_target_t *t, const char *key, const redisReply *entries)
{
    if (!entries || entries->type != REDIS_REPLY_ARRAY) return 0;
    for (size_t i = 0; i < entries->elements; i++)
        take_entry(t, key, entries->element[i]);
    return entries->elements;
}

static void on_read(rd_t *d, redisReply *r, void *priv)
{
    rd_target_t *t = priv;
    t->reading = false;
    const char *e = rd_reply_error(r);
    if (e) {
        if (r) hr_log_error("redis: XREADGROUP %s: %s", t->key, e);
        if (r && strstr(e, "NOGROUP")) rd_make_group(d, t->key);
        t->next_read = uv_now(d->loop) + 1000;
        return;
    }
    size_t n = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_ARRAY && r->element[0]->elements >= 2)
        n = take_entries(t, t->key, r->element[0]->element[1]);
    if (n == 0) {
        hr_circuit_unprobe(&t->circuit);
        t->next_read = uv_now(d->loop) + TICK_MS;
        return;
    }
    rd_pump(t);
}

static void on_claim(rd_t *d, redisReply *r, void *priv)
{
    rd_target_t *t = priv;
    t->claiming = false;
    const char *e = rd_reply_error(r);
    if (e) {
        if (r) hr_log_error("redis: XAUTOCLAIM %s: %s", t->key, e);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
    if (r->element[0]->type == REDIS_REPLY_STRING)
        snprintf(t->cursor, sizeof t->cursor, "%s", r->element[0]->str);
    size_t n = take_entries(t, t->key, r->element[1]);
    if (n) {
        hr_log_info("redis: claimed %zu entr%s of %s held over %llu ms by a consumer that did "
                    "not acknowledge them (a node stopped?)",
                    n, n == 1 ? "y" : "ies", t->key, (unsigned long long)d->conf.claim_idle_ms);
        d->st.recovered += n;
    }
}

/* How many attempts t may start now (concurrency, circuit, rate); 0 if none. */
static uint32_t may_start(rd_target_t *t)
{
    rd_t *d = t->d;
    if (t->write) return READ_MAX;
    if (t->inflight >= t->pol.concurrency) return 0;
    uint32_t n = t->pol.concurrency - t->inflight;
    uint64_t now = uv_now(d->loop), wait;
    switch (hr_circuit_gate(&t->circuit, now, &wait)) {
    case HR_GATE_BUSY:
    case HR_GATE_WAIT: return 0;
    case HR_GATE_PROBE: n = 1; break; /* logged when it is sent (start_item) */
    case HR_GATE_PASS: break;
    }
    if (t->pol.rate > 0) {
        uint32_t k = 0;
        while (k < n && hr_bucket_take(&t->bucket, t->pol.rate, now) == 0)
            k++;
        n = k;
        if (!n) hr_circuit_unprobe(&t->circuit);
    }
    return n > READ_MAX ? READ_MAX : n;
}

/* ---------------------------------------------------------------- ordered lanes */

/* KEYS: lane stream, state hash, lease; ARGV: group, consumer. The oldest pending entry (of
 * anyone: the lease says we own the lane), else the next new one; with its saved state. */
static const char FETCH_LUA[] =
    "if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end\n"
    "local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, '0-0', 'COUNT', 1)\n"
    "local e = r[2][1]\n"
    "if not e then\n"
    "  local n = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS',\n"
    "                       KEYS[1], '>')\n"
    "  if not n then return 0 end\n"
    "  e = n[1][2][1]\n"
    "end\n"
    "if not e then return 0 end\n"
    "local s = redis.call('HGET', KEYS[2], KEYS[1] .. '/' .. e[1])\n"
    "return {e[1], e[2], s}\n";

/* KEYS: lease; ARGV: consumer, ms. Renew our lease; 0 if it is not ours any more. */
static const char RENEW_LUA[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "end\n"
                                "return 0\n";

static void on_fetch(rd_t *d, redisReply *r, void *priv)
{
    rd_lane_t *l = priv;
    if (l->busy) l->busy--;
    const char *e = rd_reply_error(r);
    if (e) {
        if (r) hr_log_error("redis: ordered lane %s: %s", l->key, e);
        if (r && strstr(e, "NOGROUP")) rd_make_group(d, l->key);
        return;
    }
    if (r->type == REDIS_REPLY_INTEGER) {
        if (r->integer < 0) l->owned = false; /* the lease moved */
        l->next_fetch = uv_now(d->loop) + 2 * TICK_MS;
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
    const char *id = r->element[0]->str;
    const redisReply *c = r->elements >= 3 && r->element[2]->type == REDIS_REPLY_STRING
                              ? r->element[2]
                              : entry_copy(r->element[1]);
    rd_item_t *it = c ? item_decode(l->t, l->key, id, c->str, c->len) : NULL;
    if (!it) {
        skip_entry(d, l->key, id);
        return;
    }
    it->lane = l;
    l->head = it;
    rd_pump(l->t);
}

static void on_lease(rd_t *d, redisReply *r, void *priv)
{
    rd_lane_t *l = priv;
    if (l->busy) l->busy--;
    if (!r || r->type == REDIS_REPLY_ERROR) return;
    bool ok = (r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0) ||
              (r->type == REDIS_REPLY_INTEGER && r->integer == 1);
    uint64_t now = uv_now(d->loop), step = d->conf.claim_idle_ms / 3;
    if (ok && !l->owned) hr_log_info("redis: this node now delivers ordered lane %s", l->key);
    if (!ok && l->owned) {
        hr_log_warn("redis: ordered lane %s: lease lost to another node", l->key);
        if (l->head && !l->head->in_flight) item_done(l->head);
    }
    l->owned = ok;
    l->next_lease = now + (ok ? step : d->conf.claim_idle_ms / 4);
    if (ok) rd_pump(l->t);
}

/* One lane's turn: lease, fetch, or the head's next attempt. */
static void lane_pump(rd_lane_t *l)
{
    rd_target_t *t = l->t;
    rd_t *d = t->d;
    uint64_t now = uv_now(d->loop);
    if (l->busy) return; /* one command at a time: a second fetch would get the same head */
    char ms[24];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)d->conf.claim_idle_ms);
    if (now >= l->next_lease) {
        l->busy++;
        if (l->owned) {
            const char *argv[] = {"EVAL", RENEW_LUA, "1", l->lease, d->consumer, ms};
            if (rd_cmdv(d, on_lease, l, 6, argv) < 0) l->busy--;
        } else {
            const char *argv[] = {"SET", l->lease, d->consumer, "NX", "PX", ms};
            if (rd_cmdv(d, on_lease, l, 6, argv) < 0) l->busy--;
        }
        return;
    }
    if (!l->owned || d->draining) return;
    if (l->head) {
        if (l->head->in_flight || l->head->due_wall > hr_wall_ms()) return;
        if (may_start(t) == 0) return;
        start_item(l->head);
        return;
    }
    if (now < l->next_fetch) return;
    l->busy++;
    const char *argv[] = {"EVAL", FETCH_LUA, "3", l->key, d->k_state, l->lease, GROUP, d->consumer};
    if (rd_cmdv(d, on_fetch, l, 8, argv) < 0) l->busy--;
}

/* ---------------------------------------------------------------- the pump */

/* Start what t may start: read new entries, claim abandoned ones (unordered), or each lane's
 * turn (ordered). */
void rd_pump(rd_target_t *t)
{
    rd_t *d = t->d;
    if (!d->ready || d->closing || d->draining || !d->http) return;
    if (t->lanes) {
        for (int i = 0; i < RD_LANES; i++)
            lane_pump(&t->lanes[i]);
        return;
    }
    uint64_t now = uv_now(d->loop);
    if (!t->claiming && now >= t->next_claim && t->circuit.state == HR_CIRCUIT_CLOSED) {
        uint32_t n = may_start(t); /* closed: no probe to give back if nothing is claimed */
        if (n) {
            char idle[24], count[16];
            snprintf(idle, sizeof idle, "%llu", (unsigned long long)d->conf.claim_idle_ms);
            snprintf(count, sizeof count, "%u", (unsigned)n);
            const char *argv[] = {"XAUTOCLAIM", t->key,    GROUP,   d->consumer,
                                  idle,         t->cursor, "COUNT", count};
            if (rd_cmdv(d, on_claim, t, 8, argv) == 0) t->claiming = true;
            uint64_t every = d->conf.claim_idle_ms / 4;
            t->next_claim = now + (every < 100 ? 100 : every);
            return;
        }
    }
    if (t->reading || t->claiming || now < t->next_read) return;
    uint32_t n = may_start(t);
    if (!n) return;
    char count[16];
    snprintf(count, sizeof count, "%u", (unsigned)n);
    const char *argv[] = {"XREADGROUP", "GROUP",   GROUP,  d->consumer, "COUNT",
                          count,        "STREAMS", t->key, ">"};
    if (rd_cmdv(d, on_read, t, 9, argv) == 0) t->reading = true;
}
