/* Fuzz the inbound HTTP server as a client would: one real server on 127.0.0.1 (port 0) in
 * this process's loop, and per input one client connection (a plain socket) that sends the
 * input in chunks, then FIN, and reads until the server closes. The server must answer or
 * close, free the connection (no handle or request left behind) and never crash or leak;
 * what it sends back must parse as HTTP responses (llhttp), unless a HEAD request may be
 * among them (a HEAD reply has a Content-Length and no body, which a response parser cannot
 * know). The app checks the request contract of include/hr/server.h.
 *
 * Input: byte 0 is the chunk size (0: all at once; else that many bytes per send, with the
 * loop run between sends so the server sees each chunk on its own); the rest is the bytes.
 * The app: /early is answered from on_headers (404), /auth wants "Bearer t" (401), a request
 * with an x-defer header is answered from a timer (later, as the router's rules do), the rest
 * at once with an echo. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>

#include "fuzz.h"
#include "hr/log.h"
#include "hr/server.h"

#define BODY_LIMIT   4096
#define HEADER_LIMIT 2048

static uv_loop_t loop;
static hr_server_t *srv;
static int port;
static int deferred; /* timers not yet closed */

typedef struct {
    uv_timer_t timer;
    hr_http_request_t *req;
} defer_t;

static void check_request(const hr_http_request_t *r)
{
    FUZZ_CHECK(r->method && r->path && r->query);
    FUZZ_CHECK(r->http_major == 1 || r->http_major == 0 || r->http_major == 2);
    FUZZ_CHECK(r->nheaders == 0 || r->headers != NULL);
    for (size_t i = 0; i < r->nheaders; i++) {
        FUZZ_CHECK(r->headers[i].name && r->headers[i].value);
        for (const char *p = r->headers[i].name; *p; p++)
            FUZZ_CHECK(!(*p >= 'A' && *p <= 'Z'));
    }
}

static void reply(hr_http_request_t *req, int status, const char *msg)
{
    hr_header_t h[] = {{"Content-Type", "text/plain"}, {"X-Echo", ""}};
    const char *echo = hr_http_header(req, "x-echo");
    h[1].value = (char *)(echo ? echo : "-");
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_printf(&b, "%s %s ?%s headers=%zu len=%zu %s", req->method, req->path, req->query,
                  req->nheaders, req->body_len, msg);
    hr_http_reply(req, status, h, 2, b.data, b.len);
    hr_buf_free(&b);
}

static void on_headers(hr_http_request_t *req, void *arg)
{
    check_request(req);
    if (strcmp(req->path, "/early") == 0) {
        reply(req, 404, "no such route");
    } else if (strcmp(req->path, "/auth") == 0) {
        const char *a = hr_http_header(req, "authorization");
        if (!a || strcmp(a, "Bearer t") != 0) reply(req, 401, "unauthorized");
    }
}

static void on_defer_closed(uv_handle_t *h)
{
    free(h->data);
    deferred--;
}

static void on_defer(uv_timer_t *t)
{
    defer_t *d = t->data;
    reply(d->req, 200, "later"); /* a no-op that frees req if the connection is gone */
    uv_close((uv_handle_t *)&d->timer, on_defer_closed);
}

static void on_request(hr_http_request_t *req, void *arg)
{
    check_request(req);
    FUZZ_CHECK(req->body != NULL && req->body[req->body_len] == '\0');
    FUZZ_CHECK(req->body_len <= BODY_LIMIT);
    /* llhttp reads no body after CONNECT (a tunnel follows), whatever Content-Length says. */
    if (req->content_length != UINT64_MAX && strcmp(req->method, "CONNECT") != 0)
        FUZZ_CHECK(req->content_length == req->body_len);
    if (hr_http_header(req, "x-defer")) {
        defer_t *d = calloc(1, sizeof *d);
        FUZZ_CHECK(d != NULL);
        d->req = req;
        d->timer.data = d;
        uv_timer_init(&loop, &d->timer);
        uv_timer_start(&d->timer, on_defer, 0, 0);
        deferred++;
        return;
    }
    reply(req, 200, "ok");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    hr_log_set_level(HR_LOG_ERROR);
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    hr_server_opts_t o = {.host = "127.0.0.1",
                          .port = 0,
                          .body_limit = BODY_LIMIT,
                          .header_limit = HEADER_LIMIT,
                          .idle_timeout_ms = 60000,
                          .request_timeout_ms = 60000,
                          .on_headers = on_headers,
                          .on_request = on_request};
    char err[256];
    srv = hr_server_open(&loop, &o, err, sizeof err);
    if (!srv) fprintf(stderr, "hr_server_open: %s\n", err);
    FUZZ_CHECK(srv != NULL);
    port = hr_server_port(srv);
    return 0;
}

