/* cmd_pending.c - TEMPORARY: commands whose implementation has not landed yet.
 * Each owner deletes their function from here when adding cmd_<name>.c. */
#include <stdio.h>
#include "cli.h"
static int pending(const char *name) { fprintf(stderr, "idefics %s: not built yet\n", name); return 1; }
int cmd_caption(int argc, char **argv) { (void)argc; (void)argv; return pending("caption"); }
