/* What the fuzz targets share: a failing check that aborts (libFuzzer reports it as a crash
 * with the input saved), and a temporary folder made once per process. */
#ifndef HR_FUZZ_H
#define HR_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A fresh folder under $TMPDIR (or /dev/shm, where fsync is cheap, else /tmp), made once per
 * process; removed at exit. */
static char fuzz_dir[256];

static inline void fuzz_rm_dir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fuzz_dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", fuzz_dir);
}

static inline const char *fuzz_tmpdir(void)
{
    if (fuzz_dir[0]) return fuzz_dir;
    const char *base = getenv("TMPDIR");
    if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(fuzz_dir, sizeof fuzz_dir, "%s/hr-fuzz-XXXXXX", base);
    FUZZ_CHECK(mkdtemp(fuzz_dir) != NULL);
    atexit(fuzz_rm_dir);
    return fuzz_dir;
}

/* Write p[0..n) to path (truncating). */
static inline void fuzz_write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f != NULL);
    FUZZ_CHECK(fwrite(p, 1, n, f) == n);
    FUZZ_CHECK(fclose(f) == 0);
}

/* The whole file at path, NUL-terminated (caller frees), or abort. */
static inline char *fuzz_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) fprintf(stderr, "cannot open %s\n", path);
    FUZZ_CHECK(f != NULL);
    FUZZ_CHECK(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    FUZZ_CHECK(n >= 0);
    rewind(f);
    char *p = malloc((size_t)n + 1);
    FUZZ_CHECK(p != NULL && fread(p, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    p[n] = '\0';
    if (len) *len = (size_t)n;
    return p;
}

#endif
