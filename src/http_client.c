/* Outbound HTTP/1.1 client on libuv + llhttp (see include/hr/http_client.h).
 *
 * Shape: a client owns pools keyed by host:port and, for https, the TLS context. A pool caches the
 * resolved address (60 s; literal IPs never expire), keeps idle keep-alive connections on a LIFO
 * stack, counts its open connections (at most max_conns_per_host) and queues the requests that wait
 * for one (FIFO). One request uses one connection at a time (no pipelining).
 *
 * Deferral: hr_http_client_send only queues the request and "kicks" its pool; a uv_idle
 * handle owned by the client runs the kicked pools' dispatch and delivers failures that were
 * found outside a libuv callback. So no callback ever runs inside hr_http_client_send, and a
 * request sent from inside a completion callback can reuse the connection just released.
 *
 * Lifetimes: a request is freed in the close callback of its timeout timer; a connection in
 * the close callbacks of its TCP handle and idle timer (whichever is last). The request bytes
 * (head and body, one allocation) are reference-counted between the request and the write in
 * flight, because a transparent retry sends them again and a closing connection may still
 * cancel a write after the request ended. The client is freed when every handle it made is
 * closed and no DNS lookup is outstanding. Nothing is process-wide but the default TLS
 * context of https requests that bring none (hr_tls_client_default).
 *
 * TLS (https): a connection of a TLS pool carries an hr_tls_conn_t (hr/tls.h) between the
 * socket and the HTTP code. After connect it runs the handshake (inside the request's
 * timeout) before the request is written; what libuv reads is fed to it and the plaintext
 * it gives goes to the same parser as a plain connection's bytes; whatever ciphertext it
 * produces is sent by a write of its own (tls_flush). A pool keeps the session of its last
 * new connection and offers it on the next one (resumption). A pool holds a reference to its
 * context, so the pools of a replaced context are freed once empty (pool_get).
 *
 * Proxies (an http:// proxy per request, part of the pool's key): a pool then connects to the
 * proxy. Plain http requests go to it in absolute form (POST http://host:port/path); an https
 * pool's connections first send CONNECT host:port and read the proxy's answer (tunnel_read),
 * then run TLS through the tunnel as over a direct connection. */
#include "hr/http_client.h"

#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/log.h"
#include "hr/tls.h"

#define HR_HTTP_DNS_TTL_MS  60000
#define HR_HTTP_READ_BUF    65536
#define HR_HTTP_DEF_CONNS   64
#define HR_HTTP_DEF_IDLE_MS 30000
#define HR_HTTP_DEF_MAX_RES (4u * 1024 * 1024)

/* ---- Intrusive doubly linked lists (circular, head is a sentinel) --------------------- */

typedef struct hr_dlink {
    struct hr_dlink *prev;
    struct hr_dlink *next;
} hr_dlink_t;

static void dl_init(hr_dlink_t *h)
{
    h->prev = h->next = h;
}

static bool dl_empty(const hr_dlink_t *h)
{
    return h->next == h;
}

static bool dl_linked(const hr_dlink_t *n)
{
    return n->next != n;
}

static void dl_insert_after(hr_dlink_t *at, hr_dlink_t *n)
{
    n->prev = at;
    n->next = at->next;
    at->next->prev = n;
    at->next = n;
}

static void dl_push_back(hr_dlink_t *h, hr_dlink_t *n)
{
    dl_insert_after(h->prev, n);
}

static void dl_push_front(hr_dlink_t *h, hr_dlink_t *n)
{
    dl_insert_after(h, n);
}

static void dl_remove(hr_dlink_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    dl_init(n);
}

/* ---- Types --------------------------------------------------------------------------- */

typedef struct hr_http_pool hr_http_pool_t;
typedef struct hr_http_conn hr_http_conn_t;

/* The bytes of one request: head then body, shared by the request and a write in flight. */
typedef struct {
    int refs;        /* request + write in flight */
    size_t head_len; /* bytes of the request head */
    size_t body_len; /* bytes of the body, right after the head */
    char data[];     /* head, then body */
} hr_http_bytes_t;

/* Where a request is. */
typedef enum {
    REQ_NONE = 0, /* completing */
    REQ_QUEUED,   /* in its pool's wait queue */
    REQ_CONN,     /* attached to a connection */
    REQ_FAILED,   /* in the client's list of failures to deliver from the idle handle */
} hr_req_where_t;

typedef struct {
    hr_http_client_t *c;    /* owner */
    hr_http_pool_t *pool;   /* host:port it goes to */
    hr_dlink_t all;         /* in c->reqs */
    hr_dlink_t q;           /* in pool->waitq or c->failed */
    hr_req_where_t where;   /* which list q is in, or the connection */
    hr_http_conn_t *conn;   /* when REQ_CONN */
    hr_http_bytes_t *bytes; /* request bytes (one reference) */
    bool is_head;           /* HEAD: the response has no body */
    bool retried;           /* already retried once on a fresh connection */
    bool need_fresh;        /* the retry must not reuse an idle connection */
    uint32_t timeout_ms;    /* for the message */
    uv_timer_t timer;       /* whole-exchange timeout; its close callback frees the request */
    int err;                /* REQ_FAILED: the error to report */
    char errmsg[160];       /* REQ_FAILED: its message */
    hr_http_done_cb cb;     /* completion */
    void *arg;              /* for cb */
} hr_http_req_t;

typedef enum { CONN_CONNECTING, CONN_ACTIVE, CONN_IDLE, CONN_CLOSING } hr_conn_state_t;

struct hr_http_conn {
    hr_http_client_t *c;      /* owner */
    hr_http_pool_t *pool;     /* host:port */
    hr_dlink_t all;           /* in c->conns */
    hr_dlink_t idle;          /* in pool->idle when CONN_IDLE */
    hr_conn_state_t state;    /* lifecycle */
    int open_handles;         /* tcp + idle_timer not yet closed: freed at 0 */
    uv_tcp_t tcp;             /* the socket */
    uv_connect_t connect_req; /* connect in progress */
    uv_write_t write_req;     /* the one write in flight */
    uv_timer_t idle_timer;    /* closes the connection after idle_timeout_ms */
    hr_http_bytes_t *writing; /* bytes of the write in flight (a reference), or NULL */
    bool idle_after_write;    /* response delivered: pool it once writing's callback ran */
    hr_http_req_t *req;       /* request in progress, or NULL */
    unsigned nreqs;           /* requests started on this connection */
    bool got_bytes;           /* a response byte arrived for req */
    bool msg_done;            /* on_message_complete for a final response */
    bool keep_alive;          /* llhttp_should_keep_alive at message end */
    int parse_err;            /* UV_E2BIG from a callback, else 0 */
    llhttp_t parser;          /* response parser, data = this */
    char *rbuf;               /* read buffer, HR_HTTP_READ_BUF bytes, reused */
    hr_buf_t hdata;           /* header names and values, NUL-separated, reused */
    size_t *hoff;             /* per header: name offset, value offset */
    size_t nhdrs;             /* headers complete */
    size_t hoff_cap;          /* pairs allocated in hoff */
    bool in_value;            /* the last header callback was a value */
    hr_header_t *hview;       /* headers handed to the callback (point into hdata) */
    size_t hview_cap;         /* entries allocated in hview */
    hr_buf_t body;            /* response body, reused */
    int status;               /* response status */
    hr_tls_conn_t *tls;       /* https: the TLS state, else NULL */
    bool handshaking;         /* https: connected, handshake not complete */
    bool session_saved;       /* https: its session went to the pool */
    bool tunneling;           /* https via a proxy: CONNECT sent, its answer not complete */
    hr_buf_t tunnel;          /* ... the answer so far */
    char *pbuf;               /* https: plaintext buffer, HR_HTTP_READ_BUF bytes */
};

