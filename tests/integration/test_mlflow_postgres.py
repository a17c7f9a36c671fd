"""The lifecycle against a tracking server, as scaled out (docs/scaling-out.md#tracking): a real
`mlflow server` with its backend store in a throwaway PostgreSQL and a local artifact root, on
127.0.0.1; paperops reaches it through `MLFLOW_TRACKING_URI` alone (no paperops override).

What must hold: `paperops train` logs its run and registers its version on the server (twice:
the gate decides the champion there), `paperops models promote` moves the alias on the server,
`paperops evaluate --ref champion` and `paperops serve --ref champion` load the champion back
through the server, and every artifact lives under the server's --artifacts-destination (proxied:
the client machine keeps no `mlruns/`). Figures print with -s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from paperops.serve.launcher import free_port, paperops_command
from tests.conftest import DEFAULT_COUNTS, make_records
from tests.integration.serve_helpers import TEST_ENV, serve_cli
from tests.pg import PgCluster, query

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "paperops-classifier"
STEP_TIMEOUT_S = 300  # one CLI step; a hung step fails the test, never blocks it


@pytest.fixture
def mlflow_server(pg_cluster: PgCluster, tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """(server URL, artifact root, backend store URL): `mlflow server` on a fresh database."""
    store = pg_cluster.url(pg_cluster.new_database("mlflow"))
    artifacts = tmp_path / "server-artifacts"
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
        "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    env = os.environ | {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    # our own fixed command on loopback, no user input
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "mlflow server not ready in 120 s"
            time.sleep(0.3)
        yield url, artifacts, store
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def _paperops(cwd: Path, env: dict[str, str], *args: str) -> str:
    """`paperops ARGS` in `cwd`; its stdout, after asserting it exited 0."""
    proc = subprocess.run(  # our own CLI with test arguments
        [*paperops_command(), *args],
        cwd=cwd,
        env=os.environ | TEST_ENV | env,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, f"paperops {' '.join(args)}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_train_evaluate_promote_serve_through_a_tracking_server(
    mlflow_server: tuple[str, Path, str], prepared_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    url, artifacts, store = mlflow_server
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    env = {"MLFLOW_TRACKING_URI": url}
    common = [
        f"train.processed_dir={prepared_dir}",
        f"paths.models={client_dir}/models",
        f"paths.reports={client_dir}/reports",
        f"paths.work={client_dir}/outputs",
        "evaluate.alpha=0.2",  # the tiny calibration split has 6 rows
        "model.min_df=1",
    ]
    t0 = time.monotonic()
    # two candidates, far apart in regularisation: the gate on the server picks the champion
    for c in ("0.01", "5.0"):
        _paperops(
            client_dir, env, "train", *common, f"model.C={c}",
            f"train.output_dir={client_dir}/models/c{c}",
        )  # fmt: skip
    train_s = time.monotonic() - t0

    mc = mlflow.MlflowClient(tracking_uri=url, registry_uri=url)
    versions = sorted(int(v.version) for v in mc.search_model_versions(f"name='{NAME}'"))
    assert versions == [1, 2]
    champion = mc.get_model_version_by_alias(NAME, "champion").version
    exp = mc.get_experiment_by_name("paperops")
    assert exp is not None and exp.artifact_location.startswith("mlflow-artifacts:")
    runs = mc.search_runs([exp.experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    # the server's database holds them: the backend store is PostgreSQL
    assert query(store, "SELECT count(*) FROM runs") == [(2,)]
    assert query(store, f"SELECT count(*) FROM model_versions WHERE name = '{NAME}'") == [(2,)]

    # by hand: the other version becomes champion (forced if it scored worse)
    other = "1" if champion == "2" else "2"
    out = _paperops(client_dir, env, "models", "promote", other, "--force")
    assert f"v{other}" in out
    assert mc.get_model_version_by_alias(NAME, "champion").version == other
    shown = json.loads(_paperops(client_dir, env, "models", "show", "champion", "--json"))
    assert str(shown["version"]) == other

    report_dir = client_dir / "reports" / "eval-champion"
    _paperops(
        client_dir, env, "evaluate", "--ref", "champion", "--report-dir", str(report_dir), *common
    )
    assert any(report_dir.iterdir())

    records = make_records(DEFAULT_COUNTS)[:3]
    papers = [{"title": r["title"], "abstract": r["abstract"]} for r in records]
    with serve_cli(tmp_path / "serve", "--ref", "champion", env=env) as api:
        r = httpx.post(api + "/v1/classify", json={"papers": papers}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == NAME and body["model"]["version"] == other
    assert len(body["results"]) == 3

    # the audit trail lives on the server too: both gate decisions and the manual promotion,
    # newest first; a rollback restores the gate's champion and records itself
    hist = json.loads(_paperops(client_dir, env, "models", "history", "--json"))
    assert [h["action"] for h in hist] == ["force" if hist[0]["action"] == "force" else "promote",
                                          "register", "register"]  # fmt: skip
    assert hist[0]["new_champion"] == other and hist[0]["previous_champion"] == champion
    _paperops(client_dir, env, "models", "rollback", "--reason", "live test")
    assert mc.get_model_version_by_alias(NAME, "champion").version == champion
    hist = json.loads(_paperops(client_dir, env, "models", "history", "--json", "--limit", "1"))
    assert hist[0]["action"] == "rollback" and hist[0]["new_champion"] == champion
    tags = query(
        store, "SELECT count(*) FROM registered_model_tags WHERE key LIKE 'paperops.history.%'"
    )
    assert tags == [(4,)]

    # artifacts went through the server into its artifact root; nothing local on the client
    stored = [p for p in artifacts.rglob("*") if p.is_file()]
    assert any(p.name == "MLmodel" for p in stored), stored[:20]
    assert not (client_dir / "mlruns").exists()
    print(
        f"\n[mlflow-pg] 2 trainings {train_s:.1f} s through {url}; champion by gate v{champion}, "
        f"promoted by hand v{other}; {len(stored)} artifact files on the server; "
        f"{time.monotonic() - t0:.1f} s in all"
    )
