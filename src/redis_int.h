/* The Redis outbox's internals, shared by its own files only (src/redis_outbox.c: the
 * connection, commands, targets, accepting, the tick and the delivery interface;
 * src/redis_deliver.c: entries being worked on, attempts and their outcome, reading, claiming,
 * ordered lanes). The contract to the rest of the program is include/hr/redis_outbox.h. */
#ifndef HR_REDIS_INT_H
#define HR_REDIS_INT_H

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "hr/files.h"
#include "hr/http_client.h"
#include "hr/outbox.h"
#include "hr/redis_outbox.h"
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
typedef struct rd_lane {
    struct rd_target *t;  /* owner */
    char *key;            /* <prefix>:t:<target>:<lane> */
    char *lease;          /* <prefix>:lease:<target>:<lane> */
    bool owned;           /* we hold the lease */
    unsigned busy;        /* lease, fetch and finish commands outstanding: act only at 0 */
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
    hr_target_stats_t m;    /* this node's figures for /metrics (forwards; writes: d->writes_m) */
} rd_target_t;

/* The commands that finish an entry (one MULTI), kept until EXEC has answered: if the
 * connection goes first, they are sent again after the reconnect, before anything is read,
 * so an attempt that ended during an outage is not sent again (nor its retry state lost). */
typedef struct rd_finish {
    struct rd_finish *next; /* in d->unfinished, oldest first */
    struct rd_lane *lane;   /* an ordered head's lane (busy until EXEC answers), or NULL */
    hr_buf_t cmds;          /* per command: u32 argc, then per argument u32 length, bytes */
} rd_finish_t;

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
    uint64_t started_ns;   /* uv_hrtime of the running attempt's start */
} rd_item_t;


struct rd {
    hr_delivery_t base;            /* first: the interface */
    uv_loop_t *loop;               /* the loop */
    hr_outbox_conf_t conf;         /* copy of cfg->outbox (strings owned) */
    char *consumer;                /* our consumer name: host-pid-random */
    redisAsyncContext *ac;         /* NULL while disconnected */
    bool ready;                    /* connected, authenticated, groups made */
    uint64_t backoff_ms;           /* the next reconnect wait */
    uv_timer_t reconnect;          /* the reconnect wait */
    uv_timer_t tick;               /* see TICK_MS */
    uint32_t outstanding;          /* commands with a callback not yet answered */
    uint64_t last_answer;          /* uv_now of the last reply (or of the first command) */
    uint64_t connect_started;      /* uv_now of the connect in progress */
    bool setup_failed;             /* AUTH or SELECT was refused on this connection */
    uint64_t next_move;            /* uv_now of the next mover run */
    uint64_t next_sweep;           /* uv_now of the next sweep of stopped consumers */
    bool moving;                   /* the mover script is outstanding */
    rd_target_t *targets;          /* every target and file seen */
    hr_files_t *files;             /* write actions and dead letters */
    char *dead_letters;            /* the local dead-letter file */
    hr_http_client_t *http;        /* NULL once closed */
    hr_target_policy_t writes;     /* write actions' policy */
    char *k_delay;                 /* <prefix>:delay */
    char *k_dead;                  /* <prefix>:dead */
    char *k_state;                 /* <prefix>:state */
    hr_outbox_stats_t st;          /* counters */
    hr_target_stats_t writes_m;    /* the write actions' figures (this node's) for /metrics */
    uint32_t inflight;             /* attempts in flight, all targets */
    bool draining;                 /* start nothing new */
    uint64_t drain_deadline;       /* uv_now */
    void (*drain_cb)(void *);      /* run once drained */
    void *drain_arg;               /* ... */
    bool closing;                  /* close was called */
    int open_handles;              /* timers and the HTTP client not yet closed */
    void (*close_cb)(void *);      /* run once freed */
    void *close_arg;               /* ... */
    uint64_t last_refuse_log;      /* uv_now of the last "refusing" line */
    uint64_t next_id;              /* ids in COPY payloads (informational) */
    hr_buf_t scratch;              /* encoding */
    rd_finish_t *unfinished;       /* finishes whose EXEC went unanswered: sent on reconnect */
    rd_finish_t **unfinished_tail; /* ... */
};

/* The /metrics figures it counts in: its target's, or the write actions'. */
static inline hr_target_stats_t *rd_tstats(rd_target_t *t)
{
    return t->write ? &t->d->writes_m : &t->m;
}

/* ---- redis_outbox.c: commands and targets --------------------------------------------- */

/* A command's answer: r NULL when the connection went away before it came. */
typedef void (*rd_reply_cb)(rd_t *d, redisReply *r, void *priv);

/* Send argv (binary-safe lens). cb NULL: the reply is ignored. Returns 0 (cb will run, with
 * NULL if the connection goes), or -ENOTCONN (cb never runs). */
int rd_cmd(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv, const size_t *lens);
/* rd_cmd with NUL-terminated arguments (at most 16). */
int rd_cmdv(rd_t *d, rd_reply_cb cb, void *priv, int argc, const char **argv);
/* A reply that is an error, or an EXEC array holding one: its message; "connection lost" for
 * NULL; else NULL. */
const char *rd_reply_error(const redisReply *r);
/* Create the group of stream key (from id 0, MKSTREAM; an existing group is left alone). */
void rd_make_group(rd_t *d, const char *key);

/* ---- redis_deliver.c: delivering ------------------------------------------------------- */

/* Start what t may start now: read new entries, claim abandoned ones, or each ordered lane's
 * turn (lease, fetch, the head's next attempt). Does nothing unless ready and not draining. */
void rd_pump(rd_target_t *t);
/* Free an item (its action, key and attempt log). Accepts NULL. */
void rd_item_free(rd_item_t *it);
/* After a reconnect, before anything is read: send the finishes that went unanswered. */
void rd_resend_unfinished(rd_t *d);
/* Free the finishes still kept (close). */
void rd_unfinished_free(rd_t *d);

#endif
