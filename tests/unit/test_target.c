/* Unit tests for src/target.c, no sockets and no clock: the policy's defaults, the retry
 * schedule and its jitter bounds, Retry-After in every form, the retriable decision, max age,
 * the retry-or-dead decision at its edges, the circuit breaker and the rate token bucket. */
#include "hr/target.h"

#include <errno.h>

#include "check.h"
#include "hr/defaults.h"

/* 1994-11-06 08:49:37 UTC, the date of RFC 9110's examples, in ms. */
#define RFC_DATE_MS 784111777000ull

static hr_target_policy_t policy(const uint64_t *retry, size_t n, uint64_t max_age_s)
{
    hr_target_policy_t p = {0};
    hr_target_opts_t o = {.retry_ms = retry,
                          .nretry = n,
                          .max_age_s = max_age_s,
                          .circuit_failures = 3,
                          .circuit_probe_ms = 1000};
    hr_target_policy_set(&p, &o);
    return p;
}

static void test_policy_defaults(void)
{
    hr_target_policy_t p = {0};
    hr_target_policy_set(&p, NULL);
    CHECK_INT_EQ(p.nretry, hr_def_nretry);
    CHECK_INT_EQ(p.retry_ms[1], hr_def_retry_ms[1]);
    CHECK_INT_EQ(p.max_age_s, 0);
    CHECK_INT_EQ(p.concurrency, HR_DEF_TARGET_CONCURRENCY);
    CHECK(p.rate == 0);
    CHECK(!p.ordered);
    CHECK_INT_EQ(p.circuit_failures, HR_DEF_TARGET_CIRCUIT_FAILURES);
    CHECK_INT_EQ(p.circuit_probe_ms, HR_DEF_TARGET_CIRCUIT_PROBE_MS);

    /* Given values are kept, zeros get the defaults, the schedule is a copy. */
    uint64_t retry[] = {10, 20};
    hr_target_opts_t o = {.retry_ms = retry, .nretry = 2, .rate = 2.5, .ordered = true};
    hr_target_policy_set(&p, &o);
    retry[0] = 99;
    CHECK_INT_EQ(p.nretry, 2);
    CHECK_INT_EQ(p.retry_ms[0], 10);
    CHECK(p.rate == 2.5);
    CHECK(p.ordered);
    CHECK_INT_EQ(p.concurrency, HR_DEF_TARGET_CONCURRENCY);
    CHECK_INT_EQ(p.circuit_failures, HR_DEF_TARGET_CIRCUIT_FAILURES);
    hr_target_policy_free(&p);
    CHECK(p.retry_ms == NULL);
}

/* The sign settings are a copy: the config they came from can go (a reload frees it), and a
 * policy set again without them (a reload that removed sign) is unsigned. */
static void test_policy_sign(void)
{
    hr_sign_conf_t *s = hr_xcalloc(1, sizeof *s);
    s->scheme = HR_SIGN_STANDARD_WEBHOOKS;
    hr_sign_add_key(s, "key", 3);
    hr_target_policy_t p = {0};
    hr_target_opts_t o = {.sign = s};
    hr_target_policy_set(&p, &o);
    hr_sign_conf_clear(s);
    free(s);
    CHECK_INT_EQ(p.sign.scheme, HR_SIGN_STANDARD_WEBHOOKS);
    CHECK(p.sign.nkeys == 1 && p.sign.keys[0].len == 3 &&
          memcmp(p.sign.keys[0].key, "key", 3) == 0);
    o.sign = NULL;
    hr_target_policy_set(&p, &o);
    CHECK_INT_EQ(p.sign.scheme, HR_SIGN_NONE);
    CHECK_INT_EQ(p.sign.nkeys, 0);
    hr_target_policy_free(&p);
}

