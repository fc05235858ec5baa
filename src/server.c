/* Inbound HTTP/1.1 server: listener, connections, llhttp parsing, limits, timeouts, replies.
 *
 * Life of a connection (hr_conn_t):
 *   HANDSHAKE  (TLS only) accepted with a TLS context, handshake not complete: the timer runs
 *            idle_timeout_ms until the first byte, then request_timeout_ms from it (not
 *            re-armed), as for a request. A first byte that cannot start a TLS handshake
 *            (plain HTTP, garbage) or a failed handshake closes at once (logged at info).
 *   IDLE     waiting for the first byte of a request; the timer runs idle_timeout_ms.
 *   READING  a request has begun (on_message_begin); the timer runs request_timeout_ms from
 *            that first byte and is not re-armed by later bytes.
 *   APP      the request was handed to the app (on_request) and waits for hr_http_reply();
 *            parsing is paused (llhttp returned HPE_PAUSED), later bytes are kept in
 *            c->pending, and no timer runs.
 *   DRAIN    the reply is queued but the socket's write queue is large: parsing waits for
 *            the queue to drain; the timer runs idle_timeout_ms as a send timeout.
 *   ENDING   the last reply is queued with "Connection: close": uv_shutdown() sends FIN after
 *            the queued writes, then the rest of the client's bytes are read and dropped
 *            (a lingering close, so that unread input does not turn our FIN into a RST that
 *            destroys the reply on the client's side) until EOF or END_TIMEOUT_MS.
 * The request (hr_http_request_t) is embedded in its connection. A connection whose handles
 * are closed while the app holds its request stays allocated until hr_http_reply(), which then
 * only frees it; when the server itself is freed such connections are detached (server NULL).
 *
 * Accepting: the server owns its listening socket (a uv_poll on it, accept4 in
 * on_listen_readable) so that every accept error is seen and logged (libuv's own listener
 * handles EMFILE silently); past max_connections a connection is closed at once and counted.
 *
 * TLS: the connection's hr_tls_conn_t sits between the socket and everything above. on_read
 * feeds it the ciphertext and hands the plaintext it decrypts to conn_input, the path plain
 * bytes take directly; conn_write encrypts and sends the ciphertext through conn_write_raw, as
 * is the ciphertext every TLS step produces (handshake messages, tickets, alerts, close_notify
 * before the FIN of conn_end). The pre-scanner, llhttp and the limits see only plaintext.
 *
 * Memory: one read buffer per server (the loop is single-threaded and libuv hands it to the
 * read callback right after allocating), and per connection a string arena for the request
 * line and headers, a body buffer, a pending-input buffer and an output buffer, all reused
 * from request to request (with TLS also a plaintext buffer per server and a ciphertext output
 * buffer per connection). Writes that do not complete at once (uv_try_write) copy their rest
 * into a write request that owns its bytes.
 */
#include "hr/server.h"

#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hr/defaults.h"
#include "hr/log.h"

#define READ_BUF_SIZE   65536 /* per-server read buffer */
#define PENDING_MAX     65536 /* buffered unparsed input before reading stops */
#define DISCARD_MAX     65536 /* a body this small is read and dropped after an early reply */
#define WRITE_HIGH      (256u * 1024u)  /* write queue size above which parsing waits */
#define END_TIMEOUT_MS  2000            /* longest lingering close */
#define LINGER_MAX      (1024u * 1024u) /* bytes dropped during a lingering close */
#define BODY_KEEP_MAX   (256u * 1024u)  /* larger body buffers are freed between requests */
#define LISTEN_BACKLOG  511
#define ACCEPT_BATCH    64   /* connections accepted per readiness event */
#define WARN_EVERY_MS   1000 /* refusals and accept errors: at most one warn line this often */
#define UNSET           UINT64_MAX
#define DEFAULT_HEADERS HR_DEF_HEADER_BYTES /* header_limit when opts give 0 */
#define DEFAULT_BODY    HR_DEF_BODY_BYTES   /* body_limit when opts give 0 */

typedef enum { ST_IDLE, ST_READING, ST_APP, ST_DRAIN, ST_ENDING, ST_HANDSHAKE } conn_state_t;

/* States of the strictness pre-scanner (see "strictness" below): where the raw bytes of the
 * current request's head are. */
typedef enum {
    PS_START,      /* before the request line: empty lines are skipped (as llhttp does) */
    PS_REQLINE,    /* inside the request line */
    PS_LINE_START, /* at the first byte of a header line (or of the empty line ending them) */
    PS_LINE,       /* inside a header line */
    PS_END_CR,     /* CR of the empty line ending the headers seen */
    PS_PASSIVE     /* past the header block: llhttp frames the body; reset per request */
} prescan_state_t;

typedef struct hr_conn hr_conn_t;

struct hr_conn {
    hr_http_request_t req;  /* the current request; handed to the app */
    hr_server_t *server;    /* NULL once the server is freed (detached) */
    hr_conn_t *prev, *next; /* server's list of connections */
    uv_tcp_t tcp;           /* the socket */
    uv_timer_t timer;       /* the one timer: idle, request, send or linger deadline */
    uv_shutdown_t shutdown; /* FIN after the last reply */
    llhttp_t parser;        /* HTTP_REQUEST parser, paused while the app holds req */
    conn_state_t state;     /* see the top of the file */
    int handles_open;       /* tcp + timer not yet through their close callback */
    /* Request being parsed: strings live in arena; offsets until the headers are complete. */
    hr_buf_t arena;         /* url, header names and values, NUL-separated */
    size_t url_off;         /* start of the URL in arena */
    size_t hdr_cap;         /* capacity of headers and hoffs */
    size_t *hoffs;          /* 2 per header: name and value offsets in arena */
    hr_header_t *headers;   /* filled from hoffs when the headers are complete */
    hr_buf_t body;          /* de-chunked body */
    uint64_t msg_start;     /* stream offset of the request's first byte, or UNSET */
    uint64_t stream_off;    /* bytes given to llhttp before the current chunk */
    const char *chunk_base; /* start of the chunk llhttp is executing */
    int err_status;         /* limit hit inside a callback: 413 or 431, else 0 */
    const char *err_msg;    /* its message */
    prescan_state_t ps;     /* strictness pre-scanner state, kept across reads */
    int rl_spaces;          /* spaces seen in the request line (2 when it has a version) */
    uint64_t chunk_left;    /* data bytes of the current chunk not yet seen */
    int crlf_need;          /* bytes of the CRLF after a chunk's data not yet checked (0-2) */
    const char *chunk_end;  /* end of the data llhttp is executing */
    bool in_field;          /* receiving a header name */
    bool in_value;          /* receiving a header value */
    bool headers_done;      /* on_headers_complete seen (later headers are trailers) */
    bool msg_complete;      /* on_message_complete seen */
    bool handed;            /* on_request called, reply not yet made */
    bool replied;           /* hr_http_reply called for this request */
    bool discard_body;      /* replied in on_headers: drop the body */
    bool close_if_early;    /* a reply from on_headers must close (body large or unknown) */
    bool keep_alive;        /* the connection may carry another request */
    /* Connection state. */
    hr_buf_t pending;   /* input received while parsing is paused */
    size_t pending_off; /* bytes of pending already parsed */
    hr_buf_t out;       /* response head being built */
    size_t lingered;    /* bytes dropped during the lingering close */
    bool in_execute;    /* inside llhttp_execute: replies must not resume parsing */
    bool reading;       /* uv_read_start active */
    bool peer_eof;      /* the client sent FIN */
    bool ending;        /* no more requests: close once the replies are out */
    bool shut_sent;     /* uv_shutdown done: lingering */
    bool closing;       /* uv_close called */
    /* TLS (NULL / unused on a plain connection) */
    hr_tls_conn_t *tls; /* made with the server's context when accepted */
    hr_buf_t tls_out;   /* ciphertext being sent */
    bool hs_begun;      /* the first handshake byte arrived */
};

