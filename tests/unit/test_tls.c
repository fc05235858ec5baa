/* Unit tests for src/tls.c: a client and a server connection driven against each other in
 * memory, no sockets, with certificates made at test time by the openssl CLI
 * (tests/tls/gen-certs.sh): handshake, data both ways, close_notify, verification failures
 * (wrong CA, host name and IP mismatch) and their messages, server_name, verify off, client
 * certificates required, session resumption, the shared system trust store, and the
 * context's file errors. */
#include "hr/tls.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"

static char dir[256]; /* the certificates (mkdtemp) */

static char *path(const char *name)
{
    return hr_path_join(dir, name);
}

static hr_tls_ctx_t *client_ctx(const char *ca, const char *cert, const char *key)
{
    char *pca = ca ? path(ca) : NULL, *pcert = cert ? path(cert) : NULL;
    char *pkey = key ? path(key) : NULL;
    hr_tls_opts_t o = {.role = HR_TLS_CLIENT, .ca_file = pca, .cert_file = pcert, .key_file = pkey};
    char err[256] = "";
    hr_tls_ctx_t *ctx = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    if (!ctx) fprintf(stderr, "client ctx: %s\n", err);
    CHECK(ctx != NULL);
    free(pca);
    free(pcert);
    free(pkey);
    return ctx;
}

static hr_tls_ctx_t *server_ctx(const char *client_ca)
{
    char *cert = path("server-chain.pem"), *key = path("server.key");
    char *ca = client_ca ? path(client_ca) : NULL;
    hr_tls_opts_t o = {
        .role = HR_TLS_SERVER, .cert_file = cert, .key_file = key, .client_ca_file = ca};
    char err[256] = "";
    hr_tls_ctx_t *ctx = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    if (!ctx) fprintf(stderr, "server ctx: %s\n", err);
    CHECK(ctx != NULL);
    free(cert);
    free(key);
    free(ca);
    return ctx;
}

/* Move the ciphertext each side produced to the other. Returns the bytes moved. */
static size_t pump(hr_tls_conn_t *a, hr_tls_conn_t *b)
{
    hr_buf_t buf = HR_BUF_INIT;
    size_t moved = 0;
    if (hr_tls_conn_take_out(a, &buf) > 0) hr_tls_conn_feed(b, buf.data, buf.len);
    moved += buf.len;
    hr_buf_reset(&buf);
    if (hr_tls_conn_take_out(b, &buf) > 0) hr_tls_conn_feed(a, buf.data, buf.len);
    moved += buf.len;
    hr_buf_free(&buf);
    return moved;
}

/* Run both handshakes to the end. Returns 0 if both completed, -1 if either failed (its
 * status in *cs / *ss). */
static int handshake(hr_tls_conn_t *c, hr_tls_conn_t *s, hr_tls_status_t *cs, hr_tls_status_t *ss)
{
    hr_tls_status_t a = HR_TLS_WANT_READ, b = HR_TLS_WANT_READ;
    for (int i = 0; i < 20; i++) {
        if (a != HR_TLS_ERROR) a = hr_tls_conn_handshake(c);
        pump(c, s);
        if (b != HR_TLS_ERROR) b = hr_tls_conn_handshake(s);
        pump(c, s);
        if (a == HR_TLS_ERROR || b == HR_TLS_ERROR || (a == HR_TLS_OK && b == HR_TLS_OK)) break;
    }
    if (cs) *cs = a;
    if (ss) *ss = b;
    return a == HR_TLS_OK && b == HR_TLS_OK ? 0 : -1;
}

/* Read what the peer sent into out (NUL-terminated, up to cap-1 bytes); returns the status
 * that ended the reads. */
