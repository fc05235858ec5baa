/* Helpers shared by the spool and outbox unit tests. */
#ifndef HR_TEST_SPOOL_UTIL_H
#define HR_TEST_SPOOL_UTIL_H

#include <stdlib.h>
#include <sys/stat.h>
#include <uv.h>

#include "check.h"
#include "hr/common.h"
#include "hr/outbox.h"

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
