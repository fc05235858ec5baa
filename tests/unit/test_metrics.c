/* Unit tests for src/metrics.c: label escaping, sample and family lines, histograms summed
 * over several copies (cumulative buckets, +Inf equal to _count, sum in seconds) and the
 * process_* families. */
#include "hr/metrics.h"

#include <stdlib.h>

#include "check.h"

static char *text(hr_buf_t *b)
{
    hr_buf_appendc(b, '\0');
    return b->data;
}

static void test_escape(void)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_metrics_escape(&b, "a\\b\"c\nd");
    CHECK_STR_EQ(text(&b), "a\\\\b\\\"c\\nd");
    hr_buf_free(&b);
}

static void test_sample(void)
{
    hr_buf_t b = HR_BUF_INIT;
    const char *l[] = {"target", "po\"s", "result", "dead"};
    hr_metrics_family(&b, "x_total", "counter", "Things.");
    hr_metrics_sample(&b, "x_total", l, 2, 42);
    hr_metrics_sample(&b, "y", NULL, 0, 0.25);
    CHECK_STR_EQ(text(&b), "# HELP x_total Things.\n# TYPE x_total counter\n"
                           "x_total{target=\"po\\\"s\",result=\"dead\"} 42\ny 0.25\n");
    hr_buf_free(&b);
}

static void test_histogram(void)
{
    hr_histogram_t h[2] = {0};
    hr_histogram_observe(&h[0], 100);       /* 0.0001 s: first bucket */
    hr_histogram_observe(&h[0], 1000);      /* exactly 0.001: le="0.001" */
    hr_histogram_observe(&h[1], 2000000);   /* 2 s: le="5" */
    hr_histogram_observe(&h[1], 100000000); /* 100 s: only +Inf */
    hr_buf_t b = HR_BUF_INIT;
    const char *l[] = {"type", "push"};
    hr_metrics_histogram(&b, "d_seconds", l, 1, h, 2, sizeof h[0]);
    const char *t = text(&b);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"0.0005\"} 1\n") != NULL);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"0.001\"} 2\n") != NULL);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"1\"} 2\n") != NULL);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"5\"} 3\n") != NULL);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"30\"} 3\n") != NULL);
    CHECK(strstr(t, "d_seconds_bucket{type=\"push\",le=\"+Inf\"} 4\n") != NULL);
    CHECK(strstr(t, "d_seconds_count{type=\"push\"} 4\n") != NULL);
    CHECK(strstr(t, "d_seconds_sum{type=\"push\"} 102.0011\n") != NULL);
    /* buckets never decrease */
    unsigned long long prev = 0;
    int nb = 0;
    for (const char *p = strstr(t, "_bucket"); p; p = strstr(p + 1, "_bucket")) {
        unsigned long long v = strtoull(strchr(p, '}') + 2, NULL, 10);
        CHECK(v >= prev);
        prev = v;
        nb++;
    }
    CHECK_INT_EQ(nb, HR_METRICS_NBUCKETS + 1);
    hr_buf_free(&b);
}

/* Two workers' sets: the same labels summed, sorted output, overflow past the cap. */
static void test_series(void)
{
    hr_series_set_t sets[2] = {0};
    hr_buf_t l = HR_BUF_INIT;
    const char *lv[] = {"type", "a\"b", "outcome", "accepted"};
    hr_metrics_labels(&l, lv, 2);
    CHECK_STR_EQ(l.data, "type=\"a\\\"b\",outcome=\"accepted\"");
    hr_series_t *s0 = hr_series_get(&sets[0], l.data, l.len, "type=\"other\"");
    CHECK(s0 == hr_series_get(&sets[0], l.data, l.len, "type=\"other\""));
    hr_series_add(s0, 2);
    hr_series_add(hr_series_get(&sets[1], l.data, l.len, "x"), 3);
    hr_series_add(hr_series_get(&sets[1], "type=\"0\"", 8, "x"), 1);
    hr_histogram_observe(&s0->hist, 5);
    hr_buf_t b = HR_BUF_INIT;
    hr_metrics_series_write(&b, "e_total", false, sets, 2, sizeof sets[0]);
    CHECK_STR_EQ(text(&b), "e_total{type=\"0\"} 1\n"
                           "e_total{type=\"a\\\"b\",outcome=\"accepted\"} 5\n");
    hr_buf_reset(&b);
    hr_metrics_series_write(&b, "h", true, sets, 1, sizeof sets[0]);
    CHECK(strstr(text(&b), "h_count{type=\"a\\\"b\",outcome=\"accepted\"} 1\n") != NULL);
    /* fill worker 0's set: new labels go to the overflow series */
    char key[32];
    for (int i = 0; i < HR_SERIES_MAX; i++) {
        int n = snprintf(key, sizeof key, "k=\"%d\"", i);
        hr_series_add(hr_series_get(&sets[0], key, (size_t)n, "k=\"other\""), 1);
    }
    size_t n0 = atomic_load(&sets[0].n);
    CHECK_INT_EQ(n0, HR_SERIES_MAX - HR_SERIES_RESERVE + 1);
    hr_buf_reset(&b);
    hr_metrics_series_write(&b, "o", false, sets, 1, sizeof sets[0]);
    char want[64];
    snprintf(want, sizeof want, "o{k=\"other\"} %d\n", HR_SERIES_RESERVE + 1);
    CHECK(strstr(text(&b), want) != NULL);
    hr_buf_free(&b);
    hr_buf_free(&l);
    hr_series_set_free(&sets[0]);
    hr_series_set_free(&sets[1]);
}

static void test_process(void)
{
    hr_buf_t b = HR_BUF_INIT;
    hr_metrics_process(&b);
    const char *t = text(&b);
    const char *names[] = {"process_resident_memory_bytes", "process_cpu_seconds_total",
                           "process_open_fds", "process_start_time_seconds"};
    for (size_t i = 0; i < HR_ARRAY_SIZE(names); i++) {
        char want[96];
        snprintf(want, sizeof want, "\n%s ", names[i]);
        const char *p = strstr(t, want);
        CHECK(p != NULL);
        if (p && i != 1) CHECK(strtod(p + strlen(want), NULL) > 0); /* CPU may be 0 yet */
    }
    hr_buf_free(&b);
}

int main(void)
{
    test_escape();
    test_sample();
    test_histogram();
    test_series();
    test_process();
    return CHECK_DONE("test_metrics");
}
