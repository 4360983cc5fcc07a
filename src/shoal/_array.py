"""numpy arrays in shared memory: ``SharedArray`` and ``share()`` (#4).

A :class:`SharedArray` *is* a numpy array (an ``ndarray`` subclass: arithmetic,
slicing, every numpy function) whose memory is a shoal allocation, and that pickles
as a small handle instead of its bytes::

    process A                                   process B
    a = SharedArray((1000, 1000))               (unpickles the handle)
    a[:10] ──pickle──▶ (block handle, dtype,  ──▶ b = a view of the same memory
                        shape, strides, byte          b[0, 0] = 1  (A sees it)
                        offset, read-only?)

Memory.  One allocation (a *block*, :class:`_Block`, a ``SharedObject``) holds the
data, 64 bytes after the allocation's start, so the data is 64-byte aligned (blocks
are 64-byte aligned in arenas, and a big array's own segment starts on a page)::

    +0    object header (shoal._handle)        +16   u64 data bytes, u64 ARRAY_MAGIC
    +64   the data, C or Fortran order (any strides once sliced)

Small arrays share arena segments with other small objects; one bigger than
``MAX_ARENA_OBJECT`` gets a segment of its own (shoal._handle's allocator).

Views.  Every SharedArray of a block in a process — the array made by the
constructor, and every view numpy makes of it (slices, ``.T``, ``reshape``, field
access) — points at the block's memory, and holds the block (``_block``,
found by ``__array_finalize__`` along the view's ``base`` chain).  A view pickles
as the block plus its geometry relative to the block, so ``a[::2, 1]`` arrives as
the same strided view.  Arrays numpy makes in new memory (``a + 1``, ``a.sum(0)``,
``a.copy()``, ``astype``, fancy indexing) are private: ufuncs, ``copy`` and
``astype`` return plain ndarrays, and the few numpy paths that keep the subclass
anyway (fancy indexing ``a[[0, 2]]``, ``empty_like``) give a *detached*
SharedArray, which has no shared memory and pickles by value like any ndarray.

Lifetime.  The block holds one reference to the shared allocation per process
handle (a handle per unpickling; a pickle in flight holds one too, see
shoal._handle).  Its memory is given back when the last array of the block in this
process is garbage: never earlier, so no view can ever write into memory that was
handed to another object.  ``close()`` marks the handle closed (pickling,
``readonly()`` raise :class:`~shoal.ClosedError`) and, for an array in a segment of
its own, releases the reference at once (the memory stays mapped for the views
still alive, and is no other object's); an arena-backed block goes when its last
view does.

numpy is an optional dependency (``pip install shoal[numpy]``); ``shoal`` imports
this module on first use of ``shoal.SharedArray`` or ``shoal.share``.
"""

from __future__ import annotations

import ctypes
import operator
import pickle
import struct
import sys
from typing import Any

try:
    import numpy as np
except ImportError as exc:  # the optional dependency: say how to get it
    raise ImportError(
        "shoal.SharedArray and shoal.share need numpy: pip install shoal[numpy]"
    ) from exc

from ._errors import ClosedError
from ._handle import OBJECT_HEADER_SIZE, SharedObject
from ._memory import KIND_DATA

__all__ = ["SharedArray", "share"]

ALIGNMENT = 64
# the block's own header after the object header: data bytes and a magic number
_DATA_START = ALIGNMENT - OBJECT_HEADER_SIZE  # payload-relative
ARRAY_MAGIC = int.from_bytes(b"SHOALARR", "little")
_BLOCK_HEADER = struct.Struct("<QQ")  # data bytes, ARRAY_MAGIC
_MAX_NBYTES = sys.maxsize // 2


