"""Request models (strict, limits from settings) and ServeSettings validation."""

from __future__ import annotations

from typing import Any

import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from paperops.config import load_config
from paperops.serve.schemas import ReloadRequest, make_paper_model, make_schemas
from paperops.serve.settings import (
    BatchingSettings,
    Limits,
    RequestLogSettings,
    ServeSettings,
    SettingsError,
)

LIMITS = Limits(max_papers=3, title_max_chars=20, abstract_max_chars=50, max_top_k=5)
S = make_schemas(LIMITS)
PAPER = {"title": "A title", "abstract": "An abstract."}


def errors(model: Any, data: Any) -> list[tuple[tuple[Any, ...], str, str]]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(data)
    return [(tuple(x["loc"]), x["type"], x["msg"]) for x in e.value.errors()]


def test_a_good_request_and_its_defaults() -> None:
    req = S.ClassifyRequest.model_validate({"papers": [PAPER, {**PAPER, "id": "p2"}]})
    assert req.top_k == 3 and [p.id for p in req.papers] == [None, "p2"]  # type: ignore[attr-defined]
    assert S.PredictRequest.model_validate(PAPER).title == "A title"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "loc", "kind", "words"),
    [
        (
            {"papers": [{**PAPER, "title": "   \n\t"}]},
            ("papers", 0, "title"),
            "string_blank",
            "title must contain text",
        ),
        (
            {"papers": [{**PAPER, "abstract": ""}]},
            ("papers", 0, "abstract"),
            "string_too_short",
            "at least 1",
        ),
        (
            {"papers": [{**PAPER, "title": "x" * 21}]},
            ("papers", 0, "title"),
            "string_too_long",
            "at most 20",
        ),
        (
            {"papers": [{**PAPER, "abstract": "x" * 51}]},
            ("papers", 0, "abstract"),
            "string_too_long",
            "at most 50",
        ),
        (
            {"papers": [{**PAPER, "title": 1}]},
            ("papers", 0, "title"),
            "string_type",
            "valid string",
        ),
        (
            {"papers": [{**PAPER, "title": None}]},
            ("papers", 0, "title"),
            "string_type",
            "valid string",
        ),
        (
            {"papers": [{**PAPER, "extra": 1}]},
            ("papers", 0, "extra"),
            "extra_forbidden",
            "not permitted",
        ),
        ({"papers": [PAPER], "top_k": "3"}, ("top_k",), "int_type", "valid integer"),
        ({"papers": [PAPER], "top_k": 2.0}, ("top_k",), "int_type", "valid integer"),
        ({"papers": [PAPER], "top_k": True}, ("top_k",), "int_type", "valid integer"),
        (
            {"papers": [PAPER], "top_k": 0},
            ("top_k",),
            "greater_than_equal",
            "greater than or equal to 1",
        ),
        ({"papers": [PAPER], "top_k": 6}, ("top_k",), "less_than_equal", "less than or equal to 5"),
        ({"papers": [PAPER] * 4}, ("papers",), "too_long", "at most 3"),
        ({"papers": []}, ("papers",), "too_short", "at least 1"),
        ({"papers": PAPER}, ("papers",), "list_type", "valid list"),
        ({}, ("papers",), "missing", "required"),
        ({"papers": [{"title": "ok"}]}, ("papers", 0, "abstract"), "missing", "required"),
        (
            {"papers": [{**PAPER, "id": "x" * 201}]},
            ("papers", 0, "id"),
            "string_too_long",
            "at most 200",
        ),
        (
            {"papers": [{**PAPER, "title": "bad \ud800"}]},
            ("papers", 0, "title"),
            "string_unicode",
            "unicode",
        ),
        ({"papers": [PAPER], "extra": True}, ("extra",), "extra_forbidden", "not permitted"),
    ],
)
def test_bad_classify_requests_name_the_field_and_the_rule(
    data: dict[str, Any], loc: tuple[Any, ...], kind: str, words: str
) -> None:
    errs = errors(S.ClassifyRequest, data)
    assert (loc, kind) in [(e[0], e[1]) for e in errs], errs
    msg = next(e[2] for e in errs if e[0] == loc)
    assert words in msg


def test_a_lone_surrogate_in_an_id_is_refused() -> None:
    errs = errors(S.ClassifyRequest, {"papers": [{**PAPER, "id": "\udfff"}]})
    assert errs[0][0] == ("papers", 0, "id") and errs[0][1] in ("string_unicode", "string_not_utf8")


