/* Signed webhooks: Standard Webhooks and legacy hmac-sha256 signatures for a request at send
 * time, and the Standard Webhooks check of an inbound one (see include/hr/sign.h). */
#include "hr/sign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hr/crypto.h"

#define WHSEC_PREFIX "whsec_"
#define SIG_B64_LEN  44 /* base64 of an HMAC-SHA256, padded */

static const char *const SW_HEADERS[] = {"webhook-id", "webhook-timestamp", "webhook-signature"};

hr_sign_scheme_t hr_sign_scheme_of(const char *name)
{
    if (strcmp(name, "standard-webhooks") == 0) return HR_SIGN_STANDARD_WEBHOOKS;
    if (strcmp(name, "hmac-sha256") == 0) return HR_SIGN_HMAC_SHA256;
    return HR_SIGN_NONE;
}

void hr_sign_add_key(hr_sign_conf_t *c, const void *key, size_t n)
{
    c->keys = hr_xrealloc(c->keys, (c->nkeys + 1) * sizeof *c->keys);
    hr_sign_key_t *k = &c->keys[c->nkeys++];
    k->key = hr_xmalloc(n ? n : 1);
    if (n) memcpy(k->key, key, n);
    k->len = n;
}

int hr_sign_add_whsec(hr_sign_conf_t *c, const char *secret, char *err, size_t errlen)
{
    size_t plen = strlen(WHSEC_PREFIX);
    if (strncmp(secret, WHSEC_PREFIX, plen) != 0) {
        snprintf(err, errlen, "expected whsec_<base64>");
        return -1;
    }
    const char *b64 = secret + plen;
    size_t n = strlen(b64);
    unsigned char *key = hr_xmalloc(hr_base64_decoded_max(n) + 1);
    size_t len = 0;
    char why[128];
    int rc = hr_base64_decode(b64, n, key, &len, HR_B64_STD, why, sizeof why);
    if (rc == 0 && len > 0) hr_sign_add_key(c, key, len);
    explicit_bzero(key, hr_base64_decoded_max(n) + 1);
    free(key);
    /* The decoder's message may quote a character of the secret: say only what is wrong. */
    if (rc != 0)
        snprintf(err, errlen,
                 "expected whsec_<base64>: the part after whsec_ is not "
                 "base64 (standard alphabet, '=' padding)");
    else if (len == 0)
        snprintf(err, errlen, "expected whsec_<base64>: the key is empty");
    return rc == 0 && len > 0 ? 0 : -1;
}

void hr_sign_conf_clear(hr_sign_conf_t *c)
{
    for (size_t i = 0; i < c->nkeys; i++) {
        explicit_bzero(c->keys[i].key, c->keys[i].len);
        free(c->keys[i].key);
    }
    free(c->keys);
    free(c->header);
    free(c->prefix);
    memset(c, 0, sizeof *c);
}

void hr_sign_conf_copy(hr_sign_conf_t *dst, const hr_sign_conf_t *src)
{
    hr_sign_conf_clear(dst);
    if (!src || src->scheme == HR_SIGN_NONE) return;
    dst->scheme = src->scheme;
    for (size_t i = 0; i < src->nkeys; i++)
        hr_sign_add_key(dst, src->keys[i].key, src->keys[i].len);
    dst->header = src->header ? hr_xstrdup(src->header) : NULL;
    dst->encoding = src->encoding;
    dst->prefix = src->prefix ? hr_xstrdup(src->prefix) : NULL;
    dst->tolerance_s = src->tolerance_s;
}

/* ---------------------------------------------------------------- signing */

/* The Standard Webhooks signed content "id.timestamp.body" into b. */
static void sw_content(hr_buf_t *b, const char *id, const char *ts, const char *body, size_t len)
{
    hr_buf_printf(b, "%s.%s.", id, ts);
    hr_buf_append(b, body, len);
}

/* out = base64 of the HMAC-SHA256 of msg with k, NUL-terminated. */
static void sw_signature(const hr_sign_key_t *k, const hr_buf_t *msg, char out[SIG_B64_LEN + 1])
{
    unsigned char mac[HR_SHA256_LEN];
    hr_hmac_sha256(k->key, k->len, msg->data, msg->len, mac);
    out[hr_base64_encode(mac, sizeof mac, out, HR_B64_STD)] = '\0';
}

/* The webhook-signature value for content: "v1,<sig>" per key, space-separated. */
static char *sw_signatures(const hr_sign_conf_t *c, const hr_buf_t *content)
{
    hr_buf_t v = HR_BUF_INIT;
    for (size_t i = 0; i < c->nkeys; i++) {
        char sig[SIG_B64_LEN + 1];
        sw_signature(&c->keys[i], content, sig);
        hr_buf_printf(&v, "%sv1,%s", i ? " " : "", sig);
    }
    return hr_buf_steal(&v, NULL);
}

