/* Append-only JSON-lines files: the file sink of write() actions and the dead-letter file
 * (src/files.c). Each line goes out in one write(2) on an O_APPEND descriptor, so a line is
 * never interleaved or half-buffered in the process; descriptors stay open between writes and
 * are reopened after hr_files_reopen() (SIGHUP, for logrotate). */
#ifndef HR_FILES_H
#define HR_FILES_H

#include "hr/action.h"
#include "hr/common.h"
#include "hr/config.h"

typedef struct hr_files hr_files_t;

hr_files_t *hr_files_create(void);
/* Append line plus '\n' to path, opening it (O_APPEND; a missing file is created with mode
 * 0600, or the one set by hr_files_set_modes, and missing parent directories with 0700) on
 * first use. An existing file's mode is never changed. A file that does not end in '\n' when
 * opened (a torn tail) gets a '\n' before the line, in the same write. Short writes are
 * continued. Returns 0, or a negative errno with a message in err. */
int hr_files_append(hr_files_t *f, const char *path, const char *line, size_t len, char *err,
                    size_t errlen);
/* Set the creation mode of the configured files (files.<name>.mode); the others, and the dead
 * letters, are created 0600. Can't fail. */
void hr_files_set_modes(hr_files_t *f, const hr_file_conf_t *v, size_t n);
/* Close every descriptor; each is opened again on its next append. */
void hr_files_reopen(hr_files_t *f);
void hr_files_destroy(hr_files_t *f);

/* What the event looked like when it failed, for a dead letter of a failed rule. */
typedef struct {
    const char *id;
    const char *type;
    const char *store; /* or NULL */
    const char *method;
    const char *path;
    const char *received_at; /* RFC 3339 */
} hr_event_meta_t;

/* Format a dead-letter line (no '\n') for an event whose rule failed:
 * {"dead_at":"…","reason":"rule failed","error":"…","event":{"id":…,"type":…,"store":…|null,
 *  "method":…,"path":…,"received_at":…},"raw_body":"<the body as a JSON string>"} */
void hr_deadletter_for_event(hr_buf_t *out, const hr_event_meta_t *ev, const char *error,
                             const char *raw_body, size_t raw_len);
/* One attempt of a delivery, for the attempt log of a dead letter. */
typedef struct {
    uint32_t attempt;  /* 1-based */
    int status;        /* HTTP status, 0 for a transport error */
    uint64_t at_ms;    /* wall time the attempt ended */
    const char *error; /* transport error, or "" / NULL */
} hr_attempt_t;

/* What a credential header's value is in a dead letter: dead letters are read by people and
 * copied around, so "Authorization", "Cookie" and every header whose name contains key,
 * token, secret, auth, password or signature is written as this; `hookrouter replay` takes
 * the value from the target's headers in the current config. */
#define HR_REDACTED "[redacted]"
/* True if a header called name carries a credential (see HR_REDACTED). */
bool hr_header_is_secret(const char *name);

/* Format a dead-letter line for an action that could not be delivered:
 * {"id":"<dead-letter id>","dead_at":…,"reason":…,
 *  "event":{"id":…,"type":…,"store":…,"accepted_at":…},
 *  "action":"forward","target":…,"url":…,"method":…,"headers":{…},"attempts":N,
 *  "last_status":N|null,"last_error":…|null,
 *  "attempt_log":[{"attempt":1,"at":…,"status":N|null,"error":…|null},…],
 *  "body":<JSON if body_is_json, else a JSON string>}
 * (for a write action: "action":"write","file":…,"path":…,"record":… instead of target, url,
 * method, headers and body). Credential header values are HR_REDACTED. The id is new for each line
 * (a UUIDv7); `hookrouter replay
 * --id` takes it. */
void hr_deadletter_for_action_log(hr_buf_t *out, const hr_action_t *a, const char *reason,
                                  const hr_attempt_t *log, size_t nlog);
/* The same without an attempt log. */
void hr_deadletter_for_action(hr_buf_t *out, const hr_action_t *a, const char *reason);

#endif
