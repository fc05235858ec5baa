/* Unit tests for src/config.c: a table of bad config files, each of which must fail with a
 * message naming the file, the key and what is wrong with it; then a good one, whose values
 * must arrive in hr_config_t as written. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "hr/config.h"

static char dir[64];
static char cfg_path[128];

/* Write the config file. */
static void write_config(const char *text)
{
    FILE *f = fopen(cfg_path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

/* The keys a config needs, then extra (more keys, or overrides: Lua takes the last). */
#define CFG(extra)                                                                                 \
    "return {\n"                                                                                   \
    "  tokens = { \"t\" },\n"                                                                      \
    "  endpoints = { [\"/hook\"] = \"thing.happened\" },\n"                                        \
    "  rules = \"rules\",\n" extra "\n}\n"

/* A config with one target "pos" whose extra keys are t. */
#define TARGET(t) CFG("  targets = { pos = { url = \"http://127.0.0.1:9000/hook\", " t " } },")

typedef struct {
    const char *name; /* what the case is about */
    const char *text; /* the config file */
    const char *key;  /* the message must start "<file>: <key>: "; NULL: any message */
    const char *what; /* and contain this */
} bad_case_t;

static const bad_case_t bad_cases[] = {
    /* Wrong types. */
    {"listen not a string", CFG("listen = 8080,"), "listen", "expected a string, got integer"},
    {"tokens not a table", CFG("tokens = \"t\","), "tokens", "expected a table, got string"},
    {"insecure_no_auth not a bool", CFG("insecure_no_auth = \"yes\","), "insecure_no_auth",
     "expected true or false, got string"},
    {"target url not a string", TARGET("url = 9000"), "targets.pos.url",
     "expected a string, got integer"},
    {"target not a table", CFG("targets = { pos = \"http://h/\" },"), "targets.pos",
     "expected a table, got string"},
    {"timeout_ms a fraction", TARGET("timeout_ms = 1.5"), "targets.pos.timeout_ms",
     "expected a whole number, got 1.5"},
    {"max_attempts a string", TARGET("max_attempts = \"8\""), "targets.pos.max_attempts",
     "expected a number, got string"},
    {"ordered not a bool", TARGET("ordered = 1"), "targets.pos.ordered",
     "expected true or false, got integer"},
    {"rate a string", TARGET("rate = \"fast\""), "targets.pos.rate",
     "expected a number, got string"},
    {"file not a table or string", CFG("files = { audit = 5 },"), "files.audit",
     "expected a table, got integer"},
    {"string with a NUL", CFG("store_key = \"a\\0b\","), "store_key", "must not contain NUL bytes"},
    /* Out of range. */
    {"timeout_ms zero", TARGET("timeout_ms = 0"), "targets.pos.timeout_ms",
     "must be between 1 and 3600000, got 0"},
    {"max_attempts negative", TARGET("max_attempts = -1"), "targets.pos.max_attempts",
     "must be between 1 and 1000, got -1"},
    {"rate negative", TARGET("rate = -1"), "targets.pos.rate", "must be between 0 and"},
    {"concurrency too big", TARGET("concurrency = 10001"), "targets.pos.concurrency",
     "must be between 1 and 10000, got 10001"},
    {"limit too small", CFG("limits = { body_bytes = 0 },"), "limits.body_bytes",
     "must be between 1 and"},
    {"fallback status",
     CFG("endpoints = { [\"/a\"] = { event = \"e\", fallback = { status = 700 } } },"),
     "endpoints[\"/a\"].fallback.status", "must be between 100 and 599, got 700"},
    {"workers zero", CFG("workers = 0,"), "workers", "must be between 1 and 256, got 0"},
    {"workers a word", CFG("workers = \"many\","), "workers",
     "expected an integer >= 1 or \"auto\", got \"many\""},
    /* The listener's tls: the key of the file that fails, paths from the config's folder. */
    {"tls not a table", CFG("tls = \"x.pem\","), "tls", "expected a table, got string"},
    {"tls without cert_file", CFG("tls = { key_file = \"k.pem\" },"), "tls.cert_file", "missing"},
    {"tls cert_file missing file", CFG("tls = { cert_file = \"no-such.pem\" },"), "tls.cert_file",
     "/no-such.pem: No such file or directory"},
    {"tls cert_file empty", CFG("tls = { cert_file = \"\" },"), "tls.cert_file",
     "must not be empty"},
    {"tls unknown key", CFG("tls = { cert_file = \"c.pem\", verify = false },"), "tls.verify",
     "unknown key (known: cert_file, key_file, client_ca_file)"},
    /* Unknown keys, at each level, with the known ones listed. */
    {"unknown top-level key", CFG("lisen = \"127.0.0.1:1\","), "lisen",
     "unknown key (known: listen, tokens,"},
    {"unknown target key", TARGET("urll = \"x\""), "targets.pos.urll",
     "unknown key (known: url, headers, timeout_ms,"},
    {"unknown limits key", CFG("limits = { body = 1 },"), "limits.body",
     "unknown key (known: body_bytes,"},
    {"unknown endpoint key", CFG("endpoints = { [\"/a\"] = { event = \"e\", timeout = 1 } },"),
     "endpoints[\"/a\"].timeout", "unknown key (known: event, reply_timeout_ms, fallback"},
    {"unknown log key", CFG("log = { lvl = \"info\" },"), "log.lvl",
     "unknown key (known: level, format)"},
    {"non-string top-level key", CFG("[1] = \"x\","), "(top level)",
     "keys must be strings, found a integer key"},
    /* Missing required keys. */
    {"no rules", "return { tokens = { \"t\" }, endpoints = { [\"/hook\"] = \"e\" } }", "rules",
     "missing: the folder of default.lua"},
    {"no endpoints", "return { tokens = { \"t\" }, rules = \"rules\" }", "endpoints",
     "missing: map request paths to event types"},
    {"no token", "return { endpoints = { [\"/hook\"] = \"e\" }, rules = \"rules\" }", "tokens",
     "no bearer token configured"},
    {"token from an unset variable",
     "return { tokens = { os.getenv(\"HR_TEST_UNSET_VARIABLE\") }, "
     "endpoints = { [\"/hook\"] = \"e\" }, rules = \"rules\" }",
     "tokens", "os.getenv() that returned nil"},
    {"empty token", CFG("tokens = { \"\" },"), "tokens[1]", "empty token"},
    {"target without url", CFG("targets = { pos = { timeout_ms = 100 } },"), "targets.pos.url",
     "missing (e.g. url = "},
    {"endpoint without event", CFG("endpoints = { [\"/a\"] = { reply_timeout_ms = 100 } },"),
     "endpoints[\"/a\"].event", "missing"},
    {"file without path", CFG("files = { audit = { mode = \"0600\" } },"), "files.audit.path",
     "missing"},
    {"no endpoint at all", CFG("endpoints = {},"), "endpoints", "no endpoint configured"},
    /* Bad endpoints and headers. */
    {"endpoint path without /", CFG("endpoints = { hook = \"e\" },"), "endpoints[\"hook\"]",
     "a path must start with '/'"},
    {"endpoint /healthz", CFG("endpoints = { [\"/healthz\"] = \"e\" },"), "endpoints[\"/healthz\"]",
     "/healthz is reserved"},
    {"empty event type", CFG("endpoints = { [\"/a\"] = \"\" },"), "endpoints[\"/a\"]",
     "the event type must not be empty"},
    {"header name with a space", TARGET("headers = { [\"X Key\"] = \"v\" }"), "targets.pos.headers",
     "invalid header X Key"},
    {"header value with CRLF", TARGET("headers = { [\"X-Key\"] = \"v\\r\\nX-Evil: 1\" }"),
     "targets.pos.headers", "invalid header X-Key"},
    /* Bad URLs. */
    {"https url with a bad port", TARGET("url = \"https://pos.example:0/hook\""), "targets.pos.url",
     "invalid URL: https://pos.example:0/hook"},
    {"ftp url", TARGET("url = \"ftp://pos.example/hook\""), "targets.pos.url",
     "URL must start with http://"},
    {"url with a bad port", TARGET("url = \"http://pos.example:0/\""), "targets.pos.url",
     "invalid URL: http://pos.example:0/"},
    {"url with credentials", TARGET("url = \"http://user:pw@pos.example/\""), "targets.pos.url",
     "userinfo"},
    /* Bad listen addresses. */
    {"listen without port", CFG("listen = \"localhost\","), "listen",
     "expected \"host:port\" or \"[ipv6]:port\", got \"localhost\""},
    {"listen port too big", CFG("listen = \"127.0.0.1:65536\","), "listen",
     "got \"127.0.0.1:65536\""},
    {"listen port not a number", CFG("listen = \"127.0.0.1:http\","), "listen",
     "got \"127.0.0.1:http\""},
    {"listen ipv6 without colon", CFG("listen = \"[::1]8080\","), "listen", "got \"[::1]8080\""},
    {"listen ipv6 unclosed", CFG("listen = \"[::1:8080\","), "listen", "got \"[::1:8080\""},
    /* Bad retry_ms lists. */
    {"retry_ms empty", TARGET("retry_ms = {}"), "targets.pos.retry_ms",
     "expected a list of 1 to 64 waits in ms"},
    {"retry_ms not a list", TARGET("retry_ms = { first = 0 }"), "targets.pos.retry_ms",
     "expected a list of 1 to 64 waits in ms"},
    {"retry_ms with a hole", TARGET("retry_ms = { 0, nil, 5 }"), "targets.pos.retry_ms",
     "expected a list of 1 to 64 waits in ms"},
    {"retry_ms a number", TARGET("retry_ms = 500"), "targets.pos.retry_ms",
     "expected a table, got integer"},
    {"retry_ms negative entry", TARGET("retry_ms = { 0, -5 }"), "targets.pos.retry_ms[2]",
     "must be between 0 and 604800000, got -5"},
    {"retry_ms fraction", TARGET("retry_ms = { 0, 1.5 }"), "targets.pos.retry_ms[2]",
     "expected a whole number, got 1.5"},
    {"retry_ms string entry", TARGET("retry_ms = { \"1s\" }"), "targets.pos.retry_ms[1]",
     "expected a number, got string"},
    {"retry_ms over a week", TARGET("retry_ms = { 604800001 }"), "targets.pos.retry_ms[1]",
     "must be between 0 and 604800000"},
    {"retry_ms too long",
     TARGET("retry_ms = (function() local t = {} for i = 1, 65 do t[i] = 0 end return t end)()"),
     "targets.pos.retry_ms", "expected a list of 1 to 64 waits in ms"},
    /* Bad enumerations. */
    {"fsync mode", CFG("fsync = \"sometimes\","), "fsync",
     "expected \"always\", \"interval\" or \"never\", got \"sometimes\""},
    {"log level", CFG("log = { level = \"loud\" },"), "log.level",
     "expected debug, info, warn or error, got \"loud\""},
    {"log format", CFG("log = { format = \"logfmt\" },"), "log.format",
     "expected text or json, got \"logfmt\""},
    {"log format type", CFG("log = { format = true },"), "log.format",
     "expected a string, got boolean"},
    {"file mode not octal", CFG("files = { audit = { path = \"a.jsonl\", mode = \"0999\" } },"),
     "files.audit.mode", "expected an octal mode between \"0000\" and \"0777\", got \"0999\""},
    {"file mode too big", CFG("files = { audit = { path = \"a.jsonl\", mode = 512 } },"),
     "files.audit.mode", "must be between 0 and 511, got 512"},
    /* Signatures (issue 11): each error names its key, none quotes a secret. */
    {"sign without scheme", TARGET("sign = { secrets = { \"whsec_AAAA\" } }"),
     "targets.pos.sign.scheme", "missing: \"standard-webhooks\" or \"hmac-sha256\""},
    {"sign unknown scheme", TARGET("sign = { scheme = \"rsa\" }"), "targets.pos.sign.scheme",
     "expected \"standard-webhooks\" or \"hmac-sha256\", got \"rsa\""},
    {"sign not a table", TARGET("sign = \"hmac-sha256\""), "targets.pos.sign",
     "expected a table, got string"},
    {"whsec without prefix",
     TARGET("sign = { scheme = \"standard-webhooks\", secrets = { \"whsec_QUJD\", \"QUJD\" } }"),
     "targets.pos.sign.secrets[2]", "expected whsec_<base64>"},
    {"whsec not base64",
     TARGET("sign = { scheme = \"standard-webhooks\", secrets = { \"whsec_QU*D\" } }"),
     "targets.pos.sign.secrets[1]", "expected whsec_<base64>: the part after whsec_ is not base64"},
    {"whsec from an unset variable",
     TARGET("sign = { scheme = \"standard-webhooks\", "
            "secrets = { os.getenv(\"HR_TEST_UNSET_VARIABLE\") } }"),
     "targets.pos.sign.secrets", "no secret"},
    {"standard-webhooks without secrets", TARGET("sign = { scheme = \"standard-webhooks\" }"),
     "targets.pos.sign.secrets", "missing"},
    {"standard-webhooks with a legacy key",
     TARGET("sign = { scheme = \"standard-webhooks\", secrets = { \"whsec_QUJD\" }, "
            "secret = \"x\" }"),
     "targets.pos.sign.secret", "unknown key (known: scheme, secrets)"},
    {"hmac without secret", TARGET("sign = { scheme = \"hmac-sha256\" }"),
     "targets.pos.sign.secret", "missing"},
    {"hmac empty secret", TARGET("sign = { scheme = \"hmac-sha256\", secret = \"\" }"),
     "targets.pos.sign.secret", "must not be empty"},
    {"hmac bad encoding",
     TARGET("sign = { scheme = \"hmac-sha256\", secret = \"s\", encoding = \"b32\" }"),
     "targets.pos.sign.encoding", "expected \"hex\" or \"base64\", got \"b32\""},
    {"hmac bad header",
     TARGET("sign = { scheme = \"hmac-sha256\", secret = \"s\", header = \"X Sig\" }"),
     "targets.pos.sign.header", "invalid header name X Sig"},
    {"hmac prefix with CRLF",
     TARGET("sign = { scheme = \"hmac-sha256\", secret = \"s\", prefix = \"a\\r\\nB: c\" }"),
     "targets.pos.sign.prefix", "must not contain a line break"},
    {"verify hmac",
     CFG("endpoints = { [\"/a\"] = { event = \"e\", verify = { scheme = "
         "\"hmac-sha256\", secret = \"s\" } } },"),
     "endpoints[\"/a\"].verify.scheme", "expected \"standard-webhooks\", got \"hmac-sha256\""},
    {"verify tolerance zero",
     CFG("endpoints = { [\"/a\"] = { event = \"e\", verify = { scheme = \"standard-webhooks\", "
         "secrets = { \"whsec_QUJD\" }, tolerance_s = 0 } } },"),
     "endpoints[\"/a\"].verify.tolerance_s", "must be between 1 and 86400, got 0"},
    {"verify bad secret",
     CFG("endpoints = { [\"/a\"] = { event = \"e\", verify = { scheme = \"standard-webhooks\", "
         "secrets = { \"whsec_QUJD\", 7 } } } },"),
     "endpoints[\"/a\"].verify.secrets[2]", "expected whsec_<base64>, got integer"},
    /* The file's own code. */
    {"not a table", "return 42\n", NULL, "the config file must return a table"},
    {"nothing returned", "local x = 1\n", NULL, "must return a table (return { ... }), got nil"},
    {"syntax error", "return {\n  listen = \n", NULL, "hookrouter.lua:3:"},
    {"top-level error", "local x = 1\nerror(\"boom in the config\")\nreturn {}\n", NULL,
     "hookrouter.lua:2: boom in the config"},
    {"runaway code", "while true do end\nreturn {}\n", NULL, "instruction budget"},
    {"runaway recursion", "local function f() return f() + 1 end\nreturn { x = f() }\n", NULL,
     "hookrouter.lua"},
    {"memory hog", "local s = string.rep(\"x\", 200 * 1024 * 1024)\nreturn {}\n", NULL,
     "needs more than 64 MiB of memory"},
    {"no setmetatable", "setmetatable({}, {})\nreturn {}\n", NULL, "global 'setmetatable'"},
    {"no loading other files", "dofile(\"/etc/passwd\")\nreturn {}\n", NULL, "global 'dofile'"},
    {"no os.execute", "os.execute(\"true\")\nreturn {}\n", NULL, "field 'execute'"},
    {"no io", "io.open(\"/etc/passwd\")\nreturn {}\n", NULL, "global 'io'"},
};

/* Load cfg_path: true if it was refused (errs has the messages), false if it loaded. */
static bool load_fails(hr_errors_t *errs)
{
    hr_config_t *c = hr_config_load(cfg_path, errs);
    if (!c) return true;
    hr_config_free(c);
    return false;
}

static void dump(const bad_case_t *bc, const hr_errors_t *errs)
{
    fprintf(stderr, "  case \"%s\": want %s%s\"%s\"; got %zu message(s):\n", bc->name,
            bc->key ? bc->key : "", bc->key ? ": " : "", bc->what, errs->n);
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "    %s\n", errs->msgs[i]);
}

static void test_bad_configs(void)
{
    /* The cases' base configs load: each case fails for what it adds. */
    const char *bases[] = {CFG(""), TARGET("")};
    for (size_t i = 0; i < HR_ARRAY_SIZE(bases); i++) {
        write_config(bases[i]);
        hr_errors_t errs = {0};
        CHECK(!load_fails(&errs));
        CHECK_INT_EQ(errs.n, 0);
        hr_errors_free(&errs);
    }
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad_cases); i++) {
        const bad_case_t *bc = &bad_cases[i];
        write_config(bc->text);
        hr_errors_t errs = {0};
        bool failed = load_fails(&errs);
        char *prefix = hr_xasprintf("%s: %s: ", cfg_path, bc->key ? bc->key : "");
        bool found = false;
        for (size_t k = 0; k < errs.n; k++) {
            const char *m = errs.msgs[k];
            bool named =
                bc->key ? strncmp(m, prefix, strlen(prefix)) == 0 : strstr(m, cfg_path) != NULL;
            found = found || (named && strstr(m, bc->what) != NULL);
        }
        if (!failed || !found) dump(bc, &errs);
        CHECK(failed);
        CHECK(errs.n >= 1);
        CHECK(found);
        free(prefix);
        hr_errors_free(&errs);
    }
}

