/* sd_notify without libsystemd (src/notify.c): one datagram to $NOTIFY_SOCKET, never blocking,
 * silent when the variable is unset.
 *
 * The protocol is systemd's (sd_notify(3)): newline-separated VAR=value assignments in one
 * datagram on an AF_UNIX SOCK_DGRAM socket whose address $NOTIFY_SOCKET names, a path or, with
 * a leading '@', the abstract namespace. hookrouter sends READY=1 once it listens (every worker),
 * RELOADING=1 with MONOTONIC_USEC before a reload and READY=1 after it, STOPPING=1 on a shutdown
 * signal, and STATUS= lines. */
#ifndef HR_NOTIFY_H
#define HR_NOTIFY_H

#include <stdint.h>

#include "hr/common.h"

/* Send msg (e.g. "READY=1\nSTATUS=...") as one datagram to $NOTIFY_SOCKET with MSG_DONTWAIT.
 * Returns 1 if it was sent, 0 if NOTIFY_SOCKET is unset or empty (nothing is done), or a
 * negative errno if the address is unusable or the send failed (logged at debug, no more: the
 * service manager may be gone, and hookrouter serves on regardless). */
int hr_notify(const char *msg);
/* hr_notify with a printf-style message, cut at 1 KB. */
int hr_notifyf(const char *fmt, ...) HR_PRINTF(1, 2);
/* CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= wants it. */
uint64_t hr_notify_monotonic_usec(void);

#endif
