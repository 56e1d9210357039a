"""Logging: readable lines in development, one JSON object per line in production."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

# `color_message` is uvicorn's coloured copy of the message, meant for its own formatter only.
_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}
# Terminal escape sequences (colours, cursor moves): a log line is data, not a terminal program.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: strip_ansi(v) if isinstance(v, str) else v
        for k, v in vars(record).items()
        if k not in _STANDARD
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": strip_ansi(record.getMessage()),
        }
        data.update(_extra(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = strip_ansi(super().format(record))
        extra = _extra(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


class StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record is emitted, not to the stream that was
    there when logging was configured: a command run in-process (a test's CliRunner) replaces
    stderr with a buffer that is closed afterwards, and threads that log later (an SMTP test
    server's) would then hit "I/O operation on closed file"."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr


def configure_logging(*, level: str = "INFO", json_lines: bool = False) -> None:
    handler = StderrHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
