"""Experiment tracking: one MLflow run per training job, with everything needed to reproduce it.

A run records the resolved config (as `config.yaml` and as flattened params), the git commit and
whether the tree was dirty, the hash of the data it saw, metrics per step, plots, and the trained
bundle as a pyfunc model. Lightning's loggers attach to the *same* run (no second run per job),
and W&B can mirror it offline. MLflow defaults to an embedded SQLite store under `mlruns/`, so
all of this works on a laptop with no server; `MLFLOW_TRACKING_URI` or `logger.tracking_uri`
points it at a server (tested live: an `mlflow server` on PostgreSQL).

mlflow is imported lazily: the CLI stays fast for commands that never track anything.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paperops import __version__
from paperops.data.datamodule import data_hash
from paperops.models.base import is_language_model, read_meta

log = logging.getLogger("paperops.tracking")

PYFUNC_FILE = Path(__file__).with_name("pyfunc_classifier.py")
LM_PYFUNC_FILE = Path(__file__).with_name("pyfunc_lm.py")
UNKNOWN = "unknown"
SQLITE_PREFIX = "sqlite:///"


# --- configuration -----------------------------------------------------------------------------


def cfg_value(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg[key] for a DictConfig, a Mapping or an object with attributes."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping | DictConfig):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def resolve_tracking_uri(uri: str) -> str:
    """A relative `sqlite:///path` made absolute (a later chdir must not move the store)."""
    if uri.startswith(SQLITE_PREFIX):
        path = uri[len(SQLITE_PREFIX) :]
        if path and path != ":memory:":
            return SQLITE_PREFIX + str(Path(path).expanduser().resolve())
    return uri


def tracking_uri(logger_cfg: Any) -> str:
    return resolve_tracking_uri(
        str(cfg_value(logger_cfg, "tracking_uri", "sqlite:///mlruns/mlflow.db"))
    )


def _artifact_location(logger_cfg: Any) -> str | None:
    """Where a new experiment keeps artifacts. A local path is made absolute; it is ignored for
    a tracking server (http/https), which proxies artifacts to its own --artifacts-destination:
    a client-side path there would only exist on the machine that created the experiment."""
    loc = cfg_value(logger_cfg, "artifact_location")
    if loc is None:
        return None
    loc = str(loc)
    if "://" in loc or loc.startswith("file:"):
        return loc
    if tracking_uri(logger_cfg).startswith(("http://", "https://")):
        return None
    path = Path(loc).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def quiet_mlflow() -> None:
    """No telemetry and no artifact progress bars, unless the user set them: called where a run
    or a client starts, never at import (importing a module must not change the environment)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def point_mlflow(uri: str) -> None:
    """Set MLflow's fluent tracking and registry URI without exporting it. MLflow also writes
    MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into os.environ for child processes; since the
    logger config defaults to MLFLOW_TRACKING_URI, that export would silently make one store
    the default of every later config in this process and of every child it starts (seen: a
    `dvc repro` child registering into another job's store)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def setup_mlflow(logger_cfg: Any) -> str:
    """Point MLflow at the configured store and return the experiment id (created if missing).

    The SQLite file's directory is created first (SQLite does not create directories); the
    experiment gets `artifact_location` as an absolute file URI so artifacts land in one place
    whatever the working directory of a later run.
    """
    quiet_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(logger_cfg)
    if uri.startswith(SQLITE_PREFIX):
        Path(uri[len(SQLITE_PREFIX) :]).parent.mkdir(parents=True, exist_ok=True)
    point_mlflow(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = str(cfg_value(logger_cfg, "experiment_name", "paperops"))
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=_artifact_location(logger_cfg)))
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def client_for(logger_cfg: Any) -> Any:
    """An MlflowClient bound to the configured store (tracking and registry)."""
    quiet_mlflow()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(logger_cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


# --- provenance --------------------------------------------------------------------------------


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(  # noqa: S603  # nosec B603, B607 # fixed git argv, no shell; git from PATH
            ["git", *args],  # noqa: S607 - git from PATH, like any developer tool
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(cwd: Path | None = None) -> dict[str, str]:
    """{"git_sha", "git_dirty"} of the checkout holding the code; "unknown" outside a repo."""
    where = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    sha = _git(["rev-parse", "HEAD"], where)
    if not sha:
        return {"git_sha": UNKNOWN, "git_dirty": UNKNOWN}
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    dirty = UNKNOWN if status is None else str(bool(status)).lower()
    return {"git_sha": sha, "git_dirty": dirty}


def config_container(config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, fully resolved dict of a Hydra config or mapping."""
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values, truncated to MLflow's length limits."""
    from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

    out: dict[str, str] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{dotted}."))
        else:
            out[dotted[:MAX_ENTITY_KEY_LENGTH]] = str(value)[:MAX_PARAM_VAL_LENGTH]
    return out


# --- runs --------------------------------------------------------------------------------------


