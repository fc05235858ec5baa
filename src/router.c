/* The router: webhook pipeline, /healthz, /readyz and /metrics, reload and shutdown for one
 * event loop (the only one, or one front worker's: see router.h). */
#include "hr/router.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/deadletter.h"
#include "hr/files.h"
#include "hr/http_client.h"
#include "hr/log.h"
#include "hr/server.h"
#include "hr/sign.h"

/* Connections the reply client may open per legacy host: every suspended rule holds one
 * while it waits, so this bounds how many can wait on one host at once. */
#define REPLY_CONNS_PER_HOST 1024

/* One event from on_request until its reply is sent and every callback it expects has run.
 * While its rule waits in request() it is on the router's waiting list, its deadline timer
 * runs and the reply client has its request. At the deadline (or shutdown) the run is
 * abandoned and the fallback sent; the struct then stays only until the outbound request's
 * callback (which drops the late answer) and the timer's close callback have run. */
typedef struct event_run {
    struct event_run *prev, *next; /* the router's waiting list, while suspended */
    hr_router_t *r;
    hr_http_request_t *req;       /* NULL once replied */
    hr_ruleset_t *rs;             /* the rule set the event started on, until replied */
    const hr_endpoint_conf_t *ep; /* in rs's config */
    hr_event_in_t ev;             /* points into req and the arrays below */
    char id[HR_ID_LEN];
    char received_at[32];
    hr_run_result_t res;  /* the run's outcome; res.run is set while suspended */
    uint64_t deadline_ms; /* loop time when the reply is due */
    uv_timer_t timer;     /* the deadline */
    bool timer_open;      /* timer initialised and its close callback not yet run */
    bool http_pending;    /* the reply client still owes us a callback */
    bool abandoned;       /* the run was ended before it returned: a late answer is dropped */
    bool waiting;         /* on the waiting list */
    uint64_t sent_ns;     /* when the current request() went out */
    uint64_t rule_ns;     /* when the rule started (hookrouter_rule_duration_seconds) */
    char target[64];      /* its target, for the late-answer log line */
} event_run_t;

/* A label set counted lately and its series: the same few label sets come every event, and
 * finding one here spares rendering, hashing and comparing its labels. A series never moves
 * or goes away while its set lives, and a label set maps to the same series for good (one
 * found or added stays; one sent to the overflow series, as the set was full, is never
 * added later), so a memo is never stale. The label names are the callers' constants (the
 * same pointer is the same name), the values are compared as text (a store is the rule's). */
#define SERIES_MEMOS    8
#define MEMO_MAX_LABELS 3
#define MEMO_MAX_VALUES 96
typedef struct {
    const hr_series_set_t *set; /* NULL: an empty slot */
    hr_series_t *series;
    const char *names[MEMO_MAX_LABELS];
    size_t nlabels;
    size_t len;                   /* of values */
    char values[MEMO_MAX_VALUES]; /* each value and its NUL, one after another */
} series_memo_t;

struct hr_router {
    uv_loop_t *loop;
    hr_server_t *server;
    hr_server_t *admin;      /* admin_listen's server (/metrics, /healthz, /readyz), or NULL */
    bool admin_apart;        /* admin_listen was set at start: no admin paths on the webhook
                                port (with workers only the first one has the admin server) */
    hr_ruleset_t *rs;        /* current rule set (one reference held here) */
    hr_delivery_t *delivery; /* ours: the outbox directly, or a front worker's hand-off port */
    hr_files_t *files;       /* dead letters of failed rules (the delivery side has its own) */
    char *config_path;       /* what a reload reads */
    uv_timer_t reload_timer; /* runs a requested reload from the loop */
    bool reload_pending;
    uint64_t started_ms;
    uint64_t loaded_ms; /* when the current rule set was loaded */
    uint64_t reloads;   /* successful reloads */
    uint64_t reload_failures;
    char *last_reload_error;       /* NULL after a success */
    hr_router_reload_cb reload_cb; /* hr_router_on_reload, or NULL */
    void *reload_arg;
    /* counters for /healthz */
    hr_router_counters_t own;  /* one worker: the counters */
    hr_router_counters_t *ctr; /* ours: &own, or our slot in the workers' array */
    hr_router_counters_t *all; /* every worker's (nall), summed by /healthz */
    unsigned nall;
    hr_buf_t labels;                  /* scratch: the labels of a series being counted */
    series_memo_t memo[SERIES_MEMOS]; /* label sets counted lately and their series */
    unsigned memo_next;               /* the slot the next new label set takes */
    bool front;                       /* a front worker */
    unsigned index;                   /* a front worker's number */
    /* rules that answer */
    hr_http_client_t *replies; /* request() traffic: its own pools, never behind retries */
    event_run_t *waiting;      /* events whose rule waits in request() (doubly linked) */
    size_t nwaiting;
    /* shutdown */
    bool stopping;
    uv_timer_t stop_timer;     /* polls for requests in flight to finish */
    uint64_t stop_deadline_ms; /* wall time when the grace period ends */
    void (*stop_cb)(void *);
    void *stop_arg;
    int closing_handles;
};

static const hr_header_t JSON_CT[] = {{"Content-Type", "application/json"}};

