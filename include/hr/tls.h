/* TLS (src/tls.c), the one module that owns it (OpenSSL 3): contexts built from certificate
 * and key files, and connections over memory BIOs that never touch a socket, for the client
 * and the server alike.
 *
 * A context (hr_tls_ctx_t) is the configuration of one side: trust (the system store, loaded
 * once per process and shared, or a CA file), an own certificate and key, and for a server
 * the CAs its clients must be signed by. TLS 1.2 is the minimum. Contexts are refcounted: every
 * connection holds a reference, so a reload can build a new context and drop its reference to the
 * old one while connections made with it finish on it.
 *
 * A connection (hr_tls_conn_t) is a state machine the caller drives: feed it the ciphertext
 * read from the socket (hr_tls_conn_feed), step the handshake, read and write plaintext, and
 * after every call take the ciphertext it produced (hr_tls_conn_take_out) and send it. It
 * makes no socket call, so libuv stays the only I/O and nothing blocks. When a call fails,
 * hr_tls_conn_error says why, in the form
 * "tls: certificate verify failed: self-signed certificate in certificate chain".
 *
 * Contexts and connections may live on any thread; one connection is used by one thread at a
 * time. */
#ifndef HR_TLS_H
#define HR_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "hr/common.h"

typedef struct hr_tls_ctx hr_tls_ctx_t;
typedef struct hr_tls_conn hr_tls_conn_t;
typedef struct hr_tls_session hr_tls_session_t;

typedef enum { HR_TLS_CLIENT, HR_TLS_SERVER } hr_tls_role_t;

typedef struct {
    hr_tls_role_t role;
    /* Client: trust only the CAs in this PEM file (NULL: the system trust store). */
    const char *ca_file;
    /* Own certificate (PEM, leaf first, then intermediates) and its private key. A server
     * needs both; a client sends them when the server asks (mTLS). key_file NULL: the key is
     * in cert_file. */
    const char *cert_file;
    const char *key_file;
    /* Server: require a client certificate signed by a CA in this PEM file (NULL: none). */
    const char *client_ca_file;
    /* Client: accept any server certificate and name (config `verify = false`). Off by
     * default, so a zeroed struct verifies. */
    bool no_verify;
    /* Client: the name sent as SNI and checked against the certificate, instead of the host
     * each connection is made for (NULL: that host). */
    const char *server_name;
} hr_tls_opts_t;

/* Which option a failed hr_tls_ctx_new blames, so a config can name its own key. */
typedef enum {
    HR_TLS_FIELD_NONE,
    HR_TLS_FIELD_CA_FILE,
    HR_TLS_FIELD_CERT_FILE,
    HR_TLS_FIELD_KEY_FILE,
    HR_TLS_FIELD_CLIENT_CA_FILE,
} hr_tls_field_t;

/* Build a context with one reference. Reads every file now. Returns NULL on failure with a
 * message in err naming the file and the reason ("/etc/hr/pos.key: No such file or
 * directory", "/etc/hr/pos.key: does not match /etc/hr/pos.pem (key values mismatch)") and,
 * if field is not NULL, the option it came from. */
hr_tls_ctx_t *hr_tls_ctx_new(const hr_tls_opts_t *opts, hr_tls_field_t *field, char *err,
                             size_t errlen);
/* Take another reference; returns ctx. NULL is passed through. */
hr_tls_ctx_t *hr_tls_ctx_ref(hr_tls_ctx_t *ctx);
/* Drop a reference; the last one frees the context. NULL is fine. */
void hr_tls_ctx_unref(hr_tls_ctx_t *ctx);
hr_tls_role_t hr_tls_ctx_role(const hr_tls_ctx_t *ctx);
/* True if the context checks the peer: a client that verifies, a server that requires a
 * client certificate. */
bool hr_tls_ctx_verifies(const hr_tls_ctx_t *ctx);
/* Identifies the trust store ctx verifies peers against: equal for contexts that share one
 * (every client context without a CA file shares the process's system trust store, loaded
 * once), different otherwise. For tests; never dereference it. */
const void *hr_tls_ctx_trust_id(const hr_tls_ctx_t *ctx);
/* A new reference to the process's default client context: the system trust store,
 * verification on, no own certificate. Built by the first call (any thread), then shared;
 * NULL with a message in err if it cannot be built (the next call tries again). */
hr_tls_ctx_t *hr_tls_client_default(char *err, size_t errlen);

