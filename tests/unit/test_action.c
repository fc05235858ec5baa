/* Unit test for src/action.c: an action's strings in its own room while it lasts and on the
 * heap after, each given back the right way (valgrind and ASan see a wrong free or a leak),
 * a header replaced in place, and a spool round trip of an action whose strings are in both. */
#include "check.h"
#include "hr/action.h"
#include "hr/spool.h"

static bool in_room(const hr_action_t *a, const char *p)
{
    return p >= a->pool && p < a->pool + sizeof a->pool;
}

static void test_room_then_heap(void)
{
    hr_action_t *a = hr_action_new(HR_ACTION_FORWARD);
    a->name = hr_action_strdup(a, "pos");
    a->method = hr_action_strdup(a, "POST");
    char *url = hr_action_strcat(a, "http://h/base", "/path?q=1");
    CHECK(in_room(a, a->name) && in_room(a, a->method) && in_room(a, url));
    CHECK_STR_EQ(url, "http://h/base/path?q=1");
    hr_action_str_free(a, url); /* in the room: nothing to free */
    CHECK_STR_EQ(a->name, "pos");
    CHECK_STR_EQ(a->method, "POST");
    /* A string longer than the room left goes to the heap; the room still serves short ones. */
    char big[HR_ACTION_POOL + 10];
    memset(big, 'u', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    a->url = hr_action_strdup(a, big);
    CHECK(!in_room(a, a->url));
    CHECK_STR_EQ(a->url, big);
    for (int i = 0; i < 40; i++) /* 40 x 2 x 16 bytes: past the room, so both kinds */
        hr_action_add_header(a, "X-Header-Name-1", "value-of-some-15");
    CHECK_INT_EQ(a->nheaders, 40);
    CHECK(in_room(a, a->headers[0].name));
    CHECK(!in_room(a, a->headers[39].value));
    for (size_t i = 0; i < a->nheaders; i++) {
        CHECK_STR_EQ(a->headers[i].name, "X-Header-Name-1");
        CHECK_STR_EQ(a->headers[i].value, "value-of-some-15");
    }
    CHECK(a->pool_used <= sizeof a->pool);
    /* Replacing a value in the room and one on the heap (as the rules' set_header does). */
    hr_action_str_free(a, a->headers[0].value);
    a->headers[0].value = hr_action_strdup(a, "new");
    hr_action_str_free(a, a->headers[39].value);
    a->headers[39].value = hr_xstrdup("heap");
    CHECK_STR_EQ(a->headers[0].value, "new");
    hr_action_str_free(a, NULL); /* accepted */
    a->body = hr_xstrdup("{}");
    a->body_len = 2;
    /* Through the spool's encoding and back: the same strings, wherever each was. */
    hr_buf_t b = HR_BUF_INIT;
    hr_spool_encode_action(&b, a, 7);
    uint64_t id = 0;
    hr_action_t *c = hr_spool_decode_action(b.data, b.len, &id);
    CHECK(c != NULL);
    CHECK_INT_EQ(id, 7);
    CHECK_STR_EQ(c->name, "pos");
    CHECK_STR_EQ(c->url, big);
    CHECK_INT_EQ(c->nheaders, 40);
    CHECK_STR_EQ(c->headers[0].value, "new");
    CHECK_STR_EQ(c->headers[39].value, "heap");
    hr_buf_free(&b);
    hr_action_free(c);
    hr_action_free(a);
}

int main(void)
{
    test_room_then_heap();
    return CHECK_DONE("test_action");
}
