/* Crypto and encodings: SHA-256 and HMAC-SHA256 through OpenSSL 3's EVP interface, base64
 * and hex both ways, strict decoders (see include/hr/crypto.h). */
#include "hr/crypto.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

/* The algorithms, fetched once from the default library context (kept for the process). */
static EVP_MD *sha256_md;
static EVP_MAC *hmac_mac;
static pthread_once_t fetch_once = PTHREAD_ONCE_INIT;

static void fetch_algorithms(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    hmac_mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!sha256_md || !hmac_mac) {
        fprintf(stderr, "fatal: libcrypto has no SHA256 or HMAC\n");
        abort();
    }
}

/* A libcrypto call that cannot fail but for memory: abort as hr_xmalloc does. */
static void must(int ok, const char *what)
{
    if (ok) return;
    fprintf(stderr, "fatal: %s failed\n", what);
    abort();
}

void hr_sha256(const void *msg, size_t n, unsigned char out[HR_SHA256_LEN])
{
    pthread_once(&fetch_once, fetch_algorithms);
    unsigned int len = 0;
    must(EVP_Digest(n ? msg : "", n, out, &len, sha256_md, NULL) && len == HR_SHA256_LEN,
         "EVP_Digest(SHA256)");
}

void hr_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                    unsigned char out[HR_SHA256_LEN])
{
    pthread_once(&fetch_once, fetch_algorithms);
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(hmac_mac);
    must(ctx != NULL, "EVP_MAC_CTX_new");
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    size_t len = 0;
    /* A NULL key would mean "the key set before": an empty one is passed as "". */
    must(EVP_MAC_init(ctx, keylen ? key : (const void *)"", keylen, params) &&
             EVP_MAC_update(ctx, n ? msg : "", n) && EVP_MAC_final(ctx, out, &len, HR_SHA256_LEN) &&
             len == HR_SHA256_LEN,
         "HMAC-SHA256");
    EVP_MAC_CTX_free(ctx);
}

/* ---------------------------------------------------------------- base64 */

static const char B64_STD[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64_URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t hr_base64_encoded_len(size_t n, int flags)
{
    if (!(flags & HR_B64_NOPAD)) return (n + 2) / 3 * 4;
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

size_t hr_base64_encode(const void *in, size_t n, char *out, int flags)
{
    const unsigned char *p = in;
    const char *abc = flags & HR_B64_URL ? B64_URL : B64_STD;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = abc[(v >> 6) & 63];
        out[o++] = abc[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        out[o++] = abc[v >> 18];
        out[o++] = abc[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = abc[(v >> 6) & 63];
        if (!(flags & HR_B64_NOPAD)) {
            if (i + 1 >= n) out[o++] = '=';
            out[o++] = '=';
        }
    }
    return o;
}

size_t hr_base64_decoded_max(size_t n)
{
    return (n + 3) / 4 * 3;
}

/* The 6-bit value of c in the flavour, or -1. */
static int b64_value(unsigned char c, bool url)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == (url ? '-' : '+')) return 62;
    if (c == (url ? '_' : '/')) return 63;
    return -1;
}

/* Describe the byte c for an error message: 'x' when printable, else 0xNN. */
static void describe(unsigned char c, char out[8])
{
    if (c > ' ' && c < 0x7f && c != '\'')
        snprintf(out, 8, "'%c'", c);
    else
        snprintf(out, 8, "0x%02X", c);
}

int hr_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outlen, int flags,
                     char *err, size_t errlen)
{
    bool url = flags & HR_B64_URL, optional = url && (flags & HR_B64_NOPAD);
    size_t pad = 0;
    while (pad < n && in[n - 1 - pad] == '=')
        pad++;
    size_t data = n - pad; /* characters before the padding */
    if (pad > 2 || (pad && n % 4)) {
        snprintf(err, errlen, "bad padding: %zu '=' after %zu characters", pad, data);
        return -1;
    }
    if (!pad && n % 4 && (!optional || n % 4 == 1)) {
        snprintf(err, errlen, "bad length: %zu characters (%s)", n,
                 optional ? "4k, 4k+2 or 4k+3 without padding"
                          : "a multiple of 4, with '=' padding");
        return -1;
    }
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < data; i++) {
        int v = b64_value((unsigned char)in[i], url);
        if (v < 0) {
            char c[8];
            describe((unsigned char)in[i], c);
            snprintf(err, errlen, "invalid character %s at offset %zu%s", c, i,
                     in[i] == '=' ? " (padding only at the end)" : "");
            return -1;
        }
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) {
        snprintf(err, errlen, "bad padding: the unused bits of the last character are not 0");
        return -1;
    }
    *outlen = o;
    return 0;
}

/* ---------------------------------------------------------------- hex */

size_t hr_hex_encode(const void *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *p = in;
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    return 2 * n;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int hr_hex_decode(const char *in, size_t n, unsigned char *out, size_t *outlen, char *err,
                  size_t errlen)
{
    if (n % 2) {
        snprintf(err, errlen, "odd number of hex digits (%zu)", n);
        return -1;
    }
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_value((unsigned char)in[i]), lo = hex_value((unsigned char)in[i + 1]);
        if (hi < 0 || lo < 0) {
            size_t at = hi < 0 ? i : i + 1;
            char c[8];
            describe((unsigned char)in[at], c);
            snprintf(err, errlen, "invalid hex digit %s at offset %zu", c, at);
            return -1;
        }
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    *outlen = n / 2;
    return 0;
}
