/* The outbox: every action a rule produced, from the moment the event is accepted until it is
 * delivered or dead-lettered (src/outbox*.c). This is the one interface between "accepted" and
 * "delivered". It is durable: hr_outbox_push() completes only once the actions are in the
 * spool on disk (src/spool.c) per the fsync mode, and everything not finished is delivered
 * again after a restart, with its attempt count and next-attempt time.
 *
 * Forward actions go through the HTTP client, scheduled per target (the policy, its defaults
 * and every decision below are src/target.c's; the outbox keeps the timers and queues):
 *   - retries: the wait before attempt n is retry_ms[n-1] (the last value repeats), with
 *     +-20% jitter; Retry-After on 429/503 replaces it. 2xx: delivered. Connect error,
 *     timeout, 408, 429, 5xx: retried up to the action's max_attempts and the target's
 *     max_age_s (age since acceptance). Other statuses: dead-lettered at once.
 *   - a circuit breaker: after circuit_failures consecutive failures the target is paused
 *     (open) and probed with one request every circuit_probe_ms; a success closes it.
 *   - at most concurrency requests in flight, and at most rate requests per second (0: no
 *     limit); other targets are never held up by one target.
 *   - ordered: one store's events in arrival order, a failing head blocking only its lane.
 * Write actions are appended to their file once durable (one write(2) per line). A
 * transient error (EMFILE, ENFILE, ENOSPC, EIO, EDQUOT, EAGAIN, ...) retries them like a
 * forward, on opts.writes' schedule, up to opts.write_attempts and its max_age_s; a path error
 * (ENOTDIR, EISDIR, EACCES, EROFS, ...) dead-letters them at once.
 * A dead letter that cannot be written (the dead-letter file fails) is not finished: the
 * action stays in the spool and its dead letter is tried again a second later (logged at most
 * once a second).
 * Each outcome is logged at info:  "delivered id=... target=pos status=200 attempts=1 ms=3"
 * or warn: "retry id=... target=pos error=connection refused attempt=1/5 in_ms=812" /
 * error: "dead-letter id=... target=pos status=400 attempts=1 reason=rejected".
 * Replays: files that `hookrouter replay` drops into <spool_dir>/incoming/ are taken in
 * within a second.
 * Compaction: a few actions that keep retrying never pin old segments; when the oldest
 * segment holds few pending actions they are copied forward with their state and attempt
 * log, and the segment is deleted once the copies are synced ("spool: compacted ..."). */
#ifndef HR_OUTBOX_H
#define HR_OUTBOX_H

#include <stdint.h>
#include <uv.h>

#include "hr/action.h"
#include "hr/files.h"
#include "hr/metrics.h"
#include "hr/spool.h"
#include "hr/target.h"

typedef struct hr_outbox hr_outbox_t;

/* Per-target delivery policy (copied; 0 means the default of hr/defaults.h): the target
 * policy's options (hr/target.h). */
typedef hr_target_opts_t hr_outbox_target_t;

typedef struct {
    const char *dead_letters;          /* path of the dead-letter file (JSON lines) */
    uint32_t max_conns_per_host;       /* passed to the HTTP client (default 64) */
    hr_spool_opts_t spool;             /* where and how the actions are kept */
    const hr_outbox_target_t *targets; /* policies by target (others get the defaults) */
    size_t ntargets;
    uint64_t incoming_scan_ms; /* how often <spool>/incoming/ is looked at (default 1000) */
    bool manual_compaction;    /* tests: compact only through hr_outbox_compact() */
    hr_outbox_target_t writes; /* write actions' retry_ms and max_age_s (name and the rest
                                  unused; nretry 0: the default schedule) */
    uint32_t write_attempts;   /* attempts of a write action before its dead letter (0:
                                  HR_DEF_WRITE_ATTEMPTS) */
} hr_outbox_opts_t;

typedef struct {
    uint64_t accepted;    /* actions pushed (since start) */
    uint64_t delivered;   /* forwards answered 2xx and lines written */
    uint64_t retried;     /* attempts scheduled again */
    uint64_t dead;        /* actions dead-lettered */
    uint64_t pending;     /* actions not finished (queued, in flight or waiting to retry) */
    uint64_t refused;     /* pushes refused (spool full, I/O error): webhooks answered 503 */
    uint64_t recovered;   /* unfinished actions found in the spool at start */
    uint64_t replayed;    /* actions taken in from <spool>/incoming/ */
    uint64_t compactions; /* spool segments emptied by copying their few pending actions on */
    bool spool_full;      /* the last push was refused with the spool at max_spool_bytes, and
                             none has been taken since nor has the backlog emptied */
    hr_spool_stats_t spool;
    char unavailable[200]; /* "" or why no event can be stored now (the Redis outbox:
                              "redis unreachable: ..."): /readyz answers 503 with it */
} hr_outbox_stats_t;

/* Open the spool, recover what it holds and start delivering it. files (write actions and
 * dead letters go through it) is the caller's, which reopens it on SIGHUP (src/delivery.c),
 * and must outlive the outbox.
 * Returns NULL with a message in err if the spool cannot be opened. */
