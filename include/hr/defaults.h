/* Defaults: every default value of the config and of the delivery policy, each written once
 * (src/defaults.c). The HR_DEF_* constants are what the code uses (config.c fills an
 * hr_config_t with them, target.c a policy whose values were left 0); hr_defaults[] lists
 * each config key that has a default with that value as text, in the form the README's
 * config reference shows it (tests/unit/test_defaults.c holds the two together).
 *
 * Numbers are plain decimal literals without suffixes, so that the text in hr_defaults[] is
 * made from the same token (HR_DEF_TEXT) and no value is written twice. */
#ifndef HR_DEFAULTS_H
#define HR_DEFAULTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The text of a macro's value: HR_DEF_TEXT(HR_DEF_WORKERS) is "1". */
#define HR_DEF_TEXT(...)  HR_DEF_TEXT_(__VA_ARGS__)
#define HR_DEF_TEXT_(...) #__VA_ARGS__

/* ---- top level */
#define HR_DEF_LISTEN            "127.0.0.1:8080"
#define HR_DEF_INSECURE_NO_AUTH  false
#define HR_DEF_STORE_KEY         "storeId"
#define HR_DEF_DEAD_LETTERS      "var/dead-letters.jsonl" /* against the config's folder */
#define HR_DEF_SHUTDOWN_GRACE_MS 10000
#define HR_DEF_WORKERS           0 /* "auto": one front loop per CPU */
#define HR_DEF_LOG_LEVEL         "info"
#define HR_DEF_LOG_FORMAT        "text"
/* metrics */
#define HR_DEF_METRICS_STORE_LABELS false
/* the spool */
#define HR_DEF_SPOOL_DIR              "var/spool" /* against the config's folder */
#define HR_DEF_FSYNC                  "always"
#define HR_DEF_FSYNC_INTERVAL_MS      1000
#define HR_DEF_MAX_SPOOL_BYTES        1073741824 /* 1 GiB */
#define HR_DEF_OUTBOX_KIND            "spool"
#define HR_DEF_OUTBOX_PREFIX          "hookrouter"
#define HR_DEF_OUTBOX_CLAIM_IDLE_MS   30000
#define HR_DEF_OUTBOX_WAIT_REPLICAS   0
#define HR_DEF_OUTBOX_WAIT_TIMEOUT_MS 100

/* ---- endpoints[path] */
#define HR_DEF_REPLY_TIMEOUT_MS 10000

/* ---- limits */
#define HR_DEF_BODY_BYTES         1048576   /* 1 MiB */
#define HR_DEF_HEADER_BYTES       16384     /* 16 KiB */
#define HR_DEF_RULE_INSTRUCTIONS  1000000   /* VM instructions per event */
#define HR_DEF_RULE_MEMORY_BYTES  67108864  /* 64 MiB */
#define HR_DEF_STATE_MEMORY_BYTES 268435456 /* 256 MiB */
#define HR_DEF_ACTIONS_PER_EVENT  100
#define HR_DEF_IDLE_TIMEOUT_MS    60000
#define HR_DEF_REQUEST_TIMEOUT_MS 30000
/* limits.max_connections: 0 in the config, derived from RLIMIT_NOFILE at start */
#define HR_DEF_MAX_CONNECTIONS 0

/* ---- targets.<name> (and the outbox's policy for a target the config does not name) */
#define HR_DEF_TARGET_TIMEOUT_MS       5000
#define HR_DEF_TARGET_MAX_ATTEMPTS     8
#define HR_DEF_TARGET_RETRY_MS         0, 5000, 300000, 1800000, 7200000, 18000000, 36000000, 36000000
#define HR_DEF_TARGET_MAX_AGE_S        0 /* none */
#define HR_DEF_TARGET_CONCURRENCY      64
#define HR_DEF_TARGET_RATE             0 /* none */
#define HR_DEF_TARGET_ORDERED          false
#define HR_DEF_TARGET_CIRCUIT_FAILURES 5
#define HR_DEF_TARGET_CIRCUIT_PROBE_MS 5000
#define HR_DEF_TARGET_TLS_VERIFY       true

/* ---- targets.<name>.sign (scheme "hmac-sha256") and endpoints[path].verify */
#define HR_DEF_SIGN_HEADER        "X-Signature"
#define HR_DEF_SIGN_ENCODING      "hex"
#define HR_DEF_VERIFY_TOLERANCE_S 300

/* Write actions: their attempts before the dead letter (not a config key; as a target's
 * max_attempts); their schedule is a target's without retry_ms. */
#define HR_DEF_WRITE_ATTEMPTS HR_DEF_TARGET_MAX_ATTEMPTS

/* ---- files.<name> */
#define HR_DEF_FILE_MODE 0600 /* permissions of a file the router creates */

/* ---- delivery (legacy) */
#define HR_DEF_RETRY_BASE_MS        500 /* only used once one of the two is given */
#define HR_DEF_RETRY_MAX_MS         60000
#define HR_DEF_MAX_CONNS_PER_TARGET 64 /* delivery.max_connections */

/* The default schedule (HR_DEF_TARGET_RETRY_MS) as an array. */
extern const uint64_t hr_def_retry_ms[];
extern const size_t hr_def_nretry;

/* One config key with a default. */
typedef struct {
    const char *key;  /* as the README names it: "targets.<name>.timeout_ms" */
    const char *text; /* its default as the README shows it: "5000", "\"info\"", "derived" */
} hr_default_t;

/* Every config key that has a default, in README order. */
extern const hr_default_t hr_defaults[];
extern const size_t hr_ndefaults;

#endif
