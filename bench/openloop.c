/* openloop: an open-loop HTTP/1.1 load generator (what wrk2 does; wrk2 is not in Debian).
 *
 *   openloop -r RATE -c CONNS -d SECONDS -f BODY_FILE [-H "Name: value"]...
 * http://127.0.0.1:PORT/path
 *
 * Requests are due at fixed intervals (1/RATE s), whatever the server does. A due request goes
 * out on an idle keep-alive connection (one request in flight per connection); when none is
 * idle it waits, and its latency still counts from the time it was due, so a stall shows in
 * the percentiles instead of slowing the load down (coordinated omission). Latencies go into
 * log-linear buckets (HdrHistogram-style: 64 buckets per power of two, < 1.6 % error).
 * Prints one line: "RESULT sent=... ok=... errors=... late_start_us=... p50_us=... p90_us=...
 * p99_us=... p999_us=... max_us=... rate=...". Loopback only (a numeric IPv4 address); exit 1
 * on a connection error. Built by CMake as a bench tool, not installed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SUB_BITS 7 /* values of one power of two fall into SUB / 2 = 64 buckets */
#define SUB      (1 << SUB_BITS)
#define HALF     (SUB / 2)
#define NBUCKETS (SUB + 64 * HALF)

static uint64_t hist[NBUCKETS];
static uint64_t nsamples, max_ns;

/* Bucket of a latency in ns: exact below SUB, then HALF equal steps per power of two. */
static unsigned bucket_of(uint64_t v)
{
    if (v < SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - SUB_BITS + 1; /* v >> shift is in [HALF, SUB) */
    return SUB + (shift - 1) * HALF + (unsigned)(v >> shift) - HALF;
}

/* Largest value (ns) of bucket b. */
static uint64_t bucket_top(unsigned b)
{
    if (b < SUB) return b;
    unsigned shift = (b - SUB) / HALF + 1;
    uint64_t top = (b - SUB) % HALF + HALF;
    return ((top + 1) << shift) - 1;
}

static void record(uint64_t ns)
{
    unsigned b = bucket_of(ns);
    if (b >= NBUCKETS) b = NBUCKETS - 1;
    hist[b]++;
    nsamples++;
    if (ns > max_ns) max_ns = ns;
}

/* Latency (ns) at or below which fraction q of the samples lie. */
static uint64_t percentile(double q)
{
    uint64_t want = (uint64_t)(q * (double)nsamples + 0.999999), seen = 0;
    if (want == 0) want = 1;
    for (unsigned b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= want) return bucket_top(b) < max_ns ? bucket_top(b) : max_ns;
    }
    return max_ns;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

typedef struct {
    int fd;
    bool busy;     /* a request is in flight */
    uint64_t due;  /* when the request in flight was due */
    size_t sent;   /* bytes of it written */
    char in[4096]; /* reply bytes read so far */
    size_t inlen;
} conn_t;

static char *req;
static size_t reqlen;
static uint64_t ok, errors;

/* Write what is left of the request on c. Returns -1 on a connection error. */
static int pump_write(conn_t *c)
{
    while (c->sent < reqlen) {
        ssize_t n = write(c->fd, req + c->sent, reqlen - c->sent);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->sent += (size_t)n;
    }
    return 0;
}

/* Read replies on c; a complete one (headers, then Content-Length bytes) is recorded and
 * frees the connection. Returns -1 on a connection error or close. */
static int pump_read(conn_t *c)
{
    for (;;) {
        ssize_t n = read(c->fd, c->in + c->inlen, sizeof c->in - c->inlen);
        if (n == 0) return -1;
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        c->inlen += (size_t)n;
        c->in[c->inlen < sizeof c->in ? c->inlen : sizeof c->in - 1] = '\0';
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!end) {
            if (c->inlen == sizeof c->in) return -1;
            continue;
        }
        size_t clen = 0;
        char *cl = memmem(c->in, (size_t)(end - c->in), "Content-Length:", 15);
        if (!cl) cl = memmem(c->in, (size_t)(end - c->in), "content-length:", 15);
        if (cl) clen = strtoul(cl + 15, NULL, 10);
        size_t total = (size_t)(end - c->in) + 4 + clen;
        if (c->inlen < total) continue;
        if (c->busy) {
            record(now_ns() - c->due);
            if (strncmp(c->in + 9, "200", 3) == 0)
                ok++;
            else
                errors++;
        }
        memmove(c->in, c->in + total, c->inlen - total);
        c->inlen -= total;
        c->busy = false;
        return 0;
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: openloop -r RATE -c CONNS -d SECONDS -f BODY_FILE [-H 'Name: value']... "
            "http://127.0.0.1:PORT/path\n");
    exit(2);
}

