/* The delivery side's event log lines: one shape for both outboxes. */
#include "hr/delivery_log.h"

#include "hr/common.h"
#include "hr/log.h"

static uint64_t ms_since(uint64_t wall_ms)
{
    uint64_t now = hr_wall_ms();
    return now > wall_ms ? now - wall_ms : 0;
}

static const char *name_key(const hr_action_t *a)
{
    return a->kind == HR_ACTION_WRITE ? "file" : "target";
}

void hr_dlog_delivered(const hr_action_t *a, int status, uint32_t attempts)
{
    if (!hr_log_enabled(HR_LOG_INFO)) return;
    bool write = a->kind == HR_ACTION_WRITE;
    if (write)
        hr_log_kv(HR_LOG_INFO, "delivered", HR_KV_STR("id", a->event_id),
                  HR_KV_STR("type", a->event_type), HR_KV_STR("store", a->store),
                  HR_KV_STR("action", "write"), HR_KV_STR("file", a->name),
                  HR_KV_UINT("attempts", attempts), HR_KV_UINT("ms", ms_since(a->accepted_ms)));
    else
        hr_log_kv(HR_LOG_INFO, "delivered", HR_KV_STR("id", a->event_id),
                  HR_KV_STR("type", a->event_type), HR_KV_STR("store", a->store),
                  HR_KV_STR("action", "forward"), HR_KV_STR("target", a->name),
                  HR_KV_INT("status", status), HR_KV_UINT("attempts", attempts),
                  HR_KV_UINT("ms", ms_since(a->accepted_ms)));
}

void hr_dlog_retry(const hr_action_t *a, int status, const char *error, uint32_t attempts,
                   uint32_t max_attempts, uint64_t in_ms)
{
    hr_log_kv(HR_LOG_WARN, "retry", HR_KV_STR("id", a->event_id), HR_KV_STR("type", a->event_type),
              HR_KV_STR("store", a->store), HR_KV_STR(name_key(a), a->name),
              status > 0 ? HR_KV_INT("status", status) : HR_KV_STR("error", error),
              HR_KV_UINT("attempts", attempts), HR_KV_UINT("max_attempts", max_attempts),
              HR_KV_UINT("in_ms", in_ms));
}

void hr_dlog_dead(const hr_action_t *a, const char *reason)
{
    bool write = a->kind == HR_ACTION_WRITE;
    hr_log_kv(HR_LOG_ERROR, "dead-letter", HR_KV_STR("id", a->event_id),
              HR_KV_STR("type", a->event_type), HR_KV_STR("store", a->store),
              HR_KV_STR(name_key(a), a->name),
              !write && a->last_status > 0
                  ? HR_KV_INT("status", a->last_status)
                  : HR_KV_STR("error", a->last_error[0] || write ? a->last_error : "none"),
              HR_KV_UINT("attempts", a->attempts), HR_KV_STR("reason", reason));
}

void hr_dlog_circuit(const char *target, hr_circuit_change_t change, const hr_circuit_t *c,
                     uint64_t probe_ms)
{
    switch (change) {
    case HR_CIRCUIT_CLOSED_NOW:
        hr_log_kv(HR_LOG_INFO, "circuit closed", HR_KV_STR("target", target),
                  HR_KV_STR("reason", "the probe succeeded, delivering again"));
        break;
    case HR_CIRCUIT_REOPENED:
        hr_log_kv(HR_LOG_WARN, "circuit open", HR_KV_STR("target", target),
                  HR_KV_STR("reason", "the probe failed"), HR_KV_UINT("probe_in_ms", probe_ms));
        break;
    case HR_CIRCUIT_OPENED:
        hr_log_kv(HR_LOG_WARN, "circuit open", HR_KV_STR("target", target),
                  HR_KV_UINT("failures", c->fails), HR_KV_UINT("probe_every_ms", probe_ms));
        break;
    case HR_CIRCUIT_SAME: break;
    }
}

void hr_dlog_probe(const char *target)
{
    hr_log_kv(HR_LOG_INFO, "circuit half-open", HR_KV_STR("target", target),
              HR_KV_STR("reason", "sending one probe"));
}
