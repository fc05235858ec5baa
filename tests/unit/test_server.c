/* Tests for src/server.c: a real server on 127.0.0.1 (port 0) in the main thread's loop,
 * driven by a client thread with blocking sockets that sends raw bytes. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "hr/common.h"
#include "hr/server.h"

/* ---------------------------------------------------------------- the app (main thread) */

static uv_loop_t *loop;
static hr_server_t *srv_main;  /* long timeouts */
static hr_server_t *srv_short; /* short timeouts */
static int port_main, port_short;
static uv_async_t done_async;
static int servers_closed;

/* Results recorded by the app for the disconnect test, checked after the client ends. */
static long disc_inflight_before = -1, disc_conns_before = -1, disc_inflight_after = -1;
static int afterclose_replied;
static int body_not_terminated;
static long stop_inflight = -1;

typedef struct {
    uv_timer_t timer;
    hr_http_request_t *req;
} slow_t;

static void reply_json(hr_http_request_t *req, int status, const char *body)
{
    hr_header_t h[] = {{"Content-Type", "application/json"}};
    hr_http_reply(req, status, h, 1, body, strlen(body));
}

static void echo_reply(hr_http_request_t *req)
{
    const char *h = hr_http_header(req, "x-echo");
    char *body = hr_xasprintf("%s %s ?%s len=%zu x-echo=%s body=%s", req->method, req->path,
                              req->query, req->body_len, h ? h : "-", req->body);
    hr_header_t hd[] = {{"Content-Type", "text/plain"}, {"X-Server", "test"}};
    hr_http_reply(req, 200, hd, 2, body, strlen(body));
    free(body);
}

static void app_on_headers(hr_http_request_t *req, void *arg)
{
    if (strcmp(req->path, "/nope") == 0) {
        reply_json(req, 404, "{\"error\":\"no such route\"}");
    } else if (strcmp(req->path, "/auth") == 0) {
        const char *a = hr_http_header(req, "authorization");
        if (!a || strcmp(a, "Bearer t") != 0) reply_json(req, 401, "{\"error\":\"unauthorized\"}");
    } else if (strcmp(req->path, "/hook") == 0 && strcmp(req->method, "GET") == 0) {
        reply_json(req, 405, "{\"error\":\"method not allowed\"}");
    }
}

static void on_slow_close(uv_handle_t *h)
{
    free(h->data);
}

static void on_slow(uv_timer_t *t)
{
    slow_t *sl = t->data;
    hr_http_request_t *req = sl->req;
    const char *tag = hr_http_header(req, "x-tag");
    bool disc = tag && strcmp(tag, "disconnect") == 0;
    bool after = tag && strcmp(tag, "afterclose") == 0;
    if (disc) {
        disc_inflight_before = (long)hr_server_inflight(srv_main);
        disc_conns_before = (long)hr_server_connections(srv_main);
    }
    echo_reply(req); /* a no-op that frees req when the connection is gone */
    if (disc) disc_inflight_after = (long)hr_server_inflight(srv_main);
    if (after) afterclose_replied = 1;
    uv_close((uv_handle_t *)&sl->timer, on_slow_close);
}

static void app_on_request(hr_http_request_t *req, void *arg)
{
    if (!req->body || req->body[req->body_len] != '\0') body_not_terminated++;
    if (strcmp(req->path, "/big") == 0) { /* a reply larger than the socket buffers */
        size_t n = (size_t)atol(req->query);
        char *body = hr_xmalloc(n);
        memset(body, 'b', n);
        hr_http_reply(req, 200, NULL, 0, body, n);
        free(body);
        return;
    }
    const char *tag = hr_http_header(req, "x-tag");
    if (tag && strcmp(tag, "stop") == 0) {
        stop_inflight = (long)hr_server_inflight(srv_main);
        hr_server_stop_accepting(srv_main);
    }
    if (strcmp(req->path, "/slow") == 0) {
        const char *d = hr_http_header(req, "x-delay");
        slow_t *sl = hr_xcalloc(1, sizeof *sl);
        sl->req = req;
        uv_timer_init(loop, &sl->timer);
        sl->timer.data = sl;
        uv_timer_start(&sl->timer, on_slow, d ? (uint64_t)atoi(d) : 50, 0);
        return;
    }
    echo_reply(req);
}

