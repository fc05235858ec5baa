/* The Redis outbox: accepted actions in Redis streams shared by several nodes, delivered by
 * whichever node reads or claims them (see include/hr/redis_outbox.h for the design). One
 * hiredis async connection on the caller's loop (the libuv adapter), one tick timer that
 * drives reads, claims, the delayed-set mover, leases and the reply watchdog. */
#include "hr/redis_outbox.h"

#include <errno.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hr/deadletter.h"
#include "hr/defaults.h"
#include "hr/files.h"
#include "hr/http_client.h"
#include "hr/log.h"
#include "hr/sign.h"
#include "hr/spool.h"
#include "hr/target.h"

#define GROUP          "hookrouter" /* the consumer group of every stream */
#define TICK_MS        25           /* reads, claims, mover, leases, watchdog */
#define MOVE_MS        100          /* how often the delayed set is looked at */
#define READ_MAX       64           /* entries per XREADGROUP / XAUTOCLAIM */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define ANSWER_MS      3000 /* no reply this long (plus wait_timeout_ms): drop the connection */
#define MAX_LOG        1000 /* attempt log entries kept */

typedef struct rd rd_t;
struct rd_target;

/* One lane of an ordered target: a stream owned by one node at a time under a lease. */
typedef struct {
    struct rd_target *t;  /* owner */
    char *key;            /* <prefix>:t:<target>:<lane> */
    char *lease;          /* <prefix>:lease:<target>:<lane> */
    bool owned;           /* we hold the lease */
    bool busy;            /* a lease, fetch or finish command is outstanding */
    uint64_t next_fetch;  /* uv_now before which no fetch is tried (the lane was empty) */
    uint64_t next_lease;  /* uv_now of the next SET NX (not owned) or renewal (owned) */
    struct rd_item *head; /* the entry being delivered or waiting for its retry */
} rd_lane_t;

typedef struct rd_target {
    struct rd_target *next; /* in d->targets */
    rd_t *d;                /* owner */
    char *name;             /* target or file name */
    bool write;             /* a file's stream (write actions) */
    char *key;              /* <prefix>:t:<name> or <prefix>:f:<name> */
    hr_target_policy_t pol; /* forwards: the target's policy; writes: unused (d->writes) */
    hr_circuit_t circuit;   /* per node */
    hr_bucket_t bucket;     /* per node */
    uint32_t inflight;      /* our attempts in flight */
    bool reading;           /* an XREADGROUP is outstanding */
    bool claiming;          /* an XAUTOCLAIM is outstanding */
    uint64_t next_read;     /* uv_now before which no read is tried (nothing was there) */
    uint64_t next_claim;    /* uv_now of the next XAUTOCLAIM */
    char cursor[48];        /* XAUTOCLAIM's cursor */
    rd_lane_t *lanes;       /* RD_LANES when ordered, else NULL */
    struct rd_item *flight; /* our items in flight (linked through fnext) */
} rd_target_t;

/* One entry this node is working on. */
typedef struct rd_item {
    rd_target_t *t;        /* its target */
    rd_lane_t *lane;       /* its lane (ordered), else NULL */
    struct rd_item *fnext; /* in t->flight */
    char *key;             /* its stream */
    char id[48];           /* its entry id */
    hr_action_t *a;        /* the action */
    uint64_t aid;          /* the id in its COPY payload */
    uint32_t attempts;     /* attempts finished (or running) */
    int last_status;       /* of the last attempt */
    uint64_t due_wall;     /* ordered head waiting: wall ms of its next attempt */
    hr_spool_state_t *log; /* attempt log, oldest first */
    char (*logerr)[256];   /* its error strings */
    size_t nlog;           /* entries */
    bool in_flight;        /* an attempt runs */
} rd_item_t;

