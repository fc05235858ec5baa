/* hookrouter: receive AiFi webhooks, run per-store Lua rules, deliver to legacy endpoints.
 * main() only parses the command line (once stdio descriptors are sure to be open); the
 * commands live in cli.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hr/cli.h"
#include "hr/cli_test.h"
#include "hr/cli_spool.h"
#include "hr/common.h"
#include "hr/log.h"

static void usage(FILE *out)
{
    fputs(
        "Usage:\n"
        "  hookrouter [run] [-c FILE]      serve webhooks (default FILE: ./hookrouter.lua)\n"
        "  hookrouter check [-c FILE]      load the config, compile every rule, report errors\n"
        "  hookrouter test [-c FILE] [--junit FILE] [SPEC.test.lua...]\n"
        "                                  run spec files (default: <rules>/tests/NAME.test.lua)\n"
        "                                  and report in TAP; exit 1 if a case fails\n"
        "  hookrouter test [-c FILE] --path PATH [--header 'Name: value']... [--reply FILE]\n"
        "                  [--now TIME] [--id ID] PAYLOAD.json...\n"
        "                                  run the rules offline for each payload and print\n"
        "                                  the actions as JSON lines (nothing is sent);\n"
        "                                  --reply FILE.json (or a .lua stub) answers every\n"
        "                                  request() a rule makes\n"
        "  hookrouter deadletters [-c FILE] [--target T] [--since TIME]\n"
        "                                  print dead letters, one JSON line each\n"
        "  hookrouter replay [-c FILE] [--target T] [--since TIME] [--id ID]\n"
        "                                  put dead letters back in the spool (once each)\n"
        "  hookrouter spool [-c FILE]      pending deliveries per target\n"
        "                                  (TIME: RFC 3339 or an age such as 30m, 2h, 7d)\n"
        "  hookrouter --help | --version\n"
        "\n"
        "Signals: SIGHUP reloads config and rules (a broken rule keeps the old ones);\n"
        "SIGTERM/SIGINT stop accepting, finish requests and drain deliveries.\n"
        "Start with the example: hookrouter run -c examples/hookrouter.lua\n",
        out);
}

int main(int argc, char **argv)
{
    hr_log_reserve_stdio(); /* before anything opens a file that could become stderr */
    const char *cmd = "run";
    int i = 1;
    if (i < argc && argv[i][0] != '-') cmd = argv[i++];
    const char *config = "hookrouter.lua";
    const char *path = NULL;
    const char *reply = NULL;
    const char *now = NULL, *junit = NULL;                   /* test */
    const char *target = NULL, *since = NULL, *dl_id = NULL; /* deadletters, replay */
    char **headers = hr_xcalloc((size_t)argc, sizeof(char *));
    char **payloads = hr_xcalloc((size_t)argc, sizeof(char *));
    size_t nheaders = 0, npayloads = 0;
    int rc = 2;

    for (; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            rc = 0;
            goto out;
        } else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
            printf("hookrouter %s\n", HR_VERSION);
            rc = 0;
            goto out;
        } else if ((strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(a, "--path") == 0 && i + 1 < argc) {
            path = argv[++i];
        } else if (strcmp(a, "--target") == 0 && i + 1 < argc) {
            target = argv[++i];
        } else if (strcmp(a, "--since") == 0 && i + 1 < argc) {
            since = argv[++i];
        } else if (strcmp(a, "--id") == 0 && i + 1 < argc) {
            dl_id = argv[++i];
        } else if (strcmp(a, "--now") == 0 && i + 1 < argc) {
            now = argv[++i];
        } else if (strcmp(a, "--junit") == 0 && i + 1 < argc) {
            junit = argv[++i];
        } else if (strcmp(a, "--reply") == 0 && i + 1 < argc) {
            reply = argv[++i];
        } else if (strcmp(a, "--header") == 0 && i + 1 < argc) {
            headers[nheaders++] = argv[++i];
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "hookrouter: unknown or incomplete option %s\n\n", a);
            usage(stderr);
            goto out;
        } else {
            payloads[npayloads++] = argv[i];
        }
    }

    if (strcmp(cmd, "help") == 0) {
        usage(stdout);
        rc = 0;
    } else if (strcmp(cmd, "version") == 0) {
        printf("hookrouter %s\n", HR_VERSION);
        rc = 0;
    } else if (strcmp(cmd, "test") == 0) {
        if (target || since) {
            fprintf(stderr, "hookrouter test: --target and --since are for 'deadletters' and "
                            "'replay'\n");
            goto out;
        }
        hr_test_opts_t o = {config,    path,  headers, nheaders, payloads,
                            npayloads, reply, now,     dl_id,    junit};
        rc = hr_cmd_test(&o);
    } else if (npayloads > 0 || path || nheaders > 0 || reply || now || junit) {
        fprintf(stderr,
                "hookrouter %s: --path, --header, --reply, --now, --junit and payloads are for "
                "'test'\n",
                cmd);
    } else if ((target || since || dl_id) && strcmp(cmd, "deadletters") != 0 &&
               strcmp(cmd, "replay") != 0) {
        fprintf(stderr,
                "hookrouter %s: --target, --since and --id are for 'deadletters' and "
                "'replay'\n",
                cmd);
    } else if (strcmp(cmd, "deadletters") == 0) {
        if (dl_id)
            fprintf(stderr, "hookrouter deadletters: --id is for 'replay'\n");
        else
            rc = hr_cmd_deadletters(config, target, since);
    } else if (strcmp(cmd, "replay") == 0) {
        rc = hr_cmd_replay(config, target, since, dl_id);
    } else if (strcmp(cmd, "spool") == 0) {
        rc = hr_cmd_spool(config);
    } else if (strcmp(cmd, "run") == 0) {
        rc = hr_cmd_run(config);
    } else if (strcmp(cmd, "check") == 0) {
        rc = hr_cmd_check(config);
    } else {
        fprintf(stderr, "hookrouter: unknown command '%s'\n\n", cmd);
        usage(stderr);
    }
out:
    free(headers);
    free(payloads);
    return rc;
}
