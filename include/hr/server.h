/* Inbound HTTP/1.1 server: listener, connections and llhttp parsing (one file: src/server.c).
 *
 * The server owns sockets, parsing, limits and timeouts; it knows nothing of webhooks. For
 * each request it calls the application twice:
 *   on_headers(req)  when the header block is complete: the app may answer at once with
 *                    hr_http_reply() (401, 404, 405, 413 ...); the body is then not handed
 *                    over (it is discarded if small, else the connection is closed).
 *                    If the app does not reply, and the request has "Expect: 100-continue",
 *                    the server sends "100 Continue" after on_headers returns.
 *   on_request(req)  when the whole body has arrived (chunked bodies are de-chunked).
 *                    The app must call hr_http_reply(req, ...) exactly once, now or later
 *                    (from another callback of the same loop).
 * Requests of one connection are handed over one at a time, in order: while a request waits
 * for its reply, the server does not parse the next one (pipelined requests stay buffered),
 * so replies always go out in request order.
 *
 * The server itself answers: 400 (malformed HTTP, then close; beyond llhttp's strict mode also
 * obs-fold, an empty header name, a request line without a version and chunk data not
 * followed by CRLF), 413 (body over the limit, then close; a chunk whose size line already
 * says so is refused at once), 431 (header block over the limit, then close), 408 / close on the
 * request timeout (a request not complete within request_timeout_ms of its first byte), and closes
 * idle keep-alive connections after idle_timeout_ms. It honours keep-alive rules of HTTP/1.0 and
 * 1.1 and "Connection: close".
 *
 * With a TLS context (opts.tls, hr_server_set_tls) every new connection speaks TLS only,
 * through src/tls.c over memory BIOs (no blocking call; libuv stays the only I/O): the parser
 * and the limits above see only the plaintext, replies are encrypted. The handshake is timed
 * like a request: idle_timeout_ms for the first byte, then request_timeout_ms for the whole
 * handshake. Plain HTTP, bytes that are not a TLS handshake, a failed handshake (a client
 * without the required certificate) or a broken record close the connection at once, with an
 * info log line naming the peer and the reason.
 */
#ifndef HR_SERVER_H
#define HR_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "hr/common.h"
#include "hr/tls.h"

typedef struct hr_server hr_server_t;
typedef struct hr_http_request hr_http_request_t;

struct hr_http_request {
    const char *method;   /* "POST", "GET", ... */
    const char *path;     /* URL path, without the query string */
    const char *query;    /* query string without '?', or "" */
    hr_header_t *headers; /* in arrival order; names lower-cased */
    size_t nheaders;
    const char *body; /* whole body (valid in on_request only), NUL-terminated */
    size_t body_len;
    int http_major;          /* 1 */
    int http_minor;          /* 0 or 1 */
    uint64_t content_length; /* from the header, or UINT64_MAX if absent/chunked */
    char peer[64];           /* "127.0.0.1:53122" */
    uint64_t start_ns;       /* uv_hrtime() when the first byte arrived */
    void *data;              /* free for the application */
};

typedef struct {
    const char *host;            /* "127.0.0.1", "::1", "0.0.0.0" */
    int port;                    /* 0: pick a free port (see hr_server_port) */
    size_t body_limit;           /* bytes; larger bodies get 413 */
    size_t header_limit;         /* bytes of request line + headers; larger get 431 */
    uint64_t idle_timeout_ms;    /* close keep-alive connections idle this long */
    uint64_t request_timeout_ms; /* a request must be complete this long after its first byte */
    size_t max_connections;      /* open connections past which new ones are accepted and
                                    closed at once (counted, see hr_server_refused); 0: no cap */
    bool reuseport;              /* SO_REUSEPORT: servers on several loops share the address */
    bool exclusive;              /* with reuseport: fail if another socket already has it */
    hr_tls_ctx_t *tls;           /* a server context: HTTPS only (the server takes its own
                                    reference); NULL: plain HTTP */
    atomic_uint_least64_t *conn_gauge; /* if set, kept equal to the open connections (relaxed
                                          stores: another thread may read it); the caller's,
                                          it must outlive the server */
    void (*on_headers)(hr_http_request_t *req, void *arg);
    void (*on_request)(hr_http_request_t *req, void *arg);
    void *arg;
} hr_server_opts_t;

/* Create a server and start listening. Returns NULL with a message in err (e.g. "listen
 * 127.0.0.1:8080: address already in use"). The opts are copied. */
hr_server_t *hr_server_open(uv_loop_t *loop, const hr_server_opts_t *opts, char *err,
                            size_t errlen);
/* The port actually bound (useful with port 0). */
int hr_server_port(const hr_server_t *s);
/* Stop accepting new connections; connections with a request in flight finish it and are
 * then closed, idle ones are closed now. */
void hr_server_stop_accepting(hr_server_t *s);
/* Connections accepted from now on use ctx (a server context; the server takes a reference and
 * drops the one to the previous context); NULL: plain HTTP from now on. Open connections keep
 * what they were accepted with. */
void hr_server_set_tls(hr_server_t *s, hr_tls_ctx_t *ctx);
/* Number of requests handed to the app and not yet replied to. */
size_t hr_server_inflight(const hr_server_t *s);
/* Number of open connections. */
size_t hr_server_connections(const hr_server_t *s);
/* Connections accepted and closed at once because max_connections were open. */
uint64_t hr_server_refused(const hr_server_t *s);

/* Raise the soft RLIMIT_NOFILE to the hard limit (logged if that fails). Returns the soft
 * limit now in force (UINT64_MAX for "unlimited"). Can be called more than once. */
uint64_t hr_server_raise_nofile(void);
/* The default connection cap of one server among `workers`: the descriptors left by nofile
 * once `reserve` are set aside for the spool, files, outbound connections and the loop,
 * shared evenly by the workers; at least 16 each. Pure. */
size_t hr_server_default_max_connections(uint64_t nofile, uint64_t reserve, unsigned workers);
/* Close everything (requests still waiting for a reply are dropped: call hr_http_reply on
 * them is then a no-op that frees them). cb runs once every handle is closed; then the
 * server is freed. */
void hr_server_close(hr_server_t *s, void (*cb)(void *arg), void *arg);

/* Answer req. status: HTTP status; headers: extra headers (Content-Length and Connection are
 * added by the server; Content-Type should be among headers when there is a body); body may
 * be NULL. Copies everything. After this call req must not be used. */
void hr_http_reply(hr_http_request_t *req, int status, const hr_header_t *headers, size_t nheaders,
                   const char *body, size_t body_len);
/* Look up a request header by lower-case name; NULL if absent. */
const char *hr_http_header(const hr_http_request_t *req, const char *name);

#endif