/* Every problem is reported, not only the first; and errors are added to what is there. */
static void test_all_errors_collected(void)
{
    write_config(CFG("listen = 1, workers = 0, fsync = \"x\","
                     " targets = { a = { url = \"ftp://x/\" }, b = { timeout_ms = 0 } },"));
    hr_errors_t errs = {0};
    hr_errors_add(&errs, "an earlier message");
    CHECK(load_fails(&errs));
    const char *want[] = {"listen: ",
                          "workers: ",
                          "fsync: ",
                          "targets.a.url: ",
                          "targets.b.url: missing",
                          "targets.b.timeout_ms: "};
    CHECK_STR_EQ(errs.msgs[0], "an earlier message");
    for (size_t i = 0; i < HR_ARRAY_SIZE(want); i++) {
        bool found = false;
        for (size_t k = 1; k < errs.n; k++)
            found = found || strstr(errs.msgs[k], want[i]) != NULL;
        if (!found) fprintf(stderr, "  no message for %s\n", want[i]);
        CHECK(found);
    }
    CHECK_INT_EQ(errs.n, 1 + HR_ARRAY_SIZE(want));
    hr_errors_free(&errs);
    CHECK(errs.msgs == NULL && errs.n == 0);
}

static void test_missing_file(void)
{
    char *path = hr_xasprintf("%s/no-such.lua", dir);
    hr_errors_t errs = {0};
    CHECK(hr_config_load(path, &errs) == NULL);
    CHECK_INT_EQ(errs.n, 1);
    if (errs.n >= 1) {
        CHECK(strstr(errs.msgs[0], path) != NULL);
        CHECK(strstr(errs.msgs[0], "cannot read the config file") != NULL);
        CHECK(strstr(errs.msgs[0], "No such file") != NULL);
    }
    hr_errors_free(&errs);
    free(path);
}

