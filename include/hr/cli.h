/* The commands behind the command line (src/cli.c); main.c only parses arguments. */
#ifndef HR_CLI_H
#define HR_CLI_H

#include <stddef.h>

/* hookrouter run: serve until SIGTERM/SIGINT. Returns the exit status. */
int hr_cmd_run(const char *config);
/* hookrouter check: load the config and compile every rule; print "ok: ..." or each error
 * as path:line: message. Returns 0 or 1. */
int hr_cmd_check(const char *config);
/* hookrouter test: run the rule for each payload as the server would for a POST to path,
 * and print each action as one JSON line. Nothing is sent or written. Returns 0, or 1 if
 * a rule failed or a payload was unusable. headers are "Name: value" strings. reply (or
 * NULL) stands in for every request()'s answer: FILE.json is answered as status 200 with
 * that body; FILE.lua returns function(target, body, opts) -> {status, headers, body}. Each
 * request() prints {"action":"request",...}; a respond() prints {"action":"respond",...}. */
int hr_cmd_test(const char *config, const char *path, char **headers, size_t nheaders,
                char **payloads, size_t npayloads, const char *reply);

#endif
