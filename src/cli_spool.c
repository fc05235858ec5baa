/* The dead-letter and spool commands: deadletters, replay, spool (see include/hr/cli_spool.h).
 *
 * They never open the spool for writing: `spool` scans the segments read-only, and `replay`
 * hands its actions to the router through <spool_dir>/incoming/ (a file written whole, synced,
 * then renamed into place), so both are safe while a router runs. With outbox = { kind =
 * "redis" } all three work on Redis instead (hr/redis_admin.h): the dead letters of every node
 * in <prefix>:dead, replay as new stream entries (what was replayed in <prefix>:replayed), the
 * backlog per target. */
#include "hr/cli_spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "hr/config.h"
#include "hr/deadletter.h"
#include "hr/defaults.h"
#ifdef HR_HAVE_REDIS
#include "hr/redis_admin.h"
#endif
#include "hr/spool.h"
#include "hr/spool_index.h"

/* Load the config, printing its errors. NULL on failure. */
static hr_config_t *load_config(const char *config)
{
    hr_errors_t errs = {0};
    hr_config_t *cfg = hr_config_load(config, &errs);
    for (size_t i = 0; i < errs.n; i++)
        fprintf(stderr, "%s\n", errs.msgs[i]);
    hr_errors_free(&errs);
    return cfg;
}

/* Parse TIME: RFC 3339, or an age "<n>s|m|h|d" before now. Returns 0 or -1. */
static int parse_since(const char *s, uint64_t *ms)
{
    if (hr_rfc3339_parse(s, ms) == 0) return 0;
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (end == s) return -1;
    uint64_t unit = 0;
    if (strcmp(end, "s") == 0)
        unit = 1000;
    else if (strcmp(end, "m") == 0)
        unit = 60000;
    else if (strcmp(end, "h") == 0)
        unit = 3600000;
    else if (strcmp(end, "d") == 0)
        unit = 86400000;
    else
        return -1;
    uint64_t now = hr_wall_ms(), ago = (uint64_t)n * unit;
    *ms = ago > now ? 0 : now - ago;
    return 0;
}

/* ---- Reading dead letters --------------------------------------------------------------- */

/* True if the dead letter d passes the filters. */
static bool dl_matches(const hr_deadletter_t *d, const char *target, uint64_t since, const char *id)
{
    if (target && !(d->target && strcmp(d->target, target) == 0) &&
        !(d->file && strcmp(d->file, target) == 0))
        return false;
    if (since) {
        uint64_t at;
        if (!d->dead_at || hr_rfc3339_parse(d->dead_at, &at) != 0 || at < since) return false;
    }
    if (id && strcmp(d->key, id) != 0 && !(d->event_id && strcmp(d->event_id, id) == 0))
        return false;
    return true;
}

/* What each_dead_letter filters on and calls. */
typedef struct {
    const char *target;
    uint64_t since;
    const char *id;
    void (*fn)(void *arg, hr_deadletter_t *d);
    void *arg;
    long count; /* lines that parsed */
} dl_walk_t;

/* One line (without its newline; where: its place for a message): parse, filter, fn. */
static void dl_line(dl_walk_t *w, const char *line, size_t n, const char *where)
{
    hr_deadletter_t d;
    if (hr_deadletter_parse(line, n, &d) != 0) {
        fprintf(stderr, "hookrouter: %s: not a JSON line, skipped\n", where);
        return;
    }
    w->count++;
    if (dl_matches(&d, w->target, w->since, w->id)) w->fn(w->arg, &d);
    hr_deadletter_free(&d);
}

#ifdef HR_HAVE_REDIS
static void dl_redis_line(void *arg, const char *line, size_t len)
{
    dl_line(arg, line, len, "redis dead letter");
}
#endif

/* Call fn for each dead letter of path that matches. Returns the lines read, or -1 with a
 * message printed (a missing file has none). */
static long each_dead_letter(const char *path, const char *target, uint64_t since, const char *id,
                             void (*fn)(void *arg, hr_deadletter_t *d), void *arg)
{
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (errno == ENOENT) return 0;
        fprintf(stderr, "hookrouter: dead letters %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    dl_walk_t w = {target, since, id, fn, arg, 0};
    while ((n = getline(&line, &cap, fp)) > 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0) continue;
        char where[4200];
        snprintf(where, sizeof where, "%s:%ld", path, lineno);
        dl_line(&w, line, (size_t)n, where);
    }
    free(line);
    fclose(fp);
    return w.count;
}

