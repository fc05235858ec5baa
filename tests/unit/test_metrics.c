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
    hr_histogram_observe(&h[0], 100);        /* 0.0001 s: first bucket */
    hr_histogram_observe(&h[0], 1000);       /* exactly 0.001: le="0.001" */
    hr_histogram_observe(&h[1], 2000000);    /* 2 s: le="5" */
    hr_histogram_observe(&h[1], 100000000);  /* 100 s: only +Inf */
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
    test_process();
    return CHECK_DONE("test_metrics");
}