struct hr_server {
    uv_loop_t *loop;            /* the loop everything runs on */
    hr_server_opts_t opts;      /* copied from hr_server_open */
    llhttp_settings_t settings; /* parser callbacks, shared by the connections */
    int lfd;                    /* listening socket (ours: accepted by on_listen_readable) */
    uv_poll_t listener;         /* readiness of lfd */
    int reserve_fd;             /* spare descriptor given up on EMFILE to shed the backlog, or -1 */
    bool accept_paused;         /* EMFILE without a reserve: polling waits for a closed conn */
    uv_timer_t token;           /* never started: closed by hr_server_close so cb is async */
    int port;                   /* bound port */
    bool listener_open;         /* listener not yet through its close callback */
    bool listener_closing;      /* uv_close called on the listener */
    bool token_open;            /* token not yet through its close callback */
    bool stopping;              /* stop_accepting or close called */
    bool closing;               /* hr_server_close called */
    size_t nconns;              /* connections with handles open */
    size_t inflight;            /* requests handed over and not replied */
    uint64_t refused;           /* connections closed at once: max_connections reached */
    uint64_t refused_unlogged;  /* of those, not yet in a warn line */
    uint64_t refused_logged_ms; /* uv_now of the last refusal warn line, or 0 */
    uint64_t accept_errs;       /* accept errors not yet in a warn line */
    uint64_t accept_logged_ms;  /* uv_now of the last accept error warn line, or 0 */
    hr_conn_t *conns;           /* all connections, incl. closed ones whose req the app holds */
    void (*close_cb)(void *arg);
    void *close_arg;
    hr_tls_ctx_t *tls;        /* new connections speak TLS with it; NULL: plain HTTP */
    char rbuf[READ_BUF_SIZE]; /* read buffer shared by the connections */
    char pbuf[READ_BUF_SIZE]; /* TLS: plaintext decrypted from rbuf */
};

/* A write that uv_try_write could not finish: owns a copy of the unwritten bytes. */
typedef struct {
    uv_write_t req;
    uv_buf_t buf;
    char data[];
} write_req_t;

static void conn_close(hr_conn_t *c);
static void conn_end(hr_conn_t *c);
static void conn_process_pending(hr_conn_t *c);
static void server_maybe_finish(hr_server_t *s);
static void on_listen_readable(uv_poll_t *h, int status, int events);

/* ---------------------------------------------------------------- small helpers */

/* The standard reason phrase of an HTTP status; "Unknown" for codes it does not know. */
static const char *status_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

/* ASCII case-insensitive equality of a NUL-terminated string and a lower-case one. */
static bool name_eq(const char *s, const char *lower)
{
    for (; *s && *lower; s++, lower++) {
        char ch = *s;
        if (ch >= 'A' && ch <= 'Z') ch = (char)(ch - 'A' + 'a');
        if (ch != *lower) return false;
    }
    return *s == *lower;
}

/* True if s contains CR or LF (which would let a header value split the response). */
static bool has_crlf(const char *s)
{
    return strpbrk(s, "\r\n") != NULL;
}

/* Format addr as "ip:port" ("[ip]:port" for IPv6) into out. */
static void format_addr(const struct sockaddr *addr, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)addr;
        uv_ip6_name(a6, ip, sizeof ip);
        port = ntohs(a6->sin6_port);
        snprintf(out, outlen, "[%s]:%d", ip, port);
    } else {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)addr;
        uv_ip4_name(a4, ip, sizeof ip);
        port = ntohs(a4->sin_port);
        snprintf(out, outlen, "%s:%d", ip, port);
    }
}

/* Arm the connection timer for ms from now, or stop it if ms is 0. */
static void conn_arm(hr_conn_t *c, uint64_t ms, uv_timer_cb cb)
{
    if (c->closing) return;
    if (ms == 0)
        uv_timer_stop(&c->timer);
    else
        uv_timer_start(&c->timer, cb, ms, 0);
}

/* ---------------------------------------------------------------- writing */

/* Free a write request once libuv is done with it; a failed write closes the connection
 * (ECANCELED means it is closing already). Resumes parsing that waited for the drain. */
static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = hr_container_of(req, write_req_t, req);
    hr_conn_t *c = hr_container_of(req->handle, hr_conn_t, tcp);
    free(w);
    if (status == UV_ECANCELED || c->closing) return;
    if (status < 0) {
        hr_log_debug("write to %s: %s", c->req.peer, uv_strerror(status));
        conn_close(c);
        return;
    }
    if (c->state == ST_DRAIN && c->tcp.write_queue_size < WRITE_HIGH / 2) {
        c->state = ST_IDLE;
        conn_process_pending(c);
    }
}

/* Write bufs to the socket in order: as much as possible now with uv_try_write, the rest
 * through a uv_write that owns a copy. The caller keeps ownership of bufs. Returns 0, or a
 * negative libuv error (the connection is then to be closed by the caller). */
static int conn_write_raw(hr_conn_t *c, uv_buf_t *bufs, unsigned nbufs)
{
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
        total += bufs[i].len;
    size_t done = 0;
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n >= 0)
        done = (size_t)n;
    else if (n != UV_EAGAIN && n != UV_ENOSYS)
        return n;
    if (done == total) return 0;
    write_req_t *w = hr_xmalloc(sizeof *w + (total - done));
    size_t skip = done, off = 0;
    for (unsigned i = 0; i < nbufs; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    w->buf = uv_buf_init(w->data, (unsigned)off);
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &w->buf, 1, on_write);
    if (r < 0) free(w);
    return r;
}

/* Send the ciphertext c's TLS connection has produced. Returns 0 or a negative libuv error. */
static int tls_flush(hr_conn_t *c)
{
    if (hr_tls_conn_out_pending(c->tls) == 0) return 0;
    hr_buf_reset(&c->tls_out);
    hr_tls_conn_take_out(c->tls, &c->tls_out);
    uv_buf_t b = uv_buf_init(c->tls_out.data, (unsigned)c->tls_out.len);
    int r = conn_write_raw(c, &b, 1);
    if (c->tls_out.cap > BODY_KEEP_MAX) hr_buf_free(&c->tls_out);
    hr_buf_reset(&c->tls_out);
    return r;
}

/* Write bufs in order: on a TLS connection encrypted (the handshake is complete: replies only
 * follow a request), else as they are. The caller keeps ownership of bufs. Returns 0, or a
 * negative libuv error (the connection is then to be closed by the caller). */
static int conn_write(hr_conn_t *c, uv_buf_t *bufs, unsigned nbufs)
{
    if (!c->tls) return conn_write_raw(c, bufs, nbufs);
    for (unsigned i = 0; i < nbufs; i++) {
        if (hr_tls_conn_write(c->tls, bufs[i].base, bufs[i].len) != HR_TLS_OK) {
            hr_log_debug("write to %s: %s", c->req.peer, hr_tls_conn_error(c->tls));
            return UV_EPROTO;
        }
    }
    return tls_flush(c);
}

/* Copy n bytes of s to w; returns the end. */
static inline char *put(char *w, const char *s, size_t n)
{
    memcpy(w, s, n);
    return w + n;
}

/* Build and write a response for the current request of c. keep: the connection stays open
 * (else "Connection: close" is sent). Copies everything. Returns 0 or a negative libuv
 * error. */