static hr_tls_status_t read_all(hr_tls_conn_t *c, char *out, size_t cap, size_t *len)
{
    *len = 0;
    hr_tls_status_t st;
    size_t n;
    /* A small buffer, so one record takes several reads. */
    while ((st = hr_tls_conn_read(c, out + *len, cap - 1 - *len < 7 ? cap - 1 - *len : 7, &n)) ==
               HR_TLS_OK &&
           n > 0)
        *len += n;
    out[*len] = '\0';
    return st;
}

static void test_handshake_and_data(void)
{
    hr_tls_ctx_t *cctx = client_ctx("ca.pem", NULL, NULL), *sctx = server_ctx(NULL);
    char err[256];
    hr_tls_conn_t *c = hr_tls_conn_new(cctx, "localhost", err, sizeof err);
    hr_tls_conn_t *s = hr_tls_conn_new(sctx, NULL, err, sizeof err);
    /* The connections hold their contexts: dropping ours changes nothing. */
    hr_tls_ctx_unref(cctx);
    hr_tls_ctx_unref(sctx);
    CHECK(!hr_tls_conn_established(c));
    CHECK_STR_EQ(hr_tls_conn_error(c), "");
    CHECK_INT_EQ(hr_tls_conn_write(c, "x", 1), HR_TLS_ERROR); /* not before the handshake */
    CHECK_STR_EQ(hr_tls_conn_error(c), "tls: write before the handshake completed");
    CHECK_INT_EQ(hr_tls_conn_handshake(c), HR_TLS_WANT_READ);
    CHECK(hr_tls_conn_out_pending(c) > 0); /* the ClientHello */
    CHECK_INT_EQ(handshake(c, s, NULL, NULL), 0);
    CHECK(hr_tls_conn_established(c));
    CHECK(hr_tls_conn_established(s));
    CHECK(!hr_tls_conn_resumed(c));

    char got[256];
    size_t n;
    /* Nothing sent yet: the server wants more. */
    CHECK_INT_EQ(hr_tls_conn_read(s, got, sizeof got, &n), HR_TLS_WANT_READ);
    CHECK_INT_EQ(n, 0);
    const char req[] = "POST / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    CHECK_INT_EQ(hr_tls_conn_write(c, req, strlen(req)), HR_TLS_OK);
    pump(c, s);
    CHECK_INT_EQ(read_all(s, got, sizeof got, &n), HR_TLS_WANT_READ);
    CHECK_STR_EQ(got, req);
    CHECK_INT_EQ(hr_tls_conn_write(s, "HTTP/1.1 204 No Content\r\n\r\n", 27), HR_TLS_OK);
    pump(c, s);
    CHECK_INT_EQ(read_all(c, got, sizeof got, &n), HR_TLS_WANT_READ);
    CHECK_STR_EQ(got, "HTTP/1.1 204 No Content\r\n\r\n");

    /* close_notify: the other side sees the end, once. */
    hr_tls_conn_shutdown(s);
    hr_tls_conn_shutdown(s);
    pump(c, s);
    CHECK_INT_EQ(read_all(c, got, sizeof got, &n), HR_TLS_CLOSED);
    CHECK_INT_EQ(n, 0);
    hr_tls_conn_free(c);
    hr_tls_conn_free(s);
}

/* Handshake a client made by cctx for host against a plain server; returns the client's
 * error ("" if the handshake completed). */
static void expect_client_error(hr_tls_ctx_t *cctx, const char *host, const char *want)
{
    hr_tls_ctx_t *sctx = server_ctx(NULL);
    char err[256];
    hr_tls_conn_t *c = hr_tls_conn_new(cctx, host, err, sizeof err);
    hr_tls_conn_t *s = hr_tls_conn_new(sctx, NULL, err, sizeof err);
    hr_tls_status_t cs, ss;
    int rc = handshake(c, s, &cs, &ss);
    if (*want) {
        CHECK_INT_EQ(rc, -1);
        CHECK_INT_EQ(cs, HR_TLS_ERROR);
    } else {
        CHECK_INT_EQ(rc, 0);
    }
    CHECK_STR_EQ(hr_tls_conn_error(c), want);
    hr_tls_conn_free(c);
    hr_tls_conn_free(s);
    hr_tls_ctx_unref(sctx);
}

