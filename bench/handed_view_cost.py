"""The event loop's CPU for a held apply request's view of an order this process's worker
handed on (certok/api/routes.py `_wait_for`): `view_of_row` on the loop, the key's AES-GCM
decryption included, against handing the same call to a thread (`asyncio.to_thread`), and the
decryption alone. Per call, the median of 5 rounds, for an ECC and an RSA key.

    python bench/handed_view_cost.py [TREE]

TREE: the checkout whose certok to measure (default: this one), for base-vs-new runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent.parent))

from certok.crypto import SecretBox, generate_private_key, order_key_owner, private_key_to_pem
from certok.orders.finished_row import FinishedRow
from certok.orders.service import view_of_row

BOX = SecretBox(secrets.token_bytes(32))


def issued_row(algorithm: str) -> FinishedRow:
    pem = private_key_to_pem(generate_private_key(algorithm)).encode()
    now = dt.datetime.now(dt.UTC)
    return FinishedRow(
        id=7,
        state="issued",
        issuer="letsencrypt",
        domains="a.example.com",
        reason=None,
        not_before=now,
        not_after=now,
        certificate_pem="-----BEGIN CERTIFICATE-----\n...",
        subject="CN=a.example.com",
        key_encrypted=BOX.encrypt(pem, order_key_owner(7)),
        certificate_id=3,
        renew_at=now,
    )


def per_call(fn: Callable[[], Any], n: int) -> float:
    started = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - started) / n * 1e6


async def main() -> None:
    for algorithm in ("ECC", "RSA"):
        row = issued_row(algorithm)
        owner = order_key_owner(row.id)
        key = row.key_encrypted or b""
        alone, inline, hop_loop, hop_wall = [], [], [], []
        for _ in range(5):
            alone.append(per_call(functools.partial(BOX.decrypt, key, owner), 20000))
            inline.append(per_call(functools.partial(view_of_row, row, BOX), 20000))
            n = 3000
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(n):
                await asyncio.to_thread(view_of_row, row, BOX)
            hop_loop.append((time.thread_time() - cpu) / n * 1e6)
            hop_wall.append((time.perf_counter() - wall) / n * 1e6)
        print(
            f"{algorithm}: decryption alone {statistics.median(alone):.1f} µs; view on the "
            f"loop {statistics.median(inline):.1f} µs of loop CPU; to_thread "
            f"{statistics.median(hop_loop):.1f} µs of loop CPU, "
            f"{statistics.median(hop_wall):.1f} µs wall per call"
        )


if __name__ == "__main__":
    asyncio.run(main())
