/*
 * check.h - the assertion macro shared by the C tests: a failed CHECK prints
 * file:line, the condition and a printf-style message to stderr and counts
 * the failure; the test's main() returns failures != 0. One test program is
 * one translation unit, so the counter is per test.
 */
#ifndef IDEFICS_TEST_CHECK_H
#define IDEFICS_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "%s:%d: FAIL %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, "\n");                                          \
        }                                                                   \
    } while (0)

#endif /* IDEFICS_TEST_CHECK_H */