static void test_verification(void)
{
    hr_tls_ctx_t *good = client_ctx("ca.pem", NULL, NULL);
    hr_tls_ctx_t *wrong = client_ctx("other-ca.pem", NULL, NULL);
    /* The server sends its chain up to the test CA, which the client does not trust. */
    char *other = path("other-ca.pem"), want[512];
    snprintf(want, sizeof want,
             "tls: certificate verify failed: self-signed certificate in certificate chain (the "
             "server's certificate is not signed by a CA in %s)",
             other);
    free(other);
    expect_client_error(wrong, "localhost", want);
    /* The certificate is for localhost, 127.0.0.1 and ::1 only. */
    expect_client_error(good, "127.0.0.1", "");
    expect_client_error(good, "::1", "");
    expect_client_error(good, "example.com",
                        "tls: certificate verify failed: hostname mismatch (the certificate does "
                        "not name example.com; tls.server_name sets the name to check)");
    expect_client_error(good, "127.0.0.2",
                        "tls: certificate verify failed: IP address mismatch (the certificate "
                        "does not name 127.0.0.2; tls.server_name sets the name to check)");
    /* The system trust store knows nothing of the test CA. */
    hr_tls_ctx_t *sys = client_ctx(NULL, NULL, NULL);
    expect_client_error(sys, "localhost",
                        "tls: certificate verify failed: self-signed certificate in certificate "
                        "chain (the server's certificate is not signed by a CA in the system "
                        "trust store: set tls.ca_file to the CA that signed it)");
    CHECK(hr_tls_ctx_verifies(good));
    CHECK_INT_EQ(hr_tls_ctx_role(good), HR_TLS_CLIENT);
    hr_tls_ctx_unref(good);
    hr_tls_ctx_unref(wrong);
    hr_tls_ctx_unref(sys);

    /* server_name replaces the connection's host, in SNI and in the check. */
    char *ca = path("ca.pem");
    hr_tls_opts_t o = {.role = HR_TLS_CLIENT, .ca_file = ca, .server_name = "localhost"};
    char err[256];
    hr_tls_ctx_t *named = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    expect_client_error(named, "10.1.2.3", "");
    hr_tls_ctx_unref(named);
    o.server_name = "pos.example.com";
    named = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    expect_client_error(named, "localhost",
                        "tls: certificate verify failed: hostname mismatch (the certificate does "
                        "not name pos.example.com; tls.server_name sets the name to check)");
    hr_tls_ctx_unref(named);

    /* verify off accepts the wrong CA and the wrong name. */
    o = (hr_tls_opts_t){.role = HR_TLS_CLIENT, .no_verify = true};
    hr_tls_ctx_t *off = hr_tls_ctx_new(&o, NULL, err, sizeof err);
    CHECK(!hr_tls_ctx_verifies(off));
    expect_client_error(off, "example.com", "");
    hr_tls_ctx_unref(off);
    free(ca);

    /* A client connection needs a name to check. */
    hr_tls_ctx_t *cctx = client_ctx("ca.pem", NULL, NULL);
    err[0] = '\0';
    CHECK(hr_tls_conn_new(cctx, NULL, err, sizeof err) == NULL);
    CHECK_STR_EQ(err, "tls: a client connection needs a host name");
    hr_tls_ctx_unref(cctx);
}

