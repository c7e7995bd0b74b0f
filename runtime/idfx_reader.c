/*
 * idfx_reader.c - parse, validate and decode an IDFX v1 container
 * (idfx_reader.h, docs/FORMAT.md "Validation").
 *
 * idfx_open() trusts nothing: every field is range-checked with overflow-safe
 * arithmetic before it is used to compute a pointer, counts are checked against
 * the minimum encoded entry size before anything is allocated, and the parse
 * must consume each section exactly. Payloads (chunk checksums and zstd frames)
 * are only read by idfx_verify_chunk / idfx_decode_chunk / idfx_materialize.
 */
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createDCtx_advanced: honour the user allocator */
#include "idfx_reader.h"

#include <stdlib.h>
#include <string.h>

#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack: no allocation for the index hash */
#include <xxhash.h>
#include <zstd.h>

#include "quant.h"

/* Smallest encodings, used to reject absurd counts before allocating:
 * kv: u16 key_len + 1 key byte + u8 type + 1 value byte;
 * tensor: u16 name_len + 1 name byte + 4 type bytes + one u64 dim + layout_param
 * + n_chunks + one chunk (a tensor has at least one byte, so at least one chunk). */
#define KV_MIN_SIZE 5u
#define TENSOR_MIN_SIZE (2u + 1u + 4u + 8u + 4u + 4u + IDFX_CHUNK_ENTRY_SIZE)

#define U64(x) ((unsigned long long)(x))
/* No zstd frame decodes to more than 32768 times its size: a block holds at
 * most 128 KiB and the smallest block (RLE) takes 4 bytes. Rejecting larger
 * raw sizes at open stops a tiny file from making materialize allocate an
 * arbitrary amount of memory. */
#define ZSTD_MAX_EXPANSION 32768u

/* ------------------------------------------------------------ names */

const char *idfx_type_name(int type) {
    const idfx_type_traits *t = idfx_type_get_traits(type);
    return t ? t->name : "?";
}

const char *idfx_layout_name(int layout) {
    switch (layout) {
    case IDFX_LAYOUT_ROWMAJOR: return "ROWMAJOR";
    case IDFX_LAYOUT_ROWTILE: return "ROWTILE";
    case IDFX_LAYOUT_GROUPTILE: return "GROUPTILE";
    default: return "?";
    }
}

const char *idfx_codec_name(int codec) {
    switch (codec) {
    case IDFX_CODEC_RAW: return "raw";
    case IDFX_CODEC_ZSTD: return "zstd";
    default: return "?";
    }
}

static const char *kv_type_name(int t) {
    static const char *const n[IDFX_KV_COUNT] = {"U8", "BOOL", "U32", "I32", "F32", "U64", "STR", "ARR"};
    return t >= 0 && t < IDFX_KV_COUNT ? n[t] : "?";
}

/* Encoded size of one scalar of a fixed-size kv type; 0 for STR/ARR/unknown. */
static uint32_t kv_scalar_size(int t) {
    switch (t) {
    case IDFX_KV_U8:
    case IDFX_KV_BOOL: return 1;
    case IDFX_KV_U32:
    case IDFX_KV_I32:
    case IDFX_KV_F32: return 4;
    case IDFX_KV_U64: return 8;
    default: return 0;
    }
}

/* Element size of a filter; 0 for NONE/unknown. */
static uint32_t filter_elem(int filter) {
    return filter == IDFX_FILTER_SHUFFLE2 ? 2 : filter == IDFX_FILTER_SHUFFLE4 ? 4 : 0;
}

/* ------------------------------------------------------------ cursor */

/* Reads inside one section; `end` is the section's end (absolute). Every read
 * checks that it stays inside the section. */
typedef struct cursor {
    const uint8_t *base;
    uint64_t pos, end;
} cursor;

static bool cur_has(const cursor *c, uint64_t n) { return n <= c->end - c->pos; }
static uint8_t cur_u8(cursor *c) { return c->base[c->pos++]; }
static uint16_t cur_u16(cursor *c) { uint16_t v = idf_rd16(c->base + c->pos); c->pos += 2; return v; }
static uint32_t cur_u32(cursor *c) { uint32_t v = idf_rd32(c->base + c->pos); c->pos += 4; return v; }
static uint64_t cur_u64(cursor *c) { uint64_t v = idf_rd64(c->base + c->pos); c->pos += 8; return v; }

/* ------------------------------------------------------------ string set */

/* Open-addressing hash set of C strings for duplicate detection during open. */
typedef struct strset {
    const char **slot;
    uint64_t mask;
} strset;

static bool strset_init(strset *s, uint32_t n, const idf_alloc *al) {
    uint64_t cap = 16;
    while (cap < (uint64_t)n * 2) cap <<= 1;
    s->mask = cap - 1;
    s->slot = idf_calloc(al, (size_t)cap, sizeof *s->slot);
    return s->slot != NULL;
}

/* false when str is already present. */
static bool strset_add(strset *s, const char *str, size_t len) {
    uint64_t h = XXH3_64bits(str, len) & s->mask;
    while (s->slot[h]) {
        if (!strcmp(s->slot[h], str)) return false;
        h = (h + 1) & s->mask;
    }
    s->slot[h] = str;
    return true;
}

/* ------------------------------------------------------------ open */

typedef struct section {
    const char *name;
    uint64_t off, size;
} section;

typedef struct chunk_ref {
    uint64_t offset, end;
    uint32_t tensor, chunk;
} chunk_ref;

