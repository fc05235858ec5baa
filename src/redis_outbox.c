/* The Redis outbox: accepted actions in Redis streams shared by several nodes, delivered by
 * whichever node reads or claims them (see include/hr/redis_outbox.h for the design). This
 * part: one hiredis async connection on the caller's loop (the libuv adapter), commands,
 * targets and their streams, accepting (MULTI/EXEC, WAIT), the tick timer (the delayed-set
 * mover, the reply watchdog, the pumps) and the delivery interface. Delivering is
 * src/redis_deliver.c; the shared structs are in src/redis_int.h. */
#include "hr/redis_outbox.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hr/defaults.h"
#include "hr/log.h"
#include "redis_int.h"

static void rd_connect(rd_t *d);

/* ---------------------------------------------------------------- commands */

typedef void (*rd_reply_cb)(rd_t *d, redisReply *r, void *priv);

typedef struct {
    rd_t *d;
    rd_reply_cb cb;
    void *priv;
} rd_call_t;

static bool can_send(const rd_t *d);
static void set_unavailable(rd_t *d, const char *why);

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rd_call_t *c = privdata;
    rd_t *d = c->d;
    redisReply *r = reply;
    d->outstanding--;
    d->last_answer = uv_now(d->loop);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "READONLY", 8) == 0 && d->ready) {
        /* A failover made this server a replica: find the primary again (the url's address,
         * which a managed Redis, a VIP or a proxy moves to it). */
        hr_log_error("redis: %s:%d is read-only now (%s): reconnecting", d->conf.host, d->conf.port,
                     r->str);
        d->ready = false;
        set_unavailable(d, "read-only replica");
        if (can_send(d)) redisAsyncDisconnect(ac);
    }
    c->cb(d, reply, c->priv); /* reply NULL: the connection went away */
    free(c);
}

/* Whether commands can be sent now. */
static bool can_send(const rd_t *d)
{
    return d->ac && !(d->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

/* Send argv (binary-safe). cb NULL: the reply is ignored. Returns 0 (cb will run, with NULL if
 * the connection goes), or -ENOTCONN (cb never runs). */
int rd_cmd(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv, const size_t *lens)
{
    if (!can_send(d)) return -ENOTCONN;
    rd_call_t *c = NULL;
    if (cb) {
        c = hr_xmalloc(sizeof *c);
        *c = (rd_call_t){d, cb, priv};
    }
    if (redisAsyncCommandArgv(d->ac, cb ? on_reply : NULL, c, argc, argv, lens) != REDIS_OK) {
        free(c);
        return -ENOTCONN;
    }
    if (cb) {
        if (d->outstanding++ == 0) d->last_answer = uv_now(d->loop);
    }
    return 0;
}

/* rd_cmd with NUL-terminated arguments (the last one may be binary: blob, bloblen). */
int rd_cmdv(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return rd_cmd(d, cb, priv, argc, argv, lens);
}

/* A reply that is an error, or an EXEC array holding one: its message, else NULL. */
const char *rd_reply_error(const redisReply *r)
{
    if (!r) return "connection lost";
    if (r->type == REDIS_REPLY_ERROR) return r->str;
    if (r->type == REDIS_REPLY_ARRAY)
        for (size_t i = 0; i < r->elements; i++)
            if (r->element[i]->type == REDIS_REPLY_ERROR) return r->element[i]->str;
    return NULL;
}

/* ---------------------------------------------------------------- keys and targets */

char *hr_redis_key(const char *prefix, const char *kind, const char *name, int lane)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b, "%s:%s", prefix, kind);
    if (name) hr_buf_printf(&b, ":%s", name);
    if (lane >= 0) hr_buf_printf(&b, ":%d", lane);
    return b.data;
}

static char *key_of(const rd_t *d, const char *kind, const char *name, int lane)
{
    return hr_redis_key(d->conf.prefix, kind, name, lane);
}

