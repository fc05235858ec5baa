/* Unit tests for src/deadletter.c: the dead-letter line written and read back (round trip),
 * redaction of credentials, the names replay uses, lines that are not replayable. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "hr/deadletter.h"

/* A forward action as a rule makes it. */
static hr_action_t *forward_action(void)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    strcpy(a->event_id, "0190-ev");
    a->event_type = hr_xstrdup("checkout-zone.left");
    a->store = hr_xstrdup("42");
    a->name = hr_xstrdup("pos");
    a->accepted_ms = 1715702531482ULL;
    a->method = hr_xstrdup("PUT");
    a->url = hr_xstrdup("http://127.0.0.1:9/x?a=1");
    hr_action_add_header(a, "Content-Type", "application/json");
    hr_action_add_header(a, "Authorization", "Bearer s3cret");
    hr_action_add_header(a, "X-Api-KEY", "k-123");
    hr_action_add_header(a, "X-Hookrouter-Event-Id", "0190-ev");
    a->attempts = 2;
    a->last_status = 503;
    return a;
}

/* Parse out[0..len) (as a dead-letter file line) into d; CHECKs that it parses. */
static void parse(const hr_buf_t *out, hr_deadletter_t *d)
{
    CHECK(memchr(out->data, '\n', out->len) == NULL);
    CHECK_INT_EQ(hr_deadletter_parse(out->data, out->len, d), 0);
}

/* A forward with a JSON body comes back as it was: every field, the headers in their order
 * with the credentials redacted, and the body's exact text (numbers as written). */
