"""Hot reload under load: `/v1/admin/reload` swaps the model while clients keep sending requests,
and not one of them fails.

Both servers are `paperops serve` child processes on 127.0.0.1. The load is bounded in count and
time: 8 clients, stopped after a fixed number of answers from the new model or a deadline.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from paperops.cli import app as cli
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import serve_cli

pytestmark = pytest.mark.integration

TOKEN = "reload-token-5678"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in make_records(DEFAULT_COUNTS)]
CLIENTS = 8
MAX_REQUESTS = 20_000  # a hard bound, far above what the test needs
THINK_S = 0.002  # each client's pause between requests (the reload itself can take seconds)
DEADLINE_S = 120.0


@dataclass
class Answer:
    started: float
    finished: float
    status: int
    model: str
    error: str = ""


async def load_with_reload(
    url: str, reload_body: dict[str, Any], *, before: int = 40, after: int = 40
) -> tuple[list[Answer], httpx.Response, float]:
    """CLIENTS clients classify without pause; after `before` answers one reload runs; the load
    stops once `after` requests that started after the reload returned have been answered (or at
    the deadline / MAX_REQUESTS)."""
    answers: list[Answer] = []
    state: dict[str, Any] = {"reloaded_at": None, "reply": None}
    stop = asyncio.Event()
    deadline = time.monotonic() + DEADLINE_S

    async def client(s: httpx.AsyncClient, c: int) -> None:
        i = c
        while not stop.is_set() and len(answers) < MAX_REQUESTS and time.monotonic() < deadline:
            paper = PAPERS[i % len(PAPERS)]
            i += CLIENTS
            t0 = time.monotonic()
            try:
                r = await s.post("/v1/classify", json={"papers": [paper]})
                body = r.json()
                name = (
                    body["model"]["name"] + " v" + body["model"]["version"] if r.is_success else ""
                )
                answers.append(
                    Answer(
                        t0, time.monotonic(), r.status_code, name, "" if r.is_success else r.text
                    )
                )
            except httpx.HTTPError as e:  # a dropped connection is a failed request too
                answers.append(Answer(t0, time.monotonic(), 0, "", repr(e)))
            done_after = state["reloaded_at"] and sum(
                1 for a in answers if a.started > state["reloaded_at"]
            )
            if done_after and done_after >= after:
                stop.set()
            await asyncio.sleep(THINK_S)

    async def reloader(s: httpx.AsyncClient) -> None:
        while len(answers) < before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        state["reply"] = await s.post(
            "/v1/admin/reload", json=reload_body, headers=AUTH, timeout=120
        )
        state["reloaded_at"] = time.monotonic()
        if not state["reply"].is_success:
            stop.set()

    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as s:
        await asyncio.gather(reloader(s), *(client(s, c) for c in range(CLIENTS)))
    return answers, state["reply"], state["reloaded_at"]


@pytest.fixture(scope="module")
def two_models(
    tfidf_bundle: Path, embedding_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("models")
    a = Path(shutil.copytree(tfidf_bundle, base / "model-a"))
    b = Path(shutil.copytree(embedding_bundle, base / "model-b"))
    return a, b


def test_reload_under_load_drops_nothing(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_models
    with (
        serve_cli(tmp_path, "--model", str(a), env={"PAPEROPS_ADMIN_TOKEN": TOKEN}) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        # no token / a wrong token: refused, nothing changes
        assert http.post("/v1/admin/reload", json={"model": str(b)}).status_code == 401
        wrong = {"Authorization": "Bearer " + TOKEN[:-1]}
        r = http.post("/v1/admin/reload", json={"model": str(b)}, headers=wrong)
        assert r.status_code == 403
        # a broken model: 409 with the reason, and A keeps serving
        r = http.post("/v1/admin/reload", json={"model": str(tmp_path / "nope")}, headers=AUTH)
        assert r.status_code == 409 and "does not exist" in r.json()["error"]
        assert http.get("/v1/model").json()["model"]["name"] == "model-a"
        assert http.post("/predict", json=PAPERS[0]).status_code == 200

        answers, reply, reloaded_at = asyncio.run(load_with_reload(url, {"model": str(b)}))
        assert reply.status_code == 200, reply.text
        assert reply.json()["previous"]["name"] == "model-a"
        assert reply.json()["current"] == {
            "name": "model-b", "version": "local", "family": "embedding", "runtime": "torch",
        }  # fmt: skip
        failed = [x for x in answers if x.status != 200]
        assert not failed, failed[:3]
        served = {x.model for x in answers}
        assert served == {"model-a vlocal", "model-b vlocal"}
        # once the reload has answered, every new request gets the new model
        assert {x.model for x in answers if x.started > reloaded_at} == {"model-b vlocal"}
        assert sum(x.started > reloaded_at for x in answers) >= 40
        body = http.get("/v1/model").json()["model"]
        assert (body["name"], body["family"]) == ("model-b", "embedding")
        metrics = http.get("/metrics").text
        assert 'paperops_model_reloads_total{result="ok"} 1.0' in metrics
        assert 'paperops_model_reloads_total{result="error"} 1.0' in metrics
        assert 'paperops_model_info{family="embedding",name="model-b"' in metrics


# --- the registry: serve the champion, promote another version, reload by ref ----------------

runner = CliRunner()


def registry_overrides(tmp_path: Path, prepared: Path, *, tfidf: bool = True) -> list[str]:
    return [
        f"train.processed_dir={prepared}",
        f"logger.tracking_uri=sqlite:///{tmp_path}/mlruns/mlflow.db",
        f"logger.artifact_location={tmp_path}/mlruns/artifacts",
        f"paths.reports={tmp_path}/reports",
        f"paths.work={tmp_path}/outputs",
        *(["model.min_df=1"] if tfidf else []),
        "evaluate.alpha=0.2",  # the tiny calibration split has 6 rows
    ]


def cli_ok(*args: str) -> str:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_reload_the_champion_after_a_promotion(tmp_path: Path, prepared_dir: Path) -> None:
    ov = registry_overrides(tmp_path, prepared_dir)
    out = cli_ok("train", "experiment=tfidf", f"train.output_dir={tmp_path}/m1", *ov)
    assert "v1" in out
    out = cli_ok(
        "train",
        "experiment=tfidf",
        "model.classifier=logreg",
        f"train.output_dir={tmp_path}/m2",
        *ov,
    )
    assert "v2" in out and "champion stays v1" in out
    logger_ov = ov[1:3]
    with (
        serve_cli(tmp_path / "srv", *logger_ov, env={"PAPEROPS_ADMIN_TOKEN": TOKEN}) as url,
        httpx.Client(base_url=url, timeout=60) as http,
    ):
        m = http.get("/v1/model").json()["model"]
        assert (m["name"], m["version"]) == ("paperops-classifier", "1")
        assert m["source"] == "models:/paperops-classifier@champion"
        first = http.post("/v1/classify", json={"papers": PAPERS[:1]}).json()
        assert first["model"]["version"] == "1"

        cli_ok("models", "promote", "2", "--force", *logger_ov)
        r = http.post("/v1/admin/reload", json={"ref": "champion"}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["previous"]["version"] == "1" and r.json()["current"]["version"] == "2"
        answer = http.post("/v1/classify", json={"papers": PAPERS[:1]}).json()
        assert answer["model"]["version"] == "2"
        m = http.get("/v1/model").json()["model"]
        assert m["version"] == "2" and m["source"] == "models:/paperops-classifier@champion"

        r = http.post("/v1/admin/reload", json={"ref": "1"}, headers=AUTH)  # a version
        assert r.status_code == 200 and r.json()["current"]["version"] == "1"
        m = http.get("/v1/model").json()["model"]
        assert m["source"] == "models:/paperops-classifier/1"
        r = http.post("/v1/admin/reload", json={"ref": "99"}, headers=AUTH)
        assert r.status_code == 409 and "no version 99" in r.json()["error"]
        assert "still serving paperops-classifier v1" in r.json()["error"]


def test_serving_an_empty_registry_fails_fast_with_the_fix(tmp_path: Path) -> None:
    result = runner.invoke(
        cli,
        [
            "serve",
            f"logger.tracking_uri=sqlite:///{tmp_path}/none/mlflow.db",
            f"serve.request_log.url=sqlite:///{tmp_path}/requests.db",
        ],
    )
    assert result.exit_code == 2
    assert "paperops train" in result.output and "--model" in result.output


@pytest.mark.slow
def test_a_registered_neural_champion_is_exported_and_served_with_onnx(
    tmp_path: Path, prepared_dir: Path, tiny_encoder_dir: Path
) -> None:
    """No --model: the champion (an embedding model) is downloaded, exported to ONNX once
    (serve.export_dir) and served by ONNX Runtime; a reload of the same version reuses it."""
    ov = registry_overrides(tmp_path, prepared_dir, tfidf=False)
    cli_ok(
        "train",
        "experiment=embedding",
        f"train.output_dir={tmp_path}/emb",
        f"model.encoder={tiny_encoder_dir}",
        f"model.cache_dir={tmp_path}/cache",
        "model.hidden_dim=64",
        "model.lr=0.02",
        "model.batch_size=16",
        "trainer.accelerator=cpu",
        "trainer.num_threads=1",
        "trainer.max_epochs=5",
        "trainer.enable_progress_bar=false",
        *ov,
    )
    base = tmp_path / "srv"
    with (
        serve_cli(base, *ov[1:3], env={"PAPEROPS_ADMIN_TOKEN": TOKEN}) as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        m = http.get("/v1/model").json()["model"]
        assert (m["family"], m["version"]) == ("embedding", "1")
        assert m["runtime"].startswith("onnx") and m["export"]
        exported = base / "models" / "export" / "paperops-classifier-v1"
        assert (exported / "export.json").is_file()
        r = http.post("/v1/classify", json={"papers": PAPERS[:4]})
        assert r.status_code == 200 and r.json()["model"]["runtime"] == m["runtime"]
        r = http.post("/v1/admin/reload", json={"ref": "champion"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["current"]["runtime"] == m["runtime"]
