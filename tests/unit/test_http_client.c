/* Unit tests for src/http_client.c against the loopback peer (peer.h) answering canned
 * responses chosen by the request path, and against one on a thread of its own (a server
 * that answers faster than the client's loop turns). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "hr/http_client.h"
#include "peer.h"

/* ---- Test server --------------------------------------------------------------------- */

/* Answer one request according to its path. */
static void serve(void *arg, peer_conn_t *sc, const peer_req_t *req)
{
    const char *path = req->path;
    if (strcmp(path, "/cl") == 0) {
        peer_sends(sc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: Yes\r\n\r\nhello", false);
    } else if (strcmp(path, "/cl-then-close") == 0) {
        peer_sends(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    } else if (strcmp(path, "/chunked") == 0) {
        peer_sends(sc,
                   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n"
                   " world\r\n0\r\n\r\n",
                   false);
    } else if (strcmp(path, "/close-delim") == 0) {
        peer_sends(sc, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the ", false);
        peer_sends(sc, "end", true);
    } else if (strcmp(path, "/connclose") == 0) {
        peer_sends(sc, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                   false);
    } else if (strcmp(path, "/interim") == 0) {
        peer_sends(sc,
                   "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
                   "ok",
                   false);
    } else if (strcmp(path, "/head") == 0) {
        peer_sends(sc, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false);
    } else if (strcmp(path, "/garbage") == 0) {
        peer_sends(sc, "HTTP/1.1 abc\r\n\r\n", false);
    } else if (strcmp(path, "/big") == 0) {
        char *r = hr_xasprintf("HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n%4000d", 7);
        peer_sends(sc, r, false);
        free(r);
    } else if (strcmp(path, "/drop-reused") == 0) {
        if (req->conn_nreq > 1)
            peer_close_conn(sc);
        else
            peer_sends(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
    } else if (strncmp(path, "/echo", 5) == 0) {
        char *r =
            hr_xasprintf("HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(path), path);
        peer_sends(sc, r, false);
        free(r);
    } else if (strcmp(path, "/silent") == 0) {
        /* never answer */
    } else {
        peer_sends(sc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false);
    }
}

/* ---- Client side helpers ------------------------------------------------------------- */

typedef struct {
    int done;         /* callbacks run */
    int err;          /* last err */
    int status;       /* last status */
    char body[256];   /* last body */
    size_t body_len;  /* last body length */
    char xtest[32];   /* last x-test header */
    char errmsg[160]; /* last error message */
    uint64_t done_at; /* uv_now at completion */
} result_t;

static bool in_send;

static void on_done(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    result_t *r = arg;
    CHECK(!in_send);
    r->done++;
    r->err = err;
    r->status = res ? res->status : 0;
    r->xtest[0] = '\0';
    r->errmsg[0] = '\0';
    if (errmsg) snprintf(r->errmsg, sizeof r->errmsg, "%s", errmsg);
    if (res) {
        CHECK(res->body != NULL);
        CHECK_INT_EQ(res->body[res->body_len], 0);
        r->body_len = res->body_len;
        snprintf(r->body, sizeof r->body, "%s", res->body);
        for (size_t i = 0; i < res->nheaders; i++)
            if (strcmp(res->headers[i].name, "x-test") == 0)
                snprintf(r->xtest, sizeof r->xtest, "%s", res->headers[i].value);
    } else {
        CHECK(err < 0);
    }
}

static uv_loop_t *loop;
static peer_t *srv;

static int send_get(hr_http_client_t *c, const char *method, const char *path, uint32_t tmo,
                    result_t *r)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", peer_port(srv), path);
    hr_http_out_t out = {.method = method, .url = url, .timeout_ms = tmo};
    in_send = true;
    int rc = hr_http_client_send(c, &out, on_done, r);
    in_send = false;
    return rc;
}

static void run_until(const int *counter, int want)
{
    while (*counter < want)
        uv_run(loop, UV_RUN_ONCE);
}

static int closed;

static void on_client_closed(void *arg)
{
    closed++;
}

static void close_client(hr_http_client_t *c)
{
    int before = closed;
    hr_http_client_close(c, on_client_closed, NULL);
    CHECK_INT_EQ(closed, before); /* never inside close */
    run_until(&closed, before + 1);
}

/* ---- Tests --------------------------------------------------------------------------- */

static void test_bodies(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};

    CHECK_INT_EQ(send_get(c, "GET", "/cl", 2000, &r), 0);
    CHECK_INT_EQ(r.done, 0);
    CHECK_INT_EQ(hr_http_client_pending(c), 1);
    run_until(&r.done, 1);
    CHECK_INT_EQ(r.err, 0);
    CHECK_INT_EQ(r.status, 200);
    CHECK_STR_EQ(r.body, "hello");
    CHECK_STR_EQ(r.xtest, "Yes");
    CHECK_INT_EQ(hr_http_client_pending(c), 0);

    send_get(c, "GET", "/chunked", 2000, &r);
    run_until(&r.done, 2);
    CHECK_INT_EQ(r.status, 200);
    CHECK_STR_EQ(r.body, "hello world");

    send_get(c, "GET", "/close-delim", 2000, &r);
    run_until(&r.done, 3);
    CHECK_INT_EQ(r.err, 0);
    CHECK_STR_EQ(r.body, "until the end");

    send_get(c, "POST", "/interim", 2000, &r);
    run_until(&r.done, 4);
    CHECK_INT_EQ(r.status, 201);
    CHECK_STR_EQ(r.body, "ok");

    send_get(c, "HEAD", "/head", 2000, &r);
    run_until(&r.done, 5);
    CHECK_INT_EQ(r.err, 0);
    CHECK_INT_EQ(r.status, 200);
    CHECK_INT_EQ(r.body_len, 0);

    send_get(c, "GET", "/garbage", 2000, &r);
    run_until(&r.done, 6);
    CHECK_INT_EQ(r.err, UV_EPROTO);

    send_get(c, "GET", "/nothing-here", 2000, &r);
    run_until(&r.done, 7);
    CHECK_INT_EQ(r.status, 404);
    CHECK_INT_EQ(r.body_len, 0);

    CHECK(send_get(c, "GET", "", 2000, &r) == 0); /* path "/" */
    run_until(&r.done, 8);
    CHECK(hr_http_client_send(c, &(hr_http_out_t){.url = "ftp://x/"}, on_done, &r) < 0);
    close_client(c);
    CHECK_INT_EQ(r.done, 8);
}

static void test_keepalive(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};
    int accepts = peer_accepts(srv);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 1);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 2);
    send_get(c, "HEAD", "/head", 2000, &r);
    run_until(&r.done, 3);
    send_get(c, "GET", "/chunked", 2000, &r);
    run_until(&r.done, 4);
    CHECK_STR_EQ(r.body, "hello world");
    CHECK_INT_EQ(peer_accepts(srv) - accepts, 1);

    /* Connection: close is honoured: the next request needs a new connection. */
    send_get(c, "GET", "/connclose", 2000, &r);
    run_until(&r.done, 5);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 6);
    CHECK_INT_EQ(r.status, 200);
    CHECK_INT_EQ(peer_accepts(srv) - accepts, 2);
    close_client(c);
}

