"""`paperops demo`: the last step of `make demo`. Starts the API on loopback exactly as a user
would (`paperops serve`, the registry champion by default), classifies the example papers of the
web page over HTTP, prints the answers; when the server also has a language model, generates one
continuation of an example prompt (fixed seed) over HTTP too; then stops the server cleanly."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLES = "examples.json"
PROMPTS = "prompts.json"
DEMO_SEED = 0  # a fixed seed: the same model prints the same continuation on every run
DEMO_NEW_TOKENS = 40


def load_examples() -> list[dict[str, Any]]:
    """The web page's example papers (shipped in the package, written for paperops)."""
    text = resources.files("paperops.serve").joinpath("static", EXAMPLES).read_text("utf-8")
    return list(json.loads(text))


def load_prompts() -> list[dict[str, Any]]:
    """The web page's example prompts: medical questions and arXiv-style starts."""
    text = resources.files("paperops.serve").joinpath("static", PROMPTS).read_text("utf-8")
    return list(json.loads(text))


def pick_prompt(prompts: list[dict[str, Any]], generator: dict[str, Any]) -> dict[str, Any]:
    """The first prompt from the generator's corpus when /v1/model names it, else the first."""
    corpus = generator.get("corpus")
    for p in prompts:
        if corpus and p.get("corpus") == corpus:
            return p
    return prompts[0]


def generation_demo(client: Any, base: str) -> None:
    """One generation over HTTP when the server has a language model; one line when not."""
    info = client.get(f"{base}/v1/model", timeout=30).json()
    gen = info.get("generator") if isinstance(info, dict) else None
    if not gen:
        typer.echo("\nno language model is loaded: skipping the generation demo")
        return
    prompt = pick_prompt(load_prompts(), gen)["prompt"]
    cap = gen.get("max_new_tokens_cap")
    new_tokens = min(DEMO_NEW_TOKENS, int(cap)) if cap else DEMO_NEW_TOKENS
    body = {"prompt": prompt, "max_new_tokens": new_tokens, "seed": DEMO_SEED}
    r = client.post(f"{base}/v1/generate", json=body, timeout=300)
    r.raise_for_status()
    out = r.json()
    m = out["model"]
    typer.echo(f"\nlanguage model {m['name']} v{m['version']} ({m['runtime']})")
    typer.echo(f"  prompt: {prompt!r}")
    typer.echo(f"  continuation (seed {out['seed']}): {out['text']!r}")
    t, timing = out["tokens"], out["timing"]
    typer.echo(
        f"  {t['generated']} tokens ({out['finish_reason']}), {timing['tokens_per_s']:.1f} "
        f"tokens/s, first token after {timing['ttft_ms']:.0f} ms"
    )


DRIFT_PAPERS = 300  # held-out test papers the demo sends before it runs the drift job