static void on_server_closed(void *arg)
{
    servers_closed++;
}

static void on_server_closed_flag(void *arg)
{
    *(int *)arg = 1;
}

/* The client is done: close both servers. */
static void on_done(uv_async_t *a)
{
    hr_server_close(srv_main, on_server_closed, NULL); /* stopped already: still fine */
    hr_server_close(srv_short, on_server_closed, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

/* ---------------------------------------------------------------- client helpers */

typedef struct {
    int fd;
    char buf[65536];
    size_t len;
} client_t;

typedef struct {
    int status;
    char connection[64];
    char ctype[64];
    char body[8192];
    size_t body_len;  /* bytes kept in body */
    size_t total_len; /* bytes of the whole body */
} resp_t;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Connect to 127.0.0.1:port with a receive buffer of rcvbuf bytes (0: default). */
static int cl_connect_rcvbuf(client_t *c, int port, int rcvbuf)
{
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) return -1;
    if (rcvbuf) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {10, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(c->fd);
        return -1;
    }
    return 0;
}

static int cl_connect(client_t *c, int port)
{
    return cl_connect_rcvbuf(c, port, 0);
}

static void cl_sendn(client_t *c, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void cl_send(client_t *c, const char *s)
{
    cl_sendn(c, s, strlen(s));
}

/* Receive more bytes into c->buf. Returns bytes read, 0 on EOF, -1 on error or timeout. */
static ssize_t cl_fill(client_t *c)
{
    if (c->len >= sizeof c->buf - 1) return -1;
    ssize_t n;
    do {
        n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    } while (n < 0 && errno == EINTR);
    if (n > 0) c->len += (size_t)n;
    c->buf[c->len] = '\0';
    return n;
}

/* Copy the value of header name (case-insensitive) from the head [h, end) into out. */
static void head_value(const char *h, const char *end, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = h; p < end; p++) {
        if ((p == h || p[-1] == '\n') && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            size_t l = strcspn(v, "\r");
            if (l >= outlen) l = outlen - 1;
            memcpy(out, v, l);
            out[l] = '\0';
            return;
        }
    }
}

/* Read one response (status line, headers, Content-Length body). Returns 0, or -1 if the
 * connection ended or timed out first. */
static int cl_read_response(client_t *c, resp_t *r)
{
    memset(r, 0, sizeof *r);
    char *end;
    while (!(end = strstr(c->buf, "\r\n\r\n"))) {
        if (cl_fill(c) <= 0) return -1;
    }
    size_t head_len = (size_t)(end - c->buf) + 4;
    if (sscanf(c->buf, "HTTP/1.1 %d", &r->status) != 1) return -1;
    char cl[32];
    head_value(c->buf, end, "content-length", cl, sizeof cl);
    head_value(c->buf, end, "connection", r->connection, sizeof r->connection);
    head_value(c->buf, end, "content-type", r->ctype, sizeof r->ctype);
    size_t need = cl[0] ? (size_t)atol(cl) : 0;
    memmove(c->buf, c->buf + head_len, c->len - head_len);
    c->len -= head_len;
    while (need > 0) { /* bodies larger than r->body are counted, not kept */
        if (c->len == 0 && cl_fill(c) <= 0) return -1;
        size_t take = need < c->len ? need : c->len;
        size_t room = sizeof r->body - 1 - r->body_len;
        memcpy(r->body + r->body_len, c->buf, take < room ? take : room);
        r->body_len += take < room ? take : room;
        r->total_len += take;
        memmove(c->buf, c->buf + take, c->len - take);
        c->len -= take;
        need -= take;
    }
    r->body[r->body_len] = '\0';
    c->buf[c->len] = '\0';
    return 0;
}

/* Wait until the server closes the connection (EOF or reset). Returns the milliseconds it
 * took, or -1 if data arrived or nothing happened within the receive timeout. */
static long cl_wait_closed(client_t *c)
{
    uint64_t t0 = now_ms();
    char tmp[256];
    ssize_t n = recv(c->fd, tmp, sizeof tmp, 0);
    if (n == 0 || (n < 0 && errno == ECONNRESET)) return (long)(now_ms() - t0);
    return -1;
}

static void cl_close(client_t *c)
{
    close(c->fd);
    c->fd = -1;
}

#define POST_TO(path, body, extra)                                                                 \
    "POST " path " HTTP/1.1\r\nHost: t\r\n" extra "Content-Length: " #body "\r\n\r\n"
#define POST_ECHO(body, extra) POST_TO("/echo", body, extra)

/* ---------------------------------------------------------------- client tests */

static client_t cl;
static resp_t rs;

/* The default connection cap: RLIMIT_NOFILE minus the reserve, shared by the workers, never
 * below 16 per worker. */
static void test_default_max_connections(void)
{
    CHECK_INT_EQ(hr_server_default_max_connections(20000, 1000, 1), 19000);
    CHECK_INT_EQ(hr_server_default_max_connections(20000, 1000, 4), 4750);
    CHECK_INT_EQ(hr_server_default_max_connections(20000, 1000, 0), 19000);
    CHECK_INT_EQ(hr_server_default_max_connections(1024, 2000, 1), 16);
    CHECK_INT_EQ(hr_server_default_max_connections(100, 64, 8), 16);
    CHECK_INT_EQ(hr_server_default_max_connections(UINT64_MAX, 64, 1), 10000000);
}

static void test_simple_post(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /echo?x=1&y=2 HTTP/1.1\r\nHost: t\r\nX-Echo:   spaced value  \r\n"
                 "Content-Length: 5\r\n\r\nhello");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.body, "POST /echo ?x=1&y=2 len=5 x-echo=spaced value body=hello");
    CHECK_STR_EQ(rs.ctype, "text/plain");
    CHECK_STR_EQ(rs.connection, "");
    cl_close(&cl);
}