/* Counters: single writer (the router's thread), read from any worker. */
static inline void counter_add(atomic_uint_least64_t *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

static inline uint64_t counter_get(const atomic_uint_least64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

#define COUNT(r, field) counter_add(&(r)->ctr->field, 1)

/* Sum one counter (at offset off in hr_router_counters_t) over every worker. */
static unsigned long long counters_sum(const hr_router_t *r, size_t off)
{
    unsigned long long sum = 0;
    for (unsigned i = 0; i < r->nall; i++)
        sum += counter_get((const atomic_uint_least64_t *)((const char *)&r->all[i] + off));
    return sum;
}

#define SUM(r, field) counters_sum((r), offsetof(hr_router_counters_t, field))

void hr_router_counters_free(hr_router_counters_t *c)
{
    if (!c) return;
    hr_series_set_free(&c->requests);
    hr_series_set_free(&c->events);
    hr_series_set_free(&c->rule_time);
    hr_series_set_free(&c->replies);
}

/* The series of set for labels (nlabels pairs; overflow: the rendered labels of the series
 * that takes new label sets once the set is full): rendered into r's scratch buffer, no
 * allocation once the series exists. */
static hr_series_t *series_of(hr_router_t *r, hr_series_set_t *set, const char *const *labels,
                              size_t nlabels, const char *overflow)
{
    /* The values as a memo holds them; a label set too large for one is not memoised. */
    char values[MEMO_MAX_VALUES];
    size_t len = 0;
    bool memo = nlabels <= MEMO_MAX_LABELS;
    for (size_t i = 0; memo && i < nlabels; i++) {
        size_t n = strlen(labels[2 * i + 1]) + 1;
        memo = len + n <= sizeof values;
        if (memo) memcpy(values + len, labels[2 * i + 1], n);
        len += n;
    }
    if (memo)
        for (size_t m = 0; m < SERIES_MEMOS; m++) {
            const series_memo_t *o = &r->memo[m];
            if (o->set != set || o->nlabels != nlabels || o->len != len) continue;
            size_t i = 0;
            while (i < nlabels && o->names[i] == labels[2 * i])
                i++;
            if (i == nlabels && memcmp(o->values, values, len) == 0) return o->series;
        }
    hr_buf_reset(&r->labels);
    hr_metrics_labels(&r->labels, labels, nlabels);
    hr_series_t *s = hr_series_get(set, r->labels.data, r->labels.len, overflow);
    if (memo) {
        series_memo_t *o = &r->memo[r->memo_next++ % SERIES_MEMOS];
        memcpy(o->values, values, len);
        o->len = len;
        o->set = set;
        o->series = s;
        o->nlabels = nlabels;
        for (size_t i = 0; i < nlabels; i++)
            o->names[i] = labels[2 * i];
    }
    return s;
}

#define OTHER_TYPE     "type=\"other\""
#define OTHER_ENDPOINT "endpoint=\"other\""

/* hookrouter_events_total{type,[store,]outcome} += 1. */
static void count_event(hr_router_t *r, const char *type, const char *store, const char *outcome)
{
    bool st = hr_ruleset_config(r->rs)->metrics_store_labels;
    const char *l[] = {"type", type, "store", store ? store : "", "outcome", outcome};
    if (!st) l[2] = "outcome", l[3] = outcome;
    hr_series_add(series_of(r, &r->ctr->events, l, st ? 3 : 2, OTHER_TYPE), 1);
}

/* hookrouter_replies_total{endpoint,result} += 1. */
static void count_reply(hr_router_t *r, const char *endpoint, const char *result)
{
    const char *l[] = {"endpoint", endpoint, "result", result};
    hr_series_add(series_of(r, &r->ctr->replies, l, 2, OTHER_ENDPOINT), 1);
}

/* Answer req (hr_http_reply) and count it in hookrouter_requests_total{endpoint,code}: the
 * endpoint is the configured path the request's path is (the health and metrics paths
 * their own), "other" for any other path (a client cannot add series). */
static void answer(hr_router_t *r, hr_http_request_t *req, int status, const hr_header_t *h,
                   size_t nh, const char *body, size_t len)
{
    const hr_endpoint_conf_t *ep = hr_config_endpoint(hr_ruleset_config(r->rs), req->path);
    const char *endpoint = ep                                   ? ep->path
                           : strcmp(req->path, "/healthz") == 0 ? "/healthz"
                           : strcmp(req->path, "/readyz") == 0  ? "/readyz"
                           : strcmp(req->path, "/metrics") == 0 ? "/metrics"
                                                                : "other";
    char code[4] = "000"; /* no printf: this runs per request */
    if (status >= 100 && status <= 999)
        for (int i = 2, v = status; i >= 0; i--, v /= 10)
            code[i] = (char)('0' + v % 10);
    const char *l[] = {"endpoint", endpoint, "code", code};
    hr_series_add(series_of(r, &r->ctr->requests, l, 2, OTHER_ENDPOINT), 1);
    hr_http_reply(req, status, h, nh, body, len);
}

/* Reply with a JSON body {"error": msg} plus optional extra headers. */
static void reply_error(hr_router_t *r, hr_http_request_t *req, int status, const char *msg,
                        const hr_header_t *extra, size_t nextra)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_appends(&b, "{\"error\":");
    hr_buf_append_json_string(&b, msg, strlen(msg));
    hr_buf_appendc(&b, '}');
    hr_header_t h[4] = {JSON_CT[0]};
    size_t n = 1;
    for (size_t i = 0; i < nextra && n < HR_ARRAY_SIZE(h); i++)
        h[n++] = extra[i];
    answer(r, req, status, h, n, b.data, b.len);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- health */

/* Append msg to out as the JSON string of one more reason (*n of them so far). */
static void add_reason(hr_buf_t *out, size_t *n, const char *msg)
{
    if ((*n)++) hr_buf_appendc(out, ',');
    hr_buf_append_json_string(out, msg, strlen(msg));
}

/* Append to out, as JSON strings separated by commas, why this process should get no new
 * webhooks (the spool at max_spool_bytes, its disk failing, a worker's last reload failed)
 * and, with circuits, which targets have their circuit open (tj: the targets JSON). The same
 * answer from any worker: the outbox state comes from the delivery side, the reload state
 * from every worker's counters. Returns how many reasons were appended. */
static size_t health_reasons(const hr_router_t *r, const hr_outbox_stats_t *st, const char *tj,
                             bool circuits, hr_buf_t *out)
{
    char msg[512];
    size_t n = 0;
    if (st->spool_full) {
        snprintf(msg, sizeof msg,
                 "spool full: %llu bytes of max_spool_bytes %llu, new webhooks get 503 until "
                 "deliveries free space",
                 (unsigned long long)st->spool.bytes,
                 (unsigned long long)hr_ruleset_config(r->rs)->max_spool_bytes);
        add_reason(out, &n, msg);
    }
    if (st->spool.failing) {
        snprintf(msg, sizeof msg,
                 "spool disk failing: the last write or sync failed (%llu errors so far)",
                 (unsigned long long)st->spool.write_errors);
        add_reason(out, &n, msg);
    }
    if (st->unavailable[0]) add_reason(out, &n, st->unavailable);
    if (r->last_reload_error || SUM(r, reload_err)) {
        if (r->last_reload_error)
            snprintf(msg, sizeof msg, "last reload failed: %s", r->last_reload_error);
        else
            snprintf(msg, sizeof msg, "last reload failed: on another worker");
        add_reason(out, &n, msg);
    }
    cJSON *targets = circuits ? cJSON_Parse(tj) : NULL;
    const cJSON *t;
    cJSON_ArrayForEach(t, targets)
    {
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "circuit"));
        if (!c || strcmp(c, "open") != 0) continue;
        snprintf(msg, sizeof msg, "circuit open: %s", t->string);
        add_reason(out, &n, msg);
    }
    cJSON_Delete(targets);
    return n;
}

/* Answer /readyz: 200 {"status":"ready"}, or 503 {"status":"not ready","reasons":[...]}. */
static void reply_ready_with(hr_router_t *r, hr_http_request_t *req, const hr_outbox_stats_t *st,
                             const char *tj)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_appends(&b, "{\"status\":\"not ready\",\"reasons\":[");
    size_t n = health_reasons(r, st, tj, false, &b);
    if (r->stopping) add_reason(&b, &n, "stopping");
    hr_buf_appends(&b, "]}");
    if (n == 0) {
        hr_buf_free(&b);
        hr_buf_appends(&b, "{\"status\":\"ready\"}");
    }
    answer(r, req, n ? 503 : 200, JSON_CT, 1, b.data, b.len);
    hr_buf_free(&b);
}

/* Answer /healthz with the outbox's numbers st and targets JSON tj (an object). Event counters
 * are summed over the workers; reloads, loaded_at and connections are this worker's. */
static void reply_health_with(hr_router_t *r, hr_http_request_t *req, const hr_outbox_stats_t *stp,
                              const char *tj)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    hr_outbox_stats_t st = *stp;
    char loaded[32], started[32];
    hr_rfc3339(r->loaded_ms, loaded);
    hr_rfc3339(r->started_ms, started);
    hr_buf_t reasons = HR_BUF_INIT;
    size_t nreasons = health_reasons(r, &st, tj, true, &reasons);
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b,
                  "{\"status\":\"%s\",\"reasons\":[%.*s],\"version\":\"%s\","
                  "\"started_at\":\"%s\",\"loaded_at\":\"%s\",\"config\":",
                  r->stopping ? "stopping"
                  : nreasons  ? "degraded"
                              : "ok",
                  (int)reasons.len, reasons.data ? reasons.data : "", HR_VERSION, started, loaded);
    hr_buf_free(&reasons);
    hr_buf_append_json_string(&b, cfg->file, strlen(cfg->file));
    hr_buf_printf(&b, ",\"reloads\":%llu,\"reload_failures\":%llu,\"last_reload_error\":",
                  (unsigned long long)r->reloads, (unsigned long long)r->reload_failures);
    if (r->last_reload_error)
        hr_buf_append_json_string(&b, r->last_reload_error, strlen(r->last_reload_error));
    else
        hr_buf_appends(&b, "null");
    hr_buf_printf(&b,
                  ",\"store_rules\":%zu,\"default_rule\":%s,"
                  "\"events\":{\"accepted\":%llu,\"dropped\":%llu,\"rule_failed\":%llu,"
                  "\"rejected\":%llu},"
                  "\"outbox\":{\"pending\":%llu,\"delivered\":%llu,\"retried\":%llu,"
                  "\"dead\":%llu,\"refused\":%llu,\"recovered\":%llu,\"replayed\":%llu,"
                  "\"spool_bytes\":%llu,\"spool_segments\":%llu,\"spool_corrupt\":%llu,"
                  "\"spool_compactions\":%llu,"
                  "\"targets\":%s},\"replies\":{\"waiting\":%zu,\"fallbacks\":%llu,"
                  "\"late_answers\":%llu},\"connections\":%zu,\"connections_refused\":%llu,"
                  "\"workers\":%u",
                  hr_ruleset_store_count(r->rs), hr_ruleset_has_default(r->rs) ? "true" : "false",
                  SUM(r, accepted), SUM(r, dropped), SUM(r, failed), SUM(r, rejected),
                  (unsigned long long)st.pending, (unsigned long long)st.delivered,
                  (unsigned long long)st.retried, (unsigned long long)st.dead,
                  (unsigned long long)st.refused, (unsigned long long)st.recovered,
                  (unsigned long long)st.replayed, (unsigned long long)st.spool.bytes,
                  (unsigned long long)st.spool.segments, (unsigned long long)st.spool.corrupt,
                  (unsigned long long)st.compactions, tj, (size_t)SUM(r, waiting),
                  SUM(r, fallbacks), SUM(r, late_answers), hr_server_connections(r->server),
                  (unsigned long long)hr_server_refused(r->server), r->nall);
    if (r->front) { /* front workers: which one answered, and each one's events */
        hr_buf_printf(&b, ",\"worker\":%u,\"worker_events\":[", r->index);
        for (unsigned i = 0; i < r->nall; i++)
            hr_buf_printf(&b, "%s%llu", i ? "," : "",
                          (unsigned long long)counter_get(&r->all[i].accepted));
        hr_buf_appendc(&b, ']');
    }
    hr_buf_appendc(&b, '}');
    answer(r, req, r->stopping ? 503 : 200, JSON_CT, 1, b.data, b.len);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- metrics */

