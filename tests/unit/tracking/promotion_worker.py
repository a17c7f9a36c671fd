"""One training's registration, in its own process, for the promotion-race test.

    python tests/unit/tracking/promotion_worker.py '<json spec>'

The spec names the store, model, run and score, a `ready` file this process creates once mlflow
is imported and the store open, and a `go` file it waits for, so that two workers start their
registration at the same moment. `hold_s` sleeps inside the gate (after the champion is read,
before the alias moves) to widen the race window; `lock=false` replaces the promotion lock by
nothing, which only this test harness does. Prints one JSON line: the decision and the wall-clock
window of its critical section.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def main(spec: dict[str, Any]) -> None:
    from paperops.tracking import promotion
    from paperops.tracking.runs import client_for, setup_mlflow

    cfg = {k: spec[k] for k in ("tracking_uri", "artifact_location", "experiment_name")}
    setup_mlflow(cfg)
    client_for(cfg).get_registered_model(spec["name"])  # store open, connection warm

    real_lock, real_gate = promotion.promotion_lock, promotion._gate
    window: dict[str, float] = {}

    @contextmanager
    def timed_lock(client: Any, name: str, **kw: Any) -> Iterator[Any]:
        window["asked"] = time.time()
        if spec["lock"]:
            with real_lock(client, name, **kw) as holder:
                window["entered"] = time.time()
                yield holder
                window["left"] = time.time()
        else:
            window["entered"] = time.time()
            yield None
            window["left"] = time.time()

    def slow_gate(*args: Any, **kwargs: Any) -> Any:
        time.sleep(spec["hold_s"])
        return real_gate(*args, **kwargs)

    promotion.promotion_lock, promotion._gate = timed_lock, slow_gate

    Path(spec["ready"]).touch()
    deadline = time.monotonic() + 120
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal within 120 s")
        time.sleep(0.002)
    started = time.time()
    decision = promotion.register_candidate(
        cfg,
        run_id=spec["run_id"],
        model_uri=spec["model_uri"],
        score=spec["score"],
        name=spec["name"],
    )
    print(json.dumps({"decision": decision.to_dict(), "started": started, **window}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
