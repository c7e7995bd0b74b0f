/*
 * main.c - `idefics`: the command-line front end. Dispatches to cmd_*.c.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "idefics.h"
#ifdef IDF_HAVE_SERVER
#include "server.h" /* tools/server: idefics serve */
#endif

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"ask", cmd_ask, "answer a question about one or more images"},
    {"chat", cmd_chat, "interactive multi-turn chat (/image PATH, /reset, /help, /quit)"},
    {"caption", cmd_caption, "write alt text for images or folders of images"},
    {"tokenize", cmd_tokenize, "print the token ids of a text"},
    {"inspect", cmd_inspect, "print a model file's config and tensor table (--verify checks checksums)"},
    {"devices", cmd_devices, "list OpenCL platforms and devices and what the probe finds"},
#ifdef IDF_HAVE_SERVER
    {"serve", cmd_serve, "OpenAI-compatible local HTTP server and web page (docs/SERVER.md)"},
#endif
};

static void usage(FILE *f) {
    fprintf(f, "idefics %s - on-device IDEFICS vision-language runtime\n\n", idefics_version_string());
    fprintf(f, "usage: idefics COMMAND [options]   (idefics COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("idefics %s\n", idefics_version_string());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "idefics: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