/* each_dead_letter on cfg's dead letters: its file, or with outbox.kind = "redis" the stream
 * <prefix>:dead (every node's). */
static long each_dead_letter_in(const hr_config_t *cfg, const char *target, uint64_t since,
                                const char *id, void (*fn)(void *arg, hr_deadletter_t *d),
                                void *arg)
{
#ifdef HR_HAVE_REDIS
    if (cfg->outbox.kind == HR_OUTBOX_REDIS) {
        char err[512];
        hr_redis_admin_t *r = hr_redis_admin_open(cfg, err, sizeof err);
        dl_walk_t w = {target, since, id, fn, arg, 0};
        long n = r ? hr_redis_admin_each_dead(r, dl_redis_line, &w, err, sizeof err) : -1;
        hr_redis_admin_close(r);
        if (n < 0) fprintf(stderr, "hookrouter: dead letters: %s\n", err);
        return n < 0 ? -1 : w.count;
    }
#endif
    return each_dead_letter(cfg->dead_letters, target, since, id, fn, arg);
}

/* ---- deadletters ------------------------------------------------------------------------ */

static void print_dl(void *arg, hr_deadletter_t *d)
{
    (void)arg;
    fwrite(d->line, 1, d->len, stdout);
    fputc('\n', stdout);
}

int hr_cmd_deadletters(const char *config, const char *target, const char *since)
{
    uint64_t since_ms = 0;
    if (since && parse_since(since, &since_ms) != 0) {
        fprintf(stderr,
                "hookrouter deadletters: --since wants RFC 3339 or an age like 2h, got "
                "'%s'\n",
                since);
        return 2;
    }
    hr_config_t *cfg = load_config(config);
    if (!cfg) return 1;
    long n = each_dead_letter_in(cfg, target, since_ms, NULL, print_dl, NULL);
    hr_config_free(cfg);
    return n < 0 ? 1 : 0;
}

/* ---- replay ----------------------------------------------------------------------------- */

typedef struct {
    const hr_config_t *cfg;
    char **done; /* keys already replayed */
    size_t ndone;
    hr_buf_t file;     /* framed ACTION records */
    hr_action_t *acts; /* the same as actions, for Redis */
    hr_buf_t enc;      /* scratch */
    char **keys;       /* keys replayed now */
    size_t nkeys;      /* ... */
    size_t skipped;    /* already replayed */
    size_t unplayable; /* rule failures, malformed lines */
} replay_t;

static bool already(const replay_t *rp, const char *key)
{
    for (size_t i = 0; i < rp->ndone; i++)
        if (strcmp(rp->done[i], key) == 0) return true;
    for (size_t i = 0; i < rp->nkeys; i++)
        if (strcmp(rp->keys[i], key) == 0) return true;
    return false;
}

/* The action to replay for dead letter d: as it was, with each redacted credential taken
 * from its target in the config (a header the config does not set is left out, with a
 * warning) and the target's timeout and attempts. NULL if it is not an undeliverable action. */
static hr_action_t *action_from_dl(const replay_t *rp, const hr_deadletter_t *d)
{
    hr_action_t *a = hr_deadletter_action(d);
    if (!a) return NULL;
    if (a->kind == HR_ACTION_WRITE) return a;
    const hr_target_conf_t *t = hr_config_target(rp->cfg, a->name);
    bool has_id = false;
    size_t kept = 0;
    for (size_t i = 0; i < a->nheaders; i++) {
        hr_header_t h = a->headers[i];
        if (strcmp(h.value, HR_REDACTED) == 0) { /* the credential comes from the config now */
            const char *v = NULL;
            for (size_t k = 0; t && k < t->nheaders && !v; k++)
                if (strcasecmp(t->headers[k].name, h.name) == 0) v = t->headers[k].value;
            if (!v) {
                fprintf(stderr,
                        "hookrouter replay: %s: header %s was redacted and target '%s' in the "
                        "config does not set it: replayed without it\n",
                        d->key, h.name, a->name);
                hr_action_str_free(a, h.name);
                hr_action_str_free(a, h.value);
                continue;
            }
            hr_action_str_free(a, h.value);
            h.value = hr_action_strdup(a, v);
        }
        a->headers[kept++] = h;
        has_id = has_id || strcasecmp(h.name, "X-Hookrouter-Event-Id") == 0;
    }
    a->nheaders = kept;
    if (!has_id && a->event_id[0]) hr_action_add_header(a, "X-Hookrouter-Event-Id", a->event_id);
    a->timeout_ms = t ? t->timeout_ms : HR_DEF_TARGET_TIMEOUT_MS;
    a->max_attempts = t ? t->max_attempts : HR_DEF_TARGET_MAX_ATTEMPTS;
    return a;
}

