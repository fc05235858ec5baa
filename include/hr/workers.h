/* Front workers and the delivery side, for `workers` > 1 (src/workers.c).
 *
 * N worker threads, each with its own loop and a front router (hr_router_start_worker): its
 * own SO_REUSEPORT listener on the same address, its own rule set and Lua state (loaded by the
 * worker itself: Lua states are not thread-safe), its own reply client for request() and its
 * own file handles for dead letters of failed rules. The calling thread's loop is the delivery
 * side: the one outbox (spool, scheduling, delivery, write actions) in a direct delivery
 * (hr/delivery.h), fed through hr_handoff: each worker's router holds a port of it as its
 * delivery.
 * Signals stay with the caller, who forwards them here. */
#ifndef HR_WORKERS_H
#define HR_WORKERS_H

#include <uv.h>

#include "hr/router.h"
#include "hr/rules.h"

typedef struct hr_workers hr_workers_t;

/* Open the delivery side for rs's config on loop and start n front workers, one after the other
 * (the first binds the address, the others bind the port it got). Takes over the caller's
 * reference to rs. Returns NULL with a message in err if the outbox or any worker cannot
 * start; what was started is then stopped by running loop until it has no handles left. */
hr_workers_t *hr_workers_start(uv_loop_t *loop, hr_ruleset_t *rs, unsigned n, char *err,
                               size_t errlen);
/* Log "listening on HOST:PORT (N workers)". */
void hr_workers_log_listening(const hr_workers_t *ws);
/* SIGHUP: every worker reloads its own rule set (each coalesces as a single router does);
 * a worker whose config and rules load hands the new config to the delivery side through its
 * port (hr_delivery_reload), which applies its dead-letter path and target policies and
 * reopens its files. */
void hr_workers_request_reload(hr_workers_t *ws);
/* Have cb(arg, ...) run on the caller's loop when every running worker has ended every reload
 * asked of it (one call for requests that coalesced): ok if every worker's reload was, else
 * the first failure's error; reloads is worker 0's count. Reloads a worker starts on its own
 * (rule state over its limit) are not reported. */
void hr_workers_on_reload(hr_workers_t *ws, hr_router_reload_cb cb, void *arg);
/* SIGTERM: every worker stops accepting and finishes its requests; then the threads are
 * joined, the outbox drains for what is left of shutdown_grace_ms (the latest deadline a
 * worker handed over), everything is closed and freed, and cb runs (on loop). */
void hr_workers_stop(hr_workers_t *ws, void (*cb)(void *arg), void *arg);

/* The number of CPUs this process may use (for workers = "auto"); at least 1. */
unsigned hr_workers_auto(void);

#endif