static int cmp_chunk_ref(const void *a, const void *b) {
    const chunk_ref *x = a, *y = b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Copy a key or name into the string store, rejecting embedded NULs (they
 * would make the NUL-terminated copy differ from the stored name). */
static bool copy_name(char *dst, const uint8_t *src, size_t len) {
    if (memchr(src, 0, len)) return false;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return true;
}

static idefics_status parse_header(idfx_file *f, const uint8_t *b, uint64_t size, section sec[3], uint64_t *index_sum,
                                   idf_err *err) {
    if (size < 4 && memcmp(b ? (const void *)b : "", IDFX_MAGIC, (size_t)size) == 0)
        return idf_errf(err, IDEFICS_ERR_TRUNCATED, "file is %llu bytes, shorter than the %u-byte header", U64(size),
                        IDFX_HEADER_SIZE);
    if (size < 4 || memcmp(b, IDFX_MAGIC, 4) != 0)
        return idf_errf(err, IDEFICS_ERR_BAD_MAGIC, "not an IDFX file: magic is not \"IDFX\"");
    if (size < 8)
        return idf_errf(err, IDEFICS_ERR_TRUNCATED, "file is %llu bytes, shorter than the %u-byte header", U64(size),
                        IDFX_HEADER_SIZE);
    uint32_t version = idf_rd32(b + IDFX_OFF_VERSION);
    if (version != IDFX_VERSION)
        return idf_errf(err, IDEFICS_ERR_BAD_VERSION, "header.version is %u; this build reads version %u", version,
                        IDFX_VERSION);
    if (size < IDFX_HEADER_SIZE)
        return idf_errf(err, IDEFICS_ERR_TRUNCATED, "file is %llu bytes, shorter than the %u-byte header", U64(size),
                        IDFX_HEADER_SIZE);
    uint64_t hsum = idf_rd64(b + IDFX_OFF_HEADER_CHECKSUM), hcalc = XXH3_64bits(b, IDFX_OFF_HEADER_CHECKSUM);
    if (hsum != hcalc)
        return idf_errf(err, IDEFICS_ERR_CHECKSUM, "header.header_checksum is %016llx, header bytes hash to %016llx",
                        U64(hsum), U64(hcalc));
    uint32_t hsize = idf_rd32(b + IDFX_OFF_HEADER_SIZE);
    if (hsize != IDFX_HEADER_SIZE)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "header.header_size is %u, expected %u", hsize, IDFX_HEADER_SIZE);
    uint32_t flags = idf_rd32(b + IDFX_OFF_FLAGS);
    if (flags != 0) return idf_errf(err, IDEFICS_ERR_CORRUPT, "header.flags is 0x%x, expected 0", flags);
    if (idf_rd32(b + IDFX_OFF_RESERVED0) != 0)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "header reserved field at byte %d is not zero", IDFX_OFF_RESERVED0);
    for (int i = IDFX_OFF_RESERVED1; i < IDFX_OFF_HEADER_CHECKSUM; i++)
        if (b[i] != 0) return idf_errf(err, IDEFICS_ERR_CORRUPT, "header reserved byte %d is not zero", i);
    uint32_t align = idf_rd32(b + IDFX_OFF_ALIGNMENT);
    if (align < IDFX_MIN_ALIGNMENT || align > IDFX_MAX_ALIGNMENT || (align & (align - 1)) != 0)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "header.alignment is %u, expected a power of two in [%u, %u]", align,
                        IDFX_MIN_ALIGNMENT, IDFX_MAX_ALIGNMENT);
    uint64_t file_size = idf_rd64(b + IDFX_OFF_FILE_SIZE);
    if (file_size > size)
        return idf_errf(err, IDEFICS_ERR_TRUNCATED, "header.file_size is %llu bytes but the file has only %llu",
                        U64(file_size), U64(size));
    if (file_size < size)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "header.file_size is %llu bytes but the file has %llu",
                        U64(file_size), U64(size));
    f->version = version;
    f->alignment = align;
    f->n_kv = idf_rd32(b + IDFX_OFF_N_KV);
    f->n_tensors = idf_rd32(b + IDFX_OFF_N_TENSORS);
    sec[0] = (section){"metadata", idf_rd64(b + IDFX_OFF_META_OFFSET), idf_rd64(b + IDFX_OFF_META_SIZE)};
    sec[1] = (section){"directory", idf_rd64(b + IDFX_OFF_DIR_OFFSET), idf_rd64(b + IDFX_OFF_DIR_SIZE)};
    sec[2] = (section){"data", idf_rd64(b + IDFX_OFF_DATA_OFFSET), idf_rd64(b + IDFX_OFF_DATA_SIZE)};
    *index_sum = idf_rd64(b + IDFX_OFF_INDEX_CHECKSUM);
    for (int i = 0; i < 3; i++) {
        if (!idf_range_ok(sec[i].off, sec[i].size, size))
            return idf_errf(err, IDEFICS_ERR_TRUNCATED,
                            "%s section: offset %llu + size %llu runs past end of file (%llu bytes)", sec[i].name,
                            U64(sec[i].off), U64(sec[i].size), U64(size));
        if (sec[i].size && sec[i].off < IDFX_HEADER_SIZE)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "%s section: offset %llu overlaps the header", sec[i].name,
                            U64(sec[i].off));
    }
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++) {
            if (!sec[i].size || !sec[j].size) continue;
            if (sec[i].off < sec[j].off + sec[j].size && sec[j].off < sec[i].off + sec[i].size)
                return idf_errf(err, IDEFICS_ERR_CORRUPT, "%s section [%llu, +%llu) overlaps %s section [%llu, +%llu)",
                                sec[i].name, U64(sec[i].off), U64(sec[i].size), sec[j].name, U64(sec[j].off),
                                U64(sec[j].size));
        }
    if (sec[2].off % align != 0)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "header.data_offset %llu is not a multiple of the alignment %u",
                        U64(sec[2].off), align);
    return IDEFICS_OK;
}

