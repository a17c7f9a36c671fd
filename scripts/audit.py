"""Dependency audit of requirements/lock.txt against PyPI's vulnerability data (pip-audit).

    python scripts/audit.py [--lock requirements/lock.txt]
        [--ignore requirements/audit-ignore.yaml] [--out reports/security]

Runs `pip-audit -r LOCK --no-deps --disable-pip --vulnerability-service pypi` (no resolver, no
virtualenv, nothing but https://pypi.org). Where PyPI's per-version JSON API does not answer for a
pin ("not found on PyPI"), the pin is checked against the project's JSON instead when it is the
project's latest release (that JSON's `vulnerabilities` are the latest release's); other pins are
reported as not audited.

Writes OUT/pip-audit.json (pip-audit's raw output), OUT/audit.json (the merged result) and
OUT/summary.md. Exit status: 0 = no vulnerability outside the ignore list; 1 = unreviewed
vulnerabilities, or an ignore entry past its review-by date; 2 = PyPI could not be reached (nothing
was audited); 3 = a usage or configuration error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PYPI_JSON = "https://pypi.org/pypi/{name}/json"
NOT_FOUND = "Dependency not found on PyPI"


def load_ignores(path: Path) -> dict[str, dict[str, Any]]:
    """The reviewed exceptions, by vulnerability id; each needs id, package, reason, review_by."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("ignore") or []
    out = {}
    for i, e in enumerate(entries):
        missing = [k for k in ("id", "package", "reason", "review_by") if not e.get(k)]
        if missing:
            raise SystemExit(
                f"{path}: ignore[{i}] lacks {missing} (each entry: id, package, reason, review_by)"
            )
        if not isinstance(e["review_by"], dt.date):
            raise SystemExit(
                f"{path}: ignore[{i}].review_by must be a date (YYYY-MM-DD); got {e['review_by']!r}"
            )
        out[str(e["id"])] = e
    return out


