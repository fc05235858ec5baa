/* The loopback HTTP peer of the unit tests (peer.h). */
#include "peer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hr/common.h"

typedef struct delayed delayed_t;

struct peer_conn {
    uv_tcp_t tcp;
    peer_t *p;
    peer_conn_t *prev, *next; /* in p->conns */
    delayed_t *delayed;       /* answers waiting for their delay */
    hr_buf_t in;              /* bytes not yet consumed */
    int nreq;                 /* requests seen on this connection */
    bool closing;             /* uv_close called */
};

struct delayed {
    uv_timer_t timer;
    peer_t *p;
    peer_conn_t *c; /* NULL once c is closing */
    delayed_t *next;
    peer_answer_t a;
};

struct peer {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int accepts;
    peer_conn_t *conns;
    int open; /* handles not yet closed: the listener, connections, delay timers */
    bool stopping;
    peer_answer_t *script;
    size_t nscript, next;
    peer_req_t **reqs; /* since the start or the last peer_script */
    int nreqs;
    peer_handler_t handler;
    void *handler_arg;
};

typedef struct {
    uv_write_t w;
    peer_conn_t *c;
    bool close_after;
    char data[];
} pwrite_t;

static void die(const char *what, int rc)
{
    fprintf(stderr, "peer: %s: %s\n", what, rc ? uv_strerror(rc) : "failed");
    abort();
}

static void forget_requests(peer_t *p)
{
    for (int i = 0; i < p->nreqs; i++) {
        free(p->reqs[i]->raw);
        free(p->reqs[i]);
    }
    free(p->reqs);
    p->reqs = NULL;
    p->nreqs = 0;
}

static void handle_closed(peer_t *p)
{
    if (--p->open > 0 || !p->stopping) return;
    forget_requests(p);
    free(p->script);
    free(p);
}

static void on_listener_close(uv_handle_t *h)
{
    handle_closed(h->data);
}

static void on_conn_close(uv_handle_t *h)
{
    peer_conn_t *c = h->data;
    peer_t *p = c->p;
    hr_buf_free(&c->in);
    free(c);
    handle_closed(p);
}

static void on_delayed_close(uv_handle_t *h)
{
    delayed_t *d = h->data;
    peer_t *p = d->p;
    free(d);
    handle_closed(p);
}

