"""Request and response models of `/v1/generate` and `/infer`, built from `serve.generator`'s limits
(shown in the OpenAPI schema) so that validation happens before anything is queued.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from paperops.serve.schemas import _text_rule
from paperops.serve.settings import GeneratorSettings

if TYPE_CHECKING:  # torch lives behind these: a classifier-only server never imports it
    pass


EXAMPLE_PROMPT = "What are the early symptoms of diabetes?"


MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationSchemas:
    GenerateRequest: type[BaseModel]
    InferRequest: type[BaseModel]


def make_generation_schemas(g: GeneratorSettings) -> GenerationSchemas:
    prompt_t = Annotated[
        str,
        Field(
            min_length=1,
            max_length=g.prompt_max_chars,
            description=(
                f"The text to continue (1-{g.prompt_max_chars} characters, not only "
                "whitespace, and shorter than the model's context in tokens)."
            ),
            json_schema_extra={"pattern": r"\S"},
        ),
        _text_rule("prompt"),
    ]

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={
                "examples": [{"prompt": EXAMPLE_PROMPT, "max_new_tokens": 32, "seed": 1}]
            },
        )
        prompt: prompt_t  # type: ignore[valid-type]
        max_new_tokens: int = Field(
            default=g.default_max_new_tokens,
            ge=1,
            le=g.max_new_tokens_cap,
            description=f"New tokens at most (1-{g.max_new_tokens_cap}).",
        )
        temperature: float = Field(
            default=g.temperature,
            gt=0,
            le=5,
            description="Sampling temperature, in (0, 5]; below 1e-4 decoding is greedy.",
        )
        top_p: float = Field(
            default=g.top_p,
            gt=0,
            le=1,
            description="Nucleus sampling mass, in (0, 1]; 1 = off; below 1e-4 greedy.",
        )
        top_k: int = Field(
            default=0,
            ge=0,
            le=1_000_000,
            description="Sample from the k likeliest; 0 = off, 1 = greedy.",
        )
        seed: int | None = Field(
            default=None,
            ge=0,
            le=MAX_SEED,
            description="Random seed: the same request with the same seed gives the same text. "
            "Null = a fresh one (returned in the response).",
        )
        ignore_eos: bool = Field(
            default=False,
            description="Keep generating past end-of-text up to max_new_tokens (a fixed amount "
            "of work per request, for benchmarks).",
        )

    class InferRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"examples": [{"prompt": EXAMPLE_PROMPT}]},
        )
        prompt: prompt_t  # type: ignore[valid-type]
        max_length: int | None = Field(
            default=None,
            ge=2,
            le=1_000_000,
            description="Total tokens, prompt included (as HF generate's max_length); new tokens "
            f"are capped at {g.max_new_tokens_cap}. Null = {g.default_max_new_tokens} new tokens.",
        )

    return GenerationSchemas(GenerateRequest, InferRequest)


class GenModel(BaseModel):
    name: str
    version: str
    family: str
    runtime: str


class GenTokens(BaseModel):
    prompt: int
    generated: int


class GenTiming(BaseModel):
    ttft_ms: float | None
    total_ms: float
    tokens_per_s: float


class GenerateResponse(BaseModel):
    id: str
    model: GenModel
    prompt: str
    text: str = Field(description="The generated continuation only.")
    finish_reason: str = Field(description="eos | length | context | time_budget")
    seed: int
    tokens: GenTokens
    timing: GenTiming


class InferResponse(BaseModel):
    prompt: str
    generated_text: str = Field(description="The prompt followed by its continuation.")
    model_version: str
    tokens: GenTokens


class GeneratorInfoOut(BaseModel):
    name: str
    version: str
    family: str
    runtime: str
    source: str
    corpus: str | None = None
    context_length: int
    max_new_tokens_cap: int
    default_max_new_tokens: int
    prompt_max_chars: int
    time_budget_s: float
    max_batch_size: int
    loaded_at: float
