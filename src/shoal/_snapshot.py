"""Frozen snapshot records: the ``statistics()`` results of locks, queues and dicts.

They behave as ``@dataclass(frozen=True)`` classes do (keyword or positional
construction, a ``Name(field=value, ...)`` repr, equality and hashing by value, ``match``
by position, :class:`dataclasses.FrozenInstanceError` on assignment), and type checkers
read them as such.  They are not made by :mod:`dataclasses` because importing it, with
the ``inspect``/``ast`` it brings, and generating each class's methods by ``exec`` cost
about 15 ms of the first use of ``shoal.Lock`` or ``shoal.Queue`` (#11: a program pays
its imports at every start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

_T = TypeVar("_T")

if TYPE_CHECKING:
    from dataclasses import dataclass as snapshot
else:

    def snapshot(cls: type[_T]) -> type[_T]:
        """Make ``cls`` a frozen record of the fields it annotates, in their order; a
        class attribute of the same name is that field's default."""
        names = tuple(cls.__annotations__)  # (strings: no annotation is evaluated)
        defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
        for name in defaults:
            delattr(cls, name)  # (read from the instance's own __dict__ instead)
        qualname = cls.__qualname__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if len(args) > len(names):
                raise TypeError(
                    f"{qualname}() takes {len(names)} positional arguments "
                    f"but {len(args)} were given"
                )
            values = dict(zip(names, args))
            for name, value in kwargs.items():
                if name not in names:
                    raise TypeError(f"{qualname}() got an unexpected keyword argument {name!r}")
                if name in values:
                    raise TypeError(f"{qualname}() got multiple values for argument {name!r}")
                values[name] = value
            for name in names:
                if name not in values:
                    if name not in defaults:
                        raise TypeError(f"{qualname}() missing required argument: {name!r}")
                    values[name] = defaults[name]
            self.__dict__.update(values)

        def _values(self: Any) -> tuple:
            return tuple(self.__dict__[name] for name in names)

        def __repr__(self: Any) -> str:
            fields = ", ".join(f"{name}={self.__dict__[name]!r}" for name in names)
            return f"{type(self).__qualname__}({fields})"

        def __eq__(self: Any, other: object) -> bool:
            if other.__class__ is not self.__class__:
                return NotImplemented
            return _values(self) == _values(other)

        def __hash__(self: Any) -> int:
            return hash(_values(self))

        def __setattr__(self: Any, name: str, value: object) -> None:
            raise _frozen(name)

        def __delattr__(self: Any, name: str) -> None:
            raise _frozen(name)

        for function in (__init__, __repr__, __eq__, __hash__, __setattr__, __delattr__):
            function.__qualname__ = f"{qualname}.{function.__name__}"
            setattr(cls, function.__name__, function)
        cls.__match_args__ = names
        return cls


def _frozen(name: str) -> AttributeError:
    # (imported here: only a program that tries to assign pays for dataclasses)
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot assign to field {name!r}")