static void test_timeout_and_refused(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};
    uv_update_time(loop);
    uint64_t t0 = uv_now(loop);
    send_get(c, "GET", "/silent", 200, &r);
    run_until(&r.done, 1);
    uv_update_time(loop);
    uint64_t el = uv_now(loop) - t0;
    CHECK_INT_EQ(r.err, UV_ETIMEDOUT);
    CHECK(el >= 190 && el < 400);

    /* A port nobody listens on. */
    int port = peer_closed_port();
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", port);
    hr_http_out_t out = {
        .method = "POST", .url = url, .body = "x", .body_len = 1, .timeout_ms = 2000};
    CHECK_INT_EQ(hr_http_client_send(c, &out, on_done, &r), 0);
    run_until(&r.done, 2);
    CHECK_INT_EQ(r.err, UV_ECONNREFUSED);
    CHECK(strstr(r.errmsg, "refused") != NULL);

    /* Closing fails what is pending with ECANCELED. */
    send_get(c, "GET", "/silent", 5000, &r);
    uv_run(loop, UV_RUN_NOWAIT);
    uv_run(loop, UV_RUN_NOWAIT);
    close_client(c);
    CHECK_INT_EQ(r.done, 3);
    CHECK_INT_EQ(r.err, UV_ECANCELED);
}

static void test_server_closes_idle(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};
    int accepts = peer_accepts(srv);
    /* Reused connection dropped by the server before answering: retried transparently. */
    send_get(c, "GET", "/drop-reused", 2000, &r);
    run_until(&r.done, 1);
    send_get(c, "GET", "/drop-reused", 2000, &r);
    run_until(&r.done, 2);
    CHECK_INT_EQ(r.err, 0);
    CHECK_INT_EQ(r.status, 200);
    CHECK_INT_EQ(peer_accepts(srv) - accepts, 2);

    /* The server closes an idle keep-alive connection: noticed, next request still works. */
    send_get(c, "GET", "/cl-then-close", 2000, &r);
    run_until(&r.done, 3);
    for (int i = 0; i < 5; i++)
        uv_run(loop, UV_RUN_NOWAIT);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 4);
    CHECK_INT_EQ(r.err, 0);
    CHECK_STR_EQ(r.body, "hello");
    close_client(c);
}

