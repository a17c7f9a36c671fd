"""Request and response models of the API.

Request models are built from the configured `Limits` when the app is created (`make_schemas`),
so the limits a server enforces are exactly the ones its OpenAPI schema shows. They are strict:
no extra fields, no coercion (`1` is not a title, `"3"` is not a top_k), and a title or abstract
must contain text, not just whitespace. Every rejection names the field (its `loc`) and the rule.

Response models document the answers; the handlers build plain dicts of the same shape (no
per-request model validation on the hot path).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from paperops.serve.settings import ExplainSettings, Limits

# Shown in /docs; a real abstract shape, short enough to read.
EXAMPLE_PAPER: dict[str, Any] = {
    "title": "Attention Is All You Need",
    "abstract": (
        "The dominant sequence transduction models are based on complex recurrent or "
        "convolutional neural networks. We propose a new simple network architecture, the "
        "Transformer, based solely on attention mechanisms, dispensing with recurrence and "
        "convolutions entirely."
    ),
}
REQUEST_ID_PATTERN = r"^[0-9a-f]{32}$"  # uuid4().hex
_STRICT = ConfigDict(extra="forbid", strict=True)


def _encodable(value: str, field: str) -> str:
    """A lone surrogate (`"\\ud800"` in JSON) is valid JSON but not text: it cannot be stored or
    echoed back as UTF-8, so it is refused here instead of failing later as a 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_not_utf8",
            "{field} must be valid Unicode text (it contains a lone surrogate escape)",
            {"field": field},
        ) from None
    return value


def _text_rule(field: str) -> AfterValidator:
    def check(value: str) -> str:
        if not value.strip():
            raise PydanticCustomError(
                "string_blank",
                "{field} must contain text: empty or whitespace-only is not allowed",
                {"field": field},
            )
        return _encodable(value, field)

    return AfterValidator(check)


def _id_rule(value: str | None) -> str | None:
    return None if value is None else _encodable(value, "id")


def _text_field(field: str, max_chars: int, description: str) -> Any:
    return Annotated[
        str,
        Field(
            min_length=1,
            max_length=max_chars,
            description=f"{description} (1-{max_chars} characters, not only whitespace).",
            # documents the non-blank rule for clients and fuzzers; the validator enforces it
            json_schema_extra={"pattern": r"\S"},
        ),
        _text_rule(field),
    ]


def make_paper_model(limits: Limits) -> type[BaseModel]:
    """One paper, as /v1/classify and `paperops predict` (one JSON line each) accept it."""
    title_t = _text_field("title", limits.title_max_chars, "The paper's title")
    abstract_t = _text_field("abstract", limits.abstract_max_chars, "The paper's abstract")
    id_t = Annotated[
        str | None,
        Field(
            default=None,
            max_length=limits.id_max_chars,
            description="Your identifier for this paper, echoed back in its result.",
        ),
        AfterValidator(_id_rule),
    ]

    class Paper(BaseModel):
        model_config = ConfigDict(
            extra="forbid", strict=True, json_schema_extra={"examples": [EXAMPLE_PAPER]}
        )
        title: title_t  # type: ignore[valid-type]
        abstract: abstract_t  # type: ignore[valid-type]
        id: id_t = None  # type: ignore[valid-type]

    return Paper


@dataclass(frozen=True)
class Schemas:
    """The request models of one app (they carry its limits)."""

    Paper: type[BaseModel]
    ClassifyRequest: type[BaseModel]
    PredictRequest: type[BaseModel]
    FeedbackRequest: type[BaseModel]


