/*
 * deviceplugin.kubelet._offer: read what a GetPreferredAllocation request offers without
 * making a Python object per device ID.
 *
 * The kubelet offers every free device of a resource in each GetPreferredAllocation
 * call: 896 IDs on a node of 8 GPUs with 112 replicas each. Read as Python objects, each
 * ID is made, hashed and looked up, and that is nearly all the call costs. An OfferTable
 * holds a resource's IDs in a hash table of its own and reads one serialized
 * ContainerPreferredAllocationRequest (the kubelet's v1beta1 message) in one pass:
 *
 *     field 1  available_deviceIDs     repeated string  -> one flag per known ID
 *     field 2  must_include_deviceIDs  repeated string  -> the known ones' positions
 *     field 3  allocation_size         int32
 *
 * Unknown IDs are skipped, as are fields this reader does not know. Anything else it
 * does not read exactly as protobuf would (a group, a truncated or overlong varint, a
 * length past the end, field number 0) makes read() return None, and the caller reads
 * the message with protobuf instead: this module never decides that input is invalid.
 *
 * allocation.py holds the reference version of the same reading, in Python; the tests
 * hold the two to the same answers, valid input and broken input alike.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* One slot of the open-addressing table, eight bytes so that the table stays in the
 * first-level cache: the high half of the ID's hash (the low half picks the slot) and
 * 1 + the ID's position in the table's list (0 marks an empty slot). */
typedef struct {
    uint32_t check;
    uint32_t id;
} Slot;

typedef struct {
    PyObject_HEAD
    char *keys;            /* every ID, back to back */
    Py_ssize_t *start;     /* per ID: its offset in keys */
    Py_ssize_t *length;    /* per ID: its length */
    Py_ssize_t *unit_of;   /* per ID: the unit it belongs to */
    Slot *slots;
    size_t mask;           /* slot count - 1 (a power of two, at least twice the IDs) */
    Py_ssize_t count;      /* IDs */
    Py_ssize_t units;      /* 1 + the largest unit number */
} OfferTable;

/* A hash of the ID's length and its first and last eight bytes. IDs that share a long
 * prefix (the replicas of one GPU: "GPU-<uuid>::<n>") differ at the end, and UUIDs are
 * random throughout: hashing every byte would cost as much as the rest of the read.
 * Collisions cost a probe, not an answer (every match is compared in full). */
static uint64_t
mix(uint64_t x) /* MurmurHash3's 64-bit finaliser: every input bit reaches every output bit */
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static uint64_t
hash_id(const unsigned char *p, Py_ssize_t n)
{
    uint64_t first = 0, last = 0;
    if (n >= 8) {
        memcpy(&first, p, 8);
        memcpy(&last, p + n - 8, 8);
    }
    else {
        memcpy(&first, p, (size_t)n);
    }
    return mix(mix(first ^ (uint64_t)n) ^ last);
}

/* The slot holding this ID, or the empty slot where it would go. */
static Slot *
find_slot(const OfferTable *t, const unsigned char *id, Py_ssize_t n, uint64_t h)
{
    uint32_t check = (uint32_t)(h >> 32);
    size_t i = (size_t)h & t->mask;
    for (;;) {
        Slot *s = &t->slots[i];
        if (s->id == 0)
            return s;
        Py_ssize_t found = s->id - 1;
        if (s->check == check && t->length[found] == n &&
            memcmp(t->keys + t->start[found], id, (size_t)n) == 0)
            return s;
        i = (i + 1) & t->mask;
    }
}

/* Frees the table's memory and marks it uninitialised (read() then refuses). */
static void
clear(OfferTable *self)
{
    PyMem_Free(self->keys);
    PyMem_Free(self->start);
    PyMem_Free(self->length);
    PyMem_Free(self->unit_of);
    PyMem_Free(self->slots);
    self->keys = NULL;
    self->start = self->length = self->unit_of = NULL;
    self->slots = NULL;
    self->count = self->units = 0;
}

