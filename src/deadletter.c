/* Dead letters: format and parse of the dead-letter line (see include/hr/deadletter.h).
 *
 * Written by hand (not through cJSON) so that a body that is JSON goes in as the exact text
 * the rule produced; read back with cJSON for the members and with a small scanner for the
 * raw text of "body" / "record", so numbers and key order come back exactly as written. */
#include "hr/deadletter.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- Writing ---------------------------------------------------------------------------- */

/* Append s as a JSON string, or null when s is NULL. */
static void json_str_or_null(hr_buf_t *out, const char *s)
{
    if (s)
        hr_buf_append_json_string(out, s, strlen(s));
    else
        hr_buf_appends(out, "null");
}

/* Append prefix (the comma and key of a member) and s as a JSON string or null. */
static void member(hr_buf_t *out, const char *prefix, const char *s)
{
    hr_buf_appends(out, prefix);
    json_str_or_null(out, s);
}

/* Append an HTTP status, or null for none (0: a transport error). */
static void status_or_null(hr_buf_t *out, int status)
{
    if (status > 0)
        hr_buf_printf(out, "%d", status);
    else
        hr_buf_appends(out, "null");
}

/* Open a line: {"id":"<a new id>","dead_at":"<now>" */
static void line_start(hr_buf_t *out)
{
    char dlid[HR_ID_LEN], now[32];
    hr_id_new(dlid);
    hr_rfc3339(hr_wall_ms(), now);
    member(out, "{\"id\":", dlid);
    member(out, ",\"dead_at\":", now);
}

/* The line of an event whose rule failed (appended, no '\n'). */
void hr_deadletter_for_event(hr_buf_t *out, const hr_event_meta_t *ev, const char *error,
                             const char *raw_body, size_t raw_len)
{
    line_start(out);
    member(out, ",\"reason\":\"rule failed\",\"error\":", error);
    member(out, ",\"event\":{\"id\":", ev->id);
    member(out, ",\"type\":", ev->type);
    member(out, ",\"store\":", ev->store);
    member(out, ",\"method\":", ev->method);
    member(out, ",\"path\":", ev->path);
    member(out, ",\"received_at\":", ev->received_at);
    hr_buf_appends(out, "},\"raw_body\":");
    hr_buf_append_json_string(out, raw_body ? raw_body : "", raw_body ? raw_len : 0);
    hr_buf_appendc(out, '}');
}

bool hr_header_is_secret(const char *name)
{
    static const char *const exact[] = {"authorization", "proxy-authorization", "cookie", NULL};
    static const char *const parts[] = {"key",      "token",     "secret", "auth",
                                        "password", "signature", NULL};
    for (size_t i = 0; exact[i]; i++)
        if (strcasecmp(name, exact[i]) == 0) return true;
    for (size_t i = 0; parts[i]; i++)
        if (strcasestr(name, parts[i])) return true;
    return false;
}

/* The line of an undeliverable action (appended, no '\n'). Both kinds carry attempts,
 * last_status, last_error and the attempt log; a forward has target/url/method/headers/body,
 * a write has file/path/record. A body marked body_is_json is embedded as raw JSON (the rule
 * engine produced it by encoding a table), anything else as a JSON string. */
void hr_deadletter_for_action_log(hr_buf_t *out, const hr_action_t *a, const char *reason,
                                  const hr_attempt_t *log, size_t nlog)
{
    char accepted[32];
    hr_rfc3339(a->accepted_ms, accepted);
    line_start(out);
    member(out, ",\"reason\":", reason);
    hr_buf_appends(out, ",\"event\":{\"id\":");
    hr_buf_append_json_string(out, a->event_id, strnlen(a->event_id, sizeof a->event_id));
    member(out, ",\"type\":", a->event_type);
    member(out, ",\"store\":", a->store);
    member(out, ",\"accepted_at\":", accepted);
    hr_buf_appendc(out, '}');
    const char *body_key;
    if (a->kind == HR_ACTION_WRITE) {
        member(out, ",\"action\":\"write\",\"file\":", a->name);
        member(out, ",\"path\":", a->file_path);
        body_key = ",\"record\":";
    } else {
        member(out, ",\"action\":\"forward\",\"target\":", a->name);
        member(out, ",\"url\":", a->url);
        member(out, ",\"method\":", a->method ? a->method : "POST");
        hr_buf_appends(out, ",\"headers\":{");
        for (size_t i = 0; i < a->nheaders; i++) {
            if (i) hr_buf_appendc(out, ',');
            json_str_or_null(out, a->headers[i].name);
            hr_buf_appendc(out, ':');
            json_str_or_null(out, hr_header_is_secret(a->headers[i].name) ? HR_REDACTED
                                                                          : a->headers[i].value);
        }
        hr_buf_appendc(out, '}');
        body_key = ",\"body\":";
    }
    hr_buf_printf(out, ",\"attempts\":%u,\"last_status\":", (unsigned)a->attempts);
    status_or_null(out, a->last_status);
    member(out, ",\"last_error\":", a->last_error[0] ? a->last_error : NULL);
    hr_buf_appends(out, ",\"attempt_log\":[");
    for (size_t i = 0; i < nlog; i++) {
        char at[32];
        hr_rfc3339(log[i].at_ms, at);
        hr_buf_printf(out, "%s{\"attempt\":%u,\"at\":\"%s\",\"status\":", i ? "," : "",
                      (unsigned)log[i].attempt, at);
        status_or_null(out, log[i].status);
        member(out, ",\"error\":", log[i].error && log[i].error[0] ? log[i].error : NULL);
        hr_buf_appendc(out, '}');
    }
    hr_buf_appendc(out, ']');
    hr_buf_appends(out, body_key);
    if (a->body_is_json && a->body && a->body_len > 0)
        hr_buf_append(out, a->body, a->body_len);
    else
        hr_buf_append_json_string(out, a->body ? a->body : "", a->body ? a->body_len : 0);
    hr_buf_appendc(out, '}');
}

