/* Unit tests for src/handoff.c: front-worker threads, each with its own loop and port, calling
 * the delivery side on the main thread's loop; first a scripted delivery side (it records
 * what arrives, on which thread and in which order, and answers as the push's body says),
 * then the real direct delivery (outbox and spool in a temporary folder). */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "hr/config.h"
#include "hr/delivery.h"
#include "hr/handoff.h"
#include "hr/log.h"

#define NPUSH       20 /* pushes per worker */
#define MAX_WORKERS 2

static char dir[256];           /* the test's folder (mkdtemp) */
static uv_loop_t dloop;         /* the delivery loop (the main thread's) */
static uv_thread_t main_thread; /* its thread */

static void count_cb(void *arg)
{
    (*(int *)arg)++;
}

/* A write action whose body (the line) is body. */
static hr_action_t *write_action(const char *path, const char *body)
{
    hr_action_t *a = hr_action_new(HR_ACTION_WRITE);
    hr_id_new(a->event_id);
    a->event_type = hr_xstrdup("thing.happened");
    a->name = hr_xstrdup("out");
    a->file_path = hr_xstrdup(path);
    a->accepted_ms = hr_wall_ms();
    a->body = hr_xstrdup(body);
    a->body_len = strlen(body);
    return a;
}

/* ---- A scripted delivery side --------------------------------------------------------- */

/* A push whose body starts with "refuse" is refused in the call (-ENOSPC), one starting with
 * "eio" is answered -EIO later, any other 0 later. "Later" is the next flush (every loop
 * iteration of the main thread's). */
typedef struct {
    void (*cb)(void *arg, int status);
    void *arg;
    int status;
} later_t;

static struct {
    hr_delivery_t base;
    char bodies[MAX_WORKERS * NPUSH][32]; /* every push's body, in arrival order */
    int npush;
    later_t later[MAX_WORKERS * NPUSH];
    int nlater;
    const hr_config_t *reloaded[MAX_WORKERS];
    int nreload;
    bool off_thread; /* a call came on another thread than the delivery loop's */
} fake;

static void fake_check_thread(void)
{
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, &main_thread)) fake.off_thread = true;
}

static int fake_push(hr_delivery_t *d, hr_action_t *list, void (*cb)(void *arg, int status),
                     void *arg)
{
    fake_check_thread();
    CHECK(list && !list->next);
    snprintf(fake.bodies[fake.npush++], sizeof fake.bodies[0], "%s", list->body);
    bool refuse = strncmp(list->body, "refuse", 6) == 0;
    bool eio = strncmp(list->body, "eio", 3) == 0;
    hr_action_list_free(list);
    if (refuse) return -ENOSPC;
    fake.later[fake.nlater++] = (later_t){cb, arg, eio ? -EIO : 0};
    return 0;
}

static void fake_flush(void)
{
    int n = fake.nlater;
    fake.nlater = 0;
    for (int i = 0; i < n; i++)
        fake.later[i].cb(fake.later[i].arg, fake.later[i].status);
}

/* accepted: pushes seen so far; the targets JSON says the same. */
static void fake_stats(hr_delivery_t *d, hr_delivery_stats_cb cb, void *arg)
{
    fake_check_thread();
    hr_outbox_stats_t st = {.accepted = (uint64_t)fake.npush, .pending = 7};
    char tj[64];
    snprintf(tj, sizeof tj, "{\"fake\":{\"pushes\":%d}}", fake.npush);
    cb(arg, &st, tj);
}

static void fake_reload(hr_delivery_t *d, const hr_config_t *cfg, void (*cb)(void *arg), void *arg)
{
    fake_check_thread();
    if (fake.nreload < MAX_WORKERS) fake.reloaded[fake.nreload] = cfg;
    fake.nreload++;
    cb(arg);
}

/* The hand-off never drains or closes its target. */
static void fake_drain(hr_delivery_t *d, uint64_t deadline_ms, void (*cb)(void *arg), void *arg)
{
    CHECK(!"the hand-off drained its target");
}