static void
OfferTable_dealloc(OfferTable *self)
{
    clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* OfferTable(ids, units): ids a sequence of distinct bytes, units the unit of each. */
static int
OfferTable_init(OfferTable *self, PyObject *args, PyObject *kwds)
{
    static char *keywords[] = {"ids", "units", NULL};
    PyObject *ids_arg, *units_arg, *ids = NULL, *units = NULL;
    int result = -1;

    if (self->slots != NULL) { /* the table is read without a lock: it never changes */
        PyErr_SetString(PyExc_TypeError, "OfferTable is already initialised");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", keywords, &ids_arg, &units_arg))
        return -1;
    ids = PySequence_Fast(ids_arg, "ids must be a sequence of bytes");
    if (ids == NULL)
        goto done;
    units = PySequence_Fast(units_arg, "units must be a sequence of int");
    if (units == NULL)
        goto done;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(ids);
    if (PySequence_Fast_GET_SIZE(units) != count) {
        PyErr_SetString(PyExc_ValueError, "ids and units differ in length");
        goto done;
    }

    if ((size_t)count >= UINT32_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "too many IDs");
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PySequence_Fast_GET_ITEM(ids, i);
        if (!PyBytes_Check(id)) {
            PyErr_SetString(PyExc_TypeError, "ids must be bytes");
            goto done;
        }
        total += PyBytes_GET_SIZE(id);
    }
    size_t slots = 8;
    while (slots < 2 * (size_t)count)
        slots *= 2;
    size_t per_id = count > 0 ? (size_t)count : 1;
    self->keys = PyMem_Malloc(total > 0 ? (size_t)total : 1);
    self->start = PyMem_Calloc(per_id, sizeof(Py_ssize_t));
    self->length = PyMem_Calloc(per_id, sizeof(Py_ssize_t));
    self->unit_of = PyMem_Calloc(per_id, sizeof(Py_ssize_t));
    self->slots = PyMem_Calloc(slots, sizeof(Slot)); /* all empty */
    if (self->keys == NULL || self->start == NULL || self->length == NULL || self->unit_of == NULL ||
        self->slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    self->mask = slots - 1;

    Py_ssize_t offset = 0, units_seen = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *id = PySequence_Fast_GET_ITEM(ids, i);
        Py_ssize_t unit = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(units, i));
        if (unit == -1 && PyErr_Occurred())
            goto done;
        if (unit < 0) {
            PyErr_SetString(PyExc_ValueError, "units must not be negative");
            goto done;
        }
        const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(id);
        Py_ssize_t n = PyBytes_GET_SIZE(id);
        uint64_t h = hash_id(bytes, n);
        Slot *s = find_slot(self, bytes, n, h);
        if (s->id != 0) {
            PyErr_Format(PyExc_ValueError, "ID %R is listed twice", id);
            goto done;
        }
        memcpy(self->keys + offset, bytes, (size_t)n);
        self->start[i] = offset;
        self->length[i] = n;
        self->unit_of[i] = unit;
        *s = (Slot){.check = (uint32_t)(h >> 32), .id = (uint32_t)(i + 1)};
        offset += n;
        if (unit >= units_seen)
            units_seen = unit + 1;
    }
    self->count = count;
    self->units = units_seen;
    result = 0;

done:
    if (result < 0)
        clear(self); /* nothing half-built is ever read */
    Py_XDECREF(ids);
    Py_XDECREF(units);
    return result;
}

/* Reads a varint into *value; 0 if it runs past the end or past ten bytes, or if its
 * tenth byte goes beyond 64 bits (such input is left to protobuf). */
static int
read_varint(const unsigned char **p, const unsigned char *end, uint64_t *value)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end)
            return 0;
        unsigned char byte = *(*p)++;
        if (shift == 63 && byte > 1)
            return 0;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return 1;
        }
    }
    return 0;
}

/* read(request) -> (flags, counts, must_include, allocation_size) or None.
 *
 * flags: bytes, one per ID of the table, 1 where the ID is offered as available;
 * counts: list, per unit, how many of its IDs are offered (each counted once);
 * must_include: list of the positions of the known must-include IDs, in request order;
 * allocation_size: int, as protobuf reads an int32. */
