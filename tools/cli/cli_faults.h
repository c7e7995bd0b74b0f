/*
 * cli_faults.h - fault handling shared by the `idefics` subcommands (issue 15):
 * a SIGBUS handler for a model file that changes underneath its mapping, the
 * check that stdout was really written, escaping of names for the terminal,
 * and the --verify / --no-verify flags. Uses the public API only.
 *
 * Exit codes of every subcommand: 0 ok, 1 runtime error (including a failed
 * write), 2 usage error, 130 interrupted (Ctrl-C), and CLI_EXIT_MODEL_CHANGED
 * when the model file was truncated or overwritten while in use.
 */
#ifndef IDEFICS_CLI_FAULTS_H
#define IDEFICS_CLI_FAULTS_H

#include <stdbool.h>
#include <stdio.h>

#include "idefics.h"

/* sysexits' EX_IOERR: distinct from 1 (an ordinary error) and from 128 + SIGBUS. */
#define CLI_EXIT_MODEL_CHANGED 74

/* Install (or with NULL, stop) the SIGBUS handler for this model. A SIGBUS
 * whose si_addr lies in the model's mapping prints "the model file changed or
 * was truncated while in use" and exits CLI_EXIT_MODEL_CHANGED; any other
 * SIGBUS keeps its default action (a core dump). One model at a time. */
void cli_sigbus_watch(const idefics_model *model);

/* Flush stdout and report a failed write ("idefics CMD: cannot write the
 * output: No space left on device"). Returns 0, or 1 after the message. */
int cli_check_stdout(const char *cmd);

/* Write s with control characters and DEL escaped (\n, \t, \x1b, ...), so a
 * model name or file name cannot move the cursor or recolour the terminal. */
void cli_put_escaped(FILE *f, const char *s);
/* The same into buf (always NUL-terminated, cut to fit); returns buf. */
const char *cli_escape(char *buf, size_t size, const char *s);

/* "--verify" -> IDEFICS_VERIFY_ALWAYS, "--no-verify" -> IDEFICS_VERIFY_NEVER, else -1. */
int cli_verify_flag(const char *arg);

#endif