/* The legacy header's value: prefix + hex or base64 of the HMAC-SHA256 of the body. */
static char *hmac_value(const hr_sign_conf_t *c, const char *body, size_t len)
{
    unsigned char mac[HR_SHA256_LEN];
    const hr_sign_key_t *k = c->nkeys ? &c->keys[0] : &(hr_sign_key_t){(unsigned char *)"", 0};
    hr_hmac_sha256(k->key, k->len, body, len, mac);
    char enc[2 * HR_SHA256_LEN + 1];
    size_t n = c->encoding == HR_SIGN_BASE64 ? hr_base64_encode(mac, sizeof mac, enc, HR_B64_STD)
                                             : hr_hex_encode(mac, sizeof mac, enc);
    enc[n] = '\0';
    return hr_xstrcat(c->prefix ? c->prefix : "", enc);
}

/* Whether name is one of the headers c sets. */
static bool sets_header(const hr_sign_conf_t *c, const char *name)
{
    if (c->scheme == HR_SIGN_HMAC_SHA256) return c->header && strcasecmp(name, c->header) == 0;
    for (size_t i = 0; i < HR_ARRAY_SIZE(SW_HEADERS); i++)
        if (strcasecmp(name, SW_HEADERS[i]) == 0) return true;
    return false;
}

/* Append the owned header name: value to out. */
static void add_owned(hr_signed_headers_t *out, const char *name, char *value)
{
    out->owned[out->nowned++] = value;
    out->made[out->nheaders++] = (hr_header_t){(char *)name, value};
}

void hr_sign_request(const hr_sign_conf_t *c, const char *id, uint64_t now_s, const hr_header_t *h,
                     size_t n, const char *body, size_t len, hr_signed_headers_t *out)
{
    memset(out, 0, sizeof *out);
    if (!c || c->scheme == HR_SIGN_NONE) { /* the usual case: send h as it is, no allocation */
        out->headers = h;
        out->nheaders = n;
        return;
    }
    out->made = hr_xcalloc(n + HR_ARRAY_SIZE(out->owned) + 1, sizeof *out->made);
    out->headers = out->made;
    for (size_t i = 0; i < n; i++)
        if (!sets_header(c, h[i].name)) out->made[out->nheaders++] = h[i];
    if (c->scheme == HR_SIGN_HMAC_SHA256) {
        add_owned(out, c->header, hmac_value(c, body ? body : "", len));
        return;
    }
    char ts[24];
    snprintf(ts, sizeof ts, "%llu", (unsigned long long)now_s);
    hr_buf_t content = HR_BUF_INIT;
    sw_content(&content, id, ts, body ? body : "", len);
    add_owned(out, SW_HEADERS[0], hr_xstrdup(id));
    add_owned(out, SW_HEADERS[1], hr_xstrdup(ts));
    add_owned(out, SW_HEADERS[2], sw_signatures(c, &content));
    hr_buf_free(&content);
}

void hr_signed_headers_free(hr_signed_headers_t *out)
{
    for (size_t i = 0; i < out->nowned; i++)
        free(out->owned[i]);
    free(out->made);
    memset(out, 0, sizeof *out);
}

/* ---------------------------------------------------------------- verifying */

const char *hr_verify_name(hr_verify_t v)
{
    switch (v) {
    case HR_VERIFY_OK: return "ok";
    case HR_VERIFY_MISSING: return "missing";
    case HR_VERIFY_STALE: return "stale";
    case HR_VERIFY_BAD: break;
    }
    return "bad";
}

hr_verify_t hr_sign_verify_headers(const hr_sign_conf_t *c, const char *id, const char *ts,
                                   const char *sig, uint64_t now_s)
{
    if (!id || !ts || !sig) return HR_VERIFY_MISSING;
    size_t n = strlen(ts);
    if (n == 0 || n > 18 || strspn(ts, "0123456789") != n) return HR_VERIFY_BAD;
    uint64_t t = strtoull(ts, NULL, 10);
    uint64_t off = t > now_s ? t - now_s : now_s - t;
    return off > c->tolerance_s ? HR_VERIFY_STALE : HR_VERIFY_OK;
}

hr_verify_t hr_sign_verify(const hr_sign_conf_t *c, const char *id, const char *ts, const char *sig,
                           const char *body, size_t len, uint64_t now_s)
{
    hr_verify_t v = hr_sign_verify_headers(c, id, ts, sig, now_s);
    if (v != HR_VERIFY_OK) return v;
    hr_buf_t content = HR_BUF_INIT;
    sw_content(&content, id, ts, body ? body : "", len);
    char(*want)[SIG_B64_LEN + 1] = hr_xcalloc(c->nkeys ? c->nkeys : 1, sizeof *want);
    for (size_t k = 0; k < c->nkeys; k++)
        sw_signature(&c->keys[k], &content, want[k]);
    hr_buf_free(&content);
    /* Every "v1,<sig>" against every secret's, without a branch on the outcome. */
    unsigned match = 0;
    for (const char *p = sig; *p;) {
        size_t tok = strcspn(p, " ");
        if (tok > 3 && memcmp(p, "v1,", 3) == 0) {
            for (size_t k = 0; k < c->nkeys; k++)
                match |= hr_consttime_eq(p + 3, tok - 3, want[k], SIG_B64_LEN);
        }
        p += tok;
        while (*p == ' ')
            p++;
    }
    free(want);
    return match ? HR_VERIFY_OK : HR_VERIFY_BAD;
}