static idefics_status parse_kv(idfx_file *f, cursor *c, char **strings, strset *keys, uint32_t i, idf_err *err) {
    if (!cur_has(c, 2))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata entry %u: key length runs past the metadata section", i);
    uint16_t klen = cur_u16(c);
    if (klen == 0 || klen > IDFX_MAX_KEY_LEN)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata entry %u: key length %u not in [1, %u]", i, klen,
                        IDFX_MAX_KEY_LEN);
    if (!cur_has(c, (uint64_t)klen + 1))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata entry %u: key of %u bytes runs past the metadata section",
                        i, klen);
    char *key = *strings;
    if (!copy_name(key, c->base + c->pos, klen))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata entry %u: key contains a NUL byte", i);
    *strings += klen + 1;
    c->pos += klen;
    if (!strset_add(keys, key, klen))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s' appears twice", key);
    idfx_kv *kv = &f->kv[i];
    kv->key = key;
    kv->type = cur_u8(c);
    if (kv->type >= IDFX_KV_COUNT)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': unknown value type %u", key, kv->type);
    uint32_t ss = kv_scalar_size(kv->type);
    if (ss) {
        if (!cur_has(c, ss))
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': %s value runs past the metadata section", key,
                            kv_type_name(kv->type));
        if (kv->type == IDFX_KV_BOOL && c->base[c->pos] > 1)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': BOOL value is %u", key, c->base[c->pos]);
        kv->count = 1;
        kv->value = c->base + c->pos;
        kv->value_size = ss;
        c->pos += ss;
        return IDEFICS_OK;
    }
    if (kv->type == IDFX_KV_STR) {
        if (!cur_has(c, 4))
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': string length runs past the metadata section",
                            key);
        uint32_t len = cur_u32(c);
        if (!cur_has(c, len))
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "metadata key '%s': string length %u runs past the metadata section (%llu bytes left)", key,
                            len, U64(c->end - c->pos));
        kv->count = len;
        kv->value = c->base + c->pos;
        kv->value_size = len;
        c->pos += len;
        return IDEFICS_OK;
    }
    /* ARR */
    if (!cur_has(c, 9))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': array header runs past the metadata section", key);
    kv->elem_type = cur_u8(c);
    kv->count = cur_u64(c);
    if (kv->elem_type >= IDFX_KV_COUNT || kv->elem_type == IDFX_KV_ARR)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': array element type %u is %s", key, kv->elem_type,
                        kv->elem_type == IDFX_KV_ARR ? "a nested array" : "unknown");
    kv->value = c->base + c->pos;
    uint64_t left = c->end - c->pos, bytes;
    ss = kv_scalar_size(kv->elem_type);
    if (ss) {
        if (!idf_mul_u64(kv->count, ss, &bytes) || bytes > left)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "metadata key '%s': %llu %s elements run past the metadata section (%llu bytes left)", key,
                            U64(kv->count), kv_type_name(kv->elem_type), U64(left));
        if (kv->elem_type == IDFX_KV_BOOL)
            for (uint64_t e = 0; e < kv->count; e++)
                if (c->base[c->pos + e] > 1)
                    return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': BOOL element %llu is %u", key, U64(e),
                                    c->base[c->pos + e]);
        c->pos += bytes;
    } else {
        /* strings: each at least its 4-byte length */
        if (!idf_mul_u64(kv->count, 4, &bytes) || bytes > left)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "metadata key '%s': %llu strings cannot fit the %llu bytes left in the metadata section",
                            key, U64(kv->count), U64(left));
        uint64_t start = c->pos;
        for (uint64_t e = 0; e < kv->count; e++) {
            if (!cur_has(c, 4))
                return idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata key '%s': string %llu runs past the metadata section",
                                key, U64(e));
            uint32_t len = cur_u32(c);
            if (!cur_has(c, len))
                return idf_errf(err, IDEFICS_ERR_CORRUPT,
                                "metadata key '%s': string %llu length %u runs past the metadata section", key, U64(e),
                                len);
            c->pos += len;
        }
        bytes = c->pos - start;
    }
    kv->value_size = bytes;
    return IDEFICS_OK;
}

