/* The in-memory outbox: delivery, retries, dead letters and drain (see include/hr/outbox.h).
 *
 * Each forward action gets an item that lives until the action is delivered or
 * dead-lettered. An item is either in flight (its HTTP request is pending in the client) or
 * waiting for its next attempt. Waiting items sit in one binary min-heap ordered by due time,
 * served by a single uv_timer armed for the earliest one, so thousands of retries cost one
 * timer. Write actions never wait: they are appended at once.
 *
 * Backoff: min(retry_max_ms, retry_base_ms * 2^(attempts-1)), then a uniform jitter between
 * 50% and 100% of that (so a retry never fires immediately after a failure but clients do
 * not synchronise). A Retry-After header (delta seconds or an HTTP date) on 429/503 replaces
 * the backoff, capped at retry_max_ms.
 *
 * Drain: from hr_outbox_drain on, a retry due after the deadline is dead-lettered at once
 * (reason "shutdown"). When nothing is pending, or at the deadline, every waiting item is
 * dead-lettered, the HTTP client is closed (its in-flight requests come back with
 * UV_ECANCELED and are dead-lettered too), and the drain callback runs once the client is
 * gone. */
#include "hr/outbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "hr/http_client.h"
#include "hr/log.h"

#define HR_OUTBOX_DEF_BASE_MS 500
#define HR_OUTBOX_DEF_MAX_MS  60000

/* One forward action on its way. */
typedef struct hr_ob_item {
    hr_outbox_t *o;          /* owner */
    hr_action_t *a;          /* the action, owned */
    struct hr_ob_item *prev; /* in o->items */
    struct hr_ob_item *next; /* in o->items */
    bool in_flight;          /* an HTTP request is pending */
    size_t heap_idx;         /* index in o->heap while waiting */
    uint64_t due;            /* uv_now of the next attempt while waiting */
} hr_ob_item_t;

struct hr_outbox {
    uv_loop_t *loop;          /* the loop */
    hr_files_t *files;        /* shared file table (not owned) */
    char *dead_letters;       /* dead-letter path, owned; NULL: log only */
    hr_outbox_opts_t opts;    /* with defaults */
    hr_http_client_t *http;   /* NULL once closed */
    hr_ob_item_t *items;      /* every unfinished forward (waiting or in flight) */
    hr_ob_item_t **heap;      /* waiting items, min-heap on due */
    size_t nheap;             /* items in heap */
    size_t heap_cap;          /* slots allocated */
    uv_timer_t retry_timer;   /* armed for heap[0] */
    uv_timer_t drain_timer;   /* grace period end, or 0 when drained early */
    hr_outbox_stats_t st;     /* counters */
    hr_buf_t line;            /* scratch for dead-letter lines */
    bool draining;            /* hr_outbox_drain was called */
    bool drain_finished;      /* finish_drain ran */
    uint64_t drain_deadline;  /* uv_now after which nothing is waited for */
    void (*drain_cb)(void *); /* run once drained */
    void *drain_arg;          /* for drain_cb */
    bool closing;             /* hr_outbox_close was called */
    int open_handles;         /* timers + http client not yet closed */
    void (*close_cb)(void *); /* run once freed */
    void *close_arg;          /* for close_cb */
};

static void on_retry_timer(uv_timer_t *t);
static void start_attempt(hr_ob_item_t *it);

/* ---- Min-heap of waiting items --------------------------------------------------------- */

static void heap_swap(hr_outbox_t *o, size_t i, size_t j)
{
    hr_ob_item_t *t = o->heap[i];
    o->heap[i] = o->heap[j];
    o->heap[j] = t;
    o->heap[i]->heap_idx = i;
    o->heap[j]->heap_idx = j;
}

