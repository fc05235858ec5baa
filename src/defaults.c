/* Defaults: the one table of config defaults and the default retry schedule (see
 * include/hr/defaults.h). */
#include "hr/defaults.h"

#include "hr/common.h"

const uint64_t hr_def_retry_ms[] = {HR_DEF_TARGET_RETRY_MS};
const size_t hr_def_nretry = HR_ARRAY_SIZE(hr_def_retry_ms);

/* A string default as the README shows it, quoted. */
#define QUOTED(s) "\"" s "\""
/* A bool default as the README shows it (stdbool's false is 0 once expanded). */
#define BOOL_TEXT(b) ((b) ? "true" : "false")

const hr_default_t hr_defaults[] = {
    {"listen", QUOTED(HR_DEF_LISTEN)},
    {"insecure_no_auth", BOOL_TEXT(HR_DEF_INSECURE_NO_AUTH)},
    {"endpoints[path].reply_timeout_ms", HR_DEF_TEXT(HR_DEF_REPLY_TIMEOUT_MS)},
    {"endpoints[path].verify.tolerance_s", HR_DEF_TEXT(HR_DEF_VERIFY_TOLERANCE_S)},
    {"store_key", QUOTED(HR_DEF_STORE_KEY)},
    {"targets.<name>.headers", "{}"},
    {"targets.<name>.timeout_ms", HR_DEF_TEXT(HR_DEF_TARGET_TIMEOUT_MS)},
    {"targets.<name>.max_attempts", HR_DEF_TEXT(HR_DEF_TARGET_MAX_ATTEMPTS)},
    {"targets.<name>.retry_ms", "{ " HR_DEF_TEXT(HR_DEF_TARGET_RETRY_MS) " }"},
    {"targets.<name>.max_age_s", HR_DEF_TEXT(HR_DEF_TARGET_MAX_AGE_S)},
    {"targets.<name>.concurrency", HR_DEF_TEXT(HR_DEF_TARGET_CONCURRENCY)},
    {"targets.<name>.rate", HR_DEF_TEXT(HR_DEF_TARGET_RATE)},
    {"targets.<name>.ordered", BOOL_TEXT(HR_DEF_TARGET_ORDERED)},
    {"targets.<name>.circuit_failures", HR_DEF_TEXT(HR_DEF_TARGET_CIRCUIT_FAILURES)},
    {"targets.<name>.circuit_probe_ms", HR_DEF_TEXT(HR_DEF_TARGET_CIRCUIT_PROBE_MS)},
    {"targets.<name>.tls.verify", BOOL_TEXT(HR_DEF_TARGET_TLS_VERIFY)},
    {"targets.<name>.sign.header", QUOTED(HR_DEF_SIGN_HEADER)},
    {"targets.<name>.sign.encoding", QUOTED(HR_DEF_SIGN_ENCODING)},
    {"files.<name>.mode", QUOTED(HR_DEF_TEXT(HR_DEF_FILE_MODE))},
    {"dead_letters", QUOTED(HR_DEF_DEAD_LETTERS)},
    {"limits.body_bytes", HR_DEF_TEXT(HR_DEF_BODY_BYTES)},
    {"limits.header_bytes", HR_DEF_TEXT(HR_DEF_HEADER_BYTES)},
    {"limits.rule_instructions", HR_DEF_TEXT(HR_DEF_RULE_INSTRUCTIONS)},
    {"limits.rule_memory_bytes", HR_DEF_TEXT(HR_DEF_RULE_MEMORY_BYTES)},
    {"limits.state_memory_bytes", HR_DEF_TEXT(HR_DEF_STATE_MEMORY_BYTES)},
    {"limits.actions_per_event", HR_DEF_TEXT(HR_DEF_ACTIONS_PER_EVENT)},
    {"limits.idle_timeout_ms", HR_DEF_TEXT(HR_DEF_IDLE_TIMEOUT_MS)},
    {"limits.request_timeout_ms", HR_DEF_TEXT(HR_DEF_REQUEST_TIMEOUT_MS)},
    {"limits.max_connections", "derived"}, /* HR_DEF_MAX_CONNECTIONS: from RLIMIT_NOFILE */
    {"delivery.retry_base_ms", HR_DEF_TEXT(HR_DEF_RETRY_BASE_MS)},
    {"delivery.retry_max_ms", HR_DEF_TEXT(HR_DEF_RETRY_MAX_MS)},
    {"delivery.max_connections", HR_DEF_TEXT(HR_DEF_MAX_CONNS_PER_TARGET)},
    {"shutdown_grace_ms", HR_DEF_TEXT(HR_DEF_SHUTDOWN_GRACE_MS)},
    {"workers", QUOTED("auto")}, /* HR_DEF_WORKERS, 0 */
    {"spool_dir", QUOTED(HR_DEF_SPOOL_DIR)},
    {"fsync", QUOTED(HR_DEF_FSYNC)},
    {"fsync_interval_ms", HR_DEF_TEXT(HR_DEF_FSYNC_INTERVAL_MS)},
    {"max_spool_bytes", HR_DEF_TEXT(HR_DEF_MAX_SPOOL_BYTES)},
    {"outbox.kind", QUOTED(HR_DEF_OUTBOX_KIND)},
    {"outbox.prefix", QUOTED(HR_DEF_OUTBOX_PREFIX)},
    {"outbox.claim_idle_ms", HR_DEF_TEXT(HR_DEF_OUTBOX_CLAIM_IDLE_MS)},
    {"outbox.wait_replicas", HR_DEF_TEXT(HR_DEF_OUTBOX_WAIT_REPLICAS)},
    {"outbox.wait_timeout_ms", HR_DEF_TEXT(HR_DEF_OUTBOX_WAIT_TIMEOUT_MS)},
    {"log.level", QUOTED(HR_DEF_LOG_LEVEL)},
    {"log.format", QUOTED(HR_DEF_LOG_FORMAT)},
    {"metrics.store_labels", BOOL_TEXT(HR_DEF_METRICS_STORE_LABELS)},
};
const size_t hr_ndefaults = HR_ARRAY_SIZE(hr_defaults);
