"""Resumable arXiv OAI-PMH harvester that writes Kaggle-snapshot-style JSON lines.

Why this exists: the Kaggle arXiv snapshot is large and lags behind arXiv, so users with internet
can fetch fresh metadata straight from arXiv's OAI-PMH endpoint into the same JSON-lines format
the rest of the pipeline already reads (plus ``"source": "oai-pmh"``).

A full harvest takes hours at arXiv's requested pace (one request per 3 s), so the harvester is
resumable and exactly-once: after every page it appends the page's lines to the output, fsyncs,
then atomically replaces ``<out>.state.json`` with

    {"version": 1,
     "params": {"base_url", "metadata_prefix", "set_spec", "from_date", "until_date"},
     "resumption_token": str | null,   # null: the next request is the initial one
     "offset": int,                    # output size in bytes after the last complete page
     "total_records": int,             # lines in the output up to `offset`
     "deleted_skipped": int, "invalid_skipped": int, "pages": int,  # cumulative
     "complete_list_size": int | null, # as last announced by the server, for progress only
     "complete": bool,                 # the server ended the list (empty/absent token)
     "updated_at": "ISO-8601 UTC"}

A rerun with the same params truncates the output back to `offset` (dropping any half-written
page from a crash) and continues from the stored token.

``max_records`` stops only at page boundaries: the harvest ends after the first page that brings
the total to ``max_records`` or more, so the output may hold up to one page (arXiv: ~1000
records) more than asked. That keeps the state exact, so a later run without ``max_records``
continues with no duplicates and no gaps.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET  # nosec B405 # parse_xml: no external entities, expat limits expansion
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlencode

import httpx

from paperops import __version__
from paperops.io import atomic_write_text

log = logging.getLogger(__name__)

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
ARXIV_RAW_NS = "http://arxiv.org/OAI/arXivRaw/"
ARXIV_NS = "http://arxiv.org/OAI/arXiv/"
#: arXiv's OAI-PMH endpoint since 2025 (formerly http://export.arxiv.org/oai2).
DEFAULT_BASE_URL = "https://oaipmh.arxiv.org/oai"
SUPPORTED_PREFIXES = ("arXivRaw", "arXiv")
SOURCE = "oai-pmh"
STATE_VERSION = 1
USER_AGENT = f"paperops/{__version__} (arXiv OAI-PMH harvester; python-httpx)"
MAX_RETRY_AFTER_S = 600.0
MAX_BACKOFF_S = 60.0

_O = f"{{{OAI_NS}}}"
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_VERSION_RE = re.compile(r"v\d+$")
_WS_RE = re.compile(r"\s+")
# Status codes worth retrying: the server is busy/rate limiting or hit a transient fault.
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_BACKOFF_STATUSES = frozenset({408})
_ERROR_HINTS = {
    "badArgument": "check set_spec, from_date and until_date",
    "badVerb": "check base_url points at an OAI-PMH endpoint",
    "cannotDisseminateFormat": f"use a metadata_prefix the server offers ({SUPPORTED_PREFIXES})",
    "noSetHierarchy": "this repository has no sets; drop set_spec",
}


class HarvestError(RuntimeError):
    """A harvest that cannot go on; the message says what failed, where, and what to do next."""


@dataclass
class HarvestResult:
    """What one call did; `total_records` also counts lines written by earlier resumed runs."""

    records_written: int
    total_records: int
    deleted_skipped: int
    pages: int
    resumed: bool
    complete: bool
    invalid_skipped: int = 0


@dataclass
class _Page:
    """One parsed ListRecords response."""

    records: list[dict[str, str]]
    deleted: int
    invalid: int
    token: str | None
    complete_list_size: int | None
    no_records: bool = False


def state_path_for(out_path: Path) -> Path:
    """The state file that makes `out_path` resumable: `<out>.state.json` next to it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".state.json")


