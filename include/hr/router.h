/* The router: one event loop's worth of hookrouter (src/router.c). It owns the listener, the
 * current rule set, the outbox and the file sink, and runs the webhook pipeline:
 *   request -> route (endpoints) -> auth (bearer, constant time) -> JSON decode -> rule
 *           -> actions handed to the outbox -> 200 {"id": ...}
 * All its state hangs off hr_router_t (nothing process-wide), so one router per loop and
 * core is a small later step. */
#ifndef HR_ROUTER_H
#define HR_ROUTER_H

#include <uv.h>

#include "hr/rules.h"

typedef struct hr_router hr_router_t;

/* Start serving rs's config (takes over the caller's reference to rs). Returns NULL with a
 * message in err if the listener cannot be set up. */
hr_router_t *hr_router_start(uv_loop_t *loop, hr_ruleset_t *rs, char *err, size_t errlen);
/* Log "listening on HOST:PORT" with the port actually bound (the config may say port 0). */
void hr_router_log_listening(const hr_router_t *r);
/* Ask for a reload of the config file and rules. Several requests before the reload runs
 * coalesce into one; a request during a reload causes exactly one more. */
void hr_router_request_reload(hr_router_t *r);
/* Stop accepting, finish requests in flight, drain the outbox within the config's grace
 * period, close everything and free the router; then cb runs. */
void hr_router_shutdown(hr_router_t *r, void (*cb)(void *arg), void *arg);

#endif
