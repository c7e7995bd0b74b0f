/*
 * cli.h - subcommands of the `idefics` program. Each lives in its own cmd_*.c
 * and returns the process exit code (0 ok, 1 runtime error, 2 usage error).
 */
#ifndef IDEFICS_CLI_H
#define IDEFICS_CLI_H

int cmd_inspect(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_ask(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_caption(int argc, char **argv);
int cmd_devices(int argc, char **argv);

#endif