static const hr_header_t METRICS_CT[] = {{"Content-Type", "text/plain; version=0.0.4"}};

/* The largest value of one counter (at offset off) over the workers: what happens once to
 * every worker (a reload) counts once. */
static unsigned long long counters_max(const hr_router_t *r, size_t off)
{
    unsigned long long max = 0;
    for (unsigned i = 0; i < r->nall; i++) {
        unsigned long long v =
            counter_get((const atomic_uint_least64_t *)((const char *)&r->all[i] + off));
        if (v > max) max = v;
    }
    return max;
}

#define MAX_OF(r, field) counters_max((r), offsetof(hr_router_counters_t, field))

/* A number field of a targets-JSON entry, 0 if absent. */
static double tnum(const cJSON *t, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(t, key);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The target label of a targets-JSON entry: its name ("(writes)" for the write actions). */
static const char *const *tlabel(const cJSON *t, const char *l[2])
{
    l[0] = "target";
    l[1] = t->string;
    return l;
}

/* One family from the targets JSON: a sample per entry of field key (scaled by mul), or only
 * the entries that have a circuit when targets_only. */
static void target_family(hr_buf_t *b, const cJSON *targets, const char *name, const char *type,
                          const char *help, const char *key, double mul, bool targets_only)
{
    hr_metrics_family(b, name, type, help);
    const cJSON *t;
    const char *l[2];
    cJSON_ArrayForEach(t, targets)
    {
        if (targets_only && !cJSON_GetObjectItemCaseSensitive(t, "circuit")) continue;
        hr_metrics_sample(b, name, tlabel(t, l), 1, tnum(t, key) * mul);
    }
}

/* A histogram family from the targets JSON ({"buckets":[...],"sum_us":N} under key). */
static void target_histograms(hr_buf_t *b, const cJSON *targets, const char *name, const char *help,
                              const char *key)
{
    hr_metrics_family(b, name, "histogram", help);
    const cJSON *t;
    const char *l[2];
    cJSON_ArrayForEach(t, targets)
    {
        const cJSON *hj = cJSON_GetObjectItemCaseSensitive(t, key);
        const cJSON *bk = cJSON_GetObjectItemCaseSensitive(hj, "buckets");
        hr_histogram_t h = {0};
        for (int i = 0; i <= HR_METRICS_NBUCKETS && i < cJSON_GetArraySize(bk); i++)
            atomic_init(&h.bucket[i], (uint64_t)cJSON_GetArrayItem(bk, i)->valuedouble);
        atomic_init(&h.sum_us, (uint64_t)tnum(hj, "sum_us"));
        hr_metrics_histogram(b, name, tlabel(t, l), 1, &h, 1, sizeof h);
    }
}

/* Answer /metrics: every family in the text format 0.0.4. Router figures are summed over the
 * workers (reloads and the load time: the largest), the delivery side's come from st and tj
 * (one outbox for every worker), so any worker gives the same totals. */
static void reply_metrics_with(hr_router_t *r, hr_http_request_t *req, const hr_outbox_stats_t *st,
                               const char *tj)
{
    hr_buf_t b = HR_BUF_INIT;
    const size_t stride = sizeof(hr_router_counters_t);
    const char *ver[] = {"version", HR_VERSION};
    hr_metrics_family(&b, "hookrouter_build_info", "gauge", "Always 1; the version label.");
    hr_metrics_sample(&b, "hookrouter_build_info", ver, 1, 1);
    hr_metrics_family(&b, "hookrouter_requests_total", "counter",
                      "HTTP requests answered by the router, by endpoint path and status code.");
    hr_metrics_series_write(&b, "hookrouter_requests_total", false, &r->all[0].requests, r->nall,
                            stride);
    hr_metrics_family(&b, "hookrouter_events_total", "counter",
                      "Webhook events by type and outcome (accepted, dropped, rule_failed, "
                      "refused).");
    hr_metrics_series_write(&b, "hookrouter_events_total", false, &r->all[0].events, r->nall,
                            stride);
    hr_metrics_family(&b, "hookrouter_rule_duration_seconds", "histogram",
                      "Time from a rule's start to its result, waits in request() included.");
    hr_metrics_series_write(&b, "hookrouter_rule_duration_seconds", true, &r->all[0].rule_time,
                            r->nall, stride);
    hr_metrics_family(&b, "hookrouter_replies_total", "counter",
                      "Answers of rules that reply (answered, fallback, deadline).");
    hr_metrics_series_write(&b, "hookrouter_replies_total", false, &r->all[0].replies, r->nall,
                            stride);
    const char *ok[] = {"result", "ok"}, *failed[] = {"result", "failed"};
    hr_metrics_family(&b, "hookrouter_reloads_total", "counter", "Reloads by result.");
    hr_metrics_sample(&b, "hookrouter_reloads_total", ok, 1, (double)MAX_OF(r, reloads_ok));
    hr_metrics_sample(&b, "hookrouter_reloads_total", failed, 1, (double)MAX_OF(r, reloads_failed));
    hr_metrics_family(&b, "hookrouter_config_loaded_timestamp_seconds", "gauge",
                      "When the config in force was loaded (Unix time).");
    hr_metrics_sample(&b, "hookrouter_config_loaded_timestamp_seconds", NULL, 0,
                      (double)MAX_OF(r, loaded_ms) / 1000.0);
    hr_metrics_family(&b, "hookrouter_connections", "gauge", "Open webhook connections.");
    hr_metrics_sample(&b, "hookrouter_connections", NULL, 0, (double)SUM(r, connections));

    cJSON *targets = cJSON_Parse(tj);
    target_family(&b, targets, "hookrouter_actions_accepted_total", "counter",
                  "Actions taken in for a target (pushed, replayed, recovered at start).",
                  "accepted", 1, false);
    hr_metrics_family(&b, "hookrouter_deliveries_total", "counter",
                      "Deliveries by target and result (delivered, retried, dead).");
    static const char *const results[] = {"delivered", "retried", "dead"};
    const cJSON *t;
    cJSON_ArrayForEach(t, targets)
    {
        for (size_t i = 0; i < HR_ARRAY_SIZE(results); i++) {
            const char *l[] = {"target", t->string, "result", results[i]};
            hr_metrics_sample(&b, "hookrouter_deliveries_total", l, 2, tnum(t, results[i]));
        }
    }
    target_histograms(&b, targets, "hookrouter_delivery_duration_seconds",
                      "One delivery attempt, sent to answered.", "duration");
    target_histograms(&b, targets, "hookrouter_delivery_lag_seconds",
                      "From the event's acceptance to its delivery.", "lag");
    target_family(&b, targets, "hookrouter_queue_pending", "gauge",
                  "Actions not finished (queued, in flight or waiting to retry).", "pending", 1,
                  false);
    target_family(&b, targets, "hookrouter_queue_oldest_age_seconds", "gauge",
                  "Age of the oldest unfinished action (0 when none).", "oldest_age_ms", 0.001,
                  false);
    hr_metrics_family(&b, "hookrouter_circuit_open", "gauge",
                      "1 while the target's circuit is open (half-open counts as open).");
    cJSON_ArrayForEach(t, targets)
    {
        const char *c = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "circuit"));
        const char *l[2];
        if (c)
            hr_metrics_sample(&b, "hookrouter_circuit_open", tlabel(t, l), 1,
                              strcmp(c, "closed") != 0);
    }
    target_family(&b, targets, "hookrouter_dead_letters_total", "counter",
                  "Actions dead-lettered, by target.", "dead", 1, false);
    cJSON_Delete(targets);

    hr_metrics_family(&b, "hookrouter_spool_bytes", "gauge", "Bytes in the spool's segments.");
    hr_metrics_sample(&b, "hookrouter_spool_bytes", NULL, 0, (double)st->spool.bytes);
    hr_metrics_family(&b, "hookrouter_spool_segments", "gauge", "Segment files in the spool.");
    hr_metrics_sample(&b, "hookrouter_spool_segments", NULL, 0, (double)st->spool.segments);
    hr_metrics_family(&b, "hookrouter_spool_corrupt_records_total", "counter",
                      "Spool records skipped as corrupt.");
    hr_metrics_sample(&b, "hookrouter_spool_corrupt_records_total", NULL, 0,
                      (double)st->spool.corrupt);
    hr_metrics_process(&b);
    answer(r, req, 200, METRICS_CT, 1, b.data, b.len);
    hr_buf_free(&b);
}

/* ---------------------------------------------------------------- admin paths */

typedef enum { ADMIN_HEALTH, ADMIN_READY, ADMIN_METRICS } admin_kind_t;

/* An admin request waiting for the delivery side's numbers (at once with the router's own
 * outbox, from the delivery loop for a front worker). */
typedef struct {
    hr_router_t *r;
    hr_http_request_t *req;
    admin_kind_t kind;
} health_ctx_t;

