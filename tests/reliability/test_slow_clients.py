"""Slow and vanishing clients do not hold the server: others keep getting prompt answers.

One `paperops serve --model <tfidf> --generator <tiny LM>` child process on 127.0.0.1 with a
short body timeout (`serve.limits.body_timeout_s`). Raw sockets play the bad clients:

- slowloris: SLOW connections send headers with a Content-Length, then the body one byte at a
  time; normal clients' requests all succeed and finish before any slow one is answered, and each
  slow one then gets 408 (standard error body) and a closed connection;
- clients that send a 64-paper request and never read the answer (tiny receive buffers): the
  handlers still finish (in-flight gauge back to idle) and others are served;
- clients that hang up mid-body, right after the body, or mid-stream on /v1/generate: the
  server keeps answering, no request is left in flight, the generation engine's active and
  queued gauges go back to 0, and no 5xx is counted.

Every loop is bounded in count and time; nothing asserts a duration, only orders and counts.
"""

from __future__ import annotations

import json
import select
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.gen_helpers import build_tiny_lm
from tests.integration.serve_helpers import serve_cli
from tests.reliability.helpers import metric_value, server_errors, wait_for

pytestmark = pytest.mark.integration

PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in make_records(DEFAULT_COUNTS)]
BODY_TIMEOUT_S = 4  # short, so the slow clients are cut off within the test
SLOW = 20
NORMAL_CLIENTS, NORMAL_EACH = 4, 8
DEADLINE_S = 40.0


class Server:
    def __init__(self, url: str) -> None:
        self.url = url
        parts = urlsplit(url)
        self.addr = (str(parts.hostname), int(parts.port or 80))
        self.http = httpx.Client(base_url=url, timeout=30)

    def metrics(self) -> str:
        return self.http.get("/metrics").text

    def idle(self) -> bool:
        """Nothing in flight but the scrape that asks."""
        return metric_value(self.metrics(), "paperops_http_requests_in_flight") == 1.0

    def count(self, route: str, status: int, method: str = "POST") -> float:
        labels = {"route": route, "method": method, "status": str(status)}
        return metric_value(self.metrics(), "paperops_http_requests_total", labels)


