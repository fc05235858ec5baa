/* The commands behind the command line (src/cli.c); main.c only parses arguments. */
#ifndef HR_CLI_H
#define HR_CLI_H

#include <stddef.h>

/* hookrouter run: serve until SIGTERM/SIGINT. Returns the exit status. */
int hr_cmd_run(const char *config);
/* hookrouter check: load the config, compile every rule and every spec file of
 * the <rules>/tests folder (NAME.test.lua); print "ok: ..." or each error as path:line: message.
 * Returns 0 or 1. */
int hr_cmd_check(const char *config);
/* Load config and rules; print every error to stderr. NULL on failure (for the commands). */
struct hr_ruleset;
struct hr_ruleset *hr_cli_load(const char *config);

#endif