def harvest(
    base_url: str,
    out_path: Path,
    *,
    metadata_prefix: str = "arXivRaw",
    set_spec: str | None = None,
    from_date: str | None = None,
    until_date: str | None = None,
    max_records: int | None = None,
    min_interval_s: float = 3.0,
    max_retries: int = 5,
    timeout_s: float = 60.0,
    restart: bool = False,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_page: Callable[[int, int], None] | None = None,
) -> HarvestResult:
    """Harvest ListRecords from `base_url` into JSON lines at `out_path`, resuming if possible.

    `on_page(pages_this_call, total_records)` is called after each page is durably saved.
    Raises HarvestError when the harvest cannot continue (progress so far stays resumable) and
    ValueError for invalid arguments.
    """
    _validate_args(
        metadata_prefix, from_date, until_date, max_records, min_interval_s, max_retries, timeout_s
    )
    out_path = Path(out_path)
    state_path = state_path_for(out_path)
    params: dict[str, Any] = {
        "base_url": base_url,
        "metadata_prefix": metadata_prefix,
        "set_spec": set_spec,
        "from_date": from_date,
        "until_date": until_date,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)

    state = None if restart else _load_state(state_path)
    resumed = state is not None
    if state is not None:
        if state["params"] != params:
            raise HarvestError(_params_mismatch_message(state_path, state["params"], params))
        if state["complete"]:
            log.info(
                "harvest into %s is already complete (%d records); nothing to fetch",
                out_path,
                state["total_records"],
            )
            return HarvestResult(0, state["total_records"], 0, 0, True, True)
    else:
        if not restart and out_path.exists() and out_path.stat().st_size > 0:
            raise HarvestError(
                f"{out_path} already exists but has no harvest state file ({state_path.name}), "
                "so it cannot be resumed safely; pass restart=True (CLI: --restart) to overwrite "
                "it or choose another output path"
            )
        state = _new_state(params)
        # State first, then truncate: at every instant the state describes the output correctly.
        _save_state(state_path, state)

    if max_records is not None and state["total_records"] >= max_records:
        log.info(
            "%s already holds %d records (max_records=%d); nothing to fetch",
            out_path,
            state["total_records"],
            max_records,
        )
        return HarvestResult(0, state["total_records"], 0, 0, resumed, False)

    if resumed:
        log.info(
            "resuming harvest into %s at %d records (%s)",
            out_path,
            state["total_records"],
            "next page" if state["resumption_token"] else "first page",
        )
    own_client = client is None
    http = (
        client
        if client is not None
        else httpx.Client(
            timeout=timeout_s, follow_redirects=True, headers={"User-Agent": USER_AGENT}
        )
    )
    fetcher = _Fetcher(http, base_url, sleep, min_interval_s, max_retries, timeout_s)
    written = deleted = invalid = pages = 0
    try:
        with _open_output(out_path, state["offset"]) as fh:
            while True:
                token = state["resumption_token"]
                request = _request_params(metadata_prefix, set_spec, from_date, until_date, token)
                root = fetcher.fetch(request)
                page = _parse_page(root, metadata_prefix, fetcher.describe(request), base_url)
                if token is not None and page.token == token:
                    raise HarvestError(
                        f"{base_url} returned the resumptionToken it was sent ({token!r}); "
                        "stopping instead of looping forever. Rerun later, or restart=True"
                    )
                if page.no_records:
                    log.info("no records match %s", fetcher.describe(request))
                else:
                    data = b"".join(
                        json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n"
                        for r in page.records
                    )
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                    pages += 1
                    written += len(page.records)
                    deleted += page.deleted
                    invalid += page.invalid
                state.update(
                    resumption_token=page.token,
                    offset=fh.tell(),
                    total_records=state["total_records"] + len(page.records),
                    deleted_skipped=state["deleted_skipped"] + page.deleted,
                    invalid_skipped=state["invalid_skipped"] + page.invalid,
                    pages=state["pages"] + (0 if page.no_records else 1),
                    complete_list_size=page.complete_list_size,
                    complete=page.token is None,
                )
                _save_state(state_path, state)
                log.info(
                    "page %d: %d records so far in %s (server lists %s)%s",
                    state["pages"],
                    state["total_records"],
                    out_path.name,
                    page.complete_list_size if page.complete_list_size is not None else "?",
                    "; complete" if state["complete"] else "",
                )
                if on_page is not None and not page.no_records:
                    on_page(pages, state["total_records"])
                if state["complete"]:
                    break
                if max_records is not None and state["total_records"] >= max_records:
                    log.info(
                        "stopping at max_records=%d (%d written); rerun to continue",
                        max_records,
                        state["total_records"],
                    )
                    break
    finally:
        if own_client:
            http.close()
    return HarvestResult(
        records_written=written,
        total_records=state["total_records"],
        deleted_skipped=deleted,
        pages=pages,
        resumed=resumed,
        complete=state["complete"],
        invalid_skipped=invalid,
    )