static const char good_config[] =
    "local base = \"http://127.0.0.1:9000\"\n"
    "return {\n"
    "  listen = \"[::1]:9090\",\n"
    "  tokens = { \"tok-a\", os.getenv(\"HR_TEST_CONFIG_TOKEN\") },\n"
    "  endpoints = {\n"
    "    [\"/aifi/checkout-zone/left\"] = \"checkout-zone.left\",\n"
    "    [\"/aifi/entry-code/verify\"] = {\n"
    "      event = \"entry-code.verify\", reply_timeout_ms = 2500,\n"
    "      fallback = { status = 503, body = { ok = false }, headers = { [\"X-Why\"] = \"late\" } "
    "},\n"
    "    },\n"
    "  },\n"
    "  store_key = \"store.id\",\n"
    "  rules = \"my-rules\",\n"
    "  targets = {\n"
    "    pos = { url = base .. \"/pos\", headers = { [\"X-Api-Key\"] = \"k1\" },\n"
    "            timeout_ms = 1234, max_attempts = 3, retry_ms = { 0, 100, 2000 },\n"
    "            max_age_s = 3600, concurrency = 7, rate = 2.5, ordered = true,\n"
    "            circuit_failures = 9, circuit_probe_ms = 4321 },\n"
    "    crm = { url = \"http://[::1]:81\" },\n"
    "  },\n"
    "  files = { audit = \"var/audit.jsonl\", secret = { path = \"/abs/secret.jsonl\", mode = "
    "\"0640\" } },\n"
    "  dead_letters = \"dl/dead.jsonl\",\n"
    "  limits = { body_bytes = 2048, header_bytes = 4096, rule_instructions = 5000,\n"
    "             actions_per_event = 3, max_connections = 77 },\n"
    "  shutdown_grace_ms = 250,\n"
    "  spool_dir = \"/var/tmp/hr-spool\",\n"
    "  fsync = \"interval\", fsync_interval_ms = 20, max_spool_bytes = 8192,\n"
    "  workers = \"auto\",\n"
    "  log = { level = \"debug\", format = \"json\" },\n"
    "}\n";

