/* The delivery side as a router sees it (src/delivery.c): one interface, push, stats,
 * reload, drain and close, whatever stands behind it. Two implementations:
 *   - the direct one (hr_delivery_open, here): the outbox and its files on the caller's loop,
 *     called straight through (workers = 1, and the delivery loop with workers = N);
 *   - a hand-off port (hr_handoff_port_open, src/handoff.c): a front worker's end, which
 *     carries every call to a direct delivery on the delivery loop and the answer back.
 * Every call is made on the loop the delivery was opened on; every callback runs there. A
 * callback may run before the call returns (the direct one answers at once) or later (a
 * port), except push's, which never runs from inside the call (hr_outbox_push's contract). */
#ifndef HR_DELIVERY_H
#define HR_DELIVERY_H

#include <stdint.h>
#include <uv.h>

#include "hr/action.h"
#include "hr/config.h"
#include "hr/outbox.h"

typedef struct hr_delivery hr_delivery_t;

/* The outbox's numbers as hr_outbox_stats() and hr_outbox_targets_json() give them;
 * targets_json is a JSON object. Both are valid only during the callback. */
typedef void (*hr_delivery_stats_cb)(void *arg, const hr_outbox_stats_t *st,
                                     const char *targets_json);

/* What an implementation provides; see the hr_delivery_* calls below for each contract. */
typedef struct {
    int (*push)(hr_delivery_t *d, hr_action_t *list, void (*cb)(void *arg, int status), void *arg);
    void (*stats)(hr_delivery_t *d, hr_delivery_stats_cb cb, void *arg);
    void (*reload)(hr_delivery_t *d, const hr_config_t *cfg, void (*cb)(void *arg), void *arg);
    void (*drain)(hr_delivery_t *d, uint64_t deadline_ms, void (*cb)(void *arg), void *arg);
    void (*close)(hr_delivery_t *d, void (*cb)(void *arg), void *arg);
} hr_delivery_ops_t;

/* The head of every implementation's struct. */
struct hr_delivery {
    const hr_delivery_ops_t *ops;
};

/* A configured target's delivery policy as the target policy takes it (hr/target.h; its
 * pointers point into t). Every delivery implementation uses this one mapping. */
hr_target_opts_t hr_delivery_target_opts(const hr_target_conf_t *t);

/* Open the direct delivery for cfg on loop: its own files (write actions, dead letters of
 * undeliverable actions) and the outbox, which opens the spool, recovers what it holds and
 * starts delivering it. Returns NULL with a message in err if the spool cannot be opened. */
hr_delivery_t *hr_delivery_open(uv_loop_t *loop, const hr_config_t *cfg, char *err, size_t errlen);

/* Hand a list of actions (linked through next; ownership passes) over: hr_outbox_push()'s
 * contract. Returns 0 and cb(arg, 0) runs once they are durable, or cb(arg, < 0) if they
 * could not be made durable (the actions are dropped: answer 503); or returns < 0 if they
 * cannot be taken at all (freed, and cb never runs). */
static inline int hr_delivery_push(hr_delivery_t *d, hr_action_t *list,
                                   void (*cb)(void *arg, int status), void *arg)
{
    return d->ops->push(d, list, cb, arg);
}

/* Ask for the outbox's numbers (for /healthz); cb runs once. */
static inline void hr_delivery_stats(hr_delivery_t *d, hr_delivery_stats_cb cb, void *arg)
{
    d->ops->stats(d, cb, arg);
}

/* A reload loaded cfg: apply its delivery settings (dead-letter path, target and write
 * policies, file modes) and reopen the files (logrotate). cfg must stay valid until cb(arg)
 * runs. With N workers every worker's reload applies its cfg, so a worker's pushes after its
 * reload see the new settings. */
static inline void hr_delivery_reload(hr_delivery_t *d, const hr_config_t *cfg,
                                      void (*cb)(void *arg), void *arg)
{
    d->ops->reload(d, cfg, cb, arg);
}

/* Shutdown, once the caller will push nothing more: the direct delivery logs "shutdown:
 * draining N pending deliveries", drains the outbox until deadline_ms (wall time; see
 * hr_outbox_drain) and logs "stopped: ..."; a port only hands deadline_ms to the delivery
 * side, which drains when every front has stopped (hr_handoff_drain_deadline). Then cb. */
static inline void hr_delivery_drain(hr_delivery_t *d, uint64_t deadline_ms, void (*cb)(void *arg),
                                     void *arg)
{
    d->ops->drain(d, deadline_ms, cb, arg);
}

/* Close and free it (after drain's cb, or after a failed start); cb(arg) runs when done. A
 * port first waits for every call still owed an answer. */
static inline void hr_delivery_close(hr_delivery_t *d, void (*cb)(void *arg), void *arg)
{
    d->ops->close(d, cb, arg);
}

#endif
