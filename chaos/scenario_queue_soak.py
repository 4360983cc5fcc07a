"""An MPMC queue soak with a producer or consumer SIGKILLed every ~100 ms.

Producers put single items, ``put_many`` batches of 16, and items of 128 KiB (a
``bytearray``, so it travels out of band in a transit segment); consumers take them
with ``get`` and ``get_many(64)``.  Every put a producer saw return is acknowledged in
its log (one ``write``, atomic against SIGKILL); every item a consumer took is recorded
in its log with whether its payload was intact.  At the end producers are killed,
the queue is shut down, consumers drain it and leave, and the logs are compared:

- ``lost``: acknowledged items nobody received, beyond ``window``;
- ``window``: acknowledged items lost, up to what consumers killed between taking
  items and recording them can account for (1 per ``get``, up to 64 per
  ``get_many``; reported apart, bounded by ``window_bound``);
- ``duplicated``: items received twice; ``corrupt``: payloads that do not match;
- ``unacked``: items received that their producer was killed before acknowledging
  (not a loss);
- ``crashes``: processes that died of anything but our SIGKILLs; ``hangs``: consumers
  that did not finish draining within 60 s after ``shutdown()``;
- ``leftovers``: ``shoal-*`` segments left in the private ``/dev/shm`` once every
  process is gone and a sweep ran.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import queue as stdlib_queue
import struct
import tempfile
import time
from typing import Any

import shoal

from ._common import Killer, leftovers_after_reap, sigkill

HOLDS = ("lost", "duplicated", "corrupt", "crashes", "hangs", "leftovers")

_ACK = struct.Struct("<QI")  # first sequence number, count
_GOT = struct.Struct("<IQI")  # producer, sequence number, 1: received / 0: corrupt
_BIG = 128 * 1024
_BATCH = 16
_MANY = 64
PRODUCERS = ("single", "many", "big")
CONSUMERS = ("single", "many")


def _payload(producer: int, seq: int, big: bool) -> bytes:
    digest = hashlib.blake2b(f"{producer}:{seq}".encode(), digest_size=16).digest()
    return digest * (_BIG // 16) if big else digest


def _produce(q: Any, producer: int, mode: str, logdir: str) -> None:
    fd = os.open(os.path.join(logdir, f"p{producer}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    seq = 0
    while True:
        if mode == "many":
            q.put_many(
                [(producer, s, _payload(producer, s, False)) for s in range(seq, seq + _BATCH)]
            )
            count = _BATCH
        elif mode == "big":
            q.put((producer, seq, bytearray(_payload(producer, seq, True))))
            count = 1
        else:
            q.put((producer, seq, _payload(producer, seq, False)))
            count = 1
        os.write(fd, _ACK.pack(seq, count))
        seq += count


def _consume(q: Any, consumer: int, mode: str, logdir: str) -> None:
    fd = os.open(os.path.join(logdir, f"c{consumer}"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    while True:
        try:
            items = q.get_many(_MANY, timeout=1.0) if mode == "many" else [q.get(timeout=1.0)]
        except stdlib_queue.Empty:
            continue
        except shoal.ShutDown:
            return
        # the receipt first, checked afterwards: the window between taking an item and
        # recording it is one write
        keys = [item[:2] if isinstance(item, tuple) and len(item) == 3 else None for item in items]
        os.write(fd, b"".join(_GOT.pack(*k, 1) for k in keys if k is not None))
        bad = [
            _GOT.pack(*k, 0) if k else _GOT.pack(0xFFFFFFFF, 0, 0)
            for k, item in zip(keys, items)
            if k is None or bytes(item[2]) != _payload(*k, len(item[2]) == _BIG)
        ]
        if bad:
            os.write(fd, b"".join(bad))


def _read(path: str, layout: struct.Struct) -> list[tuple[int, ...]]:
    with open(path, "rb") as f:
        data = f.read()
    return [layout.unpack_from(data, i) for i in range(0, len(data) - layout.size + 1, layout.size)]


def run(seconds: float) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    q = shoal.Queue(maxsize=512)
    logdir = tempfile.mkdtemp(prefix="shoal-chaos-")
    ids = iter(range(1, 1 << 30))
    modes: dict[int, str] = {}  # producer id -> mode
    consumer_modes: dict[int, str] = {}

    def start(role: str, index: int) -> Any:
        ident = next(ids)
        if role == "producer":
            modes[ident] = PRODUCERS[index % len(PRODUCERS)]
            target, args = _produce, (q, ident, modes[ident], logdir)
        else:
            consumer_modes[ident] = CONSUMERS[index % len(CONSUMERS)]
            target, args = _consume, (q, ident, consumer_modes[ident], logdir)
        p = ctx.Process(target=target, args=args, daemon=True)
        p.start()
        return p

    victims = {
        "producer": [start("producer", i) for i in range(len(PRODUCERS))],
        "consumer": [start("consumer", i) for i in range(len(CONSUMERS))],
    }
    killer = Killer(seed=int.from_bytes(os.urandom(4), "little"))
    killed_consumer_modes: list[str] = []

    def restart(role: str, index: int) -> Any:
        if role == "consumer":
            killed_consumer_modes.append(CONSUMERS[index % len(CONSUMERS)])
        return start(role, index)

    crashes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        killer.run(min(0.5, max(0.0, deadline - time.monotonic())), victims, restart)
        for role, procs in victims.items():  # died by themselves?
            for i, p in enumerate(procs):
                if p.exitcode is not None:
                    crashes += 1
                    procs[i] = start(role, i)
    for p in victims["producer"]:
        sigkill(p)
    q.shutdown()
    hangs = 0
    finish = time.monotonic() + 60
    for p in victims["consumer"]:
        p.join(max(0.1, finish - time.monotonic()))
        if p.exitcode is None:
            hangs += 1
            sigkill(p)
        elif p.exitcode != 0:
            crashes += 1
    q.close()

    acked: set[tuple[int, int]] = set()
    received: dict[tuple[int, int], int] = {}
    corrupt = 0
    for name in os.listdir(logdir):
        path = os.path.join(logdir, name)
        if name.startswith("p"):
            producer = int(name[1:])
            for first, count in _read(path, _ACK):
                acked.update((producer, s) for s in range(first, first + count))
        else:
            for producer, seq, intact in _read(path, _GOT):
                if not intact:  # (a second record, after the receipt)
                    corrupt += 1
                    continue
                received[(producer, seq)] = received.get((producer, seq), 0) + 1
        os.unlink(path)
    os.rmdir(logdir)
    missing = len(acked - received.keys())
    window_bound = sum(_MANY if m == "many" else 1 for m in killed_consumer_modes)
    window = min(missing, window_bound)
    return {
        "seconds": seconds,
        "acked": len(acked),
        "received": len(received),
        "unacked": len(received.keys() - acked),
        "lost": missing - window,
        "window": window,
        "window_bound": window_bound,
        "duplicated": sum(n - 1 for n in received.values() if n > 1),
        "corrupt": corrupt,
        "producer_kills": killer.kills.get("producer", 0),
        "consumer_kills": killer.kills.get("consumer", 0),
        "crashes": crashes,
        "hangs": hangs,
        "leftovers": leftovers_after_reap(),
    }