struct hr_http_pool {
    hr_http_client_t *c;          /* owner */
    hr_dlink_t link;              /* in c->pools */
    hr_dlink_t kick;              /* in c->kicked when a dispatch is due */
    char *host;                   /* as in the URL, without brackets */
    int port;                     /* TCP port */
    char *host_header;            /* value of the Host header */
    char *proxy;                  /* the proxy's host (without brackets), or NULL: direct */
    int proxy_port;               /* its port */
    const char *dial_host;        /* what connections go to: proxy or host */
    int dial_port;                /* ... and its port */
    bool literal;                 /* host is an IP literal: addr never expires */
    bool addr_ok;                 /* addr holds a usable address */
    uint64_t addr_expires;        /* uv_now when addr must be looked up again */
    struct sockaddr_storage addr; /* resolved address */
    bool resolving;               /* gai in progress */
    uv_getaddrinfo_t gai;         /* the lookup */
    hr_dlink_t idle;              /* idle connections, most recent first */
    hr_dlink_t waitq;             /* requests waiting for a connection, oldest first */
    uint32_t nconns;              /* open connections (connecting, active or idle) */
    hr_tls_ctx_t *tls;            /* https: the context (a reference), else NULL */
    hr_tls_session_t *session;    /* https: to resume on the next connection, or NULL */
};

struct hr_http_client {
    uv_loop_t *loop;             /* the loop everything runs on */
    hr_http_client_opts_t opts;  /* with defaults filled in */
    llhttp_settings_t settings;  /* response callbacks, shared by all parsers */
    hr_dlink_t pools;            /* every pool */
    hr_dlink_t reqs;             /* every request not yet completed */
    hr_dlink_t conns;            /* every connection not yet closing */
    hr_dlink_t failed;           /* requests whose failure is delivered from defer */
    hr_dlink_t kicked;           /* pools due for a dispatch from defer */
    uv_idle_t defer;             /* runs deferred work, then stops */
    size_t pending;              /* requests not yet completed */
    size_t open_handles;         /* handles and lookups not yet finished */
    bool closing;                /* hr_http_client_close was called */
    void (*close_cb)(void *arg); /* run once everything is freed */
    void *close_arg;             /* for close_cb */
    hr_tls_ctx_t *default_tls;   /* https without a context: hr_tls_client_default, or NULL */
    char *url_memo;              /* the URL of the last request, parsed in url_parsed */
    hr_url_t url_parsed;
};

static void pool_dispatch(hr_http_pool_t *p);
static void conn_close(hr_http_conn_t *conn);
static void conn_write(hr_http_conn_t *conn);

/* ---- Client lifetime ----------------------------------------------------------------- */

static void pool_free(hr_http_pool_t *p)
{
    dl_remove(&p->link);
    free(p->host);
    free(p->host_header);
    free(p->proxy);
    hr_tls_session_free(p->session);
    hr_tls_ctx_unref(p->tls);
    free(p);
}

/* Free the client once it is closing and every handle it made is closed. Runs only from
 * close/lookup callbacks, so close_cb never runs inside hr_http_client_close. */
static void client_maybe_free(hr_http_client_t *c)
{
    if (!c->closing || c->open_handles > 0) return;
    while (!dl_empty(&c->pools))
        pool_free(hr_container_of(c->pools.next, hr_http_pool_t, link));
    hr_tls_ctx_unref(c->default_tls);
    free(c->url_memo);
    hr_url_free(&c->url_parsed);
    void (*cb)(void *) = c->close_cb;
    void *arg = c->close_arg;
    free(c);
    if (cb) cb(arg);
}

static void on_defer(uv_idle_t *h);

/* Ask the defer handle to dispatch p on the next loop iteration. */
static void pool_kick(hr_http_pool_t *p)
{
    hr_http_client_t *c = p->c;
    if (c->closing || dl_linked(&p->kick)) return;
    dl_push_back(&c->kicked, &p->kick);
    uv_idle_start(&c->defer, on_defer);
}

static void bytes_unref(hr_http_bytes_t *b)
{
    if (b && --b->refs == 0) free(b);
}

/* ---- Requests ------------------------------------------------------------------------ */

/* Close callback of a request's timer: frees the request. */
static void on_req_timer_close(uv_handle_t *h)
{
    hr_http_req_t *r = hr_container_of((uv_timer_t *)h, hr_http_req_t, timer);
    hr_http_client_t *c = r->c;
    bytes_unref(r->bytes);
    free(r);
    c->open_handles--;
    client_maybe_free(c);
}

/* Finish a request that is already detached from queues and connections: run its callback
 * (exactly once), then close its timer, which frees it. */
static void req_complete(hr_http_req_t *r, int err, const char *msg, const hr_http_response_t *res)
{
    hr_http_client_t *c = r->c;
    dl_remove(&r->all);
    c->pending--;
    r->where = REQ_NONE;
    uv_timer_stop(&r->timer);
    r->cb(r->arg, err, err ? (msg ? msg : uv_strerror(err)) : NULL, err ? NULL : res);
    uv_close((uv_handle_t *)&r->timer, on_req_timer_close);
}

/* Take r off whatever holds it (queue, failure list or connection). A connection it leaves
 * is not touched otherwise: the caller decides whether to close it. */
static void req_detach(hr_http_req_t *r)
{
    if (r->where == REQ_QUEUED || r->where == REQ_FAILED) dl_remove(&r->q);
    if (r->where == REQ_CONN && r->conn) r->conn->req = NULL;
    r->conn = NULL;
    r->where = REQ_NONE;
}

/* Fail r from the defer handle (used where no libuv callback frames us, e.g. dispatch run
 * by a kick could call back into the user otherwise). */
