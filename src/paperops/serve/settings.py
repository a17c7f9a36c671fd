"""What the API runs with: `cfg.serve` turned into frozen, validated dataclasses.

The app factory takes these plain objects (not the Hydra tree), so tests and benchmarks can build
one in a line (`ServeSettings(request_log=RequestLogSettings(url=...))`) and a bad value fails at
start with the key that holds it, never as a 500 on the first request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from paperops.inference.explain import METHODS
from paperops.inference.predictor import RUNTIMES


class SettingsError(ValueError):
    """A `serve.*` value is out of range or of the wrong type; the message names the key."""


def _int(key: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"serve.{key} must be an integer; got {value!r}")
    if value < minimum:
        raise SettingsError(f"serve.{key} must be >= {minimum}; got {value}")


def _number(key: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingsError(f"serve.{key} must be a finite number; got {value!r}")
    if value < minimum:
        raise SettingsError(f"serve.{key} must be >= {minimum}; got {value}")


@dataclass(frozen=True)
class BatchingSettings:
    """Micro-batching: see `paperops.serve.batching.MicroBatcher`."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    queue_size: int = 512
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        _int("batching.max_batch_size", self.max_batch_size, 1)
        _number("batching.max_wait_ms", self.max_wait_ms, 0.0)
        _int("batching.queue_size", self.queue_size, 1)
        _int("batching.retry_after_s", self.retry_after_s, 0)


@dataclass(frozen=True)
class Limits:
    """Input limits: part of the API contract (the OpenAPI schema shows them)."""

    max_papers: int = 64
    title_max_chars: int = 500
    abstract_max_chars: int = 6000
    id_max_chars: int = 200
    max_top_k: int = 20
    default_top_k: int = 3
    max_body_bytes: int = 1_048_576
    body_timeout_s: float = 30.0  # the whole body must arrive within this (slow clients: 408)

    def __post_init__(self) -> None:
        _int("limits.max_papers", self.max_papers, 1)
        _int("limits.title_max_chars", self.title_max_chars, 1)
        _int("limits.abstract_max_chars", self.abstract_max_chars, 1)
        _int("limits.id_max_chars", self.id_max_chars, 1)
        _int("limits.max_top_k", self.max_top_k, 1)
        _int("limits.default_top_k", self.default_top_k, 1)
        _int("limits.max_body_bytes", self.max_body_bytes, 1024)
        _number("limits.body_timeout_s", self.body_timeout_s, 0.1)
        if self.default_top_k > self.max_top_k:
            raise SettingsError(
                f"serve.limits.default_top_k ({self.default_top_k}) must be <= "
                f"serve.limits.max_top_k ({self.max_top_k})"
            )


