/* The Redis outbox from the command line: dead letters from <prefix>:dead, replay as new stream
 * entries, the backlog per target (see include/hr/redis_admin.h). Blocking hiredis. */
#include "hr/redis_admin.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/defaults.h"
#include "hr/redis_outbox.h"

#define PAGE 500 /* entries per XRANGE */

struct hr_redis_admin {
    redisContext *c;           /* the connection */
    const hr_config_t *cfg;    /* its config (the caller's) */
    const hr_outbox_conf_t *o; /* &cfg->outbox */
};

/* Run a command; the reply (free it), or NULL with a message in err (an error reply too). */
static redisReply *run(hr_redis_admin_t *r, char *err, size_t errlen, int argc, const char **argv,
                       const size_t *lens)
{
    redisReply *rep = redisCommandArgv(r->c, argc, argv, lens);
    if (!rep) {
        snprintf(err, errlen, "redis %s:%d: %s", r->o->host, r->o->port,
                 r->c->errstr[0] ? r->c->errstr : "no answer");
        return NULL;
    }
    if (rep->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "redis %s:%d: %s: %s", r->o->host, r->o->port, argv[0], rep->str);
        freeReplyObject(rep);
        return NULL;
    }
    return rep;
}

/* run() with NUL-terminated arguments. */
static redisReply *runv(hr_redis_admin_t *r, char *err, size_t errlen, int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return run(r, err, errlen, argc, argv, lens);
}

hr_redis_admin_t *hr_redis_admin_open(const hr_config_t *cfg, char *err, size_t errlen)
{
    const hr_outbox_conf_t *o = &cfg->outbox;
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(o->host, o->port, tv);
    if (!c || c->err) {
        snprintf(err, errlen, "redis %s:%d: %s", o->host, o->port, c ? c->errstr : "no memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    hr_redis_admin_t *r = hr_xcalloc(1, sizeof *r);
    *r = (hr_redis_admin_t){c, cfg, o};
    redisReply *rep = NULL;
    if (o->password) {
        const char *argv[] = {"AUTH", o->password};
        if (!(rep = runv(r, err, errlen, 2, argv))) goto fail;
        freeReplyObject(rep);
    }
    if (o->db) {
        char db[16];
        snprintf(db, sizeof db, "%u", (unsigned)o->db);
        const char *argv[] = {"SELECT", db};
        if (!(rep = runv(r, err, errlen, 2, argv))) goto fail;
        freeReplyObject(rep);
    }
    return r;
fail:
    hr_redis_admin_close(r);
    return NULL;
}

void hr_redis_admin_close(hr_redis_admin_t *r)
{
    if (!r) return;
    redisFree(r->c);
    free(r);
}

long hr_redis_admin_each_dead(hr_redis_admin_t *r,
                              void (*fn)(void *arg, const char *line, size_t len), void *arg,
                              char *err, size_t errlen)
{
    char *key = hr_redis_key(r->o->prefix, "dead", NULL, -1);
    char start[64] = "-";
    long n = 0;
    for (;;) {
        const char *argv[] = {"XRANGE", key, start, "+", "COUNT", HR_DEF_TEXT(PAGE)};
        redisReply *rep = runv(r, err, errlen, 6, argv);
        if (!rep) {
            n = -1;
            break;
        }
        size_t got = rep->type == REDIS_REPLY_ARRAY ? rep->elements : 0;
        for (size_t i = 0; i < got; i++) {
            const redisReply *e = rep->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements < 2) continue;
            snprintf(start, sizeof start, "(%s", e->element[0]->str); /* after this one */
            const redisReply *f = e->element[1];
            for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements; k += 2)
                if (strcmp(f->element[k]->str, "line") == 0) {
                    fn(arg, f->element[k + 1]->str, f->element[k + 1]->len);
                    n++;
                }
        }
        freeReplyObject(rep);
        if (got < PAGE) break;
    }
    free(key);
    return n;
}

