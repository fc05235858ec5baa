/* The delivery side's event log lines (delivered, retry, dead-letter, circuit), one shape
 * whichever outbox (src/outbox*.c, src/redis*.c) writes them; README "Logs" lists the fields. */
#ifndef HR_DELIVERY_LOG_H
#define HR_DELIVERY_LOG_H

#include <stdint.h>

#include "hr/action.h"
#include "hr/target.h"

/* "delivered": a forward answered status (2xx), or a write (status 0) done, after attempts. */
void hr_dlog_delivered(const hr_action_t *a, int status, uint32_t attempts);
/* "retry": attempt `attempts` of max failed with status (> 0) or error; next in in_ms. */
void hr_dlog_retry(const hr_action_t *a, int status, const char *error, uint32_t attempts,
                   uint32_t max_attempts, uint64_t in_ms);
/* "dead-letter": a is given up for reason (its last_status / last_error / attempts). */
void hr_dlog_dead(const hr_action_t *a, const char *reason);
/* "circuit open" / "circuit closed" for a change of target's breaker c (SAME: nothing). */
void hr_dlog_circuit(const char *target, hr_circuit_change_t change, const hr_circuit_t *c,
                     uint64_t probe_ms);
/* "circuit half-open": the one probe is being sent. */
void hr_dlog_probe(const char *target);

#endif
