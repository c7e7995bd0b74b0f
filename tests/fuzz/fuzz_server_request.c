/*
 * fuzz_server_request.c - libFuzzer target for the request layer of `idefics serve`
 * (tools/server/request.c): JSON bodies -> messages and parts, data: URIs and
 * base64. Build: CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz
 * tests/fuzz_server_request; run: build-fuzz/tests/fuzz_server_request CORPUS/
 * (seeds: any chat request body, e.g. the *.json files tests/test_server.sh writes).
 *
 * The first input byte picks the mode so that one target reaches all three
 * decoders directly: 0-1 a whole request body, 2 a data: URI, 3 raw base64.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0] & 3;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    char err[256];
    if (mode <= 1) {
        static const srv_limits lim = {.max_images = 4, .max_messages = 64, .max_json_depth = 16,
                                       .max_image_bytes = 1 << 20, .max_text_bytes = 1 << 16, .allow_dir = NULL};
        srv_request r;
        const char *param;
        if (srv_request_parse(in, n, &lim, &r, err, sizeof err, &param) == 0) {
            static const uint8_t key[16] = {1, 2, 3};
            srv_request_hash_messages(&r, key);
            /* what the server reads from a parsed request must be consistent */
            for (int i = 0; i < r.n_msgs; i++)
                for (int k = 0; k < r.msgs[i].n_parts; k++) {
                    const srv_part *p = &r.msgs[i].parts[k];
                    if (p->kind == SRV_PART_TEXT && strlen(p->text) != p->len) abort();
                    if (p->kind == SRV_PART_IMAGE && (!p->data || p->size == 0)) abort();
                }
            srv_request_free(&r);
        }
    } else if (mode == 2) {
        unsigned char *d = NULL;
        size_t ds = 0;
        if (srv_data_uri_decode(in, n, 1 << 20, &d, &ds, err, sizeof err) == 0 && (!d || ds > 1 << 20)) abort();
        free(d);
    } else {
        unsigned char *out = malloc(n / 4 * 3 + 1);
        size_t on = 0;
        if (out && srv_base64_decode(in, n, out, &on) && on > n / 4 * 3) abort();
        free(out);
    }
    return 0;
}