static void test_forward_round_trip(void)
{
    hr_action_t *a = forward_action();
    const char body[] =
        "{\"n\":1.50,\"big\":12345678901234567890,\"s\":\"a\\\"b\",\"l\":[ 1 , 2 ]}";
    a->body = hr_xstrdup(body);
    a->body_len = strlen(body);
    a->body_is_json = true;
    hr_attempt_t log[] = {{1, 0, 1715702531500ULL, "connection refused"},
                          {2, 503, 1715702536600ULL, ""}};
    hr_buf_t out = HR_BUF_INIT;
    uint64_t before = hr_wall_ms();
    hr_deadletter_for_action_log(&out, a, "attempts exhausted", log, 2);

    hr_deadletter_t d;
    parse(&out, &d);
    CHECK(d.id != NULL);
    CHECK_INT_EQ(d.id ? strlen(d.id) : 0, HR_ID_LEN - 1);
    CHECK_STR_EQ(d.key, d.id);
    CHECK_STR_EQ(d.event_id, "0190-ev");
    CHECK_STR_EQ(d.target, "pos");
    CHECK(d.file == NULL);
    uint64_t dead_ms = 0;
    CHECK(d.dead_at != NULL);
    CHECK_INT_EQ(hr_rfc3339_parse(d.dead_at ? d.dead_at : "", &dead_ms), 0);
    CHECK(dead_ms >= before - before % 1000 && dead_ms <= hr_wall_ms());
    CHECK(d.line == out.data && d.len == out.len);

    hr_action_t *b = hr_deadletter_action(&d);
    CHECK(b != NULL);
    if (!b) b = hr_action_new(HR_ACTION_WRITE); /* the checks below then fail, not crash */
    CHECK_INT_EQ(b->kind, HR_ACTION_FORWARD);
    CHECK_STR_EQ(b->event_id, "0190-ev");
    CHECK_STR_EQ(b->event_type, "checkout-zone.left");
    CHECK_STR_EQ(b->store, "42");
    CHECK_STR_EQ(b->name, "pos");
    CHECK_INT_EQ(b->accepted_ms, 1715702531482ULL);
    CHECK_STR_EQ(b->method, "PUT");
    CHECK_STR_EQ(b->url, "http://127.0.0.1:9/x?a=1");
    CHECK_INT_EQ(b->nheaders, 4);
    const char *want[][2] = {{"Content-Type", "application/json"},
                             {"Authorization", HR_REDACTED},
                             {"X-Api-KEY", HR_REDACTED},
                             {"X-Hookrouter-Event-Id", "0190-ev"}};
    for (size_t i = 0; i < 4 && i < b->nheaders; i++) {
        CHECK_STR_EQ(b->headers[i].name, want[i][0]);
        CHECK_STR_EQ(b->headers[i].value, want[i][1]);
    }
    CHECK(b->body_is_json);
    CHECK_INT_EQ(b->body_len, strlen(body));
    CHECK_STR_EQ(b->body, body);
    /* Delivery policy is not in a dead letter: the replay takes it from the config. */
    CHECK_INT_EQ(b->timeout_ms, 0);
    CHECK_INT_EQ(b->max_attempts, 1);
    CHECK_INT_EQ(b->attempts, 0);
    hr_action_free(b);

    /* The credential is nowhere in the line; the attempt log and outcome are. */
    CHECK(strstr(out.data, "s3cret") == NULL);
    CHECK(strstr(out.data, "k-123") == NULL);
    cJSON *j = d.json;
    CHECK_STR_EQ(cJSON_GetObjectItem(j, "reason")->valuestring, "attempts exhausted");
    CHECK_INT_EQ(cJSON_GetObjectItem(j, "attempts")->valueint, 2);
    CHECK_INT_EQ(cJSON_GetObjectItem(j, "last_status")->valueint, 503);
    cJSON *lg = cJSON_GetObjectItem(j, "attempt_log");
    CHECK_INT_EQ(cJSON_GetArraySize(lg), 2);
    cJSON *first = cJSON_GetArrayItem(lg, 0), *second = cJSON_GetArrayItem(lg, 1);
    CHECK(first != NULL && second != NULL);
    if (first && second) {
        CHECK_INT_EQ(cJSON_GetObjectItem(first, "attempt")->valueint, 1);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(first, "status")));
        CHECK_STR_EQ(cJSON_GetObjectItem(first, "error")->valuestring, "connection refused");
        CHECK_STR_EQ(cJSON_GetObjectItem(first, "at")->valuestring, "2024-05-14T16:02:11.500Z");
        CHECK_INT_EQ(cJSON_GetObjectItem(second, "status")->valueint, 503);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(second, "error")));
    }
    hr_deadletter_free(&d);
    CHECK(d.json == NULL);
    hr_action_free(a);
    hr_buf_free(&out);
}

/* A raw body (not JSON) with quotes, control bytes and UTF-8 comes back byte for byte; a
 * missing store and method round-trip as NULL and POST. */
static void test_raw_body_round_trip(void)
{
    hr_action_t *a = forward_action();
    free(a->store);
    a->store = NULL;
    free(a->method);
    a->method = NULL;
    const char body[] = "plain \"text\"\twith\x01 ctl, \\ and caf\xc3\xa9\r\n";
    a->body = hr_xstrdup(body);
    a->body_len = strlen(body);
    hr_buf_t out = HR_BUF_INIT;
    hr_deadletter_for_action(&out, a, "rejected");
    hr_deadletter_t d;
    parse(&out, &d);
    hr_action_t *b = hr_deadletter_action(&d);
    CHECK(b != NULL);
    if (b) {
        CHECK(!b->body_is_json);
        CHECK_INT_EQ(b->body_len, strlen(body));
        CHECK_STR_EQ(b->body, body);
        CHECK(b->store == NULL);
        CHECK_STR_EQ(b->method, "POST");
    }
    CHECK_INT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(d.json, "attempt_log")), 0);
    hr_action_free(b);
    hr_deadletter_free(&d);
    hr_action_free(a);
    hr_buf_free(&out);
}

