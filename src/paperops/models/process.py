"""Process-wide settings a run or a server fixes once: torch's intra-op threads and the seeds.

The one place that sets torch's thread count (from `serve.threads`, `trainer.threads`,
`export.threads`, ...) and seeds python/numpy/torch: callers pass the configured numbers, and
nothing is set at import time.

On 2 cores, torch's default (one thread per core) is right for one process; two DDP ranks or an
API worker next to a tokenizer want fewer, which is why each stage passes its own setting.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
from collections.abc import Iterator

import numpy as np


def set_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads when `threads` is given; return the count in force."""
    import torch  # deferred: a serve-only install has no torch, and tfidf never needs it

    if threads:
        torch.set_num_threads(int(threads))
    return int(torch.get_num_threads())


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """`set_torch_threads` for a block, restoring the previous count after it."""
    import torch  # deferred: see set_torch_threads

    before = torch.get_num_threads()
    set_torch_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> int:
    """Seed python, numpy and, where installed, torch and its dataloader workers (Lightning's
    seeding), so a run is repeatable; returns the seed."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if importlib.util.find_spec("lightning") is None:  # an install without the neural families
        return int(seed)
    import lightning as L  # deferred: heavy, and tfidf-only runs may lack it

    return int(L.seed_everything(int(seed), workers=True, verbose=False))