@pytest.fixture(scope="module")
def server(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("slow_clients")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    lm = build_tiny_lm(base / "lm", context_length=256)  # room for long generations
    args = ["--model", str(model), "--generator", str(lm)]
    with serve_cli(base, *args, f"serve.limits.body_timeout_s={BODY_TIMEOUT_S}") as url:
        s = Server(url)
        yield s
        s.http.close()


def request_bytes(path: str, body: bytes, *, host: str = "127.0.0.1") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def classify_body(n: int) -> bytes:
    return json.dumps({"papers": [PAPERS[i % len(PAPERS)] for i in range(n)]}).encode()


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (bounded by the socket
    timeout and `limit` bytes), and whether it did close it."""
    out = b""
    while len(out) < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            return out, True
        if not chunk:
            return out, True
        out += chunk
    return out, False


def normal_load(server: Server, finished: list[tuple[float, int]]) -> None:
    """NORMAL_CLIENTS threads, NORMAL_EACH classify requests each; (finish time, status)."""

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(NORMAL_EACH):
                paper = PAPERS[(c * NORMAL_EACH + i) % len(PAPERS)]
                try:
                    status = http.post("/v1/classify", json={"papers": [paper]}).status_code
                except httpx.HTTPError:
                    status = 0
                finished.append((time.monotonic(), status))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(NORMAL_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)


# --- slowloris ---------------------------------------------------------------------------------


def test_slow_bodies_hold_no_one_up_and_are_cut_off_with_408(server: Server) -> None:
    body = classify_body(2)
    before_408 = server.count("/v1/classify", 408)
    socks = []
    for _ in range(SLOW):
        s = socket.create_connection(server.addr, timeout=10)
        s.sendall(request_bytes("/v1/classify", body)[: -len(body) + 1])  # headers + 1 byte
        socks.append(s)
    sent = {s: 1 for s in socks}
    answered: dict[socket.socket, tuple[float, tuple[bytes, bool]]] = {}
    stop_at = time.monotonic() + DEADLINE_S

    def trickle() -> None:
        """One byte per slow connection every 50 ms (never the last one), until each has been
        answered; the answers are timed as they arrive."""
        while len(answered) < len(socks) and time.monotonic() < stop_at:
            waiting = [s for s in socks if s not in answered]
            readable, _, _ = select.select(waiting, [], [], 0.05)
            for s in readable:
                answered[s] = (time.monotonic(), read_until_closed(s))
            for s in waiting:
                if s in answered or sent[s] >= len(body) - 1:
                    continue
                try:
                    s.sendall(body[sent[s] : sent[s] + 1])
                    sent[s] += 1
                except OSError:  # the server closed it: its answer is read above
                    pass

    slow = threading.Thread(target=trickle)
    slow.start()
    try:
        # every slow connection is in the app, mid-body, before the normal clients start
        assert wait_for(
            lambda: metric_value(server.metrics(), "paperops_http_requests_in_flight") >= SLOW + 1
        )
        finished: list[tuple[float, int]] = []
        normal_load(server, finished)
        slow.join(DEADLINE_S)
    finally:
        for s in socks:
            s.close()
    assert [st for _, st in finished] == [200] * (NORMAL_CLIENTS * NORMAL_EACH)
    assert len(answered) == SLOW
    # the normal clients were all answered before the first slow client was
    assert max(t for t, _ in finished) < min(t for t, _ in answered.values())
    for _, (raw, closed) in answered.values():
        assert closed, raw[:200]  # the server hung up: the connection is not held either
        head, _, payload = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), raw[:200]
        assert b"connection: close" in head.lower()
        error = json.loads(payload)
        assert error["detail"][0]["type"] == "body_timeout"
        assert "serve.limits.body_timeout_s" in error["error"]
    assert server.count("/v1/classify", 408) - before_408 == SLOW
    assert wait_for(server.idle, timeout=20)
    assert server_errors(server.metrics()) == 0
    print(
        f"\nslowloris: {SLOW} slow bodies cut off (408), {len(finished)} normal requests, 0 failed"
    )


# --- clients that never read the answer -------------------------------------------------------

UNREAD = 6


def test_clients_that_never_read_a_large_answer_hold_nothing(server: Server) -> None:
    before = server.count("/v1/classify", 200)
    req = request_bytes("/v1/classify", classify_body(64))
    socks = []
    try:
        for _ in range(UNREAD):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
            s.settimeout(10)
            s.connect(server.addr)
            s.sendall(req)
            socks.append(s)
        finished: list[tuple[float, int]] = []
        normal_load(server, finished)
        assert [st for _, st in finished] == [200] * (NORMAL_CLIENTS * NORMAL_EACH)
        # with the unread answers still in the sockets, every handler has finished
        assert wait_for(server.idle, timeout=20)
        assert server.count("/v1/classify", 200) - before == UNREAD + len(finished)
    finally:
        for s in socks:
            s.close()
    assert server_errors(server.metrics()) == 0


# --- clients that hang up -----------------------------------------------------------------------

HANGUPS = 8
STREAMS = 6


def hang_up_mid_stream(url: str) -> None:
    req = {"prompt": "the patient has", "max_new_tokens": 200, "temperature": 1.0}
    with (
        httpx.Client(base_url=url, timeout=30) as http,
        http.stream("POST", "/v1/generate", params={"stream": "true"}, json=req) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                break  # one event, then the client goes away unread


def test_clients_that_hang_up_leave_nothing_running(server: Server) -> None:
    text = server.metrics()
    finished_before = sum(
        metric_value(text, "paperops_generation_finished_total", {"finish_reason": r})
        for r in ("eos", "length", "context", "time_budget", "cancelled", "error")
    )
    body = classify_body(8)
    for i in range(HANGUPS):
        s = socket.create_connection(server.addr, timeout=10)
        whole = request_bytes("/v1/classify", body)
        # half of them stop mid-body, the others right after the body (before the answer)
        s.sendall(whole[: len(whole) - len(body) // 2] if i % 2 else whole)
        s.close()
    streams = [
        threading.Thread(target=hang_up_mid_stream, args=(server.url,)) for _ in range(STREAMS)
    ]
    for t in streams:
        t.start()
    for t in streams:
        t.join(DEADLINE_S)
    # the server still answers everyone else, at once
    r = server.http.post("/v1/classify", json={"papers": PAPERS[:3]})
    assert r.status_code == 200 and len(r.json()["results"]) == 3
    g = server.http.post("/v1/generate", json={"prompt": "what is the best", "max_new_tokens": 8})
    assert g.status_code == 200, g.text

    def engine_idle() -> bool:
        """No sequence decoding or queued, nothing in flight, every generation accounted for."""
        text = server.metrics()
        done = sum(
            metric_value(text, "paperops_generation_finished_total", {"finish_reason": r})
            for r in ("eos", "length", "context", "time_budget", "cancelled", "error")
        )
        return (
            metric_value(text, "paperops_generation_active_sequences") == 0.0
            and metric_value(text, "paperops_generation_queue_depth") == 0.0
            and metric_value(text, "paperops_http_requests_in_flight") == 1.0
            and done - finished_before == STREAMS + 1
        )

    assert wait_for(engine_idle, timeout=30)
    text = server.metrics()
    finished: dict[str, Any] = {
        r: metric_value(text, "paperops_generation_finished_total", {"finish_reason": r})
        for r in ("eos", "length", "context", "time_budget", "cancelled", "error")
    }
    assert sum(finished.values()) - finished_before == STREAMS + 1, finished
    assert finished["error"] == 0.0
    assert server_errors(text) == 0
    statuses = {
        s.labels["status"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "paperops_http_requests_total" and s.labels["route"] == "/v1/classify"
    }
    print(f"\nhang-ups: {HANGUPS} classify + {STREAMS} streams; generation {finished}; {statuses}")
