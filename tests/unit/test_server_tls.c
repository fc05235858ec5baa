/* Tests for src/server.c with a TLS context: a real server on 127.0.0.1 (port 0) in the main
 * thread's loop, a client thread speaking TLS through src/tls.c over a blocking socket, with
 * certificates made at test time by the openssl CLI (tests/tls/gen-certs.sh): keep-alive and
 * pipelining over one TLS connection, a request split into one record per byte, a reply far
 * larger than the socket buffers (the drain path through TLS), close_notify before the FIN of
 * "Connection: close", and hr_server_set_tls taking effect for new connections only. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "hr/common.h"
#include "hr/server.h"
#include "hr/tls.h"

static char dir[256]; /* the certificates (mkdtemp) */
static uv_loop_t *loop;
static hr_server_t *srv;
static int port;
static uv_async_t done_async, plain_async;
static uv_sem_t plain_set; /* the loop has made the server plain */
static hr_tls_ctx_t *client;

/* ---------------------------------------------------------------- the app (main thread) */

static void app_on_request(hr_http_request_t *req, void *arg)
{
    if (strcmp(req->path, "/big") == 0) {
        size_t n = (size_t)atol(req->query);
        char *body = hr_xmalloc(n);
        memset(body, 'b', n);
        hr_http_reply(req, 200, NULL, 0, body, n);
        free(body);
        return;
    }
    char *body =
        hr_xasprintf("%s %s len=%zu body=%s", req->method, req->path, req->body_len, req->body);
    hr_http_reply(req, 200, NULL, 0, body, strlen(body));
    free(body);
}

static void on_server_closed(void *arg)
{
    uv_close((uv_handle_t *)&done_async, NULL);
    uv_close((uv_handle_t *)&plain_async, NULL);
}

static void on_done(uv_async_t *a)
{
    hr_server_close(srv, on_server_closed, NULL);
}

static void on_plain(uv_async_t *a)
{
    hr_server_set_tls(srv, NULL);
    uv_sem_post(&plain_set);
}

/* ---------------------------------------------------------------- the client (its thread) */

typedef struct {
    int fd;
    hr_tls_conn_t *tls;
    hr_buf_t in; /* plaintext received */
    bool closed; /* close_notify received */
    bool eof;    /* the socket ended */
} tconn_t;

static int tcp_connect(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send what the TLS side produced. */
static void flush_out(tconn_t *c)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_tls_conn_take_out(c->tls, &b);
    for (size_t off = 0; off < b.len;) {
        ssize_t n = send(c->fd, b.data + off, b.len - off, MSG_NOSIGNAL);
        if (n <= 0) break;
        off += (size_t)n;
    }
    hr_buf_free(&b);
}

/* Read once from the socket and decrypt what came. Returns false on EOF, timeout or error. */
static bool pull(tconn_t *c)
{
    char buf[65536];
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n <= 0) {
        c->eof = true;
        return false;
    }
    hr_tls_conn_feed(c->tls, buf, (size_t)n);
    for (;;) {
        size_t got = 0;
        hr_tls_status_t st = hr_tls_conn_read(c->tls, buf, sizeof buf, &got);
        flush_out(c);
        if (st == HR_TLS_OK) {
            hr_buf_append(&c->in, buf, got);
            continue;
        }
        if (st == HR_TLS_CLOSED) c->closed = true;
        return st != HR_TLS_ERROR;
    }
}

static bool tconn_open(tconn_t *c)
{
    memset(c, 0, sizeof *c);
    c->fd = tcp_connect();
    char err[256];
    c->tls = hr_tls_conn_new(client, "127.0.0.1", err, sizeof err);
    if (c->fd < 0 || !c->tls) return false;
    while (hr_tls_conn_handshake(c->tls) == HR_TLS_WANT_READ) {
        flush_out(c);
        char buf[65536];
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n <= 0) return false;
        hr_tls_conn_feed(c->tls, buf, (size_t)n);
    }
    flush_out(c);
    return hr_tls_conn_established(c->tls);
}

static void tconn_close(tconn_t *c)
{
    hr_tls_conn_free(c->tls);
    if (c->fd >= 0) close(c->fd);
    hr_buf_free(&c->in);
}

/* Encrypt and send s, cut into records of at most rec bytes. */
static void send_plain(tconn_t *c, const char *s, size_t rec)
{
    size_t len = strlen(s);
    for (size_t off = 0; off < len; off += rec) {
        size_t n = len - off < rec ? len - off : rec;
        hr_tls_conn_write(c->tls, s + off, n);
        flush_out(c);
    }
}

/* Read until the plaintext holds count copies of needle. */
static bool wait_for(tconn_t *c, const char *needle, int count)
{
    for (;;) {
        int seen = 0;
        for (const char *p = c->in.data; p && (p = strstr(p, needle)); p++)
            seen++;
        if (seen >= count) return true;
        if (!pull(c)) return false;
    }
}

