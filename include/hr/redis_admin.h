/* The Redis outbox seen from the command line (src/redis_admin.c, built with hiredis only):
 * what `hookrouter deadletters`, `replay` and `spool` do when the config says
 * outbox = { kind = "redis" }. One blocking connection (2 s timeouts), AUTH and SELECT as the
 * config says; safe while routers run (replay only XADDs new entries). */
#ifndef HR_REDIS_ADMIN_H
#define HR_REDIS_ADMIN_H

#include <stddef.h>

#include "hr/action.h"
#include "hr/config.h"

typedef struct hr_redis_admin hr_redis_admin_t;

/* Connect to cfg's Redis. NULL with a message in err if it cannot be reached or refuses. */
hr_redis_admin_t *hr_redis_admin_open(const hr_config_t *cfg, char *err, size_t errlen);
/* Close it. Accepts NULL. */
void hr_redis_admin_close(hr_redis_admin_t *r);
/* fn for every line of <prefix>:dead, oldest first (line valid during the call). Returns the
 * number of lines, or -1 with a message in err. */
long hr_redis_admin_each_dead(hr_redis_admin_t *r,
                              void (*fn)(void *arg, const char *line, size_t len), void *arg,
                              char *err, size_t errlen);
/* The keys already replayed (the set <prefix>:replayed) into *keys (each and the array
 * allocated), *n of them. Returns 0 or -1 with a message in err. */
int hr_redis_admin_replayed(hr_redis_admin_t *r, char ***keys, size_t *n, char *err, size_t errlen);
/* In one MULTI/EXEC: XADD every action of list (not taken) to its stream as a new entry (first
 * attempt due at once) and SADD the keys[0..nkeys) to <prefix>:replayed. Returns 0, or -1 with
 * a message in err (then nothing was replayed). */
int hr_redis_admin_replay(hr_redis_admin_t *r, const hr_action_t *list, char *const *keys,
                          size_t nkeys, char *err, size_t errlen);
/* Print the backlog per target (stdout): entries in its stream(s), how many a node holds
 * unacknowledged, how many wait in <prefix>:delay and when the next is due. Returns 0 or -1
 * with a message in err. */
int hr_redis_admin_report(hr_redis_admin_t *r, char *err, size_t errlen);

#endif