static void replay_one(void *arg, hr_deadletter_t *d)
{
    replay_t *rp = arg;
    if (already(rp, d->key)) {
        rp->skipped++;
        return;
    }
    hr_action_t *a = action_from_dl(rp, d);
    if (!a) {
        rp->unplayable++;
        return;
    }
    if (rp->cfg->outbox.kind == HR_OUTBOX_REDIS) {
        a->next = rp->acts;
        rp->acts = a;
    } else {
        hr_buf_reset(&rp->enc);
        hr_spool_encode_action(&rp->enc, a, 0);
        hr_spool_frame(&rp->file, HR_REC_ACTION, rp->enc.data, rp->enc.len);
        hr_action_free(a);
    }
    rp->keys = hr_xrealloc(rp->keys, (rp->nkeys + 1) * sizeof *rp->keys);
    rp->keys[rp->nkeys++] = hr_xstrdup(d->key);
}

/* Write data to path whole and durably (temp file, fsync, rename, fsync the folder).
 * Returns 0 or -1 with a message printed. */
static int write_durably(const char *dir, const char *name, const char *data, size_t len)
{
    char *tmp = hr_xasprintf("%s/.%s.tmp", dir, name), *path = hr_xasprintf("%s/%s", dir, name);
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "hookrouter replay: %s: %s\n", tmp, strerror(errno));
        goto out;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t k = write(fd, data + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            fprintf(stderr, "hookrouter replay: write %s: %s\n", tmp, strerror(errno));
            close(fd);
            unlink(tmp);
            goto out;
        }
        off += (size_t)k;
    }
    if (fsync(fd) < 0 || close(fd) < 0 || rename(tmp, path) < 0) {
        fprintf(stderr, "hookrouter replay: %s: %s\n", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out:
    free(tmp);
    free(path);
    return rc;
}

/* Free what a replay_t holds. */
static void replay_free(replay_t *rp)
{
    for (size_t i = 0; i < rp->ndone; i++)
        free(rp->done[i]);
    free(rp->done);
    for (size_t i = 0; i < rp->nkeys; i++)
        free(rp->keys[i]);
    free(rp->keys);
    hr_action_list_free(rp->acts);
    hr_buf_free(&rp->file);
    hr_buf_free(&rp->enc);
}

/* replay with outbox.kind = "redis": the dead letters of <prefix>:dead not in
 * <prefix>:replayed become new entries of their streams (one MULTI with the SADDs). */
static int replay_redis(const hr_config_t *cfg, const char *target, uint64_t since_ms,
                        const char *id)
{
#ifdef HR_HAVE_REDIS
    char err[512];
    int status = 1;
    replay_t rp = {.cfg = cfg};
    hr_redis_admin_t *r = hr_redis_admin_open(cfg, err, sizeof err);
    if (!r || hr_redis_admin_replayed(r, &rp.done, &rp.ndone, err, sizeof err) < 0) {
        fprintf(stderr, "hookrouter replay: %s\n", err);
        goto out;
    }
    if (each_dead_letter_in(cfg, target, since_ms, id, replay_one, &rp) < 0) goto out;
    if (rp.nkeys && hr_redis_admin_replay(r, rp.acts, rp.keys, rp.nkeys, err, sizeof err) < 0) {
        fprintf(stderr, "hookrouter replay: %s (nothing replayed)\n", err);
        goto out;
    }
    printf("replayed %zu dead letters into redis %s:%d (%zu already replayed, %zu not "
           "replayable); the routers deliver them at once\n",
           rp.nkeys, cfg->outbox.host, cfg->outbox.port, rp.skipped, rp.unplayable);
    status = 0;
out:
    hr_redis_admin_close(r);
    replay_free(&rp);
    return status;
#else
    (void)cfg, (void)target, (void)since_ms, (void)id;
    return 1; /* the config refuses kind = "redis" without Redis support */
#endif
}

int hr_cmd_replay(const char *config, const char *target, const char *since, const char *id)
{
    uint64_t since_ms = 0;
    if (since && parse_since(since, &since_ms) != 0) {
        fprintf(stderr, "hookrouter replay: --since wants RFC 3339 or an age like 2h, got '%s'\n",
                since);
        return 2;
    }
    hr_config_t *cfg = load_config(config);
    if (!cfg) return 1;
    if (cfg->outbox.kind == HR_OUTBOX_REDIS) {
        int st = replay_redis(cfg, target, since_ms, id);
        hr_config_free(cfg);
        return st;
    }
    int status = 1;
    replay_t rp = {.cfg = cfg};
    char *done_path = hr_xasprintf("%s.replayed", cfg->dead_letters);
    FILE *fp = fopen(done_path, "r");
    if (fp) {
        char buf[256];
        while (fgets(buf, sizeof buf, fp)) {
            buf[strcspn(buf, "\r\n")] = '\0';
            if (!buf[0]) continue;
            rp.done = hr_xrealloc(rp.done, (rp.ndone + 1) * sizeof *rp.done);
            rp.done[rp.ndone++] = hr_xstrdup(buf);
        }
        fclose(fp);
    }
    if (each_dead_letter(cfg->dead_letters, target, since_ms, id, replay_one, &rp) < 0) goto out;
    if (rp.nkeys == 0) {
        printf("replayed 0 dead letters (%zu already replayed, %zu not replayable)\n", rp.skipped,
               rp.unplayable);
        status = 0;
        goto out;
    }
    char *incoming = hr_xasprintf("%s/incoming", cfg->spool_dir);
    char name[96];
    snprintf(name, sizeof name, "replay-%llu-%d.hrs", (unsigned long long)hr_wall_ms(),
             (int)getpid());
    if (hr_mkdir_p(incoming) != 0 ||
        write_durably(incoming, name, rp.file.data, rp.file.len) != 0) {
        fprintf(stderr, "hookrouter replay: cannot write into %s\n", incoming);
        free(incoming);
        goto out;
    }
    /* Record what was replayed (after the file is in place: a crash in between replays again,
     * it never loses). */
    hr_buf_t ids = HR_BUF_INIT;
    for (size_t i = 0; i < rp.nkeys; i++)
        hr_buf_printf(&ids, "%s\n", rp.keys[i]);
    int fd = open(done_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, ids.data, ids.len) != (ssize_t)ids.len || fsync(fd) < 0)
        fprintf(stderr, "hookrouter replay: warning: cannot record the replay in %s: %s\n",
                done_path, strerror(errno));
    if (fd >= 0) close(fd);
    hr_buf_free(&ids);
    printf("replayed %zu dead letters into %s/%s (%zu already replayed, %zu not replayable); "
           "a running router takes them within a second, else the next start does\n",
           rp.nkeys, incoming, name, rp.skipped, rp.unplayable);
    free(incoming);
    status = 0;
out:
    replay_free(&rp);
    free(done_path);
    hr_config_free(cfg);
    return status;
}