/* The client side: what the server sent, and whether it closed. */
typedef struct {
    uv_poll_t poll;
    int fd;
    bool eof;
    bool poll_closed;
    hr_buf_t in;
} client_t;

static void on_client_readable(uv_poll_t *h, int status, int events)
{
    client_t *c = h->data;
    char buf[16384];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            hr_buf_append(&c->in, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        c->eof = true; /* FIN, or a reset */
        uv_poll_stop(h);
        return;
    }
}

static void on_poll_closed(uv_handle_t *h)
{
    ((client_t *)h->data)->poll_closed = true;
}

static int on_resp_complete(llhttp_t *p)
{
    (*(int *)p->data)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) return 0;
    size_t chunk = data[0] ? data[0] : size;
    data++;
    size--;

    client_t c = {.fd = socket(AF_INET, SOCK_STREAM, 0), .in = HR_BUF_INIT};
    FUZZ_CHECK(c.fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fprintf(stderr, "connect to 127.0.0.1:%d: %s\n", port, strerror(errno));
        abort();
    }
    FUZZ_CHECK(fcntl(c.fd, F_SETFL, O_NONBLOCK) == 0);
    FUZZ_CHECK(uv_poll_init(&loop, &c.poll, c.fd) == 0);
    c.poll.data = &c;
    uv_poll_start(&c.poll, UV_READABLE | UV_DISCONNECT, on_client_readable);

    size_t off = 0;
    while (off < size && !c.eof) {
        size_t n = size - off < chunk ? size - off : chunk;
        ssize_t w = send(c.fd, data + off, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            uv_run(&loop, UV_RUN_ONCE);
            continue;
        }
        if (w < 0) break; /* the server closed (EPIPE, ECONNRESET) */
        off += (size_t)w;
        uv_run(&loop, UV_RUN_NOWAIT);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    shutdown(c.fd, SHUT_WR);
    while (!c.eof || hr_server_connections(srv) > 0 || deferred > 0)
        uv_run(&loop, UV_RUN_ONCE);
    FUZZ_CHECK(hr_server_inflight(srv) == 0);
    uv_close((uv_handle_t *)&c.poll, on_poll_closed);
    while (!c.poll_closed)
        uv_run(&loop, UV_RUN_ONCE);
    /* Closed with a reset: ~2000 connections a second would otherwise leave the ephemeral
     * ports in TIME_WAIT (this side sent the first FIN) and run out of them within a minute. */
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c.fd);

    /* What came back must be HTTP responses (every request is answered or the connection
     * closed, so a partial response at the end would be a bug too). */
    if (!memmem(data, size, "HEAD", 4) && c.in.len > 0) {
        llhttp_settings_t s;
        llhttp_settings_init(&s);
        s.on_message_complete = on_resp_complete;
        llhttp_t p;
        int complete = 0;
        llhttp_init(&p, HTTP_RESPONSE, &s);
        p.data = &complete;
        llhttp_errno_t e = llhttp_execute(&p, c.in.data, c.in.len);
        if (e == HPE_OK) e = llhttp_finish(&p);
        if (e != HPE_OK && e != HPE_PAUSED_UPGRADE) {
            fprintf(stderr, "the server's output is not HTTP (%s: %s):\n%.*s\n",
                    llhttp_errno_name(e), llhttp_get_error_reason(&p), (int)c.in.len, c.in.data);
            abort();
        }
        FUZZ_CHECK(complete > 0);
    }
    hr_buf_free(&c.in);
    return 0;
}