static int conn_send_response(hr_conn_t *c, int status, const hr_header_t *headers, size_t nheaders,
                              const char *body, size_t body_len, bool keep)
{
    hr_buf_t *o = &c->out;
    hr_buf_reset(o);
    /* Written in place (room reserved first), not by an append per piece: this runs per
     * request. The status line, Content-Length and Connection take at most 120 bytes. */
    const char *reason = status_reason(status);
    size_t rlen = strlen(reason);
    hr_buf_reserve(o, rlen + 120);
    char *w = o->data;
    w = put(w, "HTTP/1.1 ", 9);
    w += hr_fmt_i64(w, status);
    *w++ = ' ';
    w = put(w, reason, rlen);
    w = put(w, "\r\n", 2);
    for (size_t i = 0; i < nheaders; i++) {
        const char *name = headers[i].name, *value = headers[i].value;
        if (!name || !value || !*name) continue;
        if (name_eq(name, "content-length") || name_eq(name, "connection")) continue;
        if (has_crlf(name) || has_crlf(value)) {
            hr_log_warn("reply header %s dropped: contains CR or LF", name);
            continue;
        }
        size_t nlen = strlen(name), vlen = strlen(value);
        o->len = (size_t)(w - o->data);
        hr_buf_reserve(o, nlen + vlen + 4 + 120); /* and what comes after the headers */
        w = o->data + o->len;
        w = put(w, name, nlen);
        w = put(w, ": ", 2);
        w = put(w, value, vlen);
        w = put(w, "\r\n", 2);
    }
    bool no_body = status == 204 || status == 304 || status < 200;
    if (!no_body) {
        w = put(w, "Content-Length: ", 16);
        w += hr_fmt_i64(w, (int64_t)body_len);
        w = put(w, "\r\n", 2);
    }
    if (!keep)
        w = put(w, "Connection: close\r\n", 19);
    else if (c->req.http_major == 1 && c->req.http_minor == 0)
        w = put(w, "Connection: keep-alive\r\n", 24);
    w = put(w, "\r\n", 2);
    o->len = (size_t)(w - o->data);
    o->data[o->len] = '\0';
    bool head = c->req.method && strcmp(c->req.method, "HEAD") == 0;
    uv_buf_t bufs[2] = {uv_buf_init(o->data, (unsigned)o->len), uv_buf_init(NULL, 0)};
    unsigned nbufs = 1;
    if (body && body_len && !no_body && !head) {
        bufs[1] = uv_buf_init((char *)body, (unsigned)body_len);
        nbufs = 2;
    }
    return conn_write(c, bufs, nbufs);
}

/* ---------------------------------------------------------------- closing */

/* Free a connection's memory; unlinks it from its server. Its handles must be closed. */
static void conn_free(hr_conn_t *c)
{
    hr_server_t *s = c->server;
    if (s) {
        if (c->prev)
            c->prev->next = c->next;
        else
            s->conns = c->next;
        if (c->next) c->next->prev = c->prev;
    }
    hr_buf_free(&c->arena);
    hr_buf_free(&c->body);
    hr_buf_free(&c->pending);
    hr_buf_free(&c->out);
    hr_buf_free(&c->tls_out);
    hr_tls_conn_free(c->tls);
    free(c->hoffs);
    free(c->headers);
    free(c);
}

/* Keep opts.conn_gauge (if any) equal to the open connections, for other threads. */
static void publish_conns(const hr_server_t *s)
{
    if (s->opts.conn_gauge)
        atomic_store_explicit(s->opts.conn_gauge, s->nconns, memory_order_relaxed);
}

/* Close callback of the connection's tcp and timer handles: once both are closed the
 * connection is freed, unless the app still holds its request (hr_http_reply frees it). */
static void on_conn_handle_close(uv_handle_t *h)
{
    hr_conn_t *c = h->data;
    if (--c->handles_open > 0) return;
    hr_server_t *s = c->server;
    if (s) {
        s->nconns--;
        publish_conns(s);
    }
    if (s && s->accept_paused && !s->stopping) { /* a descriptor is free again */
        s->accept_paused = false;
        uv_poll_start(&s->listener, UV_READABLE, on_listen_readable);
    }
    if (!c->handed) conn_free(c);
    if (s) server_maybe_finish(s);
}

/* Close the connection now: pending writes are cancelled. Safe to call more than once and
 * from any callback of the connection; the memory goes in the close callbacks. */
static void conn_close(hr_conn_t *c)
{
    if (c->closing) return;
    c->closing = true;
    c->reading = false;
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_close);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_close);
}

static void on_timer(uv_timer_t *t);

/* Shutdown callback: FIN is sent after every queued write; now drop the client's remaining
 * bytes until EOF or the end deadline (lingering close). */
static void on_shutdown(uv_shutdown_t *req, int status)
{
    hr_conn_t *c = hr_container_of(req, hr_conn_t, shutdown);
    if (status == UV_ECANCELED || c->closing) return;
    if (status < 0 || c->peer_eof) {
        conn_close(c);
        return;
    }
    c->shut_sent = true;
}

/* Allocation callback: every connection reads into the server's buffer (consumed or copied
 * before the read callback returns). Detached connections never read. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    hr_conn_t *c = h->data;
    buf->base = c->server->rbuf;
    buf->len = READ_BUF_SIZE;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Start or stop reading as the state wants: read unless closing, or the pending input is
 * full, or the peer is done sending. */
static void conn_update_reading(hr_conn_t *c)
{
    if (c->closing) return;
    bool want = !c->peer_eof &&
                (c->shut_sent || c->ending || c->pending.len - c->pending_off < PENDING_MAX);
    if (want == c->reading) return;
    if (want) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            conn_close(c);
            return;
        }
    } else {
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->reading = want;
}

/* End the connection gracefully: no more requests are parsed; FIN goes out after the
 * queued replies, then a lingering close (see the top of the file). Bounded by
 * END_TIMEOUT_MS in all. */
static void conn_end(hr_conn_t *c)
{
    if (c->closing || c->ending) return;
    c->ending = true;
    c->state = ST_ENDING;
    conn_arm(c, END_TIMEOUT_MS, on_timer);
    if (c->tls) {
        hr_tls_conn_shutdown(c->tls); /* close_notify before the FIN (none before a handshake) */
        if (tls_flush(c) < 0) {
            conn_close(c);
            return;
        }
    }
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    conn_update_reading(c);
}

/* Send a server-made error reply {"error": msg} for the current request and end the
 * connection. If the request was already answered or handed to the app, only end it. */
static void conn_fail(hr_conn_t *c, int status, const char *msg)
{
    if (c->closing || c->ending) return;
    if (!c->replied && !c->handed) {
        hr_buf_t body = HR_BUF_INIT;
        hr_buf_appends(&body, "{\"error\":");
        hr_buf_append_json_string(&body, msg, strlen(msg));
        hr_buf_appendc(&body, '}');
        hr_header_t ct = {"Content-Type", "application/json"};
        c->replied = true;
        int r = conn_send_response(c, status, &ct, 1, body.data, body.len, false);
        hr_buf_free(&body);
        if (r < 0) {
            conn_close(c);
            return;
        }
        hr_log_kv(HR_LOG_INFO, "rejected", HR_KV_INT("status", status),
                  HR_KV_STR("peer", c->req.peer), HR_KV_STR("reason", msg));
    }
    conn_end(c);
}

/* The deadline of the current state passed: 408 for a request not yet answered, else close
 * (a TLS handshake that began and did not complete is logged). */
static void on_timer(uv_timer_t *t)
{
    hr_conn_t *c = t->data;
    if (c->closing) return;
    if (c->state == ST_HANDSHAKE && c->hs_begun)
        hr_log_info("%s: closed: TLS handshake not complete within limits.request_timeout_ms "
                    "(%llu ms)",
                    c->req.peer, (unsigned long long)c->server->opts.request_timeout_ms);
    if (c->state == ST_READING && !c->ending) {
        conn_fail(c, 408, "request timeout");
        return;
    }
    conn_close(c);
}

