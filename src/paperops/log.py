"""One logging setup for every entry point: human-readable on a terminal, JSON lines for machines.

Level: argument > $PAPEROPS_LOG_LEVEL > INFO.
Format: argument > $PAPEROPS_LOG_FORMAT ("console"|"json").
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

_STD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra={...}` fields become top-level keys."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once (idempotent: re-running replaces our handler)."""
    level = (level or os.environ.get("PAPEROPS_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("PAPEROPS_LOG_FORMAT") or "console").lower()
    if level not in logging.getLevelNamesMapping():
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if fmt not in ("console", "json"):
        raise ValueError(f"log format {fmt!r} is not one of 'console', 'json'")
    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    else:
        from rich.console import Console
        from rich.logging import RichHandler

        # stderr, like the json format: stdout is for command output (e.g. `config show > x.yaml`)
        handler = RichHandler(
            console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s", datefmt="[%X]"))
    handler._paperops = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_paperops", False):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