# --------------------------------------------------------------------------- arguments & state


def _validate_args(
    metadata_prefix: str,
    from_date: str | None,
    until_date: str | None,
    max_records: int | None,
    min_interval_s: float,
    max_retries: int,
    timeout_s: float,
) -> None:
    """Reject bad arguments before any request, so a typo costs nothing."""
    if metadata_prefix not in SUPPORTED_PREFIXES:
        raise ValueError(
            f"metadata_prefix must be one of {SUPPORTED_PREFIXES}, got {metadata_prefix!r}"
        )
    for name, value in (("from_date", from_date), ("until_date", until_date)):
        if value is not None and not (_DATE_RE.match(value) or _DATETIME_RE.match(value)):
            raise ValueError(f"{name} must be YYYY-MM-DD (or YYYY-MM-DDThh:mm:ssZ), got {value!r}")
    if max_records is not None and max_records < 1:
        raise ValueError(f"max_records must be >= 1 or None, got {max_records}")
    if min_interval_s < 0 or max_retries < 0 or timeout_s <= 0:
        raise ValueError("min_interval_s and max_retries must be >= 0 and timeout_s > 0")


def _new_state(params: dict[str, Any]) -> dict[str, Any]:
    """State of a harvest that has not fetched anything yet."""
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "params": params,
        "offset": 0,
        "total_records": 0,
        "deleted_skipped": 0,
        "invalid_skipped": 0,
        "pages": 0,
        "complete_list_size": None,
        "complete": False,
        "updated_at": None,
    }
    # set apart: in a dict literal a "*_token" key reads as a hard-coded password to bandit
    state["resumption_token"] = None
    return state


def _load_state(state_path: Path) -> dict[str, Any] | None:
    """Read the state file; a corrupt one is an error, not a silent restart."""
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {state.get('version')!r}")
        for key in ("params", "offset", "total_records", "complete", "resumption_token"):
            if key not in state:
                raise ValueError(f"missing key {key!r}")
    except (ValueError, AttributeError) as exc:
        raise HarvestError(
            f"harvest state file {state_path} is unreadable ({exc}); pass restart=True "
            "(CLI: --restart) to start the harvest over"
        ) from exc
    for key in ("deleted_skipped", "invalid_skipped", "pages"):
        state.setdefault(key, 0)
    state.setdefault("complete_list_size", None)
    return state


def _save_state(state_path: Path, state: dict[str, Any]) -> None:
    """Atomically replace the state file, so a crash leaves either the old or the new state."""
    state["updated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    atomic_write_text(state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")