int hr_redis_admin_replayed(hr_redis_admin_t *r, char ***keys, size_t *n, char *err, size_t errlen)
{
    char *key = hr_redis_key(r->o->prefix, "replayed", NULL, -1);
    const char *argv[] = {"SMEMBERS", key};
    redisReply *rep = runv(r, err, errlen, 2, argv);
    free(key);
    *keys = NULL;
    *n = 0;
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements) {
        *keys = hr_xcalloc(rep->elements, sizeof **keys);
        for (size_t i = 0; i < rep->elements; i++)
            (*keys)[(*n)++] = hr_xstrdup(rep->element[i]->str);
    }
    freeReplyObject(rep);
    return 0;
}

/* The stream an action goes to, as the Redis outbox puts it (allocated). */
static char *stream_key(const hr_redis_admin_t *r, const hr_action_t *a)
{
    const char *name = a->name ? a->name : "-";
    if (a->kind == HR_ACTION_WRITE) return hr_redis_key(r->o->prefix, "f", name, -1);
    const hr_target_conf_t *t = hr_config_target(r->cfg, name);
    return hr_redis_key(r->o->prefix, "t", name, t && t->ordered ? hr_redis_lane_of(a->store) : -1);
}

int hr_redis_admin_replay(hr_redis_admin_t *r, const hr_action_t *list, char *const *keys,
                          size_t nkeys, char *err, size_t errlen)
{
    /* Pipelined: MULTI, the XADDs, the SADDs, EXEC; only EXEC's answer decides. */
    redisAppendCommand(r->c, "MULTI");
    size_t ncmd = 1;
    hr_buf_t enc = HR_BUF_INIT;
    uint64_t id = hr_wall_ms();
    for (const hr_action_t *a = list; a; a = a->next) {
        hr_redis_encode_entry(&enc, a, id++, 0, 0, 0, NULL, 0);
        char *key = stream_key(r, a);
        const char *argv[] = {"XADD", key, "*", "c", enc.data};
        const size_t lens[] = {4, strlen(key), 1, 1, enc.len};
        redisAppendCommandArgv(r->c, 5, argv, lens);
        free(key);
        ncmd++;
    }
    hr_buf_free(&enc);
    char *set = hr_redis_key(r->o->prefix, "replayed", NULL, -1);
    for (size_t i = 0; i < nkeys; i++) {
        const char *argv[] = {"SADD", set, keys[i]};
        const size_t lens[] = {4, strlen(set), strlen(keys[i])};
        redisAppendCommandArgv(r->c, 3, argv, lens);
        ncmd++;
    }
    free(set);
    redisAppendCommand(r->c, "EXEC");
    ncmd++;
    int rc = 0;
    for (size_t i = 0; i < ncmd; i++) {
        redisReply *rep = NULL;
        if (redisGetReply(r->c, (void **)&rep) != REDIS_OK || !rep) {
            snprintf(err, errlen, "redis %s:%d: %s", r->o->host, r->o->port,
                     r->c->errstr[0] ? r->c->errstr : "no answer");
            return -1; /* the connection is unusable now; EXEC never ran */
        }
        bool last = i + 1 == ncmd;
        if (rc == 0 && (rep->type == REDIS_REPLY_ERROR || (last && rep->type == REDIS_REPLY_NIL))) {
            snprintf(err, errlen, "redis %s:%d: %s", r->o->host, r->o->port,
                     rep->type == REDIS_REPLY_ERROR ? rep->str : "transaction aborted");
            rc = -1;
        }
        if (last && rc == 0 && rep->type == REDIS_REPLY_ARRAY)
            for (size_t k = 0; k < rep->elements; k++)
                if (rep->element[k]->type == REDIS_REPLY_ERROR) {
                    snprintf(err, errlen, "redis %s:%d: %s", r->o->host, r->o->port,
                             rep->element[k]->str);
                    rc = -1;
                    break;
                }
        freeReplyObject(rep);
    }
    return rc;
}

/* One row of the report. */
typedef struct {
    const char *name;  /* target or file */
    bool write;        /* a file */
    long long entries; /* in its stream(s): new and unacknowledged */
    long long unacked; /* read by a node, not acknowledged yet */
    long long delayed; /* waiting in <prefix>:delay */
    double next;       /* earliest due time there (wall ms), 0: none */
} row_t;