static void heap_up(hr_outbox_t *o, size_t i)
{
    while (i > 0 && o->heap[(i - 1) / 2]->due > o->heap[i]->due) {
        heap_swap(o, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(hr_outbox_t *o, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < o->nheap && o->heap[l]->due < o->heap[m]->due) m = l;
        if (r < o->nheap && o->heap[r]->due < o->heap[m]->due) m = r;
        if (m == i) return;
        heap_swap(o, i, m);
        i = m;
    }
}

static void heap_push(hr_outbox_t *o, hr_ob_item_t *it)
{
    if (o->nheap == o->heap_cap) {
        o->heap_cap = o->heap_cap ? o->heap_cap * 2 : 64;
        o->heap = hr_xrealloc(o->heap, o->heap_cap * sizeof *o->heap);
    }
    it->heap_idx = o->nheap;
    o->heap[o->nheap++] = it;
    heap_up(o, it->heap_idx);
}

/* Remove item it (which must be in the heap). */
static void heap_remove(hr_outbox_t *o, hr_ob_item_t *it)
{
    size_t i = it->heap_idx;
    o->nheap--;
    if (i != o->nheap) {
        o->heap[i] = o->heap[o->nheap];
        o->heap[i]->heap_idx = i;
        heap_down(o, i);
        heap_up(o, i);
    }
}

/* Arm the retry timer for the earliest waiting item, or stop it. */
static void rearm(hr_outbox_t *o)
{
    if (o->closing) return;
    if (o->nheap == 0) {
        uv_timer_stop(&o->retry_timer);
        return;
    }
    uint64_t now = uv_now(o->loop);
    uint64_t due = o->heap[0]->due;
    uv_timer_start(&o->retry_timer, on_retry_timer, due > now ? due - now : 0, 0);
}

/* ---- Outcomes -------------------------------------------------------------------------- */

static void maybe_drained(hr_outbox_t *o);

/* Append the dead-letter line of a to the dead-letter file; if that fails, log the line
 * itself so it is not lost. Does not free a. */
static void write_dead_letter(hr_outbox_t *o, const hr_action_t *a, const char *reason)
{
    hr_buf_reset(&o->line);
    hr_deadletter_for_action(&o->line, a, reason);
    char err[256];
    if (!o->dead_letters) {
        hr_log_error("dead-letter file not configured; lost line: %s", o->line.data);
        return;
    }
    if (hr_files_append(o->files, o->dead_letters, o->line.data, o->line.len, err, sizeof err) < 0)
        hr_log_error("dead-letter file: %s; lost line: %s", err, o->line.data);
}

/* Dead-letter a (log, write the line, count) and free it. */
static void dead_action(hr_outbox_t *o, hr_action_t *a, const char *reason)
{
    char what[200];
    if (a->last_status > 0)
        snprintf(what, sizeof what, "status=%d", a->last_status);
    else
        snprintf(what, sizeof what, "error=%s", a->last_error[0] ? a->last_error : "none");
    if (a->kind == HR_ACTION_WRITE)
        hr_log_error("dead-letter id=%s file=%s error=%s attempts=%u reason=%s", a->event_id,
                     a->name ? a->name : "-", a->last_error, (unsigned)a->attempts, reason);
    else
        hr_log_error("dead-letter id=%s target=%s %s attempts=%u reason=%s", a->event_id,
                     a->name ? a->name : "-", what, (unsigned)a->attempts, reason);
    write_dead_letter(o, a, reason);
    o->st.dead++;
    hr_action_free(a);
}

/* Finish item it (no longer waiting or in flight): unlink, free it (not its action, which
 * is returned) and see whether a drain is complete. */
static hr_action_t *item_finish(hr_ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    hr_action_t *a = it->a;
    if (it->prev)
        it->prev->next = it->next;
    else
        o->items = it->next;
    if (it->next) it->next->prev = it->prev;
    o->st.pending--;
    free(it);
    return a;
}

/* Copy msg into a->last_error, truncated to fit. */
static void set_last_error(hr_action_t *a, const char *msg)
{
    size_t n = strlen(msg);
    if (n >= sizeof a->last_error) n = sizeof a->last_error - 1;
    memcpy(a->last_error, msg, n);
    a->last_error[n] = '\0';
}

static uint64_t ms_since(uint64_t wall_ms)
{
    uint64_t now = hr_wall_ms();
    return now > wall_ms ? now - wall_ms : 0;
}

/* ---- Forward delivery ------------------------------------------------------------------ */

/* Backoff before the attempt after attempt n (n >= 1), with jitter in [50%, 100%]. */
static uint64_t backoff_ms(const hr_outbox_t *o, uint32_t n)
{
    uint64_t b = o->opts.retry_base_ms;
    for (uint32_t i = 1; i < n && b < o->opts.retry_max_ms; i++)
        b *= 2;
    if (b > o->opts.retry_max_ms) b = o->opts.retry_max_ms;
    uint64_t half = b / 2;
    return half + hr_rand64() % (b - half + 1);
}

/* Parse a Retry-After value: delta seconds or an HTTP date (IMF-fixdate, RFC 850 or asctime).
 * Returns 0 and sets *ms (0 for a date in the past), or -1. */
static int parse_retry_after(const char *v, uint64_t *ms)
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
        uint64_t at = (uint64_t)t * 1000, now = hr_wall_ms();
        *ms = at > now ? at - now : 0;
        return 0;
    }
    return -1;
}

