"""The generation API (/v1/generate, its SSE stream, /infer) through real uvicorn on 127.0.0.1.

The main server is `paperops serve --model <tfidf bundle> --generator <tiny LM bundle>` as a
child process; a second one has no language model (nothing registered: the classifier serves,
/v1/generate answers 503). Tests that need a generation held in flight (a client that goes away,
a full queue) run the app factory on uvicorn in a thread with a slowed or gated decoder. The
module ends by stopping the main server and counting the request log's generation rows.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from paperops.serve.app import create_app
from paperops.serve.settings import GeneratorSettings, RequestLogSettings, ServeSettings
from tests.integration.gen_helpers import build_tiny_lm, metric_value, parse_sse, steered_generator
from tests.integration.serve_helpers import (
    GatedRuntime,
    serve_app,
    serve_cli,
    tiny_predictor,
)

pytestmark = pytest.mark.integration

PAPER = {"title": "Graph Neural Networks", "abstract": "We propose a model for graph learning."}
GEN = "/v1/generate"


class GenApi:
    """The running main server, and how many generation requests it answered."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.url = ""
        self.stack = contextlib.ExitStack()
        self.client: httpx.Client | None = None
        self.answered = 0

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None, "the server was stopped"
        return self.client

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        r = self.http.post(path, **kwargs)
        if r.status_code == 200:
            self.answered += 1
        return r

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.stack.close()


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("gen_lm") / "lm")


@pytest.fixture(scope="module")
def gen_api(
    tfidf_bundle: Path, lm_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GenApi]:
    base = tmp_path_factory.mktemp("gen_api")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    handle = GenApi(base)
    with handle.stack:
        handle.url = handle.stack.enter_context(
            serve_cli(base, "--model", str(model), "--generator", str(lm_bundle))
        )
        handle.client = httpx.Client(base_url=handle.url, timeout=30)
        yield handle
        handle.stop()


def check_422(r: httpx.Response, field: str, rule: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"]
    locs = {(tuple(d["loc"]), d["type"]) for d in body["detail"]}
    assert (("body", field), rule) in locs, body


# --- the main server --------------------------------------------------------------------------


def test_generate_is_deterministic_for_a_seed(gen_api: GenApi) -> None:
    req = {"prompt": "the patient has", "max_new_tokens": 12, "seed": 42, "temperature": 1.0}
    a = gen_api.post(GEN, json=req)
    b = gen_api.post(GEN, json=req)
    assert a.status_code == 200, a.text
    one, two = a.json(), b.json()
    assert one["text"] == two["text"] and one["seed"] == two["seed"] == 42
    assert one["id"] != two["id"] and a.headers["X-Request-ID"] == one["id"]
    assert one["model"] == {"name": "lm", "version": "local", "family": "lm", "runtime": "torch"}
    assert one["prompt"] == req["prompt"]
    assert one["finish_reason"] in {"eos", "length"}
    assert 0 <= one["tokens"]["generated"] <= 12 and one["tokens"]["prompt"] >= 1
    assert set(one["timing"]) == {"ttft_ms", "total_ms", "tokens_per_s"}
    greedy = {"prompt": "what is the best", "max_new_tokens": 8, "top_k": 1}
    g1, g2 = gen_api.post(GEN, json=greedy).json(), gen_api.post(GEN, json=greedy).json()
    assert g1["text"] == g2["text"] and g1["seed"] != g2["seed"]  # fresh seeds, reported


def test_stream_pieces_add_up_to_the_done_text(gen_api: GenApi) -> None:
    req = {"prompt": "a fever of", "max_new_tokens": 16, "seed": 7}
    with gen_api.http.stream("POST", GEN, params={"stream": "true"}, json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = parse_sse(r.iter_lines())
    gen_api.answered += 1
    kinds = [e for e, _ in events]
    assert kinds[-1] == "done" and set(kinds[:-1]) <= {"token"}
    tokens = [d for e, d in events if e == "token"]
    done = events[-1][1]
    assert [t["index"] for t in tokens] == list(range(len(tokens)))
    assert len(tokens) == done["tokens"]["generated"]
    assert "".join(t["text"] for t in tokens) == done["text"]
    plain = gen_api.post(GEN, json=req).json()  # same seed, not streamed: same text
    assert plain["text"] == done["text"] and plain["finish_reason"] == done["finish_reason"]


def test_infer_has_the_first_reports_shape(gen_api: GenApi) -> None:
    r = gen_api.post("/infer", json={"prompt": "the patient", "max_length": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"prompt", "generated_text", "model_version", "tokens"}
    assert body["generated_text"].startswith("the patient") and body["model_version"] == "local"
    assert body["tokens"]["prompt"] + body["tokens"]["generated"] <= 10
    assert gen_api.post("/infer", json={"prompt": "what is"}).status_code == 200
    check_422(
        gen_api.post("/infer", json={"prompt": "the patient has a fever", "max_length": 2}),
        "max_length",
        "max_length_too_small",
    )


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"prompt": ""}, "prompt", "string_too_short"),
        ({"prompt": " \n\t "}, "prompt", "string_blank"),
        ({"prompt": "fever " * 100}, "prompt", "context_length"),
        ({"prompt": "x" * 2001}, "prompt", "string_too_long"),
        ({"prompt": "a", "max_new_tokens": 257}, "max_new_tokens", "less_than_equal"),
        ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens", "greater_than_equal"),
        ({"prompt": "a", "temperature": 0}, "temperature", "greater_than"),
        ({"prompt": "a", "temperature": -1.5}, "temperature", "greater_than"),
        ({"prompt": "a", "top_p": 0}, "top_p", "greater_than"),
        ({"prompt": "a", "top_p": 1.01}, "top_p", "less_than_equal"),
        ({"prompt": 42}, "prompt", "string_type"),
        ({"prompt": ["a"]}, "prompt", "string_type"),
        ({"prompt": "a", "max_new_tokens": "8"}, "max_new_tokens", "int_type"),
        ({"prompt": "a", "seed": -1}, "seed", "greater_than_equal"),
        ({"prompt": "a", "extra": 1}, "extra", "extra_forbidden"),
        ({}, "prompt", "missing"),
    ],
)
def test_bad_input_is_a_clear_422(gen_api: GenApi, body: Any, field: str, rule: str) -> None:
    check_422(gen_api.http.post(GEN, json=body), field, rule)
    if set(body) == {"prompt"}:
        check_422(gen_api.http.post("/infer", json=body), field, rule)


