"""Errors that point at the offending input: file, line, field and rule."""

from __future__ import annotations

from pathlib import Path


class DataError(Exception):
    """Bad input data. The message always says where (file:line) and which rule failed."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.rule = rule
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        rule = f" [{self.rule}]" if self.rule else ""
        return f"{where}: {self.message}{rule}" if where else f"{self.message}{rule}"