/* A write action: file and path come back, the record is its JSON text. */
static void test_write_round_trip(void)
{
    hr_action_t *a = hr_action_new(HR_ACTION_WRITE);
    strcpy(a->event_id, "0190-w");
    a->event_type = hr_xstrdup("tracking");
    a->name = hr_xstrdup("audit");
    a->file_path = hr_xstrdup("/var/lib/hr/audit.jsonl");
    a->body = hr_xstrdup("{\"k\":\"v\",\"n\":10.0}");
    a->body_len = strlen(a->body);
    a->body_is_json = true;
    a->attempts = 1;
    snprintf(a->last_error, sizeof a->last_error, "write: No space left on device");
    hr_buf_t out = HR_BUF_INIT;
    hr_deadletter_for_action(&out, a, "write failed");
    hr_deadletter_t d;
    parse(&out, &d);
    CHECK(d.target == NULL);
    CHECK_STR_EQ(d.file, "audit");
    hr_action_t *b = hr_deadletter_action(&d);
    CHECK(b != NULL);
    if (b) {
        CHECK_INT_EQ(b->kind, HR_ACTION_WRITE);
        CHECK_STR_EQ(b->name, "audit");
        CHECK_STR_EQ(b->file_path, "/var/lib/hr/audit.jsonl");
        CHECK_STR_EQ(b->body, "{\"k\":\"v\",\"n\":10.0}");
        CHECK(b->body_is_json);
        CHECK_INT_EQ(b->nheaders, 0);
        CHECK(b->url == NULL);
    }
    hr_action_free(b);
    hr_deadletter_free(&d);
    hr_action_free(a);
    hr_buf_free(&out);
}

/* The dead letter of a failed rule has an id and its event, and is not replayable. */
static void test_event_line_is_not_an_action(void)
{
    hr_event_meta_t ev = {"0190-id", "checkout.completed", NULL,
                          "POST",    "/hooks/x",           "2024-05-14T16:02:11.482Z"};
    hr_buf_t out = HR_BUF_INIT;
    hr_deadletter_for_event(&out, &ev, "boom", "{\"a\":1}", 7);
    hr_deadletter_t d;
    parse(&out, &d);
    CHECK(d.id != NULL);
    CHECK_STR_EQ(d.key, d.id);
    CHECK_STR_EQ(d.event_id, "0190-id");
    CHECK(hr_deadletter_action(&d) == NULL);
    CHECK_STR_EQ(cJSON_GetObjectItem(d.json, "raw_body")->valuestring, "{\"a\":1}");
    hr_deadletter_free(&d);
    hr_buf_free(&out);
}

/* Two lines of the same action get different ids. */
static void test_ids_are_per_line(void)
{
    hr_action_t *a = forward_action();
    hr_buf_t one = HR_BUF_INIT, two = HR_BUF_INIT;
    hr_deadletter_for_action(&one, a, "x");
    hr_deadletter_for_action(&two, a, "x");
    hr_deadletter_t d1, d2;
    parse(&one, &d1);
    parse(&two, &d2);
    CHECK(d1.id && d2.id && strcmp(d1.id, d2.id) != 0);
    hr_deadletter_free(&d1);
    hr_deadletter_free(&d2);
    hr_buf_free(&one);
    hr_buf_free(&two);
    hr_action_free(a);
}

