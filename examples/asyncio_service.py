"""An asyncio service that runs CPU work on a shoal pool and streams results through a
shoal queue (docs/asyncio.md, "A worked example").

The handler is what an aiohttp or FastAPI endpoint would be, written with plain asyncio
(``asyncio.start_server``) so that it needs no web framework.  A client sends "LIMIT
BUDGET"; the handler splits "count the primes below LIMIT" into chunks and runs them on
a shoal ``Pool``; each task puts its partial count on a shoal ``Queue`` as it finishes,
and the handler streams each one to the client as it arrives (``await
q.get_async()``), then the total (``await`` on the map's result).  No thread waits for
anything: the event loop is woken when a result or a queue item is there.

A request over its budget is cut short by ``asyncio.wait_for``: the work it started is
cancelled (``total.cancel()`` in a ``finally``), the chunks still queued never run, the
workers running one are killed and replaced, and the next request is served as usual.

Run: python examples/asyncio_service.py
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Awaitable, Callable

import shoal

CHUNK = 20_000


def count_primes(lo: int, hi: int, progress: shoal.Queue[tuple[int, int, int]]) -> int:
    """The primes in [lo, hi), by trial division (CPU work, in a worker process)."""
    n = sum(1 for k in range(max(lo, 2), hi) if all(k % d for d in range(2, math.isqrt(k) + 1)))
    progress.put((lo, hi, n))  # streamed to the client as it comes
    return n


async def prime_count(pool: shoal.Pool, limit: int, send: Callable[[str], Awaitable[None]]) -> int:
    """Count the primes below ``limit`` on ``pool``, sending each chunk's count as it
    is ready; the total."""
    progress: shoal.Queue[tuple[int, int, int]] = shoal.Queue()
    chunks = [(lo, min(lo + CHUNK, limit), progress) for lo in range(0, limit, CHUNK)]
    total = pool.starmap_async(count_primes, chunks, chunksize=1)
    try:
        for _ in chunks:
            lo, hi, n = await progress.get_async()
            await send(f"primes in [{lo}, {hi}): {n}")
        return sum(await total)
    finally:
        # a request cut short (its budget, the client gone) stops its work; once the
        # map is done this does nothing (False)
        total.cancel()
        progress.close()


async def handle(pool: shoal.Pool, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    limit_text, budget_text = (await reader.readline()).decode().split()
    limit, budget = int(limit_text), float(budget_text)

    async def send(line: str) -> None:
        writer.write(line.encode() + b"\n")
        await writer.drain()

    try:
        total = await asyncio.wait_for(prime_count(pool, limit, send), budget)
        await send(f"total below {limit}: {total}")
    except asyncio.TimeoutError:
        await send(f"over its budget of {budget} s: cancelled")
    finally:
        writer.close()
        await writer.wait_closed()


async def request(port: int, line: str) -> list[str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line.encode() + b"\n")
    await writer.drain()
    lines = [raw.decode().rstrip() async for raw in reader]
    writer.close()
    await writer.wait_closed()
    return lines


async def main() -> None:
    # forkserver (or spawn), not fork: a worker forked while a connection is open (a
    # replacement for one killed by a cancel, say) would inherit its socket, and that
    # client would not see the end of its response until the worker exits
    pool = shoal.Pool(2, context=shoal.get_context("forkserver"))
    try:
        server = await asyncio.start_server(functools.partial(handle, pool), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            lines = await request(port, "100000 60")
            print(f"{len(lines) - 1} partial counts streamed, then: {lines[-1]}")
            lines = await request(port, "50000000 0.5")  # far more than half a second
            print(f"{len(lines) - 1} partial counts streamed, then: {lines[-1]}")
            lines = await request(port, "30000 60")
            print(f"the pool goes on: {lines[-1]}")
    finally:
        pool.close()  # (a server going down lets the work in hand finish)
        pool.join()


if __name__ == "__main__":
    asyncio.run(main())
