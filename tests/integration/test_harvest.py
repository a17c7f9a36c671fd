"""The OAI-PMH harvester against a real local HTTP server speaking arXiv's OAI-PMH dialect."""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from paperops.data.harvest import harvest, state_path_for
from paperops.data.oai import HarvestError
from tests.fakes.oai_server import FakeOAIServer, FakeRecord, Fault

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

# Seven records match set=cs from=2021-01-01; with page_size=3 that is pages of 3, 3 and 1.
RECORDS = [
    FakeRecord(
        "2101.00001",
        title="  Attention Is\n   All You  Need\t",
        abstract="\n  We propose the\n  Transformer, using $\\mathrm{softmax}(QK^T/\\sqrt{d})$.  ",
        categories="cs.CL cs.LG",
        authors=[("Ashish", "Vaswani"), ("Noam", "Shazeer")],
        raw_authors="Ashish Vaswani and\n  Noam Shazeer",
        datestamp="2021-01-05",
        created="2021-01-01",
    ),
    FakeRecord(
        "2101.00002",
        title="Quantum\n  walks on graphs",
        abstract="Walks  on graphs.",
        categories="quant-ph cs.DS",
        authors=[("John", "Smith", "Jr"), ("", "ATLAS Collaboration")],
        datestamp="2021-01-06",
        created="2020-12-30",
        updated="2021-01-04",
    ),
    FakeRecord(
        "cs/0501001",
        title="An old-style identifier",
        abstract="Before 2007 ids had an archive prefix.",
        categories="cs.AI",
        authors=[("Ada", "Lovelace")],
        datestamp="2021-01-07",
        created="2005-01-03",
        updated="2021-01-07",
    ),
    FakeRecord("2101.00099", sets=("math",), categories="math.CO", datestamp="2021-01-07"),
    FakeRecord(
        "2101.00004",
        title="Four",
        abstract="Fourth.",
        categories="cs.LG stat.ML",
        datestamp="2021-01-08",
        created="2021-01-02",
    ),
    FakeRecord("2101.00005", title="Five", abstract="Fifth.", datestamp="2021-01-08"),
    FakeRecord("2101.00006", title="Six", abstract="Sixth.", datestamp="2021-01-09"),
    FakeRecord("2101.00007", title="Seven", abstract="Seventh.", datestamp="2021-01-09"),
    FakeRecord("2012.99999", title="Too old", datestamp="2020-12-31"),
]
IDS = [
    "2101.00001",
    "2101.00002",
    "cs/0501001",
    "2101.00004",
    "2101.00005",
    "2101.00006",
    "2101.00007",
]
SIMPLE = {  # records 5..7 are identical in both formats
    "2101.00005": ("Five", "Fifth.", "2021-01-08"),
    "2101.00006": ("Six", "Sixth.", "2021-01-09"),
    "2101.00007": ("Seven", "Seventh.", "2021-01-09"),
}


def _simple(update_dates: dict[str, str] | None = None) -> list[dict[str, str]]:
    out = []
    for rid, (title, abstract, date) in SIMPLE.items():
        out.append(
            {
                "id": rid,
                "title": title,
                "abstract": abstract,
                "categories": "cs.LG",
                "update_date": (update_dates or {}).get(rid, date),
                "authors": "Jane Doe",
                "source": "oai-pmh",
            }
        )
    return out


ABSTRACT_1 = "We propose the Transformer, using $\\mathrm{softmax}(QK^T/\\sqrt{d})$."
EXPECTED_RAW = [
    {
        "id": "2101.00001",
        "title": "Attention Is All You Need",
        "abstract": ABSTRACT_1,
        "categories": "cs.CL cs.LG",
        "update_date": "2021-01-05",
        "authors": "Ashish Vaswani and Noam Shazeer",
        "source": "oai-pmh",
    },
    {
        "id": "2101.00002",
        "title": "Quantum walks on graphs",
        "abstract": "Walks on graphs.",
        "categories": "quant-ph cs.DS",
        "update_date": "2021-01-06",
        "authors": "John Smith Jr, ATLAS Collaboration",
        "source": "oai-pmh",
    },
    {
        "id": "cs/0501001",
        "title": "An old-style identifier",
        "abstract": "Before 2007 ids had an archive prefix.",
        "categories": "cs.AI",
        "update_date": "2021-01-07",
        "authors": "Ada Lovelace",
        "source": "oai-pmh",
    },
    {
        "id": "2101.00004",
        "title": "Four",
        "abstract": "Fourth.",
        "categories": "cs.LG stat.ML",
        "update_date": "2021-01-08",
        "authors": "Jane Doe",
        "source": "oai-pmh",
    },
    *_simple(),
]
# arXiv format: authors come from <author> parts; update_date is <updated>, else <created>.
EXPECTED_ARXIV = [
    {**EXPECTED_RAW[0], "authors": "Ashish Vaswani, Noam Shazeer", "update_date": "2021-01-01"},
    {**EXPECTED_RAW[1], "update_date": "2021-01-04"},
    {**EXPECTED_RAW[2], "update_date": "2021-01-07"},
    {**EXPECTED_RAW[3], "update_date": "2021-01-02"},
    *_simple(dict.fromkeys(SIMPLE, "2021-01-01")),
]