static void test_keepalive(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    for (int i = 0; i < 3; i++) {
        char req[256], want[256];
        snprintf(req, sizeof req,
                 "POST /echo HTTP/1.1\r\nHost: t\r\nx-echo: %d\r\n"
                 "Content-Length: 3\r\n\r\nabc",
                 i);
        snprintf(want, sizeof want, "POST /echo ? len=3 x-echo=%d body=abc", i);
        cl_send(&cl, req);
        CHECK(cl_read_response(&cl, &rs) == 0);
        CHECK_INT_EQ(rs.status, 200);
        CHECK_STR_EQ(rs.body, want);
    }
    cl_close(&cl);
}

static void test_pipelining(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /echo HTTP/1.1\r\nHost: t\r\nX-Echo: 1\r\nContent-Length: 1\r\n\r\na"
                 "POST /slow HTTP/1.1\r\nHost: t\r\nX-Echo: 2\r\nX-Delay: 100\r\n"
                 "Content-Length: 2\r\n\r\nbb"
                 "GET /echo?n=3 HTTP/1.1\r\nHost: t\r\nX-Echo: 3\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "POST /echo ? len=1 x-echo=1 body=a");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "POST /slow ? len=2 x-echo=2 body=bb");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "GET /echo ?n=3 len=0 x-echo=3 body=");
    /* Pipelined with the last one asking to close. */
    cl_send(&cl, "GET /echo HTTP/1.1\r\nX-Echo: 4\r\n\r\n"
                 "GET /echo HTTP/1.1\r\nX-Echo: 5\r\nConnection: close\r\n\r\n"
                 "GET /echo HTTP/1.1\r\nX-Echo: 6\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "GET /echo ? len=0 x-echo=4 body=");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "GET /echo ? len=0 x-echo=5 body=");
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_chunked(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n");
    sleep_ms(20);
    cl_send(&cl, "6;ext=1\r\n world\r\n0\r\nX-Trailer: x\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.body, "POST /echo ? len=11 x-echo=- body=hello world");
    cl_close(&cl);
}

static void test_split_reads(void)
{
    /* Header names and values arriving in pieces across reads. */
    CHECK(cl_connect(&cl, port_main) == 0);
    const char *parts[] = {"PO", "ST /ec",          "ho?q HTTP/1.1\r\nX-E", "CHO", ":  ab",
                           "c ", " \r\nContent-Le", "ngth: 2\r\n",          "\r",  "\nz",
                           "z"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(parts); i++) {
        cl_send(&cl, parts[i]);
        sleep_ms(10);
    }
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "POST /echo ?q len=2 x-echo=abc body=zz");
    cl_close(&cl);
}

/* The strictness checks of a request head that arrives in pieces (each piece its own
 * read): a request line's spaces and its end, a header line's start, in any piece. */
static void split_case(const char *const *parts, size_t n, int status, const char *msg)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    for (size_t i = 0; i < n; i++) {
        cl_send(&cl, parts[i]);
        sleep_ms(10);
    }
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, status);
    if (msg && !strstr(rs.body, msg)) fprintf(stderr, "  got %s, want %s\n", rs.body, msg);
    if (msg) CHECK(strstr(rs.body, msg) != NULL);
    cl_close(&cl);
}

