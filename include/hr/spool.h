/* The spool: an append-only, checksummed log of records on disk (src/spool.c). It is the
 * storage under the durable outbox; it knows records, segments and fsync, not deliveries.
 *
 * A spool is a folder of segment files "seg-<16 hex digits>.hrs", numbered in the order they
 * were created. Records are appended to the newest segment only; a segment that reaches
 * segment_bytes is closed and a new one started (each start of the process also starts a new
 * one, so a torn tail left by a crash is never appended to).
 *
 * Prepared segments (HR_FSYNC_ALWAYS only: the other modes sync too seldom for it to pay):
 * the first append to a segment starts, in the threadpool, the preparation of the next one: a file
 * "prep-<pid>-<n>.tmp" in the folder, its blocks reserved (posix_fallocate) and written with zeros
 * up to segment_bytes, fdatasynced. The rotation renames it to its segment name (link + unlink:
 * never over a file; the next sync fsyncs the folder, as for any new segment), and appends then
 * overwrite zeros at the write offset: the fdatasync of a group commit writes the data and commits
 * no change of the file's size or extents. If it is not ready (still being written, or it failed:
 * disk full, logged once until one succeeds) the rotation makes a plain file that grows by appends,
 * as without preparation. A segment therefore ends in a zero tail (up to its whole size after a
 * crash right after a rotation); the tail is the clean end of a segment wherever one is read: no
 * skipped range, no lost record (a torn record before it still is one). A clean close cuts the tail
 * off and deletes the prepared file; hr_spool_open deletes the ones a crash left. Every record is
 *
 *   offset 0  u32 magic "HRS1" (0x31535248, little-endian)
 *          4  u32 payload length
 *          8  u8  type (HR_REC_*)  9: u8 0  10: u16 0
 *         12  u32 CRC32C of bytes 4..11 and the payload
 *         16  payload
 *
 * (all integers little-endian). A record whose magic, length or checksum is wrong is skipped:
 * with a plausible length, just that record; otherwise the scan moves forward to the next
 * "HRS1" whose record checks out. Adjacent skips form one range, reported (logged by
 * hr_spool_open, printed by `hookrouter spool`) with its byte offsets and the records that
 * started in it (see hr_spool_gap_t); an empty segment (no byte that is not 0) is reported
 * too. A short record at the end (a torn write) is the usual case after a crash. Since the
 * zeros at the end of a segment are no loss, a crash that leaves unsynced records as zeros
 * there (fsync "interval" or "never", a power cut) is not reported either.
 *
 * Durability (fsync): appends are written from the loop (the page cache makes them cheap);
 * ACTION and DONE records (one each per delivered action) are gathered and written in one
 * pwritev(2) per loop iteration: before a sync starts or a commit completes, before a read
 * of one of them, a rotation or a STATE/COPY append, at the next turn of the loop at the
 * latest, and at once past 256 KiB. hr_spool_commit() asks to be told when everything
 * appended so far is durable.
 *   HR_FSYNC_ALWAYS:   one fdatasync per loop iteration from the threadpool covers every
 *                      commit requested in that iteration (group commit); while one sync runs,
 *                      new commits wait for the next one.
 *   HR_FSYNC_INTERVAL: commits complete at the end of the loop iteration; a timer syncs every
 *                      interval_ms.
 *   HR_FSYNC_NEVER:    commits complete at the end of the loop iteration; only a clean close
 *                      syncs.
 *
 * Segments are reference-counted by the caller (one reference per live record it still needs,
 * see hr_spool_ref). The oldest segments are deleted, in order, as soon as they hold no
 * reference and are not the segment being written: deleting only from the oldest end keeps
 * every later record (done marks, attempt states) as long as anything older survives.
 *
 * Compaction (copy-forward, driven by the outbox): when the oldest segment holds only a few
 * live records (hr_spool_compact_candidate), the caller re-appends each of them as a COPY
 * record (the action plus its current state and attempt log), drops its reference on the old
 * one, and asks hr_spool_sync() for a real fdatasync in every fsync mode; only after that
 * does the old segment lose its last reference (a pin the caller held) and get deleted. A
 * crash at any point leaves either the old record, or both (the later COPY wins), never
 * neither. */
#ifndef HR_SPOOL_H
#define HR_SPOOL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "hr/action.h"
#include "hr/common.h"

typedef struct hr_spool hr_spool_t;

