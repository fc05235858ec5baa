/* A rule set: one config plus one Lua state holding every compiled rule (src/rules.c).
 *
 * Loaded whole or not at all: hr_ruleset_load() compiles rules/default.lua and every
 * rules/stores/<store>.lua and checks the target and file names they use against the config;
 * any error fails the load, so a broken rule never replaces a working one. A rule set is
 * reference-counted: a reload swaps in a new one while events in flight finish on the old.
 *
 * Each event runs in its own coroutine of the rule set's state, with an instruction budget
 * (a count hook that keeps firing once tripped, so pcall cannot swallow it) and a memory cap
 * enforced by the state's allocator. Rules never do I/O: forward() and write() only record
 * actions, which the caller hands to the outbox once the rule has returned. */
#ifndef HR_RULES_H
#define HR_RULES_H

#include "hr/action.h"
#include "hr/config.h"

typedef struct hr_ruleset hr_ruleset_t;

/* Build a rule set for cfg (taking ownership of it). Returns NULL with messages in errs
 * ("examples/rules/stores/42.lua:7: unexpected symbol near 'end'"); cfg is then freed. */
hr_ruleset_t *hr_ruleset_load(hr_config_t *cfg, hr_errors_t *errs);
void hr_ruleset_ref(hr_ruleset_t *rs);
/* Drop a reference; the last one frees the state and the config. Accepts NULL. */
void hr_ruleset_unref(hr_ruleset_t *rs);
const hr_config_t *hr_ruleset_config(const hr_ruleset_t *rs);
/* Number of store rule files, and whether rules/default.lua exists. */
size_t hr_ruleset_store_count(const hr_ruleset_t *rs);
bool hr_ruleset_has_default(const hr_ruleset_t *rs);

/* One received webhook, as the rule sees it. */
typedef struct {
    const char *id;   /* event id (UUIDv7) */
    const char *type; /* event type from the endpoint */
    const char *method;
    const char *path;
    const hr_header_t *headers; /* names lower-case */
    size_t nheaders;
    const char *body; /* raw JSON text */
    size_t body_len;
    const char *received_at; /* RFC 3339 */
    uint64_t received_ms;
} hr_event_in_t;

typedef enum {
    HR_RUN_OK = 0,      /* the rule returned (or there was no rule); see actions/dropped */
    HR_RUN_BAD_JSON,    /* the body is not valid JSON: error says where */
    HR_RUN_RULE_FAILED, /* the rule raised, ran out of instructions or memory: see error */
} hr_run_status_t;

typedef struct {
    hr_run_status_t status;
    char *store;          /* normalised store id, or NULL */
    char *rule;           /* rule file that ran, relative to the rules folder, or NULL */
    hr_action_t *actions; /* forward and write actions in call order (owned) */
    size_t nactions;
    bool dropped; /* drop() was called, or no rule exists */
    char *drop_reason;
    char *error; /* for BAD_JSON and RULE_FAILED */
} hr_run_result_t;

/* Run the rule for ev. Never fails as a C call: the outcome is in out, which the caller
 * releases with hr_run_result_free(). */
void hr_ruleset_run(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out);
void hr_run_result_free(hr_run_result_t *r);

#endif