static void req_fail_later(hr_http_req_t *r, int err, const char *msg)
{
    hr_http_client_t *c = r->c;
    req_detach(r);
    r->err = err;
    size_t n = strnlen(msg, sizeof r->errmsg - 1); /* cut to fit, as intended */
    memcpy(r->errmsg, msg, n);
    r->errmsg[n] = '\0';
    r->where = REQ_FAILED;
    dl_push_back(&c->failed, &r->q);
    uv_timer_stop(&r->timer);
    uv_idle_start(&c->defer, on_defer);
}

/* The request's timeout fired: drop its connection (if any) and fail it with ETIMEDOUT. */
static void on_req_timeout(uv_timer_t *t)
{
    hr_http_req_t *r = hr_container_of(t, hr_http_req_t, timer);
    hr_http_conn_t *conn = r->where == REQ_CONN ? r->conn : NULL;
    req_detach(r);
    if (conn) conn_close(conn);
    char msg[64];
    snprintf(msg, sizeof msg, "timed out after %u ms", (unsigned)r->timeout_ms);
    req_complete(r, UV_ETIMEDOUT, msg, NULL);
}

/* The defer handle: deliver failures, then run the kicked pools' dispatch. Stops itself when
 * there is nothing left. */
static void on_defer(uv_idle_t *h)
{
    hr_http_client_t *c = h->data;
    while (!dl_empty(&c->failed)) {
        hr_http_req_t *r = hr_container_of(c->failed.next, hr_http_req_t, q);
        dl_remove(&r->q);
        r->where = REQ_NONE;
        req_complete(r, r->err, r->errmsg, NULL);
    }
    while (!dl_empty(&c->kicked)) {
        hr_http_pool_t *p = hr_container_of(c->kicked.next, hr_http_pool_t, kick);
        dl_remove(&p->kick);
        pool_dispatch(p);
    }
    if (dl_empty(&c->failed) && dl_empty(&c->kicked)) uv_idle_stop(&c->defer);
}

/* ---- Connections --------------------------------------------------------------------- */

/* Close callback of a connection's handles: frees it after the second one. */
static void on_conn_handle_close(uv_handle_t *h)
{
    hr_http_conn_t *conn = h->data;
    hr_http_client_t *c = conn->c;
    c->open_handles--;
    if (--conn->open_handles > 0) return;
    free(conn->rbuf);
    free(conn->pbuf);
    hr_buf_free(&conn->tunnel);
    hr_tls_conn_free(conn->tls);
    hr_buf_free(&conn->hdata);
    hr_buf_free(&conn->body);
    free(conn->hoff);
    free(conn->hview);
    free(conn);
    client_maybe_free(c);
}

/* Close conn (idempotent). Its request, if any, must have been detached or completed first.
 * Frees a slot of its pool at once, so waiting requests are kicked. */
static void conn_close(hr_http_conn_t *conn)
{
    if (conn->state == CONN_CLOSING) return;
    if (conn->state == CONN_IDLE) dl_remove(&conn->idle);
    conn->state = CONN_CLOSING;
    dl_remove(&conn->all);
    conn->pool->nconns--;
    if (conn->req) {
        conn->req->conn = NULL;
        conn->req = NULL;
    }
    uv_close((uv_handle_t *)&conn->tcp, on_conn_handle_close);
    uv_close((uv_handle_t *)&conn->idle_timer, on_conn_handle_close);
    if (!dl_empty(&conn->pool->waitq)) pool_kick(conn->pool);
}

/* The idle timer fired: the connection was unused for idle_timeout_ms. */
static void on_conn_idle_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

/* The connection's request failed with a transport error (err < 0). A reused connection that
 * died before any response byte gets its request retried once on a fresh connection, since
 * the server most likely closed it while idle; otherwise the request fails with err. */
static void conn_fail(hr_http_conn_t *conn, int err, const char *msg)
{
    hr_http_req_t *r = conn->req;
    bool retry = r && conn->nreqs > 1 && !conn->got_bytes && !r->retried &&
                 (err == UV_EOF || err == UV_ECONNRESET || err == UV_EPIPE);
    if (r) req_detach(r);
    conn_close(conn);
    if (!r) return;
    if (retry) {
        hr_log_debug("http: retrying %s:%d on a new connection after %s", r->pool->host,
                     r->pool->port, uv_err_name(err));
        r->retried = true;
        r->need_fresh = true;
        r->where = REQ_QUEUED;
        dl_push_front(&r->pool->waitq, &r->q);
        pool_kick(r->pool);
        return;
    }
    char buf[160];
    if (!msg) {
        snprintf(buf, sizeof buf, "%s:%d: %s", r->pool->host, r->pool->port, uv_strerror(err));
        msg = buf;
    }
    req_complete(r, err, msg, NULL);
}

/* Write callback: drops the write's reference to the bytes; a failed write fails the
 * request (or retries it, see conn_fail). */
static void conn_idle(hr_http_conn_t *conn);

/* The request's write ended (its bytes reached the kernel, or it failed): a connection whose
 * response was delivered meanwhile goes to the pool now. */
static void conn_write_done(hr_http_conn_t *conn, int status)
{
    bool pool = conn->idle_after_write;
    conn->idle_after_write = false;
    if (conn->state == CONN_CLOSING) return;
    if (status < 0)
        conn_fail(conn, status, NULL);
    else if (pool)
        conn_idle(conn);
}

static void on_write(uv_write_t *w, int status)
{
    hr_http_conn_t *conn = w->data;
    bytes_unref(conn->writing);
    conn->writing = NULL;
    conn_write_done(conn, status);
}

/* ---- TLS ----------------------------------------------------------------------------- */

/* One write of bytes copied for it (ciphertext, CONNECT); holds a reference to the request's
 * bytes when it carries them. */
typedef struct {
    uv_write_t w;
    hr_http_conn_t *conn;
    hr_http_bytes_t *bytes; /* the request it encrypts, or NULL (handshake, alerts) */
    char data[];
} copy_write_t;

static void on_copy_write(uv_write_t *w, int status)
{
    copy_write_t *tw = hr_container_of(w, copy_write_t, w);
    hr_http_conn_t *conn = tw->conn;
    bool request = tw->bytes && conn->writing == tw->bytes;
    if (request) conn->writing = NULL;
    bytes_unref(tw->bytes);
    free(tw);
    if (request)
        conn_write_done(conn, status);
    else if (status < 0 && conn->state != CONN_CLOSING)
        conn_fail(conn, status, NULL);
}

/* Send n bytes of data on conn as they are (a copy); bytes (may be NULL) is the request they
 * carry. Returns 0, or < 0 if the write could not start (the caller fails the request and
 * closes the connection). */
