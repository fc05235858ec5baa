/* A loopback HTTP peer for the unit tests: a libuv server on 127.0.0.1 (port 0) that answers
 * each request from a script, or through a handler, and records every request it received.
 *
 * A request is whole at the end of its headers plus Content-Length bytes (no chunked request
 * bodies: the router's client never sends them). Answers are written in the order the requests
 * came, on the connection they came on. peer.c reports its own failures on stderr and aborts:
 * it has no share in a test's CHECK count. */
#ifndef HR_TEST_PEER_H
#define HR_TEST_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct peer peer_t;
typedef struct peer_conn peer_conn_t;

/* One scripted answer. The zero answer ({0}) never answers: the request hangs until the client
 * gives up or closes. */
typedef struct {
    int status;              /* HTTP status; 0: never answer */
    const char *retry_after; /* Retry-After value, or NULL */
    const char *headers;     /* extra header lines, each ending "\r\n", or NULL */
    const char *body;        /* the body (its Content-Length is set); NULL: "ok" */
    uint32_t delay_ms;       /* answer this long after the request was whole */
    bool close;              /* close the connection once the answer is written */
    size_t cut;              /* > 0: write only the first cut bytes, then close (mid-response) */
} peer_answer_t;

/* A request as received. Its memory belongs to the peer (until peer_script or peer_stop). */
typedef struct {
    uint64_t at_ms;   /* uv_now of the loop when the request was whole */
    char method[16];  /* "POST" */
    char path[1024];  /* the request target as sent, "/hook?x=1" */
    char *raw;        /* request line, headers and body, NUL-terminated */
    size_t len;       /* bytes in raw */
    const char *body; /* inside raw, after the blank line */
    size_t body_len;
    int conn_nreq; /* 1 for the first request on its connection, 2 for the next, ... */
} peer_req_t;

/* Answers a request in place of the script: peer_send / peer_answer / peer_close_conn on c,
 * now or never. req is valid during the call only. */
typedef void (*peer_handler_t)(void *arg, peer_conn_t *c, const peer_req_t *req);

/* Listen on 127.0.0.1, port 0. Returns the peer, or NULL (the reason on stderr). Without a
 * script or handler, every request gets 200 "ok". */
peer_t *peer_start(uv_loop_t *loop);
/* Close the listener and every connection; the peer is freed once the loop has run their
 * close callbacks. Accepts NULL. */
void peer_stop(peer_t *p);
int peer_port(const peer_t *p);

/* Answer the next n requests with a[0..n) (copied: a's strings must outlive the answers), the
 * ones after with 200 "ok". Forgets the requests received so far (peer_requests is 0 again). */
void peer_script(peer_t *p, size_t n, const peer_answer_t *a);
/* Route every request to fn instead of the script (NULL: back to the script). */
void peer_set_handler(peer_t *p, peer_handler_t fn, void *arg);

/* Requests received since the start or the last peer_script. */
int peer_requests(const peer_t *p);
/* Request i (0 is the first) since the start or the last peer_script, or NULL. */
const peer_req_t *peer_req(const peer_t *p, int i);
/* The newest request, or NULL. */
const peer_req_t *peer_last(const peer_t *p);
/* Connections accepted since the start. */
int peer_accepts(const peer_t *p);

/* Write len bytes on c as they are; close c once written if close_after. */
void peer_send(peer_conn_t *c, const void *data, size_t len, bool close_after);
void peer_sends(peer_conn_t *c, const char *s, bool close_after);
/* Answer on c as a script entry would. */
void peer_answer(peer_conn_t *c, const peer_answer_t *a);
/* Close c now, dropping what it has not written. */
void peer_close_conn(peer_conn_t *c);

/* A port on 127.0.0.1 that nothing listens on (bound, read and closed again): connecting to it
 * is refused. */
int peer_closed_port(void);

#endif