static void fake_close(hr_delivery_t *d, void (*cb)(void *arg), void *arg)
{
    CHECK(!"the hand-off closed its target");
}

static const hr_delivery_ops_t FAKE_OPS = {.push = fake_push,
                                           .stats = fake_stats,
                                           .reload = fake_reload,
                                           .drain = fake_drain,
                                           .close = fake_close};

/* ---- Front workers ---------------------------------------------------------------------- */

/* One worker thread. Everything but `issued` and `done` belongs to its thread until the main
 * thread has joined it. */
typedef struct worker {
    hr_handoff_t *h;
    int id;
    uv_thread_t thread; /* for the join (main thread) */
    uv_thread_t self;   /* the same, as the worker's thread sees itself */
    /* makes the calls, then closes (or leaves that to a callback) */
    void (*script)(struct worker *w, hr_delivery_t *port);
    const char *path;    /* real outbox: the file to write to */
    bool stats_last;     /* real outbox: once every push is answered, stats, then close */
    atomic_bool issued;  /* the script has made its calls */
    atomic_bool done;    /* the loop has ended */
    int status[NPUSH];   /* each push's answer */
    int npushed;         /* push callbacks run */
    int nstats, nreload; /* stats and reload callbacks run */
    bool off_thread;     /* a callback ran on another thread */
    uint64_t accepted;   /* stats: what came back */
    char targets[64];    /* stats: targets JSON */
    int calls_at_close;  /* callbacks run when the close callback ran (-1: it never ran) */
} worker_t;

typedef struct {
    worker_t *w;
    hr_delivery_t *port;
    int i; /* which push */
} push_arg_t;

static void worker_check_thread(worker_t *w)
{
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, &w->self)) w->off_thread = true;
}

static void on_worker_stats(void *arg, const hr_outbox_stats_t *st, const char *targets_json)
{
    worker_t *w = arg;
    worker_check_thread(w);
    w->nstats++;
    w->accepted = st->accepted;
    snprintf(w->targets, sizeof w->targets, "%s", targets_json);
}

static void on_port_closed(void *arg);

/* stats_last: the numbers are in, close. */
static void on_last_stats(void *arg, const hr_outbox_stats_t *st, const char *targets_json)
{
    push_arg_t *pa = arg;
    on_worker_stats(pa->w, st, targets_json);
    hr_delivery_close(pa->port, on_port_closed, pa->w);
    free(pa);
}

static void on_worker_pushed(void *arg, int status)
{
    push_arg_t *pa = arg;
    worker_t *w = pa->w;
    worker_check_thread(w);
    w->status[pa->i] = status;
    w->npushed++;
    if (w->stats_last && w->npushed == NPUSH) {
        hr_delivery_stats(pa->port, on_last_stats, pa);
        return;
    }
    free(pa);
}

static void on_worker_reloaded(void *arg)
{
    worker_t *w = arg;
    worker_check_thread(w);
    w->nreload++;
}

static void on_port_closed(void *arg)
{
    worker_t *w = arg;
    worker_check_thread(w);
    w->calls_at_close = w->npushed + w->nstats + w->nreload;
}

static void push_body(worker_t *w, hr_delivery_t *port, int i, const char *body)
{
    push_arg_t *pa = hr_xmalloc(sizeof *pa);
    *pa = (push_arg_t){w, port, i};
    /* a port always takes the push: a refusal comes back as the callback's status */
    CHECK_INT_EQ(hr_delivery_push(port, write_action(w->path ? w->path : "/nonexistent", body),
                                  on_worker_pushed, pa),
                 0);
}

static void worker_main(void *arg)
{
    worker_t *w = arg;
    w->self = uv_thread_self();
    uv_loop_t loop;
    uv_loop_init(&loop);
    hr_delivery_t *port = hr_handoff_port_open(w->h, &loop);
    w->script(w, port);
    atomic_store(&w->issued, true);
    uv_run(&loop, UV_RUN_DEFAULT); /* until the port is closed: its close waits for the answers */
    CHECK_INT_EQ(uv_loop_close(&loop), 0);
    atomic_store(&w->done, true);
}

