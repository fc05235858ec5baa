/* Shared by the two bench clients (curl_client.c, own_client.c): arguments, the body, the
 * clock, RSS, and the one result line both print. Bench tool only, not part of the build. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct {
    const char *url;
    long n;     /* requests in total */
    long c;     /* requests in flight at once (and connections at most) */
    char *body; /* the POST body, read from a file */
    size_t body_len;
    const char *cafile; /* https: the CA to verify the sink against (may be NULL) */
} bench_args_t;

static void bench_usage(const char *prog)
{
    fprintf(stderr, "usage: %s URL N C BODY_FILE [CA_FILE]\n", prog);
    exit(2);
}

static void bench_parse(int argc, char **argv, bench_args_t *a)
{
    if (argc < 5) bench_usage(argv[0]);
    a->url = argv[1];
    a->n = strtol(argv[2], NULL, 10);
    a->c = strtol(argv[3], NULL, 10);
    a->cafile = argc > 5 ? argv[5] : NULL;
    if (a->n <= 0 || a->c <= 0) bench_usage(argv[0]);
    if (a->c > a->n) a->c = a->n;
    FILE *f = fopen(argv[4], "rb");
    if (!f) {
        perror(argv[4]);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    a->body = malloc((size_t)len + 1);
    if (!a->body || fread(a->body, 1, (size_t)len, f) != (size_t)len) {
        perror("read body");
        exit(2);
    }
    fclose(f);
    a->body_len = (size_t)len;
}

static double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Current resident set (VmRSS) in KiB, from /proc/self/status. */
static long bench_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld", &kib) == 1) break;
    if (f) fclose(f);
    return kib;
}

static long bench_maxrss_kib(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

/* One line, key=value, that run.sh parses. rss_kib is VmRSS after the last response, before
 * teardown; conns is the connections opened (-1 if the client cannot tell). */
static void bench_report(const char *client, const bench_args_t *a, long ok, long failed,
                         long conns, double secs, long rss_kib)
{
    printf("client=%s n=%ld c=%ld ok=%ld failed=%ld conns=%ld secs=%.3f rps=%.0f rss_kib=%ld "
           "maxrss_kib=%ld\n",
           client, a->n, a->c, ok, failed, conns, secs, (double)ok / secs, rss_kib,
           bench_maxrss_kib());
    fflush(stdout);
}

#endif
