"""The API through real uvicorn servers on 127.0.0.1, over TCP with httpx.

The main server is `paperops serve --model <tfidf bundle>` as a child process (CLI, config,
lifespan, request log in SQLite: everything as a user runs it); tests that need an inference
they can hold still (a full queue, a model that is still loading) run the app factory on uvicorn
in a thread with a gated runtime. The module ends by stopping the main server and counting the
request log's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from paperops.inference.predictor import load_predictor
from paperops.serve.app import STATIC_DIR, create_app
from paperops.serve.launcher import free_port, paperops_command, running_process
from paperops.serve.settings import BatchingSettings, Limits, ServeSettings
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import (
    TEST_ENV,
    GatedRuntime,
    cli_overrides,
    serve_app,
    serve_cli,
    tiny_predictor,
)

pytestmark = pytest.mark.integration

TOKEN = "test-admin-token-1234"
RECORDS = make_records(DEFAULT_COUNTS, seed=7)  # unseen papers with the training vocabulary
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in RECORDS]
ARCHIVE = [r["categories"].split()[0].split(".")[0] for r in RECORDS]


class Api:
    """The running main server: its URL, its files, and a way to stop it before the end."""

    def __init__(self, base: Path, model: Path) -> None:
        self.base = base
        self.model = model
        self.url = ""
        self.stack = contextlib.ExitStack()
        self.client: httpx.Client | None = None

    @property
    def http(self) -> httpx.Client:
        assert self.client is not None, "the server was stopped"
        return self.client

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        self.stack.close()


@pytest.fixture(scope="module")
def api(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    base = tmp_path_factory.mktemp("api")
    handle = Api(base, Path(shutil.copytree(tfidf_bundle, base / "model")))
    with handle.stack:
        handle.url = handle.stack.enter_context(
            serve_cli(
                base,
                "--model",
                str(handle.model),
                "serve.benchmark_endpoints=true",
                env={"PAPEROPS_ADMIN_TOKEN": TOKEN},
            )
        )
        handle.client = httpx.Client(base_url=handle.url, timeout=30)
        yield handle
        handle.stop()


def check_error(r: httpx.Response, status: int, loc: list[Any] | None, words: str) -> None:
    """The standard error body: a one-line `error` and `detail` items naming field and rule."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str)
    assert body["detail"] and all(set(d) == {"loc", "msg", "type"} for d in body["detail"])
    if loc is not None:
        assert loc in [d["loc"] for d in body["detail"]], body
        item = next(d for d in body["detail"] if d["loc"] == loc)
        assert words in item["msg"], item
    else:
        assert any(words in d["msg"] for d in body["detail"]), body
    assert words in body["error"], body


# --- every endpoint ---------------------------------------------------------------------------


def test_probes_docs_schema_and_page(api: Api) -> None:
    health = api.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = api.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    docs = api.http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = api.http.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {"/v1/classify", "/predict", "/v1/model", "/v1/feedback", "/v1/admin/reload"} <= paths
    assert {"/healthz", "/readyz", "/metrics"} <= paths
    assert "/v1/noop" not in paths  # a benchmark aid, hidden from the schema
    paper = schema["components"]["schemas"]["Paper"]["properties"]
    assert paper["title"]["maxLength"] == 500 and paper["abstract"]["maxLength"] == 6000
    example = schema["components"]["schemas"]["ClassifyRequest"]["examples"][0]
    assert api.http.post("/v1/classify", json=example).status_code == 200  # the docs' example works
    page = api.http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in ("app.js", "style.css"):
        if (STATIC_DIR / name).is_file():
            assert api.http.get(f"/static/{name}").status_code == 200
    assert api.http.post("/v1/noop", json={"papers": [PAPERS[0]]}).json() == {"papers": 1}
    check_error(
        api.http.post("/v1/noop", json={"papers": []}), 422, ["body", "papers"], "at least 1"
    )


