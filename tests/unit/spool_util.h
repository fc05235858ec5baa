/* Helpers shared by the spool and outbox unit tests. */
#ifndef HR_TEST_SPOOL_UTIL_H
#define HR_TEST_SPOOL_UTIL_H

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "check.h"
#include "hr/common.h"
#include "hr/outbox.h"
#include "hr/spool.h"

static inline void records_end_cb(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    (void)type;
    (void)p;
    *(size_t *)arg = HR_LOC_OFF(loc) + HR_SPOOL_HDR + n;
}

/* Where the valid records of the segment file path end (its zero tail, if prepared, after). */
static inline size_t records_end(const char *path)
{
    struct stat st;
    CHECK_INT_EQ(stat(path, &st), 0);
    char *b = hr_xmalloc((size_t)st.st_size + 1);
    int fd = open(path, O_RDONLY);
    CHECK_INT_EQ(pread(fd, b, (size_t)st.st_size, 0), st.st_size);
    close(fd);
    size_t end = 0;
    hr_spool_parse(b, (size_t)st.st_size, 0, records_end_cb, &end, NULL);
    free(b);
    return end;
}

/* What a crash in the middle of the last record of the segment file path leaves: its last k
 * bytes never written. Cut off a segment that grows by appends; zeros in a prepared one. */
static inline void tear_last_record(const char *path, size_t k)
{
    struct stat st;
    CHECK_INT_EQ(stat(path, &st), 0);
    size_t end = records_end(path);
    CHECK(end >= k);
    if ((size_t)st.st_size == end) {
        CHECK_INT_EQ(truncate(path, (off_t)(end - k)), 0);
        return;
    }
    char z[64] = {0};
    CHECK(k <= sizeof z);
    int fd = open(path, O_WRONLY);
    CHECK_INT_EQ(pwrite(fd, z, k, (off_t)(end - k)), (ssize_t)k);
    close(fd);
}

/* The newest non-empty segment file of the spool folder d (caller frees), or NULL. */
static inline char *newest_segment(const char *d)
{
    char *best = NULL;
    for (unsigned i = 1; i < 4096; i++) {
        char *p = hr_xasprintf("%s/seg-%016x.hrs", d, i);
        struct stat st;
        if (stat(p, &st) == 0 && st.st_size > 0) {
            free(best);
            best = p;
        } else {
            free(p);
        }
    }
    return best;
}

static inline void count_cb(void *arg)
{
    (*(int *)arg)++;
}

/* Drain (grace 0) and close o, running loop until both callbacks ran; the drain callback
 * must not run inside hr_outbox_drain. */
static inline void shutdown_outbox(uv_loop_t *loop, hr_outbox_t *o)
{
    int drained = 0, closed = 0;
    hr_outbox_drain(o, 0, count_cb, &drained);
    CHECK_INT_EQ(drained, 0);
    while (!drained)
        uv_run(loop, UV_RUN_ONCE);
    hr_outbox_close(o, count_cb, &closed);
    while (!closed)
        uv_run(loop, UV_RUN_ONCE);
}

#endif
