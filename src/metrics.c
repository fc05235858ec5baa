/* Metrics: histograms and the Prometheus text exposition writer (hr/metrics.h). */
#include "hr/metrics.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

const double hr_metrics_buckets[HR_METRICS_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                        0.05,   0.1,   0.25,   1,     5,    30};

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
    for (const char *p = value;;) {
        size_t n = strcspn(p, "\\\"\n"); /* the plain run, copied at once (the hot path) */
        hr_buf_append(out, p, n);
        p += n;
        if (!*p) return;
        hr_buf_appends(out, *p == '\n' ? "\\n" : *p == '"' ? "\\\"" : "\\\\");
        p++;
    }
}

void hr_metrics_labels(hr_buf_t *out, const char *const *labels, size_t nlabels)
{
    for (size_t i = 0; i < nlabels; i++) { /* no printf: this runs per event */
        if (i) hr_buf_appendc(out, ',');
        hr_buf_appends(out, labels[2 * i]);
        hr_buf_append(out, "=\"", 2);
        hr_metrics_escape(out, labels[2 * i + 1]);
        hr_buf_appendc(out, '"');
    }
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
    if (nlabels) {
        hr_buf_appendc(out, '{');
        hr_metrics_labels(out, labels, nlabels);
        hr_buf_appendc(out, '}');
    }
    append_value(out, value);
}

/* ---------------------------------------------------------------- series */

static uint32_t hash_labels(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* The series for labels in set, or NULL; *slot: its index slot, or the empty one to fill. */
static hr_series_t *series_find(hr_series_set_t *set, const char *labels, size_t len,
                                uint16_t **slot)
{
    size_t mask = HR_ARRAY_SIZE(set->index) - 1;
    for (size_t i = hash_labels(labels, len) & mask;; i = (i + 1) & mask) {
        uint16_t k = set->index[i];
        *slot = &set->index[i];
        if (k == 0) return NULL;
        hr_series_t *s = set->series[k - 1];
        if (strncmp(s->labels, labels, len) == 0 && s->labels[len] == '\0') return s;
    }
}

/* Publish a new series for labels in set (there is room) and index it at slot. */
static hr_series_t *series_add(hr_series_set_t *set, const char *labels, size_t len, uint16_t *slot)
{
    size_t n = atomic_load_explicit(&set->n, memory_order_relaxed);
    /* its own cache lines: other workers write their own series, never this one */
    size_t size = (sizeof(hr_series_t) + 63) / 64 * 64;
    hr_series_t *s = aligned_alloc(64, size);
    if (!s) {
        fprintf(stderr, "hookrouter: out of memory allocating %zu bytes\n", size);
        abort();
    }
    memset(s, 0, size);
    s->labels = hr_xstrndup(labels, len);
    set->series[n] = s;
    *slot = (uint16_t)(n + 1);
    atomic_store_explicit(&set->n, n + 1, memory_order_release);
    return s;
}

hr_series_t *hr_series_get(hr_series_set_t *set, const char *labels, size_t len,
                           const char *overflow)
{
    uint16_t *slot;
    hr_series_t *s = series_find(set, labels, len, &slot);
    if (s) return s;
    size_t n = atomic_load_explicit(&set->n, memory_order_relaxed);
    if (n < HR_SERIES_MAX - HR_SERIES_RESERVE) return series_add(set, labels, len, slot);
    size_t olen = strlen(overflow);
    s = series_find(set, overflow, olen, &slot);
    if (s) return s;
    if (n < HR_SERIES_MAX) return series_add(set, overflow, olen, slot);
    return set->series[n - 1]; /* the reserve is spent too: the last overflow series */
}

void hr_series_add(hr_series_t *s, uint64_t d)
{
    bump(&s->value, d);
}

void hr_series_set_free(hr_series_set_t *set)
{
    size_t n = atomic_load_explicit(&set->n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++) {
        free(set->series[i]->labels);
        free(set->series[i]);
    }
    memset(set, 0, sizeof *set);
}

static int cmp_series(const void *a, const void *b)
{
    const hr_series_t *x = *(const hr_series_t *const *)a, *y = *(const hr_series_t *const *)b;
    return strcmp(x->labels, y->labels);
}

/* Append the histogram samples of the n series hs (same labels, summed). */
static void write_histogram(hr_buf_t *out, const char *name, const char *labels,
                            const hr_histogram_t *const *hs, size_t n)
{
    uint64_t b[HR_METRICS_NBUCKETS + 1] = {0}, sum_us = 0;
    for (size_t k = 0; k < n; k++) {
        for (size_t i = 0; i <= HR_METRICS_NBUCKETS; i++)
            b[i] += atomic_load_explicit(&hs[k]->bucket[i], memory_order_relaxed);
        sum_us += atomic_load_explicit(&hs[k]->sum_us, memory_order_relaxed);
    }
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0; /* _count is the +Inf bucket as summed here: they always agree */
    for (size_t i = 0; i <= HR_METRICS_NBUCKETS; i++) {
        cum += b[i];
        if (i < HR_METRICS_NBUCKETS)
            hr_buf_printf(out, "%s_bucket{%s%sle=\"%g\"}", name, labels, sep,
                          hr_metrics_buckets[i]);
        else
            hr_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"}", name, labels, sep);
        append_value(out, (double)cum);
    }
    hr_buf_printf(out, labels[0] ? "%s_sum{%s}" : "%s_sum%s", name, labels);
    append_value(out, (double)sum_us / 1e6);
    hr_buf_printf(out, labels[0] ? "%s_count{%s}" : "%s_count%s", name, labels);
    append_value(out, (double)cum);
}

