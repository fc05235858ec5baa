/* TLS over memory BIOs (OpenSSL 3): contexts from files, connections without sockets. See
 * hr/tls.h for the contract. */
#include "hr/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct hr_tls_ctx {
    atomic_uint refs;
    SSL_CTX *ssl;
    hr_tls_role_t role;
    bool verify;
    bool has_cert;     /* an own certificate is loaded (a client's for mTLS) */
    char *server_name; /* NULL: the connection's host */
    char *trust;       /* what verifies the peer, for messages: the CA file, or NULL (system) */
};

struct hr_tls_conn {
    hr_tls_ctx_t *ctx;
    SSL *ssl;
    BIO *rbio;      /* ciphertext fed in, owned by ssl */
    BIO *wbio;      /* ciphertext to send, owned by ssl */
    char peer[256]; /* client: the name the certificate must carry */
    char hint[384]; /* the advice appended to err */
    char err[768];
};

/* The session type is OpenSSL's; the name only hides it from the header. */
#define SESSION(s) ((SSL_SESSION *)(s))

/* The reason of the oldest error on the thread's OpenSSL queue, or NULL if it is empty. Leaves
 * the queue as it is. */
static const char *ssl_reason(char *buf, size_t len)
{
    unsigned long e = ERR_peek_error();
    if (e == 0) return NULL;
    const char *r = ERR_reason_error_string(e);
    if (r) return r;
    ERR_error_string_n(e, buf, len);
    return buf;
}

/* "<file>: <reason>" for a file OpenSSL would not load; clears the error queue. */
static void file_error(const char *file, char *err, size_t errlen)
{
    char buf[256];
    const char *r = ssl_reason(buf, sizeof buf);
    snprintf(err, errlen, "%s: %s", file, r ? r : "cannot load");
    ERR_clear_error();
}

/* Check that file can be opened for reading, so a missing file says so rather than OpenSSL's
 * "system lib". Returns 0 or -1 with the message in err. */
static int file_readable(const char *file, char *err, size_t errlen)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", file, strerror(errno));
        return -1;
    }
    fclose(f);
    return 0;
}

static int fail_field(hr_tls_field_t *field, hr_tls_field_t which)
{
    if (field) *field = which;
    return -1;
}

/* t as "2026-12-02T18:00:00Z" into buf. */
static const char *asn1_time_text(const ASN1_TIME *t, char *buf, size_t len)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1 || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(buf, len, "(unknown)");
    return buf;
}

/* The own certificate of ssl must be usable for role now: within its validity, not a CA's,
 * and allowed by its key usage for a TLS server (or client). A wrong file here would load and
 * then fail every handshake. Returns 0 or -1 with "<file>: <why>" in err. */
static int check_own(SSL_CTX *ssl, hr_tls_role_t role, const char *file, char *err, size_t errlen)
{
    X509 *x = SSL_CTX_get0_certificate(ssl);
    if (!x) return 0;
    char when[32];
    if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0) {
        snprintf(err, errlen, "%s: certificate expired on %s", file,
                 asn1_time_text(X509_get0_notAfter(x), when, sizeof when));
        return -1;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0) {
        snprintf(err, errlen, "%s: certificate not valid before %s", file,
                 asn1_time_text(X509_get0_notBefore(x), when, sizeof when));
        return -1;
    }
    if (X509_get_extension_flags(x) & EXFLAG_CA) {
        snprintf(err, errlen,
                 "%s: the first certificate is a CA's (basicConstraints CA:TRUE), "
                 "not a %s's: put the leaf certificate first",
                 file, role == HR_TLS_SERVER ? "server" : "client");
        return -1;
    }
    int purpose = role == HR_TLS_SERVER ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT;
    if (X509_check_purpose(x, purpose, 0) != 1) {
        snprintf(err, errlen, "%s: its key usage or extended key usage does not allow a TLS %s",
                 file, role == HR_TLS_SERVER ? "server" : "client");
        ERR_clear_error();
        return -1;
    }
    return 0;
}