/* The wait before the next attempt of a after its last answer res (NULL for a transport
 * error). */
static uint64_t next_wait(const hr_outbox_t *o, const hr_action_t *a, const hr_http_response_t *res)
{
    if (res && (res->status == 429 || res->status == 503)) {
        for (size_t i = 0; i < res->nheaders; i++) {
            uint64_t ms;
            if (strcmp(res->headers[i].name, "retry-after") == 0 &&
                parse_retry_after(res->headers[i].value, &ms) == 0)
                return ms < o->opts.retry_max_ms ? ms : o->opts.retry_max_ms;
        }
    }
    return backoff_ms(o, a->attempts);
}

/* Completion of one attempt: delivered, scheduled again, or dead-lettered. */
static void on_http_done(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    hr_ob_item_t *it = arg;
    hr_outbox_t *o = it->o;
    hr_action_t *a = it->a;
    it->in_flight = false;
    if (err == 0) {
        a->last_status = res->status;
        a->last_error[0] = '\0';
    } else {
        a->last_status = 0;
        set_last_error(a, errmsg ? errmsg : uv_strerror(err));
    }
    char what[200];
    if (err == 0)
        snprintf(what, sizeof what, "status=%d", res->status);
    else
        snprintf(what, sizeof what, "error=%s", a->last_error);

    if (err == 0 && res->status >= 200 && res->status < 300) {
        hr_log_info("delivered id=%s type=%s store=%s action=forward target=%s status=%d "
                    "attempts=%u ms=%llu",
                    a->event_id, a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                    a->name ? a->name : "-", res->status, (unsigned)a->attempts,
                    (unsigned long long)ms_since(a->accepted_ms));
        o->st.delivered++;
        hr_action_free(item_finish(it));
        maybe_drained(o);
        return;
    }
    if (err == UV_ECANCELED && (o->draining || o->closing)) {
        dead_action(o, item_finish(it), "shutdown");
        maybe_drained(o);
        return;
    }
    bool retriable = err != 0 || res->status == 408 || res->status == 429 || res->status >= 500;
    if (!retriable) {
        dead_action(o, item_finish(it), "rejected");
        maybe_drained(o);
        return;
    }
    if (a->attempts >= a->max_attempts) {
        dead_action(o, item_finish(it), "attempts exhausted");
        maybe_drained(o);
        return;
    }
    uint64_t wait = next_wait(o, a, err == 0 ? res : NULL);
    uint64_t now = uv_now(o->loop);
    if (o->draining && now + wait > o->drain_deadline) {
        dead_action(o, item_finish(it), "shutdown");
        maybe_drained(o);
        return;
    }
    hr_log_warn("retry id=%s target=%s %s attempt=%u/%u in_ms=%llu", a->event_id,
                a->name ? a->name : "-", what, (unsigned)a->attempts, (unsigned)a->max_attempts,
                (unsigned long long)wait);
    o->st.retried++;
    it->due = now + wait;
    heap_push(o, it);
    rearm(o);
}

/* Send the next attempt of it. A URL the client refuses dead-letters it at once. */
static void start_attempt(hr_ob_item_t *it)
{
    hr_outbox_t *o = it->o;
    hr_action_t *a = it->a;
    a->attempts++;
    hr_http_out_t req = {
        .method = a->method ? a->method : "POST",
        .url = a->url ? a->url : "",
        .headers = a->headers,
        .nheaders = a->nheaders,
        .body = a->body,
        .body_len = a->body_len,
        .timeout_ms = a->timeout_ms ? a->timeout_ms : 10000,
    };
    int rc = o->http ? hr_http_client_send(o->http, &req, on_http_done, it) : UV_ECANCELED;
    if (rc < 0) {
        a->last_status = 0;
        set_last_error(a, rc == UV_EINVAL ? "invalid URL" : uv_strerror(rc));
        dead_action(o, item_finish(it), rc == UV_EINVAL ? "invalid url" : "shutdown");
        maybe_drained(o);
        return;
    }
    it->in_flight = true;
}

