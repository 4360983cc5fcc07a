/*
 * shoal._core, the record format's C half (_core_codec.h): common scalars, and tuples of
 * them, go into a ring or a SharedDict without pickle.
 */
#include "_core_codec.h"

/* A scalar: 1 if encoded into rec, 0 if obj needs pickle, -1 on error. */
static int fast_encode_scalar(PyObject *obj, record_src *rec) {
    rec->tag_len = 1;
    rec->data = rec->scratch;
    rec->len = 0;
    rec->view.obj = NULL;
    rec->owned = NULL;
    if (obj == Py_None) {
        rec->tag[0] = TAG_NONE;
    } else if (obj == Py_True || obj == Py_False) {
        rec->tag[0] = obj == Py_True ? TAG_TRUE : TAG_FALSE;
    } else if (PyLong_CheckExact(obj)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (overflow)
            return 0;
        if (v == -1 && PyErr_Occurred())
            return -1;
        int64_t v64 = v;
        memcpy(rec->scratch, &v64, 8);
        rec->tag[0] = TAG_INT;
        rec->len = 8;
    } else if (PyFloat_CheckExact(obj)) {
        double d = PyFloat_AS_DOUBLE(obj);
        memcpy(rec->scratch, &d, 8);
        rec->tag[0] = TAG_FLOAT;
        rec->len = 8;
    } else if (PyUnicode_CheckExact(obj)) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(obj, &n);
        if (!utf8) { /* lone surrogates: pickle knows how */
            PyErr_Clear();
            return 0;
        }
        rec->tag[0] = TAG_STR;
        rec->data = utf8;
        rec->len = n;
    } else if (PyBytes_CheckExact(obj)) {
        rec->tag[0] = TAG_BYTES;
        rec->data = PyBytes_AS_STRING(obj);
        rec->len = PyBytes_GET_SIZE(obj);
    } else {
        return 0;
    }
    return 1;
}

/* A scalar or a tuple of scalars (the usual message shape): 1, 0 or -1 as above. */
int fast_encode(PyObject *obj, record_src *rec) {
    if (!PyTuple_CheckExact(obj))
        return fast_encode_scalar(obj, rec);
    Py_ssize_t n = PyTuple_GET_SIZE(obj), size = 4;
    if (n > FAST_TUPLE_MAX)
        return 0;
    record_src item;
    for (Py_ssize_t i = 0; i < n; i++) {
        int r = fast_encode_scalar(PyTuple_GET_ITEM(obj, i), &item);
        if (r <= 0)
            return r;
        if (item.len > 0x7fffffff - size - 5)
            return 0;
        size += 5 + item.len;
    }
    char *buf = PyMem_Malloc((size_t)size), *p = buf;
    if (!buf) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t count = (uint32_t)n;
    memcpy(p, &count, 4);
    p += 4;
    for (Py_ssize_t i = 0; i < n; i++) {
        fast_encode_scalar(PyTuple_GET_ITEM(obj, i), &item); /* succeeded above */
        uint32_t len = (uint32_t)item.len;
        *p++ = item.tag[0];
        memcpy(p, &len, 4);
        memcpy(p + 4, item.data, (size_t)len);
        p += 4 + len;
    }
    rec->tag[0] = TAG_TUPLE;
    rec->tag_len = 1;
    rec->data = rec->owned = buf;
    rec->len = size;
    rec->view.obj = NULL;
    return 1;
}

int is_fast_tag(char tag) {
    switch (tag) {
    case TAG_NONE: case TAG_TRUE: case TAG_FALSE: case TAG_INT: case TAG_FLOAT: case TAG_STR:
    case TAG_BYTES: case TAG_TUPLE:
        return 1;
    default:
        return 0;
    }
}

static PyObject *decode_scalar(char tag, const char *p, uint32_t n, const char *corrupt) {
    switch (tag) {
    case TAG_NONE: Py_RETURN_NONE;
    case TAG_TRUE: Py_RETURN_TRUE;
    case TAG_FALSE: Py_RETURN_FALSE;
    case TAG_INT: {
        int64_t v;
        if (n != 8) break;
        memcpy(&v, p, 8);
        return PyLong_FromLongLong(v);
    }
    case TAG_FLOAT: {
        double d;
        if (n != 8) break;
        memcpy(&d, p, 8);
        return PyFloat_FromDouble(d);
    }
    case TAG_STR: {
        /* the encoder wrote valid UTF-8 (lone surrogates go to pickle): anything else
         * was written by someone else */
        PyObject *s = PyUnicode_DecodeUTF8(p, n, "strict");
        if (!s && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return core_raise(SHOAL_BAD_LAYOUT, corrupt);
        }
        return s;
    }
    case TAG_BYTES: return PyBytes_FromStringAndSize(p, n);
    }
    return core_raise(SHOAL_BAD_LAYOUT, corrupt);
}

PyObject *fast_decode(const char *src, uint32_t len, const char *corrupt) {
    if (src[0] != TAG_TUPLE)
        return decode_scalar(src[0], src + 1, len - 1, corrupt);
    const char *p = src + 1, *end = src + len;
    uint32_t count;
    if (end - p < 4)
        return core_raise(SHOAL_BAD_LAYOUT, corrupt);
    memcpy(&count, p, 4);
    p += 4;
    if (count > FAST_TUPLE_MAX)
        return core_raise(SHOAL_BAD_LAYOUT, corrupt);
    PyObject *tuple = PyTuple_New(count);
    if (!tuple)
        return NULL;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t n;
        if (end - p < 5)
            goto corrupt;
        char tag = p[0];
        memcpy(&n, p + 1, 4);
        p += 5;
        if ((uint64_t)(end - p) < n || tag == TAG_TUPLE || !is_fast_tag(tag))
            goto corrupt;
        PyObject *item = decode_scalar(tag, p, n, corrupt);
        if (!item) {
            Py_DECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, item);
        p += n;
    }
    return tuple;
corrupt:
    Py_DECREF(tuple);
    return core_raise(SHOAL_BAD_LAYOUT, corrupt);
}

int codec_module_init(PyObject *module) {
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"TAG_NONE", TAG_NONE},       {"TAG_TRUE", TAG_TRUE},     {"TAG_FALSE", TAG_FALSE},
        {"TAG_INT", TAG_INT},         {"TAG_FLOAT", TAG_FLOAT},   {"TAG_STR", TAG_STR},
        {"TAG_BYTES", TAG_BYTES},     {"TAG_TUPLE", TAG_TUPLE},   {"TAG_PICKLE", TAG_PICKLE},
        {"TAG_TRANSIT", TAG_TRANSIT}, {"TAG_KEPT", TAG_KEPT},     {"TAG_STORED", TAG_STORED},
        {"FAST_TUPLE_MAX", FAST_TUPLE_MAX},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(module, constants[i].name, constants[i].value) < 0)
            return -1;
    return 0;
}
