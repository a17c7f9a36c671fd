"""Load test for the paperops API: classify (most traffic), feedback on answers, generation.

Headless, bounded (compose's `load` profile runs it with a user count and --run-time):

    locust -f deploy/locust/locustfile.py --headless -H http://127.0.0.1:8000 -u 10 -r 2 -t 1m

/v1/generate answers 503 when the server has no language model (the serve-only image has none):
that is counted as a success with a note, not a failure, so the classify numbers stay readable.
"""

from __future__ import annotations

import random
from typing import Any

from locust import HttpUser, between, task

# Realistic shapes: titles of ~10 words, abstracts of ~150-250 words across archives.
PAPERS: list[dict[str, str]] = [
    {
        "title": "Attention-based sequence transduction without recurrence",
        "abstract": (
            "We propose a network architecture for sequence transduction based solely on "
            "attention mechanisms, dispensing with recurrence and convolutions entirely. "
            "Experiments on two machine translation tasks show these models to be superior in "
            "quality while being more parallelizable and requiring significantly less time to "
            "train. We show that the model generalizes well to other tasks by applying it "
            "successfully to constituency parsing with both large and limited training data."
        ),
    },
    {
        "title": "Sharp bounds for the number of lattice points in thin annuli",
        "abstract": (
            "We study the number of integer lattice points in annuli of radius R and width w "
            "and prove an asymptotic formula with a power saving error term whenever w exceeds "
            "a small negative power of R. The proof combines the van der Corput method with a "
            "new estimate for exponential sums over quadratic forms, and the bounds are sharp "
            "up to the endpoint. Applications to the distribution of gaps between norms are "
            "discussed."
        ),
    },
    {
        "title": "Quasinormal modes of rotating black holes in modified gravity",
        "abstract": (
            "We compute the quasinormal mode spectrum of slowly rotating black holes in "
            "scalar-Gauss-Bonnet gravity to second order in the spin. Deviations from the Kerr "
            "frequencies scale with the coupling constant and are within reach of third "
            "generation gravitational wave detectors. We provide fitting formulas for the "
            "fundamental quadrupolar modes and discuss the implications for ringdown tests of "
            "general relativity with current and future observations."
        ),
    },
    {
        "title": "Single-cell transcriptomics reveals regulatory programs in early development",
        "abstract": (
            "Cell fate decisions in the early embryo are controlled by gene regulatory "
            "networks whose dynamics remain poorly understood. Using single-cell RNA "
            "sequencing of thousands of cells across developmental stages we reconstruct "
            "lineage trajectories and identify transcription factor modules that switch "
            "between states. A stochastic model of the network reproduces the observed "
            "heterogeneity and predicts the effect of perturbations that we validate "
            "experimentally."
        ),
    },
    {
        "title": "Robust portfolio allocation under model uncertainty",
        "abstract": (
            "We consider an investor who is uncertain about the drift of asset returns and "
            "solves a max-min portfolio problem over a set of plausible models. We derive the "
            "optimal strategy in closed form for an ellipsoidal uncertainty set and show that "
            "it shrinks the mean-variance portfolio toward the minimum-variance portfolio. An "
            "empirical study on equity data shows improved out-of-sample Sharpe ratios."
        ),
    },
]

RNG = random.Random()  # noqa: S311  (which payload to send, not security)

PROMPTS = [
    "We propose a new method for",
    "In this paper we study the",
    "Abstract: The problem of estimating",
]


class PaperopsUser(HttpUser):
    """One client: classifies small batches, sometimes corrects an answer, sometimes generates."""

    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.answers: list[tuple[str, int, str]] = []  # (request_id, index, a plausible label)

    @task(10)
    def classify(self) -> None:
        papers = RNG.sample(PAPERS, k=RNG.randint(1, 3))
        with self.client.post(
            "/v1/classify", json={"papers": papers, "top_k": 3}, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"classify: HTTP {r.status_code}: {r.text[:200]}")
                return
            body: dict[str, Any] = r.json()
            for i, res in enumerate(body.get("results", [])):
                # feedback sometimes confirms the top label, sometimes gives the runner-up
                top = res.get("top") or [{"label": res.get("label")}]
                label = RNG.choice(top[:2])["label"]
                if label:
                    self.answers.append((body["request_id"], i, label))
            del self.answers[:-50]  # bounded memory per user

    @task(2)
    def feedback(self) -> None:
        if not self.answers:
            return
        request_id, index, label = self.answers.pop(RNG.randrange(len(self.answers)))
        with self.client.post(
            "/v1/feedback",
            json={"request_id": request_id, "label": label, "index": index},
            catch_response=True,
        ) as r:
            if r.status_code >= 300:
                r.failure(f"feedback: HTTP {r.status_code}: {r.text[:200]}")

    @task(1)
    def generate(self) -> None:
        payload = {"prompt": RNG.choice(PROMPTS), "max_new_tokens": 16, "seed": 1}
        with self.client.post("/v1/generate", json=payload, catch_response=True) as r:
            if r.status_code == 503:
                r.success()  # no language model loaded (or its queue is full): not an error
            elif r.status_code != 200:
                r.failure(f"generate: HTTP {r.status_code}: {r.text[:200]}")