static void test_schedule_and_jitter(void)
{
    static const uint64_t retry[] = {0, 1000, 5000};
    hr_target_policy_t p = policy(retry, 3, 0);
    CHECK_INT_EQ(hr_target_wait(&p, 1, 12345), 0); /* 0 has no jitter */
    CHECK_INT_EQ(hr_target_wait(&p, 0, 12345), 0); /* attempt 0 counts as the first */
    /* 1000 +-20%: rnd 0 is the low end, 400 (the span) the high end, then it wraps. */
    CHECK_INT_EQ(hr_target_wait(&p, 2, 0), 800);
    CHECK_INT_EQ(hr_target_wait(&p, 2, 400), 1200);
    CHECK_INT_EQ(hr_target_wait(&p, 2, 401), 800);
    CHECK_INT_EQ(hr_target_wait(&p, 3, 0), 4000);
    CHECK_INT_EQ(hr_target_wait(&p, 3, 2000), 6000);
    /* The last value repeats. */
    CHECK_INT_EQ(hr_target_wait(&p, 4, 0), 4000);
    CHECK_INT_EQ(hr_target_wait(&p, 1000, 2000), 6000);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < 10000; i++) {
        uint64_t w = hr_target_wait(&p, 2, hr_rand64());
        if (w < lo) lo = w;
        if (w > hi) hi = w;
    }
    CHECK(lo >= 800 && hi <= 1200);
    CHECK(hi > lo); /* it does vary */
    /* A tiny base: span 0, no jitter. */
    static const uint64_t tiny[] = {2};
    hr_target_policy_t q = policy(tiny, 1, 0);
    CHECK_INT_EQ(hr_target_wait(&q, 1, 7), 2);
    hr_target_policy_free(&q);
    hr_target_policy_free(&p);
}

