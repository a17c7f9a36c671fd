"""Security of the API and the code base, against real `paperops serve` processes on 127.0.0.1.

- Admin: `/v1/admin/reload` needs the bearer token (401 without, 403 wrong or admin disabled);
  every token check goes through `hmac.compare_digest` (constant time by construction; no timings
  are measured).
- CORS: closed by default, open only to the configured origins.
- Size and shape limits: oversized bodies (with and without Content-Length), too many papers,
  over-long fields and prompts, max_new_tokens over the cap, wrong content types, malformed and
  deeply nested JSON all get a 4xx, and the server answers a good request afterwards.
- No pickle: pickle bodies are refused unread; a bundle whose model file is a crafted pickle (or
  a skops file with an untrusted type) is refused by reload and by `paperops predict`, and the
  payload's side effect (a marker directory) never happens; src/ has no unsafe loader call.
- bandit over src/ is clean (every `# nosec` names its test and gives a reason).

Every bad input sent is recorded in `TRIED`; the module prints one summary line at the end
("N bad inputs tried, 0 accepted") for docs/reliability.md.
"""

from __future__ import annotations

import ast
import contextlib
import hmac
import importlib.util
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from paperops.serve.app import create_app
from paperops.serve.launcher import paperops_command
from paperops.serve.settings import ServeSettings
from tests.conftest import REPO
from tests.integration.serve_helpers import (
    TEST_ENV,
    GatedRuntime,
    serve_app,
    serve_cli,
    tiny_predictor,
)

pytestmark = pytest.mark.integration

TOKEN = "s3cret-admin-token-for-tests-0123456789"
MAX_BODY = 65_536  # serve.limits.max_body_bytes of the main server (the minimum is 1024)
GOOD = {
    "title": "Graph Neural Networks for Efficient Inference",
    "abstract": "we propose a model with attention and a benchmark of training latency",
}
JSON_CT = {"content-type": "application/json"}
EVIL_ORIGIN = "https://evil.example"
GOOD_ORIGIN = "https://papers.example.org"

# (case, what happened): "refused <status>" or "ignored" (a pickle next to a valid bundle, never
# read). A bad input that was acted on fails its test before it is recorded.
TRIED: list[tuple[str, str]] = []


def refused(case: str, r: httpx.Response, *statuses: int) -> dict[str, Any]:
    """Assert `r` is one of `statuses` with the API's error body; record the bad input."""
    assert r.status_code in statuses, f"{case}: {r.status_code} {r.text[:300]}"
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"], f"{case}: {body}"
    TRIED.append((case, f"refused {r.status_code}"))
    return body


@pytest.fixture(scope="module", autouse=True)
def summary(request: pytest.FixtureRequest) -> Iterator[None]:
    """One line at the end of the module, quotable in docs/reliability.md."""
    yield
    statuses: dict[str, int] = {}
    for _, outcome in TRIED:
        statuses[outcome] = statuses.get(outcome, 0) + 1
    line = (
        f"security: {len(TRIED)} bad inputs tried, 0 accepted "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))})"
    )
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print("\n" + line)


# --- payloads ----------------------------------------------------------------------------------