static void start_worker(worker_t *w, hr_handoff_t *h, int id,
                         void (*script)(worker_t *, hr_delivery_t *))
{
    w->h = h;
    w->id = id;
    w->script = script;
    w->calls_at_close = -1;
    CHECK_INT_EQ(uv_thread_create(&w->thread, worker_main, w), 0);
}

static void wait_issued(worker_t *ws, int n)
{
    for (int i = 0; i < n; i++)
        while (!atomic_load(&ws[i].issued))
            uv_sleep(1);
}

static void on_tick(uv_timer_t *t)
{
    (void)t; /* keeps the delivery loop turning while the workers run */
}

/* Run the delivery loop (flushing the scripted side's answers if flush) until every worker's
 * loop has ended, then join them. Returns false on a time-out. */
static bool run_until_done(worker_t *ws, int n, bool flush)
{
    uv_timer_t tick;
    uv_timer_init(&dloop, &tick);
    uv_timer_start(&tick, on_tick, 1, 1);
    uint64_t until = uv_now(&dloop) + 10000;
    bool all = false;
    while (!all && uv_now(&dloop) < until) {
        uv_run(&dloop, UV_RUN_ONCE);
        if (flush) fake_flush();
        all = true;
        for (int i = 0; i < n; i++)
            all &= atomic_load(&ws[i].done);
    }
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&dloop, UV_RUN_NOWAIT);
    for (int i = 0; all && i < n; i++)
        uv_thread_join(&ws[i].thread);
    return all;
}

/* ---- Tests with the scripted delivery side ------------------------------------------- */

static const hr_config_t *const CFG_SENTINEL = (const hr_config_t *)&fake; /* never read */

/* NPUSH pushes ("w<id>-<i>"; every 5th is refused, every 7th an I/O error), a stats call, a
 * reload and two drains, then close at once: all of it still in flight. */
static void script_fake(worker_t *w, hr_delivery_t *port)
{
    for (int i = 0; i < NPUSH; i++) {
        char body[32];
        snprintf(body, sizeof body, "%sw%d-%02d",
                 i % 5 == 4   ? "refuse-"
                 : i % 7 == 6 ? "eio-"
                              : "",
                 w->id, i);
        push_body(w, port, i, body);
    }
    hr_delivery_stats(port, on_worker_stats, w);
    hr_delivery_reload(port, CFG_SENTINEL, on_worker_reloaded, w);
    int drained = 0;
    hr_delivery_drain(port, 2000 + (uint64_t)w->id, count_cb, &drained);
    hr_delivery_drain(port, 1000, count_cb, &drained); /* an earlier one does not win */
    CHECK_INT_EQ(drained, 2); /* a port's drain only hands the deadline over */
    hr_delivery_close(port, on_port_closed, w);
}

