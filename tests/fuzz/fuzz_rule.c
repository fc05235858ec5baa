/* Fuzz the rule sandbox: the input is the body of a store's rule,
 *   rules/stores/77.lua = "return function(event)\n" <input> "\nend\n"
 * loaded with a fixed config (a target, a file, a module, small budgets) and run once on the
 * checkout-zone-left fixture (store 77), request() answered by a stub. Whatever the rule
 * does, loading and running must end (budgets), never crash, leak or break the result's
 * contract. tests/fuzz/rule.dict holds Lua tokens and sandbox names. */
#include "fuzz.h"
#include "hr/log.h"
#include "hr/rules.h"

static char cfg_path[300], rule_path[300];
static char *body;
static size_t body_len;

static const char CONFIG[] =
    "return {\n"
    "  listen = '127.0.0.1:0', insecure_no_auth = true,\n"
    "  endpoints = { ['/hook'] = 'checkout-zone.left' },\n"
    "  rules = 'rules',\n"
    "  targets = { pos = { url = 'http://127.0.0.1:9/base' } },\n"
    "  files = { audit = { path = 'var/audit.jsonl' } },\n"
    "  limits = { rule_instructions = 200000, rule_memory_bytes = 8388608,\n"
    "             state_memory_bytes = 16777216, actions_per_event = 20 },\n"
    "}\n";

static const char MODULE[] = "local M = { n = 0 }\n"
                             "function M.inc() M.n = M.n + 1; return M.n end\n"
                             "return M\n";

static void stub(void *arg, const hr_action_t *req, hr_rule_answer_t *ans)
{
    static const hr_header_t h[] = {{"content-type", "application/json"}};
    static const char reply[] = "{\"status\":\"SUCCESS\",\"list\":[1,2.5,null,\"x\"]}";
    memset(ans, 0, sizeof *ans);
    ans->status = 200;
    ans->headers = h;
    ans->nheaders = 1;
    ans->body = reply;
    ans->body_len = sizeof reply - 1;
    ans->ms = 1.5;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    hr_log_set_level(HR_LOG_ERROR);
    const char *d = fuzz_tmpdir();
    char p[400];
    snprintf(p, sizeof p, "mkdir -p '%s/rules/stores' '%s/rules/lib'", d, d);
    FUZZ_CHECK(system(p) == 0);
    snprintf(cfg_path, sizeof cfg_path, "%s/hookrouter.lua", d);
    fuzz_write_file(cfg_path, CONFIG, sizeof CONFIG - 1);
    snprintf(p, sizeof p, "%s/rules/lib/m.lua", d);
    fuzz_write_file(p, MODULE, sizeof MODULE - 1);
    snprintf(rule_path, sizeof rule_path, "%s/rules/stores/77.lua", d);
    body = fuzz_read_file(HR_FUZZ_FIXTURES "/checkout-zone-left.json", &body_len);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char head[] = "return function(event)\n", tail[] = "\nend\n";
    char *src = malloc(sizeof head + size + sizeof tail);
    FUZZ_CHECK(src != NULL);
    memcpy(src, head, sizeof head - 1);
    memcpy(src + sizeof head - 1, data, size);
    memcpy(src + sizeof head - 1 + size, tail, sizeof tail - 1);
    fuzz_write_file(rule_path, src, sizeof head - 1 + size + sizeof tail - 1);
    free(src);

    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(cfg_path, &errs);
    FUZZ_CHECK(cfg != NULL);
    hr_ruleset_t *rs = hr_ruleset_load(cfg, &errs);
    if (!rs) {
        FUZZ_CHECK(errs.n > 0);
        hr_errors_free(&errs);
        return 0;
    }
    FUZZ_CHECK(errs.n == 0);
    static const hr_header_t h[] = {{"content-type", "application/json"}, {"x-test", "yes"}};
    hr_event_in_t ev = {"0190a7e0-0000-7000-8000-000000000001",
                        "checkout-zone.left",
                        "POST",
                        "/hook",
                        h,
                        2,
                        body,
                        body_len,
                        "2026-01-01T00:00:00.000Z",
                        1767225600000ull,
                        1,
                        false};
    for (int round = 0; round < 2; round++) { /* twice: state kept between events */
        hr_run_result_t res;
        memset(&res, 0, sizeof res);
        hr_ruleset_run_stub(rs, &ev, &res, stub, NULL);
        FUZZ_CHECK(res.run == NULL); /* a synchronous run ends */
        if (res.status == HR_RUN_OK) {
            FUZZ_CHECK(res.store && strcmp(res.store, "77") == 0);
            FUZZ_CHECK(res.nactions <= 20);
            size_t n = 0;
            for (const hr_action_t *a = res.actions; a; a = a->next, n++)
                FUZZ_CHECK(a->name != NULL);
            FUZZ_CHECK(n == res.nactions);
            if (res.reply) FUZZ_CHECK(res.reply->status >= 100 && res.reply->status <= 599);
        } else {
            FUZZ_CHECK(res.status == HR_RUN_RULE_FAILED);
            FUZZ_CHECK(res.error && res.error[0]);
        }
        hr_run_result_free(&res);
    }
    hr_ruleset_unref(rs);
    hr_errors_free(&errs);
    return 0;
}
