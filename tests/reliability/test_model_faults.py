"""A broken model never takes the API down: at start it is reported, on reload it is refused.

Behaviour under test (`paperops serve`, child processes on 127.0.0.1):

- A `--model` path that does not exist is a typo in the command line, not a model fault: both
  start modes exit 2 at once with the path in the message (a crash loop with the reason in the
  pod log is the fastest signal for that, and waiting cannot fix it).
- A bundle that exists but cannot be loaded (a weight file missing, truncated or garbage, a
  garbled model.json): with `--wait-ready` (what deploy/k8s and Cloud Run run) the process stays
  up: /healthz 200 (so the liveness probe does not restart it into a crash loop), /readyz 503 and
  /v1/classify 503 naming the file and what is wrong, `paperops_ready 0` (the alert), the reason
  in the log. Putting a good model in place and calling /v1/admin/reload makes it ready without
  a restart. With the default `--fail-fast` (a person at a terminal) it exits 2 with the reason.
- `/v1/admin/reload` to a broken bundle answers 409 with the reason while the old model keeps
  answering every request of a concurrent load; `paperops_model_reloads_total{result="error"}`
  counts each refusal.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from paperops.serve.launcher import free_port, paperops_command
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import TEST_ENV, cli_overrides, serve_cli
from tests.reliability.helpers import metric_value, serve_unready, wait_for

pytestmark = pytest.mark.integration

TOKEN = "faults-token-2468"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN_ENV = {"PAPEROPS_ADMIN_TOKEN": TOKEN}
PAPERS = [{"title": r["title"], "abstract": r["abstract"]} for r in make_records(DEFAULT_COUNTS)]


# --- the faults: each breaks a copy of a good bundle and says what the message must name ------


@dataclass(frozen=True)
class Fault:
    name: str
    source: str  # which good model it breaks: "tfidf" | "embedding" | "onnx"
    breaks: Callable[[Path], None]
    names: str  # the file (or directory) the message must name
    says: str  # and what it must say about it


def _truncate(name: str) -> Callable[[Path], None]:
    def breaks(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 3])

    return breaks


def _garbage(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(b"\x00garbage, not a weight file\xff" * 40)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def _edit_meta(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def breaks(d: Path) -> None:
        meta = json.loads((d / "model.json").read_text())
        edit(meta)
        (d / "model.json").write_text(json.dumps(meta))

    return breaks


FAULTS = [
    Fault("skops-missing", "tfidf", _remove("model.skops"), "model.skops", "not found"),
    # the tfidf loader names the bundle directory for an unreadable weight file
    Fault("skops-truncated", "tfidf", _truncate("model.skops"), "", "is corrupt (BadZipFile"),
    Fault(
        "safetensors-garbage",
        "embedding",
        _garbage("head.safetensors"),
        "head.safetensors",
        "is corrupt",
    ),
    Fault("onnx-truncated", "onnx", _truncate("model.onnx"), "model.onnx", "cannot be loaded"),
    Fault(
        "meta-garbled",
        "onnx",  # model.json of an ONNX export: read first, whatever the runtime
        lambda d: (d / "model.json").write_text('{"family": "tfidf", "labels": ['),
        "model.json",
        "is corrupt",
    ),
    Fault(
        "meta-unknown-family",
        "tfidf",
        _edit_meta(lambda m: m.update(family="xgboost")),
        "model.json",
        "unknown model family 'xgboost'",
    ),
    Fault(
        "labels-fewer-than-classes",
        "tfidf",
        _edit_meta(lambda m: m.update(labels=m["labels"][:2])),
        "model.skops",
        "classes but its label map 2",
    ),
]
# At start: a weight file of each served format (tfidf bundle, ONNX export) and the manifest.
# Start and reload share one load path, so the other faults (the torch-loaded safetensors head
# among them: ~15 s of torch import per server) are tried only on reload, against one server.
AT_START = ("skops-truncated", "onnx-truncated", "meta-garbled")


@pytest.fixture(scope="module")
def good(
    tfidf_bundle: Path,
    embedding_bundle: Path,
    _prepared_once: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """Read-only good models: the tfidf and embedding bundles and an fp32 ONNX export."""
    from paperops.export.classifier import export_bundle

    base = tmp_path_factory.mktemp("good_models")
    onnx = base / "onnx"
    export_bundle(embedding_bundle, onnx, processed_dir=_prepared_once, int8=False, threads=1)
    return {"tfidf": tfidf_bundle, "embedding": embedding_bundle, "onnx": onnx}


def broken_copy(good: dict[str, Path], fault: Fault, where: Path) -> Path:
    out = Path(shutil.copytree(good[fault.source], where / fault.name))
    fault.breaks(out)
    return out


def check_reason(text: str, fault: Fault, path: Path) -> None:
    assert fault.says in text, text
    assert str(path / fault.names).rstrip("/") in text, text


# --- at start ------------------------------------------------------------------------------------


def test_a_nonexistent_model_path_exits_2_in_both_modes(tmp_path: Path) -> None:
    """A typo in --model cannot be fixed by waiting: exit 2 with the path, listening on nothing."""
    missing = tmp_path / "no-such-model"
    for mode in ("--wait-ready", "--fail-fast"):
        cmd = [
            *paperops_command(), "serve", mode, "--model", str(missing),
            "--host", "127.0.0.1", "--port", str(free_port()), *cli_overrides(tmp_path),
        ]  # fmt: skip
        # our own CLI with test arguments
        done = subprocess.run(
            cmd, env=TEST_ENV, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, (mode, done.stdout, done.stderr)
        assert f"--model {missing} does not exist" in done.stderr, (mode, done.stderr)


def test_fail_fast_exits_2_naming_the_corrupt_file(good: dict[str, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from paperops.cli import app

    fault = next(f for f in FAULTS if f.name == "meta-garbled")
    broken = broken_copy(good, fault, tmp_path)
    result = CliRunner().invoke(app, ["serve", "--model", str(broken), *cli_overrides(tmp_path)])
    assert result.exit_code == 2, result.output
    check_reason(" ".join(result.output.split()), fault, broken)  # typer may wrap long lines


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.name in AT_START], ids=lambda f: f.name)
def test_a_corrupt_model_at_start_is_not_ready_until_a_good_one_is_reloaded(
    fault: Fault, good: dict[str, Path], tmp_path: Path
) -> None:
    broken = broken_copy(good, fault, tmp_path)
    with (
        serve_unready(tmp_path / "srv", "--model", str(broken), env=ADMIN_ENV) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        assert wait_for(lambda: "failed" in http.get("/readyz").json()["reason"], timeout=60)
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503
        reason = ready.json()["reason"]
        assert reason.startswith("the model failed to load: ")
        check_reason(reason, fault, broken)
        r = http.post("/v1/classify", json={"papers": PAPERS[:2]})
        assert r.status_code == 503 and r.json()["error"] == reason
        assert r.json()["detail"][0]["type"] == "not_ready"
        assert metric_value(http.get("/metrics").text, "paperops_ready") == 0.0
        logged = [
            json.loads(line)
            for line in (tmp_path / "srv" / "server.log").read_text().splitlines()
            if line.startswith("{")
        ]
        errors = [x["msg"] for x in logged if x.get("level") == "error"]
        assert any("the model failed to load" in m and fault.says in m for m in errors), errors

        # the fix: a good model in place of the broken one, then a reload of the start source
        shutil.rmtree(broken)
        shutil.copytree(good[fault.source], broken)
        r = http.post("/v1/admin/reload", headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["current"]["name"] == fault.name
        assert http.get("/readyz").status_code == 200
        r = http.post("/v1/classify", json={"papers": PAPERS[:2]})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        text = http.get("/metrics").text
        assert metric_value(text, "paperops_ready") == 1.0
        assert metric_value(text, "paperops_model_reloads_total", {"result": "ok"}) == 1.0


# --- on reload, under load ------------------------------------------------------------------------

CLIENTS = 4
MAX_REQUESTS = 5_000  # hard bound; the load stops when the reloads are done
DEADLINE_S = 90.0


@dataclass
class Answer:
    status: int
    model: str
    error: str = ""


async def load_during(url: str, reloads: list[dict[str, str]]) -> tuple[list[Answer], list]:
    """CLIENTS clients classify without pause while the reloads run one after another; the load
    stops after the last reload has answered and 20 more requests (or at the bounds)."""
    answers: list[Answer] = []
    replies: list[httpx.Response] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + DEADLINE_S

    async def client(s: httpx.AsyncClient, c: int) -> None:
        i = c
        while not stop.is_set() and len(answers) < MAX_REQUESTS and time.monotonic() < deadline:
            paper = PAPERS[i % len(PAPERS)]
            i += CLIENTS
            try:
                r = await s.post("/v1/classify", json={"papers": [paper]})
                name = r.json()["model"]["name"] if r.is_success else ""
                answers.append(Answer(r.status_code, name, "" if r.is_success else r.text))
            except httpx.HTTPError as e:  # a dropped connection is a failed request too
                answers.append(Answer(0, "", repr(e)))
            await asyncio.sleep(0.002)

    async def reloader(s: httpx.AsyncClient) -> None:
        while len(answers) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for body in reloads:
            replies.append(await s.post("/v1/admin/reload", json=body, headers=AUTH, timeout=120))
        after = len(answers) + 20
        while len(answers) < after and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stop.set()

    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as s:
        await asyncio.gather(reloader(s), *(client(s, c) for c in range(CLIENTS)))
    return answers, replies


def test_reloads_to_broken_models_keep_the_old_one_serving(
    good: dict[str, Path], tmp_path: Path
) -> None:
    model = Path(shutil.copytree(good["tfidf"], tmp_path / "serving"))
    broken = [(f, broken_copy(good, f, tmp_path)) for f in FAULTS]
    reloads = [{"model": str(path)} for _, path in broken]
    with (
        serve_cli(tmp_path / "srv", "--model", str(model), env=ADMIN_ENV) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        answers, replies = asyncio.run(load_during(url, reloads))
        failed = [a for a in answers if a.status != 200]
        assert not failed, failed[:3]
        assert {a.model for a in answers} == {"serving"}
        assert len(answers) >= 40
        for (fault, path), r in zip(broken, replies, strict=True):
            assert r.status_code == 409, (fault.name, r.text)
            body = r.json()
            assert body["detail"][0]["type"] == "reload_failed"
            assert body["error"].startswith("reload failed: ")
            assert body["error"].endswith("; still serving serving vlocal")
            check_reason(body["error"], fault, path)
        assert http.get("/v1/model").json()["model"]["name"] == "serving"
        assert http.get("/readyz").status_code == 200
        text = http.get("/metrics").text
        errors = metric_value(text, "paperops_model_reloads_total", {"result": "error"})
        assert errors == len(FAULTS)
        assert metric_value(text, "paperops_model_reloads_total", {"result": "ok"}) == 0.0
        assert metric_value(text, "paperops_ready") == 1.0
    print(f"\nreload faults: {len(FAULTS)} refused, {len(answers)} requests during them, 0 failed")