/* The retry timer: start every attempt that is due, then re-arm for the next one. */
static void on_retry_timer(uv_timer_t *t)
{
    hr_outbox_t *o = t->data;
    uint64_t now = uv_now(o->loop);
    while (o->nheap > 0 && o->heap[0]->due <= now) {
        hr_ob_item_t *it = o->heap[0];
        heap_remove(o, it);
        start_attempt(it);
    }
    rearm(o);
}

/* ---- Write delivery -------------------------------------------------------------------- */

/* Append a write action's line to its file now; delivered or dead-lettered. Frees a. */
static void deliver_write(hr_outbox_t *o, hr_action_t *a)
{
    char err[256];
    a->attempts = 1;
    if (!a->file_path) {
        set_last_error(a, "no file path");
        dead_action(o, a, "write failed");
        return;
    }
    if (hr_files_append(o->files, a->file_path, a->body ? a->body : "", a->body_len, err,
                        sizeof err) < 0) {
        set_last_error(a, err);
        dead_action(o, a, "write failed");
        return;
    }
    hr_log_info("delivered id=%s type=%s store=%s action=write file=%s ms=%llu", a->event_id,
                a->event_type ? a->event_type : "-", a->store ? a->store : "-",
                a->name ? a->name : "-", (unsigned long long)ms_since(a->accepted_ms));
    o->st.delivered++;
    hr_action_free(a);
}

/* ---- Drain and close ------------------------------------------------------------------- */

static void on_http_closed(void *arg);

/* End of the drain: dead-letter every waiting item, close the HTTP client (its in-flight
 * requests come back cancelled and are dead-lettered); drain_cb runs in on_http_closed. */
static void finish_drain(hr_outbox_t *o)
{
    if (o->drain_finished) return;
    o->drain_finished = true;
    uv_timer_stop(&o->drain_timer);
    while (o->nheap > 0) {
        hr_ob_item_t *it = o->heap[0];
        heap_remove(o, it);
        dead_action(o, item_finish(it), "shutdown");
    }
    uv_timer_stop(&o->retry_timer);
    if (o->http) {
        hr_http_client_t *h = o->http;
        hr_http_client_close(h, on_http_closed, o);
    }
}

static void on_drain_timer(uv_timer_t *t)
{
    finish_drain(t->data);
}

/* While draining, once nothing is pending, finish from a fresh loop callback (never from
 * inside the HTTP client's callback that ended the last item). */
static void maybe_drained(hr_outbox_t *o)
{
    if (o->draining && !o->drain_finished && o->st.pending == 0)
        uv_timer_start(&o->drain_timer, on_drain_timer, 0, 0);
}

static void outbox_maybe_free(hr_outbox_t *o);

/* The HTTP client is gone: the drain (or close) can complete. */
static void on_http_closed(void *arg)
{
    hr_outbox_t *o = arg;
    o->http = NULL;
    o->open_handles--;
    if (o->drain_cb && o->drain_finished) {
        void (*cb)(void *) = o->drain_cb;
        o->drain_cb = NULL;
        cb(o->drain_arg);
    }
    outbox_maybe_free(o);
}

static void on_timer_close(uv_handle_t *h)
{
    hr_outbox_t *o = h->data;
    o->open_handles--;
    outbox_maybe_free(o);
}

/* Free the outbox once it is closing and every handle (and the HTTP client) is gone. */
static void outbox_maybe_free(hr_outbox_t *o)
{
    if (!o->closing || o->open_handles > 0) return;
    void (*cb)(void *) = o->close_cb;
    void *arg = o->close_arg;
    free(o->heap);
    free(o->dead_letters);
    hr_buf_free(&o->line);
    free(o);
    if (cb) cb(arg);
}

/* ---- Public API ------------------------------------------------------------------------ */

/* Make sure a forward carries X-Hookrouter-Event-Id (the rule engine normally adds it; this
 * covers actions built elsewhere). */
static void add_event_id_header(hr_action_t *a)
{
    for (size_t i = 0; i < a->nheaders; i++)
        if (strcasecmp(a->headers[i].name, "X-Hookrouter-Event-Id") == 0) return;
    if (a->event_id[0]) hr_action_add_header(a, "X-Hookrouter-Event-Id", a->event_id);
}

/* Create an outbox on loop writing through files (shared, must outlive it). opts may be NULL;
 * zero fields take defaults. Never NULL. */
