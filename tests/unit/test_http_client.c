/* Unit tests for src/http_client.c against a small libuv HTTP server on 127.0.0.1 that answers
 * canned responses chosen by the request path. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "check.h"
#include "hr/http_client.h"

/* ---- Test server --------------------------------------------------------------------- */

#define MAX_SCONNS 1024

typedef struct tserver tserver_t;

typedef struct {
    uv_tcp_t tcp; /* accepted socket */
    tserver_t *s; /* owner */
    int idx;      /* slot in s->conns */
    hr_buf_t in;  /* bytes not yet consumed */
    int nreq;     /* requests seen on this connection */
    bool closing; /* uv_close called */
} sconn_t;

struct tserver {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int accepts;                /* connections accepted */
    int requests;               /* requests parsed */
    hr_buf_t last;              /* the last request, raw */
    sconn_t *conns[MAX_SCONNS]; /* open connections */
};

typedef struct {
    uv_write_t w;
    sconn_t *sc;
    bool close_after;
    char data[];
} swrite_t;

static void on_sconn_close(uv_handle_t *h)
{
    sconn_t *sc = h->data;
    hr_buf_free(&sc->in);
    free(sc);
}

static void sconn_close(sconn_t *sc)
{
    if (sc->closing) return;
    sc->closing = true;
    sc->s->conns[sc->idx] = NULL;
    uv_close((uv_handle_t *)&sc->tcp, on_sconn_close);
}

static void on_swrite(uv_write_t *w, int status)
{
    swrite_t *sw = (swrite_t *)w;
    if (sw->close_after) sconn_close(sw->sc);
    free(sw);
}

static void swrite(sconn_t *sc, const char *data, size_t len, bool close_after)
{
    swrite_t *sw = hr_xmalloc(sizeof *sw + len);
    sw->sc = sc;
    sw->close_after = close_after;
    memcpy(sw->data, data, len);
    uv_buf_t b = uv_buf_init(sw->data, (unsigned)len);
    if (uv_write(&sw->w, (uv_stream_t *)&sc->tcp, &b, 1, on_swrite) < 0) {
        free(sw);
        sconn_close(sc);
    }
}

static void swrites(sconn_t *sc, const char *s, bool close_after)
{
    swrite(sc, s, strlen(s), close_after);
}

