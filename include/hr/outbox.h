/* The outbox: every action a rule produced, from the moment the event is accepted until it is
 * delivered or dead-lettered (src/outbox.c). This is the one interface between "accepted" and
 * "delivered"; the in-memory queue behind it is meant to be swapped for a durable spool
 * without touching its callers.
 *
 * Forward actions go through the HTTP client. 2xx: delivered. Connect error, timeout, 408,
 * 429 and 5xx: retried with exponential backoff (each wait drawn between 50% and 100% of
 * retry_base_ms * 2^(attempt-1), capped at retry_max_ms; Retry-After wins), up to the action's
 * max_attempts. Other statuses: failed at once. A failed action is appended to the dead-letter
 * file with the target, its attempts, the last status/error and the body.
 * Write actions are appended to their file at once (one write(2) per line); an I/O error
 * dead-letters them.
 * Each outcome is logged at info:  "delivered id=... target=pos status=200 attempts=1 ms=3"
 * or warn: "retry id=... target=pos error=connection refused attempt=1/5 in_ms=812" /
 * "dead-letter id=... target=pos status=400 attempts=1". */
#ifndef HR_OUTBOX_H
#define HR_OUTBOX_H

#include <stdint.h>
#include <uv.h>

#include "hr/action.h"
#include "hr/files.h"

typedef struct hr_outbox hr_outbox_t;

typedef struct {
    const char *dead_letters;    /* path of the dead-letter file (JSON lines) */
    uint64_t retry_base_ms;      /* first backoff (default 500 ms); doubles per attempt */
    uint64_t retry_max_ms;       /* cap of one backoff (default 60 s) */
    uint32_t max_conns_per_host; /* passed to the HTTP client (default 64) */
} hr_outbox_opts_t;

typedef struct {
    uint64_t accepted;  /* actions pushed */
    uint64_t delivered; /* forwards answered 2xx and lines written */
    uint64_t retried;   /* attempts scheduled again */
    uint64_t dead;      /* actions dead-lettered */
    uint64_t pending;   /* actions not finished (queued, in flight or waiting to retry) */
} hr_outbox_stats_t;

/* files is shared with the caller (who also writes dead letters for failed rules) and must
 * outlive the outbox. */
hr_outbox_t *hr_outbox_create(uv_loop_t *loop, hr_files_t *files, const hr_outbox_opts_t *opts);
/* Change the dead-letter path (after a reload). */
void hr_outbox_set_dead_letters(hr_outbox_t *o, const char *path);
/* Take ownership of a list of actions (linked through next) and start delivering them.
 * Returns 0. (The durable outbox may return < 0 when it cannot accept: the caller then
 * answers 503 and the actions are freed by the outbox.) */
int hr_outbox_push(hr_outbox_t *o, hr_action_t *list);
void hr_outbox_stats(const hr_outbox_t *o, hr_outbox_stats_t *st);
/* Shutdown: stop retrying later than now + grace_ms; whatever is not delivered when the
 * grace period ends is dead-lettered (reason "shutdown"); then cb runs. Pushing after this
 * dead-letters at once. */
void hr_outbox_drain(hr_outbox_t *o, uint64_t grace_ms, void (*cb)(void *arg), void *arg);
/* Free the outbox; every handle must be closed (call after drain's cb). cb runs when done. */
void hr_outbox_close(hr_outbox_t *o, void (*cb)(void *arg), void *arg);

#endif