/* Load the own certificate chain and key into ssl. Returns 0 or -1 (err, *field set). */
static int load_own(SSL_CTX *ssl, const hr_tls_opts_t *o, hr_tls_field_t *field, char *err,
                    size_t errlen)
{
    const char *key = o->key_file ? o->key_file : o->cert_file;
    hr_tls_field_t key_field = o->key_file ? HR_TLS_FIELD_KEY_FILE : HR_TLS_FIELD_CERT_FILE;
    if (file_readable(o->cert_file, err, errlen) < 0)
        return fail_field(field, HR_TLS_FIELD_CERT_FILE);
    if (SSL_CTX_use_certificate_chain_file(ssl, o->cert_file) != 1) {
        char buf[256];
        const char *r = ssl_reason(buf, sizeof buf);
        if (r && strcmp(r, "no start line") == 0) {
            snprintf(err, errlen, "%s: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
                     o->cert_file);
            ERR_clear_error();
        } else {
            file_error(o->cert_file, err, errlen);
        }
        return fail_field(field, HR_TLS_FIELD_CERT_FILE);
    }
    if (file_readable(key, err, errlen) < 0) return fail_field(field, key_field);
    /* OpenSSL checks the key against the certificate as it loads it. */
    int ok = SSL_CTX_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) == 1;
    if (!ok && ERR_GET_REASON(ERR_peek_error()) != X509_R_KEY_VALUES_MISMATCH) {
        char buf[256];
        const char *r = ssl_reason(buf, sizeof buf);
        if (r && (strcmp(r, "no start line") == 0 || strcmp(r, "unsupported") == 0)) {
            snprintf(err, errlen, "%s: no PEM private key in it (-----BEGIN PRIVATE KEY-----)%s",
                     key, o->key_file ? "" : "; give the key's own file as the key option");
            ERR_clear_error();
        } else {
            file_error(key, err, errlen);
        }
        return fail_field(field, key_field);
    }
    if (!ok || SSL_CTX_check_private_key(ssl) != 1) {
        char buf[256];
        const char *r = ssl_reason(buf, sizeof buf);
        snprintf(err, errlen, "%s: does not match %s (%s)", key, o->cert_file,
                 r ? r : "key values mismatch");
        ERR_clear_error();
        return fail_field(field, key_field);
    }
    if (check_own(ssl, o->role, o->cert_file, err, errlen) < 0)
        return fail_field(field, HR_TLS_FIELD_CERT_FILE);
    return 0;
}

/* Trust the CAs in file for verifying the peer. Returns 0 or -1 with err. */
static int load_trust(SSL_CTX *ssl, const char *file, char *err, size_t errlen)
{
    if (file_readable(file, err, errlen) < 0) return -1;
    if (SSL_CTX_load_verify_locations(ssl, file, NULL) != 1) {
        file_error(file, err, errlen);
        return -1;
    }
    return 0;
}

/* The system trust store (OpenSSL's default paths; Debian's CA bundle costs ~236 M
 * instructions and ~5 MiB to load), built once for the process and shared by every client
 * context without a CA file. Lookups in an X509_STORE are locked by OpenSSL, so contexts on
 * any thread can share it. A failure is not kept: the next context tries again. */
static pthread_mutex_t sys_trust_lock = PTHREAD_MUTEX_INITIALIZER;
static X509_STORE *sys_trust; /* the process's reference, never dropped */

/* The system trust store, built on the first call (the caller takes no reference: a context
 * takes its own with SSL_CTX_set1_cert_store). NULL with err if it cannot be built. */
static X509_STORE *system_trust(char *err, size_t errlen)
{
    pthread_mutex_lock(&sys_trust_lock);
    if (!sys_trust) {
        X509_STORE *s = X509_STORE_new();
        if (s && X509_STORE_set_default_paths(s) == 1) {
            sys_trust = s;
        } else {
            file_error("system trust store", err, errlen);
            X509_STORE_free(s);
        }
    }
    X509_STORE *s = sys_trust;
    pthread_mutex_unlock(&sys_trust_lock);
    return s;
}