struct rd {
    hr_delivery_t base;        /* first: the interface */
    uv_loop_t *loop;           /* the loop */
    hr_outbox_conf_t conf;     /* copy of cfg->outbox (strings owned) */
    char *consumer;            /* our consumer name: host-pid-random */
    redisAsyncContext *ac;     /* NULL while disconnected */
    bool ready;                /* connected, authenticated, groups made */
    uint64_t backoff_ms;       /* the next reconnect wait */
    uv_timer_t reconnect;      /* the reconnect wait */
    uv_timer_t tick;           /* see TICK_MS */
    uint32_t outstanding;      /* commands with a callback not yet answered */
    uint64_t last_answer;      /* uv_now of the last reply (or of the first command) */
    uint64_t next_move;        /* uv_now of the next mover run */
    bool moving;               /* the mover script is outstanding */
    rd_target_t *targets;      /* every target and file seen */
    hr_files_t *files;         /* write actions and dead letters */
    char *dead_letters;        /* the local dead-letter file */
    hr_http_client_t *http;    /* NULL once closed */
    hr_target_policy_t writes; /* write actions' policy */
    char *k_delay;             /* <prefix>:delay */
    char *k_dead;              /* <prefix>:dead */
    char *k_state;             /* <prefix>:state */
    hr_outbox_stats_t st;      /* counters */
    uint32_t inflight;         /* attempts in flight, all targets */
    bool draining;             /* start nothing new */
    uint64_t drain_deadline;   /* uv_now */
    void (*drain_cb)(void *);  /* run once drained */
    void *drain_arg;           /* ... */
    bool closing;              /* close was called */
    int open_handles;          /* timers and the HTTP client not yet closed */
    void (*close_cb)(void *);  /* run once freed */
    void *close_arg;           /* ... */
    uint64_t last_refuse_log;  /* uv_now of the last "refusing" line */
    uint64_t next_id;          /* ids in COPY payloads (informational) */
    hr_buf_t scratch;          /* encoding */
};

static void rd_connect(rd_t *d);
static void pump(rd_target_t *t);
static void start_item(rd_item_t *it);

/* ---------------------------------------------------------------- commands */

typedef void (*rd_reply_cb)(rd_t *d, redisReply *r, void *priv);

typedef struct {
    rd_t *d;
    rd_reply_cb cb;
    void *priv;
} rd_call_t;

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    rd_call_t *c = privdata;
    rd_t *d = c->d;
    d->outstanding--;
    d->last_answer = uv_now(d->loop);
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
static int rd_cmd(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv,
                  const size_t *lens)
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
static int rd_cmdv(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return rd_cmd(d, cb, priv, argc, argv, lens);
}

/* A reply that is an error, or an EXEC array holding one: its message, else NULL. */
static const char *reply_error(const redisReply *r)
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
    const char *e = reply_error(r);
    if (r && e && !strstr(e, "BUSYGROUP"))
        hr_log_error("redis: XGROUP CREATE %s: %s", (const char *)priv, e);
}

/* Make the group of stream key (from its first entry; an existing group is left alone). */
static void make_group(rd_t *d, const char *key)
{
    const char *argv[] = {"XGROUP", "CREATE", key, GROUP, "0", "MKSTREAM"};
    rd_cmdv(d, on_group, (void *)key, 6, argv);
}

