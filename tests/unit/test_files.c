/* Unit tests for src/files.c: append-only files (modes, reopen, torn tails). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "hr/files.h"

/* Remove a directory tree made by a test. */
static void rm_rf(const char *dir)
{
    char *cmd = hr_xasprintf("rm -rf '%s'", dir);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
}

static void test_append_and_reopen(const char *root)
{
    hr_files_t *f = hr_files_create();
    char err[256] = "";
    char *path = hr_xasprintf("%s/a/b/c/out.jsonl", root);
    CHECK_INT_EQ(hr_files_append(f, path, "{\"n\":1}", 7, err, sizeof err), 0);
    CHECK_INT_EQ(hr_files_append(f, path, "{\"n\":2}", 7, err, sizeof err), 0);
    char *s = hr_read_file(path, NULL);
    CHECK_STR_EQ(s, "{\"n\":1}\n{\"n\":2}\n");
    free(s);

    /* A second table (another process, or after restart) appends, never truncates. */
    hr_files_t *f2 = hr_files_create();
    CHECK_INT_EQ(hr_files_append(f2, path, "x", 1, err, sizeof err), 0);
    hr_files_destroy(f2);
    s = hr_read_file(path, NULL);
    CHECK_STR_EQ(s, "{\"n\":1}\n{\"n\":2}\nx\n");
    free(s);

    /* logrotate: rename, the old fd keeps writing to the renamed file until reopen. */
    char *rotated = hr_xasprintf("%s.1", path);
    CHECK_INT_EQ(rename(path, rotated), 0);
    CHECK_INT_EQ(hr_files_append(f, path, "late", 4, err, sizeof err), 0);
    hr_files_reopen(f);
    CHECK_INT_EQ(hr_files_append(f, path, "fresh", 5, err, sizeof err), 0);
    s = hr_read_file(path, NULL);
    CHECK_STR_EQ(s, "fresh\n");
    free(s);
    s = hr_read_file(rotated, NULL);
    CHECK_STR_EQ(s, "{\"n\":1}\n{\"n\":2}\nx\nlate\n");
    free(s);

    /* Failure: a parent that is a regular file. */
    char *bad = hr_xasprintf("%s/out.jsonl/sub/x.jsonl", rotated);
    int rc = hr_files_append(f, bad, "y", 1, err, sizeof err);
    CHECK(rc < 0);
    CHECK(strstr(err, "open") != NULL);

    /* Many paths at once (table growth). */
    for (int i = 0; i < 20; i++) {
        char *p = hr_xasprintf("%s/many/%d.jsonl", root, i);
        CHECK_INT_EQ(hr_files_append(f, p, "l", 1, err, sizeof err), 0);
        free(p);
    }
    free(bad);
    free(rotated);
    free(path);
    hr_files_destroy(f);
}

/* Mode of path's permission bits, or -1. */
static int mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int)(st.st_mode & 0777) : -1;
}

/* Regression (issue 9.5): files the router creates are 0600 and their new folders 0700, whatever
 * the umask; files.<name>.mode sets another mode for new files; an existing file keeps its
 * mode. */
static void test_modes(const char *root)
{
    mode_t old = umask(0);
    char err[256] = "";
    hr_files_t *f = hr_files_create();
    char *dir = hr_xasprintf("%s/modes", root);
    char *priv = hr_xasprintf("%s/modes/sub/dead.jsonl", root);
    char *shared = hr_xasprintf("%s/modes/shared.jsonl", root);
    char *existing = hr_xasprintf("%s/modes/existing.jsonl", root);
    hr_file_conf_t conf[] = {{.name = "shared", .path = shared, .mode = HR_FILE_MODE_SET | 0640},
                             {.name = "existing", .path = existing, .mode = HR_FILE_MODE_SET | 0}};
    hr_files_set_modes(f, conf, 2);
    CHECK_INT_EQ(hr_files_append(f, priv, "x", 1, err, sizeof err), 0);
    CHECK_INT_EQ(mode_of(priv), 0600);
    CHECK_INT_EQ(mode_of(dir), 0700);
    char *sub = hr_xasprintf("%s/modes/sub", root);
    CHECK_INT_EQ(mode_of(sub), 0700);
    CHECK_INT_EQ(hr_files_append(f, shared, "y", 1, err, sizeof err), 0);
    CHECK_INT_EQ(mode_of(shared), 0640);
    /* An existing file is appended to and keeps its mode (0644 here, configured 0000). */
    FILE *fp = fopen(existing, "w");
    CHECK(fp != NULL);
    if (fp) fclose(fp);
    CHECK_INT_EQ(chmod(existing, 0644), 0);
    CHECK_INT_EQ(hr_files_append(f, existing, "z", 1, err, sizeof err), 0);
    CHECK_INT_EQ(mode_of(existing), 0644);
    char *s = hr_read_file(existing, NULL);
    CHECK_STR_EQ(s, "z\n");
    free(s);
    umask(old);
    hr_files_destroy(f);
    free(sub);
    free(existing);
    free(shared);
    free(priv);
    free(dir);
}

/* Regression (issue 9.3): a file whose last line was cut short (no '\n' at the end) gets a
 * '\n' before the next line, so the new line is whole and on its own. */
static void test_torn_tail(const char *root)
{
    char err[256] = "";
    char *path = hr_xasprintf("%s/torn.jsonl", root);
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL);
    if (!fp) return;
    fputs("{\"n\":1}\n{\"n\":", fp);
    fclose(fp);
    hr_files_t *f = hr_files_create();
    CHECK_INT_EQ(hr_files_append(f, path, "{\"n\":3}", 7, err, sizeof err), 0);
    CHECK_INT_EQ(hr_files_append(f, path, "{\"n\":4}", 7, err, sizeof err), 0);
    hr_files_reopen(f); /* a whole file: nothing added on reopen */
    CHECK_INT_EQ(hr_files_append(f, path, "{\"n\":5}", 7, err, sizeof err), 0);
    char *s = hr_read_file(path, NULL);
    CHECK_STR_EQ(s, "{\"n\":1}\n{\"n\":\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n");
    free(s);
    hr_files_destroy(f);
    free(path);
}

int main(void)
{
    char tmpl[] = "/tmp/hr_test_files.XXXXXX";
    const char *root = mkdtemp(tmpl);
    CHECK(root != NULL);
    if (!root) return 1;
    test_append_and_reopen(root);
    test_modes(root);
    test_torn_tail(root);
    rm_rf(root);
    return CHECK_DONE("test_files");
}