@dataclass
class RunHandle:
    """One MLflow run, addressed by id (works whether or not it is the active fluent run)."""

    run_id: str
    experiment_id: str
    tracking_uri: str

    @cached_property
    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at `step`; non-numeric values are an error, not silently dropped."""
        import time

        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        ts = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"metric {key!r} is not a number: {value!r}") from None
            batch.append(Metric(key=str(key), value=number, timestamp=ts, step=step or 0))
        for i in range(0, len(batch), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i : i + MAX_METRICS_PER_BATCH])

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag
        from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH

        items = [RunTag(str(k), str(v)[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """A dict as a JSON or YAML artifact (by the file's extension)."""
        self.client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def tags(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.tags)


def run_tags(
    config: Mapping[str, Any], tags: Mapping[str, str], data_dir: Path | None
) -> dict[str, str]:
    """Provenance tags every run carries: code version, data version, model family."""
    out = {**git_info(), "paperops_version": __version__}
    model = config.get("model")
    family = model.get("family") if isinstance(model, Mapping) else None
    out["family"] = str(family) if family else UNKNOWN
    if data_dir is not None:
        out["data_hash"] = data_hash(Path(data_dir))
        out["data_dir"] = str(data_dir)
    out.update({str(k): str(v) for k, v in dict(tags).items()})
    return out


@contextmanager
def start_run(
    logger_cfg: Any,
    *,
    run_name: str,
    config: DictConfig | Mapping[str, Any],
    tags: Mapping[str, str] = (),  # type: ignore[assignment]
    data_dir: Path | None = None,
) -> Iterator[RunHandle]:
    """Open a run with config, provenance tags and params; FAILED if the body raises.

    The run is also MLflow's active (fluent) run inside the block, so `mlflow.*` calls and
    `log_model_bundle` land in it. Exceptions propagate after the status is recorded.
    """
    import mlflow

    experiment_id = setup_mlflow(logger_cfg)
    resolved = config_container(config)
    all_tags = run_tags(resolved, dict(tags), data_dir)
    uri = tracking_uri(logger_cfg)
    active = mlflow.active_run()
    if active is not None:
        raise RuntimeError(
            f"MLflow run {active.info.run_id} is still active; end it before starting {run_name!r}"
        )
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=all_tags) as run:
        handle = RunHandle(run.info.run_id, experiment_id, uri)
        yaml = OmegaConf.to_yaml(OmegaConf.create(resolved))
        handle.log_text(yaml, "config.yaml")
        handle.log_params(resolved)
        log.info(
            "MLflow run %s (%s) in experiment %s at %s", handle.run_id, run_name, experiment_id, uri
        )
        yield handle


# --- Lightning / W&B ---------------------------------------------------------------------------


