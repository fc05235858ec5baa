/* The hand-off between front workers and the delivery side: two kinds of mutex-protected
 * queues, each drained by a uv_async on the loop that owns it (see handoff.h). */
#include "hr/handoff.h"

#include <stdlib.h>

#include "hr/common.h"

typedef enum { ITEM_PUSH, ITEM_STATS, ITEM_RELOAD } item_kind_t;

typedef struct hr_handoff_port port_t;

/* One call, from the worker to the delivery loop and back. */
typedef struct item {
    struct item *next; /* in the queue it is on */
    port_t *port;      /* where the answer goes */
    item_kind_t kind;
    hr_action_t *actions;   /* PUSH: owned until handed to the delivery side */
    const hr_config_t *cfg; /* RELOAD: the caller keeps it valid until the callback */
    void (*push_cb)(void *arg, int status);
    hr_delivery_stats_cb stats_cb;
    void (*done_cb)(void *arg); /* RELOAD */
    void *arg;
    int status;           /* PUSH: the outbox's verdict */
    hr_outbox_stats_t st; /* STATS */
    hr_buf_t targets;     /* STATS: targets JSON */
} item_t;

/* A FIFO of items under a mutex. */
typedef struct {
    uv_mutex_t lock;
    item_t *head, *tail;
} queue_t;

struct hr_handoff {
    uv_loop_t *loop; /* the delivery loop */
    hr_delivery_t *target;
    uv_async_t async;           /* wakes the delivery loop: queue has items */
    queue_t queue;              /* calls from every worker, in arrival order */
    uint64_t drain_deadline_ms; /* under queue.lock: the latest a port's drain handed over */
    void (*close_cb)(void *arg);
    void *close_arg;
};

struct hr_handoff_port {
    hr_delivery_t base; /* first: the interface */
    hr_handoff_t *h;
    uv_loop_t *loop;    /* the worker's loop */
    uv_async_t async;   /* wakes the worker: queue has answers */
    queue_t queue;      /* answers from the delivery loop */
    size_t outstanding; /* calls made and not yet called back (worker thread only) */
    bool closing;       /* close called */
    void (*close_cb)(void *arg);
    void *close_arg;
};

static void queue_init(queue_t *q)
{
    if (uv_mutex_init(&q->lock) != 0) abort();
    q->head = q->tail = NULL;
}

/* Append it and wake the owner. The wake-up is sent while the lock is held: the owner frees
 * the async handle only after it has taken the lock once more with the queue empty, so a send
 * can never touch a closed handle. */
static void queue_put(queue_t *q, item_t *it, uv_async_t *wake)
{
    it->next = NULL;
    uv_mutex_lock(&q->lock);
    if (q->tail)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    uv_async_send(wake);
    uv_mutex_unlock(&q->lock);
}

/* Take everything queued, oldest first. */
static item_t *queue_take(queue_t *q)
{
    uv_mutex_lock(&q->lock);
    item_t *it = q->head;
    q->head = q->tail = NULL;
    uv_mutex_unlock(&q->lock);
    return it;
}

/* ---------------------------------------------------------------- delivery side */

static void answer(item_t *it)
{
    queue_put(&it->port->queue, it, &it->port->async);
}

static void on_pushed(void *arg, int status)
{
    item_t *it = arg;
    it->status = status;
    answer(it);
}

static void on_stats(void *arg, const hr_outbox_stats_t *st, const char *targets_json)
{
    item_t *it = arg;
    it->st = *st;
    hr_buf_appends(&it->targets, targets_json);
    answer(it);
}

static void on_reloaded(void *arg)
{
    answer(arg);
}

/* Delivery loop: make every queued call, in arrival order. */
static void on_delivery_async(uv_async_t *a)
{
    hr_handoff_t *h = a->data;
    item_t *it = queue_take(&h->queue);
    while (it) {
        item_t *next = it->next;
        switch (it->kind) {
        case ITEM_PUSH: {
            hr_action_t *acts = it->actions;
            it->actions = NULL; /* the delivery side owns them now */
            int rc = hr_delivery_push(h->target, acts, on_pushed, it);
            if (rc < 0) on_pushed(it, rc);
            break;
        }
        case ITEM_STATS: hr_delivery_stats(h->target, on_stats, it); break;
        case ITEM_RELOAD: hr_delivery_reload(h->target, it->cfg, on_reloaded, it); break;
        }
        it = next;
    }
}

hr_handoff_t *hr_handoff_open(uv_loop_t *loop, hr_delivery_t *target)
{
    hr_handoff_t *h = hr_xcalloc(1, sizeof *h);
    h->loop = loop;
    h->target = target;
    queue_init(&h->queue);
    uv_async_init(loop, &h->async, on_delivery_async);
    h->async.data = h;
    return h;
}