/* Fill the client side of ssl from o. Returns 0 or -1 (err, *field set). */
static int setup_client(SSL_CTX *ssl, const hr_tls_opts_t *o, hr_tls_field_t *field, char *err,
                        size_t errlen)
{
    if (o->ca_file) {
        if (load_trust(ssl, o->ca_file, err, errlen) < 0)
            return fail_field(field, HR_TLS_FIELD_CA_FILE);
    } else {
        X509_STORE *store = system_trust(err, errlen);
        if (!store) return fail_field(field, HR_TLS_FIELD_CA_FILE);
        SSL_CTX_set1_cert_store(ssl, store); /* shared: the context takes a reference */
    }
    if (o->cert_file && load_own(ssl, o, field, err, errlen) < 0) return -1;
    if (!o->cert_file && o->key_file) {
        snprintf(err, errlen, "%s: a key without a certificate", o->key_file);
        return fail_field(field, HR_TLS_FIELD_CERT_FILE);
    }
    SSL_CTX_set_verify(ssl, o->no_verify ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
    /* Sessions are kept by the caller (hr_tls_conn_session), not in the context. */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    return 0;
}

/* Fill the server side of ssl from o. Returns 0 or -1 (err, *field set). */
static int setup_server(SSL_CTX *ssl, const hr_tls_opts_t *o, hr_tls_field_t *field, char *err,
                        size_t errlen)
{
    if (!o->cert_file) {
        snprintf(err, errlen, "a server needs a certificate");
        return fail_field(field, HR_TLS_FIELD_CERT_FILE);
    }
    if (load_own(ssl, o, field, err, errlen) < 0) return -1;
    if (o->client_ca_file) {
        if (load_trust(ssl, o->client_ca_file, err, errlen) < 0)
            return fail_field(field, HR_TLS_FIELD_CLIENT_CA_FILE);
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->client_ca_file);
        if (!names) {
            file_error(o->client_ca_file, err, errlen);
            return fail_field(field, HR_TLS_FIELD_CLIENT_CA_FILE);
        }
        SSL_CTX_set_client_CA_list(ssl, names);
        SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    /* Resumed sessions must belong to this server (needed once clients are verified). */
    static const unsigned char sid_ctx[] = "hookrouter";
    SSL_CTX_set_session_id_context(ssl, sid_ctx, sizeof sid_ctx - 1);
    return 0;
}

hr_tls_ctx_t *hr_tls_ctx_new(const hr_tls_opts_t *o, hr_tls_field_t *field, char *err,
                             size_t errlen)
{
    if (field) *field = HR_TLS_FIELD_NONE;
    ERR_clear_error();
    bool server = o->role == HR_TLS_SERVER;
    SSL_CTX *ssl = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ssl) {
        file_error("SSL_CTX_new", err, errlen);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ssl, TLS1_2_VERSION);
    /* A renegotiation would make a write wait for a read; nobody needs it. */
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    int rc = server ? setup_server(ssl, o, field, err, errlen)
                    : setup_client(ssl, o, field, err, errlen);
    if (rc < 0) {
        SSL_CTX_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    hr_tls_ctx_t *ctx = hr_xcalloc(1, sizeof *ctx);
    atomic_init(&ctx->refs, 1);
    ctx->ssl = ssl;
    ctx->role = o->role;
    ctx->verify = server ? o->client_ca_file != NULL : !o->no_verify;
    ctx->server_name = !server && o->server_name ? hr_xstrdup(o->server_name) : NULL;
    ctx->has_cert = o->cert_file != NULL;
    const char *trust = server ? o->client_ca_file : o->ca_file;
    ctx->trust = trust ? hr_xstrdup(trust) : NULL;
    return ctx;
}

hr_tls_ctx_t *hr_tls_ctx_ref(hr_tls_ctx_t *ctx)
{
    if (ctx) atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void hr_tls_ctx_unref(hr_tls_ctx_t *ctx)
{
    if (!ctx || atomic_fetch_sub(&ctx->refs, 1) != 1) return;
    SSL_CTX_free(ctx->ssl);
    free(ctx->server_name);
    free(ctx->trust);
    free(ctx);
}

hr_tls_role_t hr_tls_ctx_role(const hr_tls_ctx_t *ctx)
{
    return ctx->role;
}

bool hr_tls_ctx_verifies(const hr_tls_ctx_t *ctx)
{
    return ctx->verify;
}

const void *hr_tls_ctx_trust_id(const hr_tls_ctx_t *ctx)
{
    return SSL_CTX_get_cert_store(ctx->ssl);
}

static pthread_mutex_t default_client_lock = PTHREAD_MUTEX_INITIALIZER;
static hr_tls_ctx_t *default_client; /* the process's reference, never dropped */

hr_tls_ctx_t *hr_tls_client_default(char *err, size_t errlen)
{
    pthread_mutex_lock(&default_client_lock);
    if (!default_client) {
        hr_tls_opts_t o = {.role = HR_TLS_CLIENT};
        default_client = hr_tls_ctx_new(&o, NULL, err, errlen);
    }
    hr_tls_ctx_t *ctx = hr_tls_ctx_ref(default_client);
    pthread_mutex_unlock(&default_client_lock);
    return ctx;
}

/* Point the client connection at name: SNI for a host name, and the name or IP address its
 * certificate must carry when verifying. Returns 0 or -1 with err. */
static int set_peer_name(hr_tls_conn_t *c, const char *name, char *err, size_t errlen)
{
    unsigned char addr[16];
    bool ip = inet_pton(AF_INET, name, addr) == 1 || inet_pton(AF_INET6, name, addr) == 1;
    snprintf(c->peer, sizeof c->peer, "%s", name);
    /* RFC 6066: SNI carries host names only, never an address literal. */
    if (!ip && SSL_set_tlsext_host_name(c->ssl, name) != 1) {
        snprintf(err, errlen, "tls: cannot send server name %s", name);
        return -1;
    }
    if (!c->ctx->verify) return 0;
    X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
    int ok;
    if (ip) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, name);
    } else {
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        ok = X509_VERIFY_PARAM_set1_host(param, name, 0);
    }
    if (ok != 1) {
        snprintf(err, errlen, "tls: cannot verify against name %s", name);
        return -1;
    }
    return 0;
}

