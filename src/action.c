/* Actions: allocation and release. */
#include "hr/action.h"

#include <stdlib.h>
#include <string.h>

hr_action_t *hr_action_new(hr_action_kind_t kind)
{
    hr_action_t *a = hr_xcalloc(1, sizeof *a);
    a->kind = kind;
    a->max_attempts = 1;
    return a;
}

char *hr_action_strcat(hr_action_t *a, const char *x, const char *y)
{
    size_t nx = strlen(x), ny = strlen(y) + 1;
    if (nx + ny > sizeof a->pool - a->pool_used) return hr_xstrcat(x, y);
    char *p = a->pool + a->pool_used;
    memcpy(p, x, nx);
    memcpy(p + nx, y, ny);
    a->pool_used += nx + ny;
    return p;
}

char *hr_action_strdup(hr_action_t *a, const char *s)
{
    return hr_action_strcat(a, s, "");
}

void hr_action_str_free(const hr_action_t *a, char *p)
{
    /* Compared as addresses: a pointer into the room is not to be freed. */
    uintptr_t u = (uintptr_t)p, lo = (uintptr_t)a->pool;
    if (u - lo >= sizeof a->pool) free(p);
}

void hr_action_free(hr_action_t *a)
{
    if (!a) return;
    hr_action_str_free(a, a->event_type);
    hr_action_str_free(a, a->store);
    hr_action_str_free(a, a->name);
    hr_action_str_free(a, a->method);
    hr_action_str_free(a, a->url);
    for (size_t i = 0; i < a->nheaders; i++) {
        hr_action_str_free(a, a->headers[i].name);
        hr_action_str_free(a, a->headers[i].value);
    }
    free(a->headers);
    hr_action_str_free(a, a->file_path);
    free(a->body);
    free(a);
}

void hr_action_add_header(hr_action_t *a, const char *name, const char *value)
{
    /* The array holds the next power of two (at least 4) of its count: it grows when the
     * count reaches one, so a forward's few headers cost one allocation, not one each. */
    size_t n = a->nheaders;
    if (n == 0 || (n >= 4 && (n & (n - 1)) == 0))
        a->headers = hr_xrealloc(a->headers, (n ? 2 * n : 4) * sizeof *a->headers);
    a->headers[a->nheaders].name = hr_action_strdup(a, name);
    a->headers[a->nheaders].value = hr_action_strdup(a, value);
    a->nheaders++;
}

void hr_action_list_free(hr_action_t *head)
{
    while (head) {
        hr_action_t *next = head->next;
        hr_action_free(head);
        head = next;
    }
}