static void on_handoff_closed(uv_handle_t *handle)
{
    hr_handoff_t *h = handle->data;
    void (*cb)(void *) = h->close_cb;
    void *arg = h->close_arg;
    uv_mutex_destroy(&h->queue.lock);
    free(h);
    if (cb) cb(arg);
}

void hr_handoff_close(hr_handoff_t *h, void (*cb)(void *arg), void *arg)
{
    h->close_cb = cb;
    h->close_arg = arg;
    uv_close((uv_handle_t *)&h->async, on_handoff_closed);
}

uint64_t hr_handoff_drain_deadline(hr_handoff_t *h)
{
    uv_mutex_lock(&h->queue.lock);
    uint64_t d = h->drain_deadline_ms;
    uv_mutex_unlock(&h->queue.lock);
    return d;
}

/* ---------------------------------------------------------------- worker side */

static void on_port_closed(uv_handle_t *handle)
{
    port_t *p = handle->data;
    void (*cb)(void *) = p->close_cb;
    void *arg = p->close_arg;
    uv_mutex_destroy(&p->queue.lock);
    free(p);
    if (cb) cb(arg);
}

static void port_maybe_close(port_t *p)
{
    if (!p->closing || p->outstanding > 0 || uv_is_closing((uv_handle_t *)&p->async)) return;
    /* Every answer is in, so no sender will touch the queue again; taking the lock once
     * waits out a sender still inside queue_put's uv_async_send. */
    uv_mutex_lock(&p->queue.lock);
    uv_mutex_unlock(&p->queue.lock);
    uv_close((uv_handle_t *)&p->async, on_port_closed);
}

/* Worker loop: run the callbacks of every answer that came back. */
static void on_port_async(uv_async_t *a)
{
    port_t *p = a->data;
    item_t *it = queue_take(&p->queue);
    while (it) {
        item_t *next = it->next;
        p->outstanding--;
        switch (it->kind) {
        case ITEM_PUSH: it->push_cb(it->arg, it->status); break;
        case ITEM_STATS:
            it->stats_cb(it->arg, &it->st, it->targets.data ? it->targets.data : "{}");
            break;
        case ITEM_RELOAD:
            if (it->done_cb) it->done_cb(it->arg);
            break;
        }
        hr_buf_free(&it->targets);
        free(it);
        it = next;
    }
    port_maybe_close(p);
}

/* A new call on p, sent to the delivery loop by port_send. */
static item_t *port_item(port_t *p, item_kind_t kind, void *arg)
{
    item_t *it = hr_xcalloc(1, sizeof *it);
    it->port = p;
    it->kind = kind;
    it->arg = arg;
    return it;
}

static void port_send(port_t *p, item_t *it)
{
    p->outstanding++;
    queue_put(&p->h->queue, it, &p->h->async);
}

static int port_push(hr_delivery_t *d, hr_action_t *list, void (*cb)(void *arg, int status),
                     void *arg)
{
    port_t *p = (port_t *)d;
    item_t *it = port_item(p, ITEM_PUSH, arg);
    it->actions = list;
    it->push_cb = cb;
    port_send(p, it);
    return 0;
}

static void port_stats(hr_delivery_t *d, hr_delivery_stats_cb cb, void *arg)
{
    port_t *p = (port_t *)d;
    item_t *it = port_item(p, ITEM_STATS, arg);
    it->stats_cb = cb;
    port_send(p, it);
}

static void port_reload(hr_delivery_t *d, const hr_config_t *cfg, void (*cb)(void *arg), void *arg)
{
    port_t *p = (port_t *)d;
    item_t *it = port_item(p, ITEM_RELOAD, arg);
    it->cfg = cfg;
    it->done_cb = cb;
    port_send(p, it);
}

static void port_drain(hr_delivery_t *d, uint64_t deadline_ms, void (*cb)(void *arg), void *arg)
{
    hr_handoff_t *h = ((port_t *)d)->h;
    uv_mutex_lock(&h->queue.lock);
    if (deadline_ms > h->drain_deadline_ms) h->drain_deadline_ms = deadline_ms;
    uv_mutex_unlock(&h->queue.lock);
    if (cb) cb(arg);
}

static void port_close(hr_delivery_t *d, void (*cb)(void *arg), void *arg)
{
    port_t *p = (port_t *)d;
    p->closing = true;
    p->close_cb = cb;
    p->close_arg = arg;
    port_maybe_close(p);
}

static const hr_delivery_ops_t PORT_OPS = {.push = port_push,
                                           .stats = port_stats,
                                           .reload = port_reload,
                                           .drain = port_drain,
                                           .close = port_close};

hr_delivery_t *hr_handoff_port_open(hr_handoff_t *h, uv_loop_t *loop)
{
    port_t *p = hr_xcalloc(1, sizeof *p);
    p->base.ops = &PORT_OPS;
    p->h = h;
    p->loop = loop;
    queue_init(&p->queue);
    uv_async_init(loop, &p->async, on_port_async);
    p->async.data = p;
    return &p->base;
}
