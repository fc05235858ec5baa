/* Signed webhooks (src/sign.c): the signing schemes as pure code, no clock and no I/O (the
 * caller passes the time). Outbound, the headers a request gets at send time: Standard
 * Webhooks (webhook-id, webhook-timestamp, webhook-signature: "v1,<base64 HMAC-SHA256 of
 * "id.timestamp.body">" per secret, space-separated) or the legacy hmac-sha256 (one header,
 * [prefix] + hex or base64 of the HMAC-SHA256 of the body bytes only). Inbound, the check of a
 * Standard Webhooks signature: any of the secrets, compared in constant time, the timestamp
 * within a tolerance of now.
 *
 * Secrets are held decoded (the key bytes) in hr_sign_conf_t, wiped when freed, and never
 * written into a message: the errors of hr_sign_parse_whsec say what is wrong, not what was
 * given. */
#ifndef HR_SIGN_H
#define HR_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/common.h"

typedef enum {
    HR_SIGN_NONE = 0,          /* not signed */
    HR_SIGN_STANDARD_WEBHOOKS, /* "standard-webhooks" (https://www.standardwebhooks.com) */
    HR_SIGN_HMAC_SHA256        /* "hmac-sha256": the legacy one-header HMAC of the body */
} hr_sign_scheme_t;

typedef enum { HR_SIGN_HEX = 0, HR_SIGN_BASE64 } hr_sign_encoding_t;

/* A secret: its key bytes. */
typedef struct {
    unsigned char *key;
    size_t len;
} hr_sign_key_t;

/* How to sign (a target's sign) or verify (an endpoint's verify). */
typedef struct {
    hr_sign_scheme_t scheme;
    hr_sign_key_t *keys; /* standard-webhooks: one per secret, in order; hmac-sha256: one */
    size_t nkeys;
    char *header;                /* hmac-sha256: the header's name */
    hr_sign_encoding_t encoding; /* hmac-sha256: of the MAC */
    char *prefix;                /* hmac-sha256: written before it ("sha256="), "" for none */
    uint32_t tolerance_s;        /* verify: how far webhook-timestamp may be from now */
} hr_sign_conf_t;

/* The scheme called name ("standard-webhooks", "hmac-sha256"), or HR_SIGN_NONE. */
hr_sign_scheme_t hr_sign_scheme_of(const char *name);
/* Decode a Standard Webhooks secret "whsec_<base64>" into a new key (appended to c->keys).
 * Returns 0, or -1 with the reason in err (never the secret). */
int hr_sign_add_whsec(hr_sign_conf_t *c, const char *secret, char *err, size_t errlen);
/* Append a key of n raw bytes (an hmac-sha256 secret as given). */
void hr_sign_add_key(hr_sign_conf_t *c, const void *key, size_t n);
/* dst = a deep copy of src (NULL or HR_SIGN_NONE: not signed); dst's old contents freed. */
void hr_sign_conf_copy(hr_sign_conf_t *dst, const hr_sign_conf_t *src);
/* Wipe and free what c owns and zero it (c itself is the caller's). */
void hr_sign_conf_clear(hr_sign_conf_t *c);

/* The headers of one signed request: the request's own (borrowed) without any of the names
 * the scheme sets, then the signature headers (owned). */
typedef struct {
    const hr_header_t *headers; /* send these (unsigned: the request's own array, no copy) */
    hr_header_t *made;          /* the array made for a signed request, or NULL */
    size_t nheaders;
    char *owned[3]; /* the values made here */
    size_t nowned;
} hr_signed_headers_t;

/* The headers to send for a request with headers h (n of them) and body, signed as c says
 * (NULL or HR_SIGN_NONE: h as it is) for event id at unix time now_s. Free with
 * hr_signed_headers_free; out borrows h's strings. */
void hr_sign_request(const hr_sign_conf_t *c, const char *id, uint64_t now_s, const hr_header_t *h,
                     size_t n, const char *body, size_t len, hr_signed_headers_t *out);
void hr_signed_headers_free(hr_signed_headers_t *out);

/* The outcome of verifying a signed request. */
typedef enum {
    HR_VERIFY_OK = 0,
    HR_VERIFY_MISSING, /* webhook-id, webhook-timestamp or webhook-signature is absent */
    HR_VERIFY_STALE,   /* the timestamp is more than tolerance_s from now */
    HR_VERIFY_BAD      /* the timestamp is not a number, or no v1 signature matches a secret */
} hr_verify_t;

/* What a failed verification is called in a reply or a log line: "missing", "stale", "bad". */
const char *hr_verify_name(hr_verify_t v);
/* The checks that need no body: every header there (NULL: absent), the timestamp a number of
 * seconds within c->tolerance_s of now_s, either way. */
hr_verify_t hr_sign_verify_headers(const hr_sign_conf_t *c, const char *id, const char *ts,
                                   const char *sig, uint64_t now_s);
/* The whole Standard Webhooks check of a request: hr_sign_verify_headers, then every v1
 * signature of sig against every secret's, each compared in constant time (the time does not
 * depend on which matched or how much of one did). */
hr_verify_t hr_sign_verify(const hr_sign_conf_t *c, const char *id, const char *ts, const char *sig,
                           const char *body, size_t len, uint64_t now_s);

#endif