static void on_health_stats(void *arg, const hr_outbox_stats_t *st, const char *targets_json)
{
    health_ctx_t *hc = arg;
    if (hc->kind == ADMIN_READY)
        reply_ready_with(hc->r, hc->req, st, targets_json);
    else if (hc->kind == ADMIN_METRICS)
        reply_metrics_with(hc->r, hc->req, st, targets_json);
    else
        reply_health_with(hc->r, hc->req, st, targets_json);
    free(hc);
}

/* /healthz, /readyz or /metrics: answered to GET and HEAD (see on_headers), on admin_listen's
 * address when there is one, else on the webhook port. */
static bool is_admin_path(const char *path)
{
    switch (path[0] == '/' ? path[1] : '\0') { /* one compare for a webhook's path */
    case 'h': return strcmp(path, "/healthz") == 0;
    case 'r': return strcmp(path, "/readyz") == 0;
    case 'm': return strcmp(path, "/metrics") == 0;
    default: return false;
    }
}

/* Headers of an admin path: 405 to anything but GET and HEAD (those are answered in
 * on_request: the numbers may come later). */
static void admin_headers(hr_router_t *r, hr_http_request_t *req)
{
    if (strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0) return;
    static const hr_header_t allow[] = {{"Allow", "GET, HEAD"}};
    char msg[64];
    snprintf(msg, sizeof msg, "method not allowed: use GET %s", req->path);
    reply_error(r, req, 405, msg, allow, 1);
}

/* Answer an admin path (GET or HEAD). /metrics wants metrics.token when one is set. */
static void admin_request(hr_router_t *r, hr_http_request_t *req)
{
    admin_kind_t kind = strcmp(req->path, "/readyz") == 0    ? ADMIN_READY
                        : strcmp(req->path, "/metrics") == 0 ? ADMIN_METRICS
                                                             : ADMIN_HEALTH;
    const char *tok = hr_ruleset_config(r->rs)->metrics_token;
    if (kind == ADMIN_METRICS && tok) {
        const char *h = hr_http_header(req, "authorization");
        const char *got = h && strncasecmp(h, "Bearer ", 7) == 0 ? h + 7 : "";
        while (*got == ' ')
            got++;
        if (!hr_consttime_eq(got, strlen(got), tok, strlen(tok))) {
            static const hr_header_t www[] = {{"WWW-Authenticate", "Bearer"}};
            hr_log_kv(HR_LOG_WARN, "rejected", HR_KV_INT("status", 401),
                      HR_KV_STR("path", req->path), HR_KV_STR("peer", req->peer),
                      HR_KV_STR("reason", h ? "wrong metrics token" : "missing metrics token"));
            reply_error(r, req, 401, "missing or invalid metrics token", www, 1);
            return;
        }
    }
    health_ctx_t *hc = hr_xmalloc(sizeof *hc);
    *hc = (health_ctx_t){r, req, kind};
    hr_delivery_stats(r->delivery, on_health_stats, hc);
}

/* admin_listen's server: the admin paths, 404 to anything else. */
static void on_admin_headers(hr_http_request_t *req, void *arg)
{
    hr_router_t *r = arg;
    if (is_admin_path(req->path)) {
        admin_headers(r, req);
        return;
    }
    hr_log_kv(HR_LOG_INFO, "rejected", HR_KV_INT("status", 404), HR_KV_STR("path", req->path),
              HR_KV_STR("peer", req->peer),
              HR_KV_STR("reason", "admin_listen serves /metrics, /healthz and /readyz only"));
    reply_error(r, req, 404, "admin_listen serves /metrics, /healthz and /readyz only", NULL, 0);
}

static void on_admin_request(hr_http_request_t *req, void *arg)
{
    admin_request(arg, req);
}

/* ---------------------------------------------------------------- pipeline */

/* Which of the tokens "Authorization: Bearer <token>" carries: its 1-based index, or 0 if
 * none. Every token is compared, each in constant time, so timing tells nothing about which
 * or how much matched. */
static int token_of(const hr_config_t *cfg, const hr_http_request_t *req)
{
    const char *h = hr_http_header(req, "authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    size_t n = strlen(tok);
    int which = 0;
    for (size_t i = 0; i < cfg->ntokens; i++) {
        bool eq = hr_consttime_eq(tok, n, cfg->tokens[i], strlen(cfg->tokens[i]));
        int first = -(int)(eq && which == 0); /* all ones for the first match, no branch */
        which = (which & ~first) | (((int)i + 1) & first);
    }
    return which;
}

/* If req may not go on (no valid token, and the config did not turn auth off): answer 401,
 * log why, count a refused event of ep and return true. token is token_of(cfg, req). */
static bool refused_unauthorized(hr_router_t *r, const hr_config_t *cfg,
                                 const hr_endpoint_conf_t *ep, hr_http_request_t *req, int token)
{
    if (cfg->insecure_no_auth || token > 0) return false;
    static const hr_header_t www[] = {{"WWW-Authenticate", "Bearer"}};
    COUNT(r, rejected);
    count_event(r, ep->event, NULL, "refused");
    hr_log_kv(HR_LOG_WARN, "rejected", HR_KV_INT("status", 401), HR_KV_STR("path", req->path),
              HR_KV_STR("peer", req->peer),
              HR_KV_STR("reason", hr_http_header(req, "authorization") ? "wrong bearer token"
                                                                       : "missing bearer token"));
    reply_error(r, req, 401, "missing or invalid bearer token", www, 1);
    return true;
}

/* An endpoint's verify: check the Standard Webhooks signature of req, whole (its body has
 * arrived) or only what needs no body. On failure answer 401 naming which, log it with the
 * peer, count a refused event of ep and return false. */
static bool signature_ok(hr_router_t *r, hr_http_request_t *req, const hr_endpoint_conf_t *ep,
                         bool whole)
{
    const hr_sign_conf_t *verify = ep->verify;
    const char *id = hr_http_header(req, "webhook-id");
    const char *ts = hr_http_header(req, "webhook-timestamp");
    const char *sig = hr_http_header(req, "webhook-signature");
    uint64_t now = hr_wall_ms() / 1000;
    hr_verify_t v = whole ? hr_sign_verify(verify, id, ts, sig, req->body, req->body_len, now)
                          : hr_sign_verify_headers(verify, id, ts, sig, now);
    if (v == HR_VERIFY_OK) return true;
    char msg[160];
    switch (v) {
    case HR_VERIFY_MISSING:
        snprintf(msg, sizeof msg,
                 "missing webhook signature (webhook-id, webhook-timestamp and "
                 "webhook-signature are required)");
        break;
    case HR_VERIFY_STALE:
        snprintf(msg, sizeof msg,
                 "stale webhook signature (webhook-timestamp is more than %u s from now)",
                 (unsigned)verify->tolerance_s);
        break;
    default:
        snprintf(msg, sizeof msg, "bad webhook signature (no v1 signature matches a secret)");
        break;
    }
    COUNT(r, rejected);
    char why[64];
    snprintf(why, sizeof why, "%s webhook signature", hr_verify_name(v));
    count_event(r, ep->event, NULL, "refused");
    hr_log_kv(HR_LOG_INFO, "rejected", HR_KV_INT("status", 401), HR_KV_STR("path", req->path),
              HR_KV_STR("peer", req->peer), HR_KV_STR("reason", why));
    reply_error(r, req, 401, msg, NULL, 0);
    return false;
}

/* Headers complete: answer what needs no body (health, 404, 405, 401). */
static void on_headers(hr_http_request_t *req, void *arg)
{
    hr_router_t *r = arg;
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    if (!r->admin_apart && is_admin_path(req->path)) {
        admin_headers(r, req);
        return;
    }
    const hr_endpoint_conf_t *ep = hr_config_endpoint(cfg, req->path);
    if (!ep) {
        COUNT(r, rejected);
        hr_log_kv(HR_LOG_INFO, "rejected", HR_KV_INT("status", 404), HR_KV_STR("path", req->path),
                  HR_KV_STR("peer", req->peer), HR_KV_STR("reason", "no endpoint for this path"));
        reply_error(r, req, 404, "no webhook endpoint at this path", NULL, 0);
        return;
    }
    if (strcmp(req->method, "POST") != 0) {
        static const hr_header_t allow[] = {{"Allow", "POST"}};
        COUNT(r, rejected);
        hr_log_kv(HR_LOG_INFO, "rejected", HR_KV_INT("status", 405),
                  HR_KV_STR("method", req->method), HR_KV_STR("path", req->path),
                  HR_KV_STR("peer", req->peer));
        reply_error(r, req, 405, "method not allowed: webhooks are POSTed", allow, 1);
        return;
    }
    if (ep->verify) { /* the signature is the endpoint's credential, not a token */
        signature_ok(r, req, ep, false);
        return;
    }
    refused_unauthorized(r, cfg, ep, req, token_of(cfg, req));
}

/* The outbox took the dead letter of a failed rule (status 0), or could not store it. */
static void on_dead_letter_pushed(void *arg, int status)
{
    char *line = arg;
    if (status < 0)
        hr_log_kv(HR_LOG_ERROR, "cannot store the dead letter of a failed rule: it is only here",
                  HR_KV_STR("error", strerror(-status)), HR_KV_STR("dead_letter", line));
    free(line);
}

/* Dead-letter an event whose rule failed: appended at once (so it is there even when the
 * router is stopping), and if that fails (EMFILE, ENOSPC, EIO) handed to the outbox as a
 * write to the dead-letter file, which keeps it in the spool and retries it like any write
 * instead of leaving it only in a log line. */
static void dead_letter_event(hr_router_t *r, const hr_event_in_t *ev, const hr_run_result_t *res)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    hr_event_meta_t meta = {ev->id, ev->type, res->store, ev->method, ev->path, ev->received_at};
    hr_buf_t line = HR_BUF_INIT;
    hr_deadletter_for_event(&line, &meta, res->error, ev->body, ev->body_len);
    char err[256];
    if (hr_files_append(r->files, cfg->dead_letters, line.data, line.len, err, sizeof err) == 0) {
        hr_buf_free(&line);
        return;
    }
    hr_log_kv(HR_LOG_WARN, "cannot write the dead letter: keeping it in the spool to retry",
              HR_KV_STR("id", ev->id), HR_KV_STR("file", cfg->dead_letters),
              HR_KV_STR("error", err));
    hr_action_t *a = hr_action_new(HR_ACTION_WRITE);
    memcpy(a->event_id, ev->id, HR_ID_LEN);
    a->event_type = hr_xstrdup(ev->type);
    a->store = res->store ? hr_xstrdup(res->store) : NULL;
    a->accepted_ms = ev->received_ms;
    a->name = hr_xstrdup("dead_letters");
    a->file_path = hr_xstrdup(cfg->dead_letters);
    a->body_is_json = true;
    a->body = hr_xstrndup(line.data, line.len);
    a->body_len = line.len;
    char *copy = hr_buf_steal(&line, NULL); /* for the log line if it cannot be stored */
    int rc = hr_delivery_push(r->delivery, a, on_dead_letter_pushed, copy);
    if (rc < 0) on_dead_letter_pushed(copy, rc);
}

