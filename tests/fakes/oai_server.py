"""A fake arXiv OAI-PMH server for tests: real HTTP on 127.0.0.1, real response documents.

It answers ``verb=ListRecords`` the way arXiv does (``<OAI-PMH>`` root, ``responseDate``,
``request``, records in arXivRaw or arXiv format, ``resumptionToken`` with ``cursor`` and
``completeListSize``), enforces the protocol rules a harvester must follow (a resumptionToken
request carries no other arguments; unknown tokens are ``badResumptionToken``), records every
request, and plays scripted faults by request number (1-based, counting every request).

    with FakeOAIServer(records, page_size=3, faults={2: Fault.http(503, retry_after="7")}) as srv:
        harvest(srv.base_url, out)
        srv.queries()  # what the client sent
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape, quoteattr

OAI_NS = "http://www.openarchives.org/OAI/2.0/"
ARXIV_RAW_NS = "http://arxiv.org/OAI/arXivRaw/"
ARXIV_NS = "http://arxiv.org/OAI/arXiv/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
RESPONSE_DATE = "2021-01-10T12:00:00Z"


@dataclass
class FakeRecord:
    """One arXiv paper as the server stores it; `omit` drops metadata elements (bad records)."""

    id: str
    title: str = "A title"
    abstract: str = "An abstract."
    categories: str = "cs.LG"
    # (forenames, keyname) or (forenames, keyname, suffix); forenames "" for a collaboration.
    authors: list[tuple[str, ...]] = field(default_factory=lambda: [("Jane", "Doe")])
    raw_authors: str | None = None  # arXivRaw <authors> text; default: joined `authors`
    datestamp: str = "2021-01-05"
    created: str = "2021-01-01"
    updated: str | None = None
    sets: tuple[str, ...] = ("cs",)
    deleted: bool = False
    omit: tuple[str, ...] = ()

    @property
    def oai_identifier(self) -> str:
        return f"oai:arXiv.org:{self.id}"

    def authors_text(self) -> str:
        if self.raw_authors is not None:
            return self.raw_authors
        return ", ".join(" ".join(p for p in a if p) for a in self.authors)


@dataclass(frozen=True)
class Fault:
    """What to do instead of (or before) answering one request."""

    kind: str  # "http" | "reset" | "partial" | "oai_error" | "delay" | "raw"
    status: int = 500
    retry_after: str | None = None
    code: str = ""
    message: str = ""
    delay_s: float = 0.0
    body: bytes = b""
    content_type: str = "text/xml; charset=utf-8"

    @classmethod
    def http(cls, status: int, retry_after: str | None = None) -> Fault:
        """An HTTP error status with a short HTML body, like a busy front end sends."""
        return cls("http", status=status, retry_after=retry_after)

    @classmethod
    def reset(cls) -> Fault:
        """Drop the connection without any response (RST)."""
        return cls("reset")

    @classmethod
    def partial(cls) -> Fault:
        """Send the real page's headers and half its body, then close: a truncated response."""
        return cls("partial")

    @classmethod
    def oai_error(cls, code: str, message: str = "") -> Fault:
        """A 200 response carrying an OAI-PMH <error code=...>."""
        return cls("oai_error", code=code, message=message or f"{code} (scripted)")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait, then answer normally (to trip the client's timeout)."""
        return cls("delay", delay_s=seconds)

    @classmethod
    def raw(cls, status: int, body: bytes, content_type: str = "text/html") -> Fault:
        """Answer with an arbitrary body (e.g. an HTML page from a misconfigured base_url)."""
        return cls("raw", status=status, body=body, content_type=content_type)


@dataclass
class RecordedRequest:
    """One request as received: what the client sent and when."""

    method: str
    path: str
    raw_query: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    time: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeOAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        fake = self.server.fake
        split = urlsplit(self.path)
        query = parse_qs(split.query, keep_blank_values=True)
        with fake._lock:
            fake.requests.append(
                RecordedRequest(
                    "GET", split.path, split.query, query, dict(self.headers), time.monotonic()
                )
            )
            fault = fake.faults.get(len(fake.requests))
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay_s)
            fault = None
        if fault is not None and fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if fault is not None and fault.kind == "http":
            body = f"<html><body><h1>{fault.status}</h1></body></html>".encode()
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            self._send(fault.status, body, "text/html", headers)
            return
        if fault is not None and fault.kind == "raw":
            self._send(fault.status, fault.body, fault.content_type)
            return
        if split.path != fake.path:
            self._send(404, b"<html><body>Not Found</body></html>", "text/html")
            return
        if fault is not None and fault.kind == "oai_error":
            self._send(200, fake.error_document(query, fault.code, fault.message))
            return
        body = fake.respond(query)
        if fault is not None and fault.kind == "partial":
            self.send_response(200)
            self.send_header("Content-Type", "text/xml; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, body)

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/xml; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class FakeOAIServer:
    """OAI-PMH ListRecords over a fixed record list; a context manager that owns its thread."""

    def __init__(
        self,
        records: Iterable[FakeRecord],
        *,
        page_size: int = 3,
        prefixes: Iterable[str] = ("arXivRaw", "arXiv"),
        faults: Mapping[int, Fault] | None = None,
        final_token: str = "empty",  # "empty": <resumptionToken .../>; "absent": no element
        path: str = "/oai",
    ) -> None:
        self.records = list(records)
        self.page_size = page_size
        self.prefixes = tuple(prefixes)
        self.faults: dict[int, Fault] = dict(faults or {})
        self.final_token = final_token
        self.path = path
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, dict[str, str], int]] = {}
        self._serial = 6960524
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeOAIServer:
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeOAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{self.path}"

    # ------------------------------------------------------------------ test helpers

    def queries(self) -> list[dict[str, str]]:
        """Every request's query as a flat dict (the last value of each repeated key)."""
        return [{k: v[-1] for k, v in r.query.items()} for r in self.requests]

    def expire_tokens(self) -> None:
        """Forget every issued resumptionToken, as arXiv does after a long pause."""
        with self._lock:
            self._tokens.clear()

    # ------------------------------------------------------------------ protocol

    def respond(self, query: dict[str, list[str]]) -> bytes:
        """The response document for one request."""
        if any(len(v) > 1 for v in query.values()):
            return self.error_document(query, "badArgument", "Repeated argument")
        q = {k: v[0] for k, v in query.items()}
        verb = q.get("verb")
        if verb != "ListRecords":
            return self.error_document(query, "badVerb", f"Illegal verb {verb!r}")
        with self._lock:
            if "resumptionToken" in q:
                if set(q) != {"verb", "resumptionToken"}:
                    return self.error_document(
                        query, "badArgument", "resumptionToken is an exclusive argument"
                    )
                state = self._tokens.get(q["resumptionToken"])
                if state is None:
                    return self.error_document(
                        query, "badResumptionToken", "Invalid or expired resumptionToken"
                    )
                prefix, filters, cursor = state
            else:
                extra = set(q) - {"verb", "metadataPrefix", "set", "from", "until"}
                if extra or "metadataPrefix" not in q:
                    return self.error_document(query, "badArgument", "Illegal arguments")
                prefix = q["metadataPrefix"]
                if prefix not in self.prefixes:
                    return self.error_document(
                        query, "cannotDisseminateFormat", f"Unknown metadataPrefix {prefix!r}"
                    )
                filters = {k: q[k] for k in ("set", "from", "until") if k in q}
                cursor = 0
            matching = [r for r in self.records if _matches(r, filters)]
            if not matching:
                return self.error_document(query, "noRecordsMatch", "No records match")
            page = matching[cursor : cursor + self.page_size]
            next_cursor = cursor + len(page)
            token_xml = ""
            if next_cursor < len(matching):
                self._serial += 1
                token = f"{self._serial}|{next_cursor + 1}"
                self._tokens[token] = (prefix, filters, next_cursor)
                token_xml = (
                    f'<resumptionToken cursor="{cursor}" completeListSize="{len(matching)}">'
                    f"{escape(token)}</resumptionToken>"
                )
            elif self.final_token == "empty":
                token_xml = (
                    f'<resumptionToken cursor="{cursor}" completeListSize="{len(matching)}"/>'
                )
        body = "\n".join(_record_xml(r, prefix) for r in page)
        return self._document(query, f"<ListRecords>\n{body}\n{token_xml}\n</ListRecords>")

    def error_document(self, query: dict[str, list[str]], code: str, message: str) -> bytes:
        return self._document(query, f"<error code={quoteattr(code)}>{escape(message)}</error>")

    def _document(self, query: dict[str, list[str]], inner: str) -> bytes:
        attrs = "".join(f" {k}={quoteattr(v[0])}" for k, v in query.items() if v)
        base = f"http://export.arxiv.org{self.path}"
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<OAI-PMH xmlns="{OAI_NS}" xmlns:xsi="{XSI}" '
            f'xsi:schemaLocation="{OAI_NS} http://www.openarchives.org/OAI/2.0/OAI-PMH.xsd">\n'
            f"<responseDate>{RESPONSE_DATE}</responseDate>\n"
            f"<request{attrs}>{escape(base)}</request>\n"
            f"{inner}\n"
            "</OAI-PMH>\n"
        ).encode()


