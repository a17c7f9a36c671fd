"""ServeMetrics on its own registry, and the HTTP middleware's route-template labels."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from paperops.inference.predictor import LabelScore, ModelInfo, PaperPrediction
from paperops.serve.app import create_app
from paperops.serve.metrics import ServeMetrics
from paperops.serve.settings import ServeSettings
from tests.integration.serve_helpers import GatedRuntime, tiny_predictor


def samples(m: ServeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = m.render()[0].decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(m: ServeMetrics, name: str, **labels: str) -> float:
    return samples(m)[(name, tuple(sorted(labels.items())))]


def prediction(label: str, confidence: float, set_size: int) -> PaperPrediction:
    top = [LabelScore(label, label.upper(), confidence)]
    return PaperPrediction(label, label.upper(), confidence, top, top * set_size)


def info(version: str) -> ModelInfo:
    return ModelInfo("m", version, "tfidf", "sklearn", "here", 4)


def test_two_apps_in_one_process_have_separate_metrics() -> None:
    a, b = ServeMetrics(), ServeMetrics()
    a.feedback.inc()
    a.queue_rejected.inc(2)
    assert value(a, "paperops_feedback_total") == 1 and value(b, "paperops_feedback_total") == 0
    assert value(b, "paperops_queue_rejected_total") == 0
    assert ("process_cpu_seconds_total", ()) in samples(a)  # process metrics on the app registry
    assert any(name == "python_info" for name, _ in samples(b))
    assert ("process_cpu_seconds_total", ()) not in samples(ServeMetrics(process=False))


def test_batch_prediction_and_model_metrics() -> None:
    m = ServeMetrics()
    m.observe_batch(3, 0.004, "sklearn")
    m.observe_batch(40, 0.2, "sklearn")
    m.observe_papers(
        [120, 7000],
        [prediction("cs", 0.93, 1), prediction("math", 0.35, 0)],
    )
    m.observe_papers([300], [prediction("cs", 0.55, 7)])
    assert value(m, "paperops_batch_size_count") == 2
    assert value(m, "paperops_batch_size_bucket", le="4.0") == 1
    assert value(m, "paperops_batch_size_bucket", le="64.0") == 2
    assert value(m, "paperops_inference_duration_seconds_count", runtime="sklearn") == 2
    assert value(m, "paperops_predictions_total", label="cs") == 2
    assert value(m, "paperops_predictions_total", label="math") == 1
    assert value(m, "paperops_prediction_confidence_bucket", le="0.4") == 1
    assert value(m, "paperops_prediction_set_size_bucket", le="0.0") == 1
    assert value(m, "paperops_prediction_set_size_bucket", le="5.0") == 2  # 7 is in +Inf only
    assert value(m, "paperops_prediction_set_size_bucket", le="+Inf") == 3
    assert value(m, "paperops_input_length_chars_bucket", le="6500.0") == 2
    assert value(m, "paperops_input_length_chars_sum") == 7420
    m.set_model(info("1"))
    m.set_model(info("2"))  # a reload replaces the labels: one series, the new version
    series = [k for k in samples(m) if k[0] == "paperops_model_info"]
    assert series == [
        (
            "paperops_model_info",
            (("family", "tfidf"), ("name", "m"), ("runtime", "sklearn"), ("version", "2")),
        )
    ]
    m.bind_queue_depth(lambda: 17)
    assert value(m, "paperops_queue_depth") == 17
    assert value(m, "paperops_model_reloads_total", result="error") == 0


def http_counts(m: ServeMetrics) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for (name, labels), v in samples(m).items():
        if name == "paperops_http_requests_total":
            d: dict[str, Any] = dict(labels)
            out[(d["route"], d["method"], d["status"])] = v
    return out


def test_http_metrics_use_route_templates_not_raw_paths() -> None:
    rt = GatedRuntime()
    metrics = ServeMetrics()
    app = create_app(
        ServeSettings(),
        lambda spec: tiny_predictor(rt),
        predictor=tiny_predictor(rt),
        metrics=metrics,
    )
    body = {"papers": [{"title": "t", "abstract": "paper 1"}]}
    with TestClient(app) as client:
        assert client.post("/v1/classify", json=body).status_code == 200
        assert client.post("/v1/classify", json={"papers": []}).status_code == 422
        for i in range(3):
            assert client.get(f"/no/such/page/{i}").status_code == 404
        assert client.get("/static/no-such-file.js").status_code == 404
        assert client.request("BREW", "/healthz").status_code == 405
        big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
        r = client.post("/v1/classify", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413
    counts = http_counts(metrics)
    assert counts[("/v1/classify", "POST", "200")] == 1
    assert counts[("/v1/classify", "POST", "422")] == 1
    assert counts[("/v1/classify", "POST", "413")] == 1  # matched although the router never ran
    assert counts[("<unmatched>", "GET", "404")] == 3  # one series for any number of bad paths
    assert counts[("/static", "GET", "404")] == 1
    assert counts[("/healthz", "OTHER", "405")] == 1
    assert not any("/no/such" in route for route, _, _ in counts)
    assert value(metrics, "paperops_http_requests_in_flight") == 0
    assert (
        value(
            metrics,
            "paperops_http_request_duration_seconds_count",
            route="/v1/classify",
            method="POST",
        )
        == 3
    )
    assert value(metrics, "paperops_predictions_total", label=rt.label_of("paper 1")) == 1