/* ---- spool ------------------------------------------------------------------------------ */

/* One target's (or file's) pending actions, as the spool's records fold them. */
typedef struct {
    char *name;      /* the target, or "file:<name>" for a write */
    size_t depth;    /* pending actions */
    uint64_t oldest; /* the oldest one's acceptance (wall ms), 0 if none */
    uint64_t next;   /* the next attempt due (wall ms), UINT64_MAX if none */
} sp_target_t;

/* Every target named by an action of the spool, in the order the records first name them. */
typedef struct {
    sp_target_t **v;
    size_t n;
} sp_targets_t;

/* The target of an action that starts an index entry (hr_spool_index_add_cb). */
static void *sp_target(void *arg, const hr_spool_action_meta_t *m)
{
    sp_targets_t *ts = arg;
    char name[300];
    if (m->kind == HR_ACTION_WRITE)
        snprintf(name, sizeof name, "file:%.*s", (int)m->name_len, m->name ? m->name : "");
    else
        snprintf(name, sizeof name, "%.*s", (int)m->name_len, m->name ? m->name : "-");
    for (size_t t = 0; t < ts->n; t++)
        if (strcmp(ts->v[t]->name, name) == 0) return ts->v[t];
    sp_target_t *t = hr_xcalloc(1, sizeof *t);
    t->name = hr_xstrdup(name);
    t->next = UINT64_MAX;
    ts->v = hr_xrealloc(ts->v, (ts->n + 1) * sizeof *ts->v);
    ts->v[ts->n++] = t;
    return t;
}

/* Count a pending action in its target. */
static void sp_count(void *arg, const hr_spool_entry_t *e)
{
    (void)arg;
    sp_target_t *t = e->user;
    t->depth++;
    if (!t->oldest || e->accepted_ms < t->oldest) t->oldest = e->accepted_ms;
    uint64_t due = e->next_due_ms ? e->next_due_ms : e->accepted_ms;
    if (due < t->next) t->next = due;
}