/* ---------------------------------------------------------------- strictness
 *
 * llhttp 8.1 parses strictly by default (every lenient flag off; parser_set_strict says so
 * explicitly), but it lets through a few things RFC 9112 forbids. They are refused here:
 *   - obs-fold (a header line starting with SP or HTAB, RFC 9112 5.2) and an empty header
 *     name (": v"): llhttp 8.1 accepts both. prescan() looks at the raw bytes of the request
 *     head before llhttp does;
 *   - chunk data not followed by CRLF (RFC 9112 7.1): llhttp 8.1 skips any two bytes there,
 *     which lets a front proxy and us disagree on where a request ends (smuggling). on_body
 *     checks the two bytes after each chunk's data, prescan() those that arrive in a later
 *     read;
 *   - a chunk larger than what is left of body_limit: on_chunk_header answers 413 as soon as
 *     the size line is read, instead of waiting for the data (or the request timeout);
 *   - a request line without a version ("GET /"): llhttp takes it for HTTP/0.9 (and waits
 *     for headers); prescan() refuses it at the end of the line, on_headers_complete too.
 * The pre-scanner keeps its state in the connection, so a request split anywhere across
 * reads (even byte by byte) is judged the same as one that arrives whole. It only reads the
 * request line and headers of each request (PS_PASSIVE afterwards, until request_reset), so
 * body bytes are never mistaken for header lines. */

/* Turn off every lenient mode of llhttp 8.1 (they are off by default: this documents it and
 * keeps it so if the defaults change). */
static void parser_set_strict(llhttp_t *p)
{
    llhttp_set_lenient_headers(p, 0);
    llhttp_set_lenient_chunked_length(p, 0);
    llhttp_set_lenient_keep_alive(p, 0);
    llhttp_set_lenient_transfer_encoding(p, 0);
}

/* Check the raw bytes [data, data+len) that llhttp is about to parse: the end of a chunk's
 * CRLF left over from the previous read, and the shape of the request head's lines. Updates
 * c->ps and c->crlf_need. Returns NULL, or a message for a 400 (the connection then ends, so
 * the state need not be consistent afterwards). */
static const char *prescan(hr_conn_t *c, const char *data, size_t len)
{
    size_t i = 0;
    for (; c->crlf_need > 0 && i < len; i++, c->crlf_need--) {
        if (data[i] != "\r\n"[2 - c->crlf_need]) return "chunk data not followed by CRLF";
    }
    /* Inside a line only its end matters (and the request line's spaces): memchr finds it. */
    prescan_state_t ps = c->ps;
    while (i < len && ps != PS_PASSIVE) {
        char ch = data[i];
        switch (ps) {
        case PS_START:
            if (ch != '\r' && ch != '\n') ps = PS_REQLINE;
            c->rl_spaces = 0;
            i++;
            break;
        case PS_REQLINE: {
            /* "GET /" alone: llhttp would wait for headers of an HTTP/0.9 request. */
            const char *nl = memchr(data + i, '\n', len - i);
            size_t end = nl ? (size_t)(nl - data) : len;
            while (c->rl_spaces < 2) {
                const char *sp = memchr(data + i, ' ', end - i);
                if (!sp) break;
                c->rl_spaces++;
                i = (size_t)(sp - data) + 1;
            }
            i = end;
            if (!nl) break;
            if (c->rl_spaces < 2) return "request line without HTTP version";
            ps = PS_LINE_START;
            i++;
            break;
        }
        case PS_LINE: {
            const char *nl = memchr(data + i, '\n', len - i);
            if (!nl) {
                i = len;
                break;
            }
            ps = PS_LINE_START;
            i = (size_t)(nl - data) + 1;
            break;
        }
        case PS_LINE_START:
            if (ch == ' ' || ch == '\t') return "obsolete line folding in a header (obs-fold)";
            if (ch == ':') return "empty header name";
            ps = ch == '\r' ? PS_END_CR : ch == '\n' ? PS_PASSIVE : PS_LINE;
            i++;
            break;
        case PS_END_CR:
            ps = PS_PASSIVE; /* CR not followed by LF: llhttp refuses it */
            i++;
            break;
        case PS_PASSIVE: break;
        }
    }
    c->ps = ps;
    return NULL;
}

/* ---------------------------------------------------------------- parser callbacks */

/* Record the refusal of the request being parsed (status and its JSON error); returns how the
 * callback stops the parser (HPE_USER, or HPE_PAUSED from on_headers_complete). */
static int refuse(hr_conn_t *c, int status, const char *msg, int how)
{
    c->err_status = status;
    c->err_msg = msg;
    return how;
}

/* Check the header limit for a span [at, at+len) of the request line or headers; records
 * the request's first byte. Returns 0, or HPE_USER with a 431 recorded. */
static int header_span(hr_conn_t *c, const char *at, size_t len)
{
    if (c->headers_done) return 0; /* trailers: not kept, not counted */
    uint64_t pos = c->stream_off + (uint64_t)(at - c->chunk_base);
    if (c->msg_start == UNSET) c->msg_start = pos;
    if (pos + len - c->msg_start > c->server->opts.header_limit)
        return refuse(c, 431, "request header block too large", HPE_USER);
    return 0;
}

/* A request's first byte: its deadline starts now. */
static int on_message_begin(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    c->state = ST_READING;
    c->req.start_ns = uv_hrtime();
    conn_arm(c, c->server->opts.request_timeout_ms, on_timer);
    return 0;
}

/* Method and version: only counted against the header limit (llhttp keeps their values). */
static int on_method(llhttp_t *p, const char *at, size_t len)
{
    return header_span(p->data, at, len);
}

static int on_version(llhttp_t *p, const char *at, size_t len)
{
    return header_span(p->data, at, len);
}

/* URL pieces go to the arena; on_url_complete terminates it. */
static int on_url(llhttp_t *p, const char *at, size_t len)
{
    hr_conn_t *c = p->data;
    int r = header_span(c, at, len);
    if (r) return r;
    hr_buf_append(&c->arena, at, len);
    return 0;
}

static int on_url_complete(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    hr_buf_appendc(&c->arena, '\0');
    return 0;
}

/* A piece of a header name: a new header starts after a value (or at the first header).
 * Returns 0, or HPE_USER past the header limit. */
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    hr_conn_t *c = p->data;
    int r = header_span(c, at, len + 4); /* ": " and CRLF */
    if (r || c->headers_done) return r;  /* trailers are not kept */
    if (!c->in_field) {
        if (c->req.nheaders == c->hdr_cap) {
            c->hdr_cap = c->hdr_cap ? c->hdr_cap * 2 : 16;
            c->hoffs = hr_xrealloc(c->hoffs, c->hdr_cap * 2 * sizeof *c->hoffs);
            c->headers = hr_xrealloc(c->headers, c->hdr_cap * sizeof *c->headers);
        }
        c->hoffs[2 * c->req.nheaders] = c->arena.len;
        c->hoffs[2 * c->req.nheaders + 1] = c->arena.len; /* empty until the value */
        c->req.nheaders++;
        c->in_field = true;
    }
    hr_buf_append(&c->arena, at, len);
    return 0;
}

/* The name is complete: lower-case and terminate it. */
static int on_header_field_complete(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    if (c->headers_done || !c->in_field) return 0;
    c->in_field = false;
    size_t start = c->hoffs[2 * (c->req.nheaders - 1)];
    hr_ascii_lower(c->arena.data + start, c->arena.data + start, c->arena.len - start);
    hr_buf_appendc(&c->arena, '\0');
    return 0;
}

/* A piece of a header value. Returns 0, or HPE_USER past the header limit. */
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    hr_conn_t *c = p->data;
    int r = header_span(c, at, len);
    if (r || c->headers_done || c->req.nheaders == 0) return r;
    if (!c->in_value) {
        c->hoffs[2 * (c->req.nheaders - 1) + 1] = c->arena.len;
        c->in_value = true;
    }
    hr_buf_append(&c->arena, at, len);
    return 0;
}