def drift_demo(client: Any, base: str, overrides: list[str]) -> None:
    """Send held-out test papers (with their true labels as feedback), run `paperops monitor
    drift` on them and show what the API then reports. Skipped without prepared data."""
    import time

    import pandas as pd

    from paperops.config import load_config
    from paperops.monitor.config import DriftConfig, DriftError
    from paperops.monitor.drift import run_drift
    from paperops.monitor.report import render_summary
    from paperops.requestlog.queries import read_predictions

    # the reference is the training split; lsa embeddings keep the demo to seconds (the
    # default MiniLM embeddings take ~2 minutes here on a first run)
    cfg = load_config([*overrides, f"monitor.max_papers={DRIFT_PAPERS}", "monitor.window=1h",
                       "monitor.embedding.method=lsa"])  # fmt: skip
    test_path = Path(str(cfg.monitor.reference.processed_dir)) / "test.parquet"
    if not test_path.is_file():
        typer.echo(f"\nno {test_path}: skipping the drift demo (run `paperops data prepare`)")
        return
    test = pd.read_parquet(test_path).sample(DRIFT_PAPERS, random_state=0)
    started = time.time()
    for i in range(0, DRIFT_PAPERS, 50):
        part = test.iloc[i : i + 50]
        pairs = zip(part.title, part.abstract, strict=True)
        papers = [{"title": t, "abstract": a} for t, a in pairs]
        r = client.post(f"{base}/v1/classify", json={"papers": papers}, timeout=120)
        r.raise_for_status()
        rid = r.json()["request_id"]
        for j, label in enumerate(part.label):
            body = {"request_id": rid, "index": j, "label": label}
            client.post(f"{base}/v1/feedback", json=body, timeout=30).raise_for_status()
    url = str(cfg.monitor.request_log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the request log is written in the background
        rows = read_predictions(url, since=started)
        if sum(r["feedback_label"] is not None for r in rows) >= DRIFT_PAPERS:
            break
        time.sleep(0.2)
    typer.echo(f"\nsent {DRIFT_PAPERS} held-out test papers with their true labels; drift job:")
    try:
        report = run_drift(DriftConfig.from_config(cfg.monitor))
    except DriftError as e:
        typer.echo(f"  drift job failed: {e}")
        return
    typer.echo(render_summary(report))
    served = client.get(f"{base}/v1/monitoring/drift", timeout=30).json()
    lines = [ln for ln in client.get(f"{base}/metrics", timeout=30).text.splitlines()
             if ln.startswith("paperops_drift_score")]  # fmt: skip
    typer.echo(f"GET /v1/monitoring/drift: drifted={served.get('drifted')}, "
               f"created_at {served.get('created_at')}")  # fmt: skip
    typer.echo("/metrics: " + "; ".join(lines))


def _print_answers(examples: list[dict[str, Any]], body: dict[str, Any]) -> None:
    m = body["model"]
    target = body.get("coverage_target")
    typer.echo(f"model {m['name']} v{m['version']} ({m['family']}, {m['runtime']})")
    for ex, res in zip(examples, body["results"], strict=True):
        typer.echo(f"\n  {ex['title'][:90]}")
        tops = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in res["top"])
        typer.echo(f"    -> {res['label']} ({res['name']}), confidence {res['confidence']:.2f}")
        typer.echo(f"       top: {tops}")
        members = [s["label"] for s in res["prediction_set"]]
        cov = f"{target:.0%}" if target else "target"
        typer.echo(
            f"       prediction set at {cov} coverage: {members}"
            if members
            else f"       prediction set at {cov} coverage: none (no confident label)"
        )


def demo_cmd(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Hydra overrides passed to `paperops serve`", show_default=False),
    ] = None,
    model: Annotated[
        Path | None, typer.Option(help="Serve this bundle instead of the champion.")
    ] = None,
    generator: Annotated[
        Path | None,
        typer.Option(
            help="Serve this LM bundle instead of the generator champion (if registered)."
        ),
    ] = None,
) -> None:
    """Start the API on 127.0.0.1, classify the example papers over HTTP (and generate one
    text when a language model is served), print, stop."""
    import httpx

    from paperops.serve.launcher import ServerStartError, running_server

    examples = load_examples()
    args = [
        *(["--model", str(model)] if model else []),
        *(["--generator", str(generator)] if generator else []),
        *(overrides or []),
        "serve.drift_refresh_s=0",  # show the drift report the moment it is stored
    ]
    typer.echo("starting paperops serve on 127.0.0.1 ...")
    try:
        with running_server(args) as base:
            typer.echo(f"API ready at {base} (docs: {base}/docs)")
            payload = {
                "papers": [{"title": e["title"], "abstract": e["abstract"]} for e in examples],
                "top_k": 3,
            }
            r = httpx.post(f"{base}/v1/classify", json=payload, timeout=120)
            r.raise_for_status()
            _print_answers(examples, r.json())
            generation_demo(httpx, base)
            drift_demo(httpx, base, overrides or [])
            ready = httpx.get(f"{base}/readyz", timeout=10).json()
            typer.echo(f"\nreadyz: {ready}")
        typer.echo("server stopped cleanly")
    except ServerStartError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except httpx.HTTPError as e:
        typer.secho(f"error: request failed: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None


def register(app: typer.Typer) -> None:
    """Add `paperops demo` to the root CLI."""
    app.command("demo")(demo_cmd)
