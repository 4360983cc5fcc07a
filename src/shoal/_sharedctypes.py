"""ctypes objects in shared memory: Value, Array, RawValue, RawArray (issue #4).

The signatures, typecodes, defaults and errors are those of
:mod:`multiprocessing.sharedctypes`; the objects differ in where they can go.  The
standard library's live in a heap that children inherit, so they reach a process
only when it is started (``Pool`` task arguments raise ``RuntimeError``).  Here
each object is a :class:`~shoal._handle.SharedObject`: a block of an arena (or a
segment of its own when it is big) that pickles as a handle, so it can be a ``Pool``
task argument or return value, sit inside other objects, or go to a process started
later, under fork, spawn and forkserver::

    +0   object header (reference count, serial: shoal._handle)
    +16  the ctypes data, exactly as ctypes lays it out (sizeof(type) bytes)

A handle carries the element type (pickled by reference, like the standard
library's), the array dimensions, the data's size (checked on arrival, so a type
defined differently in the receiving process is refused, never misread) and, for
the synchronized kinds, the lock's own handle.

``Value(..., lock=False)`` and ``Array(..., lock=False)`` return the bare ctypes
object, as the standard library does: an instance of a subclass of the ctypes type,
made once per type, whose only difference is that it pickles as a handle of the
RawValue/RawArray it views (and keeps alive).  ``RawValue``/``RawArray`` return
thin wrappers that behave like the ctypes object for ``.value``, indexing, slicing,
``len`` and iteration; ``get_obj()`` returns the ctypes object itself (a view of the
shared memory) for everything else (``memoryview``, ``numpy.frombuffer``,
``ctypes.addressof``).  Ctypes views handed out (``get_obj()``, structure elements
of arrays, nested structure fields) keep their wrapper, and so the memory, alive.

Integers of 4 and 8 bytes and floats (``c_float``, ``c_double``) also get lock-free
atomic operations: ``add``, ``fetch_add``, ``exchange``, ``compare_exchange``
(single values) and the same with an index first (arrays).  They never take the
object's lock: they are atomic with respect to each other, not to a
``with v.get_lock(): v.value += 1`` sequence running at the same time.
"""

from __future__ import annotations

import ctypes
import math
import operator
import struct
import sys
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar, Union, overload

from . import _core
from ._errors import ClosedError
from ._handle import SharedObject
from ._sync import Lock, RLock

if TYPE_CHECKING:
    from _ctypes import _CData
    from _ctypes import _SimpleCData as _ScalarCData  # (the name below is the class)
    from collections.abc import Iterable
    from ctypes import c_char

_T = TypeVar("_T")
_CT = TypeVar("_CT", bound="_CData")
# what a type checker can tell from a typecode: the Python type of the value
_IntCode = Literal["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q"]
_FloatCode = Literal["f", "d"]
_LockArg = Union[Literal[True], None, Lock, RLock]

__all__ = [
    "Array",
    "RawArray",
    "RawValue",
    "Synchronized",
    "SynchronizedArray",
    "SynchronizedBase",
    "SynchronizedString",
    "Value",
    "copy",
    "synchronized",
]

# the standard library's table, unchanged (multiprocessing/sharedctypes.py)
typecode_to_type: dict[str, type] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}

_SimpleCData: type = ctypes.c_int.__mro__[1]
_CData: type = ctypes.c_int.__mro__[2]  # the base of every ctypes type
_SIGNED = frozenset("bhilq")
_UNSIGNED = frozenset("BHILQ")
# c_char_p, c_wchar_p, c_void_p, py_object: addresses, meaningless in another process
_POINTER_CODES = frozenset("zZPO")
_BYTEORDER = sys.byteorder
_REPR_ITEMS = 8  # array elements a repr shows before "..."
_OWNER = "_shoal_owner"  # attribute of a handed-out ctypes view that keeps its wrapper alive


# ---- types ---------------------------------------------------------------------------------


def _resolve(typecode_or_type: Any) -> type:
    """The ctypes type for a typecode or a ctypes type, refusing what cannot be shared."""
    if isinstance(typecode_or_type, str):
        found = typecode_to_type.get(typecode_or_type)
        if found is None:
            raise TypeError(
                f"unknown typecode {typecode_or_type!r}: use one of "
                f"{', '.join(repr(c) for c in typecode_to_type)} or a ctypes type"
            )
        return found
    if not (isinstance(typecode_or_type, type) and issubclass(typecode_or_type, _CData)):
        raise TypeError(
            "expected a typecode such as 'i' or 'd', or a ctypes type such as "
            f"ctypes.c_int or a ctypes.Structure, not {typecode_or_type!r}"
        )
    _check_shareable(typecode_or_type, typecode_or_type)
    return typecode_or_type


def _check_shareable(t: type, outer: type) -> None:
    if issubclass(t, ctypes.Array):
        _check_shareable(t._type_, outer)
    elif issubclass(t, (ctypes.Structure, ctypes.Union)):
        for field in getattr(t, "_fields_", ()):
            _check_shareable(field[1], outer)
    elif issubclass(t, (ctypes._Pointer, ctypes._CFuncPtr)) or (
        issubclass(t, _SimpleCData) and t._type_ in _POINTER_CODES
    ):
        where = "" if t is outer else f" (inside {outer.__name__})"
        raise TypeError(
            f"cannot share {t.__name__}{where} between processes: it holds an address, "
            "which means nothing in another process; store the data itself (for "
            "text, a c_char array: Array('c', size))"
        )