static int conn_send_copy(hr_http_conn_t *conn, const char *data, size_t n, hr_http_bytes_t *bytes)
{
    copy_write_t *tw = hr_xmalloc(sizeof *tw + n);
    memcpy(tw->data, data, n);
    uv_buf_t buf = uv_buf_init(tw->data, (unsigned)n);
    tw->conn = conn;
    tw->bytes = bytes;
    int rc = uv_write(&tw->w, (uv_stream_t *)&conn->tcp, &buf, 1, on_copy_write);
    if (rc < 0) {
        free(tw);
        return rc;
    }
    if (bytes) {
        bytes->refs++;
        conn->writing = bytes;
    }
    return 0;
}

/* Send the ciphertext conn's TLS state produced, if any; bytes as conn_send_copy. */
static int tls_flush(hr_http_conn_t *conn, hr_http_bytes_t *bytes)
{
    if (hr_tls_conn_out_pending(conn->tls) == 0) return 0;
    hr_buf_t out = HR_BUF_INIT;
    hr_tls_conn_take_out(conn->tls, &out);
    int rc = conn_send_copy(conn, out.data, out.len, bytes);
    hr_buf_free(&out);
    return rc;
}

/* Encrypt and send conn's request. Returns 0 or < 0 as tls_flush. */
static int tls_write_request(hr_http_conn_t *conn)
{
    hr_http_bytes_t *b = conn->req->bytes;
    if (hr_tls_conn_write(conn->tls, b->data, b->head_len + b->body_len) != HR_TLS_OK)
        return UV_EPROTO;
    return tls_flush(conn, b);
}

/* Fail conn's request with the TLS reason (a transport error: UV_EPROTO). */
static void tls_fail(hr_http_conn_t *conn)
{
    conn_fail(conn, UV_EPROTO, hr_tls_conn_error(conn->tls));
}

/* Step the handshake of conn (after connect and after each read during it); once it is
 * complete, send the request. */
static void tls_handshake(hr_http_conn_t *conn)
{
    hr_tls_status_t st = hr_tls_conn_handshake(conn->tls);
    int rc = tls_flush(conn, NULL);
    if (st == HR_TLS_ERROR) {
        tls_fail(conn);
        return;
    }
    if (rc < 0) {
        conn_fail(conn, rc, NULL);
        return;
    }
    if (st != HR_TLS_OK) return;
    conn->handshaking = false;
    if (conn->req) conn_write(conn);
}

/* ---- Requests on a connection -------------------------------------------------------- */

/* Send the bytes of conn's request: one write of head and body (for https, of their
 * ciphertext), tried at once, the rest (if any) by uv_write. A failure to start the write fails the
 * request from the defer handle and closes the connection. */
static void conn_write(hr_http_conn_t *conn)
{
    hr_http_req_t *r = conn->req;
    if (conn->tls) {
        int rc = tls_write_request(conn);
        if (rc < 0) {
            req_fail_later(r, rc, rc == UV_EPROTO ? hr_tls_conn_error(conn->tls) : uv_strerror(rc));
            conn_close(conn);
        }
        return;
    }
    uv_buf_t bufs[2] = {
        uv_buf_init(r->bytes->data, (unsigned)r->bytes->head_len),
        uv_buf_init(r->bytes->data + r->bytes->head_len, (unsigned)r->bytes->body_len),
    };
    uv_buf_t *v = bufs;
    unsigned nv = r->bytes->body_len ? 2 : 1;
    /* Try the write at once: a request the socket takes whole needs no write request, and
     * libuv's uv_write would re-arm the descriptor in epoll (one epoll_ctl per request) when
     * its queue drains. What is left (or an error) goes through uv_write as before. */
    int k = uv_try_write((uv_stream_t *)&conn->tcp, v, nv);
    while (k > 0 && nv > 0) {
        size_t n = (size_t)k < v->len ? (size_t)k : v->len;
        v->base += n;
        v->len -= n;
        k -= (int)n;
        if (v->len == 0) {
            v++;
            nv--;
        }
    }
    if (nv == 0) return; /* all sent; conn->writing stays NULL */
    conn->writing = r->bytes;
    r->bytes->refs++;
    int rc = uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, v, nv, on_write);
    if (rc < 0) {
        bytes_unref(conn->writing);
        conn->writing = NULL;
        req_fail_later(r, rc, uv_strerror(rc));
        conn_close(conn);
    }
}

/* Attach r (detached) to conn and reset the response state; send at once unless conn is
 * still connecting (on_connect sends then). */
static void conn_start(hr_http_conn_t *conn, hr_http_req_t *r)
{
    conn->req = r;
    r->conn = conn;
    r->where = REQ_CONN;
    conn->nreqs++;
    conn->got_bytes = false;
    conn->msg_done = false;
    conn->parse_err = 0;
    llhttp_init(&conn->parser, HTTP_RESPONSE, &conn->c->settings);
    conn->parser.data = conn;
    if (conn->state != CONN_CONNECTING) conn_write(conn);
}

/* Put conn, whose request is done, in its pool's idle list. */
static void conn_idle(hr_http_conn_t *conn)
{
    conn->state = CONN_IDLE;
    dl_push_front(&conn->pool->idle, &conn->idle);
    uv_timer_start(&conn->idle_timer, on_conn_idle_timeout, conn->c->opts.idle_timeout_ms, 0);
    if (!dl_empty(&conn->pool->waitq)) pool_kick(conn->pool);
}

/* Hand the finished response to the request's callback, then pool or close the connection.
 * The connection is not reusable while bytes of the request are still unsent (the server
 * answered early), after "Connection: close" / HTTP/1.0, or when bytes followed the
 * response. A write that is all sent but whose callback has not run yet (a fast server
 * answers within the same loop iteration) only delays the pooling to that callback. */
static void conn_deliver(hr_http_conn_t *conn, bool extra_bytes)
{
    hr_http_req_t *r = conn->req;
    bool unsent = conn->writing && uv_stream_get_write_queue_size((uv_stream_t *)&conn->tcp) > 0;
    bool keep = conn->keep_alive && !extra_bytes && !unsent;
    if (conn->tls && !conn->session_saved) { /* the tickets have come by now */
        hr_tls_session_t *sess = hr_tls_conn_session(conn->tls);
        conn->session_saved = true;
        if (sess) {
            hr_tls_session_free(conn->pool->session);
            conn->pool->session = sess;
        }
    }
    req_detach(r);
    if (conn->hview_cap < conn->nhdrs) {
        conn->hview_cap = conn->nhdrs;
        conn->hview = hr_xrealloc(conn->hview, conn->hview_cap * sizeof *conn->hview);
    }
    for (size_t i = 0; i < conn->nhdrs; i++) {
        conn->hview[i].name = conn->hdata.data + conn->hoff[2 * i];
        conn->hview[i].value = conn->hdata.data + conn->hoff[2 * i + 1];
    }
    hr_buf_reserve(&conn->body, 0);
    conn->body.data[conn->body.len] = '\0';
    hr_http_response_t res = {
        .status = conn->status,
        .headers = conn->nhdrs ? conn->hview : NULL,
        .nheaders = conn->nhdrs,
        .body = conn->body.data ? conn->body.data : (char *)"",
        .body_len = conn->body.len,
    };
    req_complete(r, 0, NULL, &res);
    if (conn->state == CONN_CLOSING) return; /* the client was closed from the callback */
    if (!keep || conn->c->closing) {
        conn_close(conn);
        return;
    }
    if (conn->writing)
        conn->idle_after_write = true; /* conn_write_done pools it */
    else
        conn_idle(conn);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    hr_http_conn_t *conn = h->data;
    *buf = uv_buf_init(conn->rbuf, HR_HTTP_READ_BUF);
}