static idefics_status parse_tensor(idfx_file *f, cursor *c, char **strings, strset *names, uint32_t i,
                                   idfx_chunk **chunk_store, uint64_t *chunks_left, idf_err *err) {
    idfx_tensor *t = &f->tensors[i];
    if (!cur_has(c, 2))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor entry %u: name length runs past the directory section", i);
    uint16_t nlen = cur_u16(c);
    if (nlen == 0 || nlen > IDFX_MAX_NAME_LEN)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor entry %u: name length %u not in [1, %u]", i, nlen,
                        IDFX_MAX_NAME_LEN);
    if (!cur_has(c, (uint64_t)nlen + 4))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor entry %u: name of %u bytes runs past the directory section",
                        i, nlen);
    char *name = *strings;
    if (!copy_name(name, c->base + c->pos, nlen))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor entry %u: name contains a NUL byte", i);
    *strings += nlen + 1;
    c->pos += nlen;
    if (!strset_add(names, name, nlen)) return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' appears twice", name);
    t->name = name;
    t->type = cur_u8(c);
    t->layout = cur_u8(c);
    t->n_dims = cur_u8(c);
    uint8_t reserved = cur_u8(c);
    if (t->type >= IDFX_TYPE_COUNT)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': unknown type %u", name, t->type);
    if (t->layout >= IDFX_LAYOUT_COUNT)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': unknown layout %u", name, t->layout);
    if (t->n_dims < 1 || t->n_dims > IDFX_MAX_DIMS)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': n_dims is %u, expected 1..%u", name, t->n_dims,
                        IDFX_MAX_DIMS);
    if (reserved != 0) return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': reserved byte is %u", name, reserved);
    if (!cur_has(c, 8ull * t->n_dims + 8))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': dims run past the directory section", name);
    t->n_elements = 1;
    for (uint32_t d = 0; d < IDFX_MAX_DIMS; d++) t->dims[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        t->dims[d] = cur_u64(c);
        if (t->dims[d] == 0) return idf_errf(err, IDEFICS_ERR_BAD_SHAPE, "tensor '%s': dims[%u] is 0", name, d);
        if (!idf_mul_u64(t->n_elements, t->dims[d], &t->n_elements))
            return idf_errf(err, IDEFICS_ERR_BAD_SHAPE, "tensor '%s': element count overflows", name);
    }
    t->layout_param = cur_u32(c);
    t->n_chunks = cur_u32(c);
    uint64_t unit;
    if (!idfx_tensor_nbytes(t->type, t->layout, t->layout_param, t->n_dims, t->dims, &t->nbytes, &unit))
        return idf_errf(err, IDEFICS_ERR_BAD_SHAPE,
                        "tensor '%s': type %s, layout %s, layout_param %u and its %u-d shape do not fit together", name,
                        idfx_type_name(t->type), idfx_layout_name(t->layout), t->layout_param, t->n_dims);
    uint64_t table;
    if (t->n_chunks == 0) return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': n_chunks is 0", name);
    if (!idf_mul_u64(t->n_chunks, IDFX_CHUNK_ENTRY_SIZE, &table) || !cur_has(c, table) || t->n_chunks > *chunks_left)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': %u chunks run past the directory section", name,
                        t->n_chunks);
    t->chunks = *chunk_store;
    *chunk_store += t->n_chunks;
    *chunks_left -= t->n_chunks;
    uint64_t data_end = f->data_offset + f->data_size, raw_off = 0;
    for (uint32_t k = 0; k < t->n_chunks; k++) {
        idfx_chunk *ch = &t->chunks[k];
        ch->offset = cur_u64(c);
        ch->stored_size = cur_u64(c);
        ch->raw_size = cur_u64(c);
        ch->checksum = cur_u64(c);
        ch->codec = cur_u8(c);
        ch->filter = cur_u8(c);
        const uint8_t *rsv = c->base + c->pos;
        c->pos += 6;
        for (int r = 0; r < 6; r++)
            if (rsv[r]) return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: reserved byte not zero", name, k);
        if (!idf_range_ok(ch->offset, ch->stored_size, f->size))
            return idf_errf(err, IDEFICS_ERR_TRUNCATED,
                            "tensor '%s' chunk %u: offset %llu + size %llu runs past end of file (%llu bytes)", name, k,
                            U64(ch->offset), U64(ch->stored_size), U64(f->size));
        if (ch->offset % f->alignment != 0)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: offset %llu is not a multiple of %u", name,
                            k, U64(ch->offset), f->alignment);
        if (ch->offset < f->data_offset || ch->offset + ch->stored_size > data_end)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "tensor '%s' chunk %u: [%llu, +%llu) lies outside the data region [%llu, +%llu)", name, k,
                            U64(ch->offset), U64(ch->stored_size), U64(f->data_offset), U64(f->data_size));
        if (ch->codec >= IDFX_CODEC_COUNT)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: unknown codec %u", name, k, ch->codec);
        if (ch->filter >= IDFX_FILTER_COUNT)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: unknown filter %u", name, k, ch->filter);
        if (ch->raw_size == 0 || ch->raw_size % unit != 0)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "tensor '%s' chunk %u: raw_size %llu is not a positive multiple of the %llu-byte unit", name,
                            k, U64(ch->raw_size), U64(unit));
        if (ch->raw_size > SIZE_MAX)
            return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "tensor '%s' chunk %u: raw_size %llu too large for this host",
                            name, k, U64(ch->raw_size));
        if (ch->codec == IDFX_CODEC_RAW && ch->stored_size != ch->raw_size)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: raw chunk stores %llu bytes, raw_size %llu",
                            name, k, U64(ch->stored_size), U64(ch->raw_size));
        if (ch->stored_size == 0)
            return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u: stored_size is 0", name, k);
        uint64_t max_raw;
        if (ch->codec == IDFX_CODEC_ZSTD && idf_mul_u64(ch->stored_size, ZSTD_MAX_EXPANSION, &max_raw) &&
            ch->raw_size > max_raw)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "tensor '%s' chunk %u: raw_size %llu is more than a %llu-byte zstd frame can hold", name, k,
                            U64(ch->raw_size), U64(ch->stored_size));
        uint32_t fe = filter_elem(ch->filter);
        if (fe && ch->raw_size % fe != 0)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "tensor '%s' chunk %u: raw_size %llu is not a multiple of the filter's %u-byte element",
                            name, k, U64(ch->raw_size), fe);
        ch->raw_offset = raw_off;
        if (!idf_add_u64(raw_off, ch->raw_size, &raw_off) || raw_off > t->nbytes)
            return idf_errf(err, IDEFICS_ERR_CORRUPT,
                            "tensor '%s' chunk %u: raw sizes add up to more than the tensor's %llu bytes", name, k,
                            U64(t->nbytes));
    }
    if (raw_off != t->nbytes)
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s': chunk raw sizes add up to %llu, the tensor has %llu bytes",
                        name, U64(raw_off), U64(t->nbytes));
    return IDEFICS_OK;
}

