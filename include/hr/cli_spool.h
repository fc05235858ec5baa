/* The spool and dead-letter commands (src/cli_spool.c): they read the config only (no rules)
 * and work while a router runs on the same config.
 *   hookrouter deadletters -c FILE [--target T] [--since TIME]
 *   hookrouter replay -c FILE [--target T] [--since TIME] [--id ID]
 *   hookrouter spool -c FILE
 * TIME is RFC 3339 (2024-05-14T16:02:11Z) or an age such as 90s, 30m, 2h, 7d.
 * With outbox = { kind = "redis" } (a build with hiredis) all three work on that Redis
 * instead of the local files (hr/redis_admin.h): the dead letters are <prefix>:dead, replay
 * adds stream entries and records ids in <prefix>:replayed, spool reports the streams. */
#ifndef HR_CLI_SPOOL_H
#define HR_CLI_SPOOL_H

/* Print every dead letter (one JSON line each, as stored, with the body) that matches.
 * Returns the exit status. */
int hr_cmd_deadletters(const char *config, const char *target, const char *since);
/* Put matching dead letters of undeliverable actions back in the spool, once each: they are
 * written as one file into <spool_dir>/incoming/, which a running router takes within a
 * second (or the next start does), and their ids are appended to <dead_letters>.replayed so
 * a second replay skips them. Returns the exit status. */
int hr_cmd_replay(const char *config, const char *target, const char *since, const char *id);
/* Show, per target, the actions pending in the spool, the oldest one's age and the next
 * attempt. Returns the exit status. */
int hr_cmd_spool(const char *config);

#endif
