/* Dead letters: the format of the one JSON line per event or action given up on, written and
 * read back only here (src/deadletter.c). The router and the outbox format the lines (they
 * append them through hr/files.h); `hookrouter deadletters` and `replay` parse them.
 *
 * An action that could not be delivered:
 *   {"id":"<dead-letter id>","dead_at":"<RFC 3339>","reason":"<why>",
 *    "event":{"id":"<event id>","type":…|null,"store":…|null,"accepted_at":"<RFC 3339>"},
 *    "action":"forward","target":…,"url":…,"method":…,"headers":{"<name>":"<value>",…},
 *    "attempts":N,"last_status":N|null,"last_error":…|null,
 *    "attempt_log":[{"attempt":1,"at":"<RFC 3339>","status":N|null,"error":…|null},…],
 *    "body":<the body: JSON as it was if body_is_json, else a JSON string>}
 *   A write action has "action":"write","file":<name>,"path":<path> instead of target, url,
 *   method and headers, and "record" instead of "body".
 * An event whose rule failed:
 *   {"id":"<dead-letter id>","dead_at":…,"reason":"rule failed","error":…,
 *    "event":{"id":…,"type":…,"store":…|null,"method":…,"path":…,"received_at":…},
 *    "raw_body":"<the request body as a JSON string>"}
 * Members come in this order, on one line (no '\n'); strings are JSON-escaped, a NULL string
 * is null. The id is a new UUIDv7 for each line: `hookrouter replay --id` takes it (or an event
 * id), and <dead_letters>.replayed lists the ids replayed. Lines written before ids existed are
 * named "<event id>|<dead_at>" instead (hr_deadletter_t.key).
 *
 * Credentials: the value of every header hr_header_is_secret() names is written as
 * HR_REDACTED; replay takes it from the target's headers in the current config. */
#ifndef HR_DEADLETTER_H
#define HR_DEADLETTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/action.h"
#include "hr/common.h"

/* What a credential header's value is in a dead letter: dead letters are read by people and
 * copied around, so "Authorization", "Proxy-Authorization", "Cookie" and every header whose
 * name contains key, token, secret, auth, password or signature (any case) is written as
 * this. */
#define HR_REDACTED "[redacted]"
/* True if a header called name carries a credential (see HR_REDACTED). */
bool hr_header_is_secret(const char *name);

/* ---- Writing ------------------------------------------------------------------------ */

/* What the event looked like when its rule failed. */
typedef struct {
    const char *id;
    const char *type;
    const char *store; /* or NULL */
    const char *method;
    const char *path;
    const char *received_at; /* RFC 3339 */
} hr_event_meta_t;

/* One attempt of a delivery, for the attempt log of a dead letter. */
typedef struct {
    uint32_t attempt;  /* 1-based */
    int status;        /* HTTP status, 0 for a transport error */
    uint64_t at_ms;    /* wall time the attempt ended */
    const char *error; /* transport error, or "" / NULL */
} hr_attempt_t;

/* Append the dead-letter line of an event whose rule failed (error: its message) to out, with
 * a new id and dead_at now. Can't fail. */
void hr_deadletter_for_event(hr_buf_t *out, const hr_event_meta_t *ev, const char *error,
                             const char *raw_body, size_t raw_len);
/* Append the dead-letter line of an action that could not be delivered (reason: why) to out,
 * with a new id, dead_at now, a's attempts / last_status / last_error and the attempt log
 * log[0..nlog) (oldest first). Credential header values are HR_REDACTED. Can't fail. */
void hr_deadletter_for_action_log(hr_buf_t *out, const hr_action_t *a, const char *reason,
                                  const hr_attempt_t *log, size_t nlog);
/* The same with an empty attempt log. */
void hr_deadletter_for_action(hr_buf_t *out, const hr_action_t *a, const char *reason);

/* ---- Reading ------------------------------------------------------------------------ */

struct cJSON;

/* One dead-letter line read back. The strings point into the parsed line (NULL when the
 * member is missing or not a string) and live until hr_deadletter_free. */
typedef struct {
    const char *line;     /* the line as given (not owned) */
    size_t len;           /* its length */
    char key[128];        /* its name for replay: the id, or "<event id>|<dead_at>" without one */
    const char *id;       /* "id" */
    const char *dead_at;  /* "dead_at" (RFC 3339) */
    const char *event_id; /* "event"."id" */
    const char *target;   /* "target" (a forward) */
    const char *file;     /* "file" (a write) */
    struct cJSON *json;   /* the parsed line (owned) */
} hr_deadletter_t;

/* Parse the line line[0..len) (without its '\n') into d. Returns 0, or -1 if it is not JSON
 * (d is then empty; hr_deadletter_free accepts it). */
int hr_deadletter_parse(const char *line, size_t len, hr_deadletter_t *d);
/* Free what hr_deadletter_parse allocated. */
void hr_deadletter_free(hr_deadletter_t *d);
/* The action the dead letter of an undeliverable action describes, as it was: event id, type,
 * store, accepted time (now if it is missing), name, and for a forward url, method (POST if
 * missing) and headers in their order, credential values still HR_REDACTED; for a write the
 * path. The body is the string's text, or the exact JSON text of a table (body_is_json).
 * timeout_ms and max_attempts are not in a dead letter: they are as hr_action_new makes them.
 * Returns NULL for a line that is not such a dead letter (a failed rule, an unknown action,
 * no body, a forward without target or url, a write without path). */
hr_action_t *hr_deadletter_action(const hr_deadletter_t *d);

#endif