def test_predict_and_paper_models_apply_the_same_rules() -> None:
    assert errors(S.PredictRequest, {**PAPER, "title": " "})[0][:2] == (("title",), "string_blank")
    assert errors(S.PredictRequest, {**PAPER, "top_k": 3})[0][:2] == (("top_k",), "extra_forbidden")
    paper = make_paper_model(LIMITS)
    assert paper.model_validate({**PAPER, "id": "x"}).id == "x"  # type: ignore[attr-defined]
    assert errors(paper, {**PAPER, "abstract": "\u2003"})[0][:2] == (("abstract",), "string_blank")


def test_the_schema_shows_the_configured_limits() -> None:
    schema = S.ClassifyRequest.model_json_schema()
    paper = schema["$defs"]["Paper"]["properties"]
    assert paper["title"]["maxLength"] == 20 and paper["abstract"]["maxLength"] == 50
    assert paper["title"]["minLength"] == 1 and paper["title"]["pattern"] == r"\S"
    assert schema["properties"]["papers"]["maxItems"] == 3
    assert schema["properties"]["top_k"]["maximum"] == 5
    assert schema["additionalProperties"] is False


def test_feedback_and_reload_requests() -> None:
    rid = "0123456789abcdef" * 2
    fb = S.FeedbackRequest.model_validate({"request_id": rid, "label": "cs"})
    assert fb.index == 0  # type: ignore[attr-defined]
    assert errors(S.FeedbackRequest, {"request_id": "nope", "label": "cs"})[0][:2] == (
        ("request_id",),
        "string_pattern_mismatch",
    )
    assert errors(S.FeedbackRequest, {"request_id": rid, "label": "cs", "index": 3})[0][:2] == (
        ("index",),
        "less_than_equal",
    )
    assert ReloadRequest.model_validate({}).model is None
    assert ReloadRequest.model_validate({"ref": "champion"}).ref == "champion"
    errs = errors(ReloadRequest, {"model": "/m", "ref": "2"})
    assert "either model" in errs[0][2]
    assert errors(ReloadRequest, {"ref": 2})[0][:2] == (("ref",), "string_type")


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_the_shipped_config() -> None:
    s = ServeSettings.from_config(load_config([]).serve)
    assert s.host == "127.0.0.1" and s.batching.max_batch_size == 32
    assert s.limits.max_body_bytes == 1048576 and s.request_log.enabled
    assert s.cors_origins == () and s.benchmark_endpoints is False
    off = ServeSettings.from_config(load_config(["serve.request_log.url="]).serve)
    assert not off.request_log.enabled


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"batching": {"max_batch_size": 0}}, "serve.batching.max_batch_size must be >= 1"),
        ({"batching": {"max_wait_ms": -1}}, "serve.batching.max_wait_ms must be >= 0"),
        ({"batching": {"queue_size": "lots"}}, "serve.batching.queue_size must be an integer"),
        ({"batching": {"queue_size": 8}}, "must be >= serve.limits.max_papers"),
        ({"limits": {"max_top_k": 2}}, "default_top_k (3) must be <="),
        ({"limits": {"max_body_bytes": 10}}, "serve.limits.max_body_bytes must be >= 1024"),
        ({"runtime": "tensorflow"}, "serve.runtime must be one of"),
        ({"port": 70000}, "serve.port must be <= 65535"),
        ({"threads": 0}, "serve.threads must be >= 1"),
        ({"cors_origins": "*"}, "serve.cors_origins must be a list"),
        ({"limits": {"max_paper": 3}}, "serve.limits.max_paper is not a known setting"),
        ({"colour": "blue"}, "serve.colour is not a known setting"),
        ({"request_log": {"store_text": "yes"}}, "serve.request_log.store_text must be true/false"),
    ],
)
def test_bad_settings_name_the_key(overrides: dict[str, Any], words: str) -> None:
    base: dict[str, Any] = OmegaConf.to_container(load_config([]).serve, resolve=True)  # type: ignore[assignment]
    for key, value in overrides.items():
        if isinstance(value, dict):
            merged = dict(base[key])
            merged.update(value)
            base[key] = merged
        else:
            base[key] = value
    with pytest.raises(SettingsError) as e:
        ServeSettings.from_config(base)
    assert words in str(e.value)


def test_settings_dataclasses_directly() -> None:
    s = ServeSettings(
        batching=BatchingSettings(max_batch_size=4, queue_size=64),
        request_log=RequestLogSettings(url="  "),
        cors_origins=["https://x.example"],  # type: ignore[arg-type]
    )
    assert s.request_log.url is None and s.cors_origins == ("https://x.example",)