hr_tls_conn_t *hr_tls_conn_new(hr_tls_ctx_t *ctx, const char *host, char *err, size_t errlen)
{
    bool client = ctx->role == HR_TLS_CLIENT;
    const char *name = ctx->server_name ? ctx->server_name : host;
    if (client && (!name || !*name)) {
        snprintf(err, errlen, "tls: a client connection needs a host name");
        return NULL;
    }
    ERR_clear_error();
    hr_tls_conn_t *c = hr_xcalloc(1, sizeof *c);
    c->ssl = SSL_new(ctx->ssl);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) abort(); /* only out of memory */
    /* An empty input BIO means "more to come", not end of file. */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    c->ctx = hr_tls_ctx_ref(ctx);
    if (client) {
        SSL_set_connect_state(c->ssl);
        if (set_peer_name(c, name, err, errlen) < 0) {
            hr_tls_conn_free(c);
            ERR_clear_error();
            return NULL;
        }
    } else {
        SSL_set_accept_state(c->ssl);
    }
    return c;
}

void hr_tls_conn_free(hr_tls_conn_t *c)
{
    if (!c) return;
    SSL_free(c->ssl); /* frees both BIOs */
    hr_tls_ctx_unref(c->ctx);
    free(c);
}

void hr_tls_conn_feed(hr_tls_conn_t *c, const void *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (size_t)INT32_MAX ? INT32_MAX : (int)len;
        int w = BIO_write(c->rbio, data, chunk);
        if (w <= 0) abort(); /* a memory BIO fails only out of memory */
        data = (const char *)data + w;
        len -= (size_t)w;
    }
}

size_t hr_tls_conn_out_pending(const hr_tls_conn_t *c)
{
    return BIO_ctrl_pending(c->wbio);
}

size_t hr_tls_conn_take_out(hr_tls_conn_t *c, hr_buf_t *out)
{
    size_t total = 0, n;
    while ((n = BIO_ctrl_pending(c->wbio)) > 0) {
        int chunk = n > (size_t)INT32_MAX ? INT32_MAX : (int)n;
        hr_buf_reserve(out, (size_t)chunk);
        int r = BIO_read(c->wbio, out->data + out->len, chunk);
        if (r <= 0) break;
        out->len += (size_t)r;
        out->data[out->len] = '\0';
        total += (size_t)r;
    }
    return total;
}

/* Map the result r of an SSL_* call to a status; on failure record why in c->err. */
/* What an operator can do about verification result v of connection c (a client's), after
 * OpenSSL's words; "" if nothing useful can be said. Uses c->hint. */
static const char *verify_hint(hr_tls_conn_t *c, long v)
{
    const hr_tls_ctx_t *x = c->ctx;
    switch (v) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        if (x->role == HR_TLS_SERVER)
            snprintf(c->hint, sizeof c->hint,
                     " (the client's certificate is not signed by a CA in %s)",
                     x->trust ? x->trust : "client_ca_file");
        else
            snprintf(c->hint, sizeof c->hint,
                     " (the server's certificate is not signed by a CA in %s%s)",
                     x->trust ? x->trust : "the system trust store",
                     x->trust ? "" : ": set tls.ca_file to the CA that signed it");
        return c->hint;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        snprintf(c->hint, sizeof c->hint,
                 " (the certificate does not name %s; tls.server_name sets the name to check)",
                 c->peer);
        return c->hint;
    default: return "";
    }
}

/* The same for a failure that is not a verification result: OpenSSL reason r. */
static const char *error_hint(hr_tls_conn_t *c, int r)
{
    bool client = c->ctx->role == HR_TLS_CLIENT;
    switch (r) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
        return client ? " (is the peer's port plain HTTP? an https:// URL needs a TLS port)" : "";
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
        if (!client) return "";
        return c->ctx->has_cert ? " (the server refused our client certificate: is tls.client_cert "
                                  "signed by a CA it trusts?)"
                                : " (the server wants a client certificate: set tls.client_cert "
                                  "and tls.client_key)";
    default: return "";
    }
}

