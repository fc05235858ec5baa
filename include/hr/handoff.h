/* The hand-off between front workers and the delivery side (src/handoff.c), used only with
 * `workers` > 1. Each worker thread runs its own loop, listener and rule set; the one outbox
 * lives on the delivery loop (the main thread's). A worker hands a rule's actions over with
 * hr_handoff_push(), which has hr_outbox_push()'s contract: the callback runs later on the
 * worker's loop with 0 (durable: answer as the rule decided) or < 0 (refused: 503).
 *
 * Two mutex-protected queues and two uv_async handles: the delivery side's queue (every
 * worker appends, the delivery loop drains it and calls hr_outbox_push in arrival order, so
 * the pushes of all workers are serialised into the one outbox and its group commit), and one
 * completion queue per worker (the delivery loop appends, the worker drains it and runs the
 * callbacks). uv_async_send coalesces, so a burst of pushes costs one wake-up per loop
 * iteration, not one per push. */
#ifndef HR_HANDOFF_H
#define HR_HANDOFF_H

#include <uv.h>

#include "hr/action.h"
#include "hr/outbox.h"

typedef struct hr_handoff hr_handoff_t;           /* the delivery side's end: one */
typedef struct hr_handoff_port hr_handoff_port_t; /* a worker's end: one per worker loop */

/* Create the delivery side's end on loop (the outbox's loop; call from its thread). o must
 * outlive it. Never fails (aborts on OOM). */
hr_handoff_t *hr_handoff_create(uv_loop_t *loop, hr_outbox_t *o);
/* Close it (delivery thread, once every port is closed); cb(arg) runs when it is freed. */
void hr_handoff_close(hr_handoff_t *h, void (*cb)(void *arg), void *arg);

/* Open a worker's end on its loop (call from the worker's thread). Never fails. */
hr_handoff_port_t *hr_handoff_port_open(hr_handoff_t *h, uv_loop_t *loop);
/* Close a worker's end (worker thread). Whatever is still owed to it is delivered first:
 * the port is freed, and cb(arg) runs, once every push and stats call has called back. */
void hr_handoff_port_close(hr_handoff_port_t *p, void (*cb)(void *arg), void *arg);

/* Hand a list of actions (linked through next; ownership passes) to the outbox. Always
 * returns 0: cb(arg, status) runs later on p's loop with hr_outbox_push()'s status (0
 * durable, < 0 refused: the actions are dropped). */
int hr_handoff_push(hr_handoff_port_t *p, hr_action_t *list, void (*cb)(void *arg, int status),
                    void *arg);

/* The outbox's numbers, as hr_outbox_stats() and hr_outbox_targets_json() give them on the
 * delivery loop. targets_json is a JSON object; both are valid only during the callback. */
typedef void (*hr_handoff_stats_cb)(void *arg, const hr_outbox_stats_t *st,
                                    const char *targets_json);
/* Ask for them; cb runs later on p's loop. */
void hr_handoff_stats(hr_handoff_port_t *p, hr_handoff_stats_cb cb, void *arg);

#endif