def make_schemas(limits: Limits, explain: ExplainSettings | None = None) -> Schemas:
    paper = make_paper_model(limits)
    max_explained = (explain or ExplainSettings()).max_papers
    title_t = _text_field("title", limits.title_max_chars, "The paper's title")
    abstract_t = _text_field("abstract", limits.abstract_max_chars, "The paper's abstract")

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"examples": [{"papers": [EXAMPLE_PAPER], "top_k": 3}]},
        )
        papers: list[paper] = Field(  # type: ignore[valid-type]
            min_length=1,
            max_length=limits.max_papers,
            description=f"1-{limits.max_papers} papers, answered in the same order.",
        )
        top_k: int = Field(
            default=limits.default_top_k,
            ge=1,
            le=limits.max_top_k,
            description="How many top categories to return per paper.",
        )
        explain: bool = Field(
            default=False,
            description="Also say why: per paper, the terms (linear models) or sentences (neural "
            "models) that pushed its label most, under `explanation`. At most "
            f"{max_explained} papers per request with explain=true.",
        )
        cross_lists: bool = Field(
            default=False,
            description="Also suggest the other categories each paper belongs in, under "
            "`cross_lists` (absent otherwise). Needs a model trained with a cross-list head "
            "(GET /v1/model: model.cross_lists is not null); else 422.",
        )

    class PredictRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid", strict=True, json_schema_extra={"examples": [EXAMPLE_PAPER]}
        )
        title: title_t  # type: ignore[valid-type]
        abstract: abstract_t  # type: ignore[valid-type]

    class FeedbackRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"examples": [{"request_id": "3f2a" * 8, "label": "cs", "index": 0}]},
        )
        request_id: str = Field(
            pattern=REQUEST_ID_PATTERN,
            description="The request_id of a /v1/classify or /predict answer.",
        )
        label: str = Field(
            min_length=1, max_length=100, description="The true label (one of the model's)."
        )
        index: int = Field(
            default=0,
            ge=0,
            le=limits.max_papers - 1,
            description="Which paper of that request (0 for /predict).",
        )

    return Schemas(paper, ClassifyRequest, PredictRequest, FeedbackRequest)


class ReloadRequest(BaseModel):
    """What to load; an empty body reloads what the server started with (e.g. the champion)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"ref": "champion"}]}
    )
    model: str | None = Field(
        default=None, min_length=1, max_length=4096, description="A bundle or export directory."
    )
    ref: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="A registry alias ('champion') or version ('3').",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if self.model is not None and self.ref is not None:
            raise PydanticCustomError(
                "reload_source", "give either model (a path) or ref (a registry version), not both"
            )
        return self


# --- responses (documentation of the shapes the handlers build) ------------------------------


class LabelScoreOut(BaseModel):
    label: str
    name: str
    probability: float


class SpanOut(BaseModel):
    field: Literal["title", "abstract"]
    start: int = Field(description="Character offset in the field as sent (0-based).")
    end: int = Field(description="End offset, exclusive.")


class TermOut(BaseModel):
    text: str = Field(description="The term as written (a word, a word pair or a sentence).")
    weight: float = Field(
        description="linear: its exact contribution x_j * w_cj to the label's logit; "
        "occlusion: how much removing it lowers the label's calibrated probability."
    )
    field: Literal["title", "abstract"] = Field(description="Where it first occurs.")
    start: int
    end: int
    spans: list[SpanOut] = Field(description="Every occurrence, for highlighting.")


class PartOut(BaseModel):
    name: str = Field(
        description="'intercept', 'semantic (embedding)' (hybrid: the embedding block as one "
        "sum) or 'other terms' (negative, unlisted or unplaced terms)."
    )
    weight: float


class ExplanationOut(BaseModel):
    method: Literal["linear", "occlusion"]
    label: str = Field(description="The label explained: the paper's top label.")
    score: float = Field(
        description="linear: the label's logit (terms + parts add up to it); occlusion: its "
        "calibrated probability with the whole text."
    )
    terms: list[TermOut] = Field(description="What pushed the label most, strongest first.")
    parts: list[PartOut] = Field(description="linear: the rest of the score; occlusion: empty.")
    reason: str | None = Field(description="Why `terms` is empty (else null).")


class CrossListOut(BaseModel):
    label: str = Field(description="Category code, e.g. 'stat.ML'.")
    name: str
    probability: float = Field(
        description="The head's calibrated probability that the paper is listed here (per "
        "label: these do not sum to 1)."
    )
    archive: str = Field(description="The category's archive, e.g. 'stat'.")


class PaperResult(BaseModel):
    id: str | None = Field(description="The id you sent, or null.")
    label: str = Field(description="Top category code, e.g. 'cs'.")
    name: str = Field(description="Its human-readable name.")
    confidence: float = Field(description="Calibrated probability of the top category.")
    top: list[LabelScoreOut]
    prediction_set: list[LabelScoreOut] = Field(
        description="Conformal prediction set at coverage_target; empty means no label is "
        "confident enough at that coverage."
    )
    archive: LabelScoreOut | None = Field(
        default=None,
        description="The top label's archive, with the summed probability of that archive's "
        "labels (a category model answers both levels; for an archive model it is the label). "
        "Null for labels outside the arXiv taxonomy.",
    )
    cross_lists: list[CrossListOut] | None = Field(
        default=None,
        description="Only with cross_lists=true (absent otherwise): the categories besides "
        "`label` to list the paper in, most probable first (possibly empty); each passed its "
        "own threshold, set on the calibration split for a stated precision.",
    )
    explanation: ExplanationOut | None = Field(
        default=None,
        description="Only with explain=true (absent otherwise): why this label.",
    )


class ModelSummary(BaseModel):
    name: str
    version: str
    family: str
    runtime: str


class ClassifyResponse(BaseModel):
    request_id: str
    model: ModelSummary
    coverage_target: float | None
    results: list[PaperResult]


class CategoryScore(BaseModel):
    category: str
    confidence: float


class PredictResponse(BaseModel):
    """The first report's shape (the request id is in the X-Request-ID header)."""

    top_category: str
    predictions: list[CategoryScore]