static void test_good_config(void)
{
    setenv("HR_TEST_CONFIG_TOKEN", "tok-env", 1);
    write_config(good_config);
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(cfg_path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "  unexpected: %s\n", errs.msgs[i]);
    CHECK_INT_EQ(errs.n, 0);
    CHECK(c != NULL);
    hr_errors_free(&errs);
    if (!c) return;
    CHECK_STR_EQ(c->file, cfg_path);
    CHECK_STR_EQ(c->dir, dir);
    CHECK_STR_EQ(c->listen, "[::1]:9090");
    CHECK_STR_EQ(c->listen_host, "::1");
    CHECK_INT_EQ(c->listen_port, 9090);
    CHECK_INT_EQ(c->ntokens, 2);
    if (c->ntokens == 2) {
        CHECK_STR_EQ(c->tokens[0], "tok-a");
        CHECK_STR_EQ(c->tokens[1], "tok-env");
    }
    CHECK(!c->insecure_no_auth);

    CHECK_INT_EQ(c->nendpoints, 2);
    const hr_endpoint_conf_t *ep = hr_config_endpoint(c, "/aifi/checkout-zone/left");
    CHECK(ep != NULL);
    if (ep) {
        CHECK_STR_EQ(ep->event, "checkout-zone.left");
        CHECK(ep->fallback == NULL);
    }
    ep = hr_config_endpoint(c, "/aifi/entry-code/verify");
    CHECK(ep != NULL);
    if (ep) {
        CHECK_STR_EQ(ep->event, "entry-code.verify");
        CHECK_INT_EQ(ep->reply_timeout_ms, 2500);
        CHECK(ep->fallback != NULL);
        if (ep->fallback) {
            CHECK_INT_EQ(ep->fallback->status, 503);
            CHECK(ep->fallback->body_is_json);
            CHECK_STR_EQ(ep->fallback->body, "{\"ok\":false}");
            CHECK_INT_EQ(ep->fallback->body_len, strlen("{\"ok\":false}"));
            CHECK_INT_EQ(ep->fallback->nheaders, 1);
            if (ep->fallback->nheaders == 1) {
                CHECK_STR_EQ(ep->fallback->headers[0].name, "X-Why");
                CHECK_STR_EQ(ep->fallback->headers[0].value, "late");
            }
        }
    }
    CHECK(hr_config_endpoint(c, "/nope") == NULL);
    CHECK_STR_EQ(c->store_key, "store.id");
    char *want = hr_xasprintf("%s/my-rules", dir);
    CHECK_STR_EQ(c->rules_dir, want);
    free(want);

    CHECK_INT_EQ(c->ntargets, 2);
    const hr_target_conf_t *t = hr_config_target(c, "pos");
    CHECK(t != NULL);
    if (t) {
        CHECK_STR_EQ(t->url, "http://127.0.0.1:9000/pos");
        CHECK_INT_EQ(t->nheaders, 1);
        if (t->nheaders == 1) {
            CHECK_STR_EQ(t->headers[0].name, "X-Api-Key");
            CHECK_STR_EQ(t->headers[0].value, "k1");
        }
        CHECK_INT_EQ(t->timeout_ms, 1234);
        CHECK_INT_EQ(t->max_attempts, 3);
        CHECK_INT_EQ(t->nretry, 3);
        if (t->nretry == 3) {
            CHECK_INT_EQ(t->retry_ms[0], 0);
            CHECK_INT_EQ(t->retry_ms[1], 100);
            CHECK_INT_EQ(t->retry_ms[2], 2000);
        }
        CHECK_INT_EQ(t->max_age_s, 3600);
        CHECK_INT_EQ(t->concurrency, 7);
        CHECK(t->rate == 2.5);
        CHECK(t->ordered);
        CHECK_INT_EQ(t->circuit_failures, 9);
        CHECK_INT_EQ(t->circuit_probe_ms, 4321);
    }
    t = hr_config_target(c, "crm");
    CHECK(t != NULL);
    if (t) {
        CHECK_STR_EQ(t->url, "http://[::1]:81");
        CHECK_INT_EQ(t->nheaders, 0);
        CHECK(t->nretry >= 1); /* a schedule is never empty (its values are the default's) */
        CHECK(!t->ordered);
    }
    CHECK(hr_config_target(c, "nope") == NULL);

    CHECK_INT_EQ(c->nfiles, 2);
    const hr_file_conf_t *f = hr_config_file(c, "audit");
    CHECK(f != NULL);
    if (f) {
        want = hr_xasprintf("%s/var/audit.jsonl", dir);
        CHECK_STR_EQ(f->path, want);
        free(want);
        CHECK_INT_EQ(f->mode, 0);
    }
    f = hr_config_file(c, "secret");
    CHECK(f != NULL);
    if (f) {
        CHECK_STR_EQ(f->path, "/abs/secret.jsonl");
        CHECK_INT_EQ(f->mode, HR_FILE_MODE_SET | 0640);
    }
    want = hr_xasprintf("%s/dl/dead.jsonl", dir);
    CHECK_STR_EQ(c->dead_letters, want);
    free(want);

    CHECK_INT_EQ(c->limits.body_bytes, 2048);
    CHECK_INT_EQ(c->limits.header_bytes, 4096);
    CHECK_INT_EQ(c->limits.rule_instructions, 5000);
    CHECK_INT_EQ(c->limits.actions_per_event, 3);
    CHECK_INT_EQ(c->limits.max_connections, 77);
    CHECK_INT_EQ(c->shutdown_grace_ms, 250);
    CHECK_STR_EQ(c->spool_dir, "/var/tmp/hr-spool");
    CHECK_INT_EQ(c->fsync_mode, 1);
    CHECK_INT_EQ(c->fsync_interval_ms, 20);
    CHECK_INT_EQ(c->max_spool_bytes, 8192);
    CHECK_INT_EQ(c->workers, 0); /* "auto" */
    CHECK_STR_EQ(c->log_level, "debug");
    CHECK_STR_EQ(c->log_format, "json");
    hr_config_free(c);
    unsetenv("HR_TEST_CONFIG_TOKEN");
}