/* ---------------------------------------------------------------- events */

/* Reply with a fixed reply (respond() or a fallback). */
static void reply_with(hr_router_t *r, hr_http_request_t *req, const hr_reply_t *rp)
{
    hr_header_t h[24];
    size_t n = 0;
    bool has_ct = false;
    for (size_t i = 0; i < rp->nheaders && n < HR_ARRAY_SIZE(h) - 1; i++) {
        has_ct |= strcasecmp(rp->headers[i].name, "content-type") == 0;
        h[n++] = rp->headers[i];
    }
    if (rp->body && !has_ct)
        h[n++] = (hr_header_t){"Content-Type",
                               rp->body_is_json ? "application/json" : "text/plain; charset=utf-8"};
    answer(r, req, rp->status, h, n, rp->body, rp->body_len);
}

static void waiting_unlink(event_run_t *e)
{
    if (!e->waiting) return;
    hr_router_t *r = e->r;
    if (e->prev)
        e->prev->next = e->next;
    else
        r->waiting = e->next;
    if (e->next) e->next->prev = e->prev;
    e->prev = e->next = NULL;
    e->waiting = false;
    r->nwaiting--;
    counter_add(&r->ctr->waiting, (uint64_t)-1);
}

static void event_maybe_free(event_run_t *e)
{
    if (!e->req && !e->timer_open && !e->http_pending) free(e);
}

static void on_event_timer_closed(uv_handle_t *h)
{
    event_run_t *e = h->data;
    e->timer_open = false;
    event_maybe_free(e);
}

/* An event whose actions are being written to the spool: its reply waits for that. */
typedef struct {
    hr_router_t *r;
    hr_http_request_t *req;   /* still owed a reply */
    char id[HR_ID_LEN];       /* the event id */
    hr_reply_t *reply;        /* what respond() set, or NULL for 200 {"id": ...} (owned) */
    const char *reply_result; /* replies_total's result for reply: "answered", "fallback" */
    const char *store;        /* the event's store (in strs), NULL if none */
    const char *endpoint;     /* its endpoint's path (in strs) */
    char strs[];              /* type, endpoint, store: the config may be reloaded meanwhile */
} push_ctx_t;

/* The outbox stored the actions (status 0: answer as the rule decided) or could not
 * (spool full, disk error: 503, the event is not accepted). */
static void on_pushed(void *arg, int status)
{
    push_ctx_t *pc = arg;
    count_event(pc->r, pc->strs, pc->store, status < 0 ? "refused" : "accepted");
    if (status < 0) {
        COUNT(pc->r, refused);
        const char *why = status == -ENOSPC ? "spool full: the event was not stored, retry later"
                                            : "cannot store the event: retry later";
        hr_log_kv(HR_LOG_ERROR, "rejected", HR_KV_INT("status", 503), HR_KV_STR("id", pc->id),
                  HR_KV_STR("path", pc->req->path), HR_KV_STR("peer", pc->req->peer),
                  HR_KV_STR("reason", why), HR_KV_STR("error", strerror(-status)));
        reply_error(pc->r, pc->req, 503, why, NULL, 0);
    } else if (pc->reply) {
        count_reply(pc->r, pc->endpoint, pc->reply_result);
        reply_with(pc->r, pc->req, pc->reply);
    } else {
        hr_buf_t body = HR_BUF_INIT;
        hr_buf_append(&body, "{\"id\":\"", 7);
        hr_buf_appends(&body, pc->id);
        hr_buf_append(&body, "\"}", 2);
        answer(pc->r, pc->req, 200, JSON_CT, 1, body.data, body.len);
        hr_buf_free(&body);
    }
    hr_reply_free(pc->reply);
    free(pc);
}

/* The run is over (returned, failed or abandoned): log, dead-letter a failure, hand the
 * actions to the outbox, reply, and release what the event holds. fail_status is the reply
 * to a failed run when the endpoint has no fallback. */