/* Format a duration in ms as "3d4h", "2h5m", "4m10s", "12s" or "0s". */
static void fmt_age(uint64_t ms, char *out, size_t n)
{
    uint64_t s = ms / 1000;
    if (s >= 86400)
        snprintf(out, n, "%llud%lluh", (unsigned long long)(s / 86400),
                 (unsigned long long)(s % 86400 / 3600));
    else if (s >= 3600)
        snprintf(out, n, "%lluh%llum", (unsigned long long)(s / 3600),
                 (unsigned long long)(s % 3600 / 60));
    else if (s >= 60)
        snprintf(out, n, "%llum%llus", (unsigned long long)(s / 60), (unsigned long long)(s % 60));
    else
        snprintf(out, n, "%llus", (unsigned long long)s);
}

/* The skipped ranges and empty segments of the scan, printed after its summary line. */
typedef struct {
    hr_spool_gap_t *v;
    size_t n, cap;
} sp_gaps_t;

static void on_scan_gap(void *arg, const hr_spool_gap_t *g)
{
    sp_gaps_t *gs = arg;
    if (gs->n == gs->cap) {
        gs->cap = gs->cap ? gs->cap * 2 : 8;
        gs->v = hr_xrealloc(gs->v, gs->cap * sizeof *gs->v);
    }
    gs->v[gs->n++] = *g;
}

int hr_cmd_spool(const char *config)
{
    hr_config_t *cfg = load_config(config);
    if (!cfg) return 1;
#ifdef HR_HAVE_REDIS
    if (cfg->outbox.kind == HR_OUTBOX_REDIS) {
        char err[512];
        hr_redis_admin_t *r = hr_redis_admin_open(cfg, err, sizeof err);
        int rc = r ? hr_redis_admin_report(r, err, sizeof err) : -1;
        if (rc < 0) fprintf(stderr, "hookrouter spool: %s\n", err);
        hr_redis_admin_close(r);
        hr_config_free(cfg);
        return rc < 0 ? 1 : 0;
    }
#endif
    sp_targets_t ts = {0};
    hr_spool_index_t *ix = hr_spool_index_create(sp_target, &ts);
    hr_spool_stats_t st;
    char err[512];
    sp_gaps_t gs = {0};
    int status = 1;
    if (hr_spool_scan_dir_gaps(cfg->spool_dir, hr_spool_index_on_rec, ix, on_scan_gap, &gs, &st,
                               err, sizeof err) < 0) {
        fprintf(stderr, "hookrouter spool: %s\n", err);
        goto out;
    }
    uint64_t now = hr_wall_ms();
    printf("spool %s: %llu segment(s), %llu bytes", cfg->spool_dir, (unsigned long long)st.segments,
           (unsigned long long)st.bytes);
    if (st.disk_bytes != st.bytes) /* zeros written ahead in the segment being written */
        printf(" (%llu on disk)", (unsigned long long)st.disk_bytes);
    if (st.corrupt_ranges)
        printf(", %llu skipped range(s), %llu bytes, %llu record(s) lost",
               (unsigned long long)st.corrupt_ranges, (unsigned long long)st.corrupt_bytes,
               (unsigned long long)st.corrupt);
    for (size_t i = 0; i < gs.n; i++) {
        char line[160];
        hr_spool_gap_format(line, sizeof line, &gs.v[i]);
        printf("\n%s", line);
    }
    printf("\n%-24s %8s %12s %s\n", "target", "depth", "oldest_age", "next_attempt");
    hr_spool_index_each(ix, sp_count, NULL);
    for (size_t i = 0; i < ts.n; i++) {
        const sp_target_t *t = ts.v[i];
        if (!t->depth) continue;
        char age[32], nx[80], at[32];
        fmt_age(now - (t->oldest < now ? t->oldest : now), age, sizeof age);
        hr_rfc3339(t->next, at);
        if (t->next <= now) {
            snprintf(nx, sizeof nx, "now (due %s)", at);
        } else {
            char in[32];
            fmt_age(t->next - now, in, sizeof in);
            snprintf(nx, sizeof nx, "in %s (%s)", in, at);
        }
        printf("%-24s %8zu %12s %s\n", t->name, t->depth, age, nx);
    }
    printf("total pending: %zu\n", hr_spool_index_count(ix));
    status = 0;
out:
    free(gs.v);
    hr_spool_index_destroy(ix);
    for (size_t i = 0; i < ts.n; i++) {
        free(ts.v[i]->name);
        free(ts.v[i]);
    }
    free(ts.v);
    hr_config_free(cfg);
    return status;
}
