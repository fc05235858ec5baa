/* The target policy: how one target (or the write actions) is delivered to, as plain data
 * and pure functions (src/target.c): its defaults, the retry schedule and its jitter,
 * Retry-After, the wait after an answer, which answers and errors are retried, max age, the
 * circuit breaker and the rate token bucket, and the one decision "after this attempt: retry
 * after W ms, or dead-letter with reason R". No sockets, no timers, no clock: the caller
 * passes the time (now) and the random number the jitter uses, so every answer follows from
 * the arguments. The outbox (src/outbox*.c) keeps the timers and queues and calls these. */
#ifndef HR_TARGET_H
#define HR_TARGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/action.h"
#include "hr/common.h"
#include "hr/http_client.h"
#include "hr/tls.h"
#include "hr/sign.h"

/* A delivery policy as given (the config's, copied by the outbox): 0 (nretry 0 for the
 * schedule) means the default of hr/defaults.h. */
typedef struct {
    const char *name;           /* target name as in the config */
    const uint64_t *retry_ms;   /* waits before attempts 1, 2, ...; the last repeats */
    size_t nretry;              /* 0: the default schedule */
    uint64_t max_age_s;         /* give up this long after acceptance (0: never) */
    uint32_t concurrency;       /* requests in flight (0: the default) */
    double rate;                /* requests per second (0: no limit) */
    bool ordered;               /* per-store arrival order */
    uint32_t circuit_failures;  /* consecutive failures that open the circuit (0: the default) */
    uint64_t circuit_probe_ms;  /* probe interval while open (0: the default) */
    hr_tls_ctx_t *tls;          /* https: the client TLS context (NULL: the client's default) */
    const char *proxy;          /* "http://host:port" to send through, or NULL: directly */
    const hr_sign_conf_t *sign; /* how each attempt is signed (hr_sign_request); NULL: not */
} hr_target_opts_t;

/* A policy with every default filled in (hr_target_policy_set). */
typedef struct {
    uint64_t *retry_ms;        /* owned schedule */
    size_t nretry;             /* >= 1 */
    uint64_t max_age_s;        /* 0: none */
    uint32_t concurrency;      /* >= 1 */
    double rate;               /* per second, 0: none */
    bool ordered;              /* lanes per store */
    uint32_t circuit_failures; /* >= 1 */
    uint64_t circuit_probe_ms; /* >= 1 */
    hr_tls_ctx_t *tls;         /* a reference, or NULL: what its requests are sent with */
    char *proxy;               /* owned copy, or NULL: directly */
    hr_sign_conf_t sign;       /* owned copy; scheme HR_SIGN_NONE: requests go unsigned */
} hr_target_policy_t;

/* Set p (zeroed or set before) from given, NULL: every default. The schedule, the proxy and
 * the sign settings are copied (a sign given NULL leaves p unsigned), the TLS context
 * referenced (the one p had is released). */
void hr_target_policy_set(hr_target_policy_t *p, const hr_target_opts_t *given);
/* Free what p owns (p itself is the caller's). */
void hr_target_policy_free(hr_target_policy_t *p);

/* ---- Retry schedule, Retry-After, retriable answers, max age */

/* The wait before attempt n (1-based): retry_ms[n-1] (the last value repeats), with +-20%
 * jitter: base - base/5 + rnd % (2 base/5 + 1). rnd: a random number (hr_rand64()). */
uint64_t hr_target_wait(const hr_target_policy_t *p, uint32_t n, uint64_t rnd);
/* Parse a Retry-After value: delta seconds or an HTTP date (IMF-fixdate, RFC 850 or
 * asctime), now_wall_ms the wall clock. Returns 0 and sets *ms (0 for a date in the past), or
 * -1 for anything else. */
int hr_retry_after_parse(const char *v, uint64_t now_wall_ms, uint64_t *ms);
/* The longest wait a Retry-After may ask for (a day). */
#define HR_RETRY_AFTER_MAX_MS 86400000ull
/* Whether an HTTP answer is worth retrying: 408, 429 and 5xx are; every other status is the
 * target's final word (2xx is delivered, the rest rejected). A transport error (no answer)
 * is always retried. */
bool hr_target_status_retriable(int status);
/* Whether a file error (negative errno of hr_files_append) is worth retrying: a full disk, a
 * descriptor or quota limit, an I/O error may pass; a path that names a folder or goes
 * through a file, or that we may not write, will not. */
bool hr_target_write_retriable(int err);
/* Whether an action accepted at accepted_ms (wall) is past max_age_s at wall time at_ms
 * (max_age_s 0: never). */
bool hr_target_too_old(uint64_t max_age_s, uint64_t accepted_ms, uint64_t at_ms);

