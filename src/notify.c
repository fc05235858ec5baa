/* sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET (see notify.h). */
#include "hr/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "hr/log.h"

int hr_notify(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof sa.sun_path) {
        hr_log_debug("sd_notify: NOTIFY_SOCKET=%s is not a usable address", path);
        return -EINVAL;
    }
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@') sa.sun_path[0] = '\0'; /* abstract namespace: no NUL terminator */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        hr_log_debug("sd_notify: socket: %s", strerror(e));
        return -e;
    }
    ssize_t sent = sendto(fd, msg, strlen(msg), MSG_DONTWAIT | MSG_NOSIGNAL,
                          (const struct sockaddr *)&sa, salen);
    int e = errno;
    close(fd);
    if (sent < 0) {
        hr_log_debug("sd_notify: send to %s: %s", path, strerror(e));
        return -e;
    }
    return 1;
}

int hr_notifyf(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return hr_notify(msg);
}

uint64_t hr_notify_monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
