/* The Redis outbox: a second delivery implementation behind hr/delivery.h (src/redis_outbox.c
 * and src/redis_deliver.c, built only with hiredis: HR_HAVE_REDIS), for outbox = { kind =
 * "redis", ... }. Several nodes
 * share one Redis and, through it, one backlog:
 *   - accepting: an event's actions are XADDed in one MULTI/EXEC to per-target streams
 *     (<prefix>:t:<target>, write actions <prefix>:f:<file>, ordered targets
 *     <prefix>:t:<target>:<lane>) before push's callback says "durable"; with wait_replicas N
 *     a WAIT N follows. Redis down, OOM (-ENOSPC), an error or no answer in time (-EIO,
 *     -ETIMEDOUT, -ENOTCONN): the callback (or push itself) fails and the sender gets 503;
 *   - delivering: every node is a consumer of the group "hookrouter" of every stream
 *     (XREADGROUP), sends with the HTTP client under the target policy (hr/target.h: circuit,
 *     rate, concurrency held per node), and XACKs (and XDELs) only after a 2xx or a dead
 *     letter. A retry goes to the sorted set <prefix>:delay (score: due wall ms, member: the
 *     stream key and the entry with its attempts and attempt log) and is moved back to its
 *     stream when due by whichever node runs the mover script first. Entries a consumer has
 *     held unacknowledged for claim_idle_ms are taken over by the others (XAUTOCLAIM).
 *   - ordered targets: a store's lane is one of RD_LANES streams; each lane stream is owned by
 *     one node at a time under a lease (<prefix>:lease:<target>:<lane>, SET NX PX
 *     claim_idle_ms, renewed every third of it), whose owner delivers one entry at a time, the
 *     oldest pending first; a retry stays the head (its state in the hash <prefix>:state).
 *   - dead letters: the local dead-letter file and the stream <prefix>:dead.
 *   - Redis lost: logged, /readyz and pushes fail, deliveries pause; reconnects with backoff
 *     (100 ms doubling to 5 s, each try logged) and resumes.
 * Everything accepted is in Redis (durable per its appendfsync); a node that dies loses
 * nothing, its work is claimed. Delivery is at least once: an attempt whose XACK did not reach
 * Redis (a node killed between the answer and the ack) is sent again; an ack cut off by a lost
 * connection is sent again after the reconnect. */
#ifndef HR_REDIS_OUTBOX_H
#define HR_REDIS_OUTBOX_H

#include <stddef.h>
#include <uv.h>

#include "hr/action.h"
#include "hr/config.h"
#include "hr/delivery.h"
#include "hr/spool.h"

/* Lanes (streams) of an ordered target: a store's events all go to lane hash(store) % this. */
#define RD_LANES 8

/* "<prefix>:<kind>[:<name>][:<lane>]" (name NULL, lane < 0: left out), allocated. */
char *hr_redis_key(const char *prefix, const char *kind, const char *name, int lane);
/* The lane of an ordered target a store's events go to (NULL: ""): FNV-1a mod RD_LANES. */
int hr_redis_lane_of(const char *store);
/* Set out to a stream entry's payload (field "c"): the spool's COPY payload of a (with id
 * aid), its attempts, last status, next attempt (wall ms) and attempt log. */
void hr_redis_encode_entry(hr_buf_t *out, const hr_action_t *a, uint64_t aid, uint32_t attempts,
                           int last_status, uint64_t due, const hr_spool_state_t *log, size_t nlog);

/* Open the Redis delivery for cfg (cfg->outbox.kind == HR_OUTBOX_REDIS) on loop and start
 * connecting; until connected pushes fail (-ENOTCONN) and /readyz says why. Never NULL (a
 * Redis that cannot be reached is retried, not an error); err is unused. */
hr_delivery_t *hr_redis_delivery_open(uv_loop_t *loop, const hr_config_t *cfg, char *err,
                                      size_t errlen);

#endif