/* Response bytes (plaintext) or the end of the stream (nread < 0): feed the parser; deliver a
 * complete response; EOF either completes a close-delimited body or fails the request. Bytes
 * on an idle connection, or its EOF, close it. */
static void conn_on_bytes(hr_http_conn_t *conn, ssize_t nread, const char *data)
{
    uv_buf_t b = uv_buf_init((char *)data, nread > 0 ? (unsigned)nread : 0);
    const uv_buf_t *buf = &b;
    if (!conn->req) { /* idle: the server closed, or sent something unasked for */
        conn_close(conn);
        return;
    }
    if (nread < 0) {
        if (nread == UV_EOF && conn->got_bytes) {
            llhttp_errno_t e = llhttp_finish(&conn->parser);
            if (conn->msg_done) {
                conn->keep_alive = false;
                conn_deliver(conn, false);
                return;
            }
            if (e != HPE_OK) {
                conn_fail(conn, UV_EPROTO, "connection closed in the middle of the response");
                return;
            }
        }
        conn_fail(conn, (int)nread,
                  nread == UV_EOF ? "connection closed before a complete response" : NULL);
        return;
    }
    conn->got_bytes = true;
    llhttp_errno_t e = llhttp_execute(&conn->parser, buf->base, (size_t)nread);
    if (e == HPE_PAUSED && conn->msg_done) {
        const char *pos = llhttp_get_error_pos(&conn->parser);
        bool extra = pos && pos < buf->base + nread;
        llhttp_resume(&conn->parser);
        conn_deliver(conn, extra);
        return;
    }
    if (e != HPE_OK) {
        char msg[160];
        int err = conn->parse_err ? conn->parse_err : UV_EPROTO;
        if (err == UV_E2BIG)
            snprintf(msg, sizeof msg, "response larger than %zu bytes",
                     conn->c->opts.max_response_bytes);
        else
            snprintf(msg, sizeof msg, "bad HTTP response: %s (%s)", llhttp_errno_name(e),
                     llhttp_get_error_reason(&conn->parser));
        conn_fail(conn, err, msg);
    }
}