static void test_keepalive_pipelining_and_split_records(void)
{
    tconn_t c;
    CHECK(tconn_open(&c));
    send_plain(&c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n", 4096);
    CHECK(wait_for(&c, "HTTP/1.1 200 OK", 2));
    CHECK(strstr(c.in.data, "GET /a len=0") < strstr(c.in.data, "GET /b len=0"));
    /* one TLS record per byte: the server parses the plaintext as it would plain bytes */
    hr_buf_reset(&c.in);
    send_plain(&c, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 1);
    CHECK(wait_for(&c, "POST /p len=5 body=hello", 1));
    CHECK(!c.closed && !c.eof);
    CHECK_INT_EQ(hr_server_connections(srv), 1);
    tconn_close(&c);
}

static void test_big_reply(void)
{
    tconn_t c;
    CHECK(tconn_open(&c));
    size_t n = 3000000;
    char req[128];
    snprintf(req, sizeof req, "GET /big?%zu HTTP/1.1\r\nHost: x\r\n\r\n", n);
    send_plain(&c, req, 4096);
    size_t want = 0;
    while (!c.eof) {
        const char *h = c.in.data ? strstr(c.in.data, "\r\n\r\n") : NULL;
        if (h && !want) want = (size_t)(h + 4 - c.in.data) + n;
        if (want && c.in.len >= want) break;
        if (!pull(&c)) break;
    }
    CHECK(want > 0);
    CHECK_INT_EQ(c.in.len, want);
    CHECK(c.in.len == want && c.in.data[want - 1] == 'b');
    tconn_close(&c);
}

static void test_close_notify_before_fin(void)
{
    tconn_t c;
    CHECK(tconn_open(&c));
    send_plain(&c, "GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 4096);
    while (!c.closed && pull(&c)) {}
    CHECK(strstr(c.in.data, "Connection: close") != NULL);
    CHECK(strstr(c.in.data, "GET /last len=0") != NULL);
    CHECK(c.closed); /* close_notify arrived (not only the FIN) */
    tconn_close(&c);
}

static void test_set_tls_null_applies_to_new_connections(void)
{
    tconn_t kept;
    CHECK(tconn_open(&kept));
    uv_async_send(&plain_async);
    uv_sem_wait(&plain_set);
    /* a new connection is plain now */
    int fd = tcp_connect();
    CHECK(fd >= 0);
    const char *get = "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    CHECK(send(fd, get, strlen(get), MSG_NOSIGNAL) == (ssize_t)strlen(get));
    char buf[1024];
    ssize_t n, total = 0;
    while (total < (ssize_t)sizeof buf - 1 &&
           (n = recv(fd, buf + total, sizeof buf - 1 - total, 0)) > 0)
        total += n;
    buf[total > 0 ? total : 0] = '\0';
    CHECK(strstr(buf, "GET /plain len=0") != NULL);
    close(fd);
    /* the one accepted before goes on with TLS */
    send_plain(&kept, "GET /still HTTP/1.1\r\nHost: x\r\n\r\n", 4096);
    CHECK(wait_for(&kept, "GET /still len=0", 1));
    tconn_close(&kept);
}

static void *client_main(void *arg)
{
    test_keepalive_pipelining_and_split_records();
    test_big_reply();
    test_close_notify_before_fin();
    test_set_tls_null_applies_to_new_connections();
    uv_async_send(&done_async);
    return NULL;
}

/* ---------------------------------------------------------------- main */

static hr_tls_ctx_t *ctx_from(hr_tls_role_t role)
{
    char *cert = hr_path_join(dir, "server-chain.pem"), *key = hr_path_join(dir, "server.key");
    char *ca = hr_path_join(dir, "ca.pem");
    hr_tls_opts_t o = {.role = role};
    if (role == HR_TLS_SERVER) {
        o.cert_file = cert;
        o.key_file = key;
    } else {
        o.ca_file = ca;
    }
    char err[256] = "";
    hr_tls_ctx_t *ctx = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    if (!ctx) fprintf(stderr, "ctx: %s\n", err);
    free(cert);
    free(key);
    free(ca);
    return ctx;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const char *src = getenv("HR_SOURCE_DIR");
    snprintf(dir, sizeof dir, "/tmp/hr-test-server-tls-XXXXXX");
    if (!src || !mkdtemp(dir)) {
        fprintf(stderr, "test_server_tls: needs HR_SOURCE_DIR and a temp folder\n");
        return 2;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/tls/gen-certs.sh' '%s'", src, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_server_tls: %s failed\n", cmd);
        return 2;
    }
    hr_tls_ctx_t *server = ctx_from(HR_TLS_SERVER);
    client = ctx_from(HR_TLS_CLIENT);
    CHECK(server != NULL && client != NULL);
    if (!server || !client) return 1;
    static uv_loop_t l;
    loop = &l;
    CHECK_INT_EQ(uv_loop_init(loop), 0);
    char err[256] = "";
    hr_server_opts_t o = {.host = "127.0.0.1",
                          .idle_timeout_ms = 30000,
                          .request_timeout_ms = 30000,
                          .on_request = app_on_request,
                          .tls = server};
    srv = hr_server_open(loop, &o, err, sizeof err);
    hr_tls_ctx_unref(server); /* the server holds its own reference */
    CHECK(srv != NULL);
    if (!srv) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    port = hr_server_port(srv);
    uv_async_init(loop, &done_async, on_done);
    uv_async_init(loop, &plain_async, on_plain);
    uv_sem_init(&plain_set, 0);
    pthread_t th;
    pthread_create(&th, NULL, client_main, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    uv_sem_destroy(&plain_set);
    hr_tls_ctx_unref(client);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "test_server_tls: could not remove %s\n", dir);
    return CHECK_DONE("test_server_tls");
}