static void test_idle_timeout(void)
{
    hr_http_client_opts_t o = {.idle_timeout_ms = 30};
    hr_http_client_t *c = hr_http_client_open(loop, &o);
    result_t r = {0};
    int accepts = peer_accepts(srv);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 1);
    /* Let the idle timer fire, then another request needs a new connection. */
    uv_update_time(loop);
    uint64_t until = uv_now(loop) + 80;
    while (uv_now(loop) < until) {
        uv_run(loop, UV_RUN_NOWAIT);
        uv_sleep(5);
        uv_update_time(loop);
    }
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 2);
    CHECK_INT_EQ(peer_accepts(srv) - accepts, 2);
    close_client(c);
}

static int many_done;
static int many_ok;

static void on_many(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    many_done++;
    char want[32];
    snprintf(want, sizeof want, "/echo/%d", (int)(intptr_t)arg);
    if (err == 0 && res->status == 200 && strcmp(res->body, want) == 0) many_ok++;
}

static void test_many(void)
{
    hr_http_client_opts_t o = {.max_conns_per_host = 4};
    hr_http_client_t *c = hr_http_client_open(loop, &o);
    int accepts = peer_accepts(srv);
    for (int i = 0; i < 200; i++) {
        char url[64];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/echo/%d", peer_port(srv), i);
        hr_http_out_t out = {.method = "GET", .url = url, .timeout_ms = 5000};
        CHECK_INT_EQ(hr_http_client_send(c, &out, on_many, (void *)(intptr_t)i), 0);
    }
    CHECK_INT_EQ(hr_http_client_pending(c), 200);
    run_until(&many_done, 200);
    CHECK_INT_EQ(many_ok, 200);
    CHECK(peer_accepts(srv) - accepts <= 4);
    CHECK(peer_accepts(srv) - accepts >= 1);
    close_client(c);
}

/* ---- A peer on a thread of its own: it answers while the client's loop is still busy ---- */

static uv_loop_t fast_loop;
static uv_async_t fast_stop;
static peer_t *fast_peer;
static int fast_accepts; /* read on the peer's thread before it stops */
static int fast_done, fast_ok;