static idefics_status check_overlaps(idfx_file *f, uint64_t n_chunks, idf_err *err) {
    if (n_chunks < 2) return IDEFICS_OK;
    chunk_ref *refs = idf_calloc(&f->alloc, (size_t)n_chunks, sizeof *refs);
    if (!refs) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory checking %llu chunks", U64(n_chunks));
    uint64_t n = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++)
        for (uint32_t k = 0; k < f->tensors[i].n_chunks; k++) {
            const idfx_chunk *ch = &f->tensors[i].chunks[k];
            refs[n++] = (chunk_ref){ch->offset, ch->offset + ch->stored_size, i, k};
        }
    qsort(refs, (size_t)n, sizeof *refs, cmp_chunk_ref);
    idefics_status st = IDEFICS_OK;
    for (uint64_t j = 1; j < n; j++)
        if (refs[j].offset < refs[j - 1].end) {
            st = idf_errf(err, IDEFICS_ERR_CORRUPT, "tensor '%s' chunk %u [%llu, %llu) overlaps tensor '%s' chunk %u",
                          f->tensors[refs[j].tensor].name, refs[j].chunk, U64(refs[j].offset), U64(refs[j].end),
                          f->tensors[refs[j - 1].tensor].name, refs[j - 1].chunk);
            break;
        }
    idf_free(&f->alloc, refs);
    return st;
}

idefics_status idfx_open(idfx_file *f, const void *data, uint64_t size, const idf_alloc *alloc, idf_err *err) {
    if (!f) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idfx_open: NULL file");
    memset(f, 0, sizeof *f);
    if (alloc) f->alloc = *alloc;
    if (!data && size) return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "idfx_open: NULL data");
    const uint8_t *b = data;
    section sec[3];
    uint64_t index_sum = 0;
    idf_alloc al = f->alloc;
    idefics_status hst = parse_header(f, b, size, sec, &index_sum, err);
    if (hst != IDEFICS_OK) {
        memset(f, 0, sizeof *f);
        return hst;
    }
    f->base = b;
    f->size = size;
    f->data_offset = sec[2].off;
    f->data_size = sec[2].size;

    XXH3_state_t st3;
    XXH3_64bits_reset(&st3);
    XXH3_64bits_update(&st3, b + sec[0].off, (size_t)sec[0].size);
    XXH3_64bits_update(&st3, b + sec[1].off, (size_t)sec[1].size);
    uint64_t icalc = XXH3_64bits_digest(&st3);
    if (icalc != index_sum) {
        memset(f, 0, sizeof *f);
        return idf_errf(err, IDEFICS_ERR_CHECKSUM,
                        "header.index_checksum is %016llx, metadata and directory hash to %016llx", U64(index_sum),
                        U64(icalc));
    }

    /* counts against the minimum entry sizes, before allocating anything */
    uint64_t need;
    idefics_status st = IDEFICS_OK;
    if (!idf_mul_u64(f->n_kv, KV_MIN_SIZE, &need) || need > sec[0].size) {
        st = idf_errf(err, IDEFICS_ERR_CORRUPT, "header.n_kv is %u, more than the %llu-byte metadata section can hold",
                      f->n_kv, U64(sec[0].size));
        memset(f, 0, sizeof *f);
        return st;
    }
    if (!idf_mul_u64(f->n_tensors, TENSOR_MIN_SIZE, &need) || need > sec[1].size) {
        st = idf_errf(err, IDEFICS_ERR_CORRUPT,
                      "header.n_tensors is %u, more than the %llu-byte directory section can hold", f->n_tensors,
                      U64(sec[1].size));
        memset(f, 0, sizeof *f);
        return st;
    }
    /* Every key/name of length L is encoded in at least L + 2 bytes, so the two
     * sections' sizes bound the NUL-terminated copies. The chunk count is bounded
     * by the directory size / 40. */
    uint64_t str_bytes = sec[0].size + sec[1].size + 1, chunk_cap = sec[1].size / IDFX_CHUNK_ENTRY_SIZE;
    strset keys = {0}, names = {0};
    if (str_bytes > SIZE_MAX || chunk_cap > SIZE_MAX / sizeof(idfx_chunk)) {
        memset(f, 0, sizeof *f);
        return idf_errf(err, IDEFICS_ERR_UNSUPPORTED, "index too large for this host");
    }
    idfx_chunk *chunks = NULL;
    f->strings = idf_malloc(&al, (size_t)str_bytes);
    f->kv = idf_calloc(&al, f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->tensors = idf_calloc(&al, f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    chunks = idf_calloc(&al, chunk_cap ? (size_t)chunk_cap : 1, sizeof *chunks);
    if (!f->strings || !f->kv || !f->tensors || !chunks || !strset_init(&keys, f->n_kv, &al) ||
        !strset_init(&names, f->n_tensors, &al)) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the index (%u keys, %u tensors)", f->n_kv,
                      f->n_tensors);
        goto fail;
    }
    char *sp = f->strings;
    cursor c = {b, sec[0].off, sec[0].off + sec[0].size};
    for (uint32_t i = 0; i < f->n_kv && st == IDEFICS_OK; i++) st = parse_kv(f, &c, &sp, &keys, i, err);
    if (st != IDEFICS_OK) goto fail;
    if (c.pos != c.end) {
        st = idf_errf(err, IDEFICS_ERR_CORRUPT, "metadata section: %llu bytes left after %u entries", U64(c.end - c.pos),
                      f->n_kv);
        goto fail;
    }
    c = (cursor){b, sec[1].off, sec[1].off + sec[1].size};
    idfx_chunk *cs = chunks;
    uint64_t chunks_left = chunk_cap;
    for (uint32_t i = 0; i < f->n_tensors && st == IDEFICS_OK; i++)
        st = parse_tensor(f, &c, &sp, &names, i, &cs, &chunks_left, err);
    if (st != IDEFICS_OK) goto fail;
    if (c.pos != c.end) {
        st = idf_errf(err, IDEFICS_ERR_CORRUPT, "directory section: %llu bytes left after %u tensors",
                      U64(c.end - c.pos), f->n_tensors);
        goto fail;
    }
    st = check_overlaps(f, chunk_cap - chunks_left, err);
    if (st != IDEFICS_OK) goto fail;
    idf_free(&al, keys.slot);
    idf_free(&al, names.slot);
    /* the chunk table is owned through tensors[0].chunks (the first slice) */
    if (f->n_tensors == 0) idf_free(&al, chunks);
    return IDEFICS_OK;
