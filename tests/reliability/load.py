"""Mixed traffic for the reliability tests: classify, /predict, generate (plain and streamed) and
feedback from a few concurrent clients, bounded in count and in time, every answer recorded
with its request id so the request log can be checked against it."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# share of each kind of request (generate needs a server started with --generator)
MIX = {"classify": 0.55, "predict": 0.1, "generate": 0.15, "stream": 0.1, "feedback": 0.1}
PROMPTS = ["the patient has", "what is the best", "a fever of", "the patient"]


@dataclass
class Outcome:
    kind: str
    status: int  # 0: no HTTP answer (connection refused/reset, timeout)
    request_id: str = ""
    papers: int = 0
    latency_s: float = 0.0
    error: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def answered(self, *kinds: str) -> list[Outcome]:
        """Requests that got their success status (200, 202 for feedback)."""
        ok = {"feedback": 202}
        return [o for o in self.outcomes if o.kind in kinds and o.status == ok.get(o.kind, 200)]

    def statuses(self) -> Counter[tuple[str, int]]:
        return Counter((o.kind, o.status) for o in self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 0 or o.status >= 500]


async def run_load(
    url: str,
    papers: list[dict[str, str]],
    *,
    clients: int,
    duration_s: float,
    max_requests: int,
    mix: dict[str, float] | None = None,
    seed: int = 0,
    stop: asyncio.Event | None = None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """`clients` clients send requests back to back until `duration_s` has passed,
    `max_requests` were sent or `stop` is set, whichever comes first."""
    mix = mix or MIX
    kinds, weights = list(mix), list(mix.values())
    result = LoadResult()
    stop = stop or asyncio.Event()
    labelled: list[tuple[str, str]] = []  # (request id, label answered) for feedback
    started = time.monotonic()
    deadline = started + duration_s

    async def one(http: httpx.AsyncClient, rng: random.Random, i: int) -> Outcome:
        kind = rng.choices(kinds, weights)[0]
        if kind == "feedback" and not labelled:
            kind = "classify"
        t0 = time.monotonic()
        out = Outcome(kind, 0)
        try:
            if kind == "classify":
                batch = rng.sample(papers, rng.randint(1, 8))
                r = await http.post("/v1/classify", json={"papers": batch})
                out.papers = len(batch)
                if r.status_code == 200:
                    labelled.append((r.json()["request_id"], r.json()["results"][0]["label"]))
            elif kind == "predict":
                r = await http.post("/predict", json=rng.choice(papers))
                out.papers = 1
            elif kind == "generate":
                body = {"prompt": rng.choice(PROMPTS), "max_new_tokens": 16, "seed": i}
                r = await http.post("/v1/generate", json=body)
            elif kind == "stream":
                body = {"prompt": rng.choice(PROMPTS), "max_new_tokens": 16, "seed": i}
                async with http.stream(
                    "POST", "/v1/generate", params={"stream": "true"}, json=body
                ) as r:
                    text = "".join([line async for line in r.aiter_lines()])
                if r.status_code == 200 and "event: done" not in text:
                    out.error = "the stream ended without a done event"
                    out.status = 0
                    return out
            else:
                rid, label = rng.choice(labelled)
                body = {"request_id": rid, "index": 0, "label": label}
                r = await http.post("/v1/feedback", json=body)
            out.status = r.status_code
            out.request_id = r.headers.get("X-Request-ID", "")
            if r.status_code >= 400:
                out.error = r.text[:300]
        except httpx.HTTPError as e:
            out.error = repr(e)
        out.latency_s = time.monotonic() - t0
        return out

    async def client(c: int) -> None:
        rng = random.Random(seed * 1000 + c)
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) as http:
            i = c
            while (
                not stop.is_set()
                and time.monotonic() < deadline
                and len(result.outcomes) < max_requests
            ):
                result.outcomes.append(await one(http, rng, i))
                i += clients

    await asyncio.gather(*(client(c) for c in range(clients)))
    result.seconds = time.monotonic() - started
    return result


def summary(result: LoadResult) -> dict[str, Any]:
    """Counts and latency quantiles of a run, for the test output and docs/reliability.md."""
    lat = sorted(o.latency_s for o in result.outcomes if o.status and o.status < 500)

    def q(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

    by_status = Counter(o.status for o in result.outcomes)
    return {
        "seconds": round(result.seconds, 1),
        "requests": len(result.outcomes),
        "per_kind": dict(Counter(o.kind for o in result.outcomes)),
        "statuses": {str(k): v for k, v in sorted(by_status.items())},
        "failures": len(result.failures()),
        "requests_per_s": round(len(result.outcomes) / max(result.seconds, 1e-9), 1),
        "latency_ms": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99)},
    }
