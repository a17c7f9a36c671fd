"""Which model to serve: a directory, or a registry version (default: the champion).

Shared by `paperops serve` (at start and on `/v1/admin/reload`) and `paperops predict`, so both
answer with the same model for the same arguments. A registered neural model is exported to ONNX
on first use (`paperops.export.ensure_export`, cached under `serve.export_dir`), so serving it
never goes through PyTorch unless asked to (`serve.runtime=torch`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paperops.config import cfg_get
from paperops.export.lm import ensure_lm_export
from paperops.inference.generator import load_generator
from paperops.inference.predictor import Predictor, load_predictor
from paperops.models.base import NEURAL_FAMILIES, ModelLoadError, read_meta
from paperops.tracking import registry
from paperops.tracking.runs import SQLITE_PREFIX, tracking_uri

DEFAULT_REGISTERED = "paperops-generator"

log = logging.getLogger(__name__)

FIX = "train and register a model first (`paperops train`), or pass --model PATH to serve a bundle"


def resolve_predictor(
    cfg: Any,
    model: Path | None = None,
    ref: str | None = None,
    *,
    runtime: str | None = None,
    threads: int | None = None,
) -> Predictor:
    """`model` (a bundle or export directory) if given, else `serve.model` if set, else registry
    version `ref` (default `serve.ref`, normally `champion`) of `logger.registered_model`.

    Raises ModelLoadError with the fix for anything that stops a model from loading: no store,
    no registered model, no champion, an unknown version, a broken bundle.
    """
    runtime = runtime or str(cfg_get(cfg, "serve.runtime", "auto"))
    threads = threads if threads is not None else cfg_get(cfg, "serve.threads")
    threads = None if threads is None else int(threads)
    model = _local_dir(cfg, model, ref, "serve.model", "--model", "a bundle or export directory")
    if model is not None:
        return load_predictor(model, runtime=runtime, threads=threads)
    return _from_registry(cfg, str(ref or cfg_get(cfg, "serve.ref", "champion")), runtime, threads)


def _local_dir(
    cfg: Any, model: Path | None, ref: str | None, key: str, flag: str, what: str
) -> Path | None:
    """`model` if given, else config `key` when no registry `ref` was asked for; it must exist."""
    if model is None and ref is None and cfg_get(cfg, key):
        model = Path(str(cfg_get(cfg, key)))
    if model is not None and not Path(model).exists():
        raise ModelLoadError(f"{flag} {model} does not exist; pass {what}")
    return None if model is None else Path(model)


def check_local_dirs(
    cfg: Any,
    model: Path | None = None,
    ref: str | None = None,
    *,
    generator: Path | None = None,
) -> None:
    """Raise ModelLoadError if the directory named by `--model` / `serve.model` (or by
    `--generator`, which makes the language model required) does not exist: a typo in the
    command line or the config, which no amount of waiting fixes. `paperops serve --wait-ready`
    checks this before it listens, so it exits 2 like `--fail-fast` instead of idling unready."""
    _local_dir(cfg, model, ref, "serve.model", "--model", "a bundle or export directory")
    if generator is not None and not Path(generator).exists():
        raise ModelLoadError(
            f"--generator {generator} does not exist; pass an LM bundle or export directory"
        )


def _from_registry(cfg: Any, ref: str, runtime: str, threads: int | None) -> Predictor:
    try:
        from mlflow.exceptions import MlflowException

    except ImportError as e:  # a serve-only install has no mlflow
        raise ModelLoadError(
            f"serving a registered model needs the train extra ({e}); "
            "pass --model PATH to serve a bundle or export directory"
        ) from e
    logger_cfg = cfg.logger
    name = registry.model_name(logger_cfg)
    models_dir = Path(str(cfg_get(cfg, "paths.models", "models")))
    try:
        info = registry.show(logger_cfg, ref)
        version = str(info["version"])
        bundle = registry.download_bundle(
            logger_cfg, ref=version, dst=models_dir / "registry" / name
        )
    except registry.RegistryError as e:
        raise ModelLoadError(f"{e} (or pass --model PATH to serve a bundle)") from e
    except (MlflowException, OSError) as e:
        raise ModelLoadError(
            f"cannot read {name}@{ref} from {cfg_get(cfg, 'logger.tracking_uri')}: {e}; {FIX}"
        ) from e
    is_alias = not ref.lstrip("vV").isdigit()
    source = f"models:/{name}@{ref}" if is_alias else f"models:/{name}/{version}"
    family = str(read_meta(bundle)["family"])
    directory = bundle
    if family in NEURAL_FAMILIES and runtime != "torch":
        directory = _exported(cfg, bundle, name, version, threads)
    log.info("serving %s v%s (%s) from %s", name, version, family, directory)
    return load_predictor(
        directory, runtime=runtime, threads=threads, name=name, version=version, source=source
    )


def _exported(cfg: Any, bundle: Path, name: str, version: str, threads: int | None) -> Path:
    """The ONNX export of a registered neural bundle, made once per version and reused (the
    export settings and parity thresholds are `cfg.export`'s)."""
    try:
        from paperops.export.cache import ensure_export
    except ImportError as e:
        raise ModelLoadError(
            f"cannot export {name} v{version} to ONNX ({e}); serve it through PyTorch with "
            "serve.runtime=torch, or install the serve extra"
        ) from e
    export_dir = Path(str(cfg_get(cfg, "serve.export_dir", "models/export"))) / f"{name}-v{version}"
    try:
        return Path(
            ensure_export(bundle, export_dir, cfg_export=cfg_get(cfg, "export"), threads=threads)
        )
    except ModelLoadError:
        raise
    except Exception as e:  # the export's own errors (parity failure, onnx missing) name the fix
        raise ModelLoadError(f"exporting {name} v{version} to ONNX failed: {e}") from e


def make_loader(
    cfg: Any, model: Path | None = None, ref: str | None = None
) -> Callable[[dict[str, Any] | None], Predictor]:
    """The `loader(spec)` the app factory takes: None -> what the server was started with
    (`model` or `ref`: a reload re-reads the champion), `{"model": path}` or `{"ref": r}` ->
    that instead."""

    def load(spec: dict[str, Any] | None) -> Predictor:
        spec = spec or {}
        if spec.get("model"):
            return resolve_predictor(cfg, model=Path(spec["model"]))
        if spec.get("ref"):
            return resolve_predictor(cfg, ref=str(spec["ref"]))
        return resolve_predictor(cfg, model=model, ref=ref)

    return load


# --- the language model (/v1/generate) ----------------------------------------------------------


def resolve_generator(cfg: Any, model: Path | None = None, ref: str | None = None) -> Any:
    """The `LoadedGenerator` to serve: `model` (an LM bundle or LM export directory) if given,
    else `serve.generator.model` if set, else version `ref` (default `serve.generator.ref`) of
    the registry's `serve.generator.registered_model` (`paperops-generator`).

    Raises ModelLoadError with the fix when none can be loaded."""

    runtime = str(cfg_get(cfg, "serve.generator.runtime", "auto"))
    threads = cfg_get(cfg, "serve.generator.threads")
    if threads is None:
        threads = cfg_get(cfg, "serve.threads")
    threads = None if threads is None else int(threads)
    model = _local_dir(
        cfg, model, ref, "serve.generator.model", "--generator", "an LM bundle or export directory"
    )
    if model is not None:
        return load_generator(model, runtime=runtime, threads=threads)
    ref = str(ref or cfg_get(cfg, "serve.generator.ref", "champion"))
    name = str(cfg_get(cfg, "serve.generator.registered_model", "paperops-generator"))
    _require_store(cfg, name, ref)
    try:
        from mlflow.exceptions import MlflowException

    except ImportError as e:
        raise ModelLoadError(
            f"loading a registered language model needs the train extra ({e}); "
            "pass --generator PATH to serve an LM bundle"
        ) from e
    models_dir = Path(str(cfg_get(cfg, "paths.models", "models")))
    try:
        info = registry.show(cfg.logger, ref, name=name)
        version = str(info["version"])
        bundle = registry.download_bundle(
            cfg.logger, ref=version, dst=models_dir / "registry" / name, name=name
        )
    except registry.RegistryError as e:
        raise ModelLoadError(
            f"cannot load {name}@{ref}: {e} (train one with `paperops train "
            "experiment=lm_mqp`, or pass --generator PATH)"
        ) from e
    except (MlflowException, OSError) as e:
        raise ModelLoadError(
            f"cannot read {name}@{ref} from {cfg_get(cfg, 'logger.tracking_uri')}: {e}; "
            "pass --generator PATH to serve an LM bundle"
        ) from e
    is_alias = not ref.lstrip("vV").isdigit()
    source = f"models:/{name}@{ref}" if is_alias else f"models:/{name}/{version}"
    log.info("language model %s v%s from %s", name, version, bundle)
    path = Path(bundle)
    if runtime in ("auto", "onnx", "onnx-int8"):
        path = _lm_export(cfg, path, models_dir, f"{name}-v{version}", threads)
    return load_generator(
        path, runtime=runtime, threads=threads, name=name, version=version, source=source
    )


def _lm_export(cfg: Any, bundle: Path, models_dir: Path, key: str, threads: int | None) -> Path:
    """The ONNX export of a registered LM (made on first serve, reused while the bundle is the
    same); the bundle itself, served by PyTorch, when exporting is not possible here."""
    export_dir = Path(str(cfg_get(cfg, "serve.export_dir", models_dir / "export"))) / key
    try:
        return ensure_lm_export(bundle, export_dir, cfg=cfg_get(cfg, "export.lm"), threads=threads)
    except (ImportError, RuntimeError, ValueError) as e:
        if str(cfg_get(cfg, "serve.generator.runtime", "auto")) != "auto":
            raise ModelLoadError(f"cannot export {key} to ONNX for serving: {e}") from e
        log.warning("serving %s with PyTorch: the ONNX export failed (%s)", key, e)
        return bundle


def _require_store(cfg: Any, name: str, ref: str) -> None:
    """Fail fast, before importing mlflow, when the tracking store is a SQLite file that does
    not exist: a classifier-only server must not pay seconds at start to find no LM."""

    try:
        uri = tracking_uri(cfg.logger)
    except Exception:  # no logger config at all: let the registry say what is missing
        return
    if uri.startswith(SQLITE_PREFIX) and not Path(uri[len(SQLITE_PREFIX) :]).is_file():
        raise ModelLoadError(
            f"cannot load {name}@{ref}: no MLflow store at {uri} (train and register one with "
            "`paperops train experiment=lm_mqp`, or pass --generator PATH)"
        )


def make_generator_loader(
    cfg: Any, model: Path | None = None, ref: str | None = None
) -> Callable[[], Any]:
    """A no-argument loader of the generator the server was started with."""

    def load() -> Any:
        return resolve_generator(cfg, model=model, ref=ref)

    return load


def resolve_lm(cfg: Any, model: Path | None, ref: str | None) -> tuple[Any, str]:
    """The LM to use and a description of where it came from: `model` (a bundle directory),
    else `serve.generator.model` when configured, else registry version `ref` (default
    `champion`) of the generator's registered model."""
    # deferred: pulls lightning, torch
    from paperops.models.lm import load_lm

    if model is None and ref is None and cfg_get(cfg, "serve.generator.model"):
        model = Path(str(cfg_get(cfg, "serve.generator.model")))
    if model is not None:
        if not Path(model).is_dir():
            raise ModelLoadError(f"--model {model} is not a directory; pass an LM bundle")
        return load_lm(Path(model)), str(model)
    name = str(cfg_get(cfg, "serve.generator.registered_model", DEFAULT_REGISTERED))
    ref = str(ref or cfg_get(cfg, "serve.generator.ref", "champion"))
    try:
        from paperops.tracking import registry
    except ImportError as e:  # a serve-only install has no mlflow
        raise ModelLoadError(
            f"a registered model needs the train extra ({e}); pass --model DIR instead"
        ) from e
    models_dir = Path(str(cfg_get(cfg, "paths.models", "models")))
    try:
        bundle = registry.download_bundle(
            cfg.logger, ref, models_dir / "registry" / name, name=name
        )
    except registry.RegistryError as e:
        raise ModelLoadError(f"{e} (or pass --model DIR to use an LM bundle)") from e
    except Exception as e:  # mlflow's own errors: no store, unreachable server
        raise ModelLoadError(
            f"cannot read {name}@{ref} from {cfg_get(cfg, 'logger.tracking_uri')}: {e}; train and "
            "register a language model first, or pass --model DIR"
        ) from e
    return load_lm(bundle), f"{name}@{ref}"