class Payload:
    """Unpickling it calls os.mkdir(marker): the marker directory appears iff it was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (str(self.marker),))


EVIL_MODULE = '''
"""A class whose instances create a marker directory when skops (or pickle) restores them."""
import os

MARKER = {marker!r}


class Evil:
    def __setstate__(self, state):
        os.mkdir(MARKER)

    def __reduce__(self):
        return (os.mkdir, (MARKER,))
'''


class Payloads:
    """Marker path, an importable evil module (for skops) and the crafted files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.marker = base / "PWNED"
        self.pythonpath = base / "pypath"
        self.pythonpath.mkdir(parents=True)
        (self.pythonpath / "paperops_evil_payload.py").write_text(
            EVIL_MODULE.format(marker=str(self.marker))
        )
        spec = importlib.util.spec_from_file_location(
            "paperops_evil_payload", self.pythonpath / "paperops_evil_payload.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["paperops_evil_payload"] = module  # skops.dump needs the class importable
        spec.loader.exec_module(module)
        self.evil_class = module.Evil

    def pickle_bytes(self) -> bytes:
        return pickle.dumps(Payload(self.marker), protocol=4)

    def write(self, path: Path, kind: str) -> None:
        """A crafted file of `kind` at `path`."""
        if kind == "pickle":
            path.write_bytes(self.pickle_bytes())
        elif kind == "joblib":
            import joblib

            joblib.dump(Payload(self.marker), path)
        elif kind == "torch":
            import torch

            torch.save({"weight": Payload(self.marker)}, path)  # a zip with a pickle inside
        elif kind == "skops-untrusted":
            import skops.io as sio

            sio.dump({"clf": self.evil_class()}, path)
        else:
            raise ValueError(kind)

    def assert_not_run(self) -> None:
        assert not self.marker.exists(), "a crafted pickle was unpickled: the marker exists"


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Payloads]:
    p = Payloads(tmp_path_factory.mktemp("payloads"))
    yield p
    sys.modules.pop("paperops_evil_payload", None)
    p.assert_not_run()


# --- servers -----------------------------------------------------------------------------------


class Server:
    def __init__(self, url: str, base: Path, model: Path) -> None:
        self.url = url
        self.base = base
        self.model = model
        self.http = httpx.Client(base_url=url, timeout=30)

    def still_serving(self) -> None:
        """A good request is answered after the bad ones."""
        r = self.http.post("/predict", json=GOOD)
        assert r.status_code == 200, r.text
        assert self.http.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.integration.gen_helpers import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("lm") / "lm")