static void test_retry_after(void)
{
    uint64_t ms = 1;
    CHECK_INT_EQ(hr_retry_after_parse("120", 0, &ms), 0);
    CHECK_INT_EQ(ms, 120000);
    CHECK_INT_EQ(hr_retry_after_parse(" \t7 ", 0, &ms), 0);
    CHECK_INT_EQ(ms, 7000);
    CHECK_INT_EQ(hr_retry_after_parse("0", 0, &ms), 0);
    CHECK_INT_EQ(ms, 0);
    CHECK_INT_EQ(hr_retry_after_parse("99999999999999999999", 0, &ms), 0);
    CHECK(ms == UINT64_MAX);
    uint64_t now = RFC_DATE_MS - 10000; /* ten seconds before the date */
    CHECK_INT_EQ(hr_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", now, &ms), 0);
    CHECK_INT_EQ(ms, 10000);
    ms = 1;
    CHECK_INT_EQ(hr_retry_after_parse("Sunday, 06-Nov-94 08:49:37 GMT", now, &ms), 0);
    CHECK_INT_EQ(ms, 10000);
    ms = 1;
    CHECK_INT_EQ(hr_retry_after_parse("Sun Nov  6 08:49:37 1994", now, &ms), 0);
    CHECK_INT_EQ(ms, 10000);
    /* A date in the past: at once. */
    CHECK_INT_EQ(hr_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", RFC_DATE_MS + 5000, &ms), 0);
    CHECK_INT_EQ(ms, 0);
    static const char *const bad[] = {"",
                                      "soon",
                                      "12abc",
                                      "-5",
                                      "1.5",
                                      "Sun, 06 Nov 1994 08:49:37 UTC",
                                      "Sun, 06 Nov 1994 08:49:37 GMT trailing",
                                      "Sun, 32 Nov 1994 08:49:37 GMT"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad); i++) {
        ms = 42;
        if (hr_retry_after_parse(bad[i], now, &ms) != -1) {
            fprintf(stderr, "Retry-After \"%s\" was accepted\n", bad[i]);
            hr_test_failures++;
        }
        CHECK_INT_EQ(ms, 42); /* untouched */
    }
}

static void test_retriable(void)
{
    static const int yes[] = {408, 429, 500, 502, 503, 504, 599};
    static const int no[] = {200, 301, 400, 401, 403, 404, 409, 422};
    for (size_t i = 0; i < HR_ARRAY_SIZE(yes); i++)
        CHECK(hr_target_status_retriable(yes[i]));
    for (size_t i = 0; i < HR_ARRAY_SIZE(no); i++)
        CHECK(!hr_target_status_retriable(no[i]));
    CHECK(hr_target_write_retriable(-ENOSPC));
    CHECK(hr_target_write_retriable(-EIO));
    CHECK(hr_target_write_retriable(-EMFILE));
    CHECK(hr_target_write_retriable(-EDQUOT));
    CHECK(!hr_target_write_retriable(-EISDIR));
    CHECK(!hr_target_write_retriable(-ENOTDIR));
    CHECK(!hr_target_write_retriable(-EACCES));
    CHECK(!hr_target_write_retriable(-EROFS));
}

static void test_max_age(void)
{
    CHECK(!hr_target_too_old(0, 1000, UINT64_MAX / 2)); /* 0: never */
    CHECK(!hr_target_too_old(10, 1000, 1000));
    CHECK(!hr_target_too_old(10, 1000, 11000)); /* exactly at the limit: still in */
    CHECK(hr_target_too_old(10, 1000, 11001));
}

static void test_after_attempt(void)
{
    static const uint64_t retry[] = {0, 1000, 5000};
    hr_target_policy_t p = policy(retry, 3, 60); /* max age one minute */
    uint64_t acc = 1000000;
    hr_target_attempt_t a = {.attempts = 1,
                             .max_attempts = 3,
                             .accepted_ms = acc,
                             .retriable = true,
                             .reject = "rejected",
                             .status = 500};
    /* rnd 0: the low end of the jitter, the wait before attempt 2 is 800. */
    hr_target_next_t n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK(n.dead == NULL);
    CHECK_INT_EQ(n.wait_ms, 800);
    a.attempts = 2;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK(n.dead == NULL);
    CHECK_INT_EQ(n.wait_ms, 4000);
    /* The last attempt: dead, whatever the answer. */
    a.attempts = 3;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_STR_EQ(n.dead, "attempts exhausted");
    /* Not retriable: the caller's reason, even with attempts left. */
    a.attempts = 1;
    a.retriable = false;
    a.status = 400;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_STR_EQ(n.dead, "rejected");
    a.reject = "write failed";
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_STR_EQ(n.dead, "write failed");
    /* Max age: the next attempt at exactly 60 s is still made, one ms later it is not. */
    a.retriable = true;
    a.status = 0; /* a transport error */
    n = hr_target_after_attempt(&p, &a, acc + 60000 - 800, 0);
    CHECK(n.dead == NULL);
    CHECK_INT_EQ(n.wait_ms, 800);
    n = hr_target_after_attempt(&p, &a, acc + 60000 - 799, 0);
    CHECK_STR_EQ(n.dead, "max age exceeded");
    /* Retry-After on 429/503 replaces the schedule (capped at a day); elsewhere it does not. */
    hr_header_t h[] = {{.name = "content-type", .value = "text/plain"},
                       {.name = "retry-after", .value = "30"}};
    a.headers = h;
    a.nheaders = 2;
    a.status = 503;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK(n.dead == NULL);
    CHECK_INT_EQ(n.wait_ms, 30000);
    a.status = 429;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_INT_EQ(n.wait_ms, 30000);
    a.status = 500;
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_INT_EQ(n.wait_ms, 800);
    a.status = 503;
    h[1].value = "later";
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_INT_EQ(n.wait_ms, 800);
    /* A Retry-After past max age dead-letters now. */
    h[1].value = "61";
    n = hr_target_after_attempt(&p, &a, acc, 0);
    CHECK_STR_EQ(n.dead, "max age exceeded");
    hr_target_policy_free(&p);
    hr_target_policy_t q = policy(retry, 3, 0); /* no max age */
    h[1].value = "172800";                      /* two days */
    n = hr_target_after_attempt(&q, &a, acc, 0);
    CHECK(n.dead == NULL);
    CHECK_INT_EQ(n.wait_ms, HR_RETRY_AFTER_MAX_MS);
    hr_target_policy_free(&q);
}

static void test_circuit(void)
{
    hr_target_policy_t p = policy(NULL, 0, 0); /* 3 failures, probe every 1000 ms */
    hr_circuit_t c = {0};
    uint64_t now = 5000, wait = 0;
    CHECK_INT_EQ(hr_circuit_gate(&c, now, &wait), HR_GATE_PASS);
    /* A success in between resets the count. */
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(hr_circuit_success(&c), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(c.fails, 0);
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_CLOSED);
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now), HR_CIRCUIT_OPENED);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_OPEN);
    /* Open: wait for the probe time. */
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 400, &wait), HR_GATE_WAIT);
    CHECK_INT_EQ(wait, 600);
    /* Failures while open (requests already in flight) do not move the probe. */
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now + 500), HR_CIRCUIT_SAME);
    CHECK_INT_EQ(c.open_until, now + 1000);
    /* Due: one probe, half-open; nothing else until it is answered. */
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 1000, &wait), HR_GATE_PROBE);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_HALF);
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 1001, &wait), HR_GATE_BUSY);
    /* The probe failed: open for another probe interval. */
    CHECK_INT_EQ(hr_circuit_failure(&c, &p, now + 1200), HR_CIRCUIT_REOPENED);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_OPEN);
    CHECK_INT_EQ(c.open_until, now + 2200);
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 2000, &wait), HR_GATE_WAIT);
    CHECK_INT_EQ(wait, 200);
    /* A probe not sent after all: open again, and the next gate probes at once. */
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 2200, &wait), HR_GATE_PROBE);
    hr_circuit_unprobe(&c);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_OPEN);
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 2201, &wait), HR_GATE_PROBE);
    /* The probe succeeded: closed. */
    CHECK_INT_EQ(hr_circuit_success(&c), HR_CIRCUIT_CLOSED_NOW);
    CHECK_INT_EQ(c.state, HR_CIRCUIT_CLOSED);
    CHECK_INT_EQ(c.fails, 0);
    CHECK_INT_EQ(hr_circuit_gate(&c, now + 2202, &wait), HR_GATE_PASS);
    hr_circuit_unprobe(&c); /* closed stays closed */
    CHECK_INT_EQ(c.state, HR_CIRCUIT_CLOSED);
    hr_target_policy_free(&p);
}