void hr_metrics_series_write(hr_buf_t *out, const char *name, bool histogram,
                             const hr_series_set_t *sets, size_t n, size_t stride)
{
    size_t total = 0, cap = 0;
    const hr_series_t **all = NULL;
    for (size_t k = 0; k < n; k++) {
        const hr_series_set_t *set = (const hr_series_set_t *)((const char *)sets + k * stride);
        size_t m = atomic_load_explicit(&set->n, memory_order_acquire);
        if (total + m > cap) {
            cap = (total + m) * 2;
            all = hr_xrealloc(all, cap * sizeof *all);
        }
        for (size_t i = 0; i < m; i++)
            all[total++] = set->series[i];
    }
    if (total) qsort(all, total, sizeof *all, cmp_series);
    const hr_histogram_t **hs = histogram ? hr_xmalloc((total + 1) * sizeof *hs) : NULL;
    for (size_t i = 0; i < total;) {
        size_t j = i;
        uint64_t v = 0;
        for (; j < total && strcmp(all[j]->labels, all[i]->labels) == 0; j++) {
            v += atomic_load_explicit(&all[j]->value, memory_order_relaxed);
            if (hs) hs[j - i] = &all[j]->hist;
        }
        if (hs)
            write_histogram(out, name, all[i]->labels, hs, j - i);
        else {
            hr_buf_printf(out, all[i]->labels[0] ? "%s{%s}" : "%s%s", name, all[i]->labels);
            append_value(out, (double)v);
        }
        i = j;
    }
    free(hs);
    free(all);
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

void hr_metrics_histogram(hr_buf_t *out, const char *name, const char *const *labels,
                          size_t nlabels, const hr_histogram_t *hs, size_t n, size_t stride)
{
    hr_buf_t l = HR_BUF_INIT;
    hr_metrics_labels(&l, labels, nlabels);
    const hr_histogram_t **p = hr_xmalloc((n + 1) * sizeof *p);
    for (size_t k = 0; k < n; k++)
        p[k] = (const hr_histogram_t *)((const char *)hs + k * stride);
    write_histogram(out, name, l.data ? l.data : "", p, n);
    free(p);
    hr_buf_free(&l);
}