def run_pip_audit(lock: Path, raw: Path, chunks: int = 4) -> dict[str, Any]:
    """pip-audit over the lock file, in `chunks` processes at once: it asks PyPI about one pin at
    a time, so the run is network latency, not CPU. The merged JSON goes to `raw`."""
    exe = Path(sys.executable).with_name("pip-audit")
    pins = [
        line
        for line in lock.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    parts = [pins[i::chunks] for i in range(chunks)]

    def one(i: int) -> dict[str, Any]:
        req, out = raw.with_suffix(f".part{i}.txt"), raw.with_suffix(f".part{i}.json")
        req.write_text("\n".join(parts[i]) + "\n")
        cmd = [str(exe) if exe.is_file() else "pip-audit"]
        cmd += ["-r", str(req), "--no-deps", "--disable-pip", "--vulnerability-service", "pypi"]
        cmd += ["--format", "json", "--output", str(out), "--progress-spinner", "off"]
        cmd += ["--desc", "on", "--aliases", "on", "--timeout", "30"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
        try:
            if not out.is_file():
                raise SystemExit(
                    f"pip-audit failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
                )
            return json.loads(out.read_text())
        finally:
            req.unlink(missing_ok=True)
            out.unlink(missing_ok=True)

    with ThreadPoolExecutor(max_workers=chunks) as pool:
        results = list(pool.map(one, range(chunks)))
    merged = {
        "dependencies": [d for r in results for d in r.get("dependencies", [])],
        "fixes": [f for r in results for f in r.get("fixes", [])],
    }
    raw.write_text(json.dumps(merged, indent=2))
    return merged


def project_json(name: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(PYPI_JSON.format(name=name), timeout=30) as r:  # noqa: S310
            return json.load(r)
    except (urllib.error.URLError, TimeoutError, json.JSONDecodeError):
        return None


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def audit(lock: Path, ignore_path: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ignores = load_ignores(ignore_path)
    raw = run_pip_audit(lock, out / "pip-audit.json")
    audited: list[dict[str, Any]] = []
    not_audited: list[dict[str, str]] = []
    fallback = 0
    deps = raw.get("dependencies", [])
    skipped = [d["name"] for d in deps if NOT_FOUND in d.get("skip_reason", "")]
    with ThreadPoolExecutor(max_workers=8) as pool:  # network-bound: a few requests at once
        projects = dict(zip(skipped, pool.map(project_json, skipped), strict=True))
    for dep in deps:
        if "skip_reason" not in dep:
            audited.append(
                {
                    "name": dep["name"],
                    "version": dep["version"],
                    "vulns": dep["vulns"],
                    "via": "pip-audit",
                }
            )
            continue
        m = re.search(r"\(([^()]+)\)\s*$", dep["skip_reason"])
        version = m.group(1) if m else "?"
        info = projects.get(dep["name"])
        if info is not None and canonical(info["info"]["version"]) == canonical(version):
            vulns = [
                {"id": v["id"], "fix_versions": v.get("fixed_in") or [],
                 "aliases": v.get("aliases") or [],
                 "description": (v.get("summary") or v.get("details") or "")[:500]}
                for v in info.get("vulnerabilities") or []
                if not v.get("withdrawn")
            ]  # fmt: skip
            audited.append(
                {"name": dep["name"], "version": version, "vulns": vulns, "via": "project JSON"}
            )
            fallback += 1
        else:
            reason = (
                dep["skip_reason"]
                if info is None
                else f"{dep['skip_reason']} (latest is {info['info']['version']})"
            )
            not_audited.append({"name": dep["name"], "version": version, "reason": reason})
    if not audited:
        (out / "summary.md").write_text(
            "# Dependency audit\n\nPyPI could not be reached: nothing was audited.\n"
        )
        print(f"audit: PyPI could not be reached; nothing audited (see {out})", file=sys.stderr)
        return 2
    today = dt.date.today()
    found, ignored, expired = [], [], []
    for dep in audited:
        for v in dep["vulns"]:
            ids = {v["id"], *v.get("aliases", [])}
            entry = next((ignores[i] for i in ids if i in ignores), None)
            row = {"package": dep["name"], "version": dep["version"], **v}
            if entry is None or canonical(entry["package"]) != canonical(dep["name"]):
                found.append(row)
            elif entry["review_by"] < today:
                expired.append(
                    {**row, "review_by": str(entry["review_by"]), "reason": entry["reason"]}
                )
            else:
                ignored.append(
                    {**row, "review_by": str(entry["review_by"]), "reason": entry["reason"]}
                )
    seconds = round(time.monotonic() - t0, 1)
    result = {
        "lock": str(lock),
        "date": today.isoformat(),
        "seconds": seconds,
        "pins": len(audited) + len(not_audited),
        "audited": len(audited),
        "audited_via_project_json": fallback,
        "not_audited": not_audited,
        "vulnerabilities": found,
        "ignored": ignored,
        "expired_ignores": expired,
    }
    (out / "audit.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Dependency audit",
        "",
        f"- lock file: `{lock.name}`, {result['pins']} pins, audited {today} in {seconds} s",
        f"- audited: {len(audited)} (pip-audit, PyPI vulnerability data; {fallback} through the "
        "project JSON because PyPI's per-version JSON did not answer)",
        f"- not audited: {len(not_audited)} (not the latest release, and PyPI's per-version "
        "JSON did not answer)",
        f"- unreviewed vulnerabilities: {len(found)}",
        f"- ignored (reviewed, see {ignore_path.name}): {len(ignored)}",
        f"- ignore entries past their review-by date: {len(expired)}",
    ]
    for title, rows in (("Unreviewed", found), ("Review expired", expired), ("Ignored", ignored)):
        if rows:
            lines += [
                "",
                f"## {title}",
                "",
                "| package | version | id | fixed in |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {r['package']} | {r['version']} | {r['id']} | "
                f"{', '.join(r['fix_versions']) or '-'} |"
                for r in rows
            ]
    if not_audited:
        lines += [
            "",
            "## Not audited",
            "",
            ", ".join(f"{d['name']}=={d['version']}" for d in not_audited),
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[2:9]))
    return 1 if found or expired else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lock", type=Path, default=REPO / "requirements/lock.txt")
    ap.add_argument("--ignore", type=Path, default=REPO / "requirements/audit-ignore.yaml")
    ap.add_argument("--out", type=Path, default=REPO / "reports/security")
    args = ap.parse_args(argv)
    if not args.lock.is_file():
        print(f"audit: lock file {args.lock} not found", file=sys.stderr)
        return 3
    try:
        return audit(args.lock, args.ignore, args.out)
    except SystemExit as e:
        print(f"audit: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