/* Add the XLEN and XPENDING count of stream key to w. Returns 0 or -1. */
static int count_stream(hr_redis_admin_t *r, const char *key, row_t *w, char *err, size_t errlen)
{
    const char *xlen[] = {"XLEN", key};
    redisReply *rep = runv(r, err, errlen, 2, xlen);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_INTEGER) w->entries += rep->integer;
    freeReplyObject(rep);
    const char *xp[] = {"XPENDING", key, "hookrouter"};
    rep = redisCommandArgv(r->c, 3, xp, NULL);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements >= 1 &&
        rep->element[0]->type == REDIS_REPLY_INTEGER)
        w->unacked += rep->element[0]->integer;
    freeReplyObject(rep); /* NOGROUP: no node ever read it */
    return 0;
}

/* Count the stream's and the delayed set's entries of w. Returns 0 or -1. */
static int count_row(hr_redis_admin_t *r, row_t *w, const redisReply *delay, char *err,
                     size_t errlen)
{
    const hr_target_conf_t *t = w->write ? NULL : hr_config_target(r->cfg, w->name);
    for (int lane = t && t->ordered ? 0 : -1; lane < (t && t->ordered ? RD_LANES : 0); lane++) {
        char *key = hr_redis_key(r->o->prefix, w->write ? "f" : "t", w->name, lane);
        int rc = count_stream(r, key, w, err, errlen);
        size_t klen = strlen(key);
        for (size_t i = 0; rc == 0 && i + 1 < delay->elements; i += 2) {
            const redisReply *m = delay->element[i];
            if (m->len > klen && memcmp(m->str, key, klen) == 0 && m->str[klen] == '\n') {
                w->delayed++;
                double due = atof(delay->element[i + 1]->str);
                if (!w->next || due < w->next) w->next = due;
            }
        }
        free(key);
        if (rc < 0) return -1;
    }
    return 0;
}

int hr_redis_admin_report(hr_redis_admin_t *r, char *err, size_t errlen)
{
    const hr_config_t *cfg = r->cfg;
    char *dkey = hr_redis_key(r->o->prefix, "delay", NULL, -1);
    const char *zr[] = {"ZRANGE", dkey, "0", "-1", "WITHSCORES"};
    redisReply *delay = runv(r, err, errlen, 5, zr);
    free(dkey);
    if (!delay) return -1;
    size_t nrows = cfg->ntargets + cfg->nfiles;
    row_t *rows = hr_xcalloc(nrows + 1, sizeof *rows);
    for (size_t i = 0; i < cfg->ntargets; i++)
        rows[i] = (row_t){.name = cfg->targets[i].name};
    for (size_t i = 0; i < cfg->nfiles; i++)
        rows[cfg->ntargets + i] = (row_t){.name = cfg->files[i].name, .write = true};
    int rc = 0;
    long long total = 0;
    printf("redis %s:%d db %u, prefix %s: %zu waiting for a retry\n", r->o->host, r->o->port,
           (unsigned)r->o->db, r->o->prefix,
           delay->type == REDIS_REPLY_ARRAY ? delay->elements / 2 : 0);
    printf("%-24s %8s %8s %8s %s\n", "target", "depth", "unacked", "delayed", "next_retry");
    uint64_t now = hr_wall_ms();
    for (size_t i = 0; i < nrows && rc == 0; i++) {
        row_t *w = &rows[i];
        if ((rc = count_row(r, w, delay, err, errlen)) < 0) break;
        long long depth = w->entries + w->delayed;
        total += depth;
        if (!depth) continue;
        char nx[80] = "-";
        if (w->next) {
            char at[32];
            hr_rfc3339((uint64_t)w->next, at);
            if ((uint64_t)w->next <= now)
                snprintf(nx, sizeof nx, "now (due %s)", at);
            else
                snprintf(nx, sizeof nx, "in %llus (%s)",
                         (unsigned long long)(((uint64_t)w->next - now + 999) / 1000), at);
        }
        printf("%-24s %8lld %8lld %8lld %s\n", w->name, depth, w->unacked, w->delayed, nx);
    }
    if (rc == 0) printf("total pending: %lld\n", total);
    free(rows);
    freeReplyObject(delay);
    return rc;
}