/* Lines written by hand or by older versions. */
static void test_other_lines(void)
{
    hr_deadletter_t d;
    /* No id: named by event id and dead_at. */
    const char *old = "{\"dead_at\":\"2024-05-14T16:02:11Z\",\"event\":{\"id\":\"e1\"},"
                      "\"action\":\"forward\",\"target\":\"pos\",\"url\":\"http://h/\","
                      "\"body\":\"x\"}";
    CHECK_INT_EQ(hr_deadletter_parse(old, strlen(old), &d), 0);
    CHECK_STR_EQ(d.key, "e1|2024-05-14T16:02:11Z");
    CHECK(d.id == NULL);
    hr_action_t *a = hr_deadletter_action(&d);
    CHECK(a != NULL);
    if (a) {
        CHECK_STR_EQ(a->method, "POST");
        CHECK_INT_EQ(a->nheaders, 0);
        CHECK(a->accepted_ms > 0); /* no accepted_at: now */
    }
    hr_action_free(a);
    hr_deadletter_free(&d);

    /* Not JSON: -1, and free accepts what is left. */
    CHECK_INT_EQ(hr_deadletter_parse("{\"id\":", 6, &d), -1);
    CHECK(d.json == NULL);
    hr_deadletter_free(&d);

    /* JSON but not replayable: no url, an unknown action, no body, no path, not an object. */
    const char *bad[] = {
        "{\"event\":{\"id\":\"e\"},\"action\":\"forward\",\"target\":\"pos\",\"body\":\"x\"}",
        "{\"event\":{\"id\":\"e\"},\"action\":\"mail\",\"target\":\"pos\",\"body\":\"x\"}",
        "{\"event\":{\"id\":\"e\"},\"action\":\"forward\",\"target\":\"p\",\"url\":\"http://h/\"}",
        "{\"event\":{\"id\":\"e\"},\"action\":\"write\",\"file\":\"f\",\"record\":{}}",
        "{\"action\":\"write\",\"file\":\"f\",\"path\":\"/p\",\"record\":{}}",
        "[1,2]",
    };
    for (size_t i = 0; i < HR_ARRAY_SIZE(bad); i++) {
        CHECK_INT_EQ(hr_deadletter_parse(bad[i], strlen(bad[i]), &d), 0);
        hr_action_t *x = hr_deadletter_action(&d);
        if (x) fprintf(stderr, "replayable by mistake: %s\n", bad[i]);
        CHECK(x == NULL);
        hr_action_free(x);
        hr_deadletter_free(&d);
    }
}

static void test_secret_headers(void)
{
    const char *secret[] = {"Authorization",   "proxy-authorization", "Cookie",      "X-Api-Key",
                            "X-Session-Token", "Client-Secret",       "X-Auth-User", "Password",
                            "X-Signature"};
    const char *plain[] = {"Content-Type", "X-Hookrouter-Event-Id", "Accept"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(secret); i++)
        CHECK(hr_header_is_secret(secret[i]));
    for (size_t i = 0; i < HR_ARRAY_SIZE(plain); i++)
        CHECK(!hr_header_is_secret(plain[i]));
}

/* A failed rule's dead letter: every event field, null for a missing store, the raw body. */
static void test_format_event(void)
{
    hr_event_meta_t ev = {.id = "0190-id",
                          .type = "checkout.completed",
                          .store = NULL,
                          .method = "POST",
                          .path = "/hooks/x",
                          .received_at = "2024-05-14T16:02:11.482Z"};
    hr_buf_t b = HR_BUF_INIT;
    const char raw[] = "not json \"quoted\"\n";
    hr_deadletter_for_event(&b, &ev, "boom: line 3", raw, sizeof raw - 1);
    CHECK(memchr(b.data, '\n', b.len) == NULL);
    cJSON *j = cJSON_Parse(b.data);
    CHECK(j != NULL);
    if (j) {
        CHECK(cJSON_IsString(cJSON_GetObjectItem(j, "dead_at")));
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "reason")->valuestring, "rule failed");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "error")->valuestring, "boom: line 3");
        cJSON *e = cJSON_GetObjectItem(j, "event");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "id")->valuestring, "0190-id");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "type")->valuestring, "checkout.completed");
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(e, "store")));
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "method")->valuestring, "POST");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "path")->valuestring, "/hooks/x");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "received_at")->valuestring,
                     "2024-05-14T16:02:11.482Z");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "raw_body")->valuestring, raw);
    }
    cJSON_Delete(j);
    hr_buf_free(&b);
}

