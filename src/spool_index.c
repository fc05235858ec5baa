/* The spool's record fold keyed by action id (see include/hr/spool_index.h).
 *
 * Entries sit in an array in the order they were started; a finished (or replaced) one is only
 * marked, and the array is compacted once the marked ones outnumber the pending ones, so a
 * scan of a long log costs memory for what is pending, not for everything it ever held. An
 * open-addressing table (linear probing, no deletions: compaction rebuilds it) maps an id to
 * the newest entry started for it. Entries are started in id order except where the spool was
 * compacted (a COPY of an old action comes late in the log) or an ACTION replaced; only then
 * does each() sort them. */
#include "hr/spool_index.h"

#include <stdlib.h>
#include <string.h>

#define MIN_TAB     1024 /* table slots to start with */
#define MIN_DEAD    1024 /* finished entries kept before a compaction is worth it */
#define NO_ENTRY    0    /* an empty table slot (slots hold an entry's index + 1) */
#define MAX_ENTRIES (UINT32_MAX - 1u)

typedef struct {
    hr_spool_entry_t e;
    bool pending; /* false once finished or replaced */
} slot_t;

struct hr_spool_index {
    slot_t *v;        /* entries in the order they were started */
    size_t n;         /* entries used */
    size_t cap;       /* entries allocated */
    size_t pending;   /* entries pending */
    uint32_t *tab;    /* id -> index in v + 1, NO_ENTRY if free */
    size_t tcap;      /* table slots, a power of two */
    size_t tused;     /* table slots used */
    uint64_t max_id;  /* largest ACTION/COPY id seen */
    uint64_t last_id; /* id of the entry started last */
    bool unsorted;    /* an entry was started with a smaller id than the one before */
    hr_spool_index_add_cb add;
    void *arg;
};

hr_spool_index_t *hr_spool_index_create(hr_spool_index_add_cb add, void *arg)
{
    hr_spool_index_t *ix = hr_xcalloc(1, sizeof *ix);
    ix->add = add;
    ix->arg = arg;
    return ix;
}

void hr_spool_index_destroy(hr_spool_index_t *ix)
{
    if (!ix) return;
    free(ix->v);
    free(ix->tab);
    free(ix);
}

static size_t home(const hr_spool_index_t *ix, uint64_t id)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (ix->tcap - 1);
}

/* The table slot of id: the one holding it, or the free one where it would go. */
static size_t tab_slot(const hr_spool_index_t *ix, uint64_t id)
{
    size_t i = home(ix, id);
    while (ix->tab[i] != NO_ENTRY && ix->v[ix->tab[i] - 1].e.id != id)
        i = (i + 1) & (ix->tcap - 1);
    return i;
}

/* Rebuild the table with cap slots from the pending entries (call after compacting). */
static void tab_rebuild(hr_spool_index_t *ix, size_t cap)
{
    free(ix->tab);
    ix->tcap = cap;
    ix->tab = hr_xcalloc(cap, sizeof *ix->tab);
    ix->tused = 0;
    for (size_t k = 0; k < ix->n; k++) {
        if (!ix->v[k].pending) continue;
        ix->tab[tab_slot(ix, ix->v[k].e.id)] = (uint32_t)(k + 1);
        ix->tused++;
    }
}

/* Table slots for n ids: a load of at most a quarter, so that at least n more ids fit before
 * the load of one half forces the next rebuild (each rebuild costs O(n), paid by n ids). */
static size_t tab_cap_for(size_t n)
{
    size_t cap = MIN_TAB;
    while (cap < 4 * (n + 1))
        cap *= 2;
    return cap;
}

/* Drop the finished entries from v, keeping the order (the table must be rebuilt after). */
static void drop_finished(hr_spool_index_t *ix)
{
    size_t k = 0;
    for (size_t i = 0; i < ix->n; i++)
        if (ix->v[i].pending) ix->v[k++] = ix->v[i];
    ix->n = k;
}

/* The pending entry of id, or NULL. */
static slot_t *find(const hr_spool_index_t *ix, uint64_t id)
{
    if (!ix->tcap) return NULL;
    uint32_t k = ix->tab[tab_slot(ix, id)];
    return k != NO_ENTRY && ix->v[k - 1].pending ? &ix->v[k - 1] : NULL;
}

/* Mark s finished (or replaced); compact once finished entries outnumber pending ones. */
static void finish(hr_spool_index_t *ix, slot_t *s)
{
    s->pending = false;
    ix->pending--;
    size_t dead = ix->n - ix->pending;
    if (dead >= MIN_DEAD && dead > ix->pending) {
        drop_finished(ix);
        tab_rebuild(ix, tab_cap_for(ix->pending));
    }
}