class _Block(SharedObject):
    """The shared memory behind SharedArrays: one allocation, one handle per process.

    ``_buffer`` (a memoryview) and ``_readonly_buffer`` (a read-only PickleBuffer)
    span exactly the data; arrays are made over them (numpy keeps them, and through
    them the mapping, alive).
    """

    _buffer: Any = None
    _readonly_buffer: Any = None
    _address = 0
    _user_closed = False
    _creating = False  # set while the constructor binds a fresh (zeroed) block

    def __init__(self, nbytes: int) -> None:
        self._set_size(nbytes)
        self._creating = True
        try:
            self._create()
        finally:
            self._creating = False

    def _set_size(self, nbytes: int) -> None:
        self._nbytes = nbytes
        self._PAYLOAD_SIZE = _DATA_START + nbytes

    def _bind_payload(self) -> None:
        mapping, payload = self._mapping, self._payload_offset
        if self._creating:
            _BLOCK_HEADER.pack_into(mapping, payload, self._nbytes, ARRAY_MAGIC)
        elif _BLOCK_HEADER.unpack_from(mapping, payload) != (self._nbytes, ARRAY_MAGIC):
            raise ValueError("the shared memory this handle names does not hold this array")
        start = self._header_offset + ALIGNMENT
        buffer = memoryview(mapping)[start : start + self._nbytes]
        self._buffer = buffer
        # Read-only arrays are made over a PickleBuffer of a read-only memoryview: numpy
        # looks through a memoryview to the (writable) mapping, and checks a read-only
        # ndarray base only up to that mapping, so either would let flags.writeable be
        # switched back on; a PickleBuffer it keeps as the base, and it refuses.
        self._readonly_buffer = pickle.PickleBuffer(buffer.toreadonly())
        if self._nbytes:
            self._address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))

    def _unbind_payload(self) -> None:
        # arrays may still export the buffers: they keep the mapping alive themselves
        self._buffer = self._readonly_buffer = None

    def _handle_state(self) -> Any:
        return self._nbytes

    def _restore_state(self, state: Any) -> None:
        if type(state) is not int or not 0 <= state <= _MAX_NBYTES:
            raise TypeError(f"not a shoal array handle: {state!r}")
        self._set_size(state)

    @property
    def in_own_segment(self) -> bool:
        """Whether the block has a segment to itself (so nothing else reuses its memory)."""
        return self._segment.kind == KIND_DATA

    def _check_open(self, what: str) -> None:
        if self._user_closed or self.closed:
            raise ClosedError(f"cannot {what} a closed SharedArray")

    def _close_from_array(self) -> None:
        """``SharedArray.close()``: close the handle; give the memory back when safe."""
        self._user_closed = True
        if self.in_own_segment:
            # nothing else will ever live in this memory: views still alive here keep
            # their mapping, and the reference can go now
            SharedObject.close(self)
        # an arena block waits for its last view: its finalizer releases it then

    def _view(self, dtype: Any, shape: Any, strides: Any, offset: int, readonly: bool) -> Any:
        buffer = self._readonly_buffer if readonly else self._buffer
        if buffer is None:
            raise ClosedError("cannot use a closed SharedArray")
        array = np.ndarray.__new__(
            SharedArray, shape, dtype, buffer=buffer, offset=offset, strides=strides
        )
        array._block = self
        return array


def _geometry(array: Any, block: _Block) -> tuple[int, bool]:
    """(byte offset of ``array``'s data in the block, whether it lies inside it)."""
    if array.size == 0:
        return 0, True
    offset = array.__array_interface__["data"][0] - block._address
    low = high = offset
    for n, stride in zip(array.shape, array.strides):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return offset, low >= 0 and high + array.itemsize <= block._nbytes


def _rebuild_array(
    block: _Block,
    dtype: Any,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    offset: int,
    readonly: bool,
) -> SharedArray:
    # numpy checks the geometry against the block's size; a dtype of Python objects
    # would read pointers out of shared memory
    return block._view(_checked_dtype(dtype), shape, strides, offset, readonly)


