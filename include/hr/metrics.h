/* Metrics (src/metrics.c): fixed-bucket histograms written by one thread and read by any,
 * and the Prometheus text exposition writer (format 0.0.4: HELP and TYPE lines, samples,
 * label values escaped). Counters stay in their owners' structs (hr_router_counters_t);
 * this module only writes them out. Nothing here takes a lock: a histogram has one writer
 * (its worker's thread), which stores with relaxed atomics; a reader sums every worker's
 * copy with relaxed loads, so a scrape may see one observation in _count and not yet in a
 * bucket, never a torn value. */
#ifndef HR_METRICS_H
#define HR_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hr/common.h"

/* Upper bounds of the histogram buckets, in seconds (the +Inf bucket comes after them). */
#define HR_METRICS_NBUCKETS 12
extern const double hr_metrics_buckets[HR_METRICS_NBUCKETS];

/* One histogram: counts per bucket (not cumulative; the writer makes them cumulative), the
 * number of observations and their sum in microseconds. Zero-initialised is empty. Keep it
 * in memory written by one thread only (a worker's own counters). */
typedef struct {
    atomic_uint_least64_t bucket[HR_METRICS_NBUCKETS + 1]; /* last: above the largest bound */
    atomic_uint_least64_t count;                           /* observations */
    atomic_uint_least64_t sum_us;                          /* their sum, microseconds */
} hr_histogram_t;

/* Record one observation of us microseconds. Only the histogram's own thread may call it. */
void hr_histogram_observe(hr_histogram_t *h, uint64_t us);

/* A labelled family's series as one worker keeps them: each series is a rendered label set
 * (`type="push",outcome="accepted"`) with a counter and a histogram. Only the owning thread
 * adds series or counts; any thread may read (hr_metrics_series_write): a series is
 * published by a release store of n after it is complete, and never moves or goes away
 * until hr_series_set_free. The number of series is capped (label values come from
 * clients): past HR_SERIES_MAX - HR_SERIES_RESERVE new label sets go to the caller's
 * overflow label set instead. Zero-initialised is empty. */
#define HR_SERIES_MAX     256
#define HR_SERIES_RESERVE 16
typedef struct {
    char *labels;                /* rendered and escaped, owned; "" for none */
    atomic_uint_least64_t value; /* the counter */
    hr_histogram_t hist;         /* for a histogram family */
} hr_series_t;

typedef struct {
    atomic_size_t n;                    /* series published */
    hr_series_t *series[HR_SERIES_MAX]; /* the first n are valid */
    uint16_t index[2 * HR_SERIES_MAX];  /* owner only: hash of labels -> 1 + series */
} hr_series_set_t;

/* The series with these rendered labels (len bytes), added if new; when the set is full,
 * the series for overflow (rendered labels, added in the reserve if new). Never NULL. Only
 * the owning thread may call it. */
hr_series_t *hr_series_get(hr_series_set_t *set, const char *labels, size_t len,
                           const char *overflow);
/* Add d to a series' counter (owning thread only). */
void hr_series_add(hr_series_t *s, uint64_t d);
/* Free every series (when no thread uses the set any more); the set is empty after. */
void hr_series_set_free(hr_series_set_t *set);

/* Append the samples of family name (counter: name{labels} value; histogram: as
 * hr_metrics_histogram) merged over the n sets (stride bytes apart): series with the same
 * labels in several sets are summed. Output is sorted by labels. */
void hr_metrics_series_write(hr_buf_t *out, const char *name, bool histogram,
                             const hr_series_set_t *sets, size_t n, size_t stride);

/* Append "# HELP name help\n# TYPE name type\n" (type: counter, gauge, histogram). help must
 * not contain a newline or backslash (it is a constant). */
void hr_metrics_family(hr_buf_t *out, const char *name, const char *type, const char *help);

/* Append a label value with \, " and newline escaped as the format asks (\\, \", \n). */
void hr_metrics_escape(hr_buf_t *out, const char *value);

/* Append labels (nlabels pairs key, value) as k1="v1",k2="v2" (no braces), values escaped:
 * the rendered form hr_series_get takes. */
void hr_metrics_labels(hr_buf_t *out, const char *const *labels, size_t nlabels);

/* Append one sample: name{k1="v1",...} value. labels holds nlabels pairs (key, value); keys
 * are constants, values are escaped. value is written as an integer when it is one. */
void hr_metrics_sample(hr_buf_t *out, const char *name, const char *const *labels, size_t nlabels,
                       double value);

/* Append the samples of one histogram, summed over the n copies hs[0..n-1] (stride bytes
 * apart, so it can walk an array of per-worker structs): name_bucket{...,le="..."} for every
 * bound and +Inf (cumulative), name_sum (seconds) and name_count. labels as for
 * hr_metrics_sample. +Inf equals _count in what it writes even if a writer is mid-update. */
void hr_metrics_histogram(hr_buf_t *out, const char *name, const char *const *labels,
                          size_t nlabels, const hr_histogram_t *hs, size_t n, size_t stride);

/* The process_* families from /proc/self (resident memory, CPU seconds, open fds, start
 * time), HELP and TYPE included. A figure that cannot be read is left out. */
void hr_metrics_process(hr_buf_t *out);

#endif
