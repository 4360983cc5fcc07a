"""Pool and Executor carry the function's result type (checked by mypy --strict)."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

from typing_extensions import assert_type

import shoal
from shoal.pool import AsyncResult, IMapIterator, MapResult


def square(x: int) -> int:
    return x * x


def label(x: int, suffix: str) -> str:
    return f"{x}{suffix}"


def main() -> None:
    with shoal.Pool(2) as pool:
        assert_type(pool.map(square, [1, 2]), list[int])
        assert_type(pool.map(str, [1, 2]), list[str])
        assert_type(pool.starmap(label, [(1, "a")]), list[str])
        assert_type(pool.apply(label, (1, "a")), str)
        assert_type(pool.apply_async(square, (3,)), AsyncResult[int])
        assert_type(pool.apply_async(square, (3,)).get(timeout=5), int)
        assert_type(pool.map_async(square, [1]), MapResult[int])
        assert_type(pool.map_async(square, [1]).get(), list[int])
        assert_type(pool.starmap_async(label, [(1, "a")]).get(), list[str])
        assert_type(pool.imap(square, iter([1, 2])), IMapIterator[int])
        assert_type(pool.imap_unordered(square, range(3)).next(timeout=1), int)
        assert_type(pool.istarmap(label, [(1, "a")]), IMapIterator[str])
        for value in pool.imap(square, [1]):
            assert_type(value, int)
        assert_type(list(pool.imap_unordered(square, [1])), list[int])
        pool.apply_async(square, (1,), callback=lambda n: print(n + 1))
        pool.map_async(square, [1], callback=lambda ns: print(sum(ns)))

    with shoal.Executor(2) as executor:
        future = executor.submit(label, 1, "a")
        assert_type(future, concurrent.futures.Future[str])
        assert_type(future.result(), str)
        assert_type(executor.submit(square, x=2).result(), int)
        assert_type(executor.map(square, [1, 2]), Iterator[int])
        assert_type(executor.map(label, [1], ["a"], chunksize=2), Iterator[str])
        done, _ = concurrent.futures.wait([future])
        assert_type(done, set[concurrent.futures.Future[str]])

    with shoal.uninterruptible():
        pass

    # shoal.Executor and shoal.Pool go where the standard library's are expected
    stdlib_executor: concurrent.futures.Executor = shoal.Executor(1)
    stdlib_executor.shutdown()


async def awaiting() -> None:
    """Awaited results carry the same types (#14)."""
    with shoal.Pool(2) as pool:
        assert_type(await pool.apply_async(square, (3,)), int)
        assert_type(await pool.apply_async(square, (3,)).get_async(timeout=1), int)
        assert_type(await pool.map_async(square, [1]), list[int])
        assert_type(await pool.starmap_async(label, [(1, "a")]), list[str])
        async for value in pool.imap(square, [1]):
            assert_type(value, int)
        assert_type(await pool.imap_unordered(square, [1]).next_async(timeout=1), int)
        assert_type(pool.apply_async(square, (3,)).cancel(), bool)
        await pool.apply_async(square, (3,)).wait_async()