/* Start the entry of the action m at loc (the newest for its id from now on). */
static slot_t *start(hr_spool_index_t *ix, const hr_spool_action_meta_t *m, hr_spool_loc_t loc)
{
    if ((ix->tused + 1) * 2 > ix->tcap) tab_rebuild(ix, tab_cap_for(ix->pending + 1));
    if (ix->n == ix->cap) {
        if (ix->cap > MAX_ENTRIES / 2) abort(); /* the table holds u32 indices */
        ix->cap = ix->cap ? ix->cap * 2 : 1024;
        ix->v = hr_xrealloc(ix->v, ix->cap * sizeof *ix->v);
    }
    size_t t = tab_slot(ix, m->id);
    if (ix->tab[t] == NO_ENTRY) ix->tused++;
    ix->tab[t] = (uint32_t)(ix->n + 1);
    slot_t *s = &ix->v[ix->n++];
    memset(s, 0, sizeof *s);
    s->pending = true;
    s->e.id = m->id;
    s->e.loc = loc;
    s->e.accepted_ms = m->accepted_ms;
    s->e.max_attempts = m->max_attempts;
    s->e.kind = m->kind;
    if (ix->n > 1 && m->id < ix->last_id) ix->unsorted = true;
    ix->last_id = m->id;
    ix->pending++;
    s->e.user = ix->add ? ix->add(ix->arg, m) : NULL;
    return s;
}

static void saw_id(hr_spool_index_t *ix, uint64_t id)
{
    if (id > ix->max_id) ix->max_id = id;
}

static uint64_t get_u64(const char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | (unsigned char)p[i];
    return v;
}

int hr_spool_index_fold(hr_spool_index_t *ix, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    hr_spool_action_meta_t m;
    if (type == HR_REC_ACTION) {
        if (hr_spool_action_meta(p, n, &m) < 0) return -1;
        saw_id(ix, m.id);
        slot_t *old = find(ix, m.id);
        if (old) finish(ix, old); /* a rewritten record replaces the old one */
        start(ix, &m, loc);
    } else if (type == HR_REC_COPY) {
        hr_spool_copy_t c;
        if (hr_spool_decode_copy(p, n, &c) < 0 ||
            hr_spool_action_meta(c.action, c.action_len, &m) < 0)
            return -1;
        saw_id(ix, m.id);
        /* The same action as an earlier ACTION or COPY (a crash before the old segment was
         * deleted): same entry, later state. Else its old record is gone: a new entry. */
        slot_t *s = find(ix, m.id);
        if (!s) s = start(ix, &m, loc);
        s->e.loc = loc;
        s->e.state_loc = loc;
        s->e.attempts = c.attempts;
        s->e.last_status = c.last_status;
        s->e.next_due_ms = c.next_due_ms;
    } else if (type == HR_REC_STATE) {
        hr_spool_state_t st;
        if (hr_spool_decode_state(p, n, &st, NULL, 0) < 0) return -1;
        slot_t *s = find(ix, st.id);
        if (!s) return 0;
        s->e.attempts = st.attempt;
        s->e.last_status = st.status;
        s->e.state_loc = loc;
        s->e.next_due_ms = st.next_due_ms;
    } else if (type == HR_REC_DONE) {
        if (n < 8) return -1;
        slot_t *s = find(ix, get_u64(p));
        if (s) finish(ix, s);
    }
    return 0;
}

void hr_spool_index_on_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    (void)hr_spool_index_fold(arg, type, p, n, loc);
}

const hr_spool_entry_t *hr_spool_index_find(const hr_spool_index_t *ix, uint64_t id)
{
    slot_t *s = find(ix, id);
    return s ? &s->e : NULL;
}

size_t hr_spool_index_count(const hr_spool_index_t *ix)
{
    return ix->pending;
}

uint64_t hr_spool_index_max_id(const hr_spool_index_t *ix)
{
    return ix->max_id;
}

static int cmp_id(const void *a, const void *b)
{
    uint64_t x = ((const slot_t *)a)->e.id, y = ((const slot_t *)b)->e.id;
    return x < y ? -1 : x > y;
}

void hr_spool_index_each(hr_spool_index_t *ix, void (*fn)(void *arg, const hr_spool_entry_t *e),
                         void *arg)
{
    if (ix->unsorted) {
        drop_finished(ix);
        qsort(ix->v, ix->n, sizeof *ix->v, cmp_id);
        tab_rebuild(ix, tab_cap_for(ix->pending));
        ix->unsorted = false;
        ix->last_id = ix->n ? ix->v[ix->n - 1].e.id : 0;
    }
    for (size_t i = 0; i < ix->n; i++)
        if (ix->v[i].pending) fn(arg, &ix->v[i].e);
}