static void test_split_strictness(void)
{
    const char *version = "request line without HTTP version", *fold = "obs-fold";
    const char *a[] = {"GET", " /echo", " ", "HTTP/1.1\r\n\r\n"};
    split_case(a, HR_ARRAY_SIZE(a), 200, NULL);
    const char *b[] = {"GET /hea", "lthz\r", "\n\r\n"};
    split_case(b, HR_ARRAY_SIZE(b), 400, version);
    const char *c[] = {"\r\nGET /echo", "\r\n\r\n"};
    split_case(c, HR_ARRAY_SIZE(c), 400, version);
    const char *d[] = {"GET /echo HTTP/1.1\r\nX-A: a\r", "\n b\r\n\r\n"};
    split_case(d, HR_ARRAY_SIZE(d), 400, fold);
    const char *e[] = {"GET /echo HTTP/1.1\r\nX-A: a", "\r\n", "\tb\r\n\r\n"};
    split_case(e, HR_ARRAY_SIZE(e), 400, fold);
    const char *f[] = {"GET /echo HTTP/1.1\r\nX-A: a\r\n", ": v\r\n\r\n"};
    split_case(f, HR_ARRAY_SIZE(f), 400, "empty header name");
    /* Whole, with a body that looks like header lines: only the head is judged. */
    const char *g[] = {POST_ECHO(7, "X-A: a\r\n") " x\r\n: y"};
    split_case(g, HR_ARRAY_SIZE(g), 200, NULL);
}

static void test_expect_continue(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, POST_ECHO(5, "Expect: 100-continue\r\n"));
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 100);
    cl_send(&cl, "12345");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.body, "POST /echo ? len=5 x-echo=- body=12345");
    /* An early reply instead of 100: the body is never sent; the server closes. */
    cl_send(&cl, "POST /nope HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 404);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_http10(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "GET /echo HTTP/1.0\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* HTTP/1.0 keep-alive */
    CHECK(cl_connect(&cl, port_main) == 0);
    for (int i = 0; i < 2; i++) {
        cl_send(&cl, "GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        CHECK(cl_read_response(&cl, &rs) == 0);
        CHECK_INT_EQ(rs.status, 200);
        CHECK_STR_EQ(rs.connection, "keep-alive");
    }
    cl_close(&cl);
}

static void test_connection_close(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, POST_ECHO(2, "Connection: close\r\n") "ok");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_garbage(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "GARBAGE\x01 / HTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 400);
    CHECK_STR_EQ(rs.ctype, "application/json");
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(strncmp(rs.body, "{\"error\":\"malformed HTTP request: ", 34) == 0);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* Missing version. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "GET / XTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 400);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* Bad chunk size after a good start. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 400);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_header_limit(void)
{
    char big[2100];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* A whole header block over the limit in one go. */
    CHECK(cl_connect(&cl, port_main) == 0);
    char *req = hr_xasprintf("GET /echo HTTP/1.1\r\nX-Big: %s\r\n\r\n", big);
    cl_send(&cl, req);
    free(req);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 431);
    CHECK_STR_EQ(rs.ctype, "application/json");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* An unfinished header block that keeps growing. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "GET /echo HTTP/1.1\r\nX-Big: ");
    cl_send(&cl, big);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 431);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* Many small headers. */
    CHECK(cl_connect(&cl, port_main) == 0);
    hr_buf_t b = HR_BUF_INIT;
    hr_buf_appends(&b, "GET /echo HTTP/1.1\r\n");
    for (int i = 0; i < 200; i++)
        hr_buf_printf(&b, "h%d: v\r\n", i);
    hr_buf_appends(&b, "\r\n");
    cl_sendn(&cl, b.data, b.len);
    hr_buf_free(&b);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 431);
    cl_close(&cl);
}