/* The smallest config: insecure_no_auth instead of tokens; a host-less listen address. */
/* sign and verify arrive decoded, with their defaults; a secret never shows in a message. */
static void test_signing_config(void)
{
    write_config(
        CFG("  targets = {\n"
            "    sw = { url = \"http://127.0.0.1:9/\", sign = { scheme = \"standard-webhooks\",\n"
            "           secrets = { \"whsec_QUJD\", \"whsec_c2Vjb25k\" } } },\n"
            "    legacy = { url = \"http://127.0.0.1:9/\", sign = { scheme = \"hmac-sha256\",\n"
            "               secret = \"k3y\" } },\n"
            "    b64 = { url = \"http://127.0.0.1:9/\", sign = { scheme = \"hmac-sha256\",\n"
            "            secret = \"k\", header = \"X-Hub-Signature-256\", encoding = \"base64\",\n"
            "            prefix = \"sha256=\" } },\n"
            "    plain = { url = \"http://127.0.0.1:9/\" } },\n"
            "  endpoints = { [\"/hook\"] = \"e\", [\"/signed\"] = { event = \"s\", verify = {\n"
            "    scheme = \"standard-webhooks\", secrets = { \"whsec_QUJD\" } } },\n"
            "    [\"/tight\"] = { event = \"t\", verify = { scheme = \"standard-webhooks\",\n"
            "      secrets = { \"whsec_QUJD\" }, tolerance_s = 5 } } },"));
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(cfg_path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "  %s\n", errs.msgs[i]);
    CHECK(c != NULL);
    hr_errors_free(&errs);
    if (!c) return;
    const hr_sign_conf_t *s = hr_config_target(c, "sw")->sign;
    CHECK(s && s->scheme == HR_SIGN_STANDARD_WEBHOOKS && s->nkeys == 2);
    if (s && s->nkeys == 2) {
        CHECK(s->keys[0].len == 3 && memcmp(s->keys[0].key, "ABC", 3) == 0);
        CHECK(s->keys[1].len == 6 && memcmp(s->keys[1].key, "second", 6) == 0);
    }
    s = hr_config_target(c, "legacy")->sign;
    CHECK(s && s->scheme == HR_SIGN_HMAC_SHA256 && s->nkeys == 1);
    if (s && s->nkeys == 1) {
        CHECK(s->keys[0].len == 3 && memcmp(s->keys[0].key, "k3y", 3) == 0);
        CHECK_STR_EQ(s->header, HR_DEF_SIGN_HEADER);
        CHECK_INT_EQ(s->encoding, HR_SIGN_HEX); /* HR_DEF_SIGN_ENCODING */
        CHECK_STR_EQ(s->prefix, "");
    }
    s = hr_config_target(c, "b64")->sign;
    CHECK(s && s->encoding == HR_SIGN_BASE64);
    if (s) {
        CHECK_STR_EQ(s->header, "X-Hub-Signature-256");
        CHECK_STR_EQ(s->prefix, "sha256=");
    }
    CHECK(hr_config_target(c, "plain")->sign == NULL);
    CHECK(hr_config_endpoint(c, "/hook")->verify == NULL);
    s = hr_config_endpoint(c, "/signed")->verify;
    CHECK(s && s->scheme == HR_SIGN_STANDARD_WEBHOOKS && s->nkeys == 1);
    if (s) CHECK_INT_EQ(s->tolerance_s, HR_DEF_VERIFY_TOLERANCE_S);
    s = hr_config_endpoint(c, "/tight")->verify;
    if (s) CHECK_INT_EQ(s->tolerance_s, 5);
    CHECK(s != NULL);
    hr_config_free(c);

    /* A bad config that holds secrets: the messages name keys, not the secrets. */
    write_config(TARGET("sign = { scheme = \"standard-webhooks\", secrets = { "
                        "\"whsec_SuperSecret*\", \"SuperSecret2\" } }, headers = 5"));
    CHECK(hr_config_load(cfg_path, &errs) == NULL);
    CHECK(errs.n >= 3);
    for (size_t i = 0; i < errs.n; i++)
        CHECK(strstr(errs.msgs[i], "SuperSecret") == NULL);
    hr_errors_free(&errs);
}