/* A forward's and a write's dead letter: the fields replay and operators read. */
static void test_format_action(void)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    strcpy(a->event_id, "0190-ev");
    a->event_type = hr_xstrdup("checkout-zone.left");
    a->store = hr_xstrdup("42");
    a->name = hr_xstrdup("pos");
    a->accepted_ms = 1715702531482ULL;
    a->method = hr_xstrdup("PUT");
    a->url = hr_xstrdup("http://127.0.0.1:9/x");
    a->body = hr_xstrdup("{\"a\":[1,2]}");
    a->body_len = strlen(a->body);
    a->body_is_json = true;
    a->attempts = 3;
    a->last_status = 503;

    hr_buf_t b = HR_BUF_INIT;
    hr_deadletter_for_action(&b, a, "attempts exhausted");
    cJSON *j = cJSON_Parse(b.data);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "reason")->valuestring, "attempts exhausted");
        cJSON *e = cJSON_GetObjectItem(j, "event");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "id")->valuestring, "0190-ev");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "type")->valuestring, "checkout-zone.left");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "store")->valuestring, "42");
        CHECK_STR_EQ(cJSON_GetObjectItem(e, "accepted_at")->valuestring,
                     "2024-05-14T16:02:11.482Z");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "action")->valuestring, "forward");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "target")->valuestring, "pos");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "url")->valuestring, "http://127.0.0.1:9/x");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "method")->valuestring, "PUT");
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "attempts")->valueint, 3);
        CHECK_INT_EQ(cJSON_GetObjectItem(j, "last_status")->valueint, 503);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "last_error")));
        cJSON *body = cJSON_GetObjectItem(j, "body");
        CHECK(cJSON_IsObject(body));
        CHECK_INT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(body, "a")), 2);
    }
    cJSON_Delete(j);

    /* Raw (non-JSON) body and a transport error. */
    free(a->body);
    a->body = hr_xstrdup("plain \"text\"\twith\x01 ctl");
    a->body_len = strlen(a->body);
    a->body_is_json = false;
    a->last_status = 0;
    snprintf(a->last_error, sizeof a->last_error, "connection refused");
    free(a->store);
    a->store = NULL;
    hr_buf_reset(&b);
    hr_deadletter_for_action(&b, a, "shutdown");
    j = cJSON_Parse(b.data);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "body")->valuestring, a->body);
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(j, "last_status")));
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "last_error")->valuestring, "connection refused");
        CHECK(cJSON_IsNull(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "event"), "store")));
    }
    cJSON_Delete(j);
    hr_action_free(a);

    /* A write action. */
    a = hr_action_new(HR_ACTION_WRITE);
    strcpy(a->event_id, "0190-w");
    a->event_type = hr_xstrdup("tracking");
    a->name = hr_xstrdup("audit");
    a->file_path = hr_xstrdup("/var/lib/hr/audit.jsonl");
    a->body = hr_xstrdup("{\"k\":\"v\"}");
    a->body_len = strlen(a->body);
    a->body_is_json = true;
    a->attempts = 1;
    snprintf(a->last_error, sizeof a->last_error, "write: No space left on device");
    hr_buf_reset(&b);
    hr_deadletter_for_action(&b, a, "write failed");
    j = cJSON_Parse(b.data);
    CHECK(j != NULL);
    if (j) {
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "action")->valuestring, "write");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "file")->valuestring, "audit");
        CHECK_STR_EQ(cJSON_GetObjectItem(j, "path")->valuestring, "/var/lib/hr/audit.jsonl");
        CHECK_STR_EQ(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "record"), "k")->valuestring, "v");
        CHECK(cJSON_GetObjectItem(j, "target") == NULL);
    }
    cJSON_Delete(j);
    hr_action_free(a);
    hr_buf_free(&b);
}

int main(void)
{
    test_forward_round_trip();
    test_raw_body_round_trip();
    test_write_round_trip();
    test_event_line_is_not_an_action();
    test_ids_are_per_line();
    test_other_lines();
    test_secret_headers();
    test_format_event();
    test_format_action();
    return CHECK_DONE("test_deadletter");
}
