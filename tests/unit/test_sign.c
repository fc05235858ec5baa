/* Unit test for src/sign.c: Standard Webhooks signatures against the spec's example, several
 * secrets, the legacy hmac-sha256 header in hex and base64 with a prefix, headers the scheme
 * sets replacing the request's own, secrets refused without being quoted, and inbound
 * verification (good, bad, stale, missing, any of the secrets). */
#include "hr/sign.h"

#include "check.h"

/* The Standard Webhooks spec's example (and the reference libraries' test). */
#define SW_SECRET  "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define SW_ID      "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define SW_TS      1614265330
#define SW_BODY    "{\"test\": 2432232314}"
#define SW_SIG     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
#define SW_SECRET2 "whsec_c2Vjb25kLXNlY3JldC1rZXktMjRi"
#define SW_SIG2    "v1,PhKB5pJc+vJrfgNvOLCAzO/jgdbTXTOjHxkY3LgX4R8="

/* The value of header name in out (case-insensitive), or NULL; fails the check if it is
 * there more than once. */
static const char *header(const hr_signed_headers_t *out, const char *name)
{
    const char *v = NULL;
    int n = 0;
    for (size_t i = 0; i < out->nheaders; i++)
        if (strcasecmp(out->headers[i].name, name) == 0) {
            v = out->headers[i].value;
            n++;
        }
    CHECK(n <= 1);
    return v;
}

static void sw_conf(hr_sign_conf_t *c, const char *s1, const char *s2)
{
    char err[128];
    memset(c, 0, sizeof *c);
    c->scheme = HR_SIGN_STANDARD_WEBHOOKS;
    c->tolerance_s = 300;
    CHECK_INT_EQ(hr_sign_add_whsec(c, s1, err, sizeof err), 0);
    if (s2) CHECK_INT_EQ(hr_sign_add_whsec(c, s2, err, sizeof err), 0);
}

static void test_standard_webhooks(void)
{
    hr_sign_conf_t c;
    sw_conf(&c, SW_SECRET, NULL);
    static const hr_header_t h[] = {
        {"Content-Type", "application/json"}, {"Webhook-Id", "forged"}, {"X-Other", "kept"}};
    hr_signed_headers_t out;
    hr_sign_request(&c, SW_ID, SW_TS, h, 3, SW_BODY, strlen(SW_BODY), &out);
    CHECK_INT_EQ(out.nheaders, 5); /* the request's forged webhook-id is replaced */
    CHECK_STR_EQ(header(&out, "content-type"), "application/json");
    CHECK_STR_EQ(header(&out, "x-other"), "kept");
    CHECK_STR_EQ(header(&out, "webhook-id"), SW_ID);
    CHECK_STR_EQ(header(&out, "webhook-timestamp"), "1614265330");
    CHECK_STR_EQ(header(&out, "webhook-signature"), SW_SIG);
    hr_signed_headers_free(&out);

    /* two secrets (rotation): one signature each, in order, space-separated */
    hr_sign_conf_t c2;
    sw_conf(&c2, SW_SECRET, SW_SECRET2);
    hr_sign_request(&c2, SW_ID, SW_TS, NULL, 0, SW_BODY, strlen(SW_BODY), &out);
    CHECK_STR_EQ(header(&out, "webhook-signature"), SW_SIG " " SW_SIG2);
    hr_signed_headers_free(&out);
    /* a copy signs the same; the original can go */
    hr_sign_conf_t copy = {0};
    hr_sign_conf_copy(&copy, &c2);
    hr_sign_conf_clear(&c2);
    CHECK_INT_EQ(c2.nkeys, 0);
    hr_sign_request(&copy, SW_ID, SW_TS + 60, NULL, 0, SW_BODY, strlen(SW_BODY), &out);
    CHECK_STR_EQ(header(&out, "webhook-timestamp"), "1614265390");
    CHECK(strncmp(header(&out, "webhook-signature"), SW_SIG, strlen(SW_SIG)) != 0);
    CHECK_INT_EQ(hr_sign_verify(&copy, SW_ID, "1614265390", header(&out, "webhook-signature"),
                                SW_BODY, strlen(SW_BODY), SW_TS + 60),
                 HR_VERIFY_OK);
    hr_signed_headers_free(&out);
    hr_sign_conf_clear(&copy);
    hr_sign_conf_clear(&c);
}

