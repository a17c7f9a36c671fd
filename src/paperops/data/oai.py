"""OAI-PMH responses -> records: the XML of arXiv's `arXivRaw` and `arXiv` metadata formats parsed
into rows of the Kaggle snapshot's shape, and OAI errors turned into `HarvestError`s that say
what to do. The harvester (`data.harvest`) owns the HTTP, retries and the resumable state.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET  # nosec B405 # parse_xml: no external entities, expat limits expansion
from dataclasses import dataclass

SUPPORTED_PREFIXES = ("arXivRaw", "arXiv")


SOURCE = "oai-pmh"


log = logging.getLogger(__name__)


OAI_NS = "http://www.openarchives.org/OAI/2.0/"


ARXIV_RAW_NS = "http://arxiv.org/OAI/arXivRaw/"


ARXIV_NS = "http://arxiv.org/OAI/arXiv/"


_O = f"{{{OAI_NS}}}"


DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


_VERSION_RE = re.compile(r"v\d+$")


_WS_RE = re.compile(r"\s+")


_ERROR_HINTS = {
    "badArgument": "check set_spec, from_date and until_date",
    "badVerb": "check base_url points at an OAI-PMH endpoint",
    "cannotDisseminateFormat": f"use a metadata_prefix the server offers ({SUPPORTED_PREFIXES})",
    "noSetHierarchy": "this repository has no sets; drop set_spec",
}


class HarvestError(RuntimeError):
    """A harvest that cannot go on; the message says what failed, where, and what to do next."""


@dataclass
class _Page:
    """One parsed ListRecords response."""

    records: list[dict[str, str]]
    deleted: int
    invalid: int
    token: str | None
    complete_list_size: int | None
    no_records: bool = False


def parse_xml(content: bytes) -> ET.Element:
    """Parse a response body.

    defusedxml is not a dependency; ElementTree never fetches external entities and the
    bundled expat (>= 2.4.1) limits entity-expansion attacks, which is enough for a known host.
    """
    return ET.fromstring(content)  # noqa: S314  # nosec B314 # see the docstring: expat >= 2.4.1


def check_root(root: ET.Element, url: str) -> None:
    """A 200 that is not OAI-PMH means a wrong base_url (or a proxy page), not a transient fault."""
    if root.tag != f"{_O}OAI-PMH":
        raise HarvestError(
            f"{url} did not return an OAI-PMH document (root element {root.tag!r}); check base_url"
        )


def try_oai_error(content: bytes) -> ET.Element | None:
    """Return the root if a non-200 body is an OAI-PMH error document, else None."""
    try:
        root = parse_xml(content)
    except ET.ParseError:
        return None
    if root.tag == f"{_O}OAI-PMH" and root.find(f"{_O}error") is not None:
        return root
    return None


def _collapse(text: str | None) -> str:
    """Strip and collapse whitespace runs to one space (TeX is kept as-is)."""
    return _WS_RE.sub(" ", text or "").strip()


def parse_page(root: ET.Element, metadata_prefix: str, url: str, base_url: str) -> _Page:
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
    if not DATE_RE.match(date):
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