def test_model_endpoint(api: Api) -> None:
    body = api.http.get("/v1/model").json()
    m = body["model"]
    assert (m["name"], m["family"], m["runtime"]) == ("model", "tfidf", "sklearn")
    assert m["source"] == str(api.model) and m["n_labels"] == 4
    assert m["coverage_target"] == pytest.approx(0.8) and m["conformal_method"]
    assert {x["label"] for x in body["labels"]} == {"cs", "math", "hep-th", "astro-ph"}
    assert {x["name"] for x in body["labels"]} >= {"Computer Science", "Mathematics"}
    assert body["limits"]["max_papers"] == 64 and body["limits"]["max_body_bytes"] == 1048576
    assert body["batching"]["max_batch_size"] == 32


def test_classify_answers_every_paper_in_order(api: Api) -> None:
    papers = [{**p, "id": f"paper-{i}"} for i, p in enumerate(PAPERS[:6])]
    r = api.http.post("/v1/classify", json={"papers": papers, "top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == r.headers["x-request-id"] and len(body["request_id"]) == 32
    assert body["model"] == {
        "name": "model",
        "version": "local",
        "family": "tfidf",
        "runtime": "sklearn",
    }
    assert body["coverage_target"] == pytest.approx(0.8)
    assert [x["id"] for x in body["results"]] == [p["id"] for p in papers]
    for res, truth in zip(body["results"], ARCHIVE[:6], strict=True):
        assert res["label"] == truth  # unseen papers in the training vocabulary
        assert len(res["top"]) == 2 and res["top"][0]["label"] == res["label"]
        assert res["top"][0]["probability"] >= res["top"][1]["probability"]
        assert res["confidence"] == res["top"][0]["probability"] and 0 < res["confidence"] <= 1
        assert res["name"] and all(set(s) == {"label", "name", "probability"} for s in res["top"])
        # an archive model: the archive is the label itself (a category model sums its categories)
        assert res["archive"]["label"] == res["label"]
        assert res["archive"]["probability"] == pytest.approx(res["confidence"], abs=1e-6)
        assert all(
            s["label"] in {"cs", "math", "hep-th", "astro-ph"} for s in res["prediction_set"]
        )


def test_predict_keeps_the_first_reports_shape(api: Api) -> None:
    r = api.http.post("/predict", json=PAPERS[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"top_category", "predictions"} and body["top_category"] == ARCHIVE[0]
    assert len(body["predictions"]) == 3  # serve.limits.default_top_k
    assert all(set(p) == {"category", "confidence"} for p in body["predictions"])
    assert body["predictions"][0]["category"] == body["top_category"]
    assert len(r.headers["x-request-id"]) == 32


# --- bad input: always a 4xx naming the field and the rule -----------------------------------

JSON = {"content-type": "application/json"}
GOOD = PAPERS[0]


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


BAD_INPUT = [
    # (id, path, body, headers, status, loc, words)
    ("blank-title", "/v1/classify", _body({"papers": [{**GOOD, "title": " \t\n"}]}), JSON, 422,
     ["body", "papers", 0, "title"], "title must contain text"),
    ("empty-abstract", "/v1/classify", _body({"papers": [{**GOOD, "abstract": ""}]}), JSON, 422,
     ["body", "papers", 0, "abstract"], "at least 1 character"),
    ("long-title", "/v1/classify", _body({"papers": [{**GOOD, "title": "x" * 501}]}), JSON, 422,
     ["body", "papers", 0, "title"], "at most 500 characters"),
    ("long-abstract", "/v1/classify", _body({"papers": [{**GOOD, "abstract": "y" * 6001}]}),
     JSON, 422, ["body", "papers", 0, "abstract"], "at most 6000 characters"),
    ("title-number", "/v1/classify", _body({"papers": [{**GOOD, "title": 7}]}), JSON, 422,
     ["body", "papers", 0, "title"], "valid string"),
    ("top-k-string", "/v1/classify", _body({"papers": [GOOD], "top_k": "3"}), JSON, 422,
     ["body", "top_k"], "valid integer"),
    ("top-k-too-big", "/v1/classify", _body({"papers": [GOOD], "top_k": 21}), JSON, 422,
     ["body", "top_k"], "less than or equal to 20"),
    ("extra-paper-field", "/v1/classify", _body({"papers": [{**GOOD, "year": 2020}]}), JSON, 422,
     ["body", "papers", 0, "year"], "Extra inputs are not permitted"),
    ("extra-field", "/v1/classify", _body({"papers": [GOOD], "model": "x"}), JSON, 422,
     ["body", "model"], "Extra inputs are not permitted"),
    ("too-many-papers", "/v1/classify", _body({"papers": [GOOD] * 65}), JSON, 422,
     ["body", "papers"], "at most 64 items"),
    ("no-papers", "/v1/classify", _body({"papers": []}), JSON, 422, ["body", "papers"],
     "at least 1 item"),
    ("papers-not-a-list", "/v1/classify", _body({"papers": GOOD}), JSON, 422, ["body", "papers"],
     "valid list"),
    ("body-is-a-list", "/v1/classify", _body([GOOD]), JSON, 422, ["body"], "valid dictionary"),
    ("malformed-json", "/v1/classify", b'{"papers": [', JSON, 422, None, "malformed JSON"),
    ("invalid-utf8", "/v1/classify", b'{"papers": [{"title": "caf\xe9", "abstract": "x"}]}',
     JSON, 422, None, "not valid UTF-8"),
    ("lone-surrogate", "/v1/classify", b'{"papers": [{"title": "a\\ud800", "abstract": "x"}]}',
     JSON, 422, ["body", "papers", 0, "title"], "unicode"),
    ("deep-nesting", "/v1/classify", b"[" * 100_000, JSON, 422, None, "could not be parsed"),
    ("text-plain", "/v1/classify", _body({"papers": [GOOD]}), {"content-type": "text/plain"},
     415, ["header", "content-type"], "Content-Type must be application/json"),
    ("no-content-type", "/v1/classify", _body({"papers": [GOOD]}), {}, 415,
     ["header", "content-type"], "Content-Type must be application/json"),
    ("predict-blank-abstract", "/predict", _body({**GOOD, "abstract": "   "}), JSON, 422,
     ["body", "abstract"], "abstract must contain text"),
    ("predict-missing-title", "/predict", _body({"abstract": "x"}), JSON, 422, ["body", "title"],
     "Field required"),
    ("predict-null-title", "/predict", _body({**GOOD, "title": None}), JSON, 422,
     ["body", "title"], "valid string"),
    ("feedback-bad-id", "/v1/feedback", _body({"request_id": "abc", "label": "cs"}), JSON, 422,
     ["body", "request_id"], "should match pattern"),
    ("feedback-index", "/v1/feedback", _body({"request_id": "a" * 32, "label": "cs", "index": 64}),
     JSON, 422, ["body", "index"], "less than or equal to 63"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "loc", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_gets_a_clear_4xx(
    api: Api,
    path: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    loc: list[Any] | None,
    words: str,
) -> None:
    r = api.http.post(path, content=content, headers=headers)
    check_error(r, status, loc, words)


def test_unknown_paths_and_methods(api: Api) -> None:
    check_error(api.http.get("/v2/classify"), 404, [], "no such endpoint: GET /v2/classify")
    check_error(api.http.get("/v1/classify"), 405, [], "GET is not allowed on /v1/classify")


def test_oversize_bodies_get_413_with_and_without_content_length(api: Api) -> None:
    big = _body({"papers": [{"title": "t", "abstract": "z" * 1_100_000}]})
    r = api.http.post("/v1/classify", content=big, headers=JSON)
    check_error(r, 413, ["body"], "larger than 1048576 bytes (serve.limits.max_body_bytes)")

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    with httpx.Client(base_url=api.url, timeout=30) as fresh:
        r = fresh.post("/v1/classify", content=chunks(), headers=JSON)
    assert "content-length" not in r.request.headers
    check_error(r, 413, ["body"], "larger than 1048576 bytes")
    assert api.http.get("/readyz").status_code == 200  # still serving


# --- feedback and admin ------------------------------------------------------------------------


def test_feedback_flow(api: Api) -> None:
    r = api.http.post("/v1/classify", json={"papers": PAPERS[:2]})
    rid = r.json()["request_id"]
    ok = api.http.post("/v1/feedback", json={"request_id": rid, "label": "math", "index": 1})
    assert ok.status_code == 202, ok.text
    assert ok.json() == {"status": "accepted", "request_id": rid, "index": 1, "label": "math"}
    pid = api.http.post("/predict", json=PAPERS[3]).headers["x-request-id"]
    assert api.http.post("/v1/feedback", json={"request_id": pid, "label": "cs"}).status_code == 202
    check_error(
        api.http.post("/v1/feedback", json={"request_id": "f" * 32, "label": "cs"}),
        404,
        ["body", "request_id"],
        "no request ffff",
    )
    check_error(
        api.http.post("/v1/feedback", json={"request_id": rid, "label": "biology"}),
        422,
        ["body", "label"],
        "label 'biology' is not one of the model's labels",
    )


def test_admin_needs_the_bearer_token(api: Api) -> None:
    r = api.http.post("/v1/admin/reload", json={"ref": "champion"})
    check_error(r, 401, ["header", "authorization"], "missing bearer token")
    assert r.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer not-the-token"}
    check_error(api.http.post("/v1/admin/reload", headers=wrong), 403, None, "invalid admin token")
    good = {"Authorization": f"Bearer {TOKEN}"}
    r = api.http.post("/v1/admin/reload", json={"model": str(api.base / "nope")}, headers=good)
    check_error(r, 409, None, "reload failed")
    assert "still serving model vlocal" in r.json()["error"]
    r = api.http.post("/v1/admin/reload", headers=good)  # empty body: reload the same model
    assert r.status_code == 200 and r.json()["current"]["name"] == "model"


def test_cors_is_closed_by_default(api: Api) -> None:
    r = api.http.options(
        "/v1/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in r.headers


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_clients_each_get_their_own_answers(api: Api) -> None:
    """32 clients x 4 requests of 1-3 papers; every answer equals the model's own answer for
    that paper (computed here, in process), so batching never mixes up results."""
    expected = load_predictor(api.model, threads=1).predict_papers(
        [(p["title"], p["abstract"]) for p in PAPERS], top_k=3
    )
    jobs = []
    for c in range(32):
        for k in range(4):
            start = (c * 4 + k) % len(PAPERS)
            idx = [(start + j) % len(PAPERS) for j in range(1 + (c + k) % 3)]
            jobs.append(idx)

    async def client(session: httpx.AsyncClient, mine: list[list[int]]) -> list[Any]:
        out = []
        for idx in mine:
            papers = [{**PAPERS[i], "id": str(i)} for i in idx]
            r = await session.post("/v1/classify", json={"papers": papers})
            out.append((idx, r.status_code, r.json()))
        return out

    async def run() -> list[Any]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits) as s:
            per_client = [jobs[i * 4 : i * 4 + 4] for i in range(32)]
            results = await asyncio.gather(*(client(s, m) for m in per_client))
        return [x for r in results for x in r]

    answers = asyncio.run(asyncio.wait_for(run(), 120))
    assert len(answers) == 128
    for idx, status, body in answers:
        assert status == 200, body
        assert [int(r["id"]) for r in body["results"]] == idx
        for i, res in zip(idx, body["results"], strict=True):
            want = expected[i]
            assert res["label"] == want.label and res["confidence"] == want.confidence
            assert [s["label"] for s in res["prediction_set"]] == [
                s.label for s in want.prediction_set
            ]


# --- metrics and the request log (last: stops the server) -------------------------------------


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


METRICS = [
    "paperops_http_requests_total",
    "paperops_http_request_duration_seconds_bucket",
    "paperops_http_requests_in_flight",
    "paperops_inference_duration_seconds_count",
    "paperops_batch_size_bucket",
    "paperops_queue_depth",
    "paperops_queue_rejected_total",
    "paperops_input_length_chars_bucket",
    "paperops_predictions_total",
    "paperops_prediction_confidence_bucket",
    "paperops_prediction_set_size_bucket",
    "paperops_model_info",
    "paperops_ready",
    "paperops_model_reloads_total",
    "paperops_request_log_written_total",
    "paperops_request_log_dropped_total",
    "paperops_feedback_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "python_info",
]


def test_metrics_after_traffic(api: Api) -> None:
    r = api.http.post("/v1/classify", json={"papers": PAPERS[:3]})
    api.http.post("/v1/feedback", json={"request_id": r.json()["request_id"], "label": "cs"})
    m = scrape(api.url)
    missing = [name for name in METRICS if name not in m]
    assert not missing, missing

    def total(name: str, **labels: str) -> float:
        return sum(
            v for k, v in m[name].items() if all(dict(k).get(a) == b for a, b in labels.items())
        )

    assert total("paperops_http_requests_total", route="/v1/classify", status="200") >= 1
    assert total("paperops_http_requests_total", route="/v1/classify", status="422") >= 1
    assert not any("/v2" in dict(k)["route"] for k in m["paperops_http_requests_total"])
    assert total("paperops_http_request_duration_seconds_count", route="/v1/classify") >= 1
    assert total("paperops_http_requests_in_flight") >= 1  # this scrape
    papers = total("paperops_input_length_chars_count")
    assert papers >= 3 and total("paperops_predictions_total") == papers
    assert total("paperops_prediction_confidence_count") == papers
    assert total("paperops_prediction_set_size_count") == papers
    assert 1 <= total("paperops_batch_size_count") <= total("paperops_batch_size_sum")
    assert total("paperops_inference_duration_seconds_count", runtime="sklearn") >= 1
    assert total("paperops_queue_depth") == 0 and total("paperops_queue_rejected_total") == 0
    assert total("paperops_ready") == 1  # what /readyz says, for the PaperopsNotReady alert
    info = next(iter(m["paperops_model_info"]))
    assert dict(info) == {
        "name": "model",
        "version": "local",
        "family": "tfidf",
        "runtime": "sklearn",
    }
    assert total("paperops_feedback_total") >= 1
    assert total("paperops_request_log_dropped_total") == 0
    assert total("process_resident_memory_bytes") > 10e6


def test_request_log_holds_every_request_after_shutdown(api: Api) -> None:
    """Stops the server (SIGTERM): the log is flushed, and every answered classify/predict
    request and feedback is in it."""
    m = scrape(api.url)
    answered = sum(
        v
        for k, v in m["paperops_http_requests_total"].items()
        if dict(k)["route"] in ("/v1/classify", "/predict") and dict(k)["status"] == "200"
    )
    papers = sum(m["paperops_input_length_chars_count"].values())
    feedback = sum(m["paperops_feedback_total"].values())
    api.stop()
    db = sqlite3.connect(api.base / "requests.db")
    try:
        n_requests = db.execute("SELECT count(*) FROM requests").fetchone()[0]
        n_predictions = db.execute("SELECT count(*) FROM predictions").fetchone()[0]
        n_feedback = db.execute("SELECT count(*) FROM feedback").fetchone()[0]
        routes = {r[0] for r in db.execute("SELECT DISTINCT route FROM requests")}
    finally:
        db.close()
    assert answered >= 100 and n_requests == answered
    assert n_predictions == papers and n_feedback == feedback
    assert routes == {"/v1/classify", "/predict"}
    lines = (api.base / "server.log").read_text().splitlines()
    closed = [json.loads(x)["msg"] for x in lines if "request log closed" in x]
    assert closed and closed[0].endswith("rows written, 0 dropped")


# --- servers in a thread: a held inference, a model still loading, CORS ------------------------


def small_settings(**kw: Any) -> ServeSettings:
    return ServeSettings(
        batching=BatchingSettings(max_batch_size=2, max_wait_ms=0, queue_size=2, retry_after_s=7),
        limits=Limits(max_papers=2),
        **kw,
    )


def test_a_full_queue_gives_503_with_retry_after() -> None:
    rt = GatedRuntime(gated=True)
    p = tiny_predictor(rt)
    app = create_app(small_settings(), lambda spec: p, predictor=p)
    two = {"papers": [{"title": "a", "abstract": "paper 1"}, {"title": "b", "abstract": "paper 2"}]}

    async def go(url: str) -> tuple[httpx.Response, ...]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as s:
            first = asyncio.ensure_future(s.post("/v1/classify", json=two))
            while not rt.entered.is_set():  # bounded by the test timeout below
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(s.post("/v1/classify", json=two))
            for _ in range(1000):  # the second request fills the queue (2 papers)
                depth = scrape(url)["paperops_queue_depth"][()]
                if depth == 2:
                    break
                await asyncio.sleep(0.01)
            third = await s.post("/predict", json={"title": "c", "abstract": "paper 3"})
            rt.gate.set()
            return await first, await second, third

    try:
        with serve_app(app) as url:
            first, second, third = asyncio.run(asyncio.wait_for(go(url), 60))
            rejected = scrape(url)["paperops_queue_rejected_total"][()]
    finally:
        rt.gate.set()
    assert first.status_code == 200 and second.status_code == 200
    check_error(third, 503, None, "the inference queue is full")
    assert third.headers["retry-after"] == "7" and rejected == 1
    assert [x["label"] for x in second.json()["results"]] == [
        rt.label_of("paper 1"),
        rt.label_of("paper 2"),
    ]


def test_not_ready_while_the_model_loads_or_after_it_failed() -> None:
    release = threading.Event()
    rt = GatedRuntime()

    def slow_loader(spec: dict[str, Any] | None) -> Any:
        if not release.wait(30):
            raise TimeoutError("never released")
        return tiny_predictor(rt, version="9")

    app = create_app(small_settings(), slow_loader)
    with serve_app(app, ready_path="/healthz") as url:
        assert httpx.get(url + "/healthz").json()["status"] == "ok"
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and "still loading" in r.json()["reason"]
        r = httpx.post(url + "/predict", json={"title": "t", "abstract": "paper 1"})
        check_error(r, 503, None, "still loading")
        assert r.headers["retry-after"] == "7"
        release.set()
        for _ in range(500):
            if httpx.get(url + "/readyz").status_code == 200:
                break
            threading.Event().wait(0.02)
        assert httpx.get(url + "/v1/model").json()["model"]["version"] == "9"

    def broken(spec: dict[str, Any] | None) -> Any:
        raise FileNotFoundError("/models/missing/model.json not found")

    with serve_app(create_app(small_settings(), broken), ready_path="/healthz") as url:
        for _ in range(500):
            r = httpx.get(url + "/readyz")
            if "failed" in r.json()["reason"]:
                break
            threading.Event().wait(0.02)
        assert r.status_code == 503
        assert (
            "the model failed to load: /models/missing/model.json not found" in r.json()["reason"]
        )


def test_cors_allows_only_the_configured_origins() -> None:
    p = tiny_predictor(GatedRuntime())
    app = create_app(
        small_settings(cors_origins=("https://papers.example.org",)), lambda s: p, predictor=p
    )
    with serve_app(app) as url:
        pre = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        ok = httpx.options(
            url + "/v1/classify", headers={"Origin": "https://papers.example.org", **pre}
        )
        assert ok.headers["access-control-allow-origin"] == "https://papers.example.org"
        bad = httpx.options(url + "/v1/classify", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in bad.headers
        r = httpx.post(
            url + "/predict",
            json={"title": "t", "abstract": "paper 1"},
            headers={"Origin": "https://papers.example.org"},
        )
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


# --- the CLI's start modes -----------------------------------------------------------------------


def test_wait_ready_serves_health_while_a_broken_model_is_reported(tmp_path: Path) -> None:
    """--wait-ready: the port opens at once; /healthz is 200 and /readyz says why not ready."""
    port = free_port()
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    cmd = [
        *paperops_command(), "serve", "--wait-ready", "--model", str(broken),
        "--host", "127.0.0.1", "--port", str(port), *cli_overrides(tmp_path),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(cmd, url, ready_path="/healthz", env=TEST_ENV, cwd=tmp_path):
        for _ in range(500):
            r = httpx.get(url + "/readyz")
            if "failed" in r.json()["reason"]:
                break
            threading.Event().wait(0.02)
        assert r.status_code == 503 and "model.json not found" in r.json()["reason"]


def test_fail_fast_exits_2_with_the_reason(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from paperops.cli import app

    result = CliRunner().invoke(
        app, ["serve", "--model", str(tmp_path / "missing"), *cli_overrides(tmp_path)]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.output and str(tmp_path / "missing") in result.output