static void event_complete(event_run_t *e, int fail_status)
{
    hr_router_t *r = e->r;
    hr_http_request_t *req = e->req;
    const hr_endpoint_conf_t *ep = e->ep;
    hr_run_result_t *res = &e->res;
    const char *id = e->id;
    waiting_unlink(e);
    uint64_t now_ns = uv_hrtime();
    double ms = (double)(now_ns - req->start_ns) / 1e6;
    const char *tl[] = {"type", ep->event};
    hr_histogram_observe(&series_of(r, &r->ctr->rule_time, tl, 1, OTHER_TYPE)->hist,
                         (now_ns - e->rule_ns) / 1000);
    const char *reply_result = NULL; /* for replies_total */

    hr_buf_t body = HR_BUF_INIT;
    switch (res->status) {
    case HR_RUN_BAD_JSON:
        COUNT(r, rejected);
        count_event(r, ep->event, NULL, "refused");
        hr_log_kv(HR_LOG_WARN, "rejected", HR_KV_INT("status", 400), HR_KV_STR("type", ep->event),
                  HR_KV_STR("path", req->path), HR_KV_STR("peer", req->peer),
                  HR_KV_STR("error", res->error));
        reply_error(r, req, 400, res->error, NULL, 0);
        break;
    case HR_RUN_RULE_FAILED:
        COUNT(r, failed);
        count_event(r, ep->event, res->store, "rule_failed");
        if (e->abandoned && fail_status == 504) count_reply(r, ep->path, "deadline");
        hr_log_kv(HR_LOG_ERROR, "rule failed", HR_KV_STR("id", id), HR_KV_STR("type", ep->event),
                  HR_KV_STR("store", res->store), HR_KV_STR("rule", res->rule), HR_KV_MS("ms", ms),
                  HR_KV_STR("reply", ep->fallback ? "fallback" : "error"),
                  HR_KV_STR("error", res->error));
        dead_letter_event(r, &e->ev, res);
        if (ep->fallback) {
            COUNT(r, fallbacks);
            if (fail_status != 504) count_reply(r, ep->path, "fallback");
            reply_with(r, req, ep->fallback);
            break;
        }
        hr_buf_printf(&body, "{\"error\":\"%s\",\"id\":\"%s\"}",
                      fail_status == 500   ? "rule failed"
                      : fail_status == 503 ? "shutting down"
                                           : "reply deadline exceeded",
                      id);
        answer(r, req, fail_status, JSON_CT, 1, body.data, body.len);
        break;
    case HR_RUN_OK: {
        if (ep->fallback && !res->reply) {
            /* AiFi reads this answer: a rule that gave none fails closed, with the fallback. */
            char key[300];
            snprintf(key, sizeof key, "no-respond:%s", res->rule ? res->rule : "-");
            if (hr_ruleset_first_time(e->rs, key))
                hr_log_kv(HR_LOG_WARN,
                          "rule returned without respond(): answering with the endpoint's "
                          "fallback (logged once per rule until the next reload)",
                          HR_KV_STR("rule", res->rule), HR_KV_STR("path", ep->path),
                          HR_KV_STR("type", ep->event), HR_KV_STR("store", res->store));
            COUNT(r, fallbacks);
            res->reply = hr_reply_dup(ep->fallback);
            reply_result = "fallback";
        } else if (res->reply) {
            reply_result = "answered";
        }
        if (hr_log_enabled(HR_LOG_INFO)) {
            hr_buf_t acts = HR_BUF_INIT;
            for (hr_action_t *a = res->actions; a; a = a->next)
                hr_buf_printf(&acts, "%s%s:%s", acts.len ? "," : "",
                              a->kind == HR_ACTION_FORWARD ? "forward" : "write", a->name);
            if (res->dropped) hr_buf_printf(&acts, "%sdrop", acts.len ? "," : "");
            hr_log_field_t f[9];
            size_t nf = 0;
            f[nf++] = HR_KV_STR("id", id);
            f[nf++] = HR_KV_STR("type", ep->event);
            f[nf++] = HR_KV_STR("store", res->store);
            f[nf++] = HR_KV_STR("rule", res->rule);
            f[nf++] = HR_KV_STR("actions", acts.len ? acts.data : "none");
            if (res->requests || res->reply) {
                f[nf++] = HR_KV_UINT("requests", res->requests);
                f[nf++] = HR_KV_INT("reply", res->reply ? res->reply->status : 200);
            }
            f[nf++] = HR_KV_MS("ms", ms);
            if (res->dropped) f[nf++] = HR_KV_STR("reason", res->drop_reason);
            hr_log_fields(HR_LOG_INFO, "event", f, nf);
            hr_buf_free(&acts);
        }
        COUNT(r, accepted);
        if (res->dropped && !res->actions) COUNT(r, dropped);
        if (res->actions) {
            /* The reply waits until the actions are durable in the spool. */
            size_t tlen = strlen(ep->event) + 1, plen = strlen(ep->path) + 1;
            size_t slen = res->store ? strlen(res->store) + 1 : 0;
            push_ctx_t *pc = hr_xcalloc(1, sizeof *pc + tlen + plen + slen);
            memcpy(pc->strs, ep->event, tlen);
            memcpy(pc->strs + tlen, ep->path, plen);
            pc->endpoint = pc->strs + tlen;
            if (res->store) pc->store = memcpy(pc->strs + tlen + plen, res->store, slen);
            pc->reply_result = reply_result;
            pc->r = r;
            pc->req = req;
            memcpy(pc->id, id, sizeof pc->id);
            pc->reply = res->reply; /* the rule's own answer, sent once stored */
            res->reply = NULL;
            hr_action_t *acts = res->actions;
            res->actions = NULL; /* the outbox owns them now */
            int prc = hr_delivery_push(r->delivery, acts, on_pushed, pc);
            if (prc < 0) on_pushed(pc, prc);
            break;
        }
        count_event(r, ep->event, res->store,
                    res->dropped ? "dropped" : "accepted"); /* no actions to store */
        if (res->reply) {
            count_reply(r, ep->path, reply_result);
            reply_with(r, req, res->reply);
            break;
        }
        hr_buf_appends(&body, "{\"id\":\"");
        hr_buf_appends(&body, id);
        hr_buf_appends(&body, "\"}");
        answer(r, req, 200, JSON_CT, 1, body.data, body.len);
        break;
    }
    }
    hr_buf_free(&body);
    hr_run_result_free(res);
    e->req = NULL;
    if (e->rs == r->rs && hr_ruleset_needs_rebuild(e->rs) && !r->reload_pending) {
        hr_log_warn("rule state over limits.state_memory_bytes: reloading the rules to start "
                    "clean");
        hr_router_request_reload(r);
    }
    hr_ruleset_unref(e->rs);
    e->rs = NULL;
    if (e->timer_open) {
        uv_timer_stop(&e->timer);
        if (!uv_is_closing((uv_handle_t *)&e->timer))
            uv_close((uv_handle_t *)&e->timer, on_event_timer_closed);
    }
    event_maybe_free(e);
}

/* End a suspended run without resuming it: the fallback (or fail_status) goes out now, the
 * event to dead letters with reason; a later answer to its request is dropped. */
static void event_give_up(event_run_t *e, const char *reason, int fail_status)
{
    e->abandoned = true;
    hr_ruleset_abandon(&e->res, reason);
    event_complete(e, fail_status);
}

static void on_event_deadline(uv_timer_t *t)
{
    event_run_t *e = t->data;
    char reason[96];
    snprintf(reason, sizeof reason, "reply deadline exceeded (%u ms)", e->ep->reply_timeout_ms);
    event_give_up(e, reason, 504);
}

static void event_send(event_run_t *e);

/* The answer to a suspended rule's request(): resume the rule, or drop a late answer. */
static void on_event_answer(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    event_run_t *e = arg;
    hr_router_t *r = e->r;
    e->http_pending = false;
    double ms = (double)(uv_hrtime() - e->sent_ns) / 1e6;
    if (e->abandoned) {
        if (err != UV_ECANCELED) {
            COUNT(r, late_answers);
            hr_log_kv(HR_LOG_WARN, "late answer dropped", HR_KV_STR("id", e->id),
                      HR_KV_STR("target", e->target),
                      err ? HR_KV_STR("error", errmsg) : HR_KV_INT("status", res->status),
                      HR_KV_MS("ms", ms), HR_KV_STR("reason", "the reply deadline had passed"));
        }
        event_maybe_free(e);
        return;
    }
    hr_rule_answer_t ans = {.err = err, .errmsg = errmsg, .ms = ms};
    if (!err) {
        ans.status = res->status;
        ans.headers = res->headers;
        ans.nheaders = res->nheaders;
        ans.body = res->body;
        ans.body_len = res->body_len;
    }
    hr_log_kv(HR_LOG_DEBUG, "request", HR_KV_STR("id", e->id), HR_KV_STR("target", e->target),
              err ? HR_KV_STR("error", errmsg ? errmsg : uv_strerror(err))
                  : HR_KV_INT("status", res->status),
              HR_KV_MS("ms", ms));
    if (hr_ruleset_resume(&e->res, &ans) == HR_STEP_SUSPENDED)
        event_send(e);
    else
        event_complete(e, 500);
}

/* The rule is suspended in request(): send the request and arm the deadline (once). While
 * stopping, a rule that starts waiting gets the fallback at once. */
static void event_send(event_run_t *e)
{
    hr_router_t *r = e->r;
    for (;;) {
        if (r->stopping) {
            event_give_up(e, "shutting down while the rule waited in request()", 503);
            return;
        }
        const hr_action_t *a = e->res.request;
        /* Signed as the target's sign in the event's config says, as a forward is; sent with
         * its TLS context and proxy. */
        const hr_target_conf_t *tc =
            e->rs ? hr_config_target(hr_ruleset_config(e->rs), a->name) : NULL;
        hr_signed_headers_t sh;
        hr_sign_request(tc ? tc->sign : NULL, e->id, hr_wall_ms() / 1000, a->headers, a->nheaders,
                        a->body, a->body_len, &sh);
        hr_http_out_t out = {.method = a->method,
                             .url = a->url,
                             .headers = sh.headers,
                             .nheaders = sh.nheaders,
                             .body = a->body,
                             .body_len = a->body_len,
                             .timeout_ms = a->timeout_ms,
                             .tls = tc ? tc->tls : NULL,
                             .proxy = tc ? tc->proxy : NULL};
        snprintf(e->target, sizeof e->target, "%s", a->name);
        e->sent_ns = uv_hrtime();
        int rc = hr_http_client_send(r->replies, &out, on_event_answer, e);
        hr_signed_headers_free(&sh); /* the client copied what it sends */
        if (rc == 0) {
            e->http_pending = true;
            break;
        }
        hr_rule_answer_t ans = {.err = rc, .errmsg = uv_strerror(rc)};
        if (hr_ruleset_resume(&e->res, &ans) != HR_STEP_SUSPENDED) {
            event_complete(e, 500);
            return;
        }
    }
    if (!e->timer_open) {
        uv_timer_init(r->loop, &e->timer);
        e->timer.data = e;
        e->timer_open = true;
        uint64_t now = uv_now(r->loop);
        uv_timer_start(&e->timer, on_event_deadline,
                       e->deadline_ms > now ? e->deadline_ms - now : 0, 0);
    }
    if (!e->waiting) {
        e->waiting = true;
        e->prev = NULL;
        e->next = r->waiting;
        if (r->waiting) r->waiting->prev = e;
        r->waiting = e;
        r->nwaiting++;
        COUNT(r, waiting);
    }
}