static void test_hmac_sha256(void)
{
    hr_sign_conf_t c = {.scheme = HR_SIGN_HMAC_SHA256, .encoding = HR_SIGN_HEX};
    c.header = hr_xstrdup("X-Signature");
    c.prefix = hr_xstrdup("");
    hr_sign_add_key(&c, "topsecret", 9);
    static const hr_header_t h[] = {{"x-signature", "old"}, {"Webhook-Id", "not ours"}};
    hr_signed_headers_t out;
    hr_sign_request(&c, "id-1", 1, h, 2, "{\"a\":1}", 7, &out);
    CHECK_INT_EQ(out.nheaders, 2);
    CHECK_STR_EQ(header(&out, "x-signature"),
                 "bf1e6501b7fa928ec2391fea9dd90af3c9ad1b7b1ef6ff319c25940cec746bf8");
    CHECK_STR_EQ(header(&out, "webhook-id"), "not ours"); /* only the scheme's header is set */
    CHECK(header(&out, "webhook-signature") == NULL);
    hr_signed_headers_free(&out);
    /* base64 with a prefix; the time and id do not enter it */
    c.encoding = HR_SIGN_BASE64;
    free(c.prefix);
    c.prefix = hr_xstrdup("sha256=");
    hr_sign_request(&c, "id-2", 999, NULL, 0, "{\"a\":1}", 7, &out);
    CHECK_STR_EQ(header(&out, "X-Signature"),
                 "sha256=vx5lAbf6ko7COR/qndkK88mtG3se9v8xnCWUDOx0a/g=");
    hr_signed_headers_free(&out);
    hr_sign_conf_clear(&c);

    /* not signed: the headers as they are */
    hr_sign_request(NULL, "id", 1, h, 2, "", 0, &out);
    CHECK_INT_EQ(out.nheaders, 2);
    CHECK_STR_EQ(header(&out, "x-signature"), "old");
    hr_signed_headers_free(&out);
}

static void test_secrets_refused(void)
{
    static const char *const bad[] = {"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_",
                                      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS*",
                                      "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "WHSEC_MfKQ"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad); i++) {
        hr_sign_conf_t c = {0};
        char err[128] = "";
        CHECK_INT_EQ(hr_sign_add_whsec(&c, bad[i], err, sizeof err), -1);
        CHECK_INT_EQ(c.nkeys, 0);
        CHECK(strncmp(err, "expected whsec_<base64>", 23) == 0);
        CHECK(strstr(err, "MfKQ") == NULL && strchr(err, '*') == NULL); /* never quoted */
        hr_sign_conf_clear(&c);
    }
    CHECK_INT_EQ(hr_sign_scheme_of("standard-webhooks"), HR_SIGN_STANDARD_WEBHOOKS);
    CHECK_INT_EQ(hr_sign_scheme_of("hmac-sha256"), HR_SIGN_HMAC_SHA256);
    CHECK_INT_EQ(hr_sign_scheme_of("HMAC"), HR_SIGN_NONE);
}

static void test_verify(void)
{
    hr_sign_conf_t c;
    sw_conf(&c, SW_SECRET2, SW_SECRET); /* the sender signs with the second secret */
    const char *ts = "1614265330";
    size_t n = strlen(SW_BODY);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_OK);
    /* one good signature among others (v1a, a wrong v1) is enough */
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, "v1a,xyz v1,AAAA " SW_SIG "  ", SW_BODY, n, SW_TS),
                 HR_VERIFY_OK);
    /* the tolerance both ways */
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS + 300), HR_VERIFY_OK);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS - 300), HR_VERIFY_OK);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS + 301), HR_VERIFY_STALE);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS - 301), HR_VERIFY_STALE);
    CHECK_INT_EQ(hr_sign_verify_headers(&c, SW_ID, ts, SW_SIG, SW_TS + 301), HR_VERIFY_STALE);
    /* anything changed is bad: body, id, timestamp (inside the tolerance), signature */
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, "{\"test\": 2432232315}", n, SW_TS),
                 HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, "msg_other", ts, SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, "1614265331", SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=",
                                SW_BODY, n, SW_TS),
                 HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts,
                                "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", SW_BODY, n, SW_TS),
                 HR_VERIFY_BAD); /* without its version */
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, "", SW_BODY, n, SW_TS), HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, "16142653x0", SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_BAD);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, "-1614265330", SW_SIG, SW_BODY, n, SW_TS),
                 HR_VERIFY_BAD);
    /* missing headers */
    CHECK_INT_EQ(hr_sign_verify(&c, NULL, ts, SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_MISSING);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, NULL, SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_MISSING);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, NULL, SW_BODY, n, SW_TS), HR_VERIFY_MISSING);
    CHECK_STR_EQ(hr_verify_name(HR_VERIFY_MISSING), "missing");
    CHECK_STR_EQ(hr_verify_name(HR_VERIFY_STALE), "stale");
    CHECK_STR_EQ(hr_verify_name(HR_VERIFY_BAD), "bad");
    hr_sign_conf_clear(&c);
    /* a secret the sender did not use does not verify */
    sw_conf(&c, SW_SECRET2, NULL);
    CHECK_INT_EQ(hr_sign_verify(&c, SW_ID, ts, SW_SIG, SW_BODY, n, SW_TS), HR_VERIFY_BAD);
    hr_sign_conf_clear(&c);
}

int main(void)
{
    test_standard_webhooks();
    test_hmac_sha256();
    test_secrets_refused();
    test_verify();
    return CHECK_DONE("test_sign");
}