void hr_deadletter_for_action(hr_buf_t *out, const hr_action_t *a, const char *reason)
{
    hr_deadletter_for_action_log(out, a, reason, NULL, 0);
}

/* ---- Reading ---------------------------------------------------------------------------- */

static const char *jstr(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static char *dupj(const cJSON *j, const char *k)
{
    const char *s = jstr(j, k);
    return s ? hr_xstrdup(s) : NULL;
}

static const char *skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    return p;
}

/* Skip one JSON value at p (already validated by cJSON). Returns the end. */
static const char *skip_value(const char *p, const char *e)
{
    if (p >= e) return e;
    if (*p == '"') {
        for (p++; p < e && *p != '"'; p++)
            if (*p == '\\') p++;
        return p < e ? p + 1 : e;
    }
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < e; p++) {
            if (*p == '"') {
                p = skip_value(p, e) - 1;
            } else if (*p == '{' || *p == '[') {
                depth++;
            } else if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
        }
        return e;
    }
    while (p < e && *p != ',' && *p != '}' && *p != ']' && *p != ' ')
        p++;
    return p;
}

/* The raw text of the top-level member key of the object in line (exact: numbers and strings
 * as written). Returns 0 and sets *v / *n, or -1. */
static int raw_member(const char *line, size_t len, const char *key, const char **v, size_t *n)
{
    const char *p = line, *e = line + len;
    p = skip_ws(p, e);
    if (p >= e || *p != '{') return -1;
    p++;
    size_t klen = strlen(key);
    for (;;) {
        p = skip_ws(p, e);
        if (p >= e || *p != '"') return -1;
        const char *ks = p + 1;
        p = skip_value(p, e);
        bool match = (size_t)(p - 1 - ks) == klen && memcmp(ks, key, klen) == 0;
        p = skip_ws(p, e);
        if (p >= e || *p != ':') return -1;
        p = skip_ws(p + 1, e);
        const char *vs = p;
        p = skip_value(p, e);
        if (match) {
            *v = vs;
            *n = (size_t)(p - vs);
            return 0;
        }
        p = skip_ws(p, e);
        if (p >= e || *p != ',') return -1;
        p++;
    }
}

int hr_deadletter_parse(const char *line, size_t len, hr_deadletter_t *d)
{
    memset(d, 0, sizeof *d);
    d->line = line;
    d->len = len;
    d->json = cJSON_ParseWithLength(line, len);
    if (!d->json) return -1;
    const cJSON *j = d->json, *ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    d->id = jstr(j, "id");
    d->dead_at = jstr(j, "dead_at");
    d->event_id = ev ? jstr(ev, "id") : NULL;
    d->target = jstr(j, "target");
    d->file = jstr(j, "file");
    if (d->id)
        snprintf(d->key, sizeof d->key, "%s", d->id);
    else
        snprintf(d->key, sizeof d->key, "%s|%s", d->event_id ? d->event_id : "",
                 d->dead_at ? d->dead_at : "");
    return 0;
}

void hr_deadletter_free(hr_deadletter_t *d)
{
    cJSON_Delete(d->json);
    d->json = NULL;
}

hr_action_t *hr_deadletter_action(const hr_deadletter_t *d)
{
    const cJSON *j = d->json;
    const char *kind = jstr(j, "action");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    if (!kind || !ev) return NULL;
    bool fwd = strcmp(kind, "forward") == 0;
    if (!fwd && strcmp(kind, "write") != 0) return NULL;
    const char *raw;
    size_t rawlen;
    if (raw_member(d->line, d->len, fwd ? "body" : "record", &raw, &rawlen) != 0) return NULL;
    hr_action_t *a = hr_action_new(fwd ? HR_ACTION_FORWARD : HR_ACTION_WRITE);
    const char *eid = jstr(ev, "id");
    snprintf(a->event_id, sizeof a->event_id, "%s", eid ? eid : "");
    a->event_type = dupj(ev, "type");
    a->store = dupj(ev, "store");
    const char *acc = jstr(ev, "accepted_at");
    if (!acc || hr_rfc3339_parse(acc, &a->accepted_ms) != 0) a->accepted_ms = hr_wall_ms();
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(j, fwd ? "body" : "record");
    if (cJSON_IsString(body)) {
        a->body = hr_xstrdup(body->valuestring);
        a->body_len = strlen(a->body);
    } else {
        a->body = hr_xstrndup(raw, rawlen);
        a->body_len = rawlen;
        a->body_is_json = true;
    }
    if (fwd) {
        a->name = dupj(j, "target");
        a->url = dupj(j, "url");
        a->method = dupj(j, "method");
        if (!a->name || !a->url) {
            hr_action_free(a);
            return NULL;
        }
        if (!a->method) a->method = hr_xstrdup("POST");
        const cJSON *h;
        cJSON_ArrayForEach(h, cJSON_GetObjectItemCaseSensitive(j, "headers"))
        {
            if (cJSON_IsString(h) && h->string) hr_action_add_header(a, h->string, h->valuestring);
        }
    } else {
        a->name = dupj(j, "file");
        a->file_path = dupj(j, "path");
        if (!a->file_path) {
            hr_action_free(a);
            return NULL;
        }
    }
    return a;
}