static void test_minimal_config(void)
{
    write_config("return { insecure_no_auth = true, listen = \":8081\",\n"
                 "  endpoints = { [\"/hook\"] = \"e\" }, rules = \"/srv/rules\" }\n");
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(cfg_path, &errs);
    CHECK(c != NULL);
    CHECK_INT_EQ(errs.n, 0);
    hr_errors_free(&errs);
    if (!c) return;
    CHECK(c->insecure_no_auth);
    CHECK_INT_EQ(c->ntokens, 0);
    CHECK_STR_EQ(c->listen_host, "0.0.0.0");
    CHECK_INT_EQ(c->listen_port, 8081);
    CHECK_STR_EQ(c->rules_dir, "/srv/rules");
    CHECK_INT_EQ(c->ntargets, 0);
    CHECK_INT_EQ(c->nfiles, 0);
    CHECK(c->nwrite_retry >= 1);
    hr_config_free(c);
    hr_config_free(NULL);
}

/* outbox: the spool by default; kind = "redis" with its URL taken apart and its keys (or,
 * in a build without hiredis, refused with that reason); bad values named by key. */
static void test_outbox_config(void)
{
    write_config(CFG(""));
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(cfg_path, &errs);
    CHECK(c != NULL);
    if (c) {
        CHECK_INT_EQ(c->outbox.kind, HR_OUTBOX_SPOOL);
        CHECK_STR_EQ(c->outbox.prefix, "hookrouter");
        CHECK_INT_EQ(c->outbox.claim_idle_ms, 30000);
        CHECK_INT_EQ(c->outbox.wait_replicas, 0);
        CHECK_INT_EQ(c->outbox.wait_timeout_ms, 100);
    }
    hr_config_free(c);
    hr_errors_free(&errs);

    write_config(CFG("outbox = { kind = \"redis\", url = \"redis://:s3cr:et@10.1.2.3:6380/2\",\n"
                     "  prefix = \"hr1\", claim_idle_ms = 5000, wait_replicas = 1,\n"
                     "  wait_timeout_ms = 250 },"));
    c = hr_config_load(cfg_path, &errs);
#ifdef HR_HAVE_REDIS
    CHECK(c != NULL);
    CHECK_INT_EQ(errs.n, 0);
    if (c) {
        CHECK_INT_EQ(c->outbox.kind, HR_OUTBOX_REDIS);
        CHECK_STR_EQ(c->outbox.host, "10.1.2.3");
        CHECK_INT_EQ(c->outbox.port, 6380);
        CHECK_STR_EQ(c->outbox.password, "s3cr:et");
        CHECK_INT_EQ(c->outbox.db, 2);
        CHECK_STR_EQ(c->outbox.prefix, "hr1");
        CHECK_INT_EQ(c->outbox.claim_idle_ms, 5000);
        CHECK_INT_EQ(c->outbox.wait_replicas, 1);
        CHECK_INT_EQ(c->outbox.wait_timeout_ms, 250);
    }
#else
    CHECK(c == NULL);
    CHECK(errs.n == 1 && strstr(errs.msgs[0], "outbox.kind: \"redis\": this hookrouter was "
                                              "built without Redis support"));
#endif
    hr_config_free(c);
    hr_errors_free(&errs);

    write_config(CFG("outbox = { kind = \"redis\", url = \"redis://localhost\" },"));
    c = hr_config_load(cfg_path, &errs);
#ifdef HR_HAVE_REDIS
    CHECK(c != NULL);
    if (c) {
        CHECK_STR_EQ(c->outbox.host, "localhost");
        CHECK_INT_EQ(c->outbox.port, 6379);
        CHECK(c->outbox.password == NULL);
        CHECK_INT_EQ(c->outbox.db, 0);
    }
#endif
    hr_config_free(c);
    hr_errors_free(&errs);

    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"outbox = { kind = \"redis\", url = \"redis://h:99999/0\" },",
         "outbox.url: bad port \"99999\" (1 to 65535)"},
        {"outbox = { kind = \"redis\", url = \"redis://h:1/x\" },",
         "outbox.url: bad database number \"x\""},
        {"outbox = { kind = \"redis\", url = \"http://:hunter2@h\" },",
         "outbox.url: expected redis://[:password@]host:port/db (the URL is not echoed"},
        {"outbox = { kind = \"redis\", url = \"redis://:pw@/0\" },", "outbox.url: no host"},
        {"outbox = { kind = \"spool\", url = \"redis://h\" },",
         "outbox.url: only for kind = \"redis\""},
        {"outbox = { claim_idle_ms = 5 },", "outbox.claim_idle_ms: must be between 100 and"},
        {"outbox = { prefix = \"a b\" },", "outbox.prefix: must be a non-empty word"},
        {"outbox = { colour = 1 },", "outbox.colour: unknown key"},
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad); i++) {
        char *text = hr_xasprintf(CFG("%s"), bad[i].text);
        write_config(text);
        free(text);
        c = hr_config_load(cfg_path, &errs);
        CHECK(c == NULL);
        bool found = false;
        for (size_t k = 0; k < errs.n; k++)
            found = found || strstr(errs.msgs[k], bad[i].msg) != NULL;
        if (!found) fprintf(stderr, "outbox case %zu: no \"%s\" in the errors\n", i, bad[i].msg);
        CHECK(found);
        hr_config_free(c);
        hr_errors_free(&errs);
    }
}