hr_outbox_t *hr_outbox_create(uv_loop_t *loop, hr_files_t *files, const hr_outbox_opts_t *opts)
{
    hr_outbox_t *o = hr_xcalloc(1, sizeof *o);
    o->loop = loop;
    o->files = files;
    if (opts) o->opts = *opts;
    o->dead_letters = o->opts.dead_letters ? hr_xstrdup(o->opts.dead_letters) : NULL;
    o->opts.dead_letters = NULL;
    if (!o->opts.retry_base_ms) o->opts.retry_base_ms = HR_OUTBOX_DEF_BASE_MS;
    if (!o->opts.retry_max_ms) o->opts.retry_max_ms = HR_OUTBOX_DEF_MAX_MS;
    if (o->opts.retry_max_ms < o->opts.retry_base_ms) o->opts.retry_max_ms = o->opts.retry_base_ms;
    hr_http_client_opts_t ho = {.max_conns_per_host = o->opts.max_conns_per_host};
    o->http = hr_http_client_create(loop, &ho);
    uv_timer_init(loop, &o->retry_timer);
    uv_timer_init(loop, &o->drain_timer);
    o->retry_timer.data = o;
    o->drain_timer.data = o;
    o->open_handles = 3; /* two timers + the HTTP client */
    return o;
}

/* Replace the dead-letter path (copied). */
void hr_outbox_set_dead_letters(hr_outbox_t *o, const char *path)
{
    free(o->dead_letters);
    o->dead_letters = path ? hr_xstrdup(path) : NULL;
}

/* Take every action of list. Writes are appended now; forwards start their first attempt
 * (the HTTP client sends from the loop). After a drain started, everything is dead-lettered
 * at once with reason "shutdown". Returns 0. */
int hr_outbox_push(hr_outbox_t *o, hr_action_t *list)
{
    while (list) {
        hr_action_t *a = list;
        list = a->next;
        a->next = NULL;
        o->st.accepted++;
        if (o->draining || o->closing) {
            set_last_error(a, "shutting down");
            dead_action(o, a, "shutdown");
            continue;
        }
        if (a->kind == HR_ACTION_WRITE) {
            deliver_write(o, a);
            continue;
        }
        if (a->max_attempts < 1) a->max_attempts = 1;
        add_event_id_header(a);
        hr_ob_item_t *it = hr_xcalloc(1, sizeof *it);
        it->o = o;
        it->a = a;
        it->next = o->items;
        if (o->items) o->items->prev = it;
        o->items = it;
        o->st.pending++;
        start_attempt(it);
    }
    return 0;
}

void hr_outbox_stats(const hr_outbox_t *o, hr_outbox_stats_t *st)
{
    *st = o->st;
}

/* Start the shutdown drain; see the file comment. cb runs once, from the loop. */
void hr_outbox_drain(hr_outbox_t *o, uint64_t grace_ms, void (*cb)(void *arg), void *arg)
{
    if (o->draining) return;
    o->draining = true;
    o->drain_cb = cb;
    o->drain_arg = arg;
    o->drain_deadline = uv_now(o->loop) + grace_ms;
    /* Retries that would fire after the deadline are not waited for. */
    for (size_t i = 0; i < o->nheap;) {
        hr_ob_item_t *it = o->heap[i];
        if (it->due > o->drain_deadline) {
            heap_remove(o, it);
            dead_action(o, item_finish(it), "shutdown");
            i = 0; /* the heap was reshuffled */
        } else {
            i++;
        }
    }
    rearm(o);
    if (o->st.pending == 0)
        uv_timer_start(&o->drain_timer, on_drain_timer, 0, 0);
    else
        uv_timer_start(&o->drain_timer, on_drain_timer, grace_ms, 0);
}

/* Free the outbox from the loop, then cb(arg). Without a completed drain, what is still
 * pending is dead-lettered ("shutdown") first. */
void hr_outbox_close(hr_outbox_t *o, void (*cb)(void *arg), void *arg)
{
    if (o->closing) return;
    o->draining = true;
    o->drain_cb = NULL;
    finish_drain(o);
    o->closing = true;
    o->close_cb = cb;
    o->close_arg = arg;
    uv_close((uv_handle_t *)&o->retry_timer, on_timer_close);
    uv_close((uv_handle_t *)&o->drain_timer, on_timer_close);
}
