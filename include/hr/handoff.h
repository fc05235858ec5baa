/* The hand-off between front workers and the delivery side (src/handoff.c), used only with
 * `workers` > 1. Each worker thread runs its own loop, listener and rule set; the one outbox
 * lives on the delivery loop (the main thread's), behind a direct delivery (hr/delivery.h).
 * A worker's end, a port, is itself a delivery (the router's one interface): each call is
 * carried to the direct delivery on the delivery loop, and its callback runs later on the
 * worker's loop with the answer (push: 0 durable, < 0 refused; stats: the numbers; reload:
 * applied).
 *
 * Two mutex-protected queues and two uv_async handles: the delivery side's queue (every
 * worker appends, the delivery loop drains it and makes the calls in arrival order, so the
 * pushes of all workers are serialised into the one outbox and its group commit), and one
 * completion queue per worker (the delivery loop appends, the worker drains it and runs the
 * callbacks). uv_async_send coalesces, so a burst of pushes costs one wake-up per loop
 * iteration, not one per push. */
#ifndef HR_HANDOFF_H
#define HR_HANDOFF_H

#include <stdint.h>
#include <uv.h>

#include "hr/delivery.h"

typedef struct hr_handoff hr_handoff_t; /* the delivery side's end: one */

/* Create the delivery side's end on loop (target's loop; call from its thread). target must
 * outlive it. Never fails (aborts on OOM). */
hr_handoff_t *hr_handoff_open(uv_loop_t *loop, hr_delivery_t *target);
/* Close it (delivery thread, once every port is closed); cb(arg) runs when it is freed. */
void hr_handoff_close(hr_handoff_t *h, void (*cb)(void *arg), void *arg);
/* The latest deadline a port's drain handed over (wall ms), 0 if none did: when the delivery
 * side's own drain should end once every front has stopped. */
uint64_t hr_handoff_drain_deadline(hr_handoff_t *h);

/* Open a worker's end on its loop (call from the worker's thread): a delivery whose calls
 * go to target. Its push always returns 0 (a refusal comes back as cb's status); its drain
 * only hands the deadline over and calls back at once; its close frees the port, and runs
 * cb(arg), once every call has called back. Never fails. */
hr_delivery_t *hr_handoff_port_open(hr_handoff_t *h, uv_loop_t *loop);

#endif