/* Ask the proxy for a tunnel to the pool's host:port. */
static void tunnel_open(hr_http_conn_t *conn)
{
    hr_http_pool_t *p = conn->pool;
    bool v6 = strchr(p->host, ':') != NULL;
    char *msg = hr_xasprintf(v6 ? "CONNECT [%s]:%d HTTP/1.1\r\nHost: [%s]:%d\r\n\r\n"
                                : "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                             p->host, p->port, p->host, p->port);
    conn->tunneling = true;
    int rc = conn_send_copy(conn, msg, strlen(msg), NULL);
    free(msg);
    if (rc < 0) conn_fail(conn, rc, NULL);
}

#define HR_HTTP_TUNNEL_MAX 16384 /* bytes of a proxy's answer to CONNECT */

/* The proxy's answer to CONNECT, as it comes: once its head is complete, a 2xx starts the TLS
 * handshake through the tunnel (bytes after the head are the server's, fed to TLS); anything
 * else fails the request with the proxy's status line. Returns true if the tunnel is open and
 * rest/nrest hold what followed the head. */
static bool tunnel_read(hr_http_conn_t *conn, const char *data, size_t n, const char **rest,
                        size_t *nrest)
{
    hr_http_pool_t *p = conn->pool;
    size_t before = conn->tunnel.len;
    hr_buf_append(&conn->tunnel, data, n);
    char *end = strstr(conn->tunnel.data, "\r\n\r\n");
    if (!end) {
        if (conn->tunnel.len > HR_HTTP_TUNNEL_MAX)
            conn_fail(conn, UV_EPROTO, "proxy: answer to CONNECT too long");
        return false;
    }
    size_t head = (size_t)(end + 4 - conn->tunnel.data);
    int status = 0;
    bool ok = sscanf(conn->tunnel.data, "HTTP/1.%*1[01] %3d", &status) == 1;
    if (!ok || status < 200 || status > 299) {
        char msg[200];
        size_t line = strcspn(conn->tunnel.data, "\r\n");
        snprintf(msg, sizeof msg, "proxy %s:%d refused CONNECT %s:%d: %.*s", p->proxy,
                 p->proxy_port, p->host, p->port, (int)(line > 100 ? 100 : line),
                 conn->tunnel.data);
        conn_fail(conn, UV_ECONNREFUSED, msg);
        return false;
    }
    conn->tunneling = false;
    *rest = data + (head - before);
    *nrest = n - (head - before);
    return true;
}

/* What an https connection read: the proxy's answer to CONNECT, then ciphertext for the
 * handshake or for responses, whose plaintext goes to conn_on_bytes. close_notify ends the
 * stream as EOF does. */
static void tls_on_read(hr_http_conn_t *conn, ssize_t nread, const char *data)
{
    if (nread < 0 && conn->tunneling) {
        conn_fail(conn, (int)nread, nread == UV_EOF ? "proxy closed the connection" : NULL);
        return;
    }
    if (nread > 0 && conn->tunneling) {
        size_t n = 0;
        if (!tunnel_read(conn, data, (size_t)nread, &data, &n)) return;
        nread = (ssize_t)n;
        conn->handshaking = true;
        tls_handshake(conn);
        if (conn->state == CONN_CLOSING || nread == 0) return;
    }
    if (nread < 0) {
        if (conn->handshaking)
            conn_fail(conn, (int)nread,
                      nread == UV_EOF ? "tls: connection closed during the handshake" : NULL);
        else
            conn_on_bytes(conn, nread, NULL);
        return;
    }
    hr_tls_conn_feed(conn->tls, data, (size_t)nread);
    if (conn->handshaking) {
        tls_handshake(conn);
        if (conn->handshaking || conn->state == CONN_CLOSING) return;
    }
    while (conn->state != CONN_CLOSING) {
        size_t n = 0;
        hr_tls_status_t st = hr_tls_conn_read(conn->tls, conn->pbuf, HR_HTTP_READ_BUF, &n);
        if (tls_flush(conn, NULL) < 0) st = HR_TLS_ERROR;
        if (st == HR_TLS_OK) {
            conn_on_bytes(conn, (ssize_t)n, conn->pbuf);
        } else if (st == HR_TLS_CLOSED) {
            conn_on_bytes(conn, UV_EOF, NULL);
            return;
        } else if (st == HR_TLS_ERROR) {
            if (conn->req)
                tls_fail(conn);
            else
                conn_close(conn);
            return;
        } else {
            return; /* wants more ciphertext */
        }
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    hr_http_conn_t *conn = s->data;
    if (nread == 0 || conn->state == CONN_CLOSING) return;
    if (conn->tls)
        tls_on_read(conn, nread, buf->base);
    else
        conn_on_bytes(conn, nread, buf->base);
}

/* Connect callback: start reading (for the connection's whole life) and send the request. */
static void on_connect(uv_connect_t *cr, int status)
{
    hr_http_conn_t *conn = cr->data;
    if (conn->state == CONN_CLOSING) return;
    if (status < 0) {
        hr_http_pool_t *p = conn->pool;
        if (!p->literal) p->addr_ok = false; /* look the name up again next time */
        char msg[160];
        snprintf(msg, sizeof msg, "connect %s%s:%d: %s", p->proxy ? "proxy " : "", p->dial_host,
                 p->dial_port, uv_strerror(status));
        conn_fail(conn, status, msg);
        return;
    }
    conn->state = CONN_ACTIVE;
    int rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    hr_http_req_t *r = conn->req;
    if (rc < 0) {
        conn_fail(conn, rc, NULL);
        return;
    }
    if (conn->tls && conn->pool->proxy) {
        tunnel_open(conn);
        return;
    }
    if (conn->tls) {
        conn->handshaking = true;
        tls_handshake(conn);
        return;
    }
    if (r) conn_write(conn);
}

/* Open a new connection of p for r. Failures are delivered from the defer handle. */
static void conn_open(hr_http_pool_t *p, hr_http_req_t *r)
{
    hr_http_client_t *c = p->c;
    hr_tls_conn_t *tls = NULL;
    if (p->tls) {
        char err[256];
        tls = hr_tls_conn_new(p->tls, p->host, err, sizeof err);
        if (!tls) {
            req_fail_later(r, UV_EINVAL, err);
            return;
        }
        hr_tls_conn_set_session(tls, p->session);
    }
    hr_http_conn_t *conn = hr_xcalloc(1, sizeof *conn);
    conn->c = c;
    conn->pool = p;
    dl_init(&conn->idle);
    conn->rbuf = hr_xmalloc(HR_HTTP_READ_BUF);
    conn->tls = tls;
    if (tls) conn->pbuf = hr_xmalloc(HR_HTTP_READ_BUF);
    int rc = uv_tcp_init(c->loop, &conn->tcp);
    if (rc < 0) {
        hr_tls_conn_free(conn->tls);
        free(conn->pbuf);
        free(conn->rbuf);
        free(conn);
        req_fail_later(r, rc, uv_strerror(rc));
        return;
    }
    uv_timer_init(c->loop, &conn->idle_timer);
    conn->tcp.data = conn;
    conn->idle_timer.data = conn;
    conn->connect_req.data = conn;
    conn->write_req.data = conn;
    conn->open_handles = 2;
    c->open_handles += 2;
    conn->state = CONN_CONNECTING;
    dl_push_back(&c->conns, &conn->all);
    p->nconns++;
    uv_tcp_nodelay(&conn->tcp, 1);
    req_detach(r);
    conn_start(conn, r);
    rc = uv_tcp_connect(&conn->connect_req, &conn->tcp, (struct sockaddr *)&p->addr, on_connect);
    if (rc < 0) {
        req_detach(r);
        char msg[160];
        snprintf(msg, sizeof msg, "connect %s%s:%d: %s", p->proxy ? "proxy " : "", p->dial_host,
                 p->dial_port, uv_strerror(rc));
        req_fail_later(r, rc, msg);
        conn_close(conn);
    }
}

/* ---- Pools and DNS ------------------------------------------------------------------- */

/* Lookup callback: cache the first address, or fail every waiting request. */
static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    hr_http_pool_t *p = g->data;
    hr_http_client_t *c = p->c;
    p->resolving = false;
    c->open_handles--;
    if (c->closing) {
        if (res) uv_freeaddrinfo(res);
        client_maybe_free(c);
        return;
    }
    if (status == 0 && res) {
        memcpy(&p->addr, res->ai_addr, res->ai_addrlen);
        p->addr_ok = true;
        p->addr_expires = uv_now(c->loop) + HR_HTTP_DNS_TTL_MS;
        uv_freeaddrinfo(res);
        pool_dispatch(p);
        return;
    }
    if (res) uv_freeaddrinfo(res);
    if (status == 0) status = UV_EAI_NONAME;
    char msg[160];
    snprintf(msg, sizeof msg, "resolve %s%s: %s", p->proxy ? "proxy " : "", p->dial_host,
             uv_strerror(status));
    while (!dl_empty(&p->waitq)) {
        hr_http_req_t *r = hr_container_of(p->waitq.next, hr_http_req_t, q);
        req_detach(r);
        req_complete(r, status, msg, NULL);
    }
}

/* Start a lookup of p's host unless one is running. Failure to start fails the waiters from
 * the defer handle. */
static void pool_resolve(hr_http_pool_t *p)
{
    if (p->resolving) return;
    hr_http_client_t *c = p->c;
    char port[8];
    snprintf(port, sizeof port, "%d", p->dial_port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    p->gai.data = p;
    int rc = uv_getaddrinfo(c->loop, &p->gai, on_resolved, p->dial_host, port, &hints);
    if (rc < 0) {
        while (!dl_empty(&p->waitq)) {
            hr_http_req_t *r = hr_container_of(p->waitq.next, hr_http_req_t, q);
            req_fail_later(r, rc, uv_strerror(rc));
        }
        return;
    }
    p->resolving = true;
    c->open_handles++;
}

/* Give waiting requests connections: an idle one (most recently used first) or a new one
 * while the pool is under max_conns_per_host. A retried request insists on a new connection
 * and closes an idle one to make room if it has to. */
static void pool_dispatch(hr_http_pool_t *p)
{
    hr_http_client_t *c = p->c;
    while (!c->closing && !dl_empty(&p->waitq)) {
        hr_http_req_t *r = hr_container_of(p->waitq.next, hr_http_req_t, q);
        if (!r->need_fresh && !dl_empty(&p->idle)) {
            hr_http_conn_t *conn = hr_container_of(p->idle.next, hr_http_conn_t, idle);
            dl_remove(&conn->idle);
            uv_timer_stop(&conn->idle_timer);
            conn->state = CONN_ACTIVE;
            req_detach(r);
            conn_start(conn, r);
            continue;
        }
        if (p->nconns >= c->opts.max_conns_per_host) {
            if (!r->need_fresh || dl_empty(&p->idle)) break;
            conn_close(hr_container_of(p->idle.prev, hr_http_conn_t, idle));
        }
        if (!p->addr_ok || (!p->literal && uv_now(c->loop) >= p->addr_expires)) {
            p->addr_ok = false;
            pool_resolve(p);
            break;
        }
        conn_open(p, r);
    }
}

/* True if nothing uses p: no connection, request, lookup or dispatch. */
static bool pool_unused(const hr_http_pool_t *p)
{
    return p->nconns == 0 && dl_empty(&p->waitq) && !p->resolving && !dl_linked(&p->kick);
}

/* True if p's proxy is proxy:proxy_port (both NULL: direct). */
static bool pool_via(const hr_http_pool_t *p, const char *proxy, int proxy_port)
{
    if (!p->proxy || !proxy) return !p->proxy && !proxy;
    return p->proxy_port == proxy_port && strcmp(p->proxy, proxy) == 0;
}

/* Find or make the pool of host:port with TLS context tls (NULL: plain http) through proxy
 * (NULL: direct). Making one frees the unused pools of the same host:port with another
 * context (a reload replaced it). Never NULL. */
static hr_http_pool_t *pool_get(hr_http_client_t *c, const char *host, int port, hr_tls_ctx_t *tls,
                                const char *proxy, int proxy_port)
{
    for (hr_dlink_t *l = c->pools.next; l != &c->pools; l = l->next) {
        hr_http_pool_t *p = hr_container_of(l, hr_http_pool_t, link);
        if (p->port == port && p->tls == tls && strcmp(p->host, host) == 0 &&
            pool_via(p, proxy, proxy_port))
            return p;
    }
    for (hr_dlink_t *l = c->pools.next, *next; l != &c->pools; l = next) {
        next = l->next;
        hr_http_pool_t *p = hr_container_of(l, hr_http_pool_t, link);
        if (p->tls && tls && p->port == port && strcmp(p->host, host) == 0 && pool_unused(p))
            pool_free(p);
    }
    hr_http_pool_t *p = hr_xcalloc(1, sizeof *p);
    p->c = c;
    p->host = hr_xstrdup(host);
    p->port = port;
    p->tls = hr_tls_ctx_ref(tls);
    p->proxy = proxy ? hr_xstrdup(proxy) : NULL;
    p->proxy_port = proxy_port;
    p->dial_host = proxy ? p->proxy : p->host;
    p->dial_port = proxy ? proxy_port : port;
    dl_init(&p->kick);
    dl_init(&p->idle);
    dl_init(&p->waitq);
    bool v6 = strchr(host, ':') != NULL;
    if (port == (tls ? 443 : 80))
        p->host_header = hr_xasprintf(v6 ? "[%s]" : "%s", host);
    else
        p->host_header = hr_xasprintf(v6 ? "[%s]:%d" : "%s:%d", host, port);
    if (uv_ip4_addr(p->dial_host, p->dial_port, (struct sockaddr_in *)&p->addr) == 0 ||
        uv_ip6_addr(p->dial_host, p->dial_port, (struct sockaddr_in6 *)&p->addr) == 0) {
        p->literal = true;
        p->addr_ok = true;
    }
    dl_push_back(&c->pools, &p->link);
    return p;
}

/* ---- llhttp callbacks ---------------------------------------------------------------- */

/* Fail the parse with UV_E2BIG once headers and body together exceed the limit. */
static int check_size(hr_http_conn_t *conn, size_t more)
{
    if (conn->hdata.len + conn->body.len + more > conn->c->opts.max_response_bytes) {
        conn->parse_err = UV_E2BIG;
        return HPE_USER;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    hr_buf_reset(&conn->hdata);
    hr_buf_reset(&conn->body);
    conn->nhdrs = 0;
    conn->in_value = true;
    conn->status = 0;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    if (check_size(conn, len + 2)) return HPE_USER;
    if (conn->in_value) { /* a new header starts */
        if (conn->hoff_cap < 2 * (conn->nhdrs + 1)) {
            conn->hoff_cap = conn->hoff_cap ? conn->hoff_cap * 2 : 32;
            conn->hoff = hr_xrealloc(conn->hoff, conn->hoff_cap * sizeof *conn->hoff);
        }
        conn->hoff[2 * conn->nhdrs] = conn->hdata.len;
        conn->in_value = false;
    }
    hr_buf_reserve(&conn->hdata, len);
    hr_ascii_lower(conn->hdata.data + conn->hdata.len, at, len);
    conn->hdata.len += len;
    conn->hdata.data[conn->hdata.len] = '\0';
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    hr_buf_appendc(&conn->hdata, '\0');
    conn->hoff[2 * conn->nhdrs + 1] = conn->hdata.len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    if (check_size(conn, len + 1)) return HPE_USER;
    hr_buf_append(&conn->hdata, at, len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    hr_buf_appendc(&conn->hdata, '\0');
    conn->nhdrs++;
    conn->in_value = true;
    return 0;
}

/* Headers done: a response to HEAD has no body (return 1 tells llhttp so). */
static int on_headers_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    conn->status = p->status_code;
    return conn->req && conn->req->is_head ? 1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    hr_http_conn_t *conn = p->data;
    if (check_size(conn, len)) return HPE_USER;
    hr_buf_append(&conn->body, at, len);
    return 0;
}

/* A message ended: skip 1xx interim responses; pause on the final one so that on_read
 * delivers it outside the parser. */
static int on_message_complete(llhttp_t *p)
{
    hr_http_conn_t *conn = p->data;
    if (conn->status >= 100 && conn->status < 200) return 0;
    conn->keep_alive = llhttp_should_keep_alive(p);
    conn->msg_done = true;
    return HPE_PAUSED;
}

/* Close callback of the defer handle. */
static void on_defer_close(uv_handle_t *h)
{
    hr_http_client_t *c = h->data;
    c->open_handles--;
    client_maybe_free(c);
}

/* ---- Public API ---------------------------------------------------------------------- */

/* Create a client on loop; opts may be NULL and zero fields take defaults. Never NULL. */
hr_http_client_t *hr_http_client_open(uv_loop_t *loop, const hr_http_client_opts_t *opts)
{
    hr_http_client_t *c = hr_xcalloc(1, sizeof *c);
    c->loop = loop;
    if (opts) c->opts = *opts;
    if (!c->opts.max_conns_per_host) c->opts.max_conns_per_host = HR_HTTP_DEF_CONNS;
    if (!c->opts.idle_timeout_ms) c->opts.idle_timeout_ms = HR_HTTP_DEF_IDLE_MS;
    if (!c->opts.max_response_bytes) c->opts.max_response_bytes = HR_HTTP_DEF_MAX_RES;
    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = on_message_begin;
    c->settings.on_header_field = on_header_field;
    c->settings.on_header_field_complete = on_header_field_complete;
    c->settings.on_header_value = on_header_value;
    c->settings.on_header_value_complete = on_header_value_complete;
    c->settings.on_headers_complete = on_headers_complete;
    c->settings.on_body = on_body;
    c->settings.on_message_complete = on_message_complete;
    dl_init(&c->pools);
    dl_init(&c->reqs);
    dl_init(&c->conns);
    dl_init(&c->failed);
    dl_init(&c->kicked);
    uv_idle_init(loop, &c->defer);
    c->defer.data = c;
    c->open_handles = 1;
    return c;
}

/* The context for https requests that bring none: the process's default (system trust store,
 * verification on), referenced on first use. A config with an https target built it as it
 * loaded, so this costs the loop no trust store load; NULL with err if it cannot be built. */
static hr_tls_ctx_t *client_default_tls(hr_http_client_t *c, char *err, size_t errlen)
{
    if (!c->default_tls) c->default_tls = hr_tls_client_default(err, errlen);
    return c->default_tls;
}

/* Copy s (without its NUL) to w; returns the end. The request head is built this way, not
 * with one sprintf per header (those took ~5k of the delivery loop's ~34k instructions per
 * forward, callgrind). */
static char *put_str(char *w, const char *s)
{
    size_t n = strlen(s);
    memcpy(w, s, n);
    return w + n;
}

/* Queue a request. Copies the method, headers and body into one buffer now (req may be
 * freed after the call). Returns 0 and cb runs exactly once from the loop later, or returns
 * UV_EINVAL (bad URL) / UV_ECANCELED (client closing) and cb never runs. */
int hr_http_client_send(hr_http_client_t *c, const hr_http_out_t *req, hr_http_done_cb cb,
                        void *arg)
{
    if (c->closing) return UV_ECANCELED;
    char err[256];
    /* Requests to one target name the same URL one after the other: parse it once. */
    if (!c->url_memo || strcmp(c->url_memo, req->url) != 0) {
        hr_url_t parsed;
        if (hr_url_parse(req->url, &parsed, err, sizeof err) < 0) {
            hr_log_debug("http: %s", err);
            return UV_EINVAL;
        }
        free(c->url_memo);
        hr_url_free(&c->url_parsed);
        c->url_memo = hr_xstrdup(req->url);
        c->url_parsed = parsed;
    }
    const hr_url_t u = c->url_parsed;
    hr_tls_ctx_t *tls = NULL;
    if (u.tls) {
        tls = req->tls ? req->tls : client_default_tls(c, err, sizeof err);
        if (!tls) {
            hr_log_error("http: %s", err);
            return UV_EINVAL;
        }
    }
    hr_url_t px = {0};
    if (req->proxy && *req->proxy &&
        (hr_url_parse(req->proxy, &px, err, sizeof err) < 0 || px.tls)) {
        hr_log_debug("http: proxy %s: %s", req->proxy, px.tls ? "must be http://" : err);
        hr_url_free(&px);
        return UV_EINVAL;
    }
    hr_http_pool_t *p = pool_get(c, u.host, u.port, tls, px.host, px.port);
    hr_url_free(&px);
    const char *method = req->method && *req->method ? req->method : "POST";
    /* Through a proxy, plain http names the whole URL in the request line. */
    bool absolute = p->proxy && !p->tls;

    size_t head_len = strlen(method) + strlen(u.path) + 2 * strlen(p->host_header) + 72;
    for (size_t i = 0; i < req->nheaders; i++)
        head_len += strlen(req->headers[i].name) + strlen(req->headers[i].value) + 4;
    hr_http_bytes_t *b = hr_xmalloc(sizeof *b + head_len + req->body_len);
    char *w = b->data;
    w = put_str(w, method);
    w = put_str(w, " ");
    if (absolute) {
        w = put_str(w, "http://");
        w = put_str(w, p->host_header);
    }
    w = put_str(w, u.path);
    w = put_str(w, " HTTP/1.1\r\nHost: ");
    w = put_str(w, p->host_header);
    w = put_str(w, "\r\n");
    for (size_t i = 0; i < req->nheaders; i++) {
        w = put_str(w, req->headers[i].name);
        w = put_str(w, ": ");
        w = put_str(w, req->headers[i].value);
        w = put_str(w, "\r\n");
    }
    w = put_str(w, "Content-Length: ");
    w += hr_fmt_i64(w, (int64_t)req->body_len);
    w = put_str(w, "\r\n\r\n");
    b->refs = 1;
    b->head_len = (size_t)(w - b->data);
    b->body_len = req->body_len;
    if (req->body_len) memcpy(w, req->body, req->body_len);

    hr_http_req_t *r = hr_xcalloc(1, sizeof *r);
    r->c = c;
    r->pool = p;
    r->bytes = b;
    r->cb = cb;
    r->arg = arg;
    r->is_head = strcmp(method, "HEAD") == 0;
    r->timeout_ms = req->timeout_ms ? req->timeout_ms : 30000;
    uv_timer_init(c->loop, &r->timer);
    c->open_handles++;
    uv_timer_start(&r->timer, on_req_timeout, r->timeout_ms, 0);
    dl_init(&r->q);
    dl_push_back(&c->reqs, &r->all);
    c->pending++;
    r->where = REQ_QUEUED;
    dl_push_back(&p->waitq, &r->q);
    pool_kick(p);
    return 0;
}

/* Requests queued or in flight. */
size_t hr_http_client_pending(const hr_http_client_t *c)
{
    return c->pending;
}

/* Fail every pending request with UV_ECANCELED (their callbacks run inside this call),
 * close every connection and the defer handle, cancel lookups; the client is freed once all
 * of that finished, then cb(arg) runs from the loop. A second call does nothing. */
void hr_http_client_close(hr_http_client_t *c, void (*cb)(void *arg), void *arg)
{
    if (c->closing) return;
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;
    while (!dl_empty(&c->reqs)) {
        hr_http_req_t *r = hr_container_of(c->reqs.next, hr_http_req_t, all);
        hr_http_conn_t *conn = r->where == REQ_CONN ? r->conn : NULL;
        req_detach(r);
        if (conn) conn_close(conn);
        req_complete(r, UV_ECANCELED, "cancelled: client closing", NULL);
    }
    while (!dl_empty(&c->conns))
        conn_close(hr_container_of(c->conns.next, hr_http_conn_t, all));
    for (hr_dlink_t *l = c->pools.next; l != &c->pools; l = l->next) {
        hr_http_pool_t *p = hr_container_of(l, hr_http_pool_t, link);
        if (dl_linked(&p->kick)) dl_remove(&p->kick);
        if (p->resolving) uv_cancel((uv_req_t *)&p->gai);
    }
    uv_close((uv_handle_t *)&c->defer, on_defer_close);
}