void peer_close_conn(peer_conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    peer_t *p = c->p;
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    for (delayed_t *d = c->delayed, *n; d; d = n) {
        n = d->next;
        d->c = NULL;
        uv_close((uv_handle_t *)&d->timer, on_delayed_close);
    }
    c->delayed = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

static void on_write(uv_write_t *w, int status)
{
    pwrite_t *pw = (pwrite_t *)w;
    if (pw->close_after) peer_close_conn(pw->c);
    free(pw);
}

void peer_send(peer_conn_t *c, const void *data, size_t len, bool close_after)
{
    if (c->closing) return;
    pwrite_t *pw = hr_xmalloc(sizeof *pw + len);
    pw->c = c;
    pw->close_after = close_after;
    memcpy(pw->data, data, len);
    uv_buf_t b = uv_buf_init(pw->data, (unsigned)len);
    if (uv_write(&pw->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        free(pw);
        peer_close_conn(c);
    }
}

void peer_sends(peer_conn_t *c, const char *s, bool close_after)
{
    peer_send(c, s, strlen(s), close_after);
}

static void answer_now(peer_conn_t *c, const peer_answer_t *a)
{
    const char *body = a->body ? a->body : "ok";
    hr_buf_t r = HR_BUF_INIT;
    hr_buf_printf(&r, "HTTP/1.1 %d X\r\n", a->status);
    if (a->retry_after) hr_buf_printf(&r, "Retry-After: %s\r\n", a->retry_after);
    if (a->headers) hr_buf_appends(&r, a->headers);
    hr_buf_printf(&r, "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    if (a->cut > 0 && a->cut < r.len)
        peer_send(c, r.data, a->cut, true);
    else
        peer_send(c, r.data, r.len, a->close);
    hr_buf_free(&r);
}

static void on_delay(uv_timer_t *t)
{
    delayed_t *d = t->data;
    peer_conn_t *c = d->c;
    for (delayed_t **pp = &c->delayed; *pp; pp = &(*pp)->next) {
        if (*pp == d) {
            *pp = d->next;
            break;
        }
    }
    answer_now(c, &d->a);
    uv_close((uv_handle_t *)&d->timer, on_delayed_close);
}

void peer_answer(peer_conn_t *c, const peer_answer_t *a)
{
    if (a->status == 0 || c->closing) return;
    if (a->delay_ms == 0) {
        answer_now(c, a);
        return;
    }
    delayed_t *d = hr_xcalloc(1, sizeof *d);
    d->p = c->p;
    d->c = c;
    d->a = *a;
    uv_timer_init(c->p->loop, &d->timer);
    c->p->open++;
    d->timer.data = d;
    /* Kept in arrival order so that answers leave in the order the requests came. */
    delayed_t **pp = &c->delayed;
    while (*pp)
        pp = &(*pp)->next;
    *pp = d;
    uv_timer_start(&d->timer, on_delay, a->delay_ms, 0);
}

/* Record the request of len bytes (head of hlen) at the front of c->in and answer it. */
static void take_request(peer_conn_t *c, size_t hlen, size_t len)
{
    peer_t *p = c->p;
    peer_req_t *rq = hr_xcalloc(1, sizeof *rq);
    rq->at_ms = uv_now(p->loop);
    rq->raw = hr_xstrndup(c->in.data, len);
    rq->len = len;
    rq->body = rq->raw + hlen;
    rq->body_len = len - hlen;
    rq->conn_nreq = ++c->nreq;
    char fmt[32];
    snprintf(fmt, sizeof fmt, "%%%zus %%%zus", sizeof rq->method - 1, sizeof rq->path - 1);
    if (sscanf(rq->raw, fmt, rq->method, rq->path) != 2) rq->method[0] = rq->path[0] = '\0';
    p->reqs = hr_xrealloc(p->reqs, (size_t)(p->nreqs + 1) * sizeof *p->reqs);
    p->reqs[p->nreqs++] = rq;
    if (p->handler) {
        p->handler(p->handler_arg, c, rq);
        return;
    }
    peer_answer_t a = {.status = 200};
    if (p->next < p->nscript) a = p->script[p->next++];
    peer_answer(c, &a);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = hr_xmalloc(suggested);
    buf->len = suggested;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    peer_conn_t *c = st->data;
    if (nread < 0) {
        free(buf->base);
        peer_close_conn(c);
        return;
    }
    hr_buf_append(&c->in, buf->base, (size_t)nread);
    free(buf->base);
    while (!c->closing && c->in.len > 0) {
        char *end = memmem(c->in.data, c->in.len, "\r\n\r\n", 4);
        if (!end) return;
        size_t hlen = (size_t)(end - c->in.data) + 4, cl = 0;
        *end = '\0'; /* so that the search stays in the head */
        char *h = strcasestr(c->in.data, "\r\ncontent-length:");
        if (h) cl = strtoul(h + 17, NULL, 10);
        *end = '\r';
        if (c->in.len < hlen + cl) return;
        take_request(c, hlen, hlen + cl);
        if (c->closing) return;
        memmove(c->in.data, c->in.data + hlen + cl, c->in.len - hlen - cl);
        c->in.len -= hlen + cl;
        c->in.data[c->in.len] = '\0';
    }
}

static void on_connection(uv_stream_t *l, int status)
{
    peer_t *p = l->data;
    if (status < 0) die("listen", status);
    peer_conn_t *c = hr_xcalloc(1, sizeof *c);
    c->p = p;
    uv_tcp_init(p->loop, &c->tcp);
    c->tcp.data = c;
    p->open++;
    int rc = uv_accept(l, (uv_stream_t *)&c->tcp);
    if (rc < 0) die("accept", rc);
    p->accepts++;
    c->next = p->conns;
    if (p->conns) p->conns->prev = c;
    p->conns = c;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

peer_t *peer_start(uv_loop_t *loop)
{
    peer_t *p = hr_xcalloc(1, sizeof *p);
    p->loop = loop;
    uv_tcp_init(loop, &p->listener);
    p->listener.data = p;
    p->open = 1;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    int rc = uv_tcp_bind(&p->listener, (struct sockaddr *)&a, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&p->listener, 512, on_connection);
    if (rc < 0) {
        fprintf(stderr, "peer: listen on 127.0.0.1:0: %s\n", uv_strerror(rc));
        peer_stop(p);
        return NULL;
    }
    struct sockaddr_storage ss;
    int n = sizeof ss;
    uv_tcp_getsockname(&p->listener, (struct sockaddr *)&ss, &n);
    p->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return p;
}

void peer_stop(peer_t *p)
{
    if (!p) return;
    p->stopping = true;
    while (p->conns)
        peer_close_conn(p->conns);
    uv_close((uv_handle_t *)&p->listener, on_listener_close);
}

int peer_port(const peer_t *p)
{
    return p->port;
}

void peer_script(peer_t *p, size_t n, const peer_answer_t *a)
{
    free(p->script);
    p->script = hr_xcalloc(n ? n : 1, sizeof *a);
    if (n) memcpy(p->script, a, n * sizeof *a);
    p->nscript = n;
    p->next = 0;
    forget_requests(p);
}

void peer_set_handler(peer_t *p, peer_handler_t fn, void *arg)
{
    p->handler = fn;
    p->handler_arg = arg;
}

int peer_requests(const peer_t *p)
{
    return p->nreqs;
}

const peer_req_t *peer_req(const peer_t *p, int i)
{
    return i >= 0 && i < p->nreqs ? p->reqs[i] : NULL;
}

const peer_req_t *peer_last(const peer_t *p)
{
    return peer_req(p, p->nreqs - 1);
}

int peer_accepts(const peer_t *p)
{
    return p->accepts;
}

int peer_closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket", 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t n = sizeof a;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &n) != 0)
        die("bind 127.0.0.1:0", 0);
    close(fd);
    return ntohs(a.sin_port);
}