/* Whole request arrived: decode, run the rule, hand the actions over, answer (now, or when
 * a rule that waits in request() returns or its deadline passes). */
static void on_request(hr_http_request_t *req, void *arg)
{
    hr_router_t *r = arg;
    hr_ruleset_t *rs = r->rs;
    if (!r->admin_apart && is_admin_path(req->path)) { /* GET or HEAD: see on_headers */
        admin_request(r, req);
        return;
    }
    /* Look the endpoint up again: a reload may have swapped the config since on_headers. */
    const hr_endpoint_conf_t *ep = hr_config_endpoint(hr_ruleset_config(rs), req->path);
    if (!ep) {
        reply_error(r, req, 404, "no webhook endpoint at this path", NULL, 0);
        return;
    }
    /* The signature, before the body is decoded (the rule run decodes it). A reload since
     * on_headers may have given or taken the endpoint's verify: the token is asked again
     * where there is none (on_headers asked none if there was one). */
    int token = token_of(hr_ruleset_config(rs), req); /* once: it is also the event's */
    if (ep->verify && !signature_ok(r, req, ep, true)) return;
    if (!ep->verify && refused_unauthorized(r, hr_ruleset_config(rs), ep, req, token)) return;
    event_run_t *e = hr_xcalloc(1, sizeof *e);
    e->r = r;
    e->req = req;
    e->rs = rs;
    hr_ruleset_ref(rs); /* the event finishes on the rule set it started with */
    e->ep = ep;
    e->deadline_ms = uv_now(r->loop) + ep->reply_timeout_ms;
    hr_id_new(e->id);
    uint64_t now = hr_wall_ms();
    hr_rfc3339(now, e->received_at);
    e->ev = (hr_event_in_t){.id = e->id,
                            .type = ep->event,
                            .method = req->method,
                            .path = req->path,
                            .headers = req->headers,
                            .nheaders = req->nheaders,
                            .body = req->body,
                            .body_len = req->body_len,
                            .received_at = e->received_at,
                            .received_ms = now,
                            .token = token};
    e->rule_ns = uv_hrtime();
    if (hr_ruleset_start(rs, &e->ev, &e->res) == HR_STEP_SUSPENDED)
        event_send(e);
    else
        event_complete(e, 500);
}

/* ---------------------------------------------------------------- reload */

/* The delivery side applied a reload's settings: release the rule set that holds them. */
static void on_delivery_reloaded(void *arg)
{
    hr_ruleset_unref(arg);
}

/* The one reload, with one worker or N: load config and rules (all or nothing), swap them
 * in, and hand the new delivery settings to the delivery side. */
static void log_listener_cert(const hr_config_t *cfg);

static void do_reload(uv_timer_t *t)
{
    hr_router_t *r = t->data;
    r->reload_pending = false; /* a SIGHUP from now on asks for one more */
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(r->config_path, &errs);
    hr_ruleset_t *rs = cfg ? hr_ruleset_load(cfg, &errs) : NULL;
    if (!rs) {
        r->reload_failures++;
        atomic_store_explicit(&r->ctr->reload_err, 1, memory_order_relaxed);
        COUNT(r, reloads_failed);
        free(r->last_reload_error);
        r->last_reload_error = hr_xstrdup(errs.n ? errs.msgs[0] : "unknown error");
        for (size_t i = 0; i < errs.n; i++)
            hr_log_kv(HR_LOG_ERROR, "reload failed", HR_KV_STR("error", errs.msgs[i]));
        char loaded[32];
        hr_rfc3339(r->loaded_ms, loaded);
        hr_log_kv(HR_LOG_WARN, "reload: still serving the config and rules loaded before",
                  HR_KV_STR("loaded_at", loaded));
        hr_errors_free(&errs);
        /* A SIGHUP also says "logrotate moved the files": reopen them all the same, with the
         * settings in force, or lines would go on into a rotated file that logrotate may
         * compress and delete. */
        hr_files_reopen(r->files);
        hr_ruleset_ref(r->rs);
        hr_delivery_reload(r->delivery, hr_ruleset_config(r->rs), on_delivery_reloaded, r->rs);
        if (r->reload_cb) r->reload_cb(r->reload_arg, false, r->reloads, r->last_reload_error);
        return;
    }
    const hr_config_t *old = hr_ruleset_config(r->rs);
    if (strcmp(old->listen, cfg->listen) != 0)
        hr_log_warn("reload: listen changed from %s to %s: that needs a restart; still "
                    "listening on port %d",
                    old->listen, cfg->listen, hr_server_port(r->server));
    if ((old->admin_listen == NULL) != (cfg->admin_listen == NULL) ||
        (old->admin_listen && strcmp(old->admin_listen, cfg->admin_listen) != 0))
        hr_log_warn("reload: admin_listen changed from %s to %s: that needs a restart; the "
                    "admin paths stay where they are",
                    old->admin_listen ? old->admin_listen : "(none)",
                    cfg->admin_listen ? cfg->admin_listen : "(none)");
    if (!old->tls.ctx != !cfg->tls.ctx)
        hr_log_warn("reload: tls %s: new connections on port %d now need %s; open ones keep "
                    "what they started with",
                    cfg->tls.ctx ? "added" : "removed", hr_server_port(r->server),
                    cfg->tls.ctx ? "HTTPS" : "plain HTTP");
    /* The certificate files were re-read as the config loaded: new connections get them. */
    hr_server_set_tls(r->server, cfg->tls.ctx);
    log_listener_cert(cfg);
    hr_log_apply(cfg->log_level, cfg->log_format);
    hr_ruleset_unref(r->rs); /* events in flight hold their own reference */
    r->rs = rs;
    r->reloads++;
    r->loaded_ms = hr_wall_ms();
    COUNT(r, reloads_ok);
    atomic_store_explicit(&r->ctr->loaded_ms, r->loaded_ms, memory_order_relaxed);
    free(r->last_reload_error);
    r->last_reload_error = NULL;
    atomic_store_explicit(&r->ctr->reload_err, 0, memory_order_relaxed);
    hr_files_reopen(r->files); /* logrotate moved the files: start new ones */
    hr_files_set_modes(r->files, cfg->files, cfg->nfiles);
    hr_ruleset_ref(rs); /* cfg stays valid until the delivery side has applied it */
    hr_delivery_reload(r->delivery, cfg, on_delivery_reloaded, rs);
    hr_log_kv(HR_LOG_INFO, "reloaded", HR_KV_STR("config", cfg->file),
              HR_KV_UINT("reload", r->reloads), HR_KV_UINT("endpoints", cfg->nendpoints),
              HR_KV_UINT("store_rules", hr_ruleset_store_count(rs)),
              HR_KV_STR("default_rule", hr_ruleset_has_default(rs) ? "yes" : "no"));
    if (r->reload_cb) r->reload_cb(r->reload_arg, true, r->reloads, NULL);
}

void hr_router_on_reload(hr_router_t *r, hr_router_reload_cb cb, void *arg)
{
    r->reload_cb = cb;
    r->reload_arg = arg;
}

int hr_router_port(const hr_router_t *r)
{
    return hr_server_port(r->server);
}

/* Name the listener's certificate and warn when it expires within 30 days (at start and at
 * each reload, so a rotation shows in the log and an expiry is seen before it happens). */
static void log_listener_cert(const hr_config_t *cfg)
{
    if (!cfg->tls.ctx) return;
    char desc[640];
    double days = hr_tls_ctx_describe(cfg->tls.ctx, desc, sizeof desc);
    if (days >= 0 && days < 30)
        hr_log_warn("tls: %s: expires in %.1f days", desc, days);
    else
        hr_log_info("tls: %s", desc);
}

void hr_router_log_listening_at(const hr_config_t *cfg, int port, unsigned nworkers)
{
    bool v6 = strchr(cfg->listen_host, ':') != NULL;
    char workers[32] = "";
    if (nworkers > 1) snprintf(workers, sizeof workers, " (%u workers)", nworkers);
    const char *tls = !cfg->tls.ctx                       ? ""
                      : hr_tls_ctx_verifies(cfg->tls.ctx) ? " (TLS, client certificates required)"
                                                          : " (TLS)";
    hr_log_info("listening on %s%s%s:%d%s%s", v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "", port,
                tls, workers);
    log_listener_cert(cfg);
}

void hr_router_log_listening(const hr_router_t *r)
{
    hr_router_log_listening_at(hr_ruleset_config(r->rs), hr_server_port(r->server), 1);
}