class ModelInfoOut(BaseModel):
    name: str
    version: str
    family: str
    runtime: str
    source: str
    n_labels: int
    temperature: float | None
    coverage_target: float | None
    conformal_method: str | None
    loaded_at: float
    export: dict[str, Any] | None
    cross_lists: dict[str, Any] | None = Field(
        default=None,
        description="The cross-list head (labels, precision, max_labels), or null: the model "
        "cannot answer cross_lists=true.",
    )


class LabelName(BaseModel):
    label: str
    name: str


class ExplainAvailability(BaseModel):
    available: bool = Field(description="explain=true works for this model on this server.")
    method: Literal["linear", "occlusion"] | None
    max_papers: int = Field(description="Papers per request with explain=true.")
    reason: str | None = Field(description="Why not, when not available.")


class ModelResponse(BaseModel):
    model: ModelInfoOut
    labels: list[LabelName] = Field(description="Every label the model can answer, with its name.")
    limits: dict[str, int]
    batching: dict[str, float]
    explain: ExplainAvailability


class FeedbackAccepted(BaseModel):
    status: str
    request_id: str
    index: int
    label: str


class ReloadResponse(BaseModel):
    previous: ModelSummary
    current: ModelSummary
    seconds: float


class StatusResponse(BaseModel):
    status: str
    reason: str | None = None


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="Where: e.g. ['body', 'papers', 0, 'title'].")
    msg: str = Field(description="The rule that failed, in words.")
    type: str = Field(description="A stable code for the rule, e.g. 'string_too_long'.")


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a one-line summary plus one item per problem."""

    error: str
    detail: list[ErrorItem]


# OpenAPI `responses=` of the routes: what a client may get besides the 200
ERRORS_4XX: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "Invalid input: field and rule in detail."},
    413: {"model": ErrorResponse, "description": "Body over serve.limits.max_body_bytes."},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json."},
    408: {
        "model": ErrorResponse,
        "description": "Body not received within serve.limits.body_timeout_s.",
    },
}
BUSY: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorResponse,
        "description": "Not ready, shutting down, or the queue is full (see Retry-After).",
    }
}
