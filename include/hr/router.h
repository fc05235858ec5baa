/* The router: one event loop's worth of hookrouter (src/router.c). It owns the listener, the
 * current rule set, the reply client and the file sink for failed rules, and runs the webhook
 * pipeline:
 *   request -> route (endpoints) -> auth (bearer, constant time) -> JSON decode -> rule
 *           -> actions handed to the delivery side -> 200 {"id": ...}
 * It talks to the delivery side through one interface (hr/delivery.h: push, stats, reload,
 * drain), whatever stands behind it: with one worker (hr_router_start) a direct delivery it
 * opens on its own loop, the outbox called straight through; as a front worker
 * (hr_router_start_worker, src/workers.c), on its own thread and loop, its hand-off port to
 * the one outbox on the delivery loop (hr/handoff.h). */
#ifndef HR_ROUTER_H
#define HR_ROUTER_H

#include <stdatomic.h>
#include <uv.h>

#include "hr/delivery.h"
#include "hr/metrics.h"
#include "hr/rules.h"

typedef struct hr_router hr_router_t;

/* A router's counters for /healthz and /metrics. Written only by the router's own thread,
 * read by any worker answering /healthz or /metrics (which sum them over the workers):
 * relaxed atomics, no locks. The labelled families are series sets (hr/metrics.h) with the
 * same single-writer rule. The padding at the end keeps two workers' counters (adjacent in
 * the workers' array) off each other's cache lines. */
typedef struct {
    atomic_uint_least64_t accepted;       /* events whose rule ran (200 or 503 after) */
    atomic_uint_least64_t dropped;        /* dropped on purpose, no actions */
    atomic_uint_least64_t failed;         /* rule failed: dead-lettered, 500 */
    atomic_uint_least64_t rejected;       /* 4xx before the rule */
    atomic_uint_least64_t refused;        /* 503: the spool could not take the actions */
    atomic_uint_least64_t fallbacks;      /* replies that were the fallback */
    atomic_uint_least64_t late_answers;   /* request() answers after the deadline */
    atomic_uint_least64_t waiting;        /* rules waiting in request() now */
    atomic_uint_least64_t reload_err;     /* 1 while this worker's last reload failed */
    atomic_uint_least64_t reloads_ok;     /* this worker's successful reloads */
    atomic_uint_least64_t reloads_failed; /* and failed ones */
    atomic_uint_least64_t loaded_ms;      /* wall time its config was loaded */
    atomic_uint_least64_t connections;    /* open webhook connections (its server publishes) */
    hr_series_set_t requests;             /* hookrouter_requests_total: endpoint, code */
    hr_series_set_t events;               /* hookrouter_events_total: type, [store,] outcome */
    hr_series_set_t rule_time;            /* hookrouter_rule_duration_seconds: type (histograms) */
    hr_series_set_t replies;              /* hookrouter_replies_total: endpoint, result */
    char pad_[64];                        /* see above */
} hr_router_counters_t;

/* Free what the counters' series hold (once no worker uses them). Accepts NULL. */
void hr_router_counters_free(hr_router_counters_t *c);

/* What a front worker needs besides its loop and rule set. */
typedef struct {
    hr_delivery_t *delivery;        /* the worker's hand-off port, opened on its loop (the
                                       router takes it over, and closes it even on failure) */
    unsigned index;                 /* this worker, 0-based */
    unsigned nworkers;              /* how many there are */
    hr_router_counters_t *counters; /* nworkers of them; this worker writes counters[index] */
    int port;                       /* listen here (not the config's port: it may be 0) */
    bool exclusive;                 /* the first worker: fail if another process has the port */
} hr_router_worker_t;

/* Start serving rs's config (takes over the caller's reference to rs). Returns NULL with a
 * message in err if the listener cannot be set up. */
hr_router_t *hr_router_start(uv_loop_t *loop, hr_ruleset_t *rs, char *err, size_t errlen);
/* The same as a front worker (SO_REUSEPORT listener, w->delivery instead of an outbox of its
 * own). Call from the worker's thread. */
hr_router_t *hr_router_start_worker(uv_loop_t *loop, hr_ruleset_t *rs, const hr_router_worker_t *w,
                                    char *err, size_t errlen);
/* The port the router listens on. */
int hr_router_port(const hr_router_t *r);
/* The start-up line: "listening on HOST:PORT" with the port actually bound (the config may
 * say port 0), followed by " (TLS)" (" (TLS, client certificates required)") when the config
 * has a tls section and " (N workers)" when nworkers > 1. */
void hr_router_log_listening_at(const hr_config_t *cfg, int port, unsigned nworkers);
/* hr_router_log_listening_at for this (single) router. */
void hr_router_log_listening(const hr_router_t *r);
/* Ask for a reload of the config file and rules. Several requests before the reload runs
 * coalesce into one; a request during a reload causes exactly one more. */
void hr_router_request_reload(hr_router_t *r);
/* What a reload came to: ok or not, the number of successful reloads so far, and why it
 * failed (NULL when ok; valid during the call only). */
typedef void (*hr_router_reload_cb)(void *arg, bool ok, uint64_t reloads, const char *error);
/* Have cb(arg, ...) run on the router's loop at the end of every reload, a requested one or
 * one the router starts itself (rule state over its limit), once the new rules serve and the
 * new delivery settings are handed to the delivery side (or the reload failed). */
void hr_router_on_reload(hr_router_t *r, hr_router_reload_cb cb, void *arg);
/* Stop accepting, finish requests in flight, drain the delivery side within the config's
 * grace period (hr_delivery_drain: a front worker's port hands the deadline to the delivery
 * loop, which drains when every worker has stopped), close everything and free the router;
 * then cb runs. */
void hr_router_stop(hr_router_t *r, void (*cb)(void *arg), void *arg);

#endif
