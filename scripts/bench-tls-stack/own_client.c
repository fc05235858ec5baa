/* hookrouter's own client (hr_http_client_send, src/http_client.c) on a libuv loop: N POSTs of
 * one body, C at a time, keep-alive pool of at most C connections. Linked against hr_core.
 *   own_client URL N C BODY_FILE          (http:// only: the client has no TLS)
 * Built with -DBENCH_WITH_OPENSSL (own_client_sslctx): also links libssl and, before sending,
 * makes the SSL_CTX an https target would hold (TLS 1.2+, the system trust store and CA_FILE
 * loaded), unused: the memory floor of the OpenSSL route, not its per-request cost.
 *   own_client_sslctx URL N C BODY_FILE CA_FILE */
#include <uv.h>
#ifdef BENCH_WITH_OPENSSL
#include <openssl/ssl.h>
#endif

#include "bench_common.h"
#include "hr/http_client.h"

static hr_http_client_t *client;
static bench_args_t args;
static long started, ok, failed;
static double t_end;
static long rss_end;
static hr_header_t hdrs[] = {{(char *)"Content-Type", (char *)"application/json"}};

static void send_one(void);

static void on_done(void *arg, int err, const char *errmsg, const hr_http_response_t *res)
{
    if (err == 0 && res->status == 200)
        ok++;
    else if (++failed <= 3)
        fprintf(stderr, "own: %s (HTTP %d)\n", err ? errmsg : "status", err ? 0 : res->status);
    if (started < args.n)
        send_one();
    else if (ok + failed == args.n) {
        t_end = bench_now();
        rss_end = bench_rss_kib();
        uv_stop(uv_default_loop()); /* the pool's idle connections keep the loop alive */
    }
}

static void send_one(void)
{
    hr_http_out_t req = {.method = "POST",
                         .url = args.url,
                         .headers = hdrs,
                         .nheaders = 1,
                         .body = args.body,
                         .body_len = args.body_len,
                         .timeout_ms = 10000};
    started++;
    if (hr_http_client_send(client, &req, on_done, NULL) < 0) {
        fprintf(stderr, "own: bad URL %s\n", args.url);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    bench_parse(argc, argv, &args);
#ifdef BENCH_WITH_OPENSSL
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_default_verify_paths(ctx) ||
        (args.cafile && !SSL_CTX_load_verify_locations(ctx, args.cafile, NULL))) {
        fprintf(stderr, "own: SSL_CTX setup failed\n");
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    const char *name = "own-http-sslctx";
#else
    const char *name = "own-http";
#endif
    uv_loop_t *loop = uv_default_loop();
    hr_http_client_opts_t opts = {.max_conns_per_host = (uint32_t)args.c};
    client = hr_http_client_open(loop, &opts);
    double t0 = bench_now();
    for (long i = 0; i < args.c; i++)
        send_one();
    uv_run(loop, UV_RUN_DEFAULT);
    bench_report(name, &args, ok, failed, -1, t_end - t0, rss_end);
    hr_http_client_close(client, NULL, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
#ifdef BENCH_WITH_OPENSSL
    SSL_CTX_free(ctx);
#endif
    free(args.body);
    return failed ? 1 : 0;
}