/* Results of the connection's steps. */
typedef enum {
    HR_TLS_ERROR = -1,     /* failed for good: see hr_tls_conn_error; close the socket */
    HR_TLS_OK = 0,         /* done (handshake complete, bytes read or written) */
    HR_TLS_WANT_READ = 1,  /* feed more ciphertext from the socket, then call again */
    HR_TLS_WANT_WRITE = 2, /* send what hr_tls_conn_take_out gives, then call again */
    HR_TLS_CLOSED = 3,     /* the peer sent close_notify: no more plaintext will come */
} hr_tls_status_t;

/* A connection made with ctx (takes a reference to it). host (client only; NULL for a server)
 * is the name or IP literal the socket was connected to: it is sent as SNI (names only) and
 * the certificate must match it (an IP literal an IP SAN), unless the context has a
 * server_name, which replaces it in both, or does not verify. Returns NULL with a message in
 * err (a client without host, an unusable host). */
hr_tls_conn_t *hr_tls_conn_new(hr_tls_ctx_t *ctx, const char *host, char *err, size_t errlen);
void hr_tls_conn_free(hr_tls_conn_t *c);

/* Ciphertext read from the socket. Never fails (the buffer grows). */
void hr_tls_conn_feed(hr_tls_conn_t *c, const void *data, size_t len);
/* Ciphertext waiting to be sent, in bytes. */
size_t hr_tls_conn_out_pending(const hr_tls_conn_t *c);
/* Append all the ciphertext waiting to be sent to out; returns how many bytes. Call after
 * every other call and send what it gives, in order. */
size_t hr_tls_conn_take_out(hr_tls_conn_t *c, hr_buf_t *out);

/* Advance the handshake (a client's first call produces its ClientHello). HR_TLS_OK once it
 * is complete (again on later calls), HR_TLS_WANT_READ, or HR_TLS_ERROR. */
hr_tls_status_t hr_tls_conn_handshake(hr_tls_conn_t *c);
bool hr_tls_conn_established(const hr_tls_conn_t *c);
/* Plaintext received: up to cap bytes into buf, *n set to how many. HR_TLS_OK with *n > 0,
 * HR_TLS_WANT_READ (nothing decrypted yet: feed more), HR_TLS_CLOSED, or HR_TLS_ERROR (a TLS
 * 1.3 server that refuses the client's certificate says so here, after the client's
 * handshake completed). Drives the handshake too if it is not complete. Call until it
 * returns something other than HR_TLS_OK: a record may hold more than cap bytes. */
hr_tls_status_t hr_tls_conn_read(hr_tls_conn_t *c, void *buf, size_t cap, size_t *n);
/* Encrypt len bytes of plaintext, all of them (take the ciphertext out afterwards). Only once
 * the handshake is complete: HR_TLS_OK, or HR_TLS_ERROR. */
hr_tls_status_t hr_tls_conn_write(hr_tls_conn_t *c, const void *data, size_t len);
/* Queue close_notify (take it out and send it before closing the socket). Idempotent. */
void hr_tls_conn_shutdown(hr_tls_conn_t *c);

/* Why the last failing call failed: "tls: <reason>[: <certificate verify reason>]", or "" if
 * nothing failed. Valid until the connection is freed. */
const char *hr_tls_conn_error(const hr_tls_conn_t *c);

/* Client session resumption: take the connection's session once it has received a response
 * (TLS 1.3 sends its tickets after the handshake), keep it per host, and set it on the next
 * connection to that host made with the same context before its handshake. */
/* A new reference to c's session, or NULL if it has none that can be resumed. */
hr_tls_session_t *hr_tls_conn_session(hr_tls_conn_t *c);
/* Offer s on c's handshake (c takes its own reference; s stays the caller's). Before the
 * first hr_tls_conn_handshake only. */
void hr_tls_conn_set_session(hr_tls_conn_t *c, hr_tls_session_t *s);
/* True if c's completed handshake resumed a session. */
bool hr_tls_conn_resumed(const hr_tls_conn_t *c);
void hr_tls_session_free(hr_tls_session_t *s);

/* Describe ctx's own certificate into buf ("certificate /CN=..., issued by /CN=..., valid until
 * 2027-01-02T00:00:00Z") and return the days left until it expires (-1: no certificate). For
 * the operator's log: a listener's certificate is named when it is loaded. */
double hr_tls_ctx_describe(const hr_tls_ctx_t *ctx, char *buf, size_t len);

#endif
