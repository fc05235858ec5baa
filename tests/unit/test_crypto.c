/* Unit test for src/crypto.c: HMAC-SHA256 against RFC 4231 (cases 1 to 7, the truncated one
 * included), SHA-256 against FIPS 180-2's examples, base64, base64url and base16 against
 * RFC 4648 section 10, and the strict decoders refusing bad input. */
#include "hr/crypto.h"

#include "check.h"
#include "hr/common.h"

/* Lower-case hex of n bytes, in a static buffer (one at a time). */
static const char *hex(const unsigned char *p, size_t n)
{
    static char out[256];
    out[hr_hex_encode(p, n, out)] = '\0';
    return out;
}

static void test_hmac_rfc4231(void)
{
    unsigned char k6[131];
    memset(k6, 0xaa, sizeof k6);
    unsigned char k4[25];
    for (int i = 0; i < 25; i++)
        k4[i] = (unsigned char)(i + 1);
    unsigned char dd[50], cd[50];
    memset(dd, 0xdd, sizeof dd);
    memset(cd, 0xcd, sizeof cd);
    const struct {
        const char *key;
        size_t keylen;
        const char *msg;
        size_t msglen;
        size_t outlen; /* case 5 is truncated to 128 bits */
        const char *want;
    } cases[] = {
        {"\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b", 20,
         "Hi There", 8, 32, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", 4, "what do ya want for nothing?", 28, 32,
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {(const char *)k6, 20, (const char *)dd, 50, 32,
         "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
        {(const char *)k4, 25, (const char *)cd, 50, 32,
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
        {"\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c\x0c", 20,
         "Test With Truncation", 20, 16, "a3b6167473100ee06e0c796c2955552b"},
        {(const char *)k6, 131, "Test Using Larger Than Block-Size Key - Hash Key First", 54, 32,
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
        {(const char *)k6, 131,
         "This is a test using a larger than block-size key and a larger than block-size data. "
         "The key needs to be hashed before being used by the HMAC algorithm.",
         152, 32, "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(cases); i++) {
        unsigned char mac[HR_SHA256_LEN];
        hr_hmac_sha256(cases[i].key, cases[i].keylen, cases[i].msg, cases[i].msglen, mac);
        if (strcmp(hex(mac, cases[i].outlen), cases[i].want) != 0)
            fprintf(stderr, "  RFC 4231 test case %zu\n", i + 1);
        CHECK_STR_EQ(hex(mac, cases[i].outlen), cases[i].want);
    }
    /* An empty key and message are a key and a message like any other. */
    unsigned char mac[HR_SHA256_LEN];
    hr_hmac_sha256("", 0, "", 0, mac);
    CHECK_STR_EQ(hex(mac, 32), "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad");
}

static void test_sha256(void)
{
    unsigned char d[HR_SHA256_LEN];
    hr_sha256("abc", 3, d);
    CHECK_STR_EQ(hex(d, 32), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    hr_sha256("", 0, d);
    CHECK_STR_EQ(hex(d, 32), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hr_sha256(m, strlen(m), d);
    CHECK_STR_EQ(hex(d, 32), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* Encode plain with flags and compare with want, then decode want back to plain. */
static void b64_both_ways(const char *plain, const char *want, int flags)
{
    size_t n = strlen(plain);
    char enc[64];
    CHECK_INT_EQ(hr_base64_encoded_len(n, flags), strlen(want));
    size_t len = hr_base64_encode(plain, n, enc, flags);
    enc[len] = '\0';
    CHECK_STR_EQ(enc, want);
    unsigned char dec[64];
    size_t dlen = 99;
    char err[128] = "";
    CHECK_INT_EQ(hr_base64_decode(want, strlen(want), dec, &dlen, flags, err, sizeof err), 0);
    CHECK_STR_EQ(err, "");
    CHECK_INT_EQ(dlen, n);
    CHECK(dlen <= hr_base64_decoded_max(strlen(want)));
    CHECK(dlen == n && memcmp(dec, plain, n) == 0);
}

static void test_base64_rfc4648(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const b64[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    static const char *const unpadded[] = {"",       "Zg",      "Zm8",     "Zm9v",
                                           "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(plain); i++) {
        b64_both_ways(plain[i], b64[i], HR_B64_STD);
        b64_both_ways(plain[i], b64[i], HR_B64_URL); /* the same text: no 62 or 63 in them */
        b64_both_ways(plain[i], unpadded[i], HR_B64_URL | HR_B64_NOPAD);
    }
    /* Where the alphabets differ: values 62 and 63. */
    b64_both_ways("\xfb\xff", "+/8=", HR_B64_STD);
    b64_both_ways("\xfb\xff", "-_8=", HR_B64_URL);
    b64_both_ways("\xfb\xff", "-_8", HR_B64_URL | HR_B64_NOPAD);
    /* The unpadded URL decoder takes padded text too. */
    unsigned char dec[8];
    size_t dlen = 0;
    char err[128];
    CHECK_INT_EQ(
        hr_base64_decode("Zm8=", 4, dec, &dlen, HR_B64_URL | HR_B64_NOPAD, err, sizeof err), 0);
    CHECK(dlen == 2 && memcmp(dec, "fo", 2) == 0);
}

static void test_base16_rfc4648(void)
{
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const b16[] = {"",         "66",         "666F",        "666F6F",
                                      "666F6F62", "666F6F6261", "666F6F626172"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(plain); i++) {
        char enc[32];
        size_t n = hr_hex_encode(plain[i], strlen(plain[i]), enc);
        CHECK_INT_EQ(n, strlen(b16[i]));
        CHECK(strncasecmp(enc, b16[i], n) == 0);
        for (size_t k = 0; k < n; k++) /* lower case */
            CHECK(!(enc[k] >= 'A' && enc[k] <= 'F'));
        unsigned char dec[16];
        size_t dlen = 99;
        char err[128];
        CHECK_INT_EQ(hr_hex_decode(b16[i], strlen(b16[i]), dec, &dlen, err, sizeof err), 0);
        CHECK(dlen == strlen(plain[i]) && memcmp(dec, plain[i], dlen) == 0);
    }
    unsigned char dec[4];
    size_t dlen;
    char err[128];
    CHECK_INT_EQ(hr_hex_decode("aBcD", 4, dec, &dlen, err, sizeof err), 0); /* mixed case */
    CHECK(dlen == 2 && dec[0] == 0xab && dec[1] == 0xcd);
}

/* Decoding in with flags (or hex when flags < 0) fails with a message containing want. */
static void refused(const char *in, int flags, const char *want)
{
    unsigned char out[64];
    size_t outlen = 0;
    char err[128] = "";
    int rc = flags < 0 ? hr_hex_decode(in, strlen(in), out, &outlen, err, sizeof err)
                       : hr_base64_decode(in, strlen(in), out, &outlen, flags, err, sizeof err);
    CHECK_INT_EQ(rc, -1);
    if (!strstr(err, want)) fprintf(stderr, "  '%s': error '%s', want '%s'\n", in, err, want);
    CHECK(strstr(err, want) != NULL);
}

static void test_bad_input(void)
{
    refused("abc", -1, "odd number of hex digits (3)");
    refused("0g", -1, "invalid hex digit 'g' at offset 1");
    refused("x0", -1, "invalid hex digit 'x' at offset 0");
    refused("0 ", -1, "invalid hex digit 0x20 at offset 1");
    refused("Zg=", HR_B64_STD, "bad padding");
    refused("Zg", HR_B64_STD, "bad length: 2 characters");
    refused("Zg", HR_B64_URL, "bad length"); /* the URL flavour wants padding unless NOPAD */
    refused("Z", HR_B64_URL | HR_B64_NOPAD, "bad length: 1 characters");
    refused("Zg===", HR_B64_STD, "bad padding: 3 '='");
    refused("Z===", HR_B64_STD, "bad padding");
    refused("Zm=v", HR_B64_STD, "invalid character '=' at offset 2 (padding only at the end)");
    refused("Zm9*", HR_B64_STD, "invalid character '*' at offset 3");
    refused("Zm9v\n", HR_B64_STD, "bad length");
    refused("Zm9\nYmFy", HR_B64_STD, "invalid character 0x0A at offset 3");
    refused("-_8=", HR_B64_STD, "invalid character '-' at offset 0");
    refused("+/8=", HR_B64_URL, "invalid character '+' at offset 0");
    refused("Zh==", HR_B64_STD, "unused bits"); /* "f" is Zg==: Zh== is not canonical */
    refused("Zm9=", HR_B64_STD, "unused bits");
}

int main(void)
{
    test_hmac_rfc4231();
    test_sha256();
    test_base64_rfc4648();
    test_base16_rfc4648();
    test_bad_input();
    return CHECK_DONE("test_crypto");
}
