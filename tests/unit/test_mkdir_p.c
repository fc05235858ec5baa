/* Unit tests for hr_mkdir_p (src/common.c): mkdir -p with mode 0700, what counts as an error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "hr/common.h"

/* Permission bits of path, or -1 if it is not a directory. */
static int dir_mode(const char *path)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode)) return -1;
    return (int)(st.st_mode & 0777);
}

static void test_creates_every_parent_0700(const char *root)
{
    mode_t old = umask(0);
    char *deep = hr_xasprintf("%s/a/b/c", root);
    CHECK_INT_EQ(hr_mkdir_p(deep), 0);
    CHECK_INT_EQ(dir_mode(deep), 0700);
    char *mid = hr_xasprintf("%s/a/b", root);
    CHECK_INT_EQ(dir_mode(mid), 0700);
    /* Existing folders are fine, whatever their mode; a trailing or doubled '/' too. */
    CHECK_INT_EQ(chmod(mid, 0755), 0);
    CHECK_INT_EQ(hr_mkdir_p(deep), 0);
    CHECK_INT_EQ(dir_mode(mid), 0755);
    char *slashes = hr_xasprintf("%s//a/b//d/", root);
    CHECK_INT_EQ(hr_mkdir_p(slashes), 0);
    char *d = hr_xasprintf("%s/a/b/d", root);
    CHECK_INT_EQ(dir_mode(d), 0700);
    CHECK_INT_EQ(hr_mkdir_p("/"), 0);
    umask(old);
    free(d);
    free(slashes);
    free(mid);
    free(deep);
}

static void test_relative(const char *root)
{
    char *cwd = getcwd(NULL, 0);
    CHECK(cwd != NULL);
    CHECK_INT_EQ(chdir(root), 0);
    CHECK_INT_EQ(hr_mkdir_p("rel/x"), 0);
    CHECK(dir_mode("rel/x") >= 0);
    CHECK_INT_EQ(hr_mkdir_p("r"), 0);
    CHECK(dir_mode("r") >= 0);
    CHECK_INT_EQ(chdir(cwd), 0);
    free(cwd);
}

static void test_errors(const char *root)
{
    CHECK_INT_EQ(hr_mkdir_p(""), -ENOENT);
    char *file = hr_xasprintf("%s/plain", root);
    FILE *fp = fopen(file, "w");
    CHECK(fp != NULL);
    if (fp) fclose(fp);
    /* A regular file where a folder should be: as the last component, and in the middle. */
    CHECK_INT_EQ(hr_mkdir_p(file), -ENOTDIR);
    char *below = hr_xasprintf("%s/plain/sub/x", root);
    CHECK_INT_EQ(hr_mkdir_p(below), -ENOTDIR);
    CHECK(dir_mode(below) < 0);
    free(below);
    free(file);
}

int main(void)
{
    char tmpl[] = "/tmp/hr_test_mkdir.XXXXXX";
    const char *root = mkdtemp(tmpl);
    CHECK(root != NULL);
    if (!root) return CHECK_DONE("test_mkdir_p");
    test_creates_every_parent_0700(root);
    test_relative(root);
    test_errors(root);
    char *cmd = hr_xasprintf("rm -rf '%s'", root);
    CHECK_INT_EQ(system(cmd), 0);
    free(cmd);
    return CHECK_DONE("test_mkdir_p");
}