static void test_client_certificate(void)
{
    hr_tls_ctx_t *sctx = server_ctx("ca.pem");
    CHECK(hr_tls_ctx_verifies(sctx));
    CHECK_INT_EQ(hr_tls_ctx_role(sctx), HR_TLS_SERVER);
    char err[256], got[64];
    size_t n;

    /* Without one: the server refuses; a TLS 1.3 client learns it on its first read. */
    hr_tls_ctx_t *anon = client_ctx("ca.pem", NULL, NULL);
    hr_tls_conn_t *c = hr_tls_conn_new(anon, "localhost", err, sizeof err);
    hr_tls_conn_t *s = hr_tls_conn_new(sctx, NULL, err, sizeof err);
    hr_tls_status_t cs, ss;
    CHECK_INT_EQ(handshake(c, s, &cs, &ss), -1);
    CHECK_INT_EQ(ss, HR_TLS_ERROR);
    CHECK_STR_EQ(hr_tls_conn_error(s), "tls: peer did not return a certificate");
    pump(c, s);
    CHECK_INT_EQ(read_all(c, got, sizeof got, &n), HR_TLS_ERROR);
    CHECK_STR_EQ(hr_tls_conn_error(c), "tls: tlsv13 alert certificate required (the server wants a "
                                       "client certificate: set tls.client_cert and "
                                       "tls.client_key)");
    hr_tls_conn_free(c);
    hr_tls_conn_free(s);
    hr_tls_ctx_unref(anon);

    /* With one signed by the CA: accepted, data flows. */
    hr_tls_ctx_t *mtls = client_ctx("ca.pem", "client.pem", "client.key");
    c = hr_tls_conn_new(mtls, "localhost", err, sizeof err);
    s = hr_tls_conn_new(sctx, NULL, err, sizeof err);
    CHECK_INT_EQ(handshake(c, s, NULL, NULL), 0);
    CHECK_INT_EQ(hr_tls_conn_write(c, "ping", 4), HR_TLS_OK);
    pump(c, s);
    CHECK_INT_EQ(read_all(s, got, sizeof got, &n), HR_TLS_WANT_READ);
    CHECK_STR_EQ(got, "ping");
    hr_tls_conn_free(c);
    hr_tls_conn_free(s);
    hr_tls_ctx_unref(mtls);
    hr_tls_ctx_unref(sctx);
}

static void test_session_resumption(void)
{
    hr_tls_ctx_t *cctx = client_ctx("ca.pem", NULL, NULL), *sctx = server_ctx(NULL);
    char err[256], got[64];
    size_t n;
    hr_tls_session_t *sess = NULL;
    for (int round = 0; round < 2; round++) {
        hr_tls_conn_t *c = hr_tls_conn_new(cctx, "localhost", err, sizeof err);
        hr_tls_conn_t *s = hr_tls_conn_new(sctx, NULL, err, sizeof err);
        hr_tls_conn_set_session(c, sess);
        CHECK_INT_EQ(handshake(c, s, NULL, NULL), 0);
        CHECK(hr_tls_conn_resumed(c) == (round == 1));
        CHECK_INT_EQ(hr_tls_conn_write(s, "hi", 2), HR_TLS_OK);
        pump(c, s);
        CHECK_INT_EQ(read_all(c, got, sizeof got, &n), HR_TLS_WANT_READ); /* reads the tickets */
        CHECK_STR_EQ(got, "hi");
        hr_tls_session_free(sess);
        sess = hr_tls_conn_session(c);
        CHECK(sess != NULL);
        hr_tls_conn_free(c);
        hr_tls_conn_free(s);
    }
    hr_tls_session_free(sess);
    hr_tls_ctx_unref(cctx);
    hr_tls_ctx_unref(sctx);
}

/* hr_tls_ctx_new's failure for o: the message (after the folder) and the field. */
static void expect_ctx_error(const hr_tls_opts_t *o, hr_tls_field_t want_field, const char *want)
{
    char err[512] = "";
    hr_tls_field_t field = HR_TLS_FIELD_NONE;
    CHECK(hr_tls_ctx_new(o, &field, err, sizeof err) == NULL);
    CHECK_INT_EQ(field, want_field);
    /* Every message starts with the file it is about. */
    char *msg = err;
    size_t dl = strlen(dir);
    if (strncmp(msg, dir, dl) == 0 && msg[dl] == '/') msg += dl + 1;
    CHECK_STR_EQ(msg, want);
}

