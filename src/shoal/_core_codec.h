/*
 * The record format, C half: what the first byte of a ring record or of a SharedDict
 * key or value says it is.  This enum is the one list of those bytes; shoal._codec,
 * the Python half, takes every value from _core (TAG_*) and retypes none.
 *
 *   N t f I F S Y U   scalars and tuples of them, encoded here (_core_codec.c) with no
 *                     pickle: exact types only, so subclasses keep their type
 *   0x80              a pickle (protocol 2 and later start with PROTO), unpickled by the
 *                     `loads` upcall
 *   T                 a transit record: the name of a segment holding a pickle too big
 *                     for the ring (shoal._serialize)
 *   K                 a kept record: a keeper id, then a pickle or a transit record,
 *                     whose shoal references belong to the keeper (shoal._serialize)
 *   H                 a SharedDict value holding references to shoal objects: the dict's
 *                     keeper id, then its pickle (shoal._codec, "stored references")
 */
#ifndef SHOAL_CORE_CODEC_H
#define SHOAL_CORE_CODEC_H

#include "_core_glue.h"

typedef enum {
    TAG_NONE = 'N',
    TAG_TRUE = 't',
    TAG_FALSE = 'f',
    TAG_INT = 'I',   /* int64, native byte order (both ends are on this machine) */
    TAG_FLOAT = 'F', /* IEEE double */
    TAG_STR = 'S',   /* UTF-8 */
    TAG_BYTES = 'Y',
    TAG_TUPLE = 'U', /* u32 count, then per item: u8 tag, u32 length, payload */
    TAG_PICKLE = 0x80,
    TAG_TRANSIT = 'T',
    TAG_KEPT = 'K',
    TAG_STORED = 'H',
} record_tag;

/* Longest tuple the codec encodes itself; longer ones are pickled. */
#define FAST_TUPLE_MAX 64

/* One record to write: `tag_len` bytes of tag (0 or 1) followed by `len` bytes. */
typedef struct {
    char tag[1];
    Py_ssize_t tag_len;
    const char *data;
    Py_ssize_t len;
    char scratch[8];
    Py_buffer view; /* owned when view.obj != NULL */
    char *owned;    /* PyMem buffer holding an encoded tuple, freed with the record */
} record_src;

static inline Py_ssize_t record_size(const record_src *rec) { return rec->tag_len + rec->len; }

/* A scalar or a tuple of scalars into rec: 1 encoded, 0 it needs pickle, -1 error. */
int fast_encode(PyObject *obj, record_src *rec);
/* Whether a record's first byte is one of the fast codec's tags. */
int is_fast_tag(char tag);
/* Decode a fast record (is_fast_tag(src[0])): the object, or NULL with an exception
 * (LayoutError, with `corrupt` as its message, for bytes no encoder writes). */
PyObject *fast_decode(const char *src, uint32_t len, const char *corrupt);

#endif