fail:
    idf_free(&al, keys.slot);
    idf_free(&al, names.slot);
    idf_free(&al, chunks);
    idf_free(&al, f->strings);
    idf_free(&al, f->kv);
    idf_free(&al, f->tensors);
    memset(f, 0, sizeof *f);
    return st;
}

void idfx_close(idfx_file *f) {
    if (!f) return;
    idf_alloc al = f->alloc;
    if (f->n_tensors && f->tensors) idf_free(&al, f->tensors[0].chunks);
    idf_free(&al, f->tensors);
    idf_free(&al, f->kv);
    idf_free(&al, f->strings);
    idf_free(&al, f->arena);
    memset(f, 0, sizeof *f);
}

/* ------------------------------------------------------------ lookups */

const idfx_kv *idfx_find_kv(const idfx_file *f, const char *key) {
    for (uint32_t i = 0; i < f->n_kv; i++)
        if (!strcmp(f->kv[i].key, key)) return &f->kv[i];
    return NULL;
}

const idfx_tensor *idfx_find_tensor(const idfx_file *f, const char *name) {
    for (uint32_t i = 0; i < f->n_tensors; i++)
        if (!strcmp(f->tensors[i].name, name)) return &f->tensors[i];
    return NULL;
}

static idefics_status kv_lookup(const idfx_file *f, const char *key, const idfx_kv **out, idf_err *err) {
    *out = idfx_find_kv(f, key);
    if (!*out) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is missing", key);
    return IDEFICS_OK;
}

idefics_status idfx_get_u32(const idfx_file *f, const char *key, uint32_t *out, idf_err *err) {
    const idfx_kv *kv;
    IDF_FORWARD(kv_lookup(f, key, &kv, err));
    switch (kv->type) {
    case IDFX_KV_U8:
    case IDFX_KV_BOOL: *out = kv->value[0]; return IDEFICS_OK;
    case IDFX_KV_U32: *out = idf_rd32(kv->value); return IDEFICS_OK;
    case IDFX_KV_I32: {
        int32_t v = (int32_t)idf_rd32(kv->value);
        if (v < 0) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is negative (%d)", key, (int)v);
        *out = (uint32_t)v;
        return IDEFICS_OK;
    }
    default:
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is %s, expected an unsigned integer", key,
                        kv_type_name(kv->type));
    }
}

idefics_status idfx_get_f32(const idfx_file *f, const char *key, float *out, idf_err *err) {
    const idfx_kv *kv;
    IDF_FORWARD(kv_lookup(f, key, &kv, err));
    if (kv->type != IDFX_KV_F32)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is %s, expected F32", key, kv_type_name(kv->type));
    uint32_t bits = idf_rd32(kv->value);
    memcpy(out, &bits, 4);
    return IDEFICS_OK;
}

idefics_status idfx_get_bool(const idfx_file *f, const char *key, bool *out, idf_err *err) {
    const idfx_kv *kv;
    IDF_FORWARD(kv_lookup(f, key, &kv, err));
    if (kv->type != IDFX_KV_BOOL)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is %s, expected BOOL", key,
                        kv_type_name(kv->type));
    *out = kv->value[0] != 0;
    return IDEFICS_OK;
}

idefics_status idfx_get_str(const idfx_file *f, const char *key, const char **s, uint32_t *len, idf_err *err) {
    const idfx_kv *kv;
    IDF_FORWARD(kv_lookup(f, key, &kv, err));
    if (kv->type != IDFX_KV_STR)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is %s, expected STR", key, kv_type_name(kv->type));
    *s = (const char *)kv->value;
    *len = (uint32_t)kv->count;
    return IDEFICS_OK;
}

idefics_status idfx_get_arr(const idfx_file *f, const char *key, idfx_kv_type elem_type, const idfx_kv **out,
                            idf_err *err) {
    const idfx_kv *kv;
    IDF_FORWARD(kv_lookup(f, key, &kv, err));
    if (kv->type != IDFX_KV_ARR || kv->elem_type != elem_type)
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "metadata key '%s' is %s%s%s, expected ARR of %s", key,
                        kv_type_name(kv->type), kv->type == IDFX_KV_ARR ? " of " : "",
                        kv->type == IDFX_KV_ARR ? kv_type_name(kv->elem_type) : "", kv_type_name(elem_type));
    *out = kv;
    return IDEFICS_OK;
}

uint32_t idfx_arr_u32(const idfx_kv *kv, uint64_t i) {
    if (!kv || kv->type != IDFX_KV_ARR || i >= kv->count) return 0;
    switch (kv->elem_type) {
    case IDFX_KV_U8:
    case IDFX_KV_BOOL: return kv->value[i];
    case IDFX_KV_U32:
    case IDFX_KV_I32:
    case IDFX_KV_F32: return idf_rd32(kv->value + 4 * i);
    case IDFX_KV_U64: return (uint32_t)idf_rd64(kv->value + 8 * i);
    default: return 0;
    }
}

float idfx_arr_f32(const idfx_kv *kv, uint64_t i) {
    if (!kv || kv->type != IDFX_KV_ARR || kv->elem_type != IDFX_KV_F32 || i >= kv->count) return 0.0f;
    uint32_t bits = idf_rd32(kv->value + 4 * i);
    float v;
    memcpy(&v, &bits, 4);
    return v;
}