def _attached_mlflow_logger_class() -> type:
    from lightning.pytorch.loggers import MLFlowLogger

    class AttachedMLFlowLogger(MLFlowLogger):
        """An MLFlowLogger on a run owned by `start_run`: never ends the run nor re-logs params.

        Lightning's own logger sets the run FINISHED when `fit` ends and logs hyperparameters
        truncated to 250 chars, which would clash with the full config params `start_run`
        already logged (MLflow refuses to change a param). Here params already on the run are
        skipped and the run's status stays with its owner.
        """

        def log_hyperparams(self, params: Any) -> None:
            from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
            from mlflow.entities import Param

            flat = _flatten_dict(_convert_params(params), delimiter=".")  # as start_run
            existing = self.experiment.get_run(self.run_id).data.params
            new = [Param(k, str(v)[:6000]) for k, v in flat.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.experiment.log_batch(run_id=self.run_id, params=new[i : i + 100])

        def finalize(self, status: str = "success") -> None:
            if self._initialized and self._checkpoint_callback:
                self._scan_and_log_checkpoints(self._checkpoint_callback)

    return AttachedMLFlowLogger


def _wandb_env(mode: str) -> None:
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode in ("offline", "disabled"):
        os.environ.setdefault("WANDB_DISABLE_GIT", "true")


def finish_wandb(loggers: list[Any]) -> None:
    """End the W&B runs these loggers opened. wandb keeps one global run per process and a new
    WandbLogger reuses an open one, so without this the next training in the same process (an
    Optuna trial, a test) would log into this run."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and getattr(logger, "_experiment", None):
            logger.experiment.finish()


def lightning_loggers(logger_cfg: Any, run_id: str, *, run_name: str | None = None) -> list[Any]:
    """Lightning loggers for a training run: MLflow (same run as `start_run`) and maybe W&B.

    W&B is added when `logger_cfg.wandb` is set; in offline mode it writes under
    `wandb.dir` and never touches the network (`wandb sync` uploads later).
    """
    loggers: list[Any] = [
        _attached_mlflow_logger_class()(
            experiment_name=str(cfg_value(logger_cfg, "experiment_name", "paperops")),
            tracking_uri=tracking_uri(logger_cfg),
            run_id=run_id,
        )
    ]
    wandb_cfg = cfg_value(logger_cfg, "wandb")
    if wandb_cfg:
        from lightning.pytorch.loggers import WandbLogger

        mode = str(cfg_value(wandb_cfg, "mode", "offline"))
        _wandb_env(mode)
        save_dir = Path(str(cfg_value(wandb_cfg, "dir", "reports/wandb"))).expanduser().resolve()
        save_dir.mkdir(parents=True, exist_ok=True)
        loggers.append(
            WandbLogger(
                project=str(cfg_value(wandb_cfg, "project", "paperops")),
                name=run_name,
                save_dir=str(save_dir),
                config={"mlflow_run_id": run_id},
                **({"offline": True} if mode == "offline" else {"mode": mode}),
            )
        )
    return loggers


def log_params_to_wandb(loggers: list[Any], config: DictConfig | Mapping[str, Any]) -> None:
    """Send the resolved config to every W&B logger (MLflow already has it from `start_run`)."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = config_container(config)
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.config.update(resolved, allow_val_change=True)


# --- models ------------------------------------------------------------------------------------


def _signature(bundle_dir: Path) -> Any:
    """Input/output schema from model.json alone: no model load needed at logging time."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    # deferred: pulls mlflow
    from paperops.tracking.pyfunc_classifier import (
        CROSS_LISTS_COLUMN,
        INPUT_COLUMNS,
        has_cross_lists,
        output_columns,
    )

    meta = read_meta(bundle_dir)
    if is_language_model(meta):
        # deferred: pulls mlflow
        from paperops.tracking.pyfunc_lm import PARAMS

        types = {int: "long", float: "double"}
        return ModelSignature(
            inputs=Schema([ColSpec("string", "prompt")]),
            outputs=Schema([ColSpec("string", "text"), ColSpec("long", "generated_tokens")]),
            params=ParamSchema([ParamSpec(k, types[type(v)], v) for k, v in PARAMS.items()]),
        )
    cols = output_columns(list(meta["labels"]), has_cross_lists(bundle_dir))
    inputs: list[ColSpec | TensorSpec] = [ColSpec("string", c) for c in INPUT_COLUMNS]
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", cols[0])]
    outputs += [ColSpec("string" if c == CROSS_LISTS_COLUMN else "double", c) for c in cols[1:]]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def _pip_requirements(lm: bool = False) -> list[str]:
    """Pinned runtime needs of the pyfunc (skipping MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = [f"paperops=={__version__}"]
    extra = ("torch", "transformers", "tokenizers", "safetensors") if lm else ("skops",)
    for dist in ("mlflow", "numpy", "pandas", "scikit-learn", *extra):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_model_bundle(
    run: RunHandle,
    bundle_dir: Path,
    *,
    name: str = "model",
    input_example: Any = None,
) -> str:
    """Log a bundle as a pyfunc model (models-from-code, nothing pickled); return its model URI.

    The model code is `paperops/mlflow_pyfunc.py`; the bundle directory travels as the
    artifact `bundle`. The URI (`models:/<model_id>`) is what `register_candidate` registers.
    """
    import mlflow
    import pandas as pd

    # deferred: pulls mlflow
    from paperops.tracking import pyfunc_classifier as mlflow_pyfunc

    # deferred: pulls mlflow
    from paperops.tracking import pyfunc_lm as mlflow_pyfunc_lm

    bundle_dir = Path(bundle_dir).resolve()
    # fail early, with paperops' message, on something that is no bundle
    is_lm = is_language_model(read_meta(bundle_dir))
    code, example = (
        (LM_PYFUNC_FILE, mlflow_pyfunc_lm.INPUT_EXAMPLE)
        if is_lm
        else (PYFUNC_FILE, mlflow_pyfunc.INPUT_EXAMPLE)
    )
    kwargs: dict[str, Any] = {
        "name": name,
        "python_model": str(code),
        "artifacts": {"bundle": str(bundle_dir)},
        "signature": _signature(bundle_dir),
        "pip_requirements": _pip_requirements(lm=is_lm),
    }
    kwargs["input_example"] = pd.DataFrame(example if input_example is None else input_example)

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run.run_id:
        info = mlflow.pyfunc.log_model(**kwargs)
    elif active is None:
        # the run was closed already: reopen it just for the model, keeping its final status
        status = run.client.get_run(run.run_id).info.status
        point_mlflow(run.tracking_uri)
        with mlflow.start_run(run_id=run.run_id):
            info = mlflow.pyfunc.log_model(**kwargs)
        run.client.set_terminated(run.run_id, status)
    else:
        raise RuntimeError(
            f"run {active.info.run_id} is active; cannot log a model into run {run.run_id}"
        )
    return str(info.model_uri)


def log_evaluation(cfg: DictConfig, run_id: str, metrics: dict[str, Any], report_dir: Path) -> None:
    """Test metrics and the report go into the training run, so one run holds the whole story."""
    import mlflow

    setup_mlflow(cfg.logger)
    try:
        with mlflow.start_run(run_id=run_id):
            flat = {
                f"test_{k}": float(v)
                for k, v in metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            }
            conformal = metrics.get("conformal", {})
            for k in ("coverage", "mean_set_size"):
                if k in conformal:
                    flat[f"test_conformal_{k}"] = float(conformal[k])
            mlflow.log_metrics(flat)
            mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
    except mlflow.exceptions.MlflowException as e:
        log.warning("could not log the evaluation to MLflow run %s: %s", run_id, e)
