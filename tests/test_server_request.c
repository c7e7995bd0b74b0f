/*
 * test_server_request.c - the request layer of `idefics serve` (tools/server/request.c)
 * without a model: base64 (RFC 4648 vectors and malformed input), data: URIs,
 * messages -> parts, the caps (413/400), generation fields, and SipHash-2-4
 * against the reference vector.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

static int fails;
#define CHECK(c)                                                                                                   \
    do {                                                                                                           \
        if (!(c)) {                                                                                                \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #c);                                           \
            fails++;                                                                                               \
        }                                                                                                          \
    } while (0)

static bool b64(const char *in, const char *want) {
    unsigned char out[64];
    size_t n = 0;
    bool ok = srv_base64_decode(in, strlen(in), out, &n);
    if (!want) return !ok;
    return ok && n == strlen(want) && !memcmp(out, want, n);
}

static const srv_limits lim = {.max_images = 2, .max_messages = 8, .max_json_depth = 8, .max_image_bytes = 64,
                               .max_text_bytes = 100, .allow_dir = NULL};

static int parse(const char *json, srv_request *r, char *err) {
    return srv_request_parse(json, strlen(json), &lim, r, err, 200, NULL);
}

int main(void) {
    /* RFC 4648 section 10 */
    CHECK(b64("", ""));
    CHECK(b64("Zg==", "f"));
    CHECK(b64("Zm8=", "fo"));
    CHECK(b64("Zm9v", "foo"));
    CHECK(b64("Zm9vYg==", "foob"));
    CHECK(b64("Zm9vYmE=", "fooba"));
    CHECK(b64("Zm9vYmFy", "foobar"));
    /* malformed */
    CHECK(b64("Zg=", NULL));       /* length not a multiple of 4 */
    CHECK(b64("Zg=a", NULL));      /* data after padding */
    CHECK(b64("Z===", NULL));      /* too much padding */
    CHECK(b64("Zh==", NULL));      /* non-canonical: stray bits */
    CHECK(b64("Zm9=Zm9v", NULL));  /* padding in the middle */
    CHECK(b64("Zm 9", NULL));      /* whitespace */
    CHECK(b64("Zm-_", NULL));      /* URL alphabet */
    CHECK(b64("Zm\x80v", NULL));

    unsigned char *d;
    size_t n;
    char err[200];
    CHECK(srv_data_uri_decode("data:image/png;base64,Zm9v", 26, 64, &d, &n, err, sizeof err) == 0 && n == 3 &&
          !memcmp(d, "foo", 3));
    free(d);
    CHECK(srv_data_uri_decode("data:image/png;charset=x;base64,Zm9v", 36, 64, &d, &n, err, sizeof err) == 0);
    free(d);
    CHECK(srv_data_uri_decode("data:text/plain;base64,Zm9v", 27, 64, &d, &n, err, sizeof err) == 400);
    CHECK(srv_data_uri_decode("data:image/png,foo", 18, 64, &d, &n, err, sizeof err) == 400);
    CHECK(srv_data_uri_decode("data:image/png;base64,", 22, 64, &d, &n, err, sizeof err) == 400);
    CHECK(srv_data_uri_decode("data:image/png;base64,Zm9vYmFy", 30, 4, &d, &n, err, sizeof err) == 413);
    CHECK(srv_data_uri_decode("data:", 5, 64, &d, &n, err, sizeof err) == 400);
    CHECK(d == NULL);

    srv_request r;
    /* text, image and fields */
    int st = parse("{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},{\"role\":\"user\",\"content\":["
                   "{\"type\":\"text\",\"text\":\"what?\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
                   "\"data:image/png;base64,Zm9vYmFy\"}}]}],\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,"
                   "\"seed\":-1,\"stop\":[\"a\",\"bc\"],\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                   &r, err);
    CHECK(st == 0);
    if (st == 0) {
        CHECK(r.n_msgs == 2 && r.msgs[0].role == SRV_ROLE_SYSTEM && r.msgs[1].role == SRV_ROLE_USER);
        CHECK(r.msgs[1].n_parts == 2 && r.msgs[1].parts[0].kind == SRV_PART_TEXT &&
              !strcmp(r.msgs[1].parts[0].text, "what?"));
        CHECK(r.msgs[1].parts[1].kind == SRV_PART_IMAGE && r.msgs[1].parts[1].size == 6 &&
              !memcmp(r.msgs[1].parts[1].data, "foobar", 6));
        CHECK(r.has_max_tokens && r.max_tokens == 7 && r.has_temperature && r.temperature == 0.5);
        CHECK(r.has_seed && r.seed == UINT64_MAX && r.n_stop == 2 && !strcmp(r.stop[1], "bc"));
        CHECK(r.stream && r.include_usage && r.n_images == 1);
        uint8_t key[16] = {0};
        srv_request_hash_messages(&r, key);
        CHECK(r.msgs[0].hash != r.msgs[1].hash);
        srv_request_free(&r);
    }
    /* the caps and type errors */
    CHECK(parse("", &r, err) == 400);
    CHECK(parse("[1]", &r, err) == 400);
    CHECK(parse("{\"messages\":\"hi\"}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":[[[[[[[[[1]]]]]]]]]}]}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1.5}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"\"]}", &r, err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]}", &r,
                err) == 400);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":1}", &r, err) == 400);
    char big[300];
    snprintf(big, sizeof big, "{\"messages\":[{\"role\":\"user\",\"content\":\"%0120d\"}]}", 0);
    CHECK(parse(big, &r, err) == 413); /* text over max_text_bytes */
    const char *img = "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,Zm9v\"}}";
    char three[600];
    snprintf(three, sizeof three, "{\"messages\":[{\"role\":\"user\",\"content\":[%s,%s,%s]}]}", img, img, img);
    CHECK(parse(three, &r, err) == 413); /* over max_images */
    CHECK(parse("{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
                "{\"url\":\"data:image/png;base64,Zm9v\"}}]}]}", &r, err) == 400); /* images only from users */
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
                "{\"url\":\"file:///etc/passwd\"}}]}]}", &r, err) == 400); /* no --allow-local-files */
    CHECK(strstr(err, "disabled") != NULL);
    CHECK(parse("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":"
                "{\"url\":\"https://example.com/x.png\"}}]}]}", &r, err) == 400);

    /* SipHash-2-4 reference vector: key 00..0f, message 00..0e (15 bytes) */
    uint8_t key[16], msg[15];
    for (int i = 0; i < 16; i++) key[i] = (uint8_t)i;
    for (int i = 0; i < 15; i++) msg[i] = (uint8_t)i;
    CHECK(srv_siphash(key, msg, 15, 0) == 0xa129ca6149be45e5ull);
    CHECK(srv_siphash(key, msg, 0, 0) == 0x726fdb47dd0e0e31ull);

    if (fails) fprintf(stderr, "%d failed\n", fails);
    else printf("ok\n");
    return fails != 0;
}