def _fundamental(t: type) -> bool:
    """Whether ctypes hands out elements/fields of type t as Python values, not views."""
    return issubclass(t, _SimpleCData) and _SimpleCData in t.__bases__


def _split(t: type) -> tuple[type, tuple[int, ...]]:
    """(base type, dimensions): array types are made on the fly and pickle by parts."""
    dims = []
    while issubclass(t, ctypes.Array):
        dims.append(t._length_)
        t = t._type_
    return t, tuple(dims)


def _join(base: type, dims: tuple[int, ...]) -> type:
    for n in reversed(dims):
        base = base * n
    return base


def _type_name(t: type) -> str:
    base, dims = _split(t)
    return base.__name__ + "".join(f" * {n}" for n in reversed(dims))


# ---- atomic operations ------------------------------------------------------------------


class _IntOps:
    """Atomics on a native-order two's complement integer of 32 or 64 bits.

    Values wrap to the type's width, as ctypes assignment does (``c_uint(-1)`` is
    4294967295); the C functions see unsigned words and a signed delta.
    """

    def __init__(self, size: int, signed: bool) -> None:
        self.bits = size * 8
        self.mask = (1 << self.bits) - 1
        self.half = 1 << (self.bits - 1)
        self.signed = signed
        self._fetch_add = _core.fetch_add64 if size == 8 else _core.fetch_add32
        self._cas = _core.cas64 if size == 8 else _core.cas32

    def _value(self, word: int) -> int:
        return word - ((word & self.half) << 1) if self.signed else word

    def _delta(self, delta: Any) -> int:
        """The delta as the C side takes it: a signed int of the type's width."""
        half = self.half
        if type(delta) is int and -half <= delta < half:
            return delta  # the usual case, with no arithmetic
        d = operator.index(delta) & self.mask
        return d - ((d & half) << 1)

    def fetch_add(self, buf: Any, off: int, delta: Any) -> int:
        return self._value(self._fetch_add(buf, off, self._delta(delta)))

    def add(self, buf: Any, off: int, delta: Any) -> int:
        d = self._delta(delta)
        return self._value((self._fetch_add(buf, off, d) + d) & self.mask)

    def exchange(self, buf: Any, off: int, value: Any) -> int:
        new = operator.index(value) & self.mask
        # a plain read for a first guess: the swap below is what is atomic
        guess = int.from_bytes(buf[off : off + self.bits // 8], _BYTEORDER)
        while True:
            swapped, seen = self._cas(buf, off, guess, new)
            if swapped:
                return self._value(guess)
            guess = seen

    def compare_exchange(self, buf: Any, off: int, expected: Any, desired: Any) -> bool:
        mask = self.mask
        return self._cas(buf, off, operator.index(expected) & mask, operator.index(desired) & mask)[
            0
        ]


class _FloatOps:
    """Atomics on a float or double, by compare-and-swap of its bits.

    ``compare_exchange`` compares bits, as C++'s ``std::atomic<double>`` does: 0.0
    and -0.0 differ, and a NaN matches the very same NaN.
    """

    def __init__(self, size: int) -> None:
        self.ctype = ctypes.c_float if size == 4 else ctypes.c_double
        self.float = struct.Struct("=f" if size == 4 else "=d")
        self.word = struct.Struct("=I" if size == 4 else "=Q")
        self._cas = _core.cas32 if size == 4 else _core.cas64

    def _bits(self, value: float) -> int:
        try:
            return self.word.unpack(self.float.pack(value))[0]
        except OverflowError:  # beyond float32: C rounds to infinity, so does ctypes
            return self.word.unpack(self.float.pack(math.copysign(math.inf, value)))[0]

    def _value(self, bits: int) -> float:
        return self.float.unpack(self.word.pack(bits))[0]

    def _number(self, value: Any) -> float:
        # ctypes' own conversion: ints, floats, __float__/__index__; never a str
        return ctypes.c_double(value).value

    def _update(self, buf: Any, off: int, step: Any) -> tuple[float, float]:
        # a plain read for a first guess (a torn one only fails the swap); then the
        # usual loop: compute from what the swap saw, until no one wrote in between
        guess = self.word.unpack_from(buf, off)[0]
        while True:
            old = self._value(guess)
            bits = self._bits(step(old))
            swapped, seen = self._cas(buf, off, guess, bits)
            if swapped:
                return old, self._value(bits)
            guess = seen

    def fetch_add(self, buf: Any, off: int, delta: Any) -> float:
        d = self._number(delta)
        return self._update(buf, off, lambda old: old + d)[0]

    def add(self, buf: Any, off: int, delta: Any) -> float:
        d = self._number(delta)
        return self._update(buf, off, lambda old: old + d)[1]

    def exchange(self, buf: Any, off: int, value: Any) -> float:
        v = self._number(value)
        return self._update(buf, off, lambda old: v)[0]

    def compare_exchange(self, buf: Any, off: int, expected: Any, desired: Any) -> bool:
        e, d = self._bits(self._number(expected)), self._bits(self._number(desired))
        return self._cas(buf, off, e, d)[0]


def _atomic_ops(t: type) -> _IntOps | _FloatOps | str:
    """The atomics for elements of type t, or why there are none."""
    code = getattr(t, "_type_", None) if issubclass(t, _SimpleCData) else None
    size = ctypes.sizeof(t)
    if code in _SIGNED or code in _UNSIGNED:
        if size not in (4, 8):
            return f"{t.__name__} is {size} byte{'s' if size > 1 else ''} wide"
        if bytes(t(1)) != (1).to_bytes(size, _BYTEORDER):
            return f"{t.__name__} is not in this machine's byte order"
        return _IntOps(size, code in _SIGNED)
    if code in ("f", "d"):
        native = struct.pack("=f" if code == "f" else "=d", 1.0)
        if bytes(t(1.0)) != native:
            return f"{t.__name__} is not in this machine's byte order"
        return _FloatOps(size)
    return f"{t.__name__} is not a number type"


def _no_atomics(obj: _SharedCData) -> NoReturn:
    raise TypeError(
        f"atomic operations need integers of 4 or 8 bytes ('i', 'I', 'l', 'L', 'q', 'Q') or "
        f"floats ('f', 'd'); {obj._ops}: use get_lock() to update it"
    )


# ---- the shared block ----------------------------------------------------------------------


class _Closed:
    """Stands in for the ctypes view of a closed object: every use raises ClosedError."""

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        object.__setattr__(self, "_what", what)

    def _raise(self, *args: object) -> NoReturn:
        raise ClosedError(f"this {self._what} is closed and cannot be used any more")

    __getattr__ = __setattr__ = __getitem__ = __setitem__ = _raise
    __len__ = __iter__ = __bool__ = _raise


def _rebuild(cls: type[_SharedCData], handle: tuple[str, int, int], state: Any) -> Any:
    obj = object.__new__(cls)  # not cls(): that would make a new object
    obj._attach(handle, state)
    return obj


class _SharedCData(SharedObject):
    """A ctypes object in a shared block; the common part of every kind here."""

    # RawValue, RawArray and the synchronized wrappers are views of one struct: a
    # handle of any of them may be rebuilt as another
    _TYPE_FAMILY = True

    _PUBLIC: str  # the name reprs and messages use
    _base: type
    _dims: tuple[int, ...]  # of the element type (a 2-D array's rows)
    _elem: type
    _length: int | None  # None: a single value
    _ctype: type
    _views: bool  # elements come out as ctypes views (structures, nested arrays)
    _ops: _IntOps | _FloatOps | str
    _itemsize: int
    _lock: Lock | None = None
    _obj: Any = None
    _buf: Any = None
    _off: int = 0

    @classmethod
    def _make(cls, elem: type, length: int | None, init: Any, lock: Lock | None) -> Any:
        """A new block of ``elem`` (or ``elem * length``), initialised as ctypes would."""
        obj = object.__new__(cls)
        obj._restore_state((*_split(elem), length, None, lock))
        obj._create()
        if len(init):  # (not "if init": a numpy array has no truth value)
            try:
                obj._obj.__init__(*init)
            except BaseException:
                obj.close()
                raise
        return obj

    def _restore_state(self, state: Any) -> None:
        base, dims, length, nbytes, lock = state
        elem = _join(base, dims)
        ctype = elem if length is None else elem * length  # ValueError if length < 0
        size = ctypes.sizeof(ctype)
        if nbytes is not None and nbytes != size:
            raise TypeError(
                f"the shared {_type_name(ctype)} is {nbytes} bytes but this process "
                f"defines {_type_name(ctype)} as {size} bytes: the type must be the same "
                "in every process"
            )
        self._base, self._dims, self._elem, self._length = base, dims, elem, length
        self._ctype = ctype
        self._PAYLOAD_SIZE = size  # type: ignore[misc]
        self._itemsize = ctypes.sizeof(elem)
        self._views = not _fundamental(elem)
        self._ops = _atomic_ops(elem)
        if lock is not None:
            self._set_lock(lock)

    def _handle_state(self) -> Any:
        return (self._base, self._dims, self._length, self._PAYLOAD_SIZE, self._lock)

    def _set_lock(self, lock: Lock) -> None:
        raise AssertionError("only the synchronized kinds have a lock")

    def _bind_payload(self) -> None:
        buf = self._mapping
        self._obj = self._ctype.from_buffer(buf, self._payload_offset)
        self._buf, self._off = buf, self._payload_offset

    def _unbind_payload(self) -> None:
        self._obj = _Closed(self._PUBLIC)
        self._buf = None

    def __reduce__(self) -> tuple[Any, ...]:
        # SharedObject's (its checks, the reference the handle carries) with a rebuild
        # that does not call cls(): RawValue(...) and RawArray(...) make new objects
        _, args = super().__reduce__()[:2]
        return (_rebuild, args)

    def _buffer(self) -> Any:
        buf = self._buf
        if buf is None:
            raise ClosedError(f"this {self._PUBLIC} is closed and cannot be used any more")
        return buf

    def _anchor(self, item: Any) -> Any:
        """Tie a ctypes view (or a list of them) to this object, which owns the memory."""
        for view in item if isinstance(item, list) else (item,):
            if isinstance(view, _CData):
                try:
                    setattr(view, _OWNER, self)
                except AttributeError:  # a Structure with __slots__: nothing to hang it on
                    pass
        return item

    def get_obj(self) -> Any:
        """The ctypes object itself: a view of the shared memory, of type ``ctype * n``.

        For what the wrapper does not offer: ``memoryview(a.get_obj())``,
        ``numpy.frombuffer(a.get_obj())``, ``ctypes.addressof``, passing it to C.
        The view keeps this object alive; it must not be used after :meth:`close`.
        Each call returns a new view of the same memory.
        """
        return self._anchor(self._ctype.from_buffer(self._buffer(), self._off))

    def _show(self) -> str:
        """The contents for a repr, read without the lock (a repr must never block)."""
        obj = self._obj
        if self._length is None:
            if issubclass(self._elem, (ctypes.Structure, ctypes.Union)):
                fields = ", ".join(
                    f"{f[0]}={getattr(obj, f[0])!r}" for f in getattr(self._elem, "_fields_", ())
                )
                return f"{self._elem.__name__}({fields})"
            if issubclass(self._elem, _SimpleCData):
                return f"{self._elem.__name__}({obj.value!r})"
            return self._elem.__name__
        name = _type_name(self._ctype)
        if self._elem is ctypes.c_char:
            return f"{name}: {obj.raw[: 8 * _REPR_ITEMS]!r}"
        if self._elem is ctypes.c_wchar:
            return f"{name}: {obj[: 8 * _REPR_ITEMS]!r}"
        if self._views:
            return name
        items = ", ".join(repr(x) for x in obj[:_REPR_ITEMS])
        more = ", ..." if self._length > _REPR_ITEMS else ""
        return f"{name}: [{items}{more}]"

    def _index_offset(self, index: Any) -> int:
        """The byte offset of element ``index`` (negative counts from the end)."""
        n = self._length
        assert n is not None
        i = operator.index(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {n} elements")
        return self._off + i * self._itemsize


def _struct_like(t: type) -> bool:
    return issubclass(t, (ctypes.Structure, ctypes.Union))


# ---- raw objects ---------------------------------------------------------------------------


class _ValueAtomics:
    """Lock-free atomic operations on a single integer or float value.

    An integer's ``add``, ``fetch_add`` and ``compare_exchange`` are replaced, per
    object, by the methods of a bound ``_core.Atomic``: no Python frame and no
    buffer lookup per call (the benchmark's atomic increments, #4).  The methods
    below are the general path (floats, and after close, where they raise).
    """

    _ops: _IntOps | _FloatOps | str
    _off: int
    _buffer: Any  # (the methods of _SharedCData, which every user of this mixin is)
    _FAST = ("add", "fetch_add", "compare_exchange")

    def _bind_payload(self) -> None:
        super()._bind_payload()  # type: ignore[misc]
        ops = self._ops
        if isinstance(ops, _IntOps):
            atomic = _core.Atomic()
            atomic._bind(self._buffer(), self._off, ops.bits // 8, ops.signed)
            self.__dict__.update(
                _atomic=atomic,
                add=atomic.add,
                fetch_add=atomic.fetch_add,
                compare_exchange=atomic.compare_exchange,
            )

    def _unbind_payload(self) -> None:
        atomic = self.__dict__.pop("_atomic", None)
        if atomic is not None:
            for name in self._FAST:
                self.__dict__.pop(name, None)
            atomic._unbind()
        super()._unbind_payload()  # type: ignore[misc]

    def add(self, delta: Any = 1) -> Any:
        """Atomically add ``delta`` (default 1, may be negative); return the new value.

        Lock-free, for 4- and 8-byte integers and floats; integers wrap around at the
        type's width as C does.  Does not take the lock of a synchronized Value.

        Raises:
            TypeError: the value is not such a number (a ``c_short``, a structure…).
            ClosedError: the object was closed.
        """
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.add(self._buffer(), self._off, delta)

    def fetch_add(self, delta: Any = 1) -> Any:
        """Atomically add ``delta`` (default 1); return the value *before* the addition."""
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.fetch_add(self._buffer(), self._off, delta)

    def exchange(self, value: Any) -> Any:
        """Atomically store ``value``; return the value it replaced."""
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.exchange(self._buffer(), self._off, value)

    def compare_exchange(self, expected: Any, desired: Any) -> bool:
        """Store ``desired`` if the value is ``expected``, atomically; return whether it did.

        Floats compare bit for bit (0.0 is not -0.0; a NaN matches itself).  A retry
        loop for any update: ``old = v.value`` then ``while not
        v.compare_exchange(old, f(old)): old = v.value``.
        """
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.compare_exchange(self._buffer(), self._off, expected, desired)


class _ArrayAtomics:
    """Lock-free atomic operations on one element of an integer or float array."""

    _ops: _IntOps | _FloatOps | str
    _buffer: Any
    _index_offset: Any

    def add(self, index: Any, delta: Any = 1) -> Any:
        """Atomically add ``delta`` (default 1) to element ``index``; return its new value.

        Lock-free, for arrays of 4- and 8-byte integers and floats.  Does not take
        the lock of a synchronized Array.

        Raises:
            TypeError: the elements are not such numbers.
            IndexError: ``index`` is out of range.
            ClosedError: the object was closed.
        """
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.add(self._buffer(), self._index_offset(index), delta)

    def fetch_add(self, index: Any, delta: Any = 1) -> Any:
        """Atomically add ``delta`` to element ``index``; return its value before."""
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.fetch_add(self._buffer(), self._index_offset(index), delta)

    def exchange(self, index: Any, value: Any) -> Any:
        """Atomically store ``value`` in element ``index``; return the value it replaced."""
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.exchange(self._buffer(), self._index_offset(index), value)

    def compare_exchange(self, index: Any, expected: Any, desired: Any) -> bool:
        """Store ``desired`` in element ``index`` if it holds ``expected``; return whether
        it did (atomically; floats compare bit for bit)."""
        ops = self._ops
        if isinstance(ops, str):
            _no_atomics(self)  # type: ignore[arg-type]
        return ops.compare_exchange(self._buffer(), self._index_offset(index), expected, desired)


class RawValue(_ValueAtomics, _SharedCData):
    """A ctypes value in shared memory, without a lock, like ``multiprocessing.RawValue``.

    ``RawValue(typecode_or_type, *args)``: a typecode (``'i'``, ``'d'``, ``'c'``… as
    in :mod:`array`) or a ctypes type (``c_int``, a ``Structure`` subclass), and
    the arguments its constructor takes.  An array type (``c_int * 3``) makes a
    :class:`RawArray`.

    ``.value`` reads and writes the value (a structure's fields are attributes,
    as on the ctypes object); ``get_obj()`` returns the ctypes object itself.
    Integers of 4 and 8 bytes and floats have lock-free ``add``, ``fetch_add``,
    ``exchange`` and ``compare_exchange``.

    Unlike the standard library's, it pickles as a handle (``Pool`` tasks, queues,
    processes started later, every start method), and it is a wrapper, not the
    ctypes object: ``ctypes.sizeof``, ``ctypes.addressof``, ``memoryview`` and the
    buffer protocol need ``get_obj()``.  ``close()`` releases it early; use after
    that raises :class:`~shoal.ClosedError`.
    """

    _PUBLIC = "RawValue"

    def __new__(cls, typecode_or_type: Any, *args: Any) -> Any:
        elem = _resolve(typecode_or_type)
        if issubclass(elem, ctypes.Array):
            return RawArray._make(elem._type_, elem._length_, args, None)
        return (_RawStruct if _struct_like(elem) else RawValue)._make(elem, None, args, None)

    @property
    def value(self) -> Any:
        """The value, as the ctypes object's ``.value`` reads and writes it."""
        return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        self._obj.value = value

    def __bool__(self) -> bool:
        return bool(self._obj)  # as ctypes: c_int(0) is false

    def __repr__(self) -> str:
        if self.closed:
            return f"<shoal.{self._PUBLIC} closed>"
        return f"<shoal.{self._PUBLIC} {self._show()}>"


class _StructFields:
    """Fields of a shared structure as attributes (the ctypes object's, delegated)."""

    _obj: Any
    _elem: type

    def _fields(self) -> frozenset[str]:
        return _field_names(self.__dict__["_elem"])

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not attributes of the wrapper itself
        if "_elem" not in self.__dict__ or name not in self._fields():
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self._get_field(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if "_elem" in self.__dict__ and name in self._fields():
            self._set_field(name, value)
        else:
            object.__setattr__(self, name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._fields()})

    def _get_field(self, name: str) -> Any:
        return self._anchor(getattr(self._obj, name))  # type: ignore[attr-defined]

    def _set_field(self, name: str, value: Any) -> None:
        setattr(self._obj, name, value)


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(t: type) -> frozenset[str]:
    names = _FIELD_NAMES.get(t)
    if names is None:
        names = set()
        for klass in reversed(t.__mro__):  # a subclass extends its base's _fields_
            names.update(f[0] for f in klass.__dict__.get("_fields_", ()))
        names = _FIELD_NAMES[t] = frozenset(names)
    return names


class _RawStruct(_StructFields, RawValue):
    """A RawValue of a Structure or Union: its fields are attributes."""


class RawArray(_ArrayAtomics, _SharedCData):
    """A ctypes array in shared memory, without a lock, like ``multiprocessing.RawArray``.

    ``RawArray(typecode_or_type, size_or_initializer)``: the element type as for
    :class:`RawValue`, and a length (zero-filled) or a sequence to copy in.

    Indexing, slicing (slices return lists; ``bytes`` for ``'c'``, ``str`` for
    ``'u'``), assignment to items and same-length slices, ``len`` and iteration
    behave as on the ctypes array; a ``c_char`` array also has ``.value`` (up to
    the first NUL) and ``.raw``, a ``c_wchar`` array ``.value``.  Arrays of 4- and
    8-byte integers and of floats have lock-free ``add(index, delta=1)``,
    ``fetch_add``, ``exchange`` and ``compare_exchange``.

    Unlike the standard library's, it pickles as a handle, and it is a wrapper:
    ``numpy.frombuffer``, ``memoryview``, ``ctypes.sizeof``/``addressof`` take
    ``get_obj()`` (the ctypes array itself).  Elements that are structures (or
    rows of a 2-D array) come out as ctypes views of the shared memory, as from a
    ctypes array; they keep this object alive and must not be used after
    ``close()``.  Big arrays get a segment of their own.
    """

    _PUBLIC = "RawArray"

    def __new__(cls, typecode_or_type: Any, size_or_initializer: Any) -> Any:
        elem = _resolve(typecode_or_type)
        length, init = _length_and_init(size_or_initializer)
        return RawArray._make(elem, length, init, None)

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, index: Any) -> Any:
        if self._views:
            return self._anchor(self._obj[index])
        return self._obj[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._obj[index] = value

    def __iter__(self) -> Any:
        if self._views:
            return (self[i] for i in range(len(self)))
        return iter(self._obj)

    @property
    def value(self) -> Any:
        """A ``c_char`` array's bytes up to the first NUL (a ``c_wchar`` array's text).

        Assigning stores bytes (text) and a terminating NUL if there is room.  Other
        arrays have no ``value`` (AttributeError), as in ctypes.
        """
        return self._obj.value

    @value.setter
    def value(self, value: Any) -> None:
        self._obj.value = value

    @property
    def raw(self) -> bytes:
        """A ``c_char`` array's bytes, all of them (assignable, as in ctypes)."""
        return self._obj.raw  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, value: bytes) -> None:
        self._obj.raw = value

    def __repr__(self) -> str:
        if self.closed:
            return "<shoal.RawArray closed>"
        return f"<shoal.RawArray {self._show()}>"


def _length_and_init(size_or_initializer: Any) -> tuple[int, Any]:
    # as the standard library: an int is a length, anything else a sequence
    if isinstance(size_or_initializer, int):
        return size_or_initializer, ()
    return len(size_or_initializer), size_or_initializer


# ---- synchronized wrappers ----------------------------------------------------------------


class SynchronizedBase(_SharedCData):
    """What every synchronized kind has: the lock and the ctypes object.

    ``get_lock()`` returns the lock (a shoal :class:`~shoal.RLock` unless one was
    given), ``get_obj()`` the ctypes object (a view of the shared memory);
    ``acquire``/``release`` are the lock's, and ``with obj:`` holds it.  The lock
    travels with the object's handle.
    """

    _PUBLIC = "SynchronizedBase"

    def _set_lock(self, lock: Lock) -> None:
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release

    def get_lock(self) -> Lock:
        """The lock that guards this object (shared by every handle to it)."""
        self._buffer()  # ClosedError once closed
        assert self._lock is not None
        return self._lock

    def __enter__(self) -> bool:
        self._buffer()
        assert self._lock is not None
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        # no open check: ``with v: v.close()`` must still release the lock
        assert self._lock is not None
        self._lock.release()

    def _raise_closed(self, *args: object, **kwargs: object) -> NoReturn:
        raise ClosedError(f"this {self._PUBLIC} is closed and cannot be used any more")

    def close(self) -> None:
        """Release this handle; the lock is left alone (it may have other users).

        Afterwards every use, ``acquire``/``release`` included, raises
        :class:`~shoal.ClosedError`, except the ``__exit__`` of a ``with`` block
        entered before.
        """
        SharedObject.close(self)
        self.acquire = self.release = self._raise_closed

    def __repr__(self) -> str:
        if self.closed:
            return f"<shoal.{self._PUBLIC} closed>"
        return f"<shoal.{self._PUBLIC} wrapper for {self._show()}>"


class Synchronized(_ValueAtomics, SynchronizedBase, Generic[_T]):
    """What ``Value()`` returns: a shared value whose ``.value`` takes the lock.

    Like ``multiprocessing.sharedctypes.Synchronized``: reading or writing
    ``.value`` holds the lock for that one access, so ``v.value += 1`` is two
    separate accesses; write ``with v.get_lock(): v.value += 1``, or use the
    lock-free ``v.add(1)`` (4- and 8-byte integers, floats).  The atomic methods
    do not take the lock: do not mix them with lock-held read-modify-write
    sequences on the same value.  Pickles as a handle, with its lock.
    """

    _PUBLIC = "Synchronized"

    @property
    def value(self) -> _T:
        """The value, read or written with the lock held."""
        with self._lock:  # type: ignore[union-attr]
            return self._obj.value

    @value.setter
    def value(self, value: _T) -> None:
        with self._lock:  # type: ignore[union-attr]
            self._obj.value = value


class _SynchronizedStruct(_StructFields, SynchronizedBase):
    """What ``Value()`` returns for a Structure or Union: fields under the lock."""

    _PUBLIC = "Synchronized"

    def _get_field(self, name: str) -> Any:
        with self._lock:  # type: ignore[union-attr]
            return self._anchor(getattr(self._obj, name))

    def _set_field(self, name: str, value: Any) -> None:
        with self._lock:  # type: ignore[union-attr]
            setattr(self._obj, name, value)


class SynchronizedArray(_ArrayAtomics, SynchronizedBase, Generic[_T]):
    """What ``Array()`` returns: a shared array whose items are read and written under
    the lock, like ``multiprocessing.sharedctypes.SynchronizedArray``.

    Indexing and slicing hold the lock for that one access; ``len`` does not need
    it.  Lock-free ``add(index, delta=1)``, ``fetch_add``, ``exchange`` and
    ``compare_exchange`` for 4- and 8-byte integers and floats (they do not take
    the lock).  Pickles as a handle, with its lock.
    """

    _PUBLIC = "SynchronizedArray"

    def __len__(self) -> int:
        return len(self._obj)

    @overload
    def __getitem__(self, index: int) -> _T: ...
    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...
    def __getitem__(self, index: Any) -> Any:
        with self._lock:  # type: ignore[union-attr]
            item = self._obj[index]
        return self._anchor(item) if self._views else item

    @overload
    def __setitem__(self, index: int, value: _T) -> None: ...
    @overload
    def __setitem__(self, index: slice, value: Iterable[_T]) -> None: ...
    def __setitem__(self, index: Any, value: Any) -> None:
        with self._lock:  # type: ignore[union-attr]
            self._obj[index] = value


class SynchronizedString(SynchronizedArray[bytes]):
    """What ``Array('c', ...)`` returns: a synchronized ``c_char`` array with
    ``.value`` (bytes up to the first NUL) and ``.raw`` (all bytes), both under the lock.
    """

    _PUBLIC = "SynchronizedString"

    @property
    def value(self) -> bytes:
        """The bytes up to the first NUL; assigning stores bytes (and a NUL if room)."""
        with self._lock:  # type: ignore[union-attr]
            return self._obj.value  # type: ignore[no-any-return]

    @value.setter
    def value(self, value: bytes) -> None:
        with self._lock:  # type: ignore[union-attr]
            self._obj.value = value

    @property
    def raw(self) -> bytes:
        """All the bytes; assigning replaces them (at most the array's length)."""
        with self._lock:  # type: ignore[union-attr]
            return self._obj.raw  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, value: bytes) -> None:
        with self._lock:  # type: ignore[union-attr]
            self._obj.raw = value


# ---- the standard library's functions ----------------------------------------------------


def _lock_for(lock: Any) -> Lock | None:
    """The lock for ``lock=``: None for False, a new RLock for True/None (as multiprocessing)."""
    if lock is False:
        return None
    if isinstance(lock, Lock):
        return lock
    if lock in (True, None):
        return RLock()
    raise TypeError(
        "lock must be True, False or a shoal Lock or RLock: a lock that lives in shared "
        f"memory and so works across processes, not {type(lock).__module__}."
        f"{type(lock).__qualname__}"
    )


def _synchronized_class(elem: type, length: int | None) -> type[SynchronizedBase]:
    if length is not None:
        return SynchronizedString if elem is ctypes.c_char else SynchronizedArray
    return _SynchronizedStruct if _struct_like(elem) else Synchronized


# ctypes type -> its shared twin (see _bare): one class per type, made on first use
_BARE_TYPES: dict[type, type] = {}


def _bare(raw: RawValue | RawArray) -> Any:
    """The bare ctypes object ``Value(..., lock=False)`` returns, as the standard
    library does: an instance of ``raw``'s ctypes type (a subclass made once per type,
    so that it pickles as a handle of ``raw`` rather than as a copy), viewing the same
    shared memory and keeping ``raw`` alive."""
    ctype = raw._ctype
    twin = _BARE_TYPES.get(ctype)
    if twin is None:
        body: dict[str, Any] = {
            "__reduce__": _bare_reduce,
            "__module__": ctype.__module__,
            "__qualname__": ctype.__qualname__,
        }
        if issubclass(ctype, _SimpleCData):
            # ctypes shows "c_int(5)" only for its own types, "<... object at>" else
            body["__repr__"] = _bare_simple_repr
        twin = type(ctype.__name__, (ctype,), body)
        _BARE_TYPES[ctype] = twin
    view = twin.from_buffer(raw._buffer(), raw._off)
    setattr(view, _OWNER, raw)
    return view


def _bare_reduce(self: Any) -> tuple[Any, ...]:
    return (_bare, (getattr(self, _OWNER),))


def _bare_simple_repr(self: Any) -> str:
    return f"{type(self).__name__}({self.value!r})"


@overload
def Value(
    typecode_or_type: type[_CT], *args: Any, lock: Literal[False], ctx: Any = None
) -> _CT: ...
@overload
def Value(
    typecode_or_type: type[_ScalarCData[_T]], *args: Any, lock: _LockArg = True, ctx: Any = None
) -> Synchronized[_T]: ...
@overload
def Value(
    typecode_or_type: _IntCode, *args: Any, lock: _LockArg = True, ctx: Any = None
) -> Synchronized[int]: ...
@overload
def Value(
    typecode_or_type: _FloatCode, *args: Any, lock: _LockArg = True, ctx: Any = None
) -> Synchronized[float]: ...
@overload
def Value(
    typecode_or_type: Literal["c"], *args: Any, lock: _LockArg = True, ctx: Any = None
) -> Synchronized[bytes]: ...
@overload
def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any: ...
def Value(typecode_or_type: Any, *args: Any, lock: Any = True, ctx: Any = None) -> Any:
    """A ctypes value in shared memory with a lock, like ``multiprocessing.Value``.

    Args:
        typecode_or_type: a typecode (``'i'``, ``'d'``, ``'c'``, ``'Q'``…, as in
            :mod:`array`) or a ctypes type (``c_int``, a ``Structure`` subclass).
        *args: what the ctypes type's constructor takes (the initial value).
        lock: True or None (the default: a new shoal :class:`~shoal.RLock`), a
            shoal :class:`~shoal.Lock`/:class:`~shoal.RLock` to use, or False for
            none (then the result is the bare ctypes object, as with the standard
            library: an instance of the ctypes type, in shared memory).
        ctx: accepted for compatibility and ignored: shoal objects work with every
            start method.

    Returns:
        a :class:`Synchronized` (``.value``, ``get_lock()``, ``get_obj()``, lock-free
        ``add``/``fetch_add``/``exchange``/``compare_exchange`` for 4- and 8-byte
        integers and floats), or, when ``lock=False``, the ctypes object itself (of
        the ctypes type, or a subclass of it made by shoal).  Either pickles as a
        handle: pass it to ``Pool`` tasks and processes started later.

    Raises:
        TypeError: an unknown typecode, a pointer type, an initial value ctypes
            refuses, or a ``lock`` that is not a shoal lock (a ``threading`` or
            ``multiprocessing`` lock cannot guard memory shared this way).
    """
    elem = _resolve(typecode_or_type)
    the_lock = _lock_for(lock)
    length = None
    if issubclass(elem, ctypes.Array):  # Value(c_int * 3, ...) is an array
        elem, length = elem._type_, elem._length_
    if the_lock is None:
        if length is not None:
            return _bare(RawArray._make(elem, length, args, None))
        return _bare((_RawStruct if _struct_like(elem) else RawValue)._make(elem, None, args, None))
    return _synchronized_class(elem, length)._make(elem, length, args, the_lock)


@overload
def Array(
    typecode_or_type: Literal["c"] | type[c_char],
    size_or_initializer: int | Iterable[Any],
    *,
    lock: _LockArg = True,
    ctx: Any = None,
) -> SynchronizedString: ...
@overload
def Array(
    typecode_or_type: type[_ScalarCData[_T]],
    size_or_initializer: int | Iterable[Any],
    *,
    lock: _LockArg = True,
    ctx: Any = None,
) -> SynchronizedArray[_T]: ...
@overload
def Array(
    typecode_or_type: _IntCode,
    size_or_initializer: int | Iterable[Any],
    *,
    lock: _LockArg = True,
    ctx: Any = None,
) -> SynchronizedArray[int]: ...
@overload
def Array(
    typecode_or_type: _FloatCode,
    size_or_initializer: int | Iterable[Any],
    *,
    lock: _LockArg = True,
    ctx: Any = None,
) -> SynchronizedArray[float]: ...
@overload
def Array(
    typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None
) -> Any: ...
def Array(
    typecode_or_type: Any, size_or_initializer: Any, *, lock: Any = True, ctx: Any = None
) -> Any:
    """A ctypes array in shared memory with a lock, like ``multiprocessing.Array``.

    Args:
        typecode_or_type: the element type, as for :func:`Value`.
        size_or_initializer: a length (the array starts zeroed) or a sequence whose
            items are copied in.
        lock: as for :func:`Value`; False returns the bare ctypes array.
        ctx: accepted for compatibility and ignored.

    Returns:
        a :class:`SynchronizedArray` (a :class:`SynchronizedString`, with ``.value``
        and ``.raw``, for ``'c'``), or the ctypes array itself (``c_int_Array_3``…,
        in shared memory, pickling as a handle) when ``lock=False``.

    Raises:
        TypeError: as for :func:`Value`, or an initializer that is neither an int nor
            a sequence, or holds items ctypes refuses.
        ValueError: a negative length.
        IndexError: an initializer longer than the array (from ctypes).
    """
    elem = _resolve(typecode_or_type)
    length, init = _length_and_init(size_or_initializer)
    the_lock = _lock_for(lock)
    if the_lock is None:
        return _bare(RawArray._make(elem, length, init, None))
    return _synchronized_class(elem, length)._make(elem, length, init, the_lock)


def synchronized(obj: Any, lock: Any = None, ctx: Any = None) -> Any:
    """Wrap a :class:`RawValue` or :class:`RawArray` with a lock, as ``multiprocessing``'s
    ``synchronized()`` does: the result shares ``obj``'s memory (a new handle to it).

    Args:
        obj: a shoal RawValue or RawArray (a plain ctypes object lives in private
            memory: use :func:`copy` to put it in shared memory first).
        lock: a shoal Lock or RLock, or None/False for a new RLock.
        ctx: ignored.
    """
    if isinstance(obj, SynchronizedBase):
        raise TypeError("object already synchronized")
    if not isinstance(obj, (RawValue, RawArray)):
        raise TypeError(
            "synchronized() needs a shoal RawValue or RawArray (memory other processes "
            f"can reach), not {type(obj).__module__}.{type(obj).__qualname__}; "
            "shoal.sharedctypes.copy(obj) puts a ctypes object in shared memory"
        )
    the_lock = _lock_for(lock) if lock else RLock()
    assert the_lock is not None
    state = (obj._base, obj._dims, obj._length, obj._PAYLOAD_SIZE, the_lock)
    return _rebuild(_synchronized_class(obj._elem, obj._length), obj._handle, state)


def copy(obj: Any) -> Any:
    """A new :class:`RawValue`/:class:`RawArray` holding a copy of ``obj``'s contents.

    ``obj`` may be a shoal value or array (raw or synchronized) or a plain ctypes
    object, which this puts in shared memory.
    """
    source = obj.get_obj() if isinstance(obj, _SharedCData) else obj
    if not isinstance(source, _CData):
        raise TypeError(f"copy() needs a ctypes object or a shoal value, not {type(obj).__name__}")
    t = type(source)
    _check_shareable(t, t)
    if issubclass(t, ctypes.Array):
        new = RawArray._make(t._type_, t._length_, (), None)
    else:
        new = (_RawStruct if _struct_like(t) else RawValue)._make(t, None, (), None)
    ctypes.memmove(ctypes.addressof(new._obj), ctypes.addressof(source), ctypes.sizeof(t))
    return new


def words(array: RawArray) -> tuple[Any, int]:
    """Internal (used by shoal._pool, whose slots are a ``RawArray("q")``): the buffer
    holding ``array`` and the byte offset of its first element, for ``_core``'s 64-bit
    atomics (``load64``, ``store64``, ``cas64``, ``fetch_add64``) on its words.  The
    buffer is None once the array is closed."""
    return array._buf, array._off
