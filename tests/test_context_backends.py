"""The context is where a backend is chosen (#12): a start method names this machine's
shared memory; any other name a registered backend, made from get_context's options."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import shoal
from shoal import _context


class FakeEngine:
    """A backend's context: the factories of the protocol, made from options."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address

    def Queue(self, maxsize: int = 0, **kwargs: Any) -> Any:
        return ("queue", maxsize)

    def Lock(self) -> Any:
        return "lock"

    def Pool(self, processes: int | None = None, *args: Any, **kwargs: Any) -> Any:
        return ("pool", processes)

    def Manager(self) -> Any:
        return "manager"

    def get_start_method(self, allow_none: bool = False) -> str | None:
        return None


@pytest.fixture
def fake() -> Iterator[str]:
    _context.register_backend("fake-engine", FakeEngine)
    try:
        yield "fake-engine"
    finally:
        del _context._backends["fake-engine"]


def test_a_registered_backend_is_made_from_the_options(fake: str) -> None:
    ctx = shoal.get_context(fake, address="127.0.0.1:1")
    assert isinstance(ctx, FakeEngine) and ctx.address == "127.0.0.1:1"
    assert isinstance(ctx, _context.BackendContext)
    assert ctx.Pool(3) == ("pool", 3) and ctx.Queue(5) == ("queue", 5)


def test_the_local_context_fills_the_same_protocol() -> None:
    assert isinstance(shoal.get_context("spawn"), _context.BackendContext)


def test_start_methods_and_taken_names_cannot_be_registered(fake: str) -> None:
    for name in ("fork", "spawn", "forkserver", fake):
        with pytest.raises(ValueError, match="exists already"):
            _context.register_backend(name, FakeEngine)


def test_a_start_method_takes_no_options() -> None:
    with pytest.raises(TypeError, match="takes no options: address"):
        shoal.get_context("spawn", address="x")


def test_an_unknown_name_raises_the_stdlib_value_error() -> None:
    with pytest.raises(ValueError, match="cannot find context for 'no-such-engine'"):
        shoal.get_context("no-such-engine")
    with pytest.raises(ValueError, match="cannot find context for 'no-such-engine'"):
        shoal.get_context("no-such-engine", address="x")