class SharedArray(np.ndarray):
    """A numpy array in shared memory that pickles as a handle, not as its bytes.

    ``SharedArray(shape, dtype=float, order="C")`` makes a zero-filled array; use
    :func:`share` to copy an existing array in.  It is an ``ndarray``: arithmetic,
    slicing and numpy functions work as usual.  Pass it (or any view of it: a slice,
    a transpose, a field) to ``Pool`` tasks, queues and processes, or return it from
    a worker: the other side gets a writable view of the same memory, with no copy.

    Args:
        shape: an int or a tuple of ints, each >= 0.
        dtype: anything ``numpy.dtype`` accepts, structured dtypes included; not
            ``object`` (Python objects cannot live in shared memory).
        order: ``"C"`` (row-major) or ``"F"`` (column-major).

    Results numpy computes into new memory (``a + 1``, ``a.sum(axis=0)``,
    ``a.copy()``) are ordinary, private ndarrays.  The data is 64-byte aligned.  The
    memory lives while any process holds an array of it (or a pickled one is on its
    way) and is reaped if every such process dies.

    Raises:
        TypeError: a dtype with Python objects, or a shape that is not integers.
        ValueError: a negative dimension, a bad ``order``, or an impossible size.
        SharedMemoryError: no room in shared memory.
    """

    # a slot, not a __dict__: numpy calls __array_finalize__ for every view (a[i] of a
    # 2-d array included), and a slot halves what that costs
    __slots__ = ("_block",)

    def __new__(cls, shape: Any, dtype: Any = float, order: str = "C") -> SharedArray:
        shape = _normalize_shape(shape)
        dtype = _checked_dtype(dtype)
        if order not in ("C", "F"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        nbytes = dtype.itemsize
        for n in shape:
            nbytes *= n
        if nbytes > _MAX_NBYTES:
            raise ValueError(f"array of shape {shape} and dtype {dtype} is too big")
        block = _Block(nbytes)
        array = np.ndarray.__new__(cls, shape, dtype, buffer=block._buffer, order=order)
        array._block = block
        return array

    def __array_finalize__(self, obj: Any) -> None:
        # a view shares its base's memory: find the block along the base chain (new
        # memory, a copy, has no base and stays detached)
        base = self.base
        if base is obj and isinstance(obj, SharedArray):  # the common case: a direct view
            block = getattr(obj, "_block", None)
            if block is not None:
                self._block = block
                return
        while base is not None:
            block = getattr(base, "_block", None)
            if block is not None and isinstance(base, SharedArray):
                self._block = block
                return
            base = getattr(base, "base", None)

    @property
    def _shoal_block(self) -> _Block | None:
        """The block whose memory this array views (None: detached, private memory)."""
        return getattr(self, "_block", None)

    def __array_wrap__(self, out: Any, context: Any = None, return_scalar: bool = False) -> Any:
        # a ufunc's result: in place (out=a shared array) it stays itself; new memory
        # is returned as a plain ndarray
        if not (isinstance(out, SharedArray) and getattr(out, "_block", None) is not None):
            out = out.view(np.ndarray) if isinstance(out, SharedArray) else out
        return out[()] if return_scalar else out

    # ---- pickling: a handle and a geometry, not the bytes ---------------------------------

    def __reduce_ex__(self, protocol: Any) -> Any:
        block = getattr(self, "_block", None)
        if block is None:
            # detached (numpy made it in new memory): an ordinary array, by value
            return self.view(np.ndarray).__reduce_ex__(protocol)
        block._check_open("pickle")
        offset, inside = _geometry(self, block)
        if not inside:  # not a view of the block after all: by value, to be safe
            return self.view(np.ndarray).__reduce_ex__(protocol)
        readonly = not self.flags.writeable
        return (_rebuild_array, (block, self.dtype, self.shape, self.strides, offset, readonly))

    def __reduce__(self) -> Any:
        return self.__reduce_ex__(2)

    # private memory is what a copy is for
    def astype(self, *args: Any, **kwargs: Any) -> Any:
        """Return the array cast to a dtype (numpy's ``astype``); a copy is a plain
        ``numpy.ndarray``."""
        out = np.ndarray.astype(self, *args, **kwargs)
        if isinstance(out, SharedArray) and getattr(out, "_block", None) is None:
            return out.view(np.ndarray)
        return out

    def copy(self, order: Any = "C") -> Any:
        """Return a copy in private memory: a plain ``numpy.ndarray``."""
        return np.array(self, order=order, copy=True, subok=False)

    def __copy__(self) -> Any:
        return self.copy(order="K")

    def __deepcopy__(self, memo: Any) -> Any:
        return self.copy(order="K")

    # ---- shoal's own ------------------------------------------------------------------------

    def readonly(self) -> SharedArray:
        """Return a read-only view of the same memory, which stays read-only when pickled.

        Writes through it raise ``ValueError`` (numpy's "assignment destination is
        read-only"), in this process and in every process it is sent to; its
        ``flags.writeable`` cannot be turned back on.  Other processes holding a
        writable view can still change the data.

        Raises:
            ClosedError: the array was closed.
        """
        block = getattr(self, "_block", None)
        if block is not None:
            block._check_open("make a read-only view of")
            offset, inside = _geometry(self, block)
            if inside:
                return block._view(self.dtype, self.shape, self.strides, offset, True)
        view = self.view()  # detached: private memory, nothing shared to protect
        view.flags.writeable = False
        return view

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this array or another view of its
        handle in this process."""
        block = getattr(self, "_block", None)
        return block is not None and (block._user_closed or block.closed)

    def close(self) -> None:
        """Close this process's handle to the shared memory (all views of it here).

        Pickling and :meth:`readonly` raise :class:`~shoal.ClosedError` afterwards;
        other processes keep their arrays.  The reference is dropped at once for an
        array with a segment of its own, and for a small array (sharing an arena)
        when its last view in this process is garbage: the memory of a view that is
        still alive is never handed to another object.  Calling it twice is
        harmless.  An array numpy made in private memory has nothing to close.
        """
        block = getattr(self, "_block", None)
        if block is not None and not block._user_closed:
            block._close_from_array()


def share(array: Any) -> SharedArray:
    """Copy ``array`` (anything ``numpy.asarray`` accepts) into a new :class:`SharedArray`.

    Shape, dtype and memory order (C, or Fortran for a Fortran-ordered array) are
    kept.  The copy is made once, here; from then on the array travels as a handle.

    Raises:
        TypeError: the array holds Python objects (``object`` dtype).
        SharedMemoryError: no room in shared memory.
    """
    source = np.asarray(array)
    _checked_dtype(source.dtype)
    order = "F" if source.flags.f_contiguous and not source.flags.c_contiguous else "C"
    shared = SharedArray(source.shape, source.dtype, order)
    np.copyto(shared, source, casting="no")
    return shared


def _normalize_shape(shape: Any) -> tuple[int, ...]:
    problem = f"shape must be an int or a sequence of ints, not {shape!r}"
    if isinstance(shape, (str, bytes, bool)):
        raise TypeError(problem)
    try:
        items: tuple[Any, ...] = (operator.index(shape),)
    except TypeError:
        try:
            items = tuple(shape)
        except TypeError:
            raise TypeError(problem) from None
    dims = []
    for item in items:
        if isinstance(item, bool):
            raise TypeError(problem)
        try:
            n = operator.index(item)
        except TypeError:
            raise TypeError(problem) from None
        if n < 0:
            raise ValueError(f"negative dimensions are not allowed: {shape!r}")
        dims.append(n)
    return tuple(dims)


def _checked_dtype(dtype: Any) -> Any:
    try:
        dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"not a numpy dtype: {dtype!r} ({exc})") from None
    if dtype.hasobject:
        raise TypeError(
            f"dtype {dtype} holds Python objects, which cannot live in shared memory; "
            "use a numeric, string or structured dtype (or a SharedDict for objects)"
        )
    return dtype


# public as shoal.SharedArray and shoal.share (loaded lazily by shoal/__init__.py)
SharedArray.__module__ = share.__module__ = "shoal"