void hr_router_request_reload(hr_router_t *r)
{
    if (r->stopping || r->reload_pending) return;
    r->reload_pending = true;
    uv_timer_start(&r->reload_timer, do_reload, 0, 0);
}

/* ---------------------------------------------------------------- start and stop */

/* A router with nothing started yet: rule set, counters, files. */
static hr_router_t *router_new(uv_loop_t *loop, hr_ruleset_t *rs)
{
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_router_t *r = hr_xcalloc(1, sizeof *r);
    r->loop = loop;
    r->rs = rs;
    r->config_path = hr_xstrdup(cfg->file);
    r->started_ms = r->loaded_ms = hr_wall_ms();
    r->files = hr_files_create();
    hr_files_set_modes(r->files, cfg->files, cfg->nfiles);
    r->ctr = r->all = &r->own;
    r->nall = 1;
    atomic_store_explicit(&r->ctr->loaded_ms, r->loaded_ms, memory_order_relaxed);
    return r;
}

/* Free a router whose listener could not be set up (its delivery already closing). */
static void router_free_failed(hr_router_t *r)
{
    hr_router_counters_free(&r->own);
    hr_buf_free(&r->labels);
    hr_files_destroy(r->files);
    free(r->config_path);
    hr_ruleset_unref(r->rs);
    free(r);
}

/* Listener, reply client and timers. Returns 0, or -1 with a message in err. */
static int router_listen(hr_router_t *r, int port, bool reuseport, bool exclusive, char *err,
                         size_t errlen)
{
    const hr_config_t *cfg = hr_ruleset_config(r->rs);
    /* limits.max_connections is for all workers: each gets its share. The default leaves of
     * RLIMIT_NOFILE (raised to the hard limit) a reserve for the spool, files, outbound
     * connections and the loop (see README, limits.max_connections). */
    uint64_t nofile = hr_server_raise_nofile();
    unsigned nw = r->nall ? r->nall : 1;
    size_t maxc =
        cfg->limits.max_connections
            ? (cfg->limits.max_connections + nw - 1) / nw
            : hr_server_default_max_connections(
                  nofile, 64 + cfg->nfiles + (uint64_t)cfg->ntargets * cfg->max_conns_per_target,
                  nw);
    hr_server_opts_t so = {.host = cfg->listen_host,
                           .max_connections = maxc,
                           .port = port,
                           .body_limit = cfg->limits.body_bytes,
                           .header_limit = cfg->limits.header_bytes,
                           .idle_timeout_ms = cfg->limits.idle_timeout_ms,
                           .request_timeout_ms = cfg->limits.request_timeout_ms,
                           .reuseport = reuseport,
                           .exclusive = exclusive,
                           .tls = cfg->tls.ctx,
                           .conn_gauge = &r->ctr->connections,
                           .on_headers = on_headers,
                           .on_request = on_request,
                           .arg = r};
    r->server = hr_server_open(r->loop, &so, err, errlen);
    if (!r->server) return -1;
    r->admin_apart = cfg->admin_host != NULL;
    if (cfg->admin_host && (!r->front || r->index == 0)) {
        /* plain HTTP, the same limits, no TLS, not in hookrouter_connections; one worker is
         * enough (every figure is summed over the workers) */
        hr_server_opts_t ao = so;
        ao.host = cfg->admin_host;
        ao.port = cfg->admin_port;
        ao.tls = NULL;
        ao.conn_gauge = NULL;
        ao.on_headers = on_admin_headers;
        ao.on_request = on_admin_request;
        ao.reuseport = ao.exclusive = false;
        r->admin = hr_server_open(r->loop, &ao, err, errlen);
        if (!r->admin) {
            hr_server_close(r->server, NULL, NULL);
            r->server = NULL;
            return -1;
        }
        bool v6 = strchr(cfg->admin_host, ':') != NULL;
        hr_log_info("admin paths (/metrics, /healthz, /readyz) on %s%s%s:%d", v6 ? "[" : "",
                    cfg->admin_host, v6 ? "]" : "", hr_server_port(r->admin));
    }
    hr_http_client_opts_t ho = {.max_conns_per_host = REPLY_CONNS_PER_HOST};
    r->replies = hr_http_client_open(r->loop, &ho);
    uv_timer_init(r->loop, &r->reload_timer);
    r->reload_timer.data = r;
    uv_timer_init(r->loop, &r->stop_timer);
    r->stop_timer.data = r;
    return 0;
}

hr_router_t *hr_router_start(uv_loop_t *loop, hr_ruleset_t *rs, char *err, size_t errlen)
{
    const hr_config_t *cfg = hr_ruleset_config(rs);
    hr_router_t *r = router_new(loop, rs);
    r->delivery = hr_delivery_open(loop, cfg, err, errlen);
    if (!r->delivery) {
        router_free_failed(r);
        return NULL;
    }
    if (router_listen(r, cfg->listen_port, false, false, err, errlen) != 0) {
        hr_delivery_close(r->delivery, NULL, NULL);
        router_free_failed(r);
        return NULL;
    }
    return r;
}

hr_router_t *hr_router_start_worker(uv_loop_t *loop, hr_ruleset_t *rs, const hr_router_worker_t *w,
                                    char *err, size_t errlen)
{
    hr_router_t *r = router_new(loop, rs);
    r->ctr = &w->counters[w->index];
    atomic_store_explicit(&r->ctr->loaded_ms, r->loaded_ms, memory_order_relaxed);
    r->all = w->counters;
    r->nall = w->nworkers;
    r->front = true;
    r->index = w->index;
    r->delivery = w->delivery;
    if (router_listen(r, w->port, true, w->exclusive, err, errlen) != 0) {
        hr_delivery_close(r->delivery, NULL, NULL);
        router_free_failed(r);
        return NULL;
    }
    return r;
}

/* One part of the router finished closing; the last one frees the router. */
static void release(hr_router_t *r)
{
    if (--r->closing_handles > 0) return;
    void (*cb)(void *) = r->stop_cb;
    void *arg = r->stop_arg;
    hr_files_destroy(r->files);
    hr_ruleset_unref(r->rs);
    free(r->config_path);
    free(r->last_reload_error);
    hr_router_counters_free(&r->own); /* a front worker's are the workers' */
    hr_buf_free(&r->labels);
    free(r);
    if (cb) cb(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    release(h->data);
}

static void on_part_closed(void *arg)
{
    release(arg);
}

/* Close every part; each of the five (six with an admin server) closes ends in one
 * release(). */
static void router_close(hr_router_t *r)
{
    r->closing_handles = r->admin ? 6 : 5;
    if (r->admin) hr_server_close(r->admin, on_part_closed, r);
    uv_close((uv_handle_t *)&r->reload_timer, on_handle_closed);
    uv_close((uv_handle_t *)&r->stop_timer, on_handle_closed);
    hr_server_close(r->server, on_part_closed, r);
    hr_delivery_close(r->delivery, on_part_closed, r);   /* no request is left to answer */
    hr_http_client_close(r->replies, on_part_closed, r); /* late answers are cancelled */
}

static void on_delivery_drained(void *arg)
{
    router_close(arg);
}

/* Poll until every connection has finished its request (requests still arriving count: the
 * sender has no retry) or the grace period is over, then drain the delivery side for what is
 * left of the grace period (a front worker's hands the deadline to the delivery loop). The
 * outbox keeps delivering all along. */
static void on_stop_tick(uv_timer_t *t)
{
    hr_router_t *r = t->data;
    uint64_t now = hr_wall_ms();
    bool busy = hr_server_inflight(r->server) > 0 || hr_server_connections(r->server) > 0;
    if (busy && now < r->stop_deadline_ms) return;
    if (hr_server_inflight(r->server) > 0) return; /* a rule still runs: never cut it off */
    uv_timer_stop(t);
    if (busy)
        hr_log_warn("shutdown: grace period over, closing %zu connections",
                    hr_server_connections(r->server));
    hr_delivery_drain(r->delivery, r->stop_deadline_ms, on_delivery_drained, r);
}

void hr_router_stop(hr_router_t *r, void (*cb)(void *arg), void *arg)
{
    if (r->stopping) return;
    r->stopping = true;
    r->stop_cb = cb;
    r->stop_arg = arg;
    r->stop_deadline_ms = hr_wall_ms() + hr_ruleset_config(r->rs)->shutdown_grace_ms;
    uv_timer_stop(&r->reload_timer);
    hr_log_info("shutdown: no longer accepting connections");
    hr_server_stop_accepting(r->server);
    if (r->admin) hr_server_stop_accepting(r->admin);
    if (r->nwaiting)
        hr_log_info("shutdown: %zu rules waiting in request() get their fallback now", r->nwaiting);
    while (r->waiting) /* each call unlinks the head */
        event_give_up(r->waiting, "shutting down while the rule waited in request()", 503);
    uv_timer_start(&r->stop_timer, on_stop_tick, 0, 10);
}
