/* The target policy: defaults, retry schedule, Retry-After, retriable answers, max age, the
 * retry-or-dead decision, circuit breaker and rate bucket (see include/hr/target.h). */
#include "hr/target.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hr/defaults.h"

/* ---- Policy ----------------------------------------------------------------------------- */

void hr_target_policy_set(hr_target_policy_t *p, const hr_target_opts_t *g)
{
    const uint64_t *r = g && g->nretry ? g->retry_ms : hr_def_retry_ms;
    size_t n = g && g->nretry ? g->nretry : hr_def_nretry;
    free(p->retry_ms);
    p->retry_ms = hr_xmalloc(n * sizeof *p->retry_ms);
    memcpy(p->retry_ms, r, n * sizeof *r);
    p->nretry = n;
    p->max_age_s = g ? g->max_age_s : HR_DEF_TARGET_MAX_AGE_S;
    p->concurrency = g && g->concurrency ? g->concurrency : HR_DEF_TARGET_CONCURRENCY;
    p->rate = g ? g->rate : HR_DEF_TARGET_RATE;
    p->ordered = g ? g->ordered : HR_DEF_TARGET_ORDERED;
    p->circuit_failures =
        g && g->circuit_failures ? g->circuit_failures : HR_DEF_TARGET_CIRCUIT_FAILURES;
    p->circuit_probe_ms =
        g && g->circuit_probe_ms ? g->circuit_probe_ms : HR_DEF_TARGET_CIRCUIT_PROBE_MS;
    hr_tls_ctx_t *old = p->tls;
    p->tls = hr_tls_ctx_ref(g ? g->tls : NULL);
    hr_tls_ctx_unref(old);
    free(p->proxy);
    p->proxy = g && g->proxy ? hr_xstrdup(g->proxy) : NULL;
    hr_sign_conf_copy(&p->sign, g ? g->sign : NULL);
}

void hr_target_policy_free(hr_target_policy_t *p)
{
    free(p->retry_ms);
    p->retry_ms = NULL;
    p->nretry = 0;
    hr_tls_ctx_unref(p->tls);
    p->tls = NULL;
    free(p->proxy);
    p->proxy = NULL;
    hr_sign_conf_clear(&p->sign);
}

/* ---- Retry schedule --------------------------------------------------------------------- */

uint64_t hr_target_wait(const hr_target_policy_t *p, uint32_t n, uint64_t rnd)
{
    size_t i = n >= 1 ? n - 1 : 0;
    if (i >= p->nretry) i = p->nretry - 1;
    uint64_t b = p->retry_ms[i];
    if (b == 0) return 0;
    uint64_t span = b * 2 / 5; /* 40% */
    return b - b / 5 + (span ? rnd % (span + 1) : 0);
}

int hr_retry_after_parse(const char *v, uint64_t now_wall_ms, uint64_t *ms)
{
    while (*v == ' ' || *v == '\t')
        v++;
    if (*v >= '0' && *v <= '9') {
        char *end;
        unsigned long long s = strtoull(v, &end, 10);
        while (*end == ' ' || *end == '\t')
            end++;
        if (*end) return -1;
        *ms = s > UINT64_MAX / 1000 ? UINT64_MAX : s * 1000;
        return 0;
    }
    static const char *const fmts[] = {"%a, %d %b %Y %H:%M:%S GMT", "%A, %d-%b-%y %H:%M:%S GMT",
                                       "%a %b %e %H:%M:%S %Y"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(fmts); i++) {
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const char *end = strptime(v, fmts[i], &tm);
        if (!end || *end) continue;
        time_t t = timegm(&tm);
        if (t == (time_t)-1) return -1;
        uint64_t at = (uint64_t)t * 1000;
        *ms = at > now_wall_ms ? at - now_wall_ms : 0;
        return 0;
    }
    return -1;
}

/* The wait before the next attempt after an answer with status (0: none) and headers: its
 * Retry-After on 429/503, else the schedule's for attempt attempts + 1. */
static uint64_t next_wait(const hr_target_policy_t *p, const hr_target_attempt_t *a,
                          uint64_t now_ms, uint64_t rnd)
{
    if (a->status == 429 || a->status == 503) {
        for (size_t i = 0; i < a->nheaders; i++) {
            uint64_t ms;
            if (strcmp(a->headers[i].name, "retry-after") == 0 &&
                hr_retry_after_parse(a->headers[i].value, now_ms, &ms) == 0)
                return ms < HR_RETRY_AFTER_MAX_MS ? ms : HR_RETRY_AFTER_MAX_MS;
        }
    }
    return hr_target_wait(p, a->attempts + 1, rnd);
}

bool hr_target_status_retriable(int status)
{
    return status == 408 || status == 429 || status >= 500;
}

bool hr_target_write_retriable(int err)
{
    switch (err) {
    case -ENOTDIR:
    case -EISDIR:
    case -ENAMETOOLONG:
    case -ELOOP:
    case -EINVAL:
    case -EACCES:
    case -EPERM:
    case -EROFS:
    case -ENXIO:
    case -ENODEV: return false;
    default: return true;
    }
}