bool idfx_arr_next_str(const idfx_kv *kv, uint64_t *pos, const char **s, uint32_t *len) {
    if (!kv || kv->type != IDFX_KV_ARR || kv->elem_type != IDFX_KV_STR) return false;
    uint64_t p = *pos;
    if (p > kv->value_size || kv->value_size - p < 4) return false;
    uint32_t l = idf_rd32(kv->value + p);
    if (kv->value_size - p - 4 < l) return false;
    *s = (const char *)kv->value + p + 4;
    *len = l;
    *pos = p + 4 + l;
    return true;
}

/* ------------------------------------------------------------ decoding */

idefics_status idfx_verify_chunk(const idfx_file *f, const idfx_tensor *t, uint32_t chunk, idf_err *err) {
    if (chunk >= t->n_chunks)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tensor '%s': no chunk %u", t->name, chunk);
    const idfx_chunk *ch = &t->chunks[chunk];
    uint64_t h = XXH3_64bits(f->base + ch->offset, (size_t)ch->stored_size);
    if (h != ch->checksum)
        return idf_errf(err, IDEFICS_ERR_CHECKSUM, "tensor '%s' chunk %u: checksum %016llx, stored bytes hash to %016llx",
                        t->name, chunk, U64(ch->checksum), U64(h));
    return IDEFICS_OK;
}

/* Byte unshuffle: byte b of element i is at src[b * n + i]. */
static void unshuffle(uint8_t *dst, const uint8_t *src, uint64_t size, uint32_t elem) {
    uint64_t n = size / elem;
    if (elem == 2) {
        const uint8_t *s0 = src, *s1 = src + n;
        for (uint64_t i = 0; i < n; i++) {
            dst[2 * i] = s0[i];
            dst[2 * i + 1] = s1[i];
        }
        return;
    }
    for (uint64_t i = 0; i < n; i++)
        for (uint32_t b = 0; b < elem; b++) dst[i * elem + b] = src[(uint64_t)b * n + i];
}

static ZSTD_DCtx *dctx_create(const idfx_file *f) {
    ZSTD_customMem mem = {idf_malloc_cb, idf_free_cb, (void *)&f->alloc};
    return ZSTD_createDCtx_advanced(mem);
}

/* Decode one chunk with a caller-provided (possibly NULL = create one) context. */
static idefics_status decode_chunk(const idfx_file *f, const idfx_tensor *t, uint32_t chunk, void *dst, bool verify,
                                   ZSTD_DCtx **dctx, idf_err *err) {
    if (chunk >= t->n_chunks)
        return idf_errf(err, IDEFICS_ERR_INVALID_ARG, "tensor '%s': no chunk %u", t->name, chunk);
    const idfx_chunk *ch = &t->chunks[chunk];
    if (verify) IDF_FORWARD(idfx_verify_chunk(f, t, chunk, err));
    const uint8_t *src = f->base + ch->offset;
    uint32_t fe = filter_elem(ch->filter);
    if (ch->codec == IDFX_CODEC_RAW) {
        if (fe) unshuffle(dst, src, ch->raw_size, fe);
        else memcpy(dst, src, (size_t)ch->raw_size);
        return IDEFICS_OK;
    }
    unsigned long long fcs = ZSTD_getFrameContentSize(src, (size_t)ch->stored_size);
    if (fcs == ZSTD_CONTENTSIZE_ERROR)
        return idf_errf(err, IDEFICS_ERR_DECOMPRESS, "tensor '%s' chunk %u: not a zstd frame", t->name, chunk);
    if (fcs == ZSTD_CONTENTSIZE_UNKNOWN || fcs != ch->raw_size)
        return idf_errf(err, IDEFICS_ERR_DECOMPRESS, "tensor '%s' chunk %u: zstd frame content size %s%llu, raw_size %llu",
                        t->name, chunk, fcs == ZSTD_CONTENTSIZE_UNKNOWN ? "unknown " : "", 
                        fcs == ZSTD_CONTENTSIZE_UNKNOWN ? 0ull : fcs, U64(ch->raw_size));
    size_t fsz = ZSTD_findFrameCompressedSize(src, (size_t)ch->stored_size);
    if (ZSTD_isError(fsz) || fsz != ch->stored_size)
        return idf_errf(err, IDEFICS_ERR_DECOMPRESS, "tensor '%s' chunk %u: %s", t->name, chunk,
                        ZSTD_isError(fsz) ? ZSTD_getErrorName(fsz) : "bytes after the zstd frame");
    ZSTD_DCtx *local = NULL;
    if (!dctx || !*dctx) {
        local = dctx_create(f);
        if (!local) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tensor '%s' chunk %u: no memory for zstd", t->name, chunk);
        if (dctx) *dctx = local;
    }
    ZSTD_DCtx *dc = dctx ? *dctx : local;
    uint8_t *tmp = dst;
    if (fe) {
        tmp = idf_malloc(&f->alloc, (size_t)ch->raw_size);
        if (!tmp) {
            if (!dctx) ZSTD_freeDCtx(local);
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "tensor '%s' chunk %u: no memory to unshuffle %llu bytes",
                            t->name, chunk, U64(ch->raw_size));
        }
    }
    size_t r = ZSTD_decompressDCtx(dc, tmp, (size_t)ch->raw_size, src, (size_t)ch->stored_size);
    if (!dctx) ZSTD_freeDCtx(local);
    idefics_status st = IDEFICS_OK;
    if (ZSTD_isError(r))
        st = idf_errf(err, IDEFICS_ERR_DECOMPRESS, "tensor '%s' chunk %u: zstd: %s", t->name, chunk, ZSTD_getErrorName(r));
    else if (r != ch->raw_size)
        st = idf_errf(err, IDEFICS_ERR_DECOMPRESS, "tensor '%s' chunk %u: decoded %zu bytes, raw_size %llu", t->name, chunk,
                      r, U64(ch->raw_size));
    else if (fe)
        unshuffle(dst, tmp, ch->raw_size, fe);
    if (fe) idf_free(&f->alloc, tmp);
    return st;
}

