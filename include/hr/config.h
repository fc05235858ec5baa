/* The configuration: a Lua file that returns a table (src/config.c). Loading runs the file in
 * a small Lua state of its own (base, string, table, math and os.getenv), then copies every
 * value into plain C structs and closes that state, so the rest of the program never touches
 * the config's Lua (a `tls` section also becomes a TLS context: its files are read as it
 * loads). Every problem is collected, not just the first, each naming the key:
 * "examples/hookrouter.lua: targets.pos.url: expected a string, got number". */
#ifndef HR_CONFIG_H
#define HR_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "hr/common.h"
#include "hr/defaults.h"
#include "hr/tls.h"
#include "hr/sign.h"

/* A fixed HTTP reply: an endpoint's fallback, or what a rule set with respond(). */
typedef struct {
    int status;           /* HTTP status, 100..599 */
    hr_header_t *headers; /* extra headers, as given */
    size_t nheaders;
    char *body; /* JSON text (a table was given) or the string as given; NULL: no body */
    size_t body_len;
    bool body_is_json; /* body came from a table: Content-Type application/json */
} hr_reply_t;

/* Free a reply and what it owns. Accepts NULL. */
void hr_reply_free(hr_reply_t *r);
/* A deep copy of r. Cannot fail (aborts on out-of-memory). */
hr_reply_t *hr_reply_dup(const hr_reply_t *r);

#define HR_REPLY_TIMEOUT_DEFAULT_MS HR_DEF_REPLY_TIMEOUT_MS /* see hr/defaults.h */

typedef struct {
    char *path;                /* exact request path, e.g. "/aifi/checkout-zone/left" */
    char *event;               /* event type, e.g. "checkout-zone.left" */
    uint32_t reply_timeout_ms; /* a rule waiting in request() is ended this long after the
                                  request arrived */
    hr_reply_t *fallback;      /* sent at the deadline or when the rule fails; NULL: none */
    hr_sign_conf_t *verify;    /* the signature a request must carry (standard-webhooks, with
                                  tolerance_s); NULL: none, the bearer token is asked */
} hr_endpoint_conf_t;

typedef struct {
    char *name;           /* key in targets */
    char *url;            /* http://host:port/base */
    hr_header_t *headers; /* the target's own headers (e.g. an API key) */
    size_t nheaders;
    uint32_t timeout_ms;   /* per attempt */
    uint32_t max_attempts; /* attempts before the dead letter */
    /* Durable delivery (issue 4) */
    uint64_t *retry_ms;        /* waits before attempts 1, 2, ...; the last repeats (never empty) */
    size_t nretry;             /* entries in retry_ms */
    uint64_t max_age_s;        /* give up this long after acceptance; 0: no limit */
    uint32_t concurrency;      /* requests in flight */
    double rate;               /* requests per second; 0: no limit */
    bool ordered;              /* one store's events in arrival order */
    uint32_t circuit_failures; /* consecutive failures that open the circuit */
    uint64_t circuit_probe_ms; /* probe interval while the circuit is open */
    /* tls = { ... } (https targets only); the paths resolved against the config folder */
    char *tls_ca_file;     /* trust only these CAs; NULL: the system trust store */
    char *tls_client_cert; /* client certificate (mTLS), or NULL */
    char *tls_client_key;  /* its key; NULL: in tls_client_cert */
    char *tls_server_name; /* SNI and the name checked, instead of the URL's host */
    bool tls_verify;       /* check the server's certificate and name (default true) */
    hr_tls_ctx_t *tls;     /* the context made from the above at load (the config's reference;
                              NULL without a tls table: the HTTP client's default) */
    char *proxy; /* "http://host:port": the target's proxy, else the environment's (HTTPS_PROXY
                    or HTTP_PROXY unless NO_PROXY names the host); NULL: direct */
    hr_sign_conf_t *sign; /* how each attempt is signed (hr/sign.h); NULL: not signed */
} hr_target_conf_t;

typedef struct {
    char *name;    /* key in files */
    char *path;    /* resolved against the config folder */
    unsigned mode; /* HR_FILE_MODE_SET | permission bits when files.<name>.mode is given, else 0 */
} hr_file_conf_t;

#define HR_FILE_MODE_SET 0x10000u /* marks hr_file_conf_t.mode as given ("0000" is a mode) */

typedef struct {
    size_t body_bytes;           /* larger bodies get 413 */
    size_t header_bytes;         /* larger header blocks get 431 */
    uint64_t rule_instructions;  /* VM instructions per event */
    size_t rule_memory_bytes;    /* what one slice of a rule run may add */
    size_t state_memory_bytes;   /* what a rule state may hold between events */
    size_t actions_per_event;    /* forward() and write() calls per event */
    uint64_t idle_timeout_ms;    /* idle keep-alive connections are closed */
    uint64_t request_timeout_ms; /* a request must arrive whole within this */
    size_t max_connections;      /* inbound connections, all workers; 0 (default): derived from
                                    RLIMIT_NOFILE (hr_server_default_max_connections) */
} hr_limits_t;