/* The value is complete: trim surrounding spaces and tabs and NUL-terminate it. */
static int on_header_value_complete(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    if (c->headers_done || c->req.nheaders == 0) return 0;
    size_t *voff = &c->hoffs[2 * (c->req.nheaders - 1) + 1];
    if (!c->in_value) *voff = c->arena.len;
    c->in_value = false;
    while (c->arena.len > *voff &&
           (c->arena.data[c->arena.len - 1] == ' ' || c->arena.data[c->arena.len - 1] == '\t'))
        c->arena.len--;
    while (*voff < c->arena.len && (c->arena.data[*voff] == ' ' || c->arena.data[*voff] == '\t'))
        (*voff)++;
    hr_buf_appendc(&c->arena, '\0');
    return 0;
}

/* Turn the arena offsets into the request's pointers (the arena no longer grows). */
static void request_fix_pointers(hr_conn_t *c)
{
    hr_http_request_t *r = &c->req;
    hr_buf_reserve(&c->arena, 0);
    c->arena.data[c->arena.len] = '\0';
    char *url = c->arena.data + c->url_off;
    char *q = strchr(url, '?');
    r->path = url;
    r->query = "";
    if (q) {
        *q = '\0';
        r->query = q + 1;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        c->headers[i].name = c->arena.data + c->hoffs[2 * i];
        c->headers[i].value = c->arena.data + c->hoffs[2 * i + 1];
    }
    r->headers = r->nheaders ? c->headers : NULL;
}

/* Headers complete: enforce the body limit, let the app look (and maybe answer), and send
 * "100 Continue" if asked for. Returns 0 to read the body, or HPE_PAUSED to stop parsing
 * (the connection then ends). */
static int on_headers_complete(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    hr_server_t *s = c->server;
    hr_http_request_t *r = &c->req;
    c->headers_done = true;
    r->method = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    r->http_major = llhttp_get_http_major(p);
    r->http_minor = llhttp_get_http_minor(p);
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_len = (p->flags & F_CONTENT_LENGTH) != 0 && !chunked;
    r->content_length = has_len ? p->content_length : UINT64_MAX;
    c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade && !s->stopping;
    request_fix_pointers(c);

    if (r->http_major == 0) /* llhttp's HTTP/0.9: "GET /" with nothing after the URL */
        return refuse(c, 400, "malformed HTTP request: request line without HTTP version",
                      HPE_PAUSED);
    if (has_len && r->content_length > s->opts.body_limit)
        return refuse(c, 413, "request body too large", HPE_PAUSED);
    if (has_len) hr_buf_reserve(&c->body, (size_t)r->content_length);

    const char *expect = hr_http_header(r, "expect");
    bool wants_continue = expect && name_eq(expect, "100-continue") && r->http_minor >= 1 &&
                          (chunked || (has_len && r->content_length > 0));
    /* Answered early, a small body is dropped and the connection goes on; a large or
     * unknown one (or one the client waits to send) means closing after the reply. */
    uint64_t rest = has_len ? r->content_length : 0;
    c->close_if_early = chunked || rest > DISCARD_MAX || wants_continue;
    if (s->opts.on_headers) s->opts.on_headers(r, s->opts.arg);
    if (c->closing || c->ending) return HPE_PAUSED;
    if (c->replied) {
        if (!c->keep_alive) {
            conn_end(c);
            return HPE_PAUSED;
        }
        c->discard_body = true;
        return 0;
    }
    if (wants_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
        if (conn_write(c, &b, 1) < 0) {
            conn_close(c);
            return HPE_PAUSED;
        }
    }
    return 0;
}

/* A piece of the (de-chunked) body: kept, or dropped after an early reply. Returns 0, or
 * HPE_USER with a 413 recorded past the body limit. */
static int on_body(llhttp_t *p, const char *at, size_t len)
{
    hr_conn_t *c = p->data;
    if (p->flags & F_CHUNKED) {
        /* llhttp hands over at most the chunk's size; after the last byte comes CRLF. */
        c->chunk_left -= len < c->chunk_left ? len : c->chunk_left;
        if (c->chunk_left == 0) {
            const char *q = at + len;
            for (c->crlf_need = 2; c->crlf_need > 0 && q < c->chunk_end; q++, c->crlf_need--) {
                if (*q != "\r\n"[2 - c->crlf_need])
                    return refuse(c, 400, "malformed HTTP request: chunk data not followed by CRLF",
                                  HPE_USER);
            }
        }
    }
    if (c->discard_body) return 0;
    if (c->body.len + len > c->server->opts.body_limit)
        return refuse(c, 413, "request body too large", HPE_USER);
    hr_buf_append(&c->body, at, len);
    return 0;
}

/* A chunk's size line is read (its size in p->content_length): refuse at once a chunk that
 * would take the body past the limit. Returns 0, or HPE_USER with a 413 recorded. */
static int on_chunk_header(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    c->chunk_left = p->content_length;
    if (!c->discard_body && p->content_length > c->server->opts.body_limit - c->body.len)
        return refuse(c, 413, "request body too large (chunk size over the limit)", HPE_USER);
    return 0;
}

/* The request is complete: hand it to the app (unless answered early) and pause the parser
 * until the reply; the parse loop resumes it. */
static int on_message_complete(llhttp_t *p)
{
    hr_conn_t *c = p->data;
    hr_server_t *s = c->server;
    c->msg_complete = true;
    uv_timer_stop(&c->timer);
    if (!c->replied) {
        c->state = ST_APP;
        hr_buf_reserve(&c->body, 0);
        c->body.data[c->body.len] = '\0';
        c->req.body = c->body.data;
        c->req.body_len = c->body.len;
        c->handed = true;
        s->inflight++;
        s->opts.on_request(&c->req, s->opts.arg);
    }
    return HPE_PAUSED;
}

/* Forget the finished request; keep the buffers for the next one. */
static void request_reset(hr_conn_t *c)
{
    hr_http_request_t *r = &c->req;
    hr_buf_reset(&c->arena);
    if (c->body.cap > BODY_KEEP_MAX)
        hr_buf_free(&c->body);
    else
        hr_buf_reset(&c->body);
    r->method = r->path = r->query = NULL;
    r->headers = NULL;
    r->nheaders = 0;
    r->body = NULL;
    r->body_len = 0;
    r->content_length = UINT64_MAX;
    r->start_ns = 0;
    r->data = NULL;
    c->url_off = 0;
    c->msg_start = UNSET;
    c->err_status = 0;
    c->err_msg = NULL;
    c->in_field = c->in_value = false;
    c->headers_done = c->msg_complete = c->handed = c->replied = c->discard_body = false;
    c->close_if_early = false;
    c->ps = PS_START;
    c->chunk_left = 0;
    c->crlf_need = 0;
    c->keep_alive = false;
}

/* ---------------------------------------------------------------- the parse loop */

/* Parse data (received now, or kept in c->pending), handling every request in it that can
 * be handled now. Returns the number of bytes consumed; the caller keeps the rest if the
 * connection is still parsing (a request waits for its reply). */
