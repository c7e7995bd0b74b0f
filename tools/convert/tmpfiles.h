/*
 * tmpfiles.h - the converter's temporary output file (issue 15). The writer
 * builds OUT.tmp.<pid> next to OUT and renames it into place at the end, so an
 * interrupted run never leaves a file that looks complete; these make sure it
 * does not leave the temporary behind either.
 */
#ifndef IDF_CONVERT_TMPFILES_H
#define IDF_CONVERT_TMPFILES_H

#include <stdbool.h>

/* Remove OUT.tmp.<our pid> on SIGINT, SIGTERM and SIGHUP, then die of the
 * signal as before (SIGKILL cannot be caught: see conv_clean_stale). */
void conv_tmp_guard(const char *out);

/* Remove temporaries of processes that no longer exist next to OUT: files in
 * OUT's folder named OUT.tmp.<pid> or *.idfx.tmp.<pid>. Prints one line per
 * file removed unless quiet; returns how many were removed. */
int conv_clean_stale(const char *out, bool quiet);

#endif