hr_outbox_t *hr_outbox_open(uv_loop_t *loop, hr_files_t *files, const hr_outbox_opts_t *opts,
                            char *err, size_t errlen);
/* Change the dead-letter path (after a reload). */
void hr_outbox_set_dead_letters(hr_outbox_t *o, const char *path);
/* Replace the per-target policies (after a reload); targets not listed keep theirs. */
void hr_outbox_set_targets(hr_outbox_t *o, const hr_outbox_target_t *t, size_t n);
/* Change the write actions' policy (as opts.writes and opts.write_attempts); for actions
 * scheduled from now on. */
void hr_outbox_set_writes(hr_outbox_t *o, const hr_outbox_target_t *p, uint32_t max_attempts);
/* Take ownership of a list of actions (linked through next) and write them to the spool.
 * Returns 0 and cb(arg, 0) runs once they are durable (then delivery starts), or
 * cb(arg, < 0) if they could not be made durable (-EIO, ...; the actions are dropped: the
 * caller answers 503). cb never runs from inside this call. Returns < 0 (-ENOSPC: the spool
 * is full; -EIO, ...: the disk) if they cannot be taken at all: the actions are freed and cb
 * never runs. */
int hr_outbox_push(hr_outbox_t *o, hr_action_t *list, void (*cb)(void *arg, int status), void *arg);
void hr_outbox_stats(const hr_outbox_t *o, hr_outbox_stats_t *st);

/* One unfinished action, as hr_outbox_each_pending reports it. */
typedef struct {
    uint64_t id;          /* spool id */
    const char *target;   /* target name, NULL for a write */
    uint32_t attempts;    /* attempts finished */
    int last_status;      /* HTTP status of the last one, 0 if none */
    uint64_t next_due_ms; /* wall time of the next attempt (0 or past: due) */
    hr_spool_loc_t loc;   /* where its ACTION (or COPY) record is */
} hr_outbox_pending_t;
/* cb for every unfinished action, in arrival order (p is valid during the call; cb must not
 * push or change the outbox). */
void hr_outbox_each_pending(const hr_outbox_t *o,
                            void (*cb)(void *arg, const hr_outbox_pending_t *p), void *arg);
/* Run one compaction step now (it also runs by itself every second and when a push finds
 * the spool full): if the oldest segment qualifies (hr_spool_compact_candidate), copy its
 * pending actions forward; the segment is deleted once the copies are synced. Returns 1 if
 * a step started, 0 if there was nothing to do (or one is still waiting for its sync). */
int hr_outbox_compact(hr_outbox_t *o);
/* Append the per-target state to out as a JSON object {"name":{"circuit":"closed",
 * "in_flight":N,"queued":N,"pending":N,"oldest_age_ms":N,"accepted":N,"delivered":N,
 * "retried":N,"dead":N,"duration":H,"lag":H},...} and, last, the write actions' figures as
 * "(writes)":{"pending":N,...,"lag":H} (no circuit, in_flight or queued). accepted counts the
 * actions taken in (pushed, replayed, recovered at open), so accepted = delivered + dead +
 * pending while the outbox runs. H is a histogram (hr/metrics.h buckets):
 * {"buckets":[count per bucket, the last above the largest bound],"sum_us":N}; duration is
 * one forward attempt, lag accepted to delivered. */
void hr_outbox_targets_json(const hr_outbox_t *o, hr_buf_t *out);

/* One target's figures for /metrics (or the write actions'), as an outbox counts them: on its
 * loop only, read there by the targets JSON. */
typedef struct {
    uint64_t accepted;       /* actions taken in: pushed, recovered at open, replayed */
    uint64_t delivered;      /* answered 2xx (a write: its line written) */
    uint64_t retried;        /* attempts scheduled again */
    uint64_t dead;           /* dead-lettered */
    hr_histogram_t duration; /* one forward attempt, start to answer */
    hr_histogram_t lag;      /* accepted to delivered */
} hr_target_stats_t;
/* Append m as the targets JSON's fields (no braces): "pending":N,"oldest_age_ms":N,
 * "accepted":N,"delivered":N,"retried":N,"dead":N,"duration":H,"lag":H. oldest: accepted_ms
 * (wall) of the oldest unfinished action, 0 if none or not known. */
void hr_target_stats_json(hr_buf_t *out, const hr_target_stats_t *m, uint64_t pending,
                          uint64_t oldest);
/* Shutdown: start no attempt due after now + grace_ms; when nothing is in flight any more, or
 * at the deadline (in-flight requests are then cancelled), stop. What is not delivered stays
 * in the spool for the next start. Then cb runs. Pushes still work until close. */
void hr_outbox_drain(hr_outbox_t *o, uint64_t grace_ms, void (*cb)(void *arg), void *arg);
/* Stop and free the outbox; cb runs once its spool is synced and closed and every handle has
 * closed. After a drain's cb (the usual order) nothing is left in flight; called without a
 * drain, it ends at once as a drain at its deadline does: requests in flight are cancelled
 * and, like everything not delivered, stay in the spool for the next start. Idempotent. */
void hr_outbox_close(hr_outbox_t *o, void (*cb)(void *arg), void *arg);

#endif