static void test_body_limit(void)
{
    /* Content-Length over the limit: 413 before the body is sent. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, POST_ECHO(100000, ""));
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 413);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK_STR_EQ(rs.body, "{\"error\":\"request body too large\"}");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* A chunked body that grows over the limit. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[1100];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0; i < 60; i++) { /* 66 kB: the rest is read and dropped (lingering close) */
        cl_send(&cl, "44c\r\n");   /* 1100 bytes */
        cl_sendn(&cl, chunk, sizeof chunk);
        cl_send(&cl, "\r\n");
    }
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 413);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    /* Exactly at the limit is fine. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /nope HTTP/1.1\r\nContent-Length: 4096\r\n\r\n");
    char body[4096];
    memset(body, 'y', sizeof body);
    cl_sendn(&cl, body, sizeof body);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 404);
    CHECK_STR_EQ(rs.connection, "");
    cl_close(&cl);
}

static void test_early_replies(void)
{
    CHECK(cl_connect(&cl, port_main) == 0);
    /* 404 with a small body: the body is dropped and the connection stays usable. */
    cl_send(&cl, "POST /nope HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 404);
    CHECK_STR_EQ(rs.body, "{\"error\":\"no such route\"}");
    CHECK_STR_EQ(rs.ctype, "application/json");
    cl_send(&cl, "POST /auth HTTP/1.1\r\nContent-Length: 1\r\n\r\n1");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 401);
    cl_send(&cl, "POST /auth HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 1\r\n\r\n1");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    cl_send(&cl, "GET /hook HTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 405);
    cl_send(&cl, "POST /hook HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.body, "POST /hook ? len=2 x-echo=- body=hi");
    /* Early reply to a chunked upload: the server closes after the reply. */
    cl_send(&cl, "POST /nope HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 404);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_request_timeout(void)
{
    CHECK(cl_connect(&cl, port_short) == 0);
    uint64_t t0 = now_ms();
    cl_send(&cl, "POST /echo HTTP/1.1\r\nHost: t\r\nX-Dribble");
    sleep_ms(50);
    cl_send(&cl, ": 1\r\n"); /* more bytes do not extend the deadline */
    CHECK(cl_read_response(&cl, &rs) == 0);
    long ms = (long)(now_ms() - t0);
    CHECK_INT_EQ(rs.status, 408);
    CHECK(cl_wait_closed(&cl) >= 0);
    CHECK(ms >= 150);
    CHECK(ms < 3000);
    cl_close(&cl);
    /* A body that never completes. */
    CHECK(cl_connect(&cl, port_short) == 0);
    t0 = now_ms();
    cl_send(&cl, POST_ECHO(10, "") "12");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 408);
    CHECK(cl_wait_closed(&cl) >= 0);
    CHECK(now_ms() - t0 < 3000);
    cl_close(&cl);
}

static void test_idle_timeout(void)
{
    CHECK(cl_connect(&cl, port_short) == 0);
    long ms = cl_wait_closed(&cl);
    CHECK(ms >= 200);
    CHECK(ms < 3000);
    cl_close(&cl);
    /* After a request, the keep-alive connection idles out too. */
    CHECK(cl_connect(&cl, port_short) == 0);
    cl_send(&cl, "GET /echo HTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    ms = cl_wait_closed(&cl);
    CHECK(ms >= 200);
    CHECK(ms < 3000);
    cl_close(&cl);
}

static void test_disconnect_while_pending(void)
{
    /* Reset by the client while the app holds the request. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, POST_TO("/slow", 1, "X-Tag: disconnect\r\nX-Delay: 300\r\n") "d");
    sleep_ms(100);
    struct linger lg = {1, 0};
    setsockopt(cl.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    cl_close(&cl); /* RST */
    sleep_ms(400);
    /* Plain close (FIN) while pending: the reply goes nowhere, nothing breaks. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /slow HTTP/1.1\r\nX-Delay: 100\r\nContent-Length: 1\r\n\r\nd");
    sleep_ms(20);
    cl_close(&cl);
    sleep_ms(200);
    /* The server still works. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "GET /echo HTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    cl_close(&cl);
}

static void test_half_close(void)
{
    /* A client that sends its request and shuts down its side still gets the reply. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, "POST /slow HTTP/1.1\r\nX-Delay: 50\r\nContent-Length: 1\r\n\r\nh"
                 "GET /echo HTTP/1.1\r\n\r\n");
    shutdown(cl.fd, SHUT_WR);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
}

static void test_big_reply(void)
{
    /* A 4 MB reply the client does not read at once (uv_write fallback, parsing paused
     * for the write queue), pipelined with a small request answered after it. */
    CHECK(cl_connect_rcvbuf(&cl, port_main, 4096) == 0);
    cl_send(&cl, "GET /big?4000000 HTTP/1.1\r\n\r\nGET /echo?after HTTP/1.1\r\n\r\n");
    sleep_ms(300);
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_INT_EQ(rs.status, 200);
    CHECK_INT_EQ(rs.total_len, 4000000);
    CHECK(rs.body[0] == 'b' && rs.body[rs.body_len - 1] == 'b');
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "GET /echo ?after len=0 x-echo=- body=");
    /* HEAD: headers only. */
    cl_send(&cl, "HEAD /big?10 HTTP/1.1\r\n\r\nGET /echo HTTP/1.1\r\n\r\n");
    char *end;
    while (!(end = strstr(cl.buf, "\r\n\r\n")))
        if (cl_fill(&cl) <= 0) break;
    CHECK(end != NULL);
    if (end) {
        CHECK(strstr(cl.buf, "Content-Length: 10\r\n") != NULL);
        size_t hl = (size_t)(end - cl.buf) + 4;
        memmove(cl.buf, cl.buf + hl, cl.len - hl + 1);
        cl.len -= hl;
    }
    CHECK(cl_read_response(&cl, &rs) == 0);
    CHECK_STR_EQ(rs.body, "GET /echo ? len=0 x-echo=- body=");
    cl_close(&cl);
}

static void test_stop_accepting(void)
{
    client_t *idle = hr_xcalloc(1, sizeof *idle);
    CHECK(cl_connect(idle, port_main) == 0);
    cl_send(idle, "GET /echo HTTP/1.1\r\n\r\n");
    CHECK(cl_read_response(idle, &rs) == 0);
    /* The app stops the server while it holds this request. */
    CHECK(cl_connect(&cl, port_main) == 0);
    cl_send(&cl, POST_TO("/slow", 1, "X-Tag: stop\r\nX-Delay: 300\r\n") "s");
    CHECK(cl_wait_closed(idle) >= 0); /* idle connections close at once */
    cl_close(idle);
    free(idle);
    CHECK(cl_read_response(&cl, &rs) == 0); /* the one in flight is answered, then closed */
    CHECK_INT_EQ(rs.status, 200);
    CHECK_STR_EQ(rs.connection, "close");
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    client_t late;
    CHECK(cl_connect(&late, port_main) != 0); /* no longer listening */
}

static void *client_main(void *arg)
{
    test_simple_post();
    test_keepalive();
    test_pipelining();
    test_chunked();
    test_split_reads();
    test_split_strictness();
    test_expect_continue();
    test_http10();
    test_connection_close();
    test_garbage();
    test_header_limit();
    test_body_limit();
    test_early_replies();
    test_request_timeout();
    test_idle_timeout();
    test_disconnect_while_pending();
    test_half_close();
    test_big_reply();
    test_stop_accepting();
    /* Leave one request with the app and close the servers under it: the late reply must
     * be a harmless no-op. */
    CHECK(cl_connect(&cl, port_short) == 0);
    cl_send(&cl, POST_TO("/slow", 1, "X-Tag: afterclose\r\nX-Delay: 300\r\n") "a");
    sleep_ms(100);
    uv_async_send(&done_async);
    CHECK(cl_wait_closed(&cl) >= 0);
    cl_close(&cl);
    return NULL;
}

/* ---------------------------------------------------------------- main */

static void test_listen_errors(void)
{
    char err[256];
    hr_server_opts_t o = {.host = "127.0.0.1", .port = port_main, .on_request = app_on_request};
    hr_server_t *s = hr_server_open(loop, &o, err, sizeof err);
    CHECK(s == NULL);
    char want[128];
    snprintf(want, sizeof want, "listen 127.0.0.1:%d: address already in use", port_main);
    CHECK_STR_EQ(err, want);
    o.host = "not an address";
    o.port = 0;
    s = hr_server_open(loop, &o, err, sizeof err);
    CHECK(s == NULL);
    CHECK(strncmp(err, "listen not an address:0: ", 25) == 0);
    uv_run(loop, UV_RUN_NOWAIT); /* the failed listener's close callback */
    /* Names and IPv6 (skipped quietly where the host has no IPv6). */
    const char *hosts[] = {"localhost", "::1"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(hosts); i++) {
        o.host = hosts[i];
        s = hr_server_open(loop, &o, err, sizeof err);
        if (!s && i == 1) continue;
        CHECK(s != NULL);
        if (!s) continue;
        CHECK(hr_server_port(s) > 0);
        int closed = 0;
        hr_server_close(s, on_server_closed_flag, &closed);
        while (!closed)
            uv_run(loop, UV_RUN_ONCE);
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    static uv_loop_t l;
    loop = &l;
    CHECK_INT_EQ(uv_loop_init(loop), 0);
    char err[256] = "";
    hr_server_opts_t o = {
        .host = "127.0.0.1",
        .port = 0,
        .body_limit = 4096,
        .header_limit = 1024,
        .idle_timeout_ms = 30000,
        .request_timeout_ms = 30000,
        .on_headers = app_on_headers,
        .on_request = app_on_request,
    };
    srv_main = hr_server_open(loop, &o, err, sizeof err);
    CHECK(srv_main != NULL);
    if (!srv_main) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    o.idle_timeout_ms = 400;
    o.request_timeout_ms = 200;
    srv_short = hr_server_open(loop, &o, err, sizeof err);
    CHECK(srv_short != NULL);
    if (!srv_short) return 1;
    port_main = hr_server_port(srv_main);
    port_short = hr_server_port(srv_short);
    CHECK(port_main > 0);
    CHECK(port_short > 0 && port_short != port_main);
    CHECK_INT_EQ(hr_server_connections(srv_main), 0);
    CHECK_INT_EQ(hr_server_inflight(srv_main), 0);
    test_listen_errors();
    test_default_max_connections();

    uv_async_init(loop, &done_async, on_done);
    pthread_t th;
    pthread_create(&th, NULL, client_main, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);

    CHECK_INT_EQ(servers_closed, 2);
    CHECK_INT_EQ(disc_inflight_before, 1);
    CHECK_INT_EQ(disc_conns_before, 0);
    CHECK_INT_EQ(disc_inflight_after, 0);
    CHECK_INT_EQ(afterclose_replied, 1);
    CHECK_INT_EQ(stop_inflight, 1);
    CHECK_INT_EQ(body_not_terminated, 0);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    return CHECK_DONE("test_server");
}