typedef enum { HR_FSYNC_ALWAYS = 0, HR_FSYNC_INTERVAL, HR_FSYNC_NEVER } hr_fsync_mode_t;

/* Record types. */
enum {
    HR_REC_ACTION = 1, /* an accepted action: hr_spool_encode_action */
    HR_REC_STATE = 2,  /* one finished attempt of an action: hr_spool_state_t */
    HR_REC_DONE = 3,   /* the action with this id is finished: u64 id */
    HR_REC_COPY = 4,   /* an action moved forward by compaction, with its state: hr_spool_copy_t */
};

#define HR_SPOOL_HDR   16
#define HR_SPOOL_MAGIC 0x31535248u

/* Where a record is: segment number << 32 | offset in the segment. 0 is never a record. */
typedef uint64_t hr_spool_loc_t;
#define HR_LOC_SEG(l) ((uint32_t)((l) >> 32))
#define HR_LOC_OFF(l) ((uint32_t)(l))

typedef struct {
    const char *dir;            /* the spool folder (created if missing) */
    hr_fsync_mode_t fsync;      /* default HR_FSYNC_ALWAYS */
    uint64_t fsync_interval_ms; /* for HR_FSYNC_INTERVAL (default 1000) */
    uint64_t max_bytes;         /* limit for hr_spool_append(..., limited=true); 0: none */
    uint64_t segment_bytes;     /* start a new segment beyond this size (default 16 MiB; at
                                 * most max_bytes / 8, so that deletion and compaction work in
                                 * units well below the limit); also what a prepared segment's
                                 * zeros take on disk */
} hr_spool_opts_t;

typedef struct {
    uint64_t bytes;          /* bytes the records of every segment take (what max_bytes limits) */
    uint64_t disk_bytes;     /* bytes of the segment files on disk: bytes, the zero tail of the
                              * segment being written and the prepared next segment */
    uint64_t segments;       /* segment files */
    uint64_t syncs;          /* fdatasync batches run */
    uint64_t commits;        /* commit callbacks completed */
    uint64_t corrupt;        /* records lost in skipped ranges by the last scan (a lower
                              * bound where a range's count is "at least", see hr_spool_gap_t) */
    uint64_t corrupt_bytes;  /* bytes skipped by the last scan */
    uint64_t corrupt_ranges; /* skipped byte ranges of the last scan */
    uint64_t empty_segments; /* segment files without a record (zero-length or only zeros)
                              * seen by the last scan */
    uint64_t deleted;        /* segments deleted since open */
    uint64_t write_errors;   /* appends or syncs that failed */
    uint64_t prepared;       /* rotations onto a prepared segment */
    uint64_t prep_errors;    /* preparations of a next segment that failed (e.g. disk full) */
    bool next_prepared;      /* a prepared segment waits for the next rotation */
    bool failing;            /* the last append or sync failed and none has succeeded since */
} hr_spool_stats_t;

/* Called for each valid record of a scan, in order. payload is valid during the call. */
typedef void (*hr_spool_rec_cb)(void *arg, int type, const char *payload, size_t len,
                                hr_spool_loc_t loc);

/* One skipped byte range [start, end) of segment seg, or (empty) a zero-length segment.
 * records counts the records that started inside the range: exact (exact true) when the
 * length chain from start lands on end or runs past the end of the segment (a torn tail);
 * otherwise a lower bound, because the framing carries no record count and a record whose
 * header was destroyed (e.g. zeroed) leaves nothing to count. */
typedef struct {
    uint32_t seg;
    bool empty;
    bool exact;
    uint64_t start, end;
    uint64_t records;
} hr_spool_gap_t;
typedef void (*hr_spool_gap_cb)(void *arg, const hr_spool_gap_t *g);
/* Totals of the ranges of a parse or scan. */
typedef struct {
    uint64_t ranges, bytes, records, empty;
} hr_spool_gaps_t;
/* Format g as "segment seg-<16 hex>.hrs: bytes <start>-<last> skipped (<n> bytes, [at least ]
 * <k> records lost)" (last = end - 1, inclusive) or "segment <name>: empty (0 bytes, 0
 * records)". Returns what snprintf returns. */
int hr_spool_gap_format(char *out, size_t cap, const hr_spool_gap_t *g);

/* Open (creating) the spool at opts->dir, call cb for every valid record of its segments in
 * order (corrupt ones are logged and skipped), then start a new segment for appends. Returns
 * NULL with a message in err if the folder or a segment cannot be opened, read or created. */