/* The listener's TLS (top-level `tls`): paths resolved against the config folder; ctx is the
 * server context built from them while the config loads (so a config that loads is one whose
 * certificate and key load), one reference owned by the config. All NULL: plain HTTP. */
typedef struct {
    char *cert_file;      /* PEM chain, leaf first */
    char *key_file;       /* NULL: the key is in cert_file */
    char *client_ca_file; /* NULL: no client certificate asked for */
    hr_tls_ctx_t *ctx;
} hr_listen_tls_t;

/* Where the outbox keeps what was accepted (issue 15). */
typedef enum { HR_OUTBOX_SPOOL = 0, HR_OUTBOX_REDIS = 1 } hr_outbox_kind_t;

/* outbox = { kind = "spool" } (the default: spool_dir on this node's disk) or { kind = "redis",
 * url = "redis://[:password@]host:port/db", ... } (shared by several nodes: src/redis_outbox.c). */
typedef struct {
    hr_outbox_kind_t kind;    /* spool or redis */
    char *url;                /* as written, NULL for the spool */
    char *host;               /* redis: host of url */
    int port;                 /* redis: port of url (6379 if not given) */
    char *password;           /* redis: AUTH password, NULL: none */
    uint32_t db;              /* redis: SELECT db */
    char *prefix;             /* key prefix: <prefix>:t:<target>, <prefix>:delay, ... */
    uint64_t claim_idle_ms;   /* work a consumer held this long unacknowledged is claimed */
    uint32_t wait_replicas;   /* WAIT for this many replicas before the 200 (0: no WAIT) */
    uint64_t wait_timeout_ms; /* WAIT's timeout */
} hr_outbox_conf_t;

/* Every value not given in the file has its default from hr/defaults.h. */
typedef struct hr_config {
    char *file;        /* the config file as given */
    char *dir;         /* its folder: relative paths are resolved against it */
    char *listen;      /* "127.0.0.1:8080" as written */
    char *listen_host; /* "127.0.0.1", "::1" */
    int listen_port;
    hr_listen_tls_t tls; /* the listener speaks HTTPS only when tls.ctx is set */
    char **tokens;       /* accepted bearer tokens */
    size_t ntokens;
    bool insecure_no_auth; /* accept requests without a token (tests, local dev) */
    hr_endpoint_conf_t *endpoints;
    size_t nendpoints;
    char *store_key; /* dotted path into the body */
    char *rules_dir; /* resolved folder of default.lua and stores/ */
    hr_target_conf_t *targets;
    size_t ntargets;
    hr_file_conf_t *files;
    size_t nfiles;
    char *dead_letters; /* resolved path */
    hr_limits_t limits;
    uint64_t retry_base_ms; /* delivery.retry_base_ms (legacy) */
    uint64_t retry_max_ms;  /* delivery.retry_max_ms (legacy) */
    bool retry_legacy;      /* one of them was given: targets without retry_ms get the schedule
                               0, base, 2 base, 4 base, ... capped at max (16 attempts' worth) */
    uint32_t max_conns_per_target; /* delivery.max_connections */
    uint64_t *write_retry_ms;      /* write actions' schedule: as a target's without retry_ms */
    size_t nwrite_retry;           /* entries in write_retry_ms */
    uint64_t shutdown_grace_ms;    /* how long SIGTERM waits for deliveries */
    /* The spool (issue 4) */
    char *spool_dir;            /* resolved against the config folder */
    int fsync_mode;             /* hr_fsync_mode_t: 0 always, 1 interval, 2 never */
    uint64_t fsync_interval_ms; /* for "interval" */
    uint64_t max_spool_bytes;   /* new webhooks get 503 beyond this */
    hr_outbox_conf_t outbox;    /* spool (default) or redis */
    char *log_level;            /* "info" */
    char *log_format;           /* "text" or "json" */
    uint32_t workers;           /* front worker threads; 0: "auto", one per CPU */
    /* Metrics (issue 12) */
    char *metrics_token;       /* metrics.token: /metrics wants this bearer token; NULL: none */
    bool metrics_store_labels; /* metrics.store_labels: events_total gets a store label */
    char *admin_listen;        /* "127.0.0.1:9100": /metrics, /healthz, /readyz there only;
                                  NULL: on the webhook port */
    char *admin_host;          /* admin_listen's host, NULL without one */
    int admin_port;            /* its port */
} hr_config_t;

/* The largest accepted `workers`. */
#define HR_WORKERS_MAX 256

/* A list of error messages. */
typedef struct {
    char **msgs;
    size_t n;
} hr_errors_t;

void hr_errors_add(hr_errors_t *e, const char *fmt, ...) HR_PRINTF(2, 3);
void hr_errors_free(hr_errors_t *e);

/* Load and validate the config file at path. Returns the config, or NULL with at least one
 * message in errs. */
hr_config_t *hr_config_load(const char *path, hr_errors_t *errs);
/* Free a config. Accepts NULL. */
void hr_config_free(hr_config_t *c);

const hr_target_conf_t *hr_config_target(const hr_config_t *c, const char *name);
const hr_file_conf_t *hr_config_file(const hr_config_t *c, const char *name);
const hr_endpoint_conf_t *hr_config_endpoint(const hr_config_t *c, const char *path);

#endif
