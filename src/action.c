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

void hr_action_free(hr_action_t *a)
{
    if (!a) return;
    free(a->event_type);
    free(a->store);
    free(a->name);
    free(a->method);
    free(a->url);
    hr_headers_free(a->headers, a->nheaders);
    free(a->file_path);
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
    a->headers[a->nheaders].name = hr_xstrdup(name);
    a->headers[a->nheaders].value = hr_xstrdup(value);
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
