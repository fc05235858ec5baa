/* The spool's record fold (src/spool_index.c): the ACTION, STATE, DONE and COPY records of a
 * spool, read in order, folded into one entry per pending action keyed by its id. It is what
 * both a recovery (src/outbox_recover.c) and `hookrouter spool` (src/cli_spool.c) see; it
 * knows the record payloads of hr/spool.h, nothing of the outbox.
 *
 * The fold, record by record (later records win, since the spool is a log):
 *   ACTION  starts the entry of its id, with no attempts yet; one already pending for the id
 *           is replaced (a rewritten record supersedes the old one).
 *   STATE   sets the attempts, last status, next due time and state record of its id's
 *           pending entry; with none pending (finished, or its ACTION gone with a compacted
 *           segment: the COPY later in the log carries its state) it is ignored.
 *   COPY    (an action moved forward by compaction) sets the same from its payload, and its
 *           location becomes the entry's; with no pending entry for its id (its ACTION went
 *           with an older segment, or it was finished before) it starts one.
 *   DONE    finishes its id's entry: it is no longer pending. An unknown id is ignored.
 * Pending entries come out in id order, which is arrival order. */
#ifndef HR_SPOOL_INDEX_H
#define HR_SPOOL_INDEX_H

#include <stddef.h>
#include <stdint.h>

#include "hr/spool.h"

typedef struct hr_spool_index hr_spool_index_t;

/* One pending action as the records so far describe it. */
typedef struct {
    uint64_t id;              /* the action's id */
    hr_spool_loc_t loc;       /* its ACTION record, or the latest COPY of it */
    hr_spool_loc_t state_loc; /* its latest STATE or COPY record (where its attempt log
                               * starts), 0 if none */
    uint64_t accepted_ms;     /* wall time the event was accepted */
    uint64_t next_due_ms;     /* wall time of the next attempt, 0: at once */
    uint32_t attempts;        /* attempts finished */
    int32_t last_status;      /* HTTP status of the last one, 0 if none or a transport error */
    uint32_t max_attempts;    /* as stored in the action */
    hr_action_kind_t kind;    /* forward or write */
    void *user;               /* what the add callback returned for it */
} hr_spool_entry_t;

/* Called when a record starts an entry (an ACTION, or a COPY of an id with none pending), with
 * the action's meta fields (its strings point into the record: copy what you keep). Returns
 * the entry's user value. */
typedef void *(*hr_spool_index_add_cb)(void *arg, const hr_spool_action_meta_t *m);

/* An empty index; add (may be NULL: user stays NULL) is called with arg. Never NULL. */
hr_spool_index_t *hr_spool_index_create(hr_spool_index_add_cb add, void *arg);
/* Free the index. Accepts NULL. */
void hr_spool_index_destroy(hr_spool_index_t *ix);
/* Fold one record (type, payload p[0..n), at loc) in. Returns 0, or -1 if a record of a known
 * type does not decode (it is skipped; the index is unchanged). Other types are ignored. */
int hr_spool_index_fold(hr_spool_index_t *ix, int type, const char *p, size_t n,
                        hr_spool_loc_t loc);
/* An hr_spool_rec_cb (arg: the index) that folds each record, skipping malformed ones. */
void hr_spool_index_on_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc);
/* The pending entry of id, or NULL. Valid until the next fold or each. */
const hr_spool_entry_t *hr_spool_index_find(const hr_spool_index_t *ix, uint64_t id);
/* How many entries are pending. */
size_t hr_spool_index_count(const hr_spool_index_t *ix);
/* The largest id of any ACTION or COPY folded in (pending or not), 0 if none. */
uint64_t hr_spool_index_max_id(const hr_spool_index_t *ix);
/* Call fn for every pending entry, in id order. fn must not fold. */
void hr_spool_index_each(hr_spool_index_t *ix, void (*fn)(void *arg, const hr_spool_entry_t *e),
                         void *arg);

#endif
