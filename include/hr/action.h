/* An action a rule asked for: forward a body to an HTTP target, or write a line to a file.
 * Self-contained: it carries everything delivery needs (resolved URL, headers, file path,
 * retry policy), so queued actions never depend on the config generation that made them. */
#ifndef HR_ACTION_H
#define HR_ACTION_H

#include <stdint.h>

#include "hr/common.h"

typedef enum { HR_ACTION_FORWARD = 1, HR_ACTION_WRITE = 2 } hr_action_kind_t;

/* Bytes of an action's own string room. */
#define HR_ACTION_POOL 448

typedef struct hr_action {
    struct hr_action *next;   /* intrusive link, free for whoever owns the action */
    hr_action_kind_t kind;    /* forward or write */
    char event_id[HR_ID_LEN]; /* the event's id, sent as X-Hookrouter-Event-Id */
    char *event_type;         /* e.g. "checkout-zone.left" */
    char *store;              /* store id as a string, or NULL */
    char *name;               /* target or file name as in the config */
    uint64_t accepted_ms;     /* wall time the event was accepted */

    /* HR_ACTION_FORWARD */
    char *method;         /* "POST" unless the rule said otherwise */
    char *url;            /* full http:// URL: the target's url + opts.path */
    hr_header_t *headers; /* every header to send except Host, Content-Length, Connection */
    size_t nheaders;
    uint32_t timeout_ms;   /* per attempt */
    uint32_t max_attempts; /* >= 1 */

    /* HR_ACTION_WRITE */
    char *file_path; /* resolved path of the file (from the config, never from data) */

    /* Both: the request body (forward) or the line without its '\n' (write). */
    char *body;
    size_t body_len;
    bool body_is_json; /* body is JSON text (a table was encoded), not a raw string */

    /* Delivery bookkeeping, owned by the outbox. */
    uint32_t attempts;    /* attempts made so far */
    int last_status;      /* last HTTP status, 0 if none */
    char last_error[256]; /* last transport error, "" if none */
    /* Room for the short strings above (hr_action_strdup): a forward's name, method, URL and
     * headers cost no malloc and free each. */
    size_t pool_used;
    char pool[HR_ACTION_POOL];
} hr_action_t;

/* A zeroed action of the given kind. Never NULL. */
hr_action_t *hr_action_new(hr_action_kind_t kind);
/* Free an action and everything it owns. Accepts NULL. */
void hr_action_free(hr_action_t *a);
/* Append a header (copies name and value, with hr_action_strdup). */
void hr_action_add_header(hr_action_t *a, const char *name, const char *value);

/* A copy of s for one of a's string fields or headers: in a's own room while it lasts, else
 * malloc'd. Never NULL. Whatever holds such a string gives it back with hr_action_str_free
 * (hr_action_free does for every field and header). */
char *hr_action_strdup(hr_action_t *a, const char *s);
/* x then y as one such string (a target's URL and a rule's path). */
char *hr_action_strcat(hr_action_t *a, const char *x, const char *y);

/* Give back p, a string of one of a's fields or headers: freed unless it is in a's room.
 * Accepts NULL. */
void hr_action_str_free(const hr_action_t *a, char *p);
/* Free a whole list linked through next. */
void hr_action_list_free(hr_action_t *head);

#endif
