/* Outbound HTTP/1.1 client (src/http_client.c): DNS through libuv, keep-alive connection
 * pools per host:port (and TLS context), responses parsed with llhttp (content-length,
 * chunked and close-delimited bodies), one timeout per request. http:// and https:// (TLS
 * through hr/tls.h: SNI, certificate and host name verification as the context says, the
 * handshake inside the timeout, sessions resumed on new connections of a pool), directly or
 * through an http:// proxy.
 *
 * A request whose reused keep-alive connection turns out to be dead before any response byte
 * arrived is retried once on a fresh connection (that is not a delivery attempt). */
#ifndef HR_HTTP_CLIENT_H
#define HR_HTTP_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "hr/common.h"
#include "hr/tls.h"

typedef struct hr_http_client hr_http_client_t;

typedef struct {
    const char *method;         /* "POST" */
    const char *url;            /* http://host[:port]/path?query */
    const hr_header_t *headers; /* sent as given; the client adds Host, Content-Length */
    size_t nheaders;
    const char *body;
    size_t body_len;
    uint32_t timeout_ms; /* whole exchange: connect + TLS handshake + send + response */
    /* https: the client context to use (its pool holds a reference); NULL: the client's own
     * (system trust store, verification on). Ignored for http. */
    hr_tls_ctx_t *tls;
    /* "http://proxy:3128": send through this proxy (CONNECT for https, the absolute URL in
     * the request line for http); NULL or "": directly. */
    const char *proxy;
} hr_http_out_t;

typedef struct {
    int status;           /* HTTP status (> 0) */
    hr_header_t *headers; /* names lower-cased */
    size_t nheaders;
    char *body; /* NUL-terminated */
    size_t body_len;
} hr_http_response_t;

/* Completion: err is 0 and res set, or err < 0 (a UV_* code such as UV_ECONNREFUSED,
 * UV_ETIMEDOUT, UV_EAI_NONAME, or UV_EPROTO for an unparsable response or a failed TLS
 * handshake or verification, whose message is the "tls: ..." reason) with res NULL and a
 * message in errmsg. res and errmsg are valid only during the callback. */
typedef void (*hr_http_done_cb)(void *arg, int err, const char *errmsg,
                                const hr_http_response_t *res);

typedef struct {
    uint32_t max_conns_per_host; /* connections open at once per host:port (default 64) */
    uint64_t idle_timeout_ms;    /* close pooled connections idle this long (default 30 s) */
    size_t max_response_bytes;   /* bigger responses fail with UV_E2BIG (default 4 MiB) */
} hr_http_client_opts_t;

hr_http_client_t *hr_http_client_open(uv_loop_t *loop, const hr_http_client_opts_t *opts);
/* Start a request. Copies what it needs from req. Returns 0 and cb runs exactly once later
 * (never from inside this call), or returns < 0 (bad URL) and cb never runs. */
int hr_http_client_send(hr_http_client_t *c, const hr_http_out_t *req, hr_http_done_cb cb,
                        void *arg);
/* Requests queued or in flight. */
size_t hr_http_client_pending(const hr_http_client_t *c);
/* Fail every pending request (their callbacks run with UV_ECANCELED), close every connection,
 * and free the client once all handles are closed; then call cb. */
void hr_http_client_close(hr_http_client_t *c, void (*cb)(void *arg), void *arg);

#endif