static PyObject *
OfferTable_read(OfferTable *self, PyObject *arg)
{
    Py_buffer view;
    PyObject *flags = NULL, *must = NULL, *counts = NULL, *result = NULL;
    Py_ssize_t *per_unit = NULL;

    if (self->slots == NULL) {
        PyErr_SetString(PyExc_TypeError, "OfferTable is not initialised");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    flags = PyBytes_FromStringAndSize(NULL, self->count);
    must = PyList_New(0);
    per_unit = PyMem_Calloc(self->units > 0 ? (size_t)self->units : 1, sizeof(Py_ssize_t));
    if (flags == NULL || must == NULL || per_unit == NULL) {
        if (per_unit == NULL)
            PyErr_NoMemory();
        goto done;
    }
    unsigned char *flag = (unsigned char *)PyBytes_AS_STRING(flags);
    memset(flag, 0, (size_t)self->count);

    const unsigned char *p = view.buf, *end = p + view.len;
    int32_t size = 0;
    while (p < end) {
        uint64_t tag, value;
        if (!read_varint(&p, end, &tag) || tag > UINT32_MAX || (tag >> 3) == 0)
            goto fallback;
        uint64_t field = tag >> 3;
        switch (tag & 7) {
        case 0: /* varint */
            if (!read_varint(&p, end, &value))
                goto fallback;
            if (field == 3)
                size = (int32_t)(uint32_t)value;
            break;
        case 2: /* length-delimited */
            if (!read_varint(&p, end, &value) || value > (uint64_t)(end - p))
                goto fallback;
            if (field == 1 || field == 2) {
                Py_ssize_t n = (Py_ssize_t)value;
                Py_ssize_t id = (Py_ssize_t)find_slot(self, p, n, hash_id(p, n))->id - 1;
                if (id >= 0 && field == 1 && !flag[id]) {
                    flag[id] = 1;
                    per_unit[self->unit_of[id]]++;
                }
                else if (id >= 0 && field == 2) {
                    PyObject *position = PyLong_FromSsize_t(id);
                    if (position == NULL || PyList_Append(must, position) < 0) {
                        Py_XDECREF(position);
                        goto done;
                    }
                    Py_DECREF(position);
                }
            }
            p += value;
            break;
        case 1: /* 64-bit */
        case 5: /* 32-bit */ {
            Py_ssize_t width = (tag & 7) == 1 ? 8 : 4;
            if (end - p < width)
                goto fallback;
            p += width;
            break;
        }
        default: /* groups (3, 4) and the invalid 6 and 7 */
            goto fallback;
        }
    }

    counts = PyList_New(self->units);
    if (counts == NULL)
        goto done;
    for (Py_ssize_t u = 0; u < self->units; u++) {
        PyObject *n = PyLong_FromSsize_t(per_unit[u]);
        if (n == NULL)
            goto done;
        PyList_SET_ITEM(counts, u, n);
    }
    result = Py_BuildValue("(OOOi)", flags, counts, must, (int)size);
    goto done;

fallback:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&view);
    PyMem_Free(per_unit);
    Py_XDECREF(flags);
    Py_XDECREF(must);
    Py_XDECREF(counts);
    return result;
}

static Py_ssize_t
OfferTable_len(OfferTable *self)
{
    return self->count;
}

static PyMethodDef OfferTable_methods[] = {
    {"read", (PyCFunction)OfferTable_read, METH_O,
     "read(request) -> (flags, counts, must_include, allocation_size) or None\n\n"
     "Reads one serialized ContainerPreferredAllocationRequest; None where protobuf\n"
     "must read it instead."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods OfferTable_as_sequence = {
    .sq_length = (lenfunc)OfferTable_len,
};

static PyTypeObject OfferTableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "deviceplugin.kubelet._offer.OfferTable",
    .tp_doc = "OfferTable(ids, units): a resource's device IDs, to read offers against.",
    .tp_basicsize = sizeof(OfferTable),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)OfferTable_init,
    .tp_dealloc = (destructor)OfferTable_dealloc,
    .tp_methods = OfferTable_methods,
    .tp_as_sequence = &OfferTable_as_sequence,
};

static struct PyModuleDef offer_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "deviceplugin.kubelet._offer",
    .m_doc = "Reads GetPreferredAllocation offers without a Python object per device ID.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__offer(void)
{
    if (PyType_Ready(&OfferTableType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&offer_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "OfferTable", (PyObject *)&OfferTableType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
