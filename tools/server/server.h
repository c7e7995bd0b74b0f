/*
 * server.h - `idefics serve` (tools/server/): an OpenAI-compatible HTTP server
 * over the public API (include/idefics.h), libmicrohttpd and cJSON.
 * docs/SERVER.md describes the flags, the endpoints and the security defaults.
 */
#ifndef IDEFICS_SERVER_H
#define IDEFICS_SERVER_H

/* `idefics serve ...` (argv[0] is "serve"); returns the exit code. */
int cmd_serve(int argc, char **argv);

#endif