def test_non_json_and_streamed_validation_errors(gen_api: GenApi) -> None:
    bad = gen_api.http.post(
        GEN, content=b"{prompt: nope", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["type"] == "json_invalid"
    text = gen_api.http.post(GEN, content=b"the patient", headers={"content-type": "text/plain"})
    assert text.status_code == 415
    # validation comes before the stream starts: a plain JSON 422
    r = gen_api.http.post(GEN, params={"stream": "true"}, json={"prompt": "a", "top_p": 2})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")


def test_model_schema_metrics_and_the_classifier(gen_api: GenApi) -> None:
    model = gen_api.http.get("/v1/model").json()
    g = model["generator"]
    assert (g["family"], g["runtime"], g["context_length"]) == ("lm", "torch", 64)
    assert g["max_new_tokens_cap"] == 256 and model["model"]["family"] == "tfidf"
    schema = gen_api.http.get("/openapi.json").json()
    assert {"/v1/generate", "/infer"} <= set(schema["paths"])
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert props["max_new_tokens"]["maximum"] == 256 and props["prompt"]["maxLength"] == 2000
    assert props["top_p"]["maximum"] == 1 and props["temperature"]["exclusiveMinimum"] == 0
    assert gen_api.http.post("/v1/classify", json={"papers": [PAPER]}).status_code == 200
    assert gen_api.http.get("/readyz").status_code == 200
    text = gen_api.http.get("/metrics").text
    assert metric_value(text, "paperops_generation_tokens_total") > 0
    assert (
        metric_value(text, "paperops_generation_finished_total", {"finish_reason": "length"}) >= 1
    )
    for name in (
        "paperops_generation_time_to_first_token_seconds_count",
        "paperops_generation_tokens_per_second_count",
        "paperops_generation_batch_size_count",
    ):
        assert metric_value(text, name) >= 1, name
    assert "paperops_generation_active_sequences" in text
    assert "paperops_generation_queue_rejected_total" in text
    assert 'paperops_generator_info{family="lm"' in text


def test_concurrent_requests_share_decode_steps(gen_api: GenApi) -> None:
    def one(i: int) -> httpx.Response:
        return gen_api.post(GEN, json={"prompt": "the patient", "seed": i, "max_new_tokens": 20})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    before = gen_api.answered
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert gen_api.answered == before + 6


def test_request_log_has_one_row_per_answered_generation(gen_api: GenApi) -> None:
    answered = gen_api.answered
    gen_api.stop()  # SIGTERM: the log is flushed before the process exits
    from paperops.requestlog.queries import read_generations

    url = f"sqlite:///{gen_api.base / 'requests.db'}"
    rows = read_generations(url)
    assert len(rows) == answered
    assert {r["route"] for r in rows} == {"/v1/generate", "/infer"}
    assert all(r["status"] == 200 and r["prompt"] and r["seed"] is not None for r in rows)
    assert read_generations(url, limit=2) == rows[-2:]  # the most recent, oldest first


# --- no language model ------------------------------------------------------------------------


def test_without_a_generator_generate_is_503_and_classify_works(
    tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.mktemp("no_gen")
    with serve_cli(base, "--model", str(tfidf_bundle)) as url, httpx.Client(base_url=url) as c:
        r = c.post(GEN, json={"prompt": "the patient"})
        assert r.status_code == 503 and "Retry-After" in r.headers
        assert "no language model is loaded" in r.json()["error"]
        assert c.post("/infer", json={"prompt": "the patient"}).status_code == 503
        assert c.post("/v1/classify", json={"papers": [PAPER]}).status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.get("/v1/model").json()["generator"] is None


# --- in-process servers with a slowed or gated decoder ----------------------------------------


def test_a_client_disconnect_stops_generation(lm_bundle: Path, tmp_path: Path) -> None:
    gen, _ = steered_generator(lm_bundle, delay=0.02)  # 60 tokens: over a second
    db = tmp_path / "requests.db"
    settings = ServeSettings(request_log=RequestLogSettings(url=f"sqlite:///{db}"))
    app = create_app(
        settings, lambda spec: None, predictor=tiny_predictor(GatedRuntime()), generator=gen
    )
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        req = {"prompt": "the patient", "max_new_tokens": 200, "top_k": 1}
        with c.stream("POST", GEN, params={"stream": "true"}, json=req) as r:
            lines = r.iter_lines()
            seen = 0
            for line in lines:
                seen += line.startswith("event: token")
                if seen == 2:
                    break
        # the response is closed unread: the connection goes, the generation must stop
        deadline = time.monotonic() + 20
        cancelled = 0.0
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            labels = {"finish_reason": "cancelled"}
            cancelled = metric_value(text, "paperops_generation_finished_total", labels)
            if cancelled:
                break
            time.sleep(0.05)
        assert cancelled == 1
        engine = app.state.generator.engine
        assert engine.stats.tokens < 60
    rows = sqlite3.connect(db).execute("SELECT finish_reason, status FROM generations").fetchall()
    assert rows == [("cancelled", 499)]


def test_a_full_generation_queue_is_503_with_retry_after(lm_bundle: Path) -> None:
    gen, backend = steered_generator(lm_bundle, gated=True)
    settings = ServeSettings(generator=GeneratorSettings(max_batch_size=1, queue_size=1))
    app = create_app(
        settings, lambda spec: None, predictor=tiny_predictor(GatedRuntime()), generator=gen
    )
    req = {"prompt": "the patient", "max_new_tokens": 2}
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        results: list[int] = []

        def call() -> None:
            with httpx.Client(base_url=url, timeout=30) as own:
                results.append(own.post(GEN, json=req).status_code)

        first = threading.Thread(target=call)
        first.start()
        assert backend.entered.wait(20)  # held in the worker: the queue is empty
        second = threading.Thread(target=call)
        second.start()
        deadline = time.monotonic() + 20
        while app.state.generator.engine.queue_depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = c.post(GEN, json=req)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["detail"][0]["type"] == "queue_full"
        backend.gate.set()
        first.join(30)
        second.join(30)
        assert results == [200, 200]
        text = c.get("/metrics").text
        assert metric_value(text, "paperops_generation_queue_rejected_total") == 1


def test_background_load_and_a_required_generator_that_fails(lm_bundle: Path) -> None:
    from paperops.inference.generator import load_generator
    from paperops.models.base import ModelLoadError

    def broken() -> Any:
        raise ModelLoadError("no LM here on purpose")

    predictor = tiny_predictor(GatedRuntime())
    later = create_app(
        ServeSettings(),
        lambda spec: None,
        predictor=predictor,
        generator_loader=lambda: load_generator(lm_bundle),
    )
    with serve_app(later) as url, httpx.Client(base_url=url, timeout=30) as c:
        deadline = time.monotonic() + 30
        while c.get("/v1/model").json()["generator"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        r = c.post(GEN, json={"prompt": "the patient", "max_new_tokens": 3})
        assert r.status_code == 200, r.text
    required = ServeSettings(generator=GeneratorSettings(enabled=True))
    app = create_app(
        required,
        lambda spec: None,
        predictor=tiny_predictor(GatedRuntime()),
        generator_loader=broken,
    )
    with serve_app(app, ready_path="/healthz") as url, httpx.Client(base_url=url) as c:
        deadline = time.monotonic() + 30
        while "on purpose" not in c.get("/readyz").text and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "on purpose" in ready.json()["reason"]
        r = c.post(GEN, json={"prompt": "the patient"})
        assert r.status_code == 503 and "on purpose" in r.json()["error"]
        assert c.post("/v1/classify", json={"papers": [PAPER]}).status_code == 200