hr_spool_t *hr_spool_open(uv_loop_t *loop, const hr_spool_opts_t *opts, hr_spool_rec_cb cb,
                          void *arg, char *err, size_t errlen);
/* Read-only scan of a spool folder (for the CLI, also while a router writes it): cb for every
 * valid record; corrupt ones are counted in *st (may be NULL) and not logged. A missing folder
 * is an empty spool. Returns 0 or a negative errno with a message in err. */
int hr_spool_scan_dir(const char *dir, hr_spool_rec_cb cb, void *arg, hr_spool_stats_t *st,
                      char *err, size_t errlen);
/* As hr_spool_scan_dir, and gap (may be NULL) for every skipped range and empty segment. */
int hr_spool_scan_dir_gaps(const char *dir, hr_spool_rec_cb cb, void *arg, hr_spool_gap_cb gap,
                           void *gap_arg, hr_spool_stats_t *st, char *err, size_t errlen);

/* Append one record. With limited, a record that would take the spool past max_bytes is
 * refused with -ENOSPC (and nothing is written). An ACTION or COPY record takes a reference
 * on its segment (see hr_spool_ref). Returns 0 and sets *loc, or a negative errno (the write
 * failed; the segment is cut back so no partial record stays behind). ACTION and DONE
 * records are gathered (see above): their write error comes later, as the status of every
 * commit waiting when it happens (the segment is cut back the same way, and a DONE record
 * lost so is logged: that action may be delivered again after a restart). */
int hr_spool_append(hr_spool_t *sp, int type, const void *payload, size_t len, bool limited,
                    hr_spool_loc_t *loc);
/* cb(arg, 0) once everything appended so far is durable per the fsync mode, or cb(arg, <0)
 * if the sync failed. cb never runs from inside this call. Returns 0, or < 0 after
 * hr_spool_close (cb never runs then). */
int hr_spool_commit(hr_spool_t *sp, void (*cb)(void *arg, int status), void *arg);
/* As hr_spool_commit, but cb runs only after an fdatasync of everything appended so far,
 * whatever the fsync mode (compaction: the copies must be on disk before the old segment
 * goes). Returns 0, or < 0 after hr_spool_close (cb never runs then). */
int hr_spool_sync(hr_spool_t *sp, void (*cb)(void *arg, int status), void *arg);
/* The segment compaction should empty next, or 0 if none should now. A candidate is the
 * oldest segment if it is not the one being written, still holds references (else it is
 * simply deleted), and either a newer segment that is not being written exists and at most
 * a quarter of its ACTION/COPY records are still referenced, or the spool is past half of
 * max_bytes and at most three quarters are. *refs (may be NULL) gets its reference count. */
uint32_t hr_spool_compact_candidate(const hr_spool_t *sp, uint64_t *refs);
/* Read the record at loc into out (payload only). Returns its type, or a negative errno
 * (-EILSEQ for a record that does not check out). */
int hr_spool_read(hr_spool_t *sp, hr_spool_loc_t loc, hr_buf_t *out);
/* One more / one less live record in loc's segment. Segments left without references are
 * deleted from the oldest end (never the one being written). */
void hr_spool_ref(hr_spool_t *sp, hr_spool_loc_t loc);
void hr_spool_unref(hr_spool_t *sp, hr_spool_loc_t loc);
/* Delete what can be deleted now (call after a recovery that took its references). */
void hr_spool_gc(hr_spool_t *sp);
void hr_spool_stats(const hr_spool_t *sp, hr_spool_stats_t *st);
/* True if an append of len bytes with limited=true would be refused for space. */
bool hr_spool_is_full(const hr_spool_t *sp, size_t len);
/* Wait for a running sync, sync what is unsynced, close every file and free the spool; then
 * cb(arg) from the loop. Commits still waiting complete with their sync's status first. */
void hr_spool_close(hr_spool_t *sp, void (*cb)(void *arg), void *arg);

/* ---- Record payloads ---------------------------------------------------------------- */

/* One finished attempt (payload of HR_REC_STATE). */
typedef struct {
    uint64_t id;          /* the action's id */
    hr_spool_loc_t prev;  /* the action's previous STATE record, 0 if none */
    uint32_t attempt;     /* 1-based */
    int32_t status;       /* HTTP status, 0 for a transport error */
    uint64_t at_ms;       /* wall time the attempt ended */
    uint64_t next_due_ms; /* wall time of the next attempt */
    const char *error;    /* transport error or "" */
} hr_spool_state_t;