/* The proxy each target of the config ends up with under the environment's variables. */
static void test_proxy_env(void)
{
    write_config(CFG("  targets = {\n"
                     "    a = { url = \"https://pos.example.com/x\" },\n"
                     "    b = { url = \"http://sub.example.org/\" },\n"
                     "    c = { url = \"https://example.org.evil.com/\" },\n"
                     "    d = { url = \"https://127.0.0.1:8443/\" },\n"
                     "    e = { url = \"https://h/\", proxy = \"http://own:1\" },\n"
                     "    f = { url = \"http://plain/\" },\n"
                     "    g = { url = \"https://h/\", proxy = \"\" },\n"
                     "  },"));
    setenv("HTTPS_PROXY", "http://hp:3128", 1);
    setenv("http_proxy", "http://p:80/", 1);
    setenv("NO_PROXY", "example.org, 127.0.0.1:8443", 1);
    const char *want[][2] = {{"a", "http://hp:3128"},
                             {"b", NULL},
                             {"c", "http://hp:3128"},
                             {"d", NULL},
                             {"e", "http://own:1"},
                             {"f", "http://p:80/"},
                             {"g", NULL}};
    for (int round = 0; round < 2; round++) {
        hr_errors_t errs = {0};
        hr_config_t *c = hr_config_load(cfg_path, &errs);
        CHECK(c != NULL);
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "  %s\n", errs.msgs[i]);
        hr_errors_free(&errs);
        if (!c) break;
        for (size_t i = 0; i < HR_ARRAY_SIZE(want); i++) {
            const hr_target_conf_t *t = hr_config_target(c, want[i][0]);
            /* NO_PROXY = "*" (round 1): only a target's own proxy is left. */
            const char *w = round == 1 && want[i][0][0] != 'e' ? NULL : want[i][1];
            CHECK(t != NULL);
            if (!t) continue;
            if (!w || !t->proxy) {
                if (w != t->proxy) fprintf(stderr, "  target %s: proxy %s\n", t->name, t->proxy);
                CHECK(w == t->proxy);
            } else {
                CHECK_STR_EQ(t->proxy, w);
            }
        }
        hr_config_free(c);
        setenv("no_proxy", "*", 1);
    }
    unsetenv("HTTPS_PROXY");
    unsetenv("http_proxy");
    unsetenv("NO_PROXY");
    unsetenv("no_proxy");
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/hr_test_config.XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(cfg_path, sizeof cfg_path, "%s/hookrouter.lua", dir);
    unsetenv("HR_TEST_UNSET_VARIABLE");
    /* The machine's proxies must not change the targets below. */
    const char *proxy_vars[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                "HTTPS_PROXY", "no_proxy",   "NO_PROXY"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(proxy_vars); i++)
        unsetenv(proxy_vars[i]);
    test_bad_configs();
    test_all_errors_collected();
    test_missing_file();
    test_good_config();
    test_signing_config();
    test_minimal_config();
    test_outbox_config();
    test_proxy_env();
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_config");
}