static void test_calls_and_answers(void)
{
    memset(&fake, 0, sizeof fake);
    fake.base.ops = &FAKE_OPS;
    hr_handoff_t *h = hr_handoff_open(&dloop, &fake.base);
    CHECK_INT_EQ(hr_handoff_drain_deadline(h), 0);
    worker_t ws[MAX_WORKERS];
    memset(ws, 0, sizeof ws);
    for (int i = 0; i < MAX_WORKERS; i++)
        start_worker(&ws[i], h, i, script_fake);
    /* Every call is queued (and each port closing) before the delivery loop runs at all. */
    wait_issued(ws, MAX_WORKERS);
    CHECK_INT_EQ(fake.npush, 0);
    CHECK(run_until_done(ws, MAX_WORKERS, true));

    CHECK(!fake.off_thread);
    CHECK_INT_EQ(fake.npush, MAX_WORKERS * NPUSH);
    CHECK_INT_EQ(fake.nreload, MAX_WORKERS);
    for (int i = 0; i < MAX_WORKERS && i < fake.nreload; i++)
        CHECK(fake.reloaded[i] == CFG_SENTINEL);
    /* Each worker's pushes arrive in the order it made them. */
    for (int id = 0; id < MAX_WORKERS; id++) {
        char tag[8];
        snprintf(tag, sizeof tag, "w%d-", id);
        int last = -1, seen = 0;
        for (int k = 0; k < fake.npush; k++) {
            const char *p = strstr(fake.bodies[k], tag);
            if (!p) continue;
            int i = atoi(p + strlen(tag));
            CHECK(i > last);
            last = i;
            seen++;
        }
        CHECK_INT_EQ(seen, NPUSH);
    }
    for (int id = 0; id < MAX_WORKERS; id++) {
        worker_t *w = &ws[id];
        CHECK(!w->off_thread);
        CHECK_INT_EQ(w->npushed, NPUSH);
        for (int i = 0; i < NPUSH; i++)
            CHECK_INT_EQ(w->status[i], i % 5 == 4 ? -ENOSPC : i % 7 == 6 ? -EIO : 0);
        /* stats went after this worker's pushes, on the same queue */
        CHECK_INT_EQ(w->nstats, 1);
        CHECK(w->accepted >= NPUSH && w->accepted <= MAX_WORKERS * NPUSH);
        char want[64];
        snprintf(want, sizeof want, "{\"fake\":{\"pushes\":%llu}}",
                 (unsigned long long)w->accepted);
        CHECK_STR_EQ(w->targets, want);
        CHECK_INT_EQ(w->nreload, 1);
        /* closed with everything in flight: the close waited for every answer */
        CHECK_INT_EQ(w->calls_at_close, NPUSH + 2);
    }
    CHECK_INT_EQ(hr_handoff_drain_deadline(h), 2000 + MAX_WORKERS - 1);
    int closed = 0;
    hr_handoff_close(h, count_cb, &closed);
    while (!closed)
        uv_run(&dloop, UV_RUN_ONCE);
}

/* A port opened and closed with nothing sent closes at once. */
static void script_nothing(worker_t *w, hr_delivery_t *port)
{
    hr_delivery_close(port, on_port_closed, w);
}

static void test_close_idle_port(void)
{
    memset(&fake, 0, sizeof fake);
    fake.base.ops = &FAKE_OPS;
    hr_handoff_t *h = hr_handoff_open(&dloop, &fake.base);
    worker_t w;
    memset(&w, 0, sizeof w);
    start_worker(&w, h, 0, script_nothing);
    CHECK(run_until_done(&w, 1, true));
    CHECK_INT_EQ(w.calls_at_close, 0);
    CHECK_INT_EQ(fake.npush, 0);
    int closed = 0;
    hr_handoff_close(h, count_cb, &closed);
    while (!closed)
        uv_run(&dloop, UV_RUN_ONCE);
}

/* ---- The real delivery side ----------------------------------------------------------- */

/* NPUSH write actions "<id>:<i>", then stats once they are all durable, then close. */
static void script_real(worker_t *w, hr_delivery_t *port)
{
    w->stats_last = true;
    for (int i = 0; i < NPUSH; i++) {
        char body[32];
        snprintf(body, sizeof body, "\"%d:%02d\"", w->id, i);
        push_body(w, port, i, body);
    }
}

/* The lines of path, or 0 if it cannot be read. */
static int count_lines(const char *path)
{
    size_t len = 0;
    char *s = hr_read_file(path, &len);
    int n = 0;
    for (size_t i = 0; s && i < len; i++)
        n += s[i] == '\n';
    free(s);
    return n;
}

/* The config dir/hookrouter.lua, written from text and loaded; NULL with err set. */
static hr_config_t *config_from(const char *text, char *err, size_t errlen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/hookrouter.lua", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return NULL;
    fputs(text, f);
    fclose(f);
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(path, &errs);
    snprintf(err, errlen, "%s", errs.n ? errs.msgs[0] : "");
    hr_errors_free(&errs);
    return cfg;
}