int main(int argc, char **argv)
{
    double rate = 1000, secs = 10;
    int nconn = 16;
    const char *body_file = NULL, *url = NULL;
    char headers[4096] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc)
            rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "-c") && i + 1 < argc)
            nconn = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-d") && i + 1 < argc)
            secs = atof(argv[++i]);
        else if (!strcmp(argv[i], "-f") && i + 1 < argc)
            body_file = argv[++i];
        else if (!strcmp(argv[i], "-H") && i + 1 < argc) {
            size_t l = strlen(headers);
            snprintf(headers + l, sizeof headers - l, "%s\r\n", argv[++i]);
        } else if (argv[i][0] != '-' && !url)
            url = argv[i];
        else
            usage();
    }
    if (!url || !body_file || rate <= 0 || nconn < 1 || secs <= 0) usage();
    char host[64];
    int port;
    char path[1024] = "/";
    if (sscanf(url, "http://%63[0-9.]:%d%1023s", host, &port, path) < 2) usage();
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) usage();

    FILE *f = fopen(body_file, "rb");
    if (!f) {
        perror(body_file);
        return 1;
    }
    static char body[1 << 20];
    size_t blen = fread(body, 1, sizeof body, f);
    fclose(f);
    req = malloc(blen + 8192);
    reqlen =
        (size_t)snprintf(req, 8192,
                         "POST %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Type: application/json\r\n"
                         "Content-Length: %zu\r\n\r\n",
                         path, host, port, headers, blen);
    memcpy(req + reqlen, body, blen);
    reqlen += blen;

    int ep = epoll_create1(0);
    conn_t *conns = calloc((size_t)nconn, sizeof *conns);
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(conns[i].fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(conns[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(conns[i].fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = &conns[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }

    uint64_t interval = (uint64_t)(1e9 / rate), start = now_ns();
    uint64_t total = (uint64_t)(rate * secs), issued = 0, late_start = 0;
    int next_idle = 0;
    while (issued < total || ok + errors < issued) {
        uint64_t t = now_ns();
        /* send every request that is due, on idle connections */
        while (issued < total && start + issued * interval <= t) {
            conn_t *c = NULL;
            for (int k = 0; k < nconn; k++) {
                conn_t *x = &conns[(next_idle + k) % nconn];
                if (!x->busy) {
                    c = x;
                    next_idle = (next_idle + k + 1) % nconn;
                    break;
                }
            }
            if (!c) break; /* all busy: it waits, its clock running */
            c->busy = true;
            c->due = start + issued * interval;
            if (t - c->due > late_start) late_start = t - c->due;
            c->sent = 0;
            issued++;
            if (pump_write(c) != 0) {
                fprintf(stderr, "openloop: write failed\n");
                return 1;
            }
        }
        /* sleep until the next request is due (to the ns: epoll_pwait2), or 1 ms */
        uint64_t wait_ns = 1000000;
        if (issued < total) {
            uint64_t next = start + issued * interval;
            t = now_ns();
            wait_ns = next > t ? next - t : 0;
            if (wait_ns > 1000000) wait_ns = 1000000;
        }
        struct timespec ts = {0, (long)wait_ns};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if ((evs[i].events & EPOLLOUT) && c->busy && pump_write(c) != 0) {
                fprintf(stderr, "openloop: write failed\n");
                return 1;
            }
            if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && pump_read(c) != 0) {
                fprintf(stderr, "openloop: connection closed or failed\n");
                return 1;
            }
        }
        if (now_ns() - start > (uint64_t)((secs + 30) * 1e9)) break; /* replies stopped */
    }
    double took = (double)(now_ns() - start) / 1e9;
    printf("RESULT sent=%llu ok=%llu errors=%llu late_start_us=%llu p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f rate=%.0f\n",
           (unsigned long long)issued, (unsigned long long)ok, (unsigned long long)errors,
           (unsigned long long)(late_start / 1000), percentile(0.50) / 1e3, percentile(0.90) / 1e3,
           percentile(0.99) / 1e3, percentile(0.999) / 1e3, (double)max_ns / 1e3,
           (double)(ok + errors) / took);
    for (int i = 0; i < nconn; i++)
        close(conns[i].fd);
    close(ep);
    free(conns);
    free(req);
    return ok + errors == issued && errors == 0 ? 0 : 1;
}
