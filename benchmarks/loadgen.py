"""A bounded closed-loop HTTP load generator: C clients, each sending its next request as soon as
the previous one is answered, until N requests or T seconds, whichever comes first.

Runs in its own process (`python -m benchmarks.loadgen ...`), so its CPU use is visible and it
never shares an interpreter with the server. aiohttp rather than httpx: on a 2-core machine the
client's own cost per request is part of what the server is measured against, and aiohttp's is
a fraction of httpx's. Prints one JSON line with req/s, latency percentiles and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


async def _run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    max_requests: int,
    duration_s: float,
    warmup: int,
) -> dict[str, Any]:
    import aiohttp

    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    next_i = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(body: bytes) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    return resp.status, time.perf_counter() - t0
            except (aiohttp.ClientError, TimeoutError) as e:
                statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
                return 0, time.perf_counter() - t0

        # warm-up: open the connections and wake the server's code paths; not counted
        await asyncio.gather(*(one(bodies[i % len(bodies)]) for i in range(warmup)))

        deadline = time.perf_counter() + duration_s

        async def client() -> None:
            nonlocal next_i
            while next_i < max_requests and time.perf_counter() < deadline:
                body = bodies[next_i % len(bodies)]
                next_i += 1
                status, dt = await one(body)
                if status:
                    statuses[str(status)] = statuses.get(str(status), 0) + 1
                latencies.append(dt)

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    ok = statuses.get("200", 0)
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "ok": ok,
        "errors": len(latencies) - ok,
        "statuses": statuses,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 2) if elapsed > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if len(lat) else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--bodies", type=Path, required=True, help="JSON lines, one request body each")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--requests", type=int, default=1000, help="stop after this many")
    ap.add_argument("--duration", type=float, default=20.0, help="... or after this many seconds")
    ap.add_argument("--warmup", type=int, default=0)
    a = ap.parse_args()
    if not a.url.startswith("http://127.0.0.1:"):
        raise SystemExit("benchmarks only drive servers on 127.0.0.1")
    bodies = [line.encode() for line in a.bodies.read_text().splitlines() if line.strip()]
    res = asyncio.run(_run(a.url, bodies, a.concurrency, a.requests, a.duration, a.warmup))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