static size_t conn_execute(hr_conn_t *c, const char *data, size_t len)
{
    size_t used = 0;
    while (!c->closing && !c->ending) {
        c->chunk_base = data + used;
        c->chunk_end = data + len;
        const char *bad = prescan(c, data + used, len - used);
        if (bad) {
            char msg[128];
            snprintf(msg, sizeof msg, "malformed HTTP request: %s", bad);
            conn_fail(c, 400, msg);
            break;
        }
        c->in_execute = true;
        llhttp_errno_t err = llhttp_execute(&c->parser, data + used, len - used);
        c->in_execute = false;
        size_t n = len - used;
        if (err != HPE_OK) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            if (pos && pos >= data + used && pos <= data + len) n = (size_t)(pos - (data + used));
        }
        c->stream_off += n;
        used += n;
        if (c->closing || c->ending) break;
        if (c->err_status) {
            conn_fail(c, c->err_status, c->err_msg);
            break;
        }
        if (err == HPE_OK) {
            /* All consumed. A header block still open must stay within the limit. */
            if (c->state == ST_READING && !c->headers_done && c->msg_start != UNSET &&
                c->stream_off - c->msg_start > c->server->opts.header_limit)
                conn_fail(c, 431, "request header block too large");
            break;
        }
        if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE) {
            char msg[256];
            snprintf(msg, sizeof msg, "malformed HTTP request: %s",
                     llhttp_get_error_reason(&c->parser));
            conn_fail(c, 400, msg);
            break;
        }
        /* Paused at the end of a message. */
        if (!c->msg_complete) { /* should not happen: never resume blindly */
            conn_close(c);
            break;
        }
        if (!c->replied) break; /* the app holds it: wait for hr_http_reply */
        if (!c->keep_alive) {
            conn_end(c);
            break;
        }
        request_reset(c);
        llhttp_resume(&c->parser);
        if (c->tcp.write_queue_size >= WRITE_HIGH) {
            c->state = ST_DRAIN;
            conn_arm(c, c->server->opts.idle_timeout_ms, on_timer);
            break;
        }
        c->state = ST_IDLE;
        if (used == len) break;
    }
    if (!c->closing && !c->ending && c->state == ST_IDLE) {
        if (c->peer_eof)
            conn_end(c);
        else
            conn_arm(c, c->server->opts.idle_timeout_ms, on_timer);
    }
    return used;
}

/* Parse what c->pending holds (after a reply, or once the write queue drained). */
static void conn_process_pending(hr_conn_t *c)
{
    size_t avail = c->pending.len - c->pending_off;
    if (avail) {
        size_t n = conn_execute(c, c->pending.data + c->pending_off, avail);
        c->pending_off += n;
    } else {
        conn_execute(c, "", 0); /* settles the state and the timer */
    }
    if (c->pending_off >= c->pending.len || c->ending || c->closing) {
        if (c->pending.cap > PENDING_MAX * 2) hr_buf_free(&c->pending);
        hr_buf_reset(&c->pending);
        c->pending_off = 0;
    }
    conn_update_reading(c);
}

/* Timer callback armed by a late reply: parse the requests buffered meanwhile, from the loop,
 * so that hr_http_reply never calls back into the app. */
static void on_resume(uv_timer_t *t)
{
    hr_conn_t *c = t->data;
    if (c->closing || c->ending) return;
    conn_process_pending(c);
}

/* The client is done sending (EOF, or a TLS close_notify): end the connection once the
 * requests already received are answered. */
static void conn_peer_eof(hr_conn_t *c)
{
    c->peer_eof = true;
    conn_update_reading(c);
    if (c->ending) {
        if (c->shut_sent) conn_close(c); /* else on_shutdown closes */
        return;
    }
    if (c->state == ST_HANDSHAKE) {
        conn_close(c);
        return;
    }
    /* Half-closed clients still get the replies to what they sent. */
    if (c->state == ST_IDLE || c->state == ST_READING) conn_end(c);
}

/* Plaintext from the client: parse it at once, or keep it while parsing waits. */
static void conn_input(hr_conn_t *c, const char *data, size_t len)
{
    if (c->state == ST_APP || c->state == ST_DRAIN || c->pending.len > c->pending_off) {
        hr_buf_append(&c->pending, data, len);
        conn_update_reading(c);
        return;
    }
    size_t n = conn_execute(c, data, len);
    if (n < len && !c->closing && !c->ending) {
        hr_buf_append(&c->pending, data + n, len - n);
        conn_update_reading(c);
    }
}

/* Close a TLS connection at once because of what (and reason, if not NULL), in an info line
 * naming the peer. An alert the TLS side queued goes out first if the socket takes it now. */
static void tls_refuse(hr_conn_t *c, const char *what, const char *reason)
{
    hr_log_info("%s: closed: %s%s%s", c->req.peer, what, reason ? ": " : "", reason ? reason : "");
    if (hr_tls_conn_out_pending(c->tls) > 0) {
        hr_buf_reset(&c->tls_out);
        hr_tls_conn_take_out(c->tls, &c->tls_out);
        uv_buf_t b = uv_buf_init(c->tls_out.data, (unsigned)c->tls_out.len);
        (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    conn_close(c);
}

/* The first byte of a TLS connection must start a handshake record (content type 22); a
 * letter is a plain HTTP request. Returns true if it may (else the connection is closed);
 * starts the handshake deadline. */
static bool tls_first_byte(hr_conn_t *c, unsigned char b0)
{
    c->hs_begun = true;
    if (b0 >= 'A' && b0 <= 'Z') {
        tls_refuse(c, "plain HTTP sent to the TLS listener", NULL);
        return false;
    }
    if (b0 != 0x16) {
        char why[32];
        snprintf(why, sizeof why, "first byte 0x%02x", b0);
        tls_refuse(c, "not a TLS handshake", why);
        return false;
    }
    conn_arm(c, c->server->opts.request_timeout_ms, on_timer);
    return true;
}

/* After a TLS step that returned st: a failure closes at once (logged as what), else the
 * ciphertext the step produced is sent. Returns true if the connection goes on. */
static bool tls_step_done(hr_conn_t *c, hr_tls_status_t st, const char *what)
{
    if (st == HR_TLS_ERROR) {
        tls_refuse(c, what, hr_tls_conn_error(c->tls));
        return false;
    }
    if (tls_flush(c) < 0) {
        conn_close(c);
        return false;
    }
    return true;
}

/* Ciphertext from the client: step the handshake, then hand all it decrypts to conn_input.
 * The ciphertext each step produces is sent at once; any TLS failure closes. */
static void tls_input(hr_conn_t *c, const char *data, size_t len)
{
    hr_server_t *s = c->server;
    if (c->state == ST_HANDSHAKE && !c->hs_begun && !tls_first_byte(c, (unsigned char)data[0]))
        return;
    hr_tls_conn_feed(c->tls, data, len);
    if (c->state == ST_HANDSHAKE) {
        hr_tls_status_t st = hr_tls_conn_handshake(c->tls);
        if (!tls_step_done(c, st, "TLS handshake failed") || st != HR_TLS_OK) return;
        c->state = ST_IDLE;
        conn_arm(c, s->opts.idle_timeout_ms, on_timer);
    }
    while (!c->closing && !c->ending) {
        size_t n = 0;
        hr_tls_status_t st = hr_tls_conn_read(c->tls, s->pbuf, sizeof s->pbuf, &n);
        if (!tls_step_done(c, st, "TLS error")) return;
        if (st == HR_TLS_CLOSED) conn_peer_eof(c);
        if (st != HR_TLS_OK) return;
        conn_input(c, s->pbuf, n);
    }
}

/* Read callback: plaintext to conn_input, ciphertext through tls_input. EOF ends the
 * connection once the requests already received are answered. */
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    hr_conn_t *c = hr_container_of(stream, hr_conn_t, tcp);
    if (c->closing || nread == 0) return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            hr_log_debug("read from %s: %s", c->req.peer, uv_strerror((int)nread));
            conn_close(c);
            return;
        }
        conn_peer_eof(c);
        return;
    }
    if (c->ending) { /* lingering close: drop */
        c->lingered += (size_t)nread;
        if (c->lingered > LINGER_MAX) conn_close(c);
        return;
    }
    if (c->tls)
        tls_input(c, buf->base, (size_t)nread);
    else
        conn_input(c, buf->base, (size_t)nread);
}

/* ---------------------------------------------------------------- accepting */

