/* The outbox's recovery at open: the spool's records folded into an index (src/spool_index.c)
 * while the spool scans them, then an item for each pending action, due at its persisted
 * time. Part of the outbox (src/outbox.c; the shared types in src/outbox_int.h, the contract
 * in include/hr/outbox.h). */
#include <string.h>

#include "hr/log.h"
#include "hr/spool_index.h"
#include "outbox_int.h"

/* ---- Recovery --------------------------------------------------------------------------- */

/* The spool's records are folded into an hr_spool_index_t while hr_spool_open scans them;
 * the items are made from what is pending once the scan is over, in id (arrival) order. */

/* The target of a recovered forward action (created when first seen, as a push would),
 * kept as its index entry's user value; NULL for a write. */
void *ob_recover_target(void *arg, const hr_spool_action_meta_t *m)
{
    if (m->kind != HR_ACTION_FORWARD) return NULL;
    char name[256];
    size_t k = m->name_len < sizeof name - 1 ? m->name_len : sizeof name - 1;
    memcpy(name, m->name ? m->name : "-", m->name ? k : 1);
    name[m->name ? k : 1] = '\0';
    return ob_target_get(arg, name);
}

void ob_recover_rec(void *arg, int type, const char *p, size_t n, hr_spool_loc_t loc)
{
    if (hr_spool_index_fold(arg, type, p, n, loc) == 0) return;
    if (type == HR_REC_ACTION) hr_log_warn("spool: malformed action record skipped");
    if (type == HR_REC_COPY) hr_log_warn("spool: malformed copy record skipped");
}

typedef struct {
    hr_outbox_t *o;
    uint64_t now;  /* uv_now */
    uint64_t wall; /* hr_wall_ms at the same time */
} recover_t;

/* An item for the recovered pending action e: it takes a reference on its record's segment
 * and is due at its persisted next-attempt time (at once if that is past). */
static void rec_item(void *arg, const hr_spool_entry_t *e)
{
    recover_t *r = arg;
    hr_outbox_t *o = r->o;
    ob_item_t *it = ob_item_new(o);
    it->id = e->id;
    it->loc = e->loc;
    it->state_loc = e->state_loc;
    it->kind = e->kind;
    it->accepted_ms = e->accepted_ms;
    it->attempts = e->attempts;
    it->last_status = e->last_status;
    it->due_wall = e->next_due_ms;
    it->due = r->now + (it->due_wall > r->wall ? it->due_wall - r->wall : 0);
    it->max_attempts = e->max_attempts ? e->max_attempts : 1;
    if (e->kind == HR_ACTION_WRITE) it->max_attempts = o->write_attempts;
    it->t = e->user;
    if (it->t) it->t->live++;
    ob_tstats(it)->accepted++;
    hr_spool_ref(o->spool, it->loc);
}

/* Make the items of what ix holds pending (in arrival order), then free ix. */
void ob_recover_items(hr_outbox_t *o, hr_spool_index_t *ix)
{
    uint64_t max_id = hr_spool_index_max_id(ix);
    if (max_id >= o->next_id) o->next_id = max_id + 1;
    recover_t r = {o, uv_now(o->loop), hr_wall_ms()};
    hr_spool_index_each(ix, rec_item, &r);
    hr_spool_index_destroy(ix);
}