def _matches(record: FakeRecord, filters: dict[str, str]) -> bool:
    """OAI selective harvesting: set membership (with sub-sets) and datestamp bounds."""
    wanted = filters.get("set")
    if wanted is not None and not any(
        s == wanted or s.startswith(wanted + ":") for s in record.sets
    ):
        return False
    if "from" in filters and record.datestamp < filters["from"][:10]:
        return False
    return not ("until" in filters and record.datestamp > filters["until"][:10])


def _el(name: str, value: str | None, omit: tuple[str, ...]) -> str:
    if value is None or name in omit:
        return ""
    return f"<{name}>{escape(value)}</{name}>\n"


def _record_xml(r: FakeRecord, prefix: str) -> str:
    sets = "".join(f"<setSpec>{escape(s)}</setSpec>" for s in r.sets)
    status = ' status="deleted"' if r.deleted else ""
    header = (
        f"<header{status}>\n <identifier>{escape(r.oai_identifier)}</identifier>\n"
        f" <datestamp>{escape(r.datestamp)}</datestamp>\n {sets}\n</header>"
    )
    if r.deleted:
        return f"<record>\n{header}\n</record>"
    o = r.omit
    license_ = "http://arxiv.org/licenses/nonexclusive-distrib/1.0/"
    if prefix == "arXivRaw":
        meta = (
            f'<arXivRaw xmlns="{ARXIV_RAW_NS}" xmlns:xsi="{XSI}" '
            f'xsi:schemaLocation="{ARXIV_RAW_NS} http://arxiv.org/OAI/arXivRaw.xsd">\n'
            + _el("id", r.id, o)
            + _el("submitter", " ".join(p for p in r.authors[0] if p) if r.authors else None, o)
            + '<version version="v1"><date>Fri, 1 Jan 2021 18:59:59 GMT</date>'
            "<size>120kb</size><source_type>D</source_type></version>\n"
            + _el("title", r.title, o)
            + _el("authors", r.authors_text(), o)
            + _el("categories", r.categories, o)
            + _el("comments", "10 pages, 3 figures", o)
            + _el("license", license_, o)
            + _el("abstract", r.abstract, o)
            + "</arXivRaw>"
        )
    else:
        authors = ""
        if "authors" not in o:
            parts = []
            for a in r.authors:
                forenames, keyname, *suffix = a
                parts.append(
                    "<author>"
                    + f"<keyname>{escape(keyname)}</keyname>"
                    + (f"<forenames>{escape(forenames)}</forenames>" if forenames else "")
                    + (f"<suffix>{escape(suffix[0])}</suffix>" if suffix else "")
                    + "</author>"
                )
            authors = f"<authors>{''.join(parts)}</authors>\n"
        meta = (
            f'<arXiv xmlns="{ARXIV_NS}" xmlns:xsi="{XSI}" '
            f'xsi:schemaLocation="{ARXIV_NS} http://arxiv.org/OAI/arXiv.xsd">\n'
            + _el("id", r.id, o)
            + _el("created", r.created, o)
            + _el("updated", r.updated, o)
            + authors
            + _el("title", r.title, o)
            + _el("categories", r.categories, o)
            + _el("comments", "10 pages, 3 figures", o)
            + _el("license", license_, o)
            + _el("abstract", r.abstract, o)
            + "</arXiv>"
        )
    return f"<record>\n{header}\n<metadata>\n{meta}\n</metadata>\n</record>"