static void test_real_outbox(void)
{
    char err[1024];
    hr_config_t *cfg =
        config_from("return { listen = '127.0.0.1:0', tokens = {'t'},\n"
                    "  endpoints = { ['/hook'] = 'thing.happened' }, rules = 'rules',\n"
                    "  spool_dir = 'var/spool', files = { out = { path = 'var/out.jsonl' } } }\n",
                    err, sizeof err);
    CHECK_STR_EQ(err, "");
    CHECK(cfg != NULL);
    if (!cfg) return; /* counted above */
    hr_delivery_t *d = hr_delivery_open(&dloop, cfg, err, sizeof err);
    CHECK_STR_EQ(d ? "" : err, "");
    if (!d) { /* counted above */
        hr_config_free(cfg);
        return;
    }
    hr_handoff_t *h = hr_handoff_open(&dloop, d);
    char path[512];
    snprintf(path, sizeof path, "%s/var/out.jsonl", dir);
    worker_t ws[MAX_WORKERS];
    memset(ws, 0, sizeof ws);
    for (int i = 0; i < MAX_WORKERS; i++) {
        ws[i].path = path;
        start_worker(&ws[i], h, i, script_real);
    }
    CHECK(run_until_done(ws, MAX_WORKERS, false));
    for (int id = 0; id < MAX_WORKERS; id++) {
        worker_t *w = &ws[id];
        CHECK(!w->off_thread);
        CHECK_INT_EQ(w->npushed, NPUSH);
        for (int i = 0; i < NPUSH; i++)
            CHECK_INT_EQ(w->status[i], 0);
        CHECK_INT_EQ(w->nstats, 1);
        /* this worker's pushes were all durable before its stats call went out */
        CHECK(w->accepted >= NPUSH && w->accepted <= MAX_WORKERS * NPUSH);
        CHECK(w->targets[0] == '{');
        CHECK_INT_EQ(w->calls_at_close, NPUSH + 1);
    }
    /* The writes reach the file, each worker's in its order. */
    uint64_t until = uv_now(&dloop) + 10000;
    while (count_lines(path) < MAX_WORKERS * NPUSH && uv_now(&dloop) < until) {
        uv_run(&dloop, UV_RUN_NOWAIT);
        uv_sleep(1);
        uv_update_time(&dloop);
    }
    char *text = hr_read_file(path, NULL);
    CHECK(text != NULL);
    CHECK_INT_EQ(count_lines(path), MAX_WORKERS * NPUSH);
    for (int id = 0; text && id < MAX_WORKERS; id++) {
        const char *at = text;
        for (int i = 0; i < NPUSH; i++) {
            char want[32];
            snprintf(want, sizeof want, "\"%d:%02d\"\n", id, i);
            const char *p = strstr(at, want);
            CHECK(p != NULL);
            if (p) at = p + strlen(want);
        }
    }
    free(text);
    int closed = 0, drained = 0;
    hr_handoff_close(h, count_cb, &closed);
    hr_delivery_drain(d, hr_wall_ms(), count_cb, &drained);
    while (!closed || !drained)
        uv_run(&dloop, UV_RUN_ONCE);
    hr_delivery_close(d, count_cb, &closed);
    while (closed < 2)
        uv_run(&dloop, UV_RUN_ONCE);
    hr_config_free(cfg);
}

int main(void)
{
    hr_log_set_level(HR_LOG_WARN);
    snprintf(dir, sizeof dir, "/tmp/hr-handoff-XXXXXX");
    if (!mkdtemp(dir)) return 2;
    main_thread = uv_thread_self();
    uv_loop_init(&dloop);
    test_calls_and_answers();
    test_close_idle_port();
    test_real_outbox();
    CHECK_INT_EQ(uv_loop_close(&dloop), 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) return 2;
    return CHECK_DONE("test_handoff");
}
