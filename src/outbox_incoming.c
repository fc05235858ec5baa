/* The outbox's replay folder: the files `hookrouter replay` drops into <spool_dir>/incoming/
 * are renamed, read and pushed as new actions, and removed once those are durable. Part of
 * the outbox (src/outbox.c; the shared types in src/outbox_int.h, the contract in
 * include/hr/outbox.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hr/log.h"
#include "outbox_int.h"

/* ---- Incoming (replay) ------------------------------------------------------------------ */

typedef struct {
    hr_action_t *head;
    hr_action_t *tail;
    size_t bad;
} incoming_t;

static void on_incoming_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    incoming_t *in = arg;
    (void)loc;
    if (type != HR_REC_ACTION) return;
    hr_action_t *a = hr_spool_decode_action(p, n, NULL);
    if (!a) {
        in->bad++;
        return;
    }
    if (in->tail)
        in->tail->next = a;
    else
        in->head = a;
    in->tail = a;
}

/* Take in one incoming file. Returns 0 or < 0 (left for the next scan). */
static int take_incoming(hr_outbox_t *o, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -errno;
    }
    char *data = hr_xmalloc((size_t)st.st_size + 1);
    ssize_t got = 0;
    while (got < st.st_size) {
        ssize_t k = read(fd, data + got, (size_t)(st.st_size - got));
        if (k <= 0) break;
        got += k;
    }
    close(fd);
    incoming_t in = {0};
    uint64_t corrupt = hr_spool_parse(data, (size_t)got, 0, on_incoming_rec, &in, NULL);
    free(data);
    if (corrupt || in.bad)
        hr_log_warn("replay: %s: %llu corrupt record(s) skipped", path,
                    (unsigned long long)(corrupt + in.bad));
    if (!in.head) {
        unlink(path);
        return 0;
    }
    int rc = ob_push_list(o, in.head, NULL, NULL, path);
    if (rc < 0)
        hr_log_warn("replay: cannot take %s now (%s); trying again in a second", path,
                    strerror(-rc));
    return rc;
}

void ob_on_incoming_timer(uv_timer_t *h)
{
    hr_outbox_t *o = h->data;
    if (o->closing || !o->spool) return;
    DIR *d = opendir(o->incoming_dir);
    if (!d) return;
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        bool fresh = len > 4 && strcmp(e->d_name + len - 4, ".hrs") == 0;
        bool left = len > 10 && strcmp(e->d_name + len - 10, ".hrs.taken") == 0;
        if (!fresh && !(left && !o->incoming_scanned)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            names = hr_xrealloc(names, cap * sizeof *names);
        }
        names[n++] = hr_xasprintf("%s/%s", o->incoming_dir, e->d_name);
    }
    closedir(d);
    /* A fresh file is renamed first, so it is never taken twice while its commit runs; the
     * first scan also takes ".taken" files a crash left behind (a duplicate is possible, a
     * loss is not). */
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if (strcmp(names[i] + len - 6, ".taken") == 0) {
            take_incoming(o, names[i]);
        } else {
            char *taken = hr_xasprintf("%s.taken", names[i]);
            if (rename(names[i], taken) == 0 && take_incoming(o, taken) < 0)
                rename(taken, names[i]);
            free(taken);
        }
        free(names[i]);
    }
    free(names);
    o->incoming_scanned = true;
}