idefics_status idfx_decode_chunk(const idfx_file *f, const idfx_tensor *t, uint32_t chunk, void *dst, bool verify,
                                 idf_err *err) {
    return decode_chunk(f, t, chunk, dst, verify, NULL, err);
}

/* ------------------------------------------------------------ materialize */

typedef struct mat_job {
    uint32_t tensor, chunk;
    uint8_t *dst; /* NULL: verify only (zero-copy tensor) */
} mat_job;

typedef struct mat_ctx {
    const idfx_file *f;
    const mat_job *jobs;
    idefics_status *st;
    ZSTD_DCtx **dctx; /* one per pool thread */
    bool verify;
} mat_ctx;

static void mat_task(void *vctx, int64_t i, int thread_id) {
    mat_ctx *c = vctx;
    const mat_job *j = &c->jobs[i];
    const idfx_tensor *t = &c->f->tensors[j->tensor];
    idf_err scratch; /* messages are regenerated for the first failure only */
    if (!j->dst)
        c->st[i] = idfx_verify_chunk(c->f, t, j->chunk, &scratch);
    else
        c->st[i] = decode_chunk(c->f, t, j->chunk, j->dst, c->verify, &c->dctx[thread_id], &scratch);
}

/* Raw, unfiltered chunks laid out back to back in the file: usable in place. */
static bool zero_copy(const idfx_tensor *t) {
    for (uint32_t k = 0; k < t->n_chunks; k++) {
        const idfx_chunk *ch = &t->chunks[k];
        if (ch->codec != IDFX_CODEC_RAW || ch->filter != IDFX_FILTER_NONE) return false;
        if (ch->offset != t->chunks[0].offset + ch->raw_offset) return false;
    }
    return true;
}

idefics_status idfx_materialize(idfx_file *f, idf_pool *pool, bool verify, idf_err *err) {
    idf_alloc *al = &f->alloc;
    idf_free(al, f->arena);
    f->arena = NULL;
    f->arena_size = 0;
    uint64_t arena = 0, n_jobs = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        idfx_tensor *t = &f->tensors[i];
        t->data = NULL;
        if (zero_copy(t)) {
            if (verify) n_jobs += t->n_chunks;
            continue;
        }
        n_jobs += t->n_chunks;
        uint64_t padded = (t->nbytes + 63) & ~(uint64_t)63;
        if (padded < t->nbytes || !idf_add_u64(arena, padded, &arena))
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "decoded tensors overflow the address space");
    }
    if (arena > SIZE_MAX - 64)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "decoded tensors need %llu bytes", U64(arena));
    int n_threads = pool ? idf_pool_size(pool) : 1;
    uint8_t *mem = NULL, *aligned = NULL;
    if (arena) {
        mem = idf_malloc(al, (size_t)arena + 63);
        if (!mem) return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cannot allocate %llu bytes for decoded tensors", U64(arena));
        aligned = (uint8_t *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    }
    mat_job *jobs = idf_calloc(al, n_jobs ? (size_t)n_jobs : 1, sizeof *jobs);
    idefics_status *sts = idf_calloc(al, n_jobs ? (size_t)n_jobs : 1, sizeof *sts);
    ZSTD_DCtx **dctx = idf_calloc(al, (size_t)n_threads, sizeof *dctx);
    idefics_status st = IDEFICS_OK;
    if (!jobs || !sts || !dctx) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for %llu decode jobs", U64(n_jobs));
        goto done;
    }
    uint64_t n = 0, pos = 0;
    for (uint32_t i = 0; i < f->n_tensors; i++) {
        idfx_tensor *t = &f->tensors[i];
        bool zc = zero_copy(t);
        if (zc) t->data = f->base + t->chunks[0].offset;
        else {
            t->data = aligned + pos;
            pos += (t->nbytes + 63) & ~(uint64_t)63;
        }
        if (zc && !verify) continue;
        for (uint32_t k = 0; k < t->n_chunks; k++)
            jobs[n++] = (mat_job){i, k, zc ? NULL : (uint8_t *)t->data + t->chunks[k].raw_offset};
    }
    mat_ctx mc = {f, jobs, sts, dctx, verify};
    idf_pool_run(pool, (int64_t)n, mat_task, &mc);
    for (uint64_t j = 0; j < n; j++) {
        if (sts[j] == IDEFICS_OK) continue;
        /* rerun the first failure serially to get its message */
        const idfx_tensor *t = &f->tensors[jobs[j].tensor];
        if (!jobs[j].dst) st = idfx_verify_chunk(f, t, jobs[j].chunk, err);
        else st = decode_chunk(f, t, jobs[j].chunk, jobs[j].dst, verify, &dctx[0], err);
        if (st == IDEFICS_OK) st = idf_errf(err, sts[j], "tensor '%s' chunk %u failed to decode", t->name, jobs[j].chunk);
        break;
    }
done:
    if (dctx)
        for (int i = 0; i < n_threads; i++) ZSTD_freeDCtx(dctx[i]);
    idf_free(al, dctx);
    idf_free(al, jobs);
    idf_free(al, sts);
    if (st != IDEFICS_OK) {
        idf_free(al, mem);
        for (uint32_t i = 0; i < f->n_tensors; i++) f->tensors[i].data = NULL;
        return st;
    }
    f->arena = mem;
    f->arena_size = arena;
    return IDEFICS_OK;
}