def _params_mismatch_message(state_path: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    """Explain which harvest parameters differ from the interrupted harvest."""
    diffs = ", ".join(
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    )
    return (
        f"{state_path} belongs to a harvest with different parameters ({diffs}); "
        "pass restart=True (CLI: --restart) to discard it and start over, "
        "or choose another output path"
    )


@contextlib.contextmanager
def _open_output(path: Path, offset: int) -> Iterator[BinaryIO]:
    """Open the output for appending at `offset`, dropping anything after it (a torn page)."""
    with open(path, "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < offset:
            raise HarvestError(
                f"{path} is {size} bytes but the harvest state says {offset} were written; "
                "the file was changed outside the harvester. Pass restart=True "
                "(CLI: --restart) to start over"
            )
        if size > offset:
            log.warning(
                "dropping %d bytes after offset %d in %s (a page interrupted by a "
                "crash); it will be fetched again",
                size - offset,
                offset,
                path,
            )
            fh.truncate(offset)
            fh.flush()
            os.fsync(fh.fileno())
        fh.seek(offset)
        yield fh


# --------------------------------------------------------------------------- HTTP


def _request_params(
    metadata_prefix: str,
    set_spec: str | None,
    from_date: str | None,
    until_date: str | None,
    token: str | None,
) -> dict[str, str]:
    """Query for the next request; with a token, the protocol allows only verb + token."""
    if token is not None:
        return {"verb": "ListRecords", "resumptionToken": token}
    query = {"verb": "ListRecords", "metadataPrefix": metadata_prefix}
    if set_spec is not None:
        query["set"] = set_spec
    if from_date is not None:
        query["from"] = from_date
    if until_date is not None:
        query["until"] = until_date
    return query


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _parse_xml(content: bytes) -> ET.Element:
    """Parse a response body.

    defusedxml is not a dependency; ElementTree never fetches external entities and the
    bundled expat (>= 2.4.1) limits entity-expansion attacks, which is enough for a known host.
    """
    return ET.fromstring(content)  # noqa: S314  # nosec B314 # see the docstring: expat >= 2.4.1


class _Fetcher:
    """Sends OAI-PMH requests politely (min interval, User-Agent) with retries and backoff."""

    def __init__(
        self,
        client: httpx.Client,
        base_url: str,
        sleep: Callable[[float], None],
        min_interval_s: float,
        max_retries: int,
        timeout_s: float,
    ) -> None:
        self._client = client
        self._base_url = base_url
        self._sleep = sleep
        self._min_interval_s = min_interval_s
        self._max_retries = max_retries
        self._timeout_s = timeout_s
        self._last_done: float | None = None

    def describe(self, query: dict[str, str]) -> str:
        """The full request URL, for messages."""
        return f"{self._base_url}?{urlencode(query)}"

    def _wait_turn(self) -> None:
        """Keep at least min_interval_s between the end of one request and the next."""
        if self._last_done is None or self._min_interval_s <= 0:
            return
        remaining = self._last_done + self._min_interval_s - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)

    def fetch(self, query: dict[str, str]) -> ET.Element:
        """GET one page and return the OAI-PMH root element; retry transient failures."""
        url = self.describe(query)
        last = "no attempt made"
        for attempt in range(self._max_retries + 1):
            backoff = min(2.0**attempt, MAX_BACKOFF_S)
            delay = backoff
            self._wait_turn()
            try:
                resp = self._client.get(
                    self._base_url,
                    params=query,
                    headers={"User-Agent": USER_AGENT},
                    timeout=self._timeout_s,
                )
            except httpx.TimeoutException as exc:
                last = f"timed out after {self._timeout_s:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {exc})"
            else:
                status = resp.status_code
                last = f"HTTP {status}"
                if status == 200:
                    try:
                        root = _parse_xml(resp.content)
                    except ET.ParseError as exc:
                        last = f"HTTP 200 with malformed XML ({exc})"
                    else:
                        _check_root(root, url)
                        return root
                elif status in _RETRY_AFTER_STATUSES:
                    retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
                    if retry_after is not None:
                        delay = retry_after
                        last = f"HTTP {status} (Retry-After: {resp.headers['Retry-After']})"
                elif status >= 500 or status in _BACKOFF_STATUSES:
                    pass
                else:
                    error_root = _try_oai_error(resp.content)
                    if error_root is not None:
                        return (
                            error_root  # an OAI error sent with a 4xx status; the caller reports it
                        )
                    hint = (
                        "check base_url"
                        if status in (301, 302, 303, 307, 308, 404, 410)
                        else "check the harvest parameters"
                    )
                    raise HarvestError(
                        f"ListRecords request {url} failed with HTTP {status} "
                        f"{resp.reason_phrase}; not retried ({hint})"
                    )
            finally:
                self._last_done = time.monotonic()
            if attempt == self._max_retries:
                break
            log.warning(
                "%s: %s; retry %d/%d in %.1f s", url, last, attempt + 1, self._max_retries, delay
            )
            if delay > 0:
                self._sleep(delay)
        raise HarvestError(
            f"giving up on ListRecords request {url} after {self._max_retries + 1} attempts; "
            f"last error: {last}. Progress so far is saved: rerun the same harvest later to "
            "resume, or raise max_retries"
        )


def _check_root(root: ET.Element, url: str) -> None:
    """A 200 that is not OAI-PMH means a wrong base_url (or a proxy page), not a transient fault."""
    if root.tag != f"{_O}OAI-PMH":
        raise HarvestError(
            f"{url} did not return an OAI-PMH document (root element {root.tag!r}); check base_url"
        )


def _try_oai_error(content: bytes) -> ET.Element | None:
    """Return the root if a non-200 body is an OAI-PMH error document, else None."""
    try:
        root = _parse_xml(content)
    except ET.ParseError:
        return None
    if root.tag == f"{_O}OAI-PMH" and root.find(f"{_O}error") is not None:
        return root
    return None


# --------------------------------------------------------------------------- parsing


def _collapse(text: str | None) -> str:
    """Strip and collapse whitespace runs to one space (TeX is kept as-is)."""
    return _WS_RE.sub(" ", text or "").strip()


def _parse_page(root: ET.Element, metadata_prefix: str, url: str, base_url: str) -> _Page:
    """Turn one ListRecords response into output records, or raise on an OAI error."""
    errors = root.findall(f"{_O}error")
    if errors:
        codes = [(e.get("code") or "unknown", _collapse(e.text)) for e in errors]
        if all(code == "noRecordsMatch" for code, _ in codes):
            return _Page([], 0, 0, None, 0, no_records=True)
        detail = "; ".join(f"{code}: {msg}" if msg else code for code, msg in codes)
        if any(code == "badResumptionToken" for code, _ in codes):
            raise HarvestError(
                f"{base_url} rejected the resumptionToken ({detail}); it has probably expired "
                "because the harvest paused too long. It cannot continue from where it "
                "stopped: rerun with restart=True (CLI: --restart) to start over"
            )
        hints = [_ERROR_HINTS[code] for code, _ in codes if code in _ERROR_HINTS]
        raise HarvestError(
            f"OAI-PMH error from {url}: {detail}" + (f" ({'; '.join(hints)})" if hints else "")
        )
    list_records = root.find(f"{_O}ListRecords")
    if list_records is None:
        raise HarvestError(f"{url} returned an OAI-PMH document without ListRecords or error")

    records: list[dict[str, str]] = []
    deleted = invalid = 0
    for rec in list_records.findall(f"{_O}record"):
        header = rec.find(f"{_O}header")
        if header is not None and header.get("status") == "deleted":
            deleted += 1
            continue
        parsed = _parse_record(rec, metadata_prefix)
        if isinstance(parsed, str):
            invalid += 1
            log.warning("skipping record %s: %s", _identifier(rec), parsed)
        else:
            records.append(parsed)

    token: str | None = None
    size: int | None = None
    token_el = list_records.find(f"{_O}resumptionToken")
    if token_el is not None:
        token = (token_el.text or "").strip() or None
        raw_size = token_el.get("completeListSize")
        if raw_size is not None and raw_size.strip().isdigit():
            size = int(raw_size)
    return _Page(records, deleted, invalid, token, size)


def _identifier(rec: ET.Element) -> str:
    """The OAI identifier of a record, for log messages."""
    ident = rec.findtext(f"{_O}header/{_O}identifier")
    return ident.strip() if ident else "<no identifier>"


def _parse_record(rec: ET.Element, metadata_prefix: str) -> dict[str, str] | str:
    """One output record, or a string saying why the record is unusable."""
    if metadata_prefix == "arXivRaw":
        ns = f"{{{ARXIV_RAW_NS}}}"
        meta = rec.find(f"{_O}metadata/{ns}arXivRaw")
    else:
        ns = f"{{{ARXIV_NS}}}"
        meta = rec.find(f"{_O}metadata/{ns}arXiv")
    if meta is None:
        return f"no <{metadata_prefix}> metadata element"

    fields = {
        name: _collapse(meta.findtext(f"{ns}{name}"))
        for name in ("id", "title", "abstract", "categories")
    }
    if metadata_prefix == "arXivRaw":
        fields["authors"] = _collapse(meta.findtext(f"{ns}authors"))
        date = _collapse(rec.findtext(f"{_O}header/{_O}datestamp"))
    else:
        fields["authors"] = _join_authors(meta, ns)
        date = _collapse(meta.findtext(f"{ns}updated")) or _collapse(meta.findtext(f"{ns}created"))
    missing = [name for name, value in fields.items() if not value]
    if missing:
        return f"missing or empty {', '.join(missing)}"
    date = date[:10]
    if not _DATE_RE.match(date):
        return f"no usable date (got {date!r})"
    return {
        "id": _VERSION_RE.sub("", fields["id"]),
        "title": fields["title"],
        "abstract": fields["abstract"],
        "categories": fields["categories"],
        "update_date": date,
        "authors": fields["authors"],
        "source": SOURCE,
    }


def _join_authors(meta: ET.Element, ns: str) -> str:
    """arXiv-format authors as "Forenames Keyname[ Suffix], ..." (the Kaggle string form)."""
    names = []
    for author in meta.findall(f"{ns}authors/{ns}author"):
        parts = [
            _collapse(author.findtext(f"{ns}{part}")) for part in ("forenames", "keyname", "suffix")
        ]
        name = " ".join(p for p in parts if p)
        if name:
            names.append(name)
    return ", ".join(names)
