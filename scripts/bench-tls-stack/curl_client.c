/* libcurl multi interface driven by a libuv loop: N POSTs of one body, C at a time, over
 * keep-alive. The documented pattern (libcurl's docs/examples/multi-uv.c): CURLMOPT_SOCKETFUNCTION
 * starts/stops a uv_poll_t per socket, CURLMOPT_TIMERFUNCTION arms one uv_timer_t, and both
 * call curl_multi_socket_action; finished transfers are read with curl_multi_info_read.
 * One easy handle per slot, reused for the next request (so libcurl reuses its connection).
 *   curl_client URL N C BODY_FILE [CA_FILE]     (https: verifies the peer against CA_FILE)
 *   BENCH_NO_REUSE=1 curl_client ...            a new connection for every request
 *   BENCH_NO_REUSE=1 BENCH_NO_SESSION=1 ...     and a full TLS handshake on each (no resumption) */
#include <curl/curl.h>
#include <uv.h>

#include "bench_common.h"

typedef struct {
    uv_poll_t poll;
    curl_socket_t fd;
} sock_ctx_t;

static uv_loop_t *loop;
static uv_timer_t timer;
static CURLM *multi;
static bench_args_t args;
static long started, ok, failed, conns;
static double t_end;
static long rss_end;
static struct curl_slist *hdrs;

static size_t on_data(char *p, size_t sz, size_t n, void *u)
{
    return sz * n; /* discard the response body */
}

static void easy_setup(CURL *e)
{
    curl_easy_setopt(e, CURLOPT_URL, args.url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, args.body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)args.body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (args.cafile) curl_easy_setopt(e, CURLOPT_CAINFO, args.cafile);
    /* BENCH_NO_REUSE=1: a new connection (and handshake) for every request */
    if (getenv("BENCH_NO_REUSE")) curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    /* BENCH_NO_SESSION=1: no TLS session cache, so every handshake is a full one */
    if (getenv("BENCH_NO_SESSION")) curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L);
}

static void check_multi_info(void)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL *e = m->easy_handle;
        long code = 0, nc = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        curl_easy_getinfo(e, CURLINFO_NUM_CONNECTS, &nc);
        conns += nc;
        if (m->data.result == CURLE_OK && code == 200)
            ok++;
        else {
            failed++;
            if (failed <= 3)
                fprintf(stderr, "curl: %s (HTTP %ld)\n", curl_easy_strerror(m->data.result), code);
        }
        curl_multi_remove_handle(multi, e);
        if (started < args.n) {
            started++;
            curl_multi_add_handle(multi, e); /* same easy handle, same options */
        } else {
            curl_easy_cleanup(e);
        }
        if (ok + failed == args.n) {
            t_end = bench_now();
            rss_end = bench_rss_kib();
            uv_stop(loop); /* pooled connections keep their polls; curl_multi_cleanup ends them */
        }
    }
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_ctx_t *s = h->data;
    int flags = 0, running;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    curl_multi_socket_action(multi, s->fd, flags, &running);
    check_multi_info();
}

static void on_timer(uv_timer_t *t)
{
    int running;
    curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info();
}

static int timer_cb(CURLM *m, long timeout_ms, void *u)
{
    if (timeout_ms < 0)
        uv_timer_stop(&timer);
    else /* 0: as soon as possible, i.e. the next loop iteration (never from inside here) */
        uv_timer_start(&timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static void on_poll_close(uv_handle_t *h)
{
    free(h->data);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *u, void *sockp)
{
    sock_ctx_t *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, on_poll_close);
            curl_multi_assign(multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        s->fd = fd;
        uv_poll_init_socket(loop, &s->poll, fd);
        s->poll.data = s;
        curl_multi_assign(multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    uv_poll_start(&s->poll, ev, on_poll);
    return 0;
}

int main(int argc, char **argv)
{
    bench_parse(argc, argv, &args);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    loop = uv_default_loop();
    uv_timer_init(loop, &timer);
    multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, args.c);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, args.c);
    /* The own client sends neither; libcurl 7.88 would add "Expect: 100-continue" to a POST
     * over 1 KiB and wait for the interim reply. */
    hdrs = curl_slist_append(NULL, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Expect:");
    double t0 = bench_now();
    for (long i = 0; i < args.c; i++) {
        CURL *e = curl_easy_init();
        easy_setup(e);
        started++;
        curl_multi_add_handle(multi, e);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    bench_report(args.cafile ? "curl-https" : "curl-http", &args, ok, failed, conns, t_end - t0,
                 rss_end);
    curl_multi_cleanup(multi);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    curl_slist_free_all(hdrs);
    curl_global_cleanup();
    free(args.body);
    return failed ? 1 : 0;
}