/* The fields of an ACTION payload a recovery needs (strings point into the payload and are
 * not NUL-terminated). */
typedef struct {
    uint64_t id;
    uint64_t accepted_ms;
    uint32_t max_attempts;
    hr_action_kind_t kind;
    const char *name; /* target or file */
    size_t name_len;
    const char *store; /* NULL if none */
    size_t store_len;
    const char *event_id;
    size_t event_id_len;
} hr_spool_action_meta_t;

/* An action moved forward by compaction (payload of HR_REC_COPY): the ACTION payload as it
 * was, the state recovery needs, and the attempt log a dead letter needs (the STATE records
 * it came from may be gone with the old segments). Layout: u64 id, u32 attempts, i32 status,
 * u64 next_due_ms, u32 action length, the ACTION payload, u32 log entries, then per entry
 * u32 attempt, i32 status, u64 at_ms, str error (oldest first). */
typedef struct {
    uint64_t id;          /* the action's id (as in its ACTION payload) */
    uint32_t attempts;    /* attempts finished */
    int32_t last_status;  /* HTTP status of the last one, 0 if none or a transport error */
    uint64_t next_due_ms; /* wall time of the next attempt (0: at once) */
    const char *action;   /* the ACTION payload (points into the record) */
    size_t action_len;    /* its length */
    uint32_t nlog;        /* attempt log entries */
    const char *log;      /* decoding only: the entries (hr_spool_copy_log_next) */
    size_t log_len;       /* decoding only: bytes left in log */
} hr_spool_copy_t;

/* Append the COPY payload of c (c->log unused) with the attempt log log[0..nlog) to out. */
void hr_spool_encode_copy(hr_buf_t *out, const hr_spool_copy_t *c, const hr_spool_state_t *log,
                          size_t nlog);
/* Decode a COPY payload (pointers into p). Returns 0, or -1 if it is malformed (the embedded
 * action included). */
int hr_spool_decode_copy(const char *p, size_t n, hr_spool_copy_t *c);
/* Take the next attempt log entry of a decoded c into s (s->error copied into errbuf, as
 * hr_spool_decode_state does). Returns 1, 0 at the end, or -1 if it is malformed. */
int hr_spool_copy_log_next(hr_spool_copy_t *c, hr_spool_state_t *s, char *errbuf, size_t errlen);

/* Append the ACTION payload of a (with id) to out. */
void hr_spool_encode_action(hr_buf_t *out, const hr_action_t *a, uint64_t id);
/* Decode an ACTION payload into a new action (bookkeeping zeroed). Returns NULL if it is
 * malformed. *id may be NULL. */
hr_action_t *hr_spool_decode_action(const char *p, size_t n, uint64_t *id);
/* Read the meta fields of an ACTION payload. Returns 0 or -1. */
int hr_spool_action_meta(const char *p, size_t n, hr_spool_action_meta_t *m);
void hr_spool_encode_state(hr_buf_t *out, const hr_spool_state_t *s);
/* Decode a STATE payload; s->error points into a static-free copy in errbuf. Returns 0/-1. */
int hr_spool_decode_state(const char *p, size_t n, hr_spool_state_t *s, char *errbuf,
                          size_t errlen);

/* Append one framed record (header + payload) to out: for files written outside a spool
 * (hookrouter replay writes such a file into <spool>/incoming/). */
void hr_spool_frame(hr_buf_t *out, int type, const void *payload, size_t len);
/* Call cb for each valid record in the bytes p[0..n) (loc is the offset). Returns the number
 * of records lost in skipped ranges; *bad_bytes (may be NULL) gets the bytes skipped. */
uint64_t hr_spool_parse(const char *p, size_t n, uint32_t seg, hr_spool_rec_cb cb, void *arg,
                        uint64_t *bad_bytes);
/* As hr_spool_parse, and gap (may be NULL) for every maximal skipped range; *tot (may be
 * NULL) is added the totals. Returns the records lost. */
uint64_t hr_spool_parse_gaps(const char *p, size_t n, uint32_t seg, hr_spool_rec_cb cb, void *arg,
                             hr_spool_gap_cb gap, void *gap_arg, hr_spool_gaps_t *tot);

/* CRC32C (Castagnoli) of p[0..n), continuing from crc (start with 0). */
uint32_t hr_crc32c(uint32_t crc, const void *p, size_t n);

#endif
