/* A rule set: one config plus one Lua state holding every compiled rule (src/rules.c).
 *
 * Loaded whole or not at all: hr_ruleset_load() compiles rules/default.lua and every
 * rules/stores/<store>.lua and checks the target and file names they use against the config;
 * any error fails the load, so a broken rule never replaces a working one. A rule set is
 * reference-counted: a reload swaps in a new one while events in flight finish on the old.
 *
 * Each event runs in its own coroutine of the rule set's state, with an instruction budget
 * (a count hook that keeps firing once tripped, so pcall cannot swallow it) and a memory cap
 * enforced by the state's allocator, both applied per slice of the run (the time between
 * a start or resume and the next yield or return), so waiting costs nothing. Rules never do
 * I/O: forward() and write() only record actions, which the caller hands to the outbox once
 * the rule has returned; request() records the request and yields the coroutine, and the
 * caller performs it and resumes the run with the answer (hr_ruleset_start/resume/abandon). */
#ifndef HR_RULES_H
#define HR_RULES_H

#include "hr/action.h"
#include "hr/config.h"

typedef struct hr_ruleset hr_ruleset_t;

/* Build a rule set for cfg (taking ownership of it). Returns NULL with messages in errs
 * ("examples/rules/stores/42.lua:7: unexpected symbol near 'end'"; an error raised by
 * top-level code has its Lua traceback on the lines after that first one); cfg is then
 * freed. */
hr_ruleset_t *hr_ruleset_load(hr_config_t *cfg, hr_errors_t *errs);
void hr_ruleset_ref(hr_ruleset_t *rs);
/* Drop a reference; the last one frees the state and the config. Accepts NULL. */
void hr_ruleset_unref(hr_ruleset_t *rs);
const hr_config_t *hr_ruleset_config(const hr_ruleset_t *rs);
/* Number of store rule files, and whether rules/default.lua exists. */
size_t hr_ruleset_store_count(const hr_ruleset_t *rs);
bool hr_ruleset_has_default(const hr_ruleset_t *rs);
/* True once a run found the state holding more than limits.state_memory_bytes between
 * events (that run failed saying so): the caller should load a fresh rule set (a reload). */
bool hr_ruleset_needs_rebuild(const hr_ruleset_t *rs);
/* True the first time key is asked about in this rule set (so once per reload), false after:
 * for warnings that would otherwise repeat on every event. */
bool hr_ruleset_first_time(hr_ruleset_t *rs, const char *key);
/* Add to warns what `check` should point out but is not an error: a rule file that no
 * answering endpoint's event can get an answer from (it and the modules it requires never
 * call respond()), when the config has answering endpoints (with a fallback). */
void hr_ruleset_lint(const hr_ruleset_t *rs, hr_errors_t *warns);

/* One received webhook, as the rule sees it. */
typedef struct {
    const char *id;   /* event id (UUIDv7) */
    const char *type; /* event type from the endpoint */
    const char *method;
    const char *path;
    const hr_header_t *headers; /* names lower-case */
    size_t nheaders;
    const char *body; /* raw JSON text; event.raw in the rule (copied on first read only) */
    size_t body_len;
    const char *received_at; /* RFC 3339 */
    uint64_t received_ms;
    int token; /* which of the config's tokens the sender proved (1-based), 0: none checked */
    bool fixed_clock; /* hookrouter test: os.time, os.date, time.now and uuid.v7 read
                         received_ms instead of the wall clock (false in the server) */
} hr_event_in_t;

typedef enum {
    HR_RUN_OK = 0,      /* the rule returned (or there was no rule); see actions/dropped */
    HR_RUN_BAD_JSON,    /* the body is not valid JSON: error says where */
    HR_RUN_RULE_FAILED, /* the rule raised, ran out of instructions or memory: see error */
} hr_run_status_t;

/* A run that is suspended in request() (opaque; see hr_ruleset_start). */
typedef struct hr_run hr_run_t;

typedef struct {
    hr_run_status_t status;
    char *store;          /* normalised store id, or NULL */
    char *rule;           /* rule file that ran, relative to the rules folder, or NULL */
    hr_action_t *actions; /* forward and write actions in call order (owned) */
    size_t nactions;
    bool dropped; /* drop() was called, or no rule exists */
    char *drop_reason;
    char *error;       /* for BAD_JSON and RULE_FAILED; when the rule raised, its first line is
                          the message and the Lua traceback follows on the next lines */
    hr_reply_t *reply; /* what respond() set (last call wins), or NULL (owned) */
    /* While suspended (hr_ruleset_start/resume returned HR_STEP_SUSPENDED): */
    hr_run_t *run;              /* the suspended run, NULL once it is done or abandoned */
    const hr_action_t *request; /* the request() to perform: a forward-kind action (name =
                                   target, method, url, headers, body, timeout_ms), owned by
                                   the run, valid until the next resume or abandon */
    uint32_t requests;          /* request() calls so far */
} hr_run_result_t;

/* What hr_ruleset_start and hr_ruleset_resume return. */
typedef enum {
    HR_STEP_DONE = 0,  /* the run is over: see out->status */
    HR_STEP_SUSPENDED, /* the rule waits in request(): perform out->request, then resume */
} hr_run_step_t;

/* Start the rule for ev. out is filled and must stay at the same address, with ev and
 * everything ev points to, until the run is done or abandoned (the run writes its actions
 * into out). The run holds a reference to rs while it is suspended, so rs may be swapped
 * and unref'd by the caller meanwhile; it is freed after the run. Never fails as a C call:
 * the outcome is in out, which the caller releases with hr_run_result_free(). */
hr_run_step_t hr_ruleset_start(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out);

/* The answer to a suspended run's request(): either err < 0 (a UV_* code; errmsg says what)
 * or an HTTP response. ms is how long the round trip took. */
typedef struct {
    int err;
    const char *errmsg;
    int status;
    const hr_header_t *headers; /* names lower-case */
    size_t nheaders;
    const char *body;
    size_t body_len;
    double ms;
} hr_rule_answer_t;

/* Resume the suspended run in out with the answer to its request(): request() returns
 * res (status, headers, body: decoded JSON when the Content-Type says JSON and it parses,
 * else the raw string; ms) or nil plus a message ("timeout: ...", "connect error: ...").
 * Returns DONE or SUSPENDED again, as hr_ruleset_start. */
hr_run_step_t hr_ruleset_resume(hr_run_result_t *out, const hr_rule_answer_t *ans);

/* End a suspended run without resuming it (the reply deadline passed, or shutdown): its
 * recorded actions and reply are discarded, its rule set reference dropped. out->status
 * becomes HR_RUN_RULE_FAILED with reason as the error. Does nothing if out has no run. */
void hr_ruleset_abandon(hr_run_result_t *out, const char *reason);

/* Stand-in for the targets in a synchronous run: fill ans for req. Strings put in ans must
 * stay valid until the next call or the end of the run. */
typedef void (*hr_request_stub_cb)(void *arg, const hr_action_t *req, hr_rule_answer_t *ans);

/* Run the rule for ev to the end, answering each request() with stub (NULL: every request()
 * gets nil, "no target is reachable here"). Never fails as a C call: the outcome is in out,
 * which the caller releases with hr_run_result_free(). */
void hr_ruleset_run_stub(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out,
                         hr_request_stub_cb stub, void *arg);
/* hr_ruleset_run_stub without a stub. */
void hr_ruleset_run(hr_ruleset_t *rs, const hr_event_in_t *ev, hr_run_result_t *out);
/* Free what out owns (abandoning a suspended run first). */
void hr_run_result_free(hr_run_result_t *r);

#endif
