"""Real servers on 127.0.0.1 for the API tests.

- `serve_cli(...)`: `paperops serve` as a child process (the CLI, uvicorn, lifespan exactly as a
  user starts them), on a free port, with the test defaults (1 thread, request log in `base`);
  stops it with SIGTERM (clean shutdown: the request log is flushed) and waits.
- `serve_app(app)`: a given ASGI app on uvicorn in a thread of this process, for tests that need
  a runtime the CLI cannot load (a deliberately slow or gated one). Still real TCP.
- `tiny_predictor(...)`: a deterministic `Predictor` over a real `Runtime`-protocol object whose
  calls can be slowed down or held at a gate.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from paperops.inference.predictor import ModelInfo, Predictor
from paperops.serve.launcher import free_port, running_server
from tests.conftest import CONFIG_DIR

TEST_ENV = {
    "PAPEROPS_CONFIG_DIR": str(CONFIG_DIR),
    "OMP_NUM_THREADS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "PAPEROPS_LOG_FORMAT": "json",  # one JSON object per line in server.log: easy to assert on
}


def cli_overrides(base: Path) -> list[str]:
    """Hydra overrides that keep a test server's files in `base` and use one thread."""
    return [
        "serve.threads=1",
        f"serve.request_log.url=sqlite:///{base}/requests.db",
        f"paths.models={base}/models",
        f"paths.data={base}/data",
        f"serve.export_dir={base}/models/export",
    ]


@contextlib.contextmanager
def serve_cli(
    base: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready_timeout: float = 180.0,
    ready_path: str = "/readyz",
) -> Iterator[str]:
    """`paperops serve ARGS <test overrides>` on 127.0.0.1:<free port>; yields the base URL
    once `ready_path` is 200, then stops the server with SIGTERM and waits for it to exit. The
    server's output goes to `base/server.log`."""
    base.mkdir(parents=True, exist_ok=True)
    with running_server(
        [*args, *cli_overrides(base)],
        env=TEST_ENV | (env or {}),
        cwd=base,
        log_path=base / "server.log",
        ready_timeout=ready_timeout,
        ready_path=ready_path,
    ) as url:
        yield url


@contextlib.contextmanager
def serve_copy(bundle: Path, base: Path, *args: str) -> Iterator[str]:
    """`serve_cli` on a copy of `bundle` in `base/model` (session bundles stay read-only)."""
    model = Path(shutil.copytree(bundle, base / "model"))
    with serve_cli(base, "--model", str(model), *args) as url:
        yield url


@contextlib.contextmanager
def serve_app(app: Any, *, ready_path: str = "/readyz", timeout: float = 60.0) -> Iterator[str]:
    """`app` on uvicorn in a background thread, on 127.0.0.1:<free port>; stops it on exit
    (graceful: in-flight requests finish, then the app's lifespan shutdown runs). Outside the
    main thread uvicorn installs no signal handlers, so the test process keeps its own."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if not thread.is_alive():
                raise RuntimeError("uvicorn exited during startup (see the log)")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the app was not ready after {timeout:.0f} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout)


# --- a deterministic runtime for tests that need control over inference time ------------------


class GatedRuntime:
    """A real `Runtime`: text "... <n>" scores label n % k highest (other texts: label 0).
    Each call sleeps `delay` seconds and, when gated, first waits for `gate` to open (bounded by
    `gate_timeout`)."""

    kind = "fake"

    def __init__(
        self,
        labels: Sequence[str] = ("cs", "math", "hep-th", "astro-ph"),
        *,
        delay: float = 0.0,
        gated: bool = False,
        gate_timeout: float = 30.0,
    ) -> None:
        self.labels = list(labels)
        self.delay = delay
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.gate_timeout = gate_timeout
        self.calls: list[int] = []  # batch sizes, in call order
        self.threads: set[str] = set()
        self.entered = threading.Event()  # set when a call is waiting at (or past) the gate

    def index_of(self, text: str) -> int:
        last = text.split()[-1] if text.split() else ""
        return int(last) % len(self.labels) if last.isdigit() else 0  # e.g. the warm-up text

    def label_of(self, text: str) -> str:
        return self.labels[self.index_of(text)]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if not self.gate.wait(self.gate_timeout):
            raise TimeoutError("test gate never opened")
        if self.delay:
            time.sleep(self.delay)
        self.calls.append(len(texts))
        out = np.zeros((len(texts), len(self.labels)))
        for i, t in enumerate(texts):
            if t.rsplit(maxsplit=1)[-1] == "boom":
                raise ValueError("the runtime failed on purpose")
            out[i, self.index_of(t)] = 5.0
        return out


def tiny_predictor(runtime: GatedRuntime, *, name: str = "fake", version: str = "1") -> Predictor:
    info = ModelInfo(
        name=name,
        version=version,
        family="fake",
        runtime=runtime.kind,
        source="tests",
        n_labels=len(runtime.labels),
    )
    return Predictor(runtime, None, info)