/* Client contexts without a CA file share the one system trust store, loaded once for the
 * process; a CA file gives a context its own; the default client context is one for the
 * process and verifies. */
static void test_shared_system_trust(void)
{
    hr_tls_ctx_t *a = client_ctx(NULL, NULL, NULL), *b = client_ctx(NULL, NULL, NULL);
    hr_tls_ctx_t *m = client_ctx(NULL, "client.pem", "client.key"); /* mTLS, system trust */
    hr_tls_ctx_t *own = client_ctx("ca.pem", NULL, NULL);
    CHECK(hr_tls_ctx_trust_id(a) != NULL);
    CHECK(hr_tls_ctx_trust_id(a) == hr_tls_ctx_trust_id(b));
    CHECK(hr_tls_ctx_trust_id(a) == hr_tls_ctx_trust_id(m));
    CHECK(hr_tls_ctx_trust_id(own) != hr_tls_ctx_trust_id(a));
    char err[256] = "";
    hr_tls_ctx_t *d1 = hr_tls_client_default(err, sizeof err);
    hr_tls_ctx_t *d2 = hr_tls_client_default(err, sizeof err);
    CHECK(d1 != NULL);
    CHECK(d1 == d2);
    CHECK(hr_tls_ctx_verifies(d1));
    CHECK_INT_EQ(hr_tls_ctx_role(d1), HR_TLS_CLIENT);
    CHECK(hr_tls_ctx_trust_id(d1) == hr_tls_ctx_trust_id(a));
    /* Dropping every context of the store keeps it for the next one. */
    hr_tls_ctx_unref(a);
    hr_tls_ctx_unref(b);
    hr_tls_ctx_t *c = client_ctx(NULL, NULL, NULL);
    CHECK(hr_tls_ctx_trust_id(c) == hr_tls_ctx_trust_id(d1));
    /* The shared store still verifies as before: the test CA is not in it. */
    hr_tls_ctx_t *srv = server_ctx(NULL);
    hr_tls_conn_t *cc = hr_tls_conn_new(c, "localhost", err, sizeof err);
    hr_tls_conn_t *sc = hr_tls_conn_new(srv, NULL, err, sizeof err);
    CHECK(cc != NULL && sc != NULL);
    hr_tls_status_t cs;
    CHECK_INT_EQ(handshake(cc, sc, &cs, NULL), -1);
    CHECK_INT_EQ(cs, HR_TLS_ERROR);
    CHECK(strstr(hr_tls_conn_error(cc), "certificate verify failed") != NULL);
    hr_tls_conn_free(cc);
    hr_tls_conn_free(sc);
    hr_tls_ctx_unref(srv);
    hr_tls_ctx_unref(c);
    hr_tls_ctx_unref(m);
    hr_tls_ctx_unref(own);
    hr_tls_ctx_unref(d1);
    hr_tls_ctx_unref(d2);
}

