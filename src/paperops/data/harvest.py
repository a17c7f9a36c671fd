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
from paperops.data.oai import (
    DATE_RE,
    DATETIME_RE,
    SUPPORTED_PREFIXES,
    HarvestError,
    check_root,
    parse_page,
    parse_xml,
    try_oai_error,
)
from paperops.io import atomic_write_text

log = logging.getLogger(__name__)

#: arXiv's OAI-PMH endpoint since 2025 (formerly http://export.arxiv.org/oai2).
DEFAULT_BASE_URL = "https://oaipmh.arxiv.org/oai"
STATE_VERSION = 1
USER_AGENT = f"paperops/{__version__} (arXiv OAI-PMH harvester; python-httpx)"
MAX_RETRY_AFTER_S = 600.0
MAX_BACKOFF_S = 60.0

# Status codes worth retrying: the server is busy/rate limiting or hit a transient fault.
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_BACKOFF_STATUSES = frozenset({408})


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
                page = parse_page(root, metadata_prefix, fetcher.describe(request), base_url)
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
        if value is not None and not (DATE_RE.match(value) or DATETIME_RE.match(value)):
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
                        root = parse_xml(resp.content)
                    except ET.ParseError as exc:
                        last = f"HTTP 200 with malformed XML ({exc})"
                    else:
                        check_root(root, url)
                        return root
                elif status in _RETRY_AFTER_STATUSES:
                    retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
                    if retry_after is not None:
                        delay = retry_after
                        last = f"HTTP {status} (Retry-After: {resp.headers['Retry-After']})"
                elif status >= 500 or status in _BACKOFF_STATUSES:
                    pass
                else:
                    error_root = try_oai_error(resp.content)
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


# --------------------------------------------------------------------------- parsing
