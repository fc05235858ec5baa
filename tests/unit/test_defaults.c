/* Unit test for src/defaults.c: every config key in the defaults table is in README.md's
 * config reference with the same default (HR_README, set by CMake), and the table agrees
 * with what hr_config_load fills in for a minimal config. */
#include "hr/defaults.h"

#include <stdbool.h>
#include <unistd.h>

#include "check.h"
#include "hr/common.h"
#include "hr/config.h"

/* The default cell of key's row in the README's config reference ("| `key` | default |"):
 * its first word, without the backticks if it is one `...` span. NULL if no such row. */
static char *readme_default(const char *readme, const char *key)
{
    char *row = hr_xasprintf("\n| `%s` | ", key);
    const char *p = strstr(readme, row);
    size_t skip = strlen(row);
    free(row);
    if (!p) return NULL;
    p += skip;
    const char *end;
    if (*p == '`') {
        p++;
        end = strchr(p, '`');
    } else {
        end = p + strcspn(p, " |\n");
    }
    return end ? hr_xstrndup(p, (size_t)(end - p)) : NULL;
}

static void test_readme_lists_every_default(void)
{
    size_t len = 0;
    char *readme = hr_read_file(HR_README, &len);
    if (!readme) {
        fprintf(stderr, "cannot read %s\n", HR_README);
        hr_test_failures++;
        return;
    }
    CHECK(hr_ndefaults >= 30);
    for (size_t i = 0; i < hr_ndefaults; i++) {
        const hr_default_t *d = &hr_defaults[i];
        char *got = readme_default(readme, d->key);
        if (!got) {
            fprintf(stderr, "README.md config reference has no row for `%s` (default %s)\n", d->key,
                    d->text);
            hr_test_failures++;
            continue;
        }
        if (strcmp(got, d->text) != 0) {
            fprintf(stderr, "README.md: `%s` has default %s, the code has %s\n", d->key, got,
                    d->text);
            hr_test_failures++;
        }
        free(got);
    }
    free(readme);
}

/* The other way round: every row of the README's config reference that gives a default
 * (not "required" or "none") names a key of the table. */
static void test_table_has_every_readme_default(void)
{
    size_t len = 0;
    char *readme = hr_read_file(HR_README, &len);
    CHECK(readme != NULL);
    if (!readme) return;
    const char *p = strstr(readme, "\n## Config reference");
    CHECK(p != NULL);
    const char *stop = p ? strstr(p + 1, "\n## ") : NULL;
    size_t rows = 0;
    while (p && (p = strstr(p, "\n| `")) && (!stop || p < stop)) {
        p += 4;
        const char *end = strchr(p, '`');
        if (!end) break;
        char *key = hr_xstrndup(p, (size_t)(end - p));
        char *def = readme_default(readme, key);
        rows++;
        bool known = false;
        for (size_t i = 0; i < hr_ndefaults; i++)
            known = known || strcmp(hr_defaults[i].key, key) == 0;
        if (!known && def && strcmp(def, "required") != 0 && strcmp(def, "none") != 0) {
            fprintf(stderr, "README.md documents a default for `%s` (%s) that hr_defaults lacks\n",
                    key, def);
            hr_test_failures++;
        }
        free(def);
        free(key);
    }
    CHECK(rows >= hr_ndefaults);
    free(readme);
}

/* A bad README row is found: the check above can fail. */
static void test_readme_default_parsing(void)
{
    const char *md =
        "x\n| `a` | `\"x y\"` | m |\n| `b` | derived | m |\n| `c` | `0` (none) | m |\n";
    char *v = readme_default(md, "a");
    CHECK_STR_EQ(v, "\"x y\"");
    free(v);
    v = readme_default(md, "b");
    CHECK_STR_EQ(v, "derived");
    free(v);
    v = readme_default(md, "c");
    CHECK_STR_EQ(v, "0");
    free(v);
    CHECK(readme_default(md, "d") == NULL);
}

/* The config loader uses the same values as the table says. */
static void test_config_uses_the_defaults(void)
{
    char dir[] = "/tmp/hr-defaults-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char *path = hr_xasprintf("%s/hookrouter.lua", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (!f) return;
    fputs("return { insecure_no_auth = true, rules = 'rules', endpoints = { ['/x'] = 'x' },\n"
          "  targets = { t = { url = 'http://127.0.0.1:9/' } } }\n",
          f);
    fclose(f);
    hr_errors_t errs = {0};
    hr_config_t *c = hr_config_load(path, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msgs[i]);
    CHECK(c != NULL);
    if (c) {
        CHECK_STR_EQ(c->listen, HR_DEF_LISTEN);
        CHECK_STR_EQ(c->store_key, HR_DEF_STORE_KEY);
        CHECK_STR_EQ(c->log_level, HR_DEF_LOG_LEVEL);
        CHECK_INT_EQ(c->endpoints[0].reply_timeout_ms, HR_DEF_REPLY_TIMEOUT_MS);
        CHECK_INT_EQ(c->limits.body_bytes, HR_DEF_BODY_BYTES);
        CHECK_INT_EQ(c->limits.state_memory_bytes, HR_DEF_STATE_MEMORY_BYTES);
        CHECK_INT_EQ(c->limits.max_connections, HR_DEF_MAX_CONNECTIONS);
        CHECK_INT_EQ(c->max_spool_bytes, HR_DEF_MAX_SPOOL_BYTES);
        CHECK_INT_EQ(c->fsync_mode, 0); /* "always" */
        CHECK_INT_EQ(c->workers, HR_DEF_WORKERS);
        CHECK_INT_EQ(c->shutdown_grace_ms, HR_DEF_SHUTDOWN_GRACE_MS);
        CHECK_INT_EQ(c->ntargets, 1);
        const hr_target_conf_t *t = &c->targets[0];
        CHECK_INT_EQ(t->timeout_ms, HR_DEF_TARGET_TIMEOUT_MS);
        CHECK_INT_EQ(t->max_attempts, HR_DEF_TARGET_MAX_ATTEMPTS);
        CHECK_INT_EQ(t->concurrency, HR_DEF_TARGET_CONCURRENCY);
        CHECK_INT_EQ(t->circuit_failures, HR_DEF_TARGET_CIRCUIT_FAILURES);
        CHECK_INT_EQ(t->circuit_probe_ms, HR_DEF_TARGET_CIRCUIT_PROBE_MS);
        CHECK_INT_EQ(t->nretry, hr_def_nretry);
        for (size_t i = 0; i < t->nretry && i < hr_def_nretry; i++)
            CHECK_INT_EQ(t->retry_ms[i], hr_def_retry_ms[i]);
        CHECK_INT_EQ(c->nwrite_retry, hr_def_nretry);
        char *dl = hr_path_join(dir, HR_DEF_DEAD_LETTERS);
        CHECK_STR_EQ(c->dead_letters, dl);
        free(dl);
        char *sp = hr_path_join(dir, HR_DEF_SPOOL_DIR);
        CHECK_STR_EQ(c->spool_dir, sp);
        free(sp);
    }
    hr_config_free(c);
    hr_errors_free(&errs);
    unlink(path);
    rmdir(dir);
    free(path);
}

int main(void)
{
    test_readme_default_parsing();
    test_readme_lists_every_default();
    test_table_has_every_readme_default();
    test_config_uses_the_defaults();
    return CHECK_DONE("test_defaults");
}