static void test_ctx_errors(void)
{
    char *ca = path("ca.pem"), *missing = path("missing.pem"), *cert = path("client.pem");
    char *key = path("client.key"), *other = path("other.key"), *skey = path("server.key");
    hr_tls_opts_t o = {.role = HR_TLS_CLIENT, .ca_file = missing};
    expect_ctx_error(&o, HR_TLS_FIELD_CA_FILE, "missing.pem: No such file or directory");
    o = (hr_tls_opts_t){.role = HR_TLS_CLIENT, .ca_file = key}; /* a key is no CA */
    hr_tls_field_t field;
    char err[512];
    CHECK(hr_tls_ctx_new(&o, &field, err, sizeof err) == NULL);
    CHECK_INT_EQ(field, HR_TLS_FIELD_CA_FILE);
    CHECK(strncmp(err, key, strlen(key)) == 0);

    o = (hr_tls_opts_t){
        .role = HR_TLS_CLIENT, .ca_file = ca, .cert_file = cert, .key_file = missing};
    expect_ctx_error(&o, HR_TLS_FIELD_KEY_FILE, "missing.pem: No such file or directory");
    o.key_file = other;
    char want[600];
    snprintf(want, sizeof want, "other.key: does not match %s (key values mismatch)", cert);
    expect_ctx_error(&o, HR_TLS_FIELD_KEY_FILE, want);
    o.cert_file = missing;
    o.key_file = key;
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE, "missing.pem: No such file or directory");
    o.cert_file = NULL;
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE, "client.key: a key without a certificate");

    o = (hr_tls_opts_t){.role = HR_TLS_SERVER, .key_file = skey};
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE, "a server needs a certificate");
    o.cert_file = cert; /* the client's certificate with the server's key */
    snprintf(want, sizeof want, "server.key: does not match %s (key values mismatch)", cert);
    expect_ctx_error(&o, HR_TLS_FIELD_KEY_FILE, want);
    o.cert_file = ca;
    o.key_file = NULL; /* the key would be in the certificate file: it is not */
    CHECK(hr_tls_ctx_new(&o, &field, err, sizeof err) == NULL);
    CHECK_INT_EQ(field, HR_TLS_FIELD_CERT_FILE);
    char *scert = path("server.pem");
    o = (hr_tls_opts_t){
        .role = HR_TLS_SERVER, .cert_file = scert, .key_file = skey, .client_ca_file = missing};
    expect_ctx_error(&o, HR_TLS_FIELD_CLIENT_CA_FILE, "missing.pem: No such file or directory");

    /* Certificates that load but could never serve: refused with the reason. */
    o = (hr_tls_opts_t){.role = HR_TLS_SERVER, .cert_file = cert, .key_file = key};
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE,
                     "client.pem: its key usage or extended key usage does not allow a TLS server");
    char *cakey = path("ca.key");
    o = (hr_tls_opts_t){.role = HR_TLS_SERVER, .cert_file = ca, .key_file = cakey};
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE,
                     "ca.pem: the first certificate is a CA's (basicConstraints CA:TRUE), not a "
                     "server's: put the leaf certificate first");
    o = (hr_tls_opts_t){.role = HR_TLS_CLIENT, .ca_file = ca, .cert_file = scert, .key_file = skey};
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE,
                     "server.pem: its key usage or extended key usage does not allow a TLS client");
    o = (hr_tls_opts_t){.role = HR_TLS_CLIENT, .ca_file = ca, .cert_file = cert}; /* no key */
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE,
                     "client.pem: no PEM private key in it (-----BEGIN PRIVATE KEY-----); give "
                     "the key's own file as the key option");
    o = (hr_tls_opts_t){.role = HR_TLS_CLIENT, .ca_file = ca, .cert_file = key, .key_file = key};
    expect_ctx_error(&o, HR_TLS_FIELD_CERT_FILE,
                     "client.key: no PEM certificate in it (-----BEGIN CERTIFICATE-----)");
    free(scert);
    free(cakey);
    free(ca);
    free(missing);
    free(cert);
    free(key);
    free(other);
    free(skey);
}

int main(void)
{
    const char *src = getenv("HR_SOURCE_DIR");
    snprintf(dir, sizeof dir, "/tmp/hr-test-tls-XXXXXX");
    if (!src || !mkdtemp(dir)) {
        fprintf(stderr, "test_tls: needs HR_SOURCE_DIR and a temp folder\n");
        return 2;
    }
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/tls/gen-certs.sh' '%s'", src, dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "test_tls: %s failed\n", cmd);
        return 2;
    }
    test_handshake_and_data();
    test_verification();
    test_client_certificate();
    test_session_resumption();
    test_shared_system_trust();
    test_ctx_errors();
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "test_tls: could not remove %s\n", dir);
    return CHECK_DONE("test_tls");
}