/* Answer one request according to its path. */
static void serve(sconn_t *sc, const char *req, size_t len)
{
    char method[16] = "", path[256] = "";
    sscanf(req, "%15s %255s", method, path);
    if (strcmp(path, "/cl") == 0) {
        swrites(sc, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: Yes\r\n\r\nhello", false);
    } else if (strcmp(path, "/cl-then-close") == 0) {
        swrites(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true);
    } else if (strcmp(path, "/chunked") == 0) {
        swrites(sc,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n"
                " world\r\n0\r\n\r\n",
                false);
    } else if (strcmp(path, "/close-delim") == 0) {
        swrites(sc, "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the ", false);
        swrites(sc, "end", true);
    } else if (strcmp(path, "/connclose") == 0) {
        swrites(sc, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", false);
    } else if (strcmp(path, "/interim") == 0) {
        swrites(sc,
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n"
                "ok",
                false);
    } else if (strcmp(path, "/head") == 0) {
        swrites(sc, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", false);
    } else if (strcmp(path, "/garbage") == 0) {
        swrites(sc, "HTTP/1.1 abc\r\n\r\n", false);
    } else if (strcmp(path, "/big") == 0) {
        char *r = hr_xasprintf("HTTP/1.1 200 OK\r\nContent-Length: 4000\r\n\r\n%4000d", 7);
        swrites(sc, r, false);
        free(r);
    } else if (strcmp(path, "/drop-reused") == 0) {
        if (sc->nreq > 1)
            sconn_close(sc);
        else
            swrites(sc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false);
    } else if (strncmp(path, "/echo", 5) == 0) {
        char *r =
            hr_xasprintf("HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(path), path);
        swrites(sc, r, false);
        free(r);
    } else if (strcmp(path, "/silent") == 0) {
        /* never answer */
    } else {
        (void)len;
        swrites(sc, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", false);
    }
}

static void on_salloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = hr_xmalloc(suggested);
    buf->len = suggested;
}

static void on_sread(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    sconn_t *sc = st->data;
    if (nread < 0) {
        free(buf->base);
        sconn_close(sc);
        return;
    }
    hr_buf_append(&sc->in, buf->base, (size_t)nread);
    free(buf->base);
    while (!sc->closing && sc->in.len > 0) {
        char *end = memmem(sc->in.data, sc->in.len, "\r\n\r\n", 4);
        if (!end) return;
        size_t hlen = (size_t)(end - sc->in.data) + 4;
        size_t cl = 0;
        char *p = strcasestr(sc->in.data, "\r\ncontent-length:");
        if (p && p < end) cl = strtoul(p + 17, NULL, 10);
        if (sc->in.len < hlen + cl) return;
        size_t total = hlen + cl;
        sc->nreq++;
        sc->s->requests++;
        hr_buf_reset(&sc->s->last);
        hr_buf_append(&sc->s->last, sc->in.data, total);
        serve(sc, sc->s->last.data, total);
        if (sc->closing) return;
        memmove(sc->in.data, sc->in.data + total, sc->in.len - total);
        sc->in.len -= total;
        sc->in.data[sc->in.len] = '\0';
    }
}

static void on_sconnection(uv_stream_t *l, int status)
{
    tserver_t *s = l->data;
    CHECK_INT_EQ(status, 0);
    sconn_t *sc = hr_xcalloc(1, sizeof *sc);
    sc->s = s;
    uv_tcp_init(s->loop, &sc->tcp);
    sc->tcp.data = sc;
    CHECK_INT_EQ(uv_accept(l, (uv_stream_t *)&sc->tcp), 0);
    s->accepts++;
    int i = 0;
    while (i < MAX_SCONNS && s->conns[i])
        i++;
    CHECK(i < MAX_SCONNS);
    sc->idx = i;
    s->conns[i] = sc;
    uv_read_start((uv_stream_t *)&sc->tcp, on_salloc, on_sread);
}

static void tserver_start(tserver_t *s, uv_loop_t *loop)
{
    memset(s, 0, sizeof *s);
    s->loop = loop;
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    CHECK_INT_EQ(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    CHECK_INT_EQ(uv_listen((uv_stream_t *)&s->listener, 512, on_sconnection), 0);
    struct sockaddr_storage ss;
    int n = sizeof ss;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &n);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void tserver_stop(tserver_t *s)
{
    for (int i = 0; i < MAX_SCONNS; i++)
        if (s->conns[i]) sconn_close(s->conns[i]);
    uv_close((uv_handle_t *)&s->listener, NULL);
    hr_buf_free(&s->last);
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
static tserver_t srv;

static int send_get(hr_http_client_t *c, const char *method, const char *path, uint32_t tmo,
                    result_t *r)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", srv.port, path);
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
    hr_http_client_t *c = hr_http_client_create(loop, NULL);
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
    hr_http_client_t *c = hr_http_client_create(loop, NULL);
    result_t r = {0};
    int accepts = srv.accepts;
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 1);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 2);
    send_get(c, "HEAD", "/head", 2000, &r);
    run_until(&r.done, 3);
    send_get(c, "GET", "/chunked", 2000, &r);
    run_until(&r.done, 4);
    CHECK_STR_EQ(r.body, "hello world");
    CHECK_INT_EQ(srv.accepts - accepts, 1);

    /* Connection: close is honoured: the next request needs a new connection. */
    send_get(c, "GET", "/connclose", 2000, &r);
    run_until(&r.done, 5);
    send_get(c, "GET", "/cl", 2000, &r);
    run_until(&r.done, 6);
    CHECK_INT_EQ(r.status, 200);
    CHECK_INT_EQ(srv.accepts - accepts, 2);
    close_client(c);
}

static void test_timeout_and_refused(void)
{
    hr_http_client_t *c = hr_http_client_create(loop, NULL);
    result_t r = {0};
    uv_update_time(loop);
    uint64_t t0 = uv_now(loop);
    send_get(c, "GET", "/silent", 200, &r);
    run_until(&r.done, 1);
    uv_update_time(loop);
    uint64_t el = uv_now(loop) - t0;
    CHECK_INT_EQ(r.err, UV_ETIMEDOUT);
    CHECK(el >= 190 && el < 400);

    /* A free port: bind, read the port, close. */
    uv_tcp_t tmp;
    uv_tcp_init(loop, &tmp);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&tmp, (struct sockaddr *)&a, 0);
    struct sockaddr_storage ss;
    int n = sizeof ss;
    uv_tcp_getsockname(&tmp, (struct sockaddr *)&ss, &n);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&tmp, NULL);
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
    hr_http_client_t *c = hr_http_client_create(loop, NULL);
    result_t r = {0};
    int accepts = srv.accepts;
    /* Reused connection dropped by the server before answering: retried transparently. */
    send_get(c, "GET", "/drop-reused", 2000, &r);
    run_until(&r.done, 1);
    send_get(c, "GET", "/drop-reused", 2000, &r);
    run_until(&r.done, 2);
    CHECK_INT_EQ(r.err, 0);
    CHECK_INT_EQ(r.status, 200);
    CHECK_INT_EQ(srv.accepts - accepts, 2);

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
    hr_http_client_t *c = hr_http_client_create(loop, &o);
    result_t r = {0};
    int accepts = srv.accepts;
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
    CHECK_INT_EQ(srv.accepts - accepts, 2);
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
    hr_http_client_t *c = hr_http_client_create(loop, &o);
    int accepts = srv.accepts;
    for (int i = 0; i < 200; i++) {
        char url[64];
        snprintf(url, sizeof url, "http://127.0.0.1:%d/echo/%d", srv.port, i);
        hr_http_out_t out = {.method = "GET", .url = url, .timeout_ms = 5000};
        CHECK_INT_EQ(hr_http_client_send(c, &out, on_many, (void *)(intptr_t)i), 0);
    }
    CHECK_INT_EQ(hr_http_client_pending(c), 200);
    run_until(&many_done, 200);
    CHECK_INT_EQ(many_ok, 200);
    CHECK(srv.accepts - accepts <= 4);
    CHECK(srv.accepts - accepts >= 1);
    close_client(c);
}

static void test_request_bytes(void)
{
    hr_http_client_t *c = hr_http_client_create(loop, NULL);
    result_t r = {0};
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo?x=1&y=2", srv.port);
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
    const char *q = srv.last.data;
    char host[64];
    snprintf(host, sizeof host, "\r\nHost: 127.0.0.1:%d\r\n", srv.port);
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
        CHECK_INT_EQ(srv.last.len - (size_t)(p - q), sizeof body - 1);
        CHECK(memcmp(p, body, sizeof body - 1) == 0);
    }
    close_client(c);
}

static void test_too_big(void)
{
    hr_http_client_opts_t o = {.max_response_bytes = 1024};
    hr_http_client_t *c = hr_http_client_create(loop, &o);
    result_t r = {0};
    send_get(c, "GET", "/big", 2000, &r);
    run_until(&r.done, 1);
    CHECK_INT_EQ(r.err, UV_E2BIG);
    /* DNS: "localhost" goes through uv_getaddrinfo. */
    char url[64];
    snprintf(url, sizeof url, "http://localhost:%d/cl", srv.port);
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
    tserver_start(&srv, loop);
    test_bodies();
    test_keepalive();
    test_timeout_and_refused();
    test_server_closes_idle();
    test_idle_timeout();
    test_many();
    test_request_bytes();
    test_too_big();
    tserver_stop(&srv);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_INT_EQ(uv_loop_close(loop), 0);
    free(loop);
    return CHECK_DONE("test_http_client");
}