/* True if a rate-limited warn line may go out now (at most one per WARN_EVERY_MS); then
 * *last is set to now. */
static bool warn_due(hr_server_t *s, uint64_t *last)
{
    uint64_t now = uv_now(s->loop);
    if (*last != 0 && now - *last < WARN_EVERY_MS) return false;
    *last = now ? now : 1;
    return true;
}

/* An accept error: counted and logged, at most once per WARN_EVERY_MS with the count since the
 * last line. On EMFILE/ENFILE libuv (1.44, src/unix/stream.c uv__emfile_trick) has already
 * closed its reserve descriptor, accepted and closed the waiting connections and reopened it,
 * so the listener does not spin on a queue it cannot empty. */
static void accept_failed(hr_server_t *s, int err)
{
    s->accept_errs++;
    if (!warn_due(s, &s->accept_logged_ms)) return;
    hr_log_warn("accept: %s (%llu error%s since the last line; open connections %zu)",
                uv_strerror(err), (unsigned long long)s->accept_errs,
                s->accept_errs == 1 ? "" : "s", s->nconns);
    s->accept_errs = 0;
}

/* Count and log (at most once per WARN_EVERY_MS, with the count since the last line) n
 * connections closed at once by the server: max_connections open, or shed on EMFILE. */
static void count_refused(hr_server_t *s, uint64_t n, const char *why)
{
    s->refused += n;
    s->refused_unlogged += n;
    if (!warn_due(s, &s->refused_logged_ms)) return;
    hr_log_warn("%s: %llu connection%s refused since the last line (%llu in all)", why,
                (unsigned long long)s->refused_unlogged, s->refused_unlogged == 1 ? "" : "s",
                (unsigned long long)s->refused);
    s->refused_unlogged = 0;
}

/* EMFILE/ENFILE: the pending connections cannot be accepted, and the listener would stay
 * readable and spin. Give up the reserve descriptor, accept and close what is waiting, take
 * the reserve back (the classic fix; libuv does the same for its own listeners). Without a
 * reserve, stop polling until one of our connections closes. */
static void shed_backlog(hr_server_t *s)
{
    if (s->reserve_fd < 0) s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (s->reserve_fd < 0) {
        s->accept_paused = true;
        uv_poll_stop(&s->listener);
        return;
    }
    close(s->reserve_fd);
    uint64_t n = 0;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0 && errno == EINTR) continue;
        if (fd < 0) break;
        close(fd);
        n++;
    }
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (n) count_refused(s, n, "out of file descriptors (RLIMIT_NOFILE)");
}

/* A socket fd accepted from the listener: set up its connection and start reading. Takes
 * fd (closed on failure, which is logged). */
static void conn_open(hr_server_t *s, int fd)
{
    hr_conn_t *c = hr_xcalloc(1, sizeof *c);
    c->server = s;
    c->msg_start = UNSET;
    c->req.content_length = UINT64_MAX;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    publish_conns(s);
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    parser_set_strict(&c->parser);
    c->parser.data = c;
    int r = uv_tcp_open(&c->tcp, fd);
    if (r < 0) {
        close(fd);
        accept_failed(s, r);
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sslen = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen) == 0)
        format_addr((const struct sockaddr *)&ss, c->req.peer, sizeof c->req.peer);
    else
        snprintf(c->req.peer, sizeof c->req.peer, "?");
    c->state = ST_IDLE;
    if (s->tls) {
        char err[256];
        c->tls = hr_tls_conn_new(s->tls, NULL, err, sizeof err);
        if (!c->tls) {
            hr_log_warn("%s: %s", c->req.peer, err);
            conn_close(c);
            return;
        }
        c->state = ST_HANDSHAKE;
    }
    conn_arm(c, s->opts.idle_timeout_ms, on_timer);
    conn_update_reading(c);
}

/* The listener is readable: accept up to ACCEPT_BATCH connections. Past max_connections they
 * are closed at once and counted; accept errors are logged (rate-limited); EMFILE/ENFILE
 * sheds the backlog so that the loop does not spin. */
static void on_listen_readable(uv_poll_t *h, int status, int events)
{
    hr_server_t *s = h->data;
    (void)events;
    if (status < 0) {
        accept_failed(s, status);
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && !s->stopping; i++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            if (e == EINTR || e == ECONNABORTED) continue;
            accept_failed(s, -e);
            if (e == EMFILE || e == ENFILE) shed_backlog(s);
            return;
        }
        if (s->opts.max_connections && s->nconns >= s->opts.max_connections) {
            close(fd);
            char why[64];
            snprintf(why, sizeof why, "limits.max_connections (%zu) reached",
                     s->opts.max_connections);
            count_refused(s, 1, why);
            continue;
        }
        conn_open(s, fd);
    }
}

/* ---------------------------------------------------------------- public API */

/* Resolve host (a literal address or a name such as "localhost") into out. Returns 0 or a
 * negative libuv error. */
static int resolve(uv_loop_t *loop, const char *host, int port, struct sockaddr_storage *out)
{
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0) return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0) return 0;
    uv_getaddrinfo_t req;
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    int r = uv_getaddrinfo(loop, &req, NULL, host, portstr, &hints);
    if (r < 0) return r;
    memcpy(out, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    return 0;
}

/* Make a non-blocking listening socket bound to addr (SO_REUSEADDR as uv_tcp_bind does; with
 * reuseport also SO_REUSEPORT, for which libuv 1.44 has no flag). With reuseport and
 * exclusive, first check with a plain bind that nothing else listens there: SO_REUSEPORT
 * would otherwise quietly share the port with another process of the same user (a second
 * router on the same spool). Returns the fd, or a negative errno (nothing left open). */
static int bind_listener(const struct sockaddr_storage *addr, bool reuseport, bool exclusive)
{
    socklen_t alen =
        addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int on = 1;
    if (reuseport && exclusive && ((const struct sockaddr_in *)addr)->sin_port != 0) {
        int probe = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0) return -errno;
        setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on); /* as uv_tcp_bind */
        int rc = bind(probe, (const struct sockaddr *)addr, alen) == 0 ? 0 : -errno;
        close(probe);
        if (rc < 0) return rc;
    }
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) != 0) ||
        bind(fd, (const struct sockaddr *)addr, alen) != 0 || listen(fd, LISTEN_BACKLOG) != 0)
        rc = -errno;
    if (rc < 0) {
        close(fd);
        return rc;
    }
    return fd;
}

/* Resolve opts->host, bind and listen (see server.h). A header_limit or body_limit of 0
 * means the defaults above; a timeout of 0 disables that timeout. Returns NULL with the
 * reason in err (nothing is left behind: no handle was made). */