static hr_tls_status_t status_of(hr_tls_conn_t *c, int r)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_NONE: return HR_TLS_OK;
    case SSL_ERROR_WANT_READ: return HR_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return HR_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return HR_TLS_CLOSED;
    default: break;
    }
    char buf[256];
    const char *reason = ssl_reason(buf, sizeof buf);
    unsigned long code = ERR_peek_error();
    if (!reason) reason = e == SSL_ERROR_SYSCALL ? "unexpected end of stream" : "protocol error";
    long v = SSL_get_verify_result(c->ssl);
    if (ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK)
        snprintf(c->err, sizeof c->err, "tls: %s: %s%s", reason, X509_verify_cert_error_string(v),
                 verify_hint(c, v));
    else
        snprintf(c->err, sizeof c->err, "tls: %s%s", reason, error_hint(c, ERR_GET_REASON(code)));
    ERR_clear_error();
    return HR_TLS_ERROR;
}

hr_tls_status_t hr_tls_conn_handshake(hr_tls_conn_t *c)
{
    if (SSL_is_init_finished(c->ssl)) return HR_TLS_OK;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    return r == 1 ? HR_TLS_OK : status_of(c, r);
}

bool hr_tls_conn_established(const hr_tls_conn_t *c)
{
    return SSL_is_init_finished(c->ssl);
}

hr_tls_status_t hr_tls_conn_read(hr_tls_conn_t *c, void *buf, size_t cap, size_t *n)
{
    *n = 0;
    if (cap == 0) return HR_TLS_OK;
    ERR_clear_error();
    size_t got = 0;
    int r = SSL_read_ex(c->ssl, buf, cap, &got);
    if (r == 1) {
        *n = got;
        return HR_TLS_OK;
    }
    return status_of(c, r);
}

hr_tls_status_t hr_tls_conn_write(hr_tls_conn_t *c, const void *data, size_t len)
{
    if (!SSL_is_init_finished(c->ssl)) {
        snprintf(c->err, sizeof c->err, "tls: write before the handshake completed");
        return HR_TLS_ERROR;
    }
    if (len == 0) return HR_TLS_OK;
    ERR_clear_error();
    size_t done = 0;
    int r = SSL_write_ex(c->ssl, data, len, &done);
    if (r == 1) return HR_TLS_OK;
    /* Renegotiation is off, so a memory BIO never makes a write wait: anything else fails. */
    if (status_of(c, r) != HR_TLS_ERROR)
        snprintf(c->err, sizeof c->err, "tls: write did not complete");
    return HR_TLS_ERROR;
}

void hr_tls_conn_shutdown(hr_tls_conn_t *c)
{
    if (SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN) return;
    /* SSL_shutdown refuses before the handshake completed; then there is nothing to close. */
    if (!SSL_is_init_finished(c->ssl)) return;
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    ERR_clear_error();
}

const char *hr_tls_conn_error(const hr_tls_conn_t *c)
{
    return c->err;
}

hr_tls_session_t *hr_tls_conn_session(hr_tls_conn_t *c)
{
    /* A copy: freeing a connection that was not shut down marks its own session spoilt. */
    SSL_SESSION *s = SSL_get0_session(c->ssl);
    if (!s || !SSL_SESSION_is_resumable(s)) return NULL;
    return (hr_tls_session_t *)SSL_SESSION_dup(s);
}

void hr_tls_conn_set_session(hr_tls_conn_t *c, hr_tls_session_t *s)
{
    if (s) SSL_set_session(c->ssl, SESSION(s));
}

bool hr_tls_conn_resumed(const hr_tls_conn_t *c)
{
    return SSL_session_reused(c->ssl) == 1;
}

void hr_tls_session_free(hr_tls_session_t *s)
{
    SSL_SESSION_free(SESSION(s));
}

double hr_tls_ctx_describe(const hr_tls_ctx_t *ctx, char *buf, size_t len)
{
    X509 *x = ctx ? SSL_CTX_get0_certificate(ctx->ssl) : NULL;
    if (!x) {
        snprintf(buf, len, "no certificate");
        return -1;
    }
    char subject[256], issuer[256], until[32];
    X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
    X509_NAME_oneline(X509_get_issuer_name(x), issuer, sizeof issuer);
    snprintf(buf, len, "certificate %s, issued by %s, valid until %s", subject, issuer,
             asn1_time_text(X509_get0_notAfter(x), until, sizeof until));
    int days = 0, secs = 0;
    if (ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x)) != 1) return -1;
    return days + secs / 86400.0;
}