static void target_groups(rd_target_t *t)
{
    if (t->lanes)
        for (int i = 0; i < RD_LANES; i++)
            make_group(t->d, t->lanes[i].key);
    else
        make_group(t->d, t->key);
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
    if (d->ready && !t->lanes) make_group(d, t->key);
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
                t->lanes[i].busy = false; /* owned stays: the renewal after the reconnect says */
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

static void on_ready(rd_t *d, redisReply *r, void *priv)
{
    const char *e = reply_error(r);
    if (e) {
        if (r) {
            hr_log_error("redis: %s:%d: %s", d->conf.host, d->conf.port, e);
            if (can_send(d)) redisAsyncDisconnect(d->ac);
        }
        return;
    }
    d->ready = true;
    d->st.unavailable[0] = '\0';
    d->backoff_ms = BACKOFF_MIN_MS;
    hr_log_info("redis: connected to %s:%d db %u as consumer %s: accepting and delivering",
                d->conf.host, d->conf.port, (unsigned)d->conf.db, d->consumer);
    for (rd_target_t *t = d->targets; t; t = t->next)
        pump(t);
}

static void on_setup(rd_t *d, redisReply *r, void *priv)
{
    const char *e = reply_error(r);
    if (e && r) {
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
    const char *argv[] = {"PING"};
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
    const char *e = r && r->type == REDIS_REPLY_NIL ? "transaction aborted" : reply_error(r);
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
    const char *e = reply_error(r);
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

/* ---------------------------------------------------------------- items */

static void item_free(rd_item_t *it)
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

static void on_lane_finished(rd_t *d, redisReply *r, void *priv)
{
    rd_lane_t *l = priv;
    l->busy = false;
    if (r) pump(l->t);
}

/* The entry of it is finished (delivered or dead): acknowledge and delete it (with an ordered
 * head, its state too, then the lane moves on). extra: commands to run in the same MULTI. */
static void finish_entry(rd_item_t *it, int nextra, const char **const *extra,
                         const size_t *const *extra_lens, const int *extra_argc)
{
    rd_t *d = it->t->d;
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    if (rd_cmdv(d, NULL, NULL, 1, multi) < 0) return; /* claimed again later: at least once */
    for (int i = 0; i < nextra; i++)
        rd_cmd(d, NULL, NULL, extra_argc[i], extra[i], extra_lens[i]);
    const char *ack[] = {"XACK", it->key, GROUP, it->id};
    rd_cmdv(d, NULL, NULL, 4, ack);
    const char *del[] = {"XDEL", it->key, it->id};
    rd_cmdv(d, NULL, NULL, 3, del);
    if (it->lane) {
        char field[256];
        snprintf(field, sizeof field, "%s/%s", it->key, it->id);
        const char *hdel[] = {"HDEL", d->k_state, field};
        rd_cmdv(d, NULL, NULL, 3, hdel);
        it->lane->busy = true;
        rd_cmdv(d, on_lane_finished, it->lane, 1, exec);
    } else {
        rd_cmdv(d, NULL, NULL, 1, exec);
    }
}

static void item_done(rd_item_t *it)
{
    if (it->lane) it->lane->head = NULL;
    item_free(it);
}

/* Dead-letter it (reason: a literal): the local file and <prefix>:dead, then finish. */
static void dead_item(rd_item_t *it, const char *reason)
{
    rd_t *d = it->t->d;
    hr_action_t *a = it->a;
    a->attempts = it->attempts;
    a->last_status = it->last_status;
    if (a->kind == HR_ACTION_WRITE)
        hr_log_error("dead-letter id=%s file=%s error=%s attempts=%u reason=%s", a->event_id,
                     a->name ? a->name : "-", a->last_error, (unsigned)a->attempts, reason);
    else if (a->last_status > 0)
        hr_log_error("dead-letter id=%s target=%s status=%d attempts=%u reason=%s", a->event_id,
                     a->name ? a->name : "-", a->last_status, (unsigned)a->attempts, reason);
    else
        hr_log_error("dead-letter id=%s target=%s error=%s attempts=%u reason=%s", a->event_id,
                     a->name ? a->name : "-", a->last_error[0] ? a->last_error : "none",
                     (unsigned)a->attempts, reason);
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
    item_done(it);
}

/* After an attempt that did not deliver: the policy decides retry or dead letter. A retry of
 * an unordered entry goes to the delayed set (and leaves its stream); an ordered head keeps
 * its place, its state in <prefix>:state. */
static void retry_or_dead(rd_item_t *it, const hr_target_policy_t *p, bool retriable,
                          const char *reject, const hr_http_response_t *res, const char *what)
{
    rd_t *d = it->t->d;
    hr_action_t *a = it->a;
    hr_target_attempt_t at = {.attempts = it->attempts,
                              .max_attempts = a->max_attempts ? a->max_attempts : 1,
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
    hr_log_warn("retry id=%s %s=%s %s attempt=%u/%u in_ms=%llu", a->event_id,
                a->kind == HR_ACTION_WRITE ? "file" : "target", a->name ? a->name : "-", what,
                (unsigned)it->attempts, (unsigned)at.max_attempts,
                (unsigned long long)next.wait_ms);
    d->st.retried++;
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
    switch (hr_circuit_failure(&t->circuit, &t->pol, uv_now(t->d->loop))) {
    case HR_CIRCUIT_REOPENED:
    case HR_CIRCUIT_OPENED:
        hr_log_warn("circuit open target=%s (this node) after %u consecutive failures: paused, "
                    "probing every %llu ms",
                    t->name, (unsigned)t->circuit.fails,
                    (unsigned long long)t->pol.circuit_probe_ms);
        break;
    case HR_CIRCUIT_SAME:
    case HR_CIRCUIT_CLOSED_NOW: break;
    }
}

static void circuit_success(rd_target_t *t)
{
    if (hr_circuit_success(&t->circuit) == HR_CIRCUIT_CLOSED_NOW)
        hr_log_info("circuit closed target=%s: the probe succeeded, delivering again", t->name);
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
    if (err == UV_ECANCELED && (d->draining || d->closing)) {
        /* Cut off by shutdown: not an attempt; the entry stays pending and is claimed. */
        hr_circuit_unprobe(&t->circuit);
        if (it->lane) it->lane->head = NULL;
        item_free(it);
        return;
    }
    char what[sizeof a->last_error + 8];
    bool delivered =
        hr_target_outcome(a, err, errmsg ? errmsg : uv_strerror(err), res, what, sizeof what);
    it->last_status = a->last_status;
    item_log_attempt(it, a->last_error);
    if (delivered) {
        circuit_success(t);
        uint64_t now = hr_wall_ms();
        hr_log_info("delivered id=%s type=%s store=%s action=forward target=%s status=%d "
                    "attempts=%u ms=%llu",
                    a->event_id, a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                    a->name ? a->name : "-", res->status, (unsigned)it->attempts,
                    (unsigned long long)(now > a->accepted_ms ? now - a->accepted_ms : 0));
        d->st.delivered++;
        finish_entry(it, 0, NULL, NULL, NULL);
        item_done(it);
    } else {
        bool retriable = err != 0 || hr_target_status_retriable(res->status);
        if (retriable)
            circuit_failure(t);
        else
            circuit_success(t);
        retry_or_dead(it, &t->pol, retriable, "rejected", err == 0 ? res : NULL, what);
    }
    pump(t);
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
        char what[sizeof err + 8];
        snprintf(what, sizeof what, "error=%s", err);
        retry_or_dead(it, &d->writes, a->file_path && hr_target_write_retriable(rc), "write failed",
                      NULL, what);
        return;
    }
    hr_log_info("delivered id=%s type=%s store=%s action=write file=%s", a->event_id,
                a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                a->name ? a->name : "-");
    d->st.delivered++;
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
        set_last_error(a, "max age exceeded while waiting");
        dead_item(it, "max age exceeded");
        return;
    }
    it->attempts++;
    a->attempts = it->attempts;
    hr_signed_headers_t sh;
    hr_http_out_t req;
    hr_target_request(&t->pol, a, hr_wall_ms() / 1000, &sh, &req);
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
        hr_log_error("redis: %s entry %s is not a hookrouter action: acknowledged and skipped", key,
                     id);
        const char *ack[] = {"XACK", key, GROUP, id};
        rd_cmdv(d, NULL, NULL, 4, ack);
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
    const char *e = reply_error(r);
    if (e) {
        if (r) hr_log_error("redis: XREADGROUP %s: %s", t->key, e);
        if (r && strstr(e, "NOGROUP")) make_group(d, t->key);
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
    pump(t);
}

static void on_claim(rd_t *d, redisReply *r, void *priv)
{
    rd_target_t *t = priv;
    t->claiming = false;
    const char *e = reply_error(r);
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
    case HR_GATE_PROBE:
        hr_log_info("circuit half-open target=%s: sending one probe", t->name);
        n = 1;
        break;
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
    l->busy = false;
    const char *e = reply_error(r);
    if (e) {
        if (r) hr_log_error("redis: ordered lane %s: %s", l->key, e);
        if (r && strstr(e, "NOGROUP")) make_group(d, l->key);
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
        hr_log_error("redis: %s entry %s is not a hookrouter action: skipped", l->key, id);
        const char *ack[] = {"XACK", l->key, GROUP, id};
        rd_cmdv(d, NULL, NULL, 4, ack);
        return;
    }
    it->lane = l;
    l->head = it;
    pump(l->t);
}

static void on_lease(rd_t *d, redisReply *r, void *priv)
{
    rd_lane_t *l = priv;
    l->busy = false;
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
    if (ok) pump(l->t);
}

/* One lane's turn: lease, fetch, or the head's next attempt. */
static void lane_pump(rd_lane_t *l)
{
    rd_target_t *t = l->t;
    rd_t *d = t->d;
    uint64_t now = uv_now(d->loop);
    if (l->busy) return;
    char ms[24];
    snprintf(ms, sizeof ms, "%llu", (unsigned long long)d->conf.claim_idle_ms);
    if (now >= l->next_lease) {
        l->busy = true;
        if (l->owned) {
            const char *argv[] = {"EVAL", RENEW_LUA, "1", l->lease, d->consumer, ms};
            if (rd_cmdv(d, on_lease, l, 6, argv) < 0) l->busy = false;
        } else {
            const char *argv[] = {"SET", l->lease, d->consumer, "NX", "PX", ms};
            if (rd_cmdv(d, on_lease, l, 6, argv) < 0) l->busy = false;
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
    l->busy = true;
    const char *argv[] = {"EVAL", FETCH_LUA, "3", l->key, d->k_state, l->lease, GROUP, d->consumer};
    if (rd_cmdv(d, on_fetch, l, 8, argv) < 0) l->busy = false;
}

/* ---------------------------------------------------------------- the pump and the tick */

/* Start what t may start: read new entries, claim abandoned ones (unordered), or each lane's
 * turn (ordered). */
static void pump(rd_target_t *t)
{
    rd_t *d = t->d;
    if (!d->ready || d->closing || d->draining || !d->http) return;
    if (t->lanes) {
        for (int i = 0; i < RD_LANES; i++)
            lane_pump(&t->lanes[i]);
        return;
    }
    uint64_t now = uv_now(d->loop);
    if (!t->claiming && now >= t->next_claim) {
        uint32_t n = may_start(t);
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
    const char *e = reply_error(r);
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
    if (!d->ready || d->draining) return;
    if (!d->moving && now >= d->next_move) {
        const char *argv[] = {"EVAL", MOVE_LUA, "1", d->k_delay, "256"};
        if (rd_cmdv(d, on_moved, NULL, 5, argv) == 0) d->moving = true;
        d->next_move = now + MOVE_MS;
    }
    for (rd_target_t *t = d->targets; t; t = t->next)
        pump(t);
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
        hr_buf_printf(&tj, ":{\"circuit\":\"%s\",\"in_flight\":%u,\"queued\":0}",
                      t->circuit.state == HR_CIRCUIT_OPEN   ? "open"
                      : t->circuit.state == HR_CIRCUIT_HALF ? "half-open"
                                                            : "closed",
                      (unsigned)t->inflight);
    }
    hr_buf_appendc(&tj, '}');
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
                item_free(t->lanes[i].head);
        target_free(t);
    }
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