int hr_redis_lane_of(const char *store)
{
    uint32_t h = 2166136261u;
    for (const char *p = store ? store : ""; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return (int)(h % RD_LANES);
}

void hr_redis_encode_entry(hr_buf_t *out, const hr_action_t *a, uint64_t aid, uint32_t attempts,
                           int last_status, uint64_t due, const hr_spool_state_t *log, size_t nlog)
{
    hr_buf_t act = HR_BUF_INIT;
    hr_spool_encode_action(&act, a, aid);
    hr_spool_copy_t c = {.id = aid,
                         .attempts = attempts,
                         .last_status = last_status,
                         .next_due_ms = due,
                         .action = act.data,
                         .action_len = act.len};
    hr_buf_reset(out);
    hr_spool_encode_copy(out, &c, log, nlog);
    hr_buf_free(&act);
}

static void on_group(rd_t *d, redisReply *r, void *priv)
{
    const char *e = rd_reply_error(r);
    if (r && e && !strstr(e, "BUSYGROUP"))
        hr_log_error("redis: XGROUP CREATE %s: %s", (const char *)priv, e);
}

/* Make the group of stream key (from its first entry; an existing group is left alone). */
void rd_make_group(rd_t *d, const char *key)
{
    const char *argv[] = {"XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM"};
    rd_cmdv(d, on_group, (void *)key, 6, argv);
}

static void target_groups(rd_target_t *t)
{
    if (t->lanes)
        for (int i = 0; i < RD_LANES; i++)
            rd_make_group(t->d, t->lanes[i].key);
    else
        rd_make_group(t->d, t->key);
}

/* Set t's policy (NULL: defaults); an ordered target gets its lanes. */
static void target_set_policy(rd_target_t *t, const hr_target_opts_t *o)
{
    hr_target_policy_set(&t->pol, o);
    if (t->pol.ordered && !t->lanes && !t->write) {
        t->lanes = hr_xcalloc(RD_LANES, sizeof *t->lanes);
        for (int i = 0; i < RD_LANES; i++)
            t->lanes[i] = (rd_lane_t){.t = t,
                                      .key = key_of(t->d, "t", t->name, i),
                                      .lease = key_of(t->d, "lease", t->name, i)};
        if (t->d->ready) target_groups(t);
    }
}

/* The target (or file, write) called name, created with the default policy if new. */
static rd_target_t *target_get(rd_t *d, const char *name, bool write)
{
    for (rd_target_t *t = d->targets; t; t = t->next)
        if (t->write == write && strcmp(t->name, name) == 0) return t;
    rd_target_t *t = hr_xcalloc(1, sizeof *t);
    t->d = d;
    t->name = hr_xstrdup(name);
    t->write = write;
    t->key = key_of(d, write ? "f" : "t", name, -1);
    strcpy(t->cursor, "0-0");
    target_set_policy(t, NULL);
    t->next = d->targets;
    d->targets = t;
    if (d->ready && !t->lanes) rd_make_group(d, t->key);
    return t;
}

static void target_free(rd_target_t *t)
{
    if (t->lanes)
        for (int i = 0; i < RD_LANES; i++) {
            free(t->lanes[i].key);
            free(t->lanes[i].lease);
        }
    free(t->lanes);
    hr_target_policy_free(&t->pol);
    free(t->name);
    free(t->key);
    free(t);
}

/* The config's targets and files (a reload adds new ones and updates policies; targets it
 * removed keep theirs, so what was queued for them is still delivered). */
static void apply_config(rd_t *d, const hr_config_t *cfg)
{
    for (size_t i = 0; i < cfg->ntargets; i++) {
        hr_target_opts_t o = hr_delivery_target_opts(&cfg->targets[i]);
        target_set_policy(target_get(d, o.name, false), &o);
    }
    for (size_t i = 0; i < cfg->nfiles; i++)
        target_get(d, cfg->files[i].name, true);
    hr_target_opts_t w = {.retry_ms = cfg->write_retry_ms, .nretry = cfg->nwrite_retry};
    hr_target_policy_set(&d->writes, &w);
    free(d->dead_letters);
    d->dead_letters = cfg->dead_letters ? hr_xstrdup(cfg->dead_letters) : NULL;
    hr_files_set_modes(d->files, cfg->files, cfg->nfiles);
}

/* ---------------------------------------------------------------- connection */

static void set_unavailable(rd_t *d, const char *why)
{
    snprintf(d->st.unavailable, sizeof d->st.unavailable, "redis unreachable: %s:%d: %s",
             d->conf.host, d->conf.port, why);
}

static void on_reconnect_timer(uv_timer_t *h)
{
    rd_connect(h->data);
}

/* The connection is gone (ac freed by hiredis): pause, and try again after the backoff. */
static void lost(rd_t *d, const char *why)
{
    bool was_ready = d->ready;
    d->ac = NULL;
    d->ready = false;
    for (rd_target_t *t = d->targets; t; t = t->next) {
        t->reading = t->claiming = false;
        if (t->lanes)
            for (int i = 0; i < RD_LANES; i++)
                t->lanes[i].busy = 0; /* owned stays: the renewal after the reconnect says */
    }
    d->moving = false;
    set_unavailable(d, why);
    if (d->closing) return;
    if (was_ready)
        hr_log_error("redis: connection to %s:%d lost (%s): new webhooks get 503 and deliveries "
                     "pause until it is back; reconnecting in %llu ms",
                     d->conf.host, d->conf.port, why, (unsigned long long)d->backoff_ms);
    else
        hr_log_warn("redis: cannot connect to %s:%d (%s); trying again in %llu ms", d->conf.host,
                    d->conf.port, why, (unsigned long long)d->backoff_ms);
    uv_timer_start(&d->reconnect, on_reconnect_timer, d->backoff_ms, 0);
    d->backoff_ms = d->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : d->backoff_ms * 2;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rd_t *d = ac->data;
    lost(d, status == REDIS_OK ? "closed" : ac->errstr[0] ? ac->errstr : "error");
}

/* The answer to ROLE, sent after the setup: a primary makes us ready. */
static void on_ready(rd_t *d, redisReply *r, void *priv)
{
    const char *e = rd_reply_error(r);
    if (!e &&
        (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
         r->element[0]->type != REDIS_REPLY_STRING || strcmp(r->element[0]->str, "master") != 0))
        e = "it is a replica, not the primary (waiting for a failover or the url to move)";
    if (e) {
        if (r) {
            hr_log_error("redis: %s:%d: %s", d->conf.host, d->conf.port, e);
            set_unavailable(d, e);
            if (can_send(d)) redisAsyncDisconnect(d->ac);
        }
        return;
    }
    if (d->setup_failed) return;
    d->ready = true;
    d->st.unavailable[0] = '\0';
    d->backoff_ms = BACKOFF_MIN_MS;
    hr_log_info("redis: connected to %s:%d db %u as consumer %s: accepting and delivering",
                d->conf.host, d->conf.port, (unsigned)d->conf.db, d->consumer);
    rd_resend_unfinished(d); /* before any read, on the same connection */
    for (rd_target_t *t = d->targets; t; t = t->next)
        rd_pump(t);
}

static void on_setup(rd_t *d, redisReply *r, void *priv)
{
    const char *e = rd_reply_error(r);
    if (e && r) {
        d->setup_failed = true; /* the PING queued behind it must not make us ready */
        hr_log_error("redis: %s:%d: %s: %s", d->conf.host, d->conf.port, (const char *)priv, e);
        if (can_send(d)) redisAsyncDisconnect(d->ac);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rd_t *d = ac->data;
    if (status != REDIS_OK) {
        lost(d, ac->errstr[0] ? ac->errstr : "connect failed");
        return;
    }
    if (d->conf.password) {
        const char *argv[] = {"AUTH", d->conf.password};
        rd_cmdv(d, on_setup, "AUTH", 2, argv);
    }
    if (d->conf.db) {
        char db[16];
        snprintf(db, sizeof db, "%u", (unsigned)d->conf.db);
        const char *argv[] = {"SELECT", db};
        rd_cmdv(d, on_setup, "SELECT", 2, argv);
    }
    for (rd_target_t *t = d->targets; t; t = t->next)
        target_groups(t);
    const char *argv[] = {"ROLE"};
    rd_cmdv(d, on_ready, NULL, 1, argv); /* answered after everything above */
}

static void rd_connect(rd_t *d)
{
    if (d->closing || d->ac) return;
    redisAsyncContext *ac = redisAsyncConnect(d->conf.host, d->conf.port);
    if (!ac) {
        lost(d, "out of memory");
        return;
    }
    if (ac->err) {
        char why[128];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        lost(d, why);
        return;
    }
    ac->data = d;
    if (redisLibuvAttach(ac, d->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        lost(d, "cannot attach to the loop");
        return;
    }
    d->ac = ac;
    d->connect_started = uv_now(d->loop);
    d->setup_failed = false;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

/* ---------------------------------------------------------------- accepting */

typedef struct {
    rd_t *d;
    void (*cb)(void *arg, int status);
    void *arg;
    int waiting;   /* replies still expected: each XADD's QUEUED, EXEC, and WAIT */
    int status;    /* the first failure */
    char why[200]; /* why an XADD was refused (OOM ...), "" if none */
} push_t;

static void push_answer(push_t *p, int status)
{
    if (status < 0 && p->status == 0) p->status = status;
    if (--p->waiting > 0) return;
    if (p->status < 0) p->d->st.refused++;
    p->cb(p->arg, p->status);
    free(p);
}

/* An XADD queued in the MULTI: QUEUED, or the reason (OOM, ...) EXEC will then abort. */
static void on_push_queued(rd_t *d, redisReply *r, void *priv)
{
    push_t *p = priv;
    if (r && r->type == REDIS_REPLY_ERROR && !p->why[0])
        snprintf(p->why, sizeof p->why, "%s", r->str);
    push_answer(p, 0); /* EXEC's answer decides */
}

static void on_push_exec(rd_t *d, redisReply *r, void *priv)
{
    push_t *p = priv;
    const char *e = r && r->type == REDIS_REPLY_NIL ? "transaction aborted" : rd_reply_error(r);
    if (e) {
        if (r && p->why[0]) e = p->why; /* EXECABORT: say why */
        int st = !r ? -ECONNRESET : strstr(e, "OOM") ? -ENOSPC : -EIO;
        hr_log_error("redis: an event was not stored (%s): its sender gets 503", e);
        push_answer(p, st);
        return;
    }
    push_answer(p, 0);
}

static void on_push_wait(rd_t *d, redisReply *r, void *priv)
{
    push_t *p = priv;
    const char *e = rd_reply_error(r);
    if (e) {
        hr_log_error("redis: WAIT failed (%s): the sender gets 503", e);
        push_answer(p, r ? -EIO : -ECONNRESET);
        return;
    }
    if (r->type != REDIS_REPLY_INTEGER || r->integer < (long long)d->conf.wait_replicas) {
        hr_log_error("redis: WAIT %u: only %lld replica(s) acknowledged within %llu ms: the "
                     "sender gets 503 (the event is stored on the primary and will be delivered)",
                     (unsigned)d->conf.wait_replicas,
                     r->type == REDIS_REPLY_INTEGER ? r->integer : -1LL,
                     (unsigned long long)d->conf.wait_timeout_ms);
        push_answer(p, -ETIMEDOUT);
        return;
    }
    push_answer(p, 0);
}

/* The stream an action goes to. */
static const char *stream_of(rd_t *d, const hr_action_t *a)
{
    rd_target_t *t = target_get(d, a->name ? a->name : "-", a->kind == HR_ACTION_WRITE);
    if (t->lanes) return t->lanes[hr_redis_lane_of(a->store)].key;
    return t->key;
}

static void refusing_log(rd_t *d)
{
    uint64_t now = uv_now(d->loop);
    if (d->last_refuse_log && now - d->last_refuse_log < 1000) return;
    d->last_refuse_log = now;
    hr_log_error("redis: %s: refusing new webhooks (503) until it is back",
                 d->st.unavailable[0] ? d->st.unavailable : "not connected");
}

static int rd_push(hr_delivery_t *base, hr_action_t *list, void (*cb)(void *arg, int status),
                   void *arg)
{
    rd_t *d = (rd_t *)base;
    if (!d->ready || !can_send(d) || d->closing) {
        refusing_log(d);
        hr_action_list_free(list);
        d->st.refused++;
        return -ENOTCONN;
    }
    for (hr_action_t *a = list; a; a = a->next)
        stream_of(d, a); /* new targets get their group now, not inside the MULTI */
    push_t *p = hr_xcalloc(1, sizeof *p);
    *p = (push_t){.d = d, .cb = cb, .arg = arg, .waiting = 1};
    const char *multi[] = {"MULTI"};
    rd_cmdv(d, NULL, NULL, 1, multi);
    for (hr_action_t *a = list; a; a = a->next) {
        hr_redis_encode_entry(&d->scratch, a, ++d->next_id, 0, 0, 0, NULL, 0);
        const char *argv[] = {"XADD", stream_of(d, a), "*", "c", d->scratch.data};
        size_t lens[] = {4, strlen(argv[1]), 1, 1, d->scratch.len};
        p->waiting++;
        rd_cmd(d, on_push_queued, p, 5, argv, lens);
        d->st.accepted++;
        rd_target_t *t = target_get(d, a->name ? a->name : "-", a->kind == HR_ACTION_WRITE);
        rd_tstats(t)->accepted++;
    }
    hr_action_list_free(list);
    const char *exec[] = {"EXEC"};
    rd_cmdv(d, on_push_exec, p, 1, exec);
    if (d->conf.wait_replicas) {
        char n[16], ms[24];
        snprintf(n, sizeof n, "%u", (unsigned)d->conf.wait_replicas);
        snprintf(ms, sizeof ms, "%llu", (unsigned long long)d->conf.wait_timeout_ms);
        const char *argv[] = {"WAIT", n, ms};
        p->waiting++;
        rd_cmdv(d, on_push_wait, p, 3, argv);
    }
    return 0;
}

/* ---------------------------------------------------------------- the tick */

/* KEYS: delay set; ARGV: max. Move the due retries back to their streams. */
static const char MOVE_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])\n"
    "for _, v in ipairs(m) do\n"
    "  local nl = string.find(v, '\\n', 1, true)\n"
    "  if nl then redis.call('XADD', string.sub(v, 1, nl - 1), '*', 'c', string.sub(v, nl + 1)) "
    "end\n"
    "  redis.call('ZREM', KEYS[1], v)\n"
    "end\n"
    "return #m\n";

static void on_moved(rd_t *d, redisReply *r, void *priv)
{
    d->moving = false;
    const char *e = rd_reply_error(r);
    if (e && r) hr_log_error("redis: moving due retries: %s", e);
    if (!e && r->type == REDIS_REPLY_INTEGER && r->integer >= 256) d->next_move = 0; /* more */
}

static void finish_drain(rd_t *d)
{
    void (*cb)(void *) = d->drain_cb;
    d->drain_cb = NULL;
    if (!cb) return;
    hr_log_info("stopped: %llu delivered, %llu dead-lettered since start (the rest stays in "
                "Redis)",
                (unsigned long long)d->st.delivered, (unsigned long long)d->st.dead);
    cb(d->drain_arg);
}

/* KEYS: a stream; ARGV: group, our name, idle ms. Remove the consumers (not us) that hold
 * nothing and have not read for that long: stopped nodes (a new consumer each start). One
 * holding entries stays until they are claimed: deleting it would drop them from the PEL. */
static const char SWEEP_LUA[] =
    "local ok, cs = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])\n"
    "if not ok then return 0 end\n"
    "local n = 0\n"
    "for _, c in ipairs(cs) do\n"
    "  local f = {}\n"
    "  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end\n"
    "  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then\n"
    "    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

static void on_swept(rd_t *d, redisReply *r, void *priv)
{
    const char *e = rd_reply_error(r);
    if (e && r) hr_log_warn("redis: sweeping stopped consumers of %s: %s", (const char *)priv, e);
    if (!e && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        hr_log_info("redis: %s: removed %lld consumer(s) of stopped nodes (nothing pending, idle "
                    "over %llu ms)",
                    (const char *)priv, r->integer,
                    (unsigned long long)(2 * d->conf.claim_idle_ms));
}

/* Sweep every stream's stopped consumers (the keys live as long as their targets). */
static void sweep(rd_t *d)
{
    char idle[24];
    snprintf(idle, sizeof idle, "%llu", (unsigned long long)(2 * d->conf.claim_idle_ms));
    for (rd_target_t *t = d->targets; t; t = t->next)
        for (int i = t->lanes ? 0 : -1; i < (t->lanes ? RD_LANES : 0); i++) {
            const char *key = i < 0 ? t->key : t->lanes[i].key;
            const char *argv[] = {"EVAL", SWEEP_LUA, "1", key, GROUP, d->consumer, idle};
            rd_cmdv(d, on_swept, (void *)key, 7, argv);
        }
}

static void on_tick(uv_timer_t *h)
{
    rd_t *d = h->data;
    uint64_t now = uv_now(d->loop);
    if (d->draining && d->drain_cb && (d->inflight == 0 || now >= d->drain_deadline)) {
        finish_drain(d);
        return;
    }
    if (d->ac && d->outstanding && now - d->last_answer > ANSWER_MS + d->conf.wait_timeout_ms) {
        hr_log_error("redis: no answer from %s:%d for %llu ms: dropping the connection",
                     d->conf.host, d->conf.port, (unsigned long long)(now - d->last_answer));
        redisAsyncContext *ac = d->ac;
        redisAsyncFree(ac); /* every callback runs with NULL, then on_disconnect */
        if (d->ac == ac) lost(d, "no answer");
        return;
    }
    if (d->ac && !d->ready && now - d->connect_started > ANSWER_MS) {
        redisAsyncContext *ac = d->ac;
        redisAsyncFree(ac); /* a connect (or its setup) that never completes */
        if (d->ac == ac) lost(d, "connect timed out");
        return;
    }
    if (!d->ready || d->draining) return;
    if (!d->moving && now >= d->next_move) {
        const char *argv[] = {"EVAL", MOVE_LUA, "1", d->k_delay, "256"};
        if (rd_cmdv(d, on_moved, NULL, 5, argv) == 0) d->moving = true;
        d->next_move = now + MOVE_MS;
    }
    if (now >= d->next_sweep) {
        sweep(d);
        d->next_sweep = now + (d->conf.claim_idle_ms > 1000 ? d->conf.claim_idle_ms : 1000);
    }
    for (rd_target_t *t = d->targets; t; t = t->next)
        rd_pump(t);
}

/* ---------------------------------------------------------------- the interface */

static void rd_stats(hr_delivery_t *base, hr_delivery_stats_cb cb, void *arg)
{
    rd_t *d = (rd_t *)base;
    hr_outbox_stats_t st = d->st;
    st.pending = d->inflight;
    hr_buf_t tj = HR_BUF_INIT;
    hr_buf_appendc(&tj, '{');
    for (rd_target_t *t = d->targets; t; t = t->next) {
        if (t->write) continue;
        if (tj.len > 1) hr_buf_appendc(&tj, ',');
        hr_buf_append_json_string(&tj, t->name, strlen(t->name));
        hr_buf_printf(&tj, ":{\"circuit\":\"%s\",\"in_flight\":%u,\"queued\":0,",
                      t->circuit.state == HR_CIRCUIT_OPEN   ? "open"
                      : t->circuit.state == HR_CIRCUIT_HALF ? "half-open"
                                                            : "closed",
                      (unsigned)t->inflight);
        /* this node's figures; what waits in Redis is `hookrouter spool`'s (all nodes') */
        hr_target_stats_json(&tj, &t->m, t->inflight, 0);
        hr_buf_appendc(&tj, '}');
    }
    if (tj.len > 1) hr_buf_appendc(&tj, ',');
    hr_buf_appends(&tj, "\"(writes)\":{");
    hr_target_stats_json(&tj, &d->writes_m, 0, 0);
    hr_buf_appends(&tj, "}}");
    cb(arg, &st, tj.data);
    hr_buf_free(&tj);
}

static void rd_reload(hr_delivery_t *base, const hr_config_t *cfg, void (*cb)(void *arg), void *arg)
{
    rd_t *d = (rd_t *)base;
    apply_config(d, cfg);
    hr_files_reopen(d->files);
    if (cb) cb(arg);
}

static void rd_drain(hr_delivery_t *base, uint64_t deadline_ms, void (*cb)(void *arg), void *arg)
{
    rd_t *d = (rd_t *)base;
    uint64_t wall = hr_wall_ms();
    uint64_t left = deadline_ms > wall ? deadline_ms - wall : 0;
    hr_log_info("shutdown: %u deliveries in flight (%llu ms of grace left); the backlog stays in "
                "Redis for the other nodes",
                (unsigned)d->inflight, (unsigned long long)left);
    d->draining = true;
    d->drain_deadline = uv_now(d->loop) + left;
    d->drain_cb = cb;
    d->drain_arg = arg; /* the next tick ends the drain once nothing is in flight */
}

static void rd_free(rd_t *d)
{
    void (*cb)(void *) = d->close_cb;
    void *arg = d->close_arg;
    while (d->targets) {
        rd_target_t *t = d->targets;
        d->targets = t->next;
        if (t->lanes)
            for (int i = 0; i < RD_LANES; i++)
                rd_item_free(t->lanes[i].head);
        target_free(t);
    }
    rd_unfinished_free(d);
    hr_target_policy_free(&d->writes);
    hr_files_destroy(d->files);
    free(d->dead_letters);
    free(d->consumer);
    free(d->conf.url);
    free(d->conf.host);
    free(d->conf.password);
    free(d->conf.prefix);
    free(d->k_delay);
    free(d->k_dead);
    free(d->k_state);
    hr_buf_free(&d->scratch);
    free(d);
    if (cb) cb(arg);
}

static void on_part_closed(void *arg)
{
    rd_t *d = arg;
    if (--d->open_handles == 0) rd_free(d);
}

static void on_handle_closed(uv_handle_t *h)
{
    on_part_closed(h->data);
}

static void rd_close(hr_delivery_t *base, void (*cb)(void *arg), void *arg)
{
    rd_t *d = (rd_t *)base;
    if (d->closing) return;
    d->closing = true;
    d->close_cb = cb;
    d->close_arg = arg;
    uv_timer_stop(&d->tick);
    uv_timer_stop(&d->reconnect);
    if (d->ac) {
        redisAsyncContext *ac = d->ac;
        redisAsyncFree(ac); /* callbacks run with NULL; on_disconnect clears d->ac */
        d->ac = NULL;
    }
    d->open_handles = 3;
    d->tick.data = d->reconnect.data = d;
    uv_close((uv_handle_t *)&d->tick, on_handle_closed);
    uv_close((uv_handle_t *)&d->reconnect, on_handle_closed);
    hr_http_client_t *http = d->http;
    d->http = NULL;
    hr_http_client_close(http, on_part_closed, d); /* in-flight attempts end as cancelled */
}

static const hr_delivery_ops_t RD_OPS = {
    .push = rd_push, .stats = rd_stats, .reload = rd_reload, .drain = rd_drain, .close = rd_close};

hr_delivery_t *hr_redis_delivery_open(uv_loop_t *loop, const hr_config_t *cfg, char *err,
                                      size_t errlen)
{
    rd_t *d = hr_xcalloc(1, sizeof *d);
    d->base.ops = &RD_OPS;
    d->loop = loop;
    const hr_outbox_conf_t *o = &cfg->outbox;
    d->conf = *o;
    d->conf.url = o->url ? hr_xstrdup(o->url) : NULL;
    d->conf.host = hr_xstrdup(o->host ? o->host : "127.0.0.1");
    d->conf.password = o->password ? hr_xstrdup(o->password) : NULL;
    d->conf.prefix = hr_xstrdup(o->prefix ? o->prefix : HR_DEF_OUTBOX_PREFIX);
    char host[64] = "node";
    gethostname(host, sizeof host - 1);
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b, "%s-%ld-%08llx", host, (long)getpid(),
                  (unsigned long long)(hr_rand64() & 0xffffffffu));
    d->consumer = b.data;
    d->k_delay = key_of(d, "delay", NULL, -1);
    d->k_dead = key_of(d, "dead", NULL, -1);
    d->k_state = key_of(d, "state", NULL, -1);
    d->unfinished_tail = &d->unfinished;
    d->files = hr_files_create();
    apply_config(d, cfg);
    hr_http_client_opts_t ho = {.max_conns_per_host = cfg->max_conns_per_target};
    d->http = hr_http_client_open(loop, &ho);
    d->backoff_ms = BACKOFF_MIN_MS;
    set_unavailable(d, "connecting");
    uv_timer_init(loop, &d->tick);
    d->tick.data = d;
    uv_timer_init(loop, &d->reconnect);
    d->reconnect.data = d;
    uv_timer_start(&d->tick, on_tick, TICK_MS, TICK_MS);
    rd_connect(d);
    (void)err;
    (void)errlen;
    return &d->base;
}
