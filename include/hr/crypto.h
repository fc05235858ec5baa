/* Crypto and encodings (src/crypto.c): SHA-256 and HMAC-SHA256 through OpenSSL 3's EVP
 * interface (libcrypto, no deprecated calls), and base64 (RFC 4648 section 4, and the URL-safe
 * alphabet of section 5) and hex (base16, section 8) both ways, strictly: a decoder refuses
 * what an encoder would not have written, with a message saying why and where.
 *
 * Constant-time comparison is hr_consttime_eq (hr/common.h). Encoders and decoders write into
 * the caller's memory (no NUL is added), so a Lua binding can build its results in memory the
 * Lua state counts. No global state: callable from any thread. */
#ifndef HR_CRYPTO_H
#define HR_CRYPTO_H

#include <stdbool.h>
#include <stddef.h>

#define HR_SHA256_LEN 32 /* bytes of a SHA-256 digest and of an HMAC-SHA256 */

/* out = SHA-256(msg). */
void hr_sha256(const void *msg, size_t n, unsigned char out[HR_SHA256_LEN]);
/* out = HMAC-SHA256(key, msg) (RFC 2104; any key length, 0 included). */
void hr_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t n,
                    unsigned char out[HR_SHA256_LEN]);

/* base64 flavours. */
#define HR_B64_STD   0 /* A-Z a-z 0-9 + /, with '=' padding (RFC 4648 section 4) */
#define HR_B64_URL   1 /* A-Z a-z 0-9 - _ (section 5) */
#define HR_B64_NOPAD 2 /* encode: no '=' padding; decode: padding optional (needs HR_B64_URL) */

/* Characters hr_base64_encode writes for n bytes with flags. */
size_t hr_base64_encoded_len(size_t n, int flags);
/* Encode n bytes of in into out (hr_base64_encoded_len(n, flags) bytes). Returns that length. */
size_t hr_base64_encode(const void *in, size_t n, char *out, int flags);
/* Bytes that decoding n characters can give at most (room for out). */
size_t hr_base64_decoded_max(size_t n);
/* Decode n characters of in into out (hr_base64_decoded_max(n) bytes), strictly: only the
 * flavour's alphabet, no whitespace, a length that is a multiple of 4 with 0 to 2 '=' at the
 * end only (the URL flavour with HR_B64_NOPAD also takes it unpadded), and the unused bits of
 * the last character 0. Returns 0 and sets *outlen, or -1 with a message in err ("invalid
 * character '*' at offset 3", "bad padding", ...). */
int hr_base64_decode(const char *in, size_t n, unsigned char *out, size_t *outlen, int flags,
                     char *err, size_t errlen);

/* Encode n bytes as 2n lower-case hex digits into out. Returns 2n. */
size_t hr_hex_encode(const void *in, size_t n, char *out);
/* Decode n hex digits (either case) into out (n / 2 bytes). Returns 0 and sets *outlen, or -1
 * with a message in err (an odd number of digits, a character that is not one). */
int hr_hex_decode(const char *in, size_t n, unsigned char *out, size_t *outlen, char *err,
                  size_t errlen);

#endif
