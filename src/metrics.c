/* Metrics: histograms and the Prometheus text exposition writer (hr/metrics.h). */
#include "hr/metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const double hr_metrics_buckets[HR_METRICS_NBUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30};

/* Single writer: a load and a store, no read-modify-write needed. */
static inline void bump(atomic_uint_least64_t *c, uint64_t d)
{
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + d,
                          memory_order_relaxed);
}

void hr_histogram_observe(hr_histogram_t *h, uint64_t us)
{
    double s = (double)us / 1e6;
    size_t i = 0;
    while (i < HR_METRICS_NBUCKETS && s > hr_metrics_buckets[i])
        i++;
    bump(&h->bucket[i], 1);
    bump(&h->sum_us, us);
    bump(&h->count, 1);
}

void hr_metrics_family(hr_buf_t *out, const char *name, const char *type, const char *help)
{
    hr_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void hr_metrics_escape(hr_buf_t *out, const char *value)
{
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            hr_buf_appends(out, "\\\\");
        else if (*p == '"')
            hr_buf_appends(out, "\\\"");
        else if (*p == '\n')
            hr_buf_appends(out, "\\n");
        else
            hr_buf_appendc(out, *p);
    }
}

/* Append {k="v",...} (nothing when there are no labels and no extra), with one more pair
 * (extra_key, extra_value: unescaped constants) at the end when extra_key is not NULL. */
static void append_labels(hr_buf_t *out, const char *const *labels, size_t nlabels,
                          const char *extra_key, const char *extra_value)
{
    if (nlabels == 0 && !extra_key) return;
    hr_buf_appendc(out, '{');
    for (size_t i = 0; i < nlabels; i++) {
        hr_buf_printf(out, "%s%s=\"", i ? "," : "", labels[2 * i]);
        hr_metrics_escape(out, labels[2 * i + 1]);
        hr_buf_appendc(out, '"');
    }
    if (extra_key) hr_buf_printf(out, "%s%s=\"%s\"", nlabels ? "," : "", extra_key, extra_value);
    hr_buf_appendc(out, '}');
}

/* Append " value\n": an integer when value is one (exactly representable), else %.15g. */
static void append_value(hr_buf_t *out, double value)
{
    if (isfinite(value) && value == floor(value) && fabs(value) < 9.007199254740992e15)
        hr_buf_printf(out, " %.0f\n", value);
    else
        hr_buf_printf(out, " %.15g\n", value);
}

void hr_metrics_sample(hr_buf_t *out, const char *name, const char *const *labels, size_t nlabels,
                       double value)
{
    hr_buf_appends(out, name);
    append_labels(out, labels, nlabels, NULL, NULL);
    append_value(out, value);
}

void hr_metrics_histogram(hr_buf_t *out, const char *name, const char *const *labels,
                          size_t nlabels, const hr_histogram_t *hs, size_t n, size_t stride)
{
    uint64_t b[HR_METRICS_NBUCKETS + 1] = {0}, sum_us = 0;
    for (size_t k = 0; k < n; k++) {
        const hr_histogram_t *h = (const hr_histogram_t *)((const char *)hs + k * stride);
        for (size_t i = 0; i <= HR_METRICS_NBUCKETS; i++)
            b[i] += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        sum_us += atomic_load_explicit(&h->sum_us, memory_order_relaxed);
    }
    /* _count is the +Inf bucket as summed here, so the two always agree in one scrape. */
    uint64_t cum = 0;
    char le[32];
    for (size_t i = 0; i <= HR_METRICS_NBUCKETS; i++) {
        cum += b[i];
        if (i < HR_METRICS_NBUCKETS)
            snprintf(le, sizeof le, "%g", hr_metrics_buckets[i]);
        else
            snprintf(le, sizeof le, "+Inf");
        hr_buf_printf(out, "%s_bucket", name);
        append_labels(out, labels, nlabels, "le", le);
        append_value(out, (double)cum);
    }
    hr_buf_printf(out, "%s_sum", name);
    append_labels(out, labels, nlabels, NULL, NULL);
    append_value(out, (double)sum_us / 1e6);
    hr_buf_printf(out, "%s_count", name);
    append_labels(out, labels, nlabels, NULL, NULL);
    append_value(out, (double)cum);
}

/* ---------------------------------------------------------------- process */

/* Fields 14 (utime), 15 (stime) and 22 (starttime, clock ticks since boot) of
 * /proc/self/stat, and field 24 (rss, pages). Returns 0, or -1 if it cannot be read. */
static int read_stat(unsigned long long *utime, unsigned long long *stime,
                     unsigned long long *start, long long *rss)
{
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    char line[1024];
    char *ok = fgets(line, sizeof line, f);
    fclose(f);
    if (!ok) return -1;
    char *p = strrchr(line, ')'); /* the command name may hold spaces */
    if (!p) return -1;
    /* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
       utime(14) stime cutime cstime priority nice threads itreal starttime(22) vsize rss(24) */
    int n = sscanf(p + 2,
                   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
                   "%*d %llu %*u %lld",
                   utime, stime, start, rss);
    return n == 4 ? 0 : -1;
}

/* Seconds since the epoch at boot (btime in /proc/stat), or -1. */
static long long boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[256];
    long long bt = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %lld", &bt) == 1) break;
    fclose(f);
    return bt;
}

/* Entries in /proc/self/fd (less the one this count opens), or -1. */
static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;
}

void hr_metrics_process(hr_buf_t *out)
{
    unsigned long long ut, st, start;
    long long rss;
    double tck = (double)sysconf(_SC_CLK_TCK);
    if (read_stat(&ut, &st, &start, &rss) == 0 && tck > 0) {
        hr_metrics_family(out, "process_resident_memory_bytes", "gauge",
                          "Resident memory size in bytes.");
        hr_metrics_sample(out, "process_resident_memory_bytes", NULL, 0,
                          (double)rss * (double)sysconf(_SC_PAGESIZE));
        hr_metrics_family(out, "process_cpu_seconds_total", "counter",
                          "Total user and system CPU time spent in seconds.");
        hr_metrics_sample(out, "process_cpu_seconds_total", NULL, 0, (double)(ut + st) / tck);
        long long bt = boot_time();
        if (bt >= 0) {
            hr_metrics_family(out, "process_start_time_seconds", "gauge",
                              "Start time of the process since unix epoch in seconds.");
            hr_metrics_sample(out, "process_start_time_seconds", NULL, 0,
                              (double)bt + (double)start / tck);
        }
    }
    long fds = count_fds();
    if (fds >= 0) {
        hr_metrics_family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
        hr_metrics_sample(out, "process_open_fds", NULL, 0, (double)fds);
    }
}