static void test_bucket(void)
{
    /* 2 per second: a burst of 2, then one every 500 ms. */
    hr_bucket_t b = {0};
    uint64_t t0 = 1000;
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0), 0);
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0), 0);
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0), 501);
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0 + 250), 251); /* half a token there */
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0 + 500), 0);
    CHECK_INT_EQ(hr_bucket_take(&b, 2, t0 + 500), 501);
    /* A long pause refills only up to the burst. */
    uint64_t t1 = t0 + 100000;
    int taken = 0;
    while (hr_bucket_take(&b, 2, t1) == 0 && taken < 100)
        taken++;
    CHECK_INT_EQ(taken, 2);

    /* Under one per second: a burst of 1, then one every 1/rate s. */
    hr_bucket_t s = {0};
    CHECK_INT_EQ(hr_bucket_take(&s, 0.5, t0), 0);
    CHECK_INT_EQ(hr_bucket_take(&s, 0.5, t0), 2001);
    CHECK_INT_EQ(hr_bucket_take(&s, 0.5, t0 + 1000), 1001);
    CHECK_INT_EQ(hr_bucket_take(&s, 0.5, t0 + 2000), 0);
    CHECK(hr_bucket_take(&s, 0.5, t0 + 2000) > 0);

    /* Over a simulated 10 s, a 5/s bucket lets through its burst plus 5 per second. */
    hr_bucket_t r = {0};
    int sent = 0;
    for (uint64_t t = t0; t <= t0 + 10000; t++)
        if (hr_bucket_take(&r, 5, t) == 0) sent++;
    CHECK_INT_EQ(sent, 5 + 50);
}

int main(void)
{
    test_policy_defaults();
    test_policy_sign();
    test_schedule_and_jitter();
    test_retry_after();
    test_retriable();
    test_max_age();
    test_after_attempt();
    test_circuit();
    test_bucket();
    return CHECK_DONE("test_target");
}