hr_server_t *hr_server_open(uv_loop_t *loop, const hr_server_opts_t *opts, char *err, size_t errlen)
{
    const char *host = opts->host ? opts->host : "127.0.0.1";
    const char *lb = strchr(host, ':') ? "[" : "", *rb = strchr(host, ':') ? "]" : "";
    if (!opts->on_request) {
        snprintf(err, errlen, "listen %s%s%s:%d: no on_request callback", lb, host, rb, opts->port);
        return NULL;
    }
    struct sockaddr_storage addr;
    int r = resolve(loop, host, opts->port, &addr);
    if (r < 0) {
        snprintf(err, errlen, "listen %s%s%s:%d: %s", lb, host, rb, opts->port, uv_strerror(r));
        return NULL;
    }
    hr_server_t *s = hr_xcalloc(1, sizeof *s);
    s->loop = loop;
    s->opts = *opts;
    s->opts.host = NULL; /* not owned: do not keep */
    s->opts.tls = NULL;  /* kept as s->tls, with a reference */
    if (s->opts.header_limit == 0) s->opts.header_limit = DEFAULT_HEADERS;
    if (s->opts.body_limit == 0) s->opts.body_limit = DEFAULT_BODY;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_method = on_method;
    s->settings.on_version = on_version;
    s->settings.on_url = on_url;
    s->settings.on_url_complete = on_url_complete;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_field_complete = on_header_field_complete;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
    s->settings.on_chunk_header = on_chunk_header;

    s->reserve_fd = -1;
    s->lfd = r = bind_listener(&addr, opts->reuseport, opts->exclusive);
    if (r < 0) goto err_free;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (getsockname(s->lfd, (struct sockaddr *)&bound, &blen) != 0) {
        r = -errno;
        goto err_close_fd;
    }
    r = uv_poll_init_socket(loop, &s->listener, s->lfd);
    if (r < 0) goto err_close_fd;
    s->listener.data = s;
    r = uv_poll_start(&s->listener, UV_READABLE, on_listen_readable);
    if (r < 0) { /* cannot happen for a fresh poll handle; keep the cleanup simple */
        hr_log_error("listen: uv_poll_start: %s", uv_strerror(r));
        abort();
    }
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    uv_timer_init(loop, &s->token);
    s->token.data = s;
    s->listener_open = s->token_open = true;
    s->tls = hr_tls_ctx_ref(opts->tls);
    return s;

err_close_fd:
    close(s->lfd);
err_free:
    snprintf(err, errlen, "listen %s%s%s:%d: %s", lb, host, rb, opts->port, uv_strerror(r));
    free(s);
    return NULL;
}

/* The bound port. */
int hr_server_port(const hr_server_t *s)
{
    return s->port;
}

/* New connections use ctx from now on; open ones keep theirs (see server.h). */
void hr_server_set_tls(hr_server_t *s, hr_tls_ctx_t *ctx)
{
    hr_tls_ctx_t *old = s->tls;
    s->tls = hr_tls_ctx_ref(ctx);
    hr_tls_ctx_unref(old);
}

/* Requests handed to the app (on_request) and not yet answered. */
size_t hr_server_inflight(const hr_server_t *s)
{
    return s->inflight;
}

/* Connections whose handles are not yet closed. */
size_t hr_server_connections(const hr_server_t *s)
{
    return s->nconns;
}

/* Connections refused past max_connections. */
uint64_t hr_server_refused(const hr_server_t *s)
{
    return s->refused;
}

/* Raise the soft descriptor limit to the hard one (see server.h). */
uint64_t hr_server_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    if (rl.rlim_cur != rl.rlim_max) {
        rlim_t want = rl.rlim_max;
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            hr_log_warn("raising RLIMIT_NOFILE to %llu: %s", (unsigned long long)want,
                        strerror(errno));
            getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

/* (nofile - reserve) / workers, at least 16 (see server.h). */
size_t hr_server_default_max_connections(uint64_t nofile, uint64_t reserve, unsigned workers)
{
    if (workers == 0) workers = 1;
    uint64_t left = nofile > reserve ? nofile - reserve : 0;
    uint64_t each = left / workers;
    if (each > 10000000) each = 10000000; /* the largest limits.max_connections */
    return each < 16 ? 16 : (size_t)each;
}

/* Free the server once it is closing and every handle is closed; connections whose request
 * the app still holds are detached first. */
static void server_maybe_finish(hr_server_t *s)
{
    if (!s->closing || s->listener_open || s->token_open || s->nconns > 0) return;
    for (hr_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        c->server = NULL;
        c->prev = c->next = NULL;
    }
    s->conns = NULL;
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    hr_tls_ctx_unref(s->tls);
    free(s);
    if (cb) cb(arg);
}

/* Close callbacks of the listener and the token: the server may be done. */
static void on_listener_close(uv_handle_t *h)
{
    hr_server_t *s = h->data;
    close(s->lfd);
    if (s->reserve_fd >= 0) close(s->reserve_fd);
    s->reserve_fd = -1;
    s->listener_open = false;
    server_maybe_finish(s);
}

static void on_token_close(uv_handle_t *h)
{
    hr_server_t *s = h->data;
    s->token_open = false;
    server_maybe_finish(s);
}

/* Close the listener; close idle connections (after their last reply is out); the others
 * answer what they are working on with "Connection: close" and end. Idempotent. */
void hr_server_stop_accepting(hr_server_t *s)
{
    if (s->stopping) return;
    s->stopping = true;
    if (!s->listener_closing) {
        s->listener_closing = true;
        uv_close((uv_handle_t *)&s->listener, on_listener_close);
    }
    for (hr_conn_t *c = s->conns; c; c = c->next) {
        if (c->closing || c->ending) continue;
        c->keep_alive = false;
        if (c->state == ST_HANDSHAKE) {
            conn_close(c); /* no request yet */
        } else if (c->state == ST_IDLE && c->pending.len == c->pending_off) {
            if (c->tcp.write_queue_size > 0)
                conn_end(c); /* let the last reply out */
            else
                conn_close(c);
        } else if (c->state == ST_DRAIN)
            conn_end(c);
    }
}

/* Close the listener and every connection now (queued writes are cancelled); requests the
 * app holds stay valid until it replies. cb runs from the last close callback, after which
 * the server is freed. Calling it twice does nothing. */
void hr_server_close(hr_server_t *s, void (*cb)(void *arg), void *arg)
{
    if (s->closing) return;
    hr_server_stop_accepting(s);
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    for (hr_conn_t *c = s->conns; c; c = c->next)
        conn_close(c);
    uv_close((uv_handle_t *)&s->token, on_token_close);
}

/* Answer req (see server.h): write the response, then either go on with the next request of
 * the connection (buffered requests are parsed from the loop: this never calls back into the
 * app) or end the connection. On a connection that is
 * gone it only frees what belongs to req. Copies headers and body. */
void hr_http_reply(hr_http_request_t *req, int status, const hr_header_t *headers, size_t nheaders,
                   const char *body, size_t body_len)
{
    hr_conn_t *c = hr_container_of(req, hr_conn_t, req);
    hr_server_t *s = c->server;
    if (c->replied) {
        hr_log_error("hr_http_reply called twice for %s %s", req->method, req->path);
        return;
    }
    if (c->handed) {
        c->handed = false;
        if (s) s->inflight--;
    }
    c->replied = true;
    if (c->closing) {
        /* The connection is gone: free it if its handles are closed already. */
        if (c->handles_open == 0) conn_free(c);
        return;
    }
    if (c->ending) return;
    bool keep = c->keep_alive && !s->stopping && !(!c->msg_complete && c->close_if_early) &&
                !(c->peer_eof && c->msg_complete && c->pending.len == c->pending_off);
    c->keep_alive = keep;
    if (conn_send_response(c, status, headers, nheaders, body, body_len, keep) < 0) {
        conn_close(c);
        return;
    }
    if (!keep) {
        if (c->msg_complete || !c->in_execute) conn_end(c);
        return; /* else on_headers_complete ends it */
    }
    if (c->msg_complete && !c->in_execute) {
        /* Replied later: go on with the next request, if any is buffered. */
        request_reset(c);
        llhttp_resume(&c->parser);
        if (c->tcp.write_queue_size >= WRITE_HIGH) {
            c->state = ST_DRAIN;
            conn_arm(c, s->opts.idle_timeout_ms, on_timer);
            return;
        }
        c->state = ST_IDLE;
        if (c->pending.len > c->pending_off)
            uv_timer_start(&c->timer, on_resume, 0, 0); /* never call the app from here */
        else
            conn_process_pending(c); /* nothing to parse: re-arms the idle timer */
    }
}

/* The value of the first header called name (lower case), or NULL. Linear: requests have few
 * headers. */
const char *hr_http_header(const hr_http_request_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++) { /* the first byte rules most names out */
        const char *n = req->headers[i].name;
        if (n[0] == name[0] && strcmp(n, name) == 0) return req->headers[i].value;
    }
    return NULL;
}
