/* cmd_inspect.c - placeholder until the loader lands. */
#include <stdio.h>
#include "cli.h"
int cmd_inspect(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "idefics inspect: not built yet\n"); return 1; }