@pytest.fixture(scope="module")
def server(
    tfidf_bundle: Path, tiny_lm: Path, payloads: Payloads, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The main server: admin token set, CORS default (closed), a small body limit, an LM, and
    the evil module importable (so an untrusted skops type *could* run if it were loaded)."""
    base = tmp_path_factory.mktemp("secserve")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    env = {"PAPEROPS_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(payloads.pythonpath)}
    with serve_cli(
        base,
        "--model",
        str(model),
        "--generator",
        str(tiny_lm),
        f"serve.limits.max_body_bytes={MAX_BODY}",
        env=env,
    ) as url:
        s = Server(url, base, model)
        yield s
        s.http.close()


@pytest.fixture(scope="module")
def open_server(tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server: no admin token in its environment, CORS open to one origin."""
    base = tmp_path_factory.mktemp("secserve-open")
    model = Path(shutil.copytree(tfidf_bundle, base / "model"))
    env = {"PAPEROPS_ADMIN_TOKEN": ""}  # unset for the child, whatever the test runner has
    with serve_cli(
        base, "--model", str(model), f"serve.cors_origins=[{GOOD_ORIGIN}]", env=env
    ) as url:
        s = Server(url, base, model)
        yield s
        s.http.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- admin ---------------------------------------------------------------------------------------


def test_admin_reload_needs_the_right_bearer_token(server: Server) -> None:
    other_same_length = "x" * len(TOKEN)
    cases: list[tuple[str, dict[str, str], int]] = [
        ("admin: no Authorization", {}, 401),
        ("admin: Basic scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        ("admin: empty bearer", {"Authorization": "Bearer"}, 401),
        ("admin: wrong token, same length", bearer(other_same_length), 403),
        ("admin: token prefix", bearer(TOKEN[:-1]), 403),
        ("admin: token + suffix", bearer(TOKEN + "0"), 403),
        ("admin: other length", bearer("nope"), 403),
        ("admin: wrong case", bearer(TOKEN.upper()), 403),
        ("admin: long token", bearer("a" * 4000), 403),
    ]
    for case, headers, status in cases:
        r = server.http.post("/v1/admin/reload", json={"model": str(server.model)}, headers=headers)
        body = refused(case, r, status)
        if status == 401:
            assert "missing bearer token" in body["error"] and r.headers["www-authenticate"]
        else:
            assert body["error"] == "invalid admin token", body  # says nothing about the token
    # a non-ASCII token cannot be encoded in a header by httpx: send raw bytes
    r = server.http.post(
        "/v1/admin/reload", headers={"Authorization": "Bearer t\u00f6ken".encode()}
    )
    refused("admin: non-ASCII token", r, 403)
    # the right token works (reload the same model) and the model keeps serving
    r = server.http.post("/v1/admin/reload", headers=bearer(TOKEN))
    assert r.status_code == 200, r.text
    server.still_serving()


def test_admin_is_disabled_without_a_token_on_the_server(open_server: Server) -> None:
    for case, headers in [
        ("admin disabled: no token", {}),
        ("admin disabled: some token", bearer(TOKEN)),
        ("admin disabled: empty bearer", {"Authorization": "Bearer"}),
    ]:
        body = refused(case, open_server.http.post("/v1/admin/reload", headers=headers), 403)
        assert body["detail"][0]["type"] == "admin_disabled", body
        assert "admin endpoints are disabled: set PAPEROPS_ADMIN_TOKEN" in body["error"]
    open_server.still_serving()


def test_every_token_check_goes_through_compare_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Constant time by construction: with a spy on hmac.compare_digest, every request that
    reaches the comparison calls it once with (sent, expected) bytes, whatever the token."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setenv("PAPEROPS_ADMIN_TOKEN", TOKEN)
    p = tiny_predictor(GatedRuntime())
    app = create_app(ServeSettings(threads=1), lambda spec: p, predictor=p)
    sent = ["", "x", TOKEN[:5], "y" * len(TOKEN), TOKEN + "z", TOKEN]
    with serve_app(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        statuses = []
        for token in sent[1:]:
            r = http.post("/v1/admin/reload", headers=bearer(token))
            statuses.append(r.status_code)
            if token != TOKEN:
                TRIED.append((f"admin in-process: wrong token ({len(token)} chars)", "refused 403"))
        assert http.post("/v1/admin/reload").status_code == 401  # no token: nothing to compare
        TRIED.append(("admin in-process: no token", "refused 401"))
    assert statuses == [403, 403, 403, 403, 200], statuses
    assert calls == [(t.encode(), TOKEN.encode()) for t in sent[1:]], calls
    source = (REPO / "src/paperops/serve/app.py").read_text()
    # no other comparison of the admin token (==, !=, startswith) in the API
    assert not re.search(r"token\s*(==|!=)|(==|!=)\s*token|token\.startswith", source)


# --- CORS ---------------------------------------------------------------------------------------


PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


def test_cors_is_closed_by_default(server: Server) -> None:
    """No Access-Control-Allow-* header for any origin on any route, preflight or not."""
    for path in ("/v1/classify", "/predict", "/v1/generate", "/v1/admin/reload"):
        r = server.http.options(path, headers={"Origin": EVIL_ORIGIN, **PREFLIGHT})
        assert not any(h.startswith("access-control-") for h in r.headers), (path, r.headers)
        TRIED.append(
            (f"cors default: preflight {path} from {EVIL_ORIGIN}", f"refused {r.status_code}")
        )
    for origin in (EVIL_ORIGIN, GOOD_ORIGIN, "null"):
        r = server.http.post("/predict", json=GOOD, headers={"Origin": origin})
        assert r.status_code == 200  # CORS is the browser's check: the answer carries no grant
        assert not any(h.startswith("access-control-") for h in r.headers), r.headers
        TRIED.append((f"cors default: POST with Origin {origin}", "refused (no grant)"))
    r = server.http.get("/v1/model", headers={"Origin": EVIL_ORIGIN})
    assert "access-control-allow-origin" not in r.headers
    TRIED.append(("cors default: GET /v1/model from evil origin", "refused (no grant)"))


def test_cors_grants_only_the_configured_origin(open_server: Server) -> None:
    ok = open_server.http.options("/v1/classify", headers={"Origin": GOOD_ORIGIN, **PREFLIGHT})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == GOOD_ORIGIN
    assert "*" not in ok.headers["access-control-allow-origin"]
    assert "access-control-allow-credentials" not in ok.headers  # no cookies across origins
    r = open_server.http.post("/predict", json=GOOD, headers={"Origin": GOOD_ORIGIN})
    assert r.headers["access-control-allow-origin"] == GOOD_ORIGIN
    lookalikes = [
        EVIL_ORIGIN,
        "null",
        "http://papers.example.org",  # other scheme
        "https://papers.example.org.evil.example",  # suffix
        "https://evil-papers.example.org",
        "https://papers.example.org:8443",  # other port
        "HTTPS://PAPERS.EXAMPLE.ORG",
    ]
    for origin in lookalikes:
        pre = open_server.http.options("/v1/classify", headers={"Origin": origin, **PREFLIGHT})
        assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers, origin
        TRIED.append((f"cors configured: preflight from {origin}", "refused 400"))
        get = open_server.http.get("/v1/model", headers={"Origin": origin})
        assert "access-control-allow-origin" not in get.headers, origin
        TRIED.append((f"cors configured: GET from {origin}", "refused (no grant)"))
    # a method or header outside the allow lists is not granted even to the good origin
    for case, extra in [
        ("cors: DELETE preflight", {"Access-Control-Request-Method": "DELETE"}),
        ("cors: X-Evil header", {**PREFLIGHT, "Access-Control-Request-Headers": "x-evil"}),
    ]:
        pre = open_server.http.options(
            "/v1/classify",
            headers={"Origin": GOOD_ORIGIN, "Access-Control-Request-Method": "POST", **extra},
        )
        assert pre.status_code == 400, (case, pre.status_code, pre.text)
        TRIED.append((case, "refused 400"))
    open_server.still_serving()


# --- size and shape limits --------------------------------------------------------------------


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def test_oversized_bodies_get_413(server: Server) -> None:
    big = _json({"papers": [{**GOOD, "abstract": "z" * (MAX_BODY + 10)}]})
    body = refused(
        "body over the limit (Content-Length)",
        server.http.post("/v1/classify", content=big, headers=JSON_CT),
        413,
    )
    assert f"larger than {MAX_BODY} bytes (serve.limits.max_body_bytes)" in body["error"]

    def chunks(data: bytes) -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(data), 16 * 1024):
            yield data[i : i + 16 * 1024]

    for path in ("/v1/classify", "/v1/generate", "/v1/feedback", "/v1/admin/reload"):
        with httpx.Client(base_url=server.url, timeout=30) as fresh:
            headers = JSON_CT | (bearer(TOKEN) if "admin" in path else {})
            r = fresh.post(path, content=chunks(big), headers=headers)
        assert "content-length" not in r.request.headers
        refused(f"chunked body over the limit: {path}", r, 413)
    # a declared length over the limit is refused before a byte of the body is read (raw
    # socket: httpx will not send a Content-Length its body does not match)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999999\r\n\r\n{}"
        )
        answer = b""
        while b"max_body_bytes" not in answer:  # headers and body may come in separate reads
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        head = answer.decode(errors="replace")
    status = int(head.split()[1])
    assert status == 413 and "max_body_bytes" in head, head[:500]
    TRIED.append(("huge declared Content-Length, 2 bytes sent", f"refused {status}"))
    server.still_serving()


def test_over_limit_fields_get_422(server: Server) -> None:
    limits = server.http.get("/v1/model").json()["limits"]
    n, t, a = limits["max_papers"], limits["title_max_chars"], limits["abstract_max_chars"]
    short = {"title": "t", "abstract": "a"}
    cases: list[tuple[str, str, Any]] = [
        ("too many papers", "/v1/classify", {"papers": [short] * (n + 1)}),
        ("far too many papers", "/v1/classify", {"papers": [short] * 5000}),
        ("over-long title", "/v1/classify", {"papers": [{**GOOD, "title": "x" * (t + 1)}]}),
        ("over-long abstract", "/v1/classify", {"papers": [{**GOOD, "abstract": "y" * (a + 1)}]}),
        (
            "over-long id",
            "/v1/classify",
            {"papers": [{**GOOD, "id": "i" * (limits["id_max_chars"] + 1)}]},
        ),
        ("over-long title /predict", "/predict", {**GOOD, "title": "x" * (t + 1)}),
        ("over-long abstract /predict", "/predict", {**GOOD, "abstract": "y" * (a + 1)}),
        (
            "top_k over the cap",
            "/v1/classify",
            {"papers": [GOOD], "top_k": limits["max_top_k"] + 1},
        ),
        ("top_k huge", "/v1/classify", {"papers": [GOOD], "top_k": 10**30}),
        ("top_k negative", "/v1/classify", {"papers": [GOOD], "top_k": -1}),
        ("reload model path over-long", "/v1/admin/reload", {"model": "m" * 5000}),
        (
            "reload extra field",
            "/v1/admin/reload",
            {"model": str(server.model), "exec": "rm -rf /"},
        ),
    ]
    for case, path, obj in cases:
        headers = bearer(TOKEN) if "admin" in path else {}
        r = server.http.post(path, content=_json(obj), headers=JSON_CT | headers)
        refused(
            case, r, 413 if case == "far too many papers" and len(_json(obj)) > MAX_BODY else 422
        )
    server.still_serving()


def test_generation_limits(server: Server) -> None:
    gen = server.http.get("/v1/model").json()["generator"]
    assert gen is not None, "the main server should serve the tiny LM"
    limits = gen.get("limits", gen)
    cap, max_chars = limits["max_new_tokens_cap"], limits["prompt_max_chars"]
    cases: list[tuple[str, str, Any]] = [
        ("prompt over prompt_max_chars", "/v1/generate", {"prompt": "p" * (max_chars + 1)}),
        (
            "max_new_tokens over the cap",
            "/v1/generate",
            {"prompt": "fever", "max_new_tokens": cap + 1},
        ),
        ("max_new_tokens huge", "/v1/generate", {"prompt": "fever", "max_new_tokens": 10**12}),
        ("max_new_tokens zero", "/v1/generate", {"prompt": "fever", "max_new_tokens": 0}),
        ("max_new_tokens string", "/v1/generate", {"prompt": "fever", "max_new_tokens": "9"}),
        ("blank prompt", "/v1/generate", {"prompt": "   "}),
        (
            "prompt over-long, streamed",
            "/v1/generate?stream=true",
            {"prompt": "p" * (max_chars + 1)},
        ),
        ("/infer prompt over-long", "/infer", {"prompt": "p" * (max_chars + 1)}),
        ("/infer max_length huge", "/infer", {"prompt": "fever", "max_length": 10**9}),
        ("/infer extra field", "/infer", {"prompt": "fever", "temperature": 99}),
    ]
    for case, path, obj in cases:
        refused(case, server.http.post(path, content=_json(obj), headers=JSON_CT), 422)
    ok = server.http.post(
        "/v1/generate", json={"prompt": "the patient has", "max_new_tokens": 4, "seed": 1}
    )
    assert ok.status_code == 200, ok.text
    server.still_serving()


def test_wrong_content_types_and_malformed_json(server: Server) -> None:
    good = _json({"papers": [GOOD]})
    content_types = [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/octet-stream",
    ]
    for ct in content_types:
        for path in ("/v1/classify", "/v1/generate"):
            r = server.http.post(path, content=good, headers={"content-type": ct})
            body = refused(f"content type {ct} on {path}", r, 415)
            assert "Content-Type must be application/json" in body["error"]
    nested_list = b'{"papers": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    nested_obj = b'{"a": ' * 5_000 + b"1" + b"}" * 5_000
    assert len(nested_list) < MAX_BODY and len(nested_obj) < MAX_BODY  # parsed, not cut off
    bodies: list[tuple[str, bytes]] = [
        ("malformed JSON", b'{"papers": [{"title": "t", "abstract": '),
        ("trailing garbage", good + b"}}"),
        ("JSON NaN top_k", b'{"papers": [{"title": "t", "abstract": "a"}], "top_k": NaN}'),
        (
            "huge integer literal",
            b'{"papers": [{"title": "t", "abstract": "a"}], "top_k": ' + b"9" * 5000 + b"}",
        ),
        ("deeply nested list", nested_list),
        ("deeply nested object", nested_obj),
        ("invalid UTF-8", b'{"papers": [{"title": "\xff\xfe", "abstract": "a"}]}'),
        ("empty body", b""),
        ("JSON null", b"null"),
    ]
    for case, content in bodies:
        for path in ("/v1/classify", "/v1/generate"):
            r = server.http.post(path, content=content, headers=JSON_CT)
            refused(f"{case} on {path}", r, 422)
    server.still_serving()


# --- no pickle -------------------------------------------------------------------------------


def test_pickle_bodies_are_refused_unread(server: Server, payloads: Payloads) -> None:
    blob = payloads.pickle_bytes()
    for ct in ("application/octet-stream", "application/python-pickle", "application/x-pickle"):
        for path in (
            "/v1/classify",
            "/predict",
            "/v1/generate",
            "/v1/feedback",
            "/v1/admin/reload",
        ):
            headers = {"content-type": ct} | (bearer(TOKEN) if "admin" in path else {})
            refused(
                f"pickle body ({ct}) on {path}",
                server.http.post(path, content=blob, headers=headers),
                415,
            )
    for path in ("/v1/classify", "/v1/admin/reload"):  # labelled JSON: it does not parse as JSON
        headers = JSON_CT | (bearer(TOKEN) if "admin" in path else {})
        refused(
            f"pickle body labelled JSON on {path}",
            server.http.post(path, content=blob, headers=headers),
            422,
        )
    payloads.assert_not_run()
    server.still_serving()


# (case, files to write as crafted payloads, files to delete, expected words; None = ignored)
BUNDLES: list[tuple[str, dict[str, str], list[str], str | None]] = [
    ("pickle as model.skops", {"model.skops": "pickle"}, [], "is corrupt"),
    ("joblib as model.skops", {"model.skops": "joblib"}, [], "is corrupt"),
    ("torch zip as model.skops", {"model.skops": "torch"}, [], "is corrupt"),
    ("skops with an untrusted type", {"model.skops": "skops-untrusted"}, [], "does not trust"),
    ("model.pkl instead of model.skops", {"model.pkl": "pickle"}, ["model.skops"], "not found"),
    ("model.joblib instead", {"model.joblib": "joblib"}, ["model.skops"], "model.skops not found"),
    ("pytorch_model.bin instead", {"pytorch_model.bin": "torch"}, ["model.skops"], "not found"),
    ("model.ckpt instead", {"model.ckpt": "torch"}, ["model.skops"], "model.skops not found"),
    (
        "pickles next to a valid bundle",
        {"model.pkl": "pickle", "model.joblib": "joblib", "model.bin": "torch",
         "model.ckpt": "torch"},
        [],
        None,
    ),
]  # fmt: skip


def crafted_bundle(
    src: Path, dest: Path, payloads: Payloads, write: dict[str, str], drop: list[str]
) -> Path:
    shutil.copytree(src, dest)
    for name in drop:
        (dest / name).unlink()
    for name, kind in write.items():
        payloads.write(dest / name, kind)
    return dest


def test_reload_refuses_crafted_bundles_and_keeps_serving(
    server: Server, tfidf_bundle: Path, payloads: Payloads
) -> None:
    before = server.http.get("/v1/model").json()["model"]
    for i, (case, write, drop, words) in enumerate(BUNDLES):
        bundle = crafted_bundle(tfidf_bundle, server.base / f"crafted-{i}", payloads, write, drop)
        r = server.http.post("/v1/admin/reload", json={"model": str(bundle)}, headers=bearer(TOKEN))
        payloads.assert_not_run()
        if words is None:  # the extra files are never read: the skops model loads as usual
            assert r.status_code == 200, (case, r.text)
            TRIED.append((f"reload: {case}", "ignored (never read)"))
            r = server.http.post(
                "/v1/admin/reload", json={"model": str(server.model)}, headers=bearer(TOKEN)
            )
            assert r.status_code == 200, r.text
            continue
        body = refused(f"reload: {case}", r, 409)
        assert "reload failed" in body["error"] and words in body["error"], (case, body)
        assert "still serving" in body["error"], body
        assert server.http.get("/v1/model").json()["model"] == before  # the old model serves
        server.still_serving()
    payloads.assert_not_run()


def test_predict_cli_refuses_crafted_bundles(
    tmp_path: Path, tfidf_bundle: Path, payloads: Payloads
) -> None:
    papers = tmp_path / "papers.jsonl"
    papers.write_text(json.dumps(GOOD) + "\n")
    for i, (case, write, words) in enumerate(
        [
            ("pickle as model.skops", {"model.skops": "pickle"}, "is corrupt"),
            ("skops with an untrusted type", {"model.skops": "skops-untrusted"}, "does not trust"),
        ]
    ):
        bundle = crafted_bundle(tfidf_bundle, tmp_path / f"b{i}", payloads, write, [])
        out = tmp_path / f"out{i}.jsonl"
        env = os.environ | TEST_ENV | {"PYTHONPATH": str(payloads.pythonpath)}
        proc = subprocess.run(
            [*paperops_command(), "predict", "-i", str(papers), "-o", str(out),
             "--model", str(bundle), "serve.threads=1"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        payloads.assert_not_run()
        text = proc.stdout + proc.stderr
        assert proc.returncode != 0 and words in text, (case, proc.returncode, text[-2000:])
        assert not out.exists() or not out.read_text().strip(), case
        TRIED.append((f"paperops predict: {case}", f"refused (exit {proc.returncode})"))


def test_lm_loader_refuses_pickled_torch_weights(
    tiny_lm: Path, tmp_path: Path, payloads: Payloads
) -> None:
    """An LM bundle with pytorch_model.bin (a torch pickle) instead of model.safetensors: the
    loader goes through transformers, which must not unpickle it (weights_only)."""
    from paperops.models.lm import load_lm

    bad = Path(shutil.copytree(tiny_lm, tmp_path / "lm"))
    (bad / "model.safetensors").unlink()
    payloads.write(bad / "pytorch_model.bin", "torch")
    with pytest.raises(Exception) as err:  # which error is transformers' choice
        load_lm(bad)
    payloads.assert_not_run()
    TRIED.append(
        ("LM bundle with a pickled pytorch_model.bin", f"refused ({type(err.value).__name__})")
    )
    extra = Path(shutil.copytree(tiny_lm, tmp_path / "lm-extra"))
    payloads.write(extra / "pytorch_model.bin", "torch")  # next to the safetensors weights
    load_lm(extra)
    payloads.assert_not_run()
    TRIED.append(
        ("LM bundle with a pickled pytorch_model.bin next to safetensors", "ignored (never read)")
    )


# --- static checks on src/ -----------------------------------------------------------------------

UNSAFE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("joblib", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("shelve", "open"),
    ("marshal", "loads"),
    ("yaml", "unsafe_load"),
}
UNSAFE_IMPORTS = {"dill", "cloudpickle", "shelve", "marshal"}


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_const(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unsafe_loads(source: str, filename: str) -> list[str]:
    """Calls that can unpickle (or execute) data read from a file, in one module."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            )
            found += [f"{where} imports {n}" for n in names if n.split(".")[0] in UNSAFE_IMPORTS]
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "joblib"):
                found += [
                    f"{where} from {node.module} import {a.name}"
                    for a in node.names
                    if "load" in a.name or a.name == "Unpickler"
                ]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
        attr = node.func.attr
        if (owner_name, attr) in UNSAFE_CALLS:
            found.append(f"{where} {owner_name}.{attr}(...)")
        elif (
            owner_name == "torch"
            and attr == "load"
            and not _is_const(_kw(node, "weights_only"), True)
        ):
            found.append(f"{where} torch.load(...) without weights_only=True")
        elif (
            owner_name in ("np", "numpy")
            and attr == "load"
            and _is_const(_kw(node, "allow_pickle"), True)
        ):
            found.append(f"{where} numpy.load(allow_pickle=True)")
        elif owner_name == "yaml" and attr == "load":
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if not (
                isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")
            ):
                found.append(f"{where} yaml.load without SafeLoader")
        elif attr == "load" and owner_name in ("sio", "skops", "io"):
            trusted = _kw(node, "trusted")
            if not (isinstance(trusted, ast.List) and not trusted.elts):
                found.append(f"{where} skops load with trusted= other than []")
    return found


def test_static_check_finds_unsafe_loads() -> None:
    """The checker itself catches what it must (so a clean src/ means something)."""
    bad = (
        "import pickle, torch, joblib, yaml, numpy as np\nimport skops.io as sio\nimport dill\n"
        "pickle.loads(b)\njoblib.load(p)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\nyaml.load(s)\nsio.load(p, trusted=True)\nsio.load(p)\n"
    )
    assert len(unsafe_loads(bad, "bad.py")) == 9
    good = (
        "import torch, yaml, numpy as np\nimport skops.io as sio\n"
        "torch.load(p, map_location='cpu', weights_only=True)\nnp.load(p)\n"
        "yaml.load(s, Loader=yaml.SafeLoader)\nsio.load(p, trusted=[])\njson.load(f)\n"
    )
    assert unsafe_loads(good, "good.py") == []


def test_src_has_no_unsafe_deserialisation() -> None:
    found: list[str] = []
    for path in sorted((REPO / "src").rglob("*.py")):
        found += unsafe_loads(path.read_text(), str(path.relative_to(REPO)))
    assert found == [], (
        "unsafe loads in src/ (use JSON, safetensors or skops with trusted=[]):\n"
        + "\n".join(found)
    )


# --- bandit ---------------------------------------------------------------------------------

NOSEC = re.compile(r"#\s*nosec\b(?P<rest>.*)$")
NOSEC_JUSTIFIED = re.compile(r"#\s*nosec\s+B\d{3}(\s*,\s*B\d{3})*\s+#\s*\S.{5,}")


def test_bandit_is_clean_and_every_nosec_is_justified() -> None:
    exe = Path(sys.executable).with_name("bandit")
    if not exe.is_file():
        pytest.fail(
            "bandit is not installed: pip install -c requirements/lock.txt -r requirements/dev.txt"
        )
    proc = subprocess.run(
        [str(exe), "-r", "src", "-c", "pyproject.toml", "-f", "json", "-q"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    findings = [
        f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}"
        for r in report["results"]
    ]
    assert findings == [], "bandit findings (fix, or add '# nosec BXXX # reason'):\n" + "\n".join(
        findings
    )
    assert not report["errors"], report["errors"]
    assert "not a test name or id" not in proc.stderr, proc.stderr  # a nosec bandit did not parse
    bare = []
    for path in sorted((REPO / "src").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if NOSEC.search(line) and not NOSEC_JUSTIFIED.search(line):
                bare.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert bare == [], "nosec without a test id and a reason ('# nosec BXXX # why'):\n" + "\n".join(
        bare
    )


# --- dependency audit ---------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def audit_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, Path]]:
    """scripts/audit.py started when this module starts: it waits on PyPI, not the CPU, so it
    runs while the other tests here do; `test_pip_audit_of_the_lock_file` collects it."""
    out = tmp_path_factory.mktemp("audit")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts/audit.py"), "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def test_pip_audit_of_the_lock_file(audit_run: tuple[subprocess.Popen, Path]) -> None:
    """scripts/audit.py against PyPI's vulnerability data: no vulnerability outside the reviewed
    ignore list. Skips only when PyPI cannot be reached."""
    proc, out = audit_run
    try:
        httpx.get("https://pypi.org/pypi/pip/json", timeout=15, follow_redirects=True)
    except httpx.HTTPError as e:
        pytest.skip(f"PyPI (https://pypi.org) is unreachable ({e}): the dependency audit needs it")
    stdout, stderr = proc.communicate(timeout=300)
    if proc.returncode == 2:
        pytest.skip(f"PyPI could not be reached during the audit: {stderr.strip()[-300:]}")
    assert (out / "pip-audit.json").is_file(), stdout + stderr
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, summary + stderr[-2000:]
    assert "unreviewed vulnerabilities: 0" in summary, summary
