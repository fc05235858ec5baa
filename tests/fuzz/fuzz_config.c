/* Fuzz config loading: arbitrary Lua text as the config file. hr_config_load must return a
 * config or errors, never crash or leak. The config's own code runs under the loader's fixed
 * budget (10 million instructions, 64 MiB), so loops end with an error; what that budget
 * does not cover (a C function such as string.find spending long on one call) shows up as a
 * libFuzzer timeout (scripts/fuzz.sh sets -timeout). */
#include "fuzz.h"
#include "hr/config.h"
#include "hr/log.h"

static char path[300];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    hr_log_set_level(HR_LOG_ERROR);
    snprintf(path, sizeof path, "%s/hookrouter.lua", fuzz_tmpdir());
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write_file(path, data, size);
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(path, &errs);
    if (c) {
        FUZZ_CHECK(errs.n == 0);
        FUZZ_CHECK(c->listen && c->rules_dir && c->nendpoints > 0);
        for (size_t i = 0; i < c->nendpoints; i++)
            FUZZ_CHECK(hr_config_endpoint(c, c->endpoints[i].path) != NULL);
        hr_config_free(c);
    } else {
        FUZZ_CHECK(errs.n > 0);
        for (size_t i = 0; i < errs.n; i++)
            FUZZ_CHECK(errs.msgs[i] && errs.msgs[i][0]);
    }
    hr_errors_free(&errs);
    return 0;
}