@dataclass(frozen=True)
class RequestLogSettings:
    """The request/prediction log (`paperops.requestlog`); an empty url turns it off."""

    url: str | None = None
    queue_size: int = 10_000
    batch_size: int = 256
    store_text: bool = True
    durable: bool = True
    durable_timeout_ms: float = 1000.0
    retry_s: float = 60.0

    def __post_init__(self) -> None:
        if self.url is not None and not isinstance(self.url, str):
            raise SettingsError(f"serve.request_log.url must be a string; got {self.url!r}")
        if self.url is not None and not self.url.strip():
            object.__setattr__(self, "url", None)
        _int("request_log.queue_size", self.queue_size, 1)
        _int("request_log.batch_size", self.batch_size, 1)
        for name in ("store_text", "durable"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(
                    f"serve.request_log.{name} must be true/false; got {getattr(self, name)!r}"
                )
        _number("request_log.durable_timeout_ms", self.durable_timeout_ms, 1)
        _number("request_log.retry_s", self.retry_s, 0)
        if self.retry_s > 3600:
            raise SettingsError(f"serve.request_log.retry_s must be <= 3600; got {self.retry_s}")

    @property
    def enabled(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class ExplainSettings:
    """`explain=true` on /v1/classify (`paperops.inference.explain`). `methods` lists what this
    server may run: `linear` (tfidf, hybrid: exact, ~1 ms a paper) and `occlusion` (every other
    model: max_sentences + 1 texts through the encoder per paper); a model whose method is not
    listed, or `enabled: false`, answers explain=true with 422."""

    enabled: bool = True
    methods: tuple[str, ...] = METHODS
    max_papers: int = 8  # papers per request with explain=true
    max_sentences: int = 12  # occlusion units per paper (title + sentence groups)
    max_terms: int = 10  # terms listed per paper

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise SettingsError(f"serve.explain.enabled must be true/false; got {self.enabled!r}")
        methods = self.methods
        if isinstance(methods, str) or not all(m in METHODS for m in methods):
            raise SettingsError(
                f"serve.explain.methods must be a list drawn from {list(METHODS)}; got {methods!r}"
            )
        object.__setattr__(self, "methods", tuple(methods))
        _int("explain.max_papers", self.max_papers, 1)
        _int("explain.max_sentences", self.max_sentences, 2)
        _int("explain.max_terms", self.max_terms, 1)


GENERATOR_RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")


@dataclass(frozen=True)
class GeneratorSettings:
    """The language model behind /v1/generate and /infer (`paperops.serve.routes.generate`).

    `enabled`: "auto" serves the LM when one loads (none registered: the classifier still
    serves and /v1/generate answers 503 with the reason); true makes a failed load fatal and
    /readyz wait for it; false never loads one."""

    enabled: bool | str = "auto"
    model: str | None = None
    ref: str = "champion"
    registered_model: str = "paperops-generator"
    runtime: str = "torch"
    threads: int | None = None
    max_new_tokens_cap: int = 256
    default_max_new_tokens: int = 64
    prompt_max_chars: int = 2000
    time_budget_s: float = 30.0
    max_batch_size: int = 8
    queue_size: int = 64
    retry_after_s: int = 1
    temperature: float = 0.8
    top_p: float = 0.95

    def __post_init__(self) -> None:
        if self.enabled not in (True, False, "auto"):
            raise SettingsError(
                f"serve.generator.enabled must be auto, true or false; got {self.enabled!r}"
            )
        if self.model is not None and not isinstance(self.model, str):
            object.__setattr__(self, "model", str(self.model))
        if self.model is not None and not self.model.strip():
            object.__setattr__(self, "model", None)
        for key in ("ref", "registered_model"):
            value = getattr(self, key)
            if not isinstance(value, str | int) or not str(value).strip():
                raise SettingsError(f"serve.generator.{key} must be a non-empty string")
            object.__setattr__(self, key, str(value))
        if self.runtime not in GENERATOR_RUNTIMES:
            raise SettingsError(
                f"serve.generator.runtime must be one of {GENERATOR_RUNTIMES}; got {self.runtime!r}"
            )
        if self.threads is not None:
            _int("generator.threads", self.threads, 1)
        _int("generator.max_new_tokens_cap", self.max_new_tokens_cap, 1)
        _int("generator.default_max_new_tokens", self.default_max_new_tokens, 1)
        if self.default_max_new_tokens > self.max_new_tokens_cap:
            raise SettingsError(
                f"serve.generator.default_max_new_tokens ({self.default_max_new_tokens}) must "
                f"be <= serve.generator.max_new_tokens_cap ({self.max_new_tokens_cap})"
            )
        _int("generator.prompt_max_chars", self.prompt_max_chars, 1)
        _number("generator.time_budget_s", self.time_budget_s, 0.001)
        _int("generator.max_batch_size", self.max_batch_size, 1)
        _int("generator.queue_size", self.queue_size, 1)
        _int("generator.retry_after_s", self.retry_after_s, 0)
        _number("generator.temperature", self.temperature, 0.0)
        if not 0 < self.temperature <= 5:
            raise SettingsError(
                f"serve.generator.temperature must be in (0, 5]; got {self.temperature}"
            )
        _number("generator.top_p", self.top_p, 0.0)
        if not 0 < self.top_p <= 1:
            raise SettingsError(f"serve.generator.top_p must be in (0, 1]; got {self.top_p}")

    @property
    def required(self) -> bool:
        """A load failure is fatal (enabled: true)."""
        return self.enabled is True


@dataclass(frozen=True)
class ServeSettings:
    """Everything `create_app` needs; `from_config(cfg.serve)` builds it from Hydra."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str | None = None
    ref: str = "champion"
    runtime: str = "auto"
    threads: int | None = 2
    export_dir: str = "models/export"
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: Limits = field(default_factory=Limits)
    request_log: RequestLogSettings = field(default_factory=RequestLogSettings)
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    explain: ExplainSettings = field(default_factory=ExplainSettings)
    admin_token_env: str = "PAPEROPS_ADMIN_TOKEN"  # noqa: S105 - a variable name
    cors_origins: tuple[str, ...] = ()
    benchmark_endpoints: bool = False
    shutdown_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    drift_refresh_s: float = 15.0  # how often the latest drift report is re-read from the log

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise SettingsError(f"serve.host must be a host name or address; got {self.host!r}")
        _int("port", self.port, 0)
        if self.port > 65535:
            raise SettingsError(f"serve.port must be <= 65535; got {self.port}")
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"serve.runtime must be one of {RUNTIMES}; got {self.runtime!r}")
        if self.threads is not None:
            _int("threads", self.threads, 1)
        if not isinstance(self.ref, str) or not self.ref.strip():
            raise SettingsError(f"serve.ref must be an alias or a version; got {self.ref!r}")
        if not isinstance(self.admin_token_env, str) or not self.admin_token_env:
            raise SettingsError("serve.admin_token_env must name an environment variable")
        origins = self.cors_origins
        if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
            raise SettingsError(f"serve.cors_origins must be a list of origins; got {origins!r}")
        object.__setattr__(self, "cors_origins", tuple(origins))
        if not isinstance(self.benchmark_endpoints, bool):
            raise SettingsError("serve.benchmark_endpoints must be true/false")
        _number("shutdown_timeout_s", self.shutdown_timeout_s, 0.0)
        _number("keep_alive_s", self.keep_alive_s, 1.0)
        _number("drift_refresh_s", self.drift_refresh_s, 0.0)
        if self.batching.queue_size < self.limits.max_papers:
            raise SettingsError(
                f"serve.batching.queue_size ({self.batching.queue_size}) must be >= "
                f"serve.limits.max_papers ({self.limits.max_papers}): a full-size request "
                "could never be queued"
            )

    @classmethod
    def from_config(cls, serve_cfg: Any, **overrides: Any) -> ServeSettings:
        """`cfg.serve` (a DictConfig or a plain mapping) -> settings; unknown keys are an error
        (a typo in a config file must not be silently ignored)."""
        data = _plain(serve_cfg)
        data.update(overrides)
        nested = {
            "batching": BatchingSettings,
            "limits": Limits,
            "request_log": RequestLogSettings,
            "generator": GeneratorSettings,
            "explain": ExplainSettings,
        }
        kwargs: dict[str, Any] = {}
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise SettingsError(f"serve.{key} is not a known setting (known: {sorted(known)})")
            if key in nested and isinstance(value, Mapping):
                sub = nested[key]
                sub_known = {f.name for f in fields(sub)}
                unknown = set(value) - sub_known
                if unknown:
                    raise SettingsError(
                        f"serve.{key}.{sorted(unknown)[0]} is not a known setting "
                        f"(known: {sorted(sub_known)})"
                    )
                value = sub(**value)
            kwargs[key] = value
        if kwargs.get("model") is not None:
            kwargs["model"] = str(kwargs["model"])
        if "ref" in kwargs:
            kwargs["ref"] = str(kwargs["ref"])
        if "export_dir" in kwargs:
            kwargs["export_dir"] = str(kwargs["export_dir"])
        if "cors_origins" in kwargs and kwargs["cors_origins"] is None:
            kwargs["cors_origins"] = ()
        try:
            return cls(**kwargs)
        except TypeError as e:  # a nested key given a scalar, e.g. serve.limits=3
            raise SettingsError(f"invalid serve settings: {e}") from None


def _plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            out = OmegaConf.to_container(cfg, resolve=True)
            if isinstance(out, dict):
                return {str(k): v for k, v in out.items()}
    except ImportError:  # pragma: no cover - omegaconf is a base dependency
        pass
    if not isinstance(cfg, Mapping):
        raise SettingsError(f"serve settings must be a mapping; got {type(cfg).__name__}")
    return {str(k): v for k, v in cfg.items()}