/* One finished attempt, as the decision needs it. */
typedef struct {
    uint32_t attempts;          /* attempts finished, this one included */
    uint32_t max_attempts;      /* of the action */
    uint64_t accepted_ms;       /* wall time the event was accepted */
    bool retriable;             /* whether this outcome may be retried at all */
    const char *reject;         /* the dead-letter reason when it may not ("rejected") */
    int status;                 /* the HTTP status, 0: none (transport or file error) */
    const hr_header_t *headers; /* the answer's headers (names lower-cased), for Retry-After */
    size_t nheaders;
} hr_target_attempt_t;

/* What comes after an attempt: a retry wait_ms from now, or a dead letter. */
typedef struct {
    const char *dead; /* NULL: retry; else the dead-letter reason (a literal) */
    uint64_t wait_ms; /* the wait before the next attempt when retried */
} hr_target_next_t;

/* The one decision after an attempt that did not deliver, at wall time now_ms: not
 * retriable: dead (a->reject); the last attempt: dead ("attempts exhausted"); the next one
 * would come after max age: dead ("max age exceeded"); else retry after the wait: the
 * Retry-After of a 429/503 (at most HR_RETRY_AFTER_MAX_MS), else hr_target_wait for the next
 * attempt with rnd. */
hr_target_next_t hr_target_after_attempt(const hr_target_policy_t *p, const hr_target_attempt_t *a,
                                         uint64_t now_ms, uint64_t rnd);

/* The request of one attempt of the forward a under p: signed as p says at now_s (unix
 * seconds) into sh, over the bytes sent; the target's TLS context and proxy; the action's
 * timeout (or the default). req points into a, p and sh: free sh (hr_signed_headers_free)
 * once the request is handed to the client. */
void hr_target_request(const hr_target_policy_t *p, const hr_action_t *a, uint64_t now_s,
                       hr_signed_headers_t *sh, hr_http_out_t *req);

/* Record the outcome of an attempt of a (the HTTP client's completion: err 0 and res, or err
 * < 0 and errmsg, NULL: uv_strerror's) in a->last_status (0: no answer) and a->last_error
 * ("" when answered), and
 * write what it was for a log line into what ("status=503" or "error=connection refused").
 * Returns true if it delivered (2xx). */
bool hr_target_outcome(hr_action_t *a, int err, const char *errmsg, const hr_http_response_t *res,
                       char *what, size_t whatlen);

/* ---- Circuit breaker */

typedef enum { HR_CIRCUIT_CLOSED = 0, HR_CIRCUIT_OPEN, HR_CIRCUIT_HALF } hr_circuit_state_t;

/* A breaker: closed (delivering), open (paused until open_until), half-open (one probe out). */
typedef struct {
    hr_circuit_state_t state;
    uint32_t fails;      /* consecutive failures */
    uint64_t open_until; /* time of the next probe while open (the caller's clock) */
} hr_circuit_t;

/* What a success or a failure changed. */
typedef enum {
    HR_CIRCUIT_SAME = 0,   /* no state change */
    HR_CIRCUIT_CLOSED_NOW, /* a success closed an open or half-open circuit */
    HR_CIRCUIT_OPENED,     /* circuit_failures consecutive failures opened it */
    HR_CIRCUIT_REOPENED    /* the probe failed: open again for circuit_probe_ms */
} hr_circuit_change_t;

/* The target answered (2xx, or a final rejection: it is up): failures reset, closed. */
hr_circuit_change_t hr_circuit_success(hr_circuit_t *c);
/* A retriable failure at now: counted; opens the circuit at the threshold or when it was the
 * probe (open_until = now + circuit_probe_ms). */
hr_circuit_change_t hr_circuit_failure(hr_circuit_t *c, const hr_target_policy_t *p, uint64_t now);

/* Whether a request may start at now. */
typedef enum {
    HR_GATE_PASS = 0, /* closed: go */
    HR_GATE_PROBE,    /* it was open and the probe is due: now half-open, send this one */
    HR_GATE_WAIT,     /* open: nothing before *wait_ms from now */
    HR_GATE_BUSY      /* half-open: the probe is out, wait for its answer */
} hr_gate_t;
hr_gate_t hr_circuit_gate(hr_circuit_t *c, uint64_t now, uint64_t *wait_ms);
/* The probe was not sent after all (rate limit, max age, shutdown): half-open goes back to
 * open, so the next gate sends a probe again. */
void hr_circuit_unprobe(hr_circuit_t *c);

/* ---- Rate token bucket */

/* At most rate requests per second, with a burst of max(rate, 1); full when first used. */
typedef struct {
    double tokens; /* tokens in the bucket */
    uint64_t at;   /* time of the last refill, 0: never used */
} hr_bucket_t;

/* Take one token at now (ms, > 0: 0 marks a bucket never used) for rate (> 0) per second. Returns 0
 * if taken, else the ms to wait until there is one (nothing taken). */
uint64_t hr_bucket_take(hr_bucket_t *b, double rate, uint64_t now);

#endif