static void answer_at_once(void *arg, peer_conn_t *pc, const peer_req_t *req)
{
    peer_sends(pc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
}

static void on_fast_stop(uv_async_t *a)
{
    fast_accepts = peer_accepts(fast_peer);
    peer_stop(fast_peer);
    uv_close((uv_handle_t *)a, NULL);
}

static void *fast_peer_run(void *arg)
{
    uv_run(&fast_loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_fast(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    fast_done++;
    if (err == 0 && res->status == 200 && strcmp(res->body, "ok") == 0) fast_ok++;
}

/* A server on another CPU answers some requests of a batch before the loop ran their write
 * callbacks (the client is still writing the rest of the batch): those connections are
 * reused all the same, so rounds of 16 requests keep to the first 16 connections. */
static void test_fast_server_reuse(void)
{
    uv_loop_init(&fast_loop);
    fast_peer = peer_start(&fast_loop);
    CHECK(fast_peer != NULL);
    if (!fast_peer) return;
    peer_set_handler(fast_peer, answer_at_once, NULL);
    uv_async_init(&fast_loop, &fast_stop, on_fast_stop);
    pthread_t t;
    CHECK_INT_EQ(pthread_create(&t, NULL, fast_peer_run, NULL), 0);
    hr_http_client_opts_t o = {.max_conns_per_host = 16};
    hr_http_client_t *c = hr_http_client_open(loop, &o);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", peer_port(fast_peer));
    hr_http_out_t out = {
        .method = "POST", .url = url, .body = "x", .body_len = 1, .timeout_ms = 5000};
    for (int round = 1; round <= 50; round++) {
        for (int i = 0; i < 16; i++)
            CHECK_INT_EQ(hr_http_client_send(c, &out, on_fast, NULL), 0);
        run_until(&fast_done, round * 16);
    }
    CHECK_INT_EQ(fast_ok, 50 * 16);
    close_client(c);
    uv_async_send(&fast_stop);
    pthread_join(t, NULL);
    CHECK_INT_EQ(fast_accepts, 16);
    CHECK_INT_EQ(uv_loop_close(&fast_loop), 0);
}

static void test_request_bytes(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo?x=1&y=2", peer_port(srv));
    hr_header_t h[2] = {{"Content-Type", "application/json"}, {"X-Hookrouter-Event-Id", "e-1"}};
    static const char body[] = "{\"a\":1}\r\n\0binary";
    hr_http_out_t out = {.method = "PUT",
                         .url = url,
                         .headers = h,
                         .nheaders = 2,
                         .body = body,
                         .body_len = sizeof body - 1,
                         .timeout_ms = 2000};
    CHECK_INT_EQ(hr_http_client_send(c, &out, on_done, &r), 0);
    memset(url, 0, sizeof url); /* the client copied what it needs */
    run_until(&r.done, 1);
    CHECK_INT_EQ(r.status, 200);
    const peer_req_t *last = peer_last(srv);
    CHECK(last != NULL);
    const char *q = last ? last->raw : ""; /* "": every check below fails */
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", peer_port(srv));
    CHECK(strncmp(q, "PUT /echo?x=1&y=2 HTTP/1.1\r\n", 28) == 0);
    CHECK(strstr(q, host) != NULL);
    CHECK(strstr(q, "\r\nContent-Type: application/json\r\n") != NULL);
    CHECK(strstr(q, "\r\nX-Hookrouter-Event-Id: e-1\r\n") != NULL);
    char cl[64];
    snprintf(cl, sizeof cl, "\r\nContent-Length: %zu\r\n\r\n", sizeof body - 1);
    char *p = strstr(q, cl);
    CHECK(p != NULL);
    if (p) {
        p += strlen(cl);
        CHECK_INT_EQ(last->len - (size_t)(p - q), sizeof body - 1);
        CHECK(memcmp(p, body, sizeof body - 1) == 0);
    }
    close_client(c);
}

/* A request larger than the socket takes at once: what the first write leaves goes out
 * through uv_write, the server gets every byte in order, and the connection is reused for
 * the next request. */
static void test_large_request(void)
{
    hr_http_client_t *c = hr_http_client_open(loop, NULL);
    result_t r = {0};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/big", peer_port(srv));
    size_t n = 8u << 20;
    char *body = hr_xmalloc(n);
    for (size_t i = 0; i < n; i++)
        body[i] = (char)('a' + i % 23);
    hr_http_out_t out = {
        .method = "POST", .url = url, .body = body, .body_len = n, .timeout_ms = 20000};
    CHECK_INT_EQ(hr_http_client_send(c, &out, on_done, &r), 0);
    run_until(&r.done, 1);
    CHECK_INT_EQ(r.status, 200);
    const peer_req_t *last = peer_last(srv);
    CHECK(last != NULL);
    if (last) {
        CHECK_INT_EQ(last->body_len, n);
        CHECK(last->body_len == n && memcmp(last->body, body, n) == 0);
    }
    out.body_len = 5;
    CHECK_INT_EQ(hr_http_client_send(c, &out, on_done, &r), 0);
    run_until(&r.done, 2);
    CHECK_INT_EQ(r.status, 200);
    last = peer_last(srv);
    CHECK(last != NULL);
    if (last) {
        CHECK_INT_EQ(last->body_len, 5);
        CHECK_INT_EQ(last->conn_nreq, 2); /* the same connection */
    }
    free(body);
    close_client(c);
}

static void test_too_big(void)
{
    hr_http_client_opts_t o = {.max_response_bytes = 1024};
    hr_http_client_t *c = hr_http_client_open(loop, &o);
    result_t r = {0};
    send_get(c, "GET", "/big", 2000, &r);
    run_until(&r.done, 1);
    CHECK_INT_EQ(r.err, UV_E2BIG);
    /* DNS: "localhost" goes through uv_getaddrinfo. */
    char url[64];
    snprintf(url, sizeof url, "http://localhost:%d/cl", peer_port(srv));
    hr_http_out_t out = {.method = "GET", .url = url, .timeout_ms = 2000};
    CHECK_INT_EQ(hr_http_client_send(c, &out, on_done, &r), 0);
    run_until(&r.done, 2);
    /* localhost may resolve to ::1 first, where nothing listens: accept either outcome but
     * require that the callback ran with a sane result. */
    CHECK(r.err == 0 || r.err == UV_ECONNREFUSED);
    close_client(c);
}

int main(void)
{
    loop = hr_xmalloc(sizeof *loop);
    uv_loop_init(loop);
    srv = peer_start(loop);
    CHECK(srv != NULL);
    if (!srv) return CHECK_DONE("test_http_client");
    peer_set_handler(srv, serve, NULL);
    test_bodies();
    test_keepalive();
    test_timeout_and_refused();
    test_server_closes_idle();
    test_idle_timeout();
    test_many();
    test_fast_server_reuse();
    test_request_bytes();
    test_large_request();
    test_too_big();
    peer_stop(srv);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    free(loop);
    return CHECK_DONE("test_http_client");
}