class SleepRecorder:
    """Stands in for time.sleep: records each delay instead of waiting."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Interrupt(Exception):
    """Raised from on_page to simulate the process dying between pages."""


@pytest.fixture
def serve():
    servers: list[FakeOAIServer] = []

    def _serve(records: list[FakeRecord] = RECORDS, **kwargs: object) -> FakeOAIServer:
        srv = FakeOAIServer(records, **kwargs).start()  # type: ignore[arg-type]
        servers.append(srv)
        return srv

    yield _serve
    for srv in servers:
        srv.stop()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "raw" / "arxiv-oai.jsonl"


def run(srv: FakeOAIServer, out: Path, **kwargs):
    kwargs.setdefault("set_spec", "cs")
    kwargs.setdefault("from_date", "2021-01-01")
    kwargs.setdefault("min_interval_s", 0)
    kwargs.setdefault("sleep", SleepRecorder())
    kwargs.setdefault("timeout_s", 5)
    return harvest(srv.base_url, out, **kwargs)


def read(out: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def ids(out: Path) -> list[str]:
    return [r["id"] for r in read(out)]


def state(out: Path) -> dict:
    return json.loads(state_path_for(out).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ pagination


def test_arxivraw_pages_give_exact_output_and_protocol_requests(serve, out):
    srv = serve(page_size=3)
    pages_seen: list[tuple[int, int]] = []

    result = run(srv, out, on_page=lambda p, n: pages_seen.append((p, n)))

    assert read(out) == EXPECTED_RAW
    assert list(read(out)[0]) == [
        "id",
        "title",
        "abstract",
        "categories",
        "update_date",
        "authors",
        "source",
    ]
    assert (result.records_written, result.total_records, result.pages) == (7, 7, 3)
    assert (result.resumed, result.complete, result.deleted_skipped) == (False, True, 0)
    assert pages_seen == [(1, 3), (2, 6), (3, 7)]

    queries = srv.queries()
    assert len(queries) == 3
    assert queries[0] == {
        "verb": "ListRecords",
        "metadataPrefix": "arXivRaw",
        "set": "cs",
        "from": "2021-01-01",
    }
    for q in queries[1:]:
        assert set(q) == {"verb", "resumptionToken"}, q
        assert q["verb"] == "ListRecords" and q["resumptionToken"]
    assert queries[1]["resumptionToken"] != queries[2]["resumptionToken"]
    assert all(r.path == "/oai" for r in srv.requests)
    assert all("paperops" in r.headers["User-Agent"] for r in srv.requests)

    st = state(out)
    assert st["complete"] is True and st["resumption_token"] is None
    assert st["offset"] == out.stat().st_size and st["total_records"] == 7 and st["pages"] == 3
    assert st["params"] == {
        "base_url": srv.base_url,
        "metadata_prefix": "arXivRaw",
        "set_spec": "cs",
        "from_date": "2021-01-01",
        "until_date": None,
    }


def test_arxiv_format_pages_give_exact_output(serve, out):
    srv = serve(page_size=3, final_token="absent")  # last page has no resumptionToken at all

    result = run(srv, out, metadata_prefix="arXiv", until_date="2021-01-31")

    assert read(out) == EXPECTED_ARXIV
    assert (result.total_records, result.pages, result.complete) == (7, 3, True)
    assert srv.queries()[0] == {
        "verb": "ListRecords",
        "metadataPrefix": "arXiv",
        "set": "cs",
        "from": "2021-01-01",
        "until": "2021-01-31",
    }


def test_version_suffix_is_stripped_from_ids(serve, out):
    srv = serve([FakeRecord("2101.00010v3", title="T", abstract="A")])

    run(srv, out, set_spec=None, from_date=None)

    assert ids(out) == ["2101.00010"]
    assert "set" not in srv.queries()[0] and "from" not in srv.queries()[0]


# ------------------------------------------------------------------------------ retries


def _http_date(seconds_from_now: int) -> str:
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    return email.utils.format_datetime(when, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [("7", 7.0, 7.0), ("3600", 600.0, 600.0), ("http-date", 100.0, 120.0)],
    ids=["seconds", "capped-at-10-min", "http-date"],
)
def test_503_retry_after_is_honoured(serve, out, retry_after, low, high):
    if retry_after == "http-date":
        retry_after = _http_date(120)
    srv = serve(faults={2: Fault.http(503, retry_after=retry_after)})
    sleep = SleepRecorder()

    result = run(srv, out, sleep=sleep)

    assert len(sleep.calls) == 1 and low <= sleep.calls[0] <= high, sleep.calls
    assert ids(out) == IDS and result.complete
    assert len(srv.requests) == 4
    assert srv.queries()[1] == srv.queries()[2]  # the same token was retried


@pytest.mark.parametrize(
    "fault",
    [Fault.http(500), Fault.http(502), Fault.reset(), Fault.partial()],
    ids=["500", "502", "connection-reset", "truncated-body"],
)
def test_transient_failures_twice_then_success_back_off_exponentially(serve, out, fault):
    srv = serve(faults={2: fault, 3: fault})
    sleep = SleepRecorder()

    result = run(srv, out, sleep=sleep)

    assert sleep.calls == [1.0, 2.0]
    assert ids(out) == IDS and result.total_records == 7 and result.complete
    assert len(srv.requests) == 5


def test_timeout_is_retried(serve, out):
    srv = serve(faults={1: Fault.delay(1.0)})
    sleep = SleepRecorder()

    result = run(srv, out, sleep=sleep, timeout_s=0.2)

    assert sleep.calls == [1.0]
    assert ids(out) == IDS and result.complete


def test_max_retries_exhausted_raises_and_state_allows_resume(serve, out):
    srv = serve(faults={n: Fault.http(500) for n in (2, 3, 4)})
    sleep = SleepRecorder()

    with pytest.raises(HarvestError) as err:
        run(srv, out, sleep=sleep, max_retries=2)

    msg = str(err.value)
    assert "HTTP 500" in msg and srv.base_url in msg and "resumptionToken=" in msg
    assert "3 attempts" in msg and "resume" in msg
    assert sleep.calls == [1.0, 2.0]
    assert ids(out) == IDS[:3]
    assert state(out)["resumption_token"] and state(out)["complete"] is False

    result = run(srv, out, max_retries=2)

    assert result.resumed and result.complete
    assert (result.records_written, result.total_records) == (4, 7)
    assert ids(out) == IDS and read(out) == EXPECTED_RAW
    assert set(srv.queries()[4]) == {"verb", "resumptionToken"}  # resumed from the token


@pytest.mark.parametrize("status", [400, 403, 404])
def test_client_errors_are_not_retried(serve, out, status):
    srv = serve(faults={1: Fault.http(status)})
    sleep = SleepRecorder()

    with pytest.raises(HarvestError, match=f"HTTP {status}"):
        run(srv, out, sleep=sleep)

    assert sleep.calls == [] and len(srv.requests) == 1


def test_oai_error_sent_with_a_4xx_status_is_read_as_oai(serve, out):
    srv = serve()
    srv.faults[1] = Fault.raw(404, srv.error_document({}, "noRecordsMatch", "none"), "text/xml")

    result = run(srv, out)

    assert result.complete and result.total_records == 0 and len(srv.requests) == 1


def test_non_oai_document_is_an_error(serve, out):
    srv = serve(faults={1: Fault.raw(200, b"<html><body>Welcome</body></html>")})

    with pytest.raises(HarvestError, match=r"not return an OAI-PMH document.*base_url"):
        run(srv, out)

    assert len(srv.requests) == 1


# ------------------------------------------------------------------------------ resume


def test_resume_after_interruption_writes_every_record_exactly_once(serve, out):
    srv = serve()

    def die_after_page_2(pages: int, total: int) -> None:
        if pages == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(srv, out, on_page=die_after_page_2)
    assert ids(out) == IDS[:6]

    result = run(srv, out)

    assert result.resumed and result.complete
    assert (result.records_written, result.total_records, result.pages) == (1, 7, 1)
    assert read(out) == EXPECTED_RAW
    assert len(srv.requests) == 3  # the resumed run fetched only the missing page


def test_half_written_page_is_truncated_on_resume(serve, out, caplog):
    srv = serve()
    run(srv, out, max_records=1)  # one full page, then stop with state saved
    size = out.stat().st_size
    with out.open("ab") as fh:  # a crash mid-append leaves part of the next page behind
        fh.write(b'{"id": "2101.00004", "title": "Fo')

    with caplog.at_level(logging.WARNING, logger="paperops.data.harvest"):
        result = run(srv, out)

    assert "dropping 33 bytes" in caplog.text
    assert result.resumed and result.complete
    assert read(out) == EXPECTED_RAW
    assert out.read_bytes()[size : size + 15] == b'{"id": "2101.00'


def test_crash_before_first_page_restarts_cleanly(serve, out):
    srv = serve(faults={1: Fault.http(404)})
    with pytest.raises(HarvestError):
        run(srv, out)
    out.write_bytes(b'{"id": "garbage"')  # first page was being written when the process died

    result = run(srv, out)

    assert result.resumed and read(out) == EXPECTED_RAW


def test_output_shorter_than_state_is_an_error(serve, out):
    srv = serve()
    run(srv, out, max_records=1)
    out.write_bytes(b"")

    with pytest.raises(HarvestError, match=r"changed outside the harvester.*restart=True"):
        run(srv, out)


def test_changed_params_with_existing_state_are_rejected(serve, out):
    srv = serve()
    run(srv, out, max_records=1)
    n_requests = len(srv.requests)

    with pytest.raises(HarvestError, match=r"set_spec: 'cs' -> 'math'.*restart=True"):
        run(srv, out, set_spec="math")

    assert len(srv.requests) == n_requests and ids(out) == IDS[:3]


def test_restart_starts_over(serve, out):
    srv = serve()
    run(srv, out, max_records=1)

    result = run(srv, out, set_spec="math", restart=True)

    assert not result.resumed and result.complete
    assert ids(out) == ["2101.00099"]
    assert srv.queries()[-1] == {
        "verb": "ListRecords",
        "metadataPrefix": "arXivRaw",
        "set": "math",
        "from": "2021-01-01",
    }
    assert state(out)["params"]["set_spec"] == "math" and state(out)["total_records"] == 1


def test_complete_harvest_returns_without_fetching(serve, out):
    srv = serve()
    run(srv, out)

    result = run(srv, out)

    assert len(srv.requests) == 3
    assert (result.records_written, result.total_records, result.pages) == (0, 7, 0)
    assert result.resumed and result.complete
    assert ids(out) == IDS


def test_existing_output_without_state_needs_restart(serve, out):
    srv = serve()
    out.parent.mkdir(parents=True)
    out.write_text('{"id": "mine"}\n', encoding="utf-8")

    with pytest.raises(HarvestError, match=r"no harvest state file.*restart=True"):
        run(srv, out)
    assert srv.requests == []

    assert run(srv, out, restart=True).total_records == 7
    assert read(out) == EXPECTED_RAW


def test_corrupt_state_file_is_an_error(serve, out):
    srv = serve()
    run(srv, out, max_records=1)
    state_path_for(out).write_text("{not json", encoding="utf-8")

    with pytest.raises(HarvestError, match=r"unreadable.*restart=True"):
        run(srv, out)


# ------------------------------------------------------------------------------ records & OAI


def test_deleted_records_are_skipped_and_counted(serve, out):
    records = [
        FakeRecord("2101.00001", title="One", abstract="A"),
        FakeRecord("2101.00002", deleted=True),
        FakeRecord("2101.00003", title="Three", abstract="C"),
        FakeRecord("2101.00004", deleted=True),
        FakeRecord("2101.00005", title="Five", abstract="E"),
    ]
    srv = serve(records, page_size=2)

    result = run(srv, out)

    assert ids(out) == ["2101.00001", "2101.00003", "2101.00005"]
    assert (result.deleted_skipped, result.records_written, result.pages) == (2, 3, 3)
    assert state(out)["deleted_skipped"] == 2


@pytest.mark.parametrize("prefix", ["arXivRaw", "arXiv"])
def test_record_missing_a_required_element_is_skipped_with_warning(serve, out, caplog, prefix):
    records = [
        FakeRecord("2101.00001", title="One"),
        FakeRecord("2101.00002", omit=("title",)),
        FakeRecord("2101.00003", omit=("authors",)),
        FakeRecord("2101.00004", title="Four"),
    ]
    srv = serve(records)

    with caplog.at_level(logging.WARNING, logger="paperops.data.harvest"):
        result = run(srv, out, metadata_prefix=prefix)

    assert ids(out) == ["2101.00001", "2101.00004"]
    assert result.invalid_skipped == 2 and result.records_written == 2
    assert "oai:arXiv.org:2101.00002" in caplog.text and "title" in caplog.text
    assert "oai:arXiv.org:2101.00003" in caplog.text


def test_no_records_match_finishes_with_zero_records(serve, out):
    srv = serve()

    result = run(srv, out, from_date="2030-01-01")

    assert (result.records_written, result.total_records, result.pages) == (0, 0, 0)
    assert result.complete
    assert out.exists() and out.read_bytes() == b""
    assert state(out)["complete"] is True
    assert run(srv, out, from_date="2030-01-01").complete and len(srv.requests) == 1


def test_expired_resumption_token_says_restart(serve, out):
    srv = serve()

    with pytest.raises(HarvestError, match=r"badResumptionToken.*expired.*restart=True"):
        run(srv, out, on_page=lambda p, n: srv.expire_tokens())
    assert ids(out) == IDS[:3]

    result = run(srv, out, restart=True)

    assert read(out) == EXPECTED_RAW and result.complete and not result.resumed


def test_unsupported_metadata_format_names_the_oai_code(serve, out):
    srv = serve(prefixes=("arXivRaw",))

    with pytest.raises(HarvestError, match=r"cannotDisseminateFormat.*metadata_prefix"):
        run(srv, out, metadata_prefix="arXiv")


def test_other_oai_error_names_code_and_message(serve, out):
    srv = serve(faults={2: Fault.oai_error("badArgument", "Illegal date in from")})

    with pytest.raises(HarvestError, match="badArgument: Illegal date in from"):
        run(srv, out)
    assert len(srv.requests) == 2 and ids(out) == IDS[:3]


def test_invalid_arguments_fail_before_any_request(serve, out):
    srv = serve()
    with pytest.raises(ValueError, match="metadata_prefix"):
        run(srv, out, metadata_prefix="oai_dc")
    with pytest.raises(ValueError, match="from_date"):
        run(srv, out, from_date="01/02/2021")
    with pytest.raises(ValueError, match="max_records"):
        run(srv, out, max_records=0)
    assert srv.requests == [] and not out.exists()


# ------------------------------------------------------------------------------ politeness


def test_min_interval_is_requested_between_requests(serve, out):
    srv = serve()
    sleep = SleepRecorder()

    run(srv, out, sleep=sleep, min_interval_s=2.0)

    assert len(srv.requests) == 3
    assert len(sleep.calls) == 2, sleep.calls  # none before the first request
    assert all(1.5 < s <= 2.0 for s in sleep.calls), sleep.calls


def test_min_interval_is_respected_on_the_wire(serve, out):
    srv = serve()

    run(srv, out, sleep=time.sleep, min_interval_s=0.15)

    times = [r.time for r in srv.requests]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2 and all(g >= 0.14 for g in gaps), gaps


def test_injected_client_is_used_and_left_open(serve, out):
    srv = serve()
    with httpx.Client() as client:
        result = run(srv, out, client=client)
        assert not client.is_closed
    assert result.complete
    assert all("paperops" in r.headers["User-Agent"] for r in srv.requests)


# ------------------------------------------------------------------------------ max_records


def test_max_records_stops_at_a_page_boundary_and_a_later_run_continues(serve, out):
    srv = serve()

    first = run(srv, out, max_records=4)

    assert ids(out) == IDS[:6]  # the page that crossed 4 is kept whole
    assert (first.records_written, first.pages, first.complete) == (6, 2, False)

    again = run(srv, out, max_records=4)
    assert (again.records_written, again.total_records) == (0, 6) and len(srv.requests) == 2

    rest = run(srv, out)
    assert rest.resumed and rest.complete and (rest.records_written, rest.total_records) == (1, 7)
    assert read(out) == EXPECTED_RAW


def test_max_records_on_a_page_boundary_stops_exactly(serve, out):
    srv = serve()

    result = run(srv, out, max_records=3)

    assert ids(out) == IDS[:3] and result.pages == 1 and not result.complete