bool hr_target_too_old(uint64_t max_age_s, uint64_t accepted_ms, uint64_t at_ms)
{
    return max_age_s && at_ms > accepted_ms + max_age_s * 1000;
}

hr_target_next_t hr_target_after_attempt(const hr_target_policy_t *p, const hr_target_attempt_t *a,
                                         uint64_t now_ms, uint64_t rnd)
{
    if (!a->retriable) return (hr_target_next_t){.dead = a->reject};
    if (a->attempts >= a->max_attempts) return (hr_target_next_t){.dead = "attempts exhausted"};
    uint64_t wait = next_wait(p, a, now_ms, rnd);
    if (hr_target_too_old(p->max_age_s, a->accepted_ms, now_ms + wait))
        return (hr_target_next_t){.dead = "max age exceeded"};
    return (hr_target_next_t){.wait_ms = wait};
}

void hr_target_request(const hr_target_policy_t *p, const hr_action_t *a, uint64_t now_s,
                       hr_signed_headers_t *sh, hr_http_out_t *req)
{
    hr_sign_request(&p->sign, a->event_id, now_s, a->headers, a->nheaders, a->body, a->body_len,
                    sh);
    *req = (hr_http_out_t){
        .method = a->method ? a->method : "POST",
        .url = a->url ? a->url : "",
        .headers = sh->headers,
        .nheaders = sh->nheaders,
        .body = a->body,
        .body_len = a->body_len,
        .timeout_ms = a->timeout_ms ? a->timeout_ms : HR_DEF_TARGET_TIMEOUT_MS,
        .tls = p->tls, /* the target's context now, never the stored action's */
        .proxy = p->proxy,
    };
}

bool hr_target_outcome(hr_action_t *a, int err, const char *errmsg, const hr_http_response_t *res,
                       char *what, size_t whatlen)
{
    if (err == 0) {
        a->last_status = res->status;
        a->last_error[0] = '\0';
        char num[24]; /* "status=N" without printf: this runs per delivery */
        size_t n = hr_fmt_i64(num, res->status);
        if (whatlen > 7 + n) {
            memcpy(what, "status=", 7);
            memcpy(what + 7, num, n + 1);
        } else if (whatlen) {
            what[0] = '\0';
        }
        return res->status >= 200 && res->status < 300;
    }
    a->last_status = 0;
    snprintf(a->last_error, sizeof a->last_error, "%s", errmsg ? errmsg : uv_strerror(err));
    snprintf(what, whatlen, "error=%s", a->last_error);
    return false;
}

/* ---- Circuit breaker -------------------------------------------------------------------- */

hr_circuit_change_t hr_circuit_success(hr_circuit_t *c)
{
    c->fails = 0;
    if (c->state == HR_CIRCUIT_CLOSED) return HR_CIRCUIT_SAME;
    c->state = HR_CIRCUIT_CLOSED;
    return HR_CIRCUIT_CLOSED_NOW;
}

hr_circuit_change_t hr_circuit_failure(hr_circuit_t *c, const hr_target_policy_t *p, uint64_t now)
{
    c->fails++;
    if (c->state == HR_CIRCUIT_HALF) {
        c->state = HR_CIRCUIT_OPEN;
        c->open_until = now + p->circuit_probe_ms;
        return HR_CIRCUIT_REOPENED;
    }
    if (c->state == HR_CIRCUIT_CLOSED && c->fails >= p->circuit_failures) {
        c->state = HR_CIRCUIT_OPEN;
        c->open_until = now + p->circuit_probe_ms;
        return HR_CIRCUIT_OPENED;
    }
    return HR_CIRCUIT_SAME;
}

hr_gate_t hr_circuit_gate(hr_circuit_t *c, uint64_t now, uint64_t *wait_ms)
{
    switch (c->state) {
    case HR_CIRCUIT_CLOSED: return HR_GATE_PASS;
    case HR_CIRCUIT_HALF: return HR_GATE_BUSY;
    case HR_CIRCUIT_OPEN: break;
    }
    if (now < c->open_until) {
        *wait_ms = c->open_until - now;
        return HR_GATE_WAIT;
    }
    c->state = HR_CIRCUIT_HALF;
    return HR_GATE_PROBE;
}

void hr_circuit_unprobe(hr_circuit_t *c)
{
    if (c->state == HR_CIRCUIT_HALF) c->state = HR_CIRCUIT_OPEN;
}

/* ---- Rate token bucket ------------------------------------------------------------------ */

uint64_t hr_bucket_take(hr_bucket_t *b, double rate, uint64_t now)
{
    double cap = rate < 1 ? 1 : rate;
    if (b->at == 0) b->tokens = cap;
    b->tokens += (double)(now - b->at) * rate / 1000.0;
    if (b->tokens > cap) b->tokens = cap;
    b->at = now;
    if (b->tokens < 1.0) return (uint64_t)((1.0 - b->tokens) * 1000.0 / rate) + 1;
    b->tokens -= 1.0;
    return 0;
}
