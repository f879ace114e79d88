"""Logging: LOG_LEVEL, optional rotating LOG_FILE, text or JSON lines with the request fields."""

from __future__ import annotations

import json
import logging
import re
from contextvars import ContextVar
import logging.handlers
from pathlib import Path

# The request being served, set by the request middleware: every line logged while serving it carries its id.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


# Attributes every LogRecord has; anything else on a record came in through `extra=` and is a field.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escaped(text: str) -> str:
    """Control characters as escapes (`\\n`, `\\x1b`): a request path or model name written by a client cannot start a
    forged line in the log, nor send escape codes to a terminal that shows it."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    """One line per record: the message and its fields with control characters escaped (a traceback, the
    server's own text, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802  (logging's name)
        record.message = escaped(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={escaped(str(v))}" for k, v in _fields(record).items())
        return f"{line} {fields}" if fields else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup_logging(level: str, log_file: Path | None, fmt: str) -> None:
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    unwritable: OSError | None = None
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=10 * 2**20, backupCount=5, encoding="utf-8"))
        except OSError as exc:  # a read-only disk or a file we may not write: serve anyway, logging to stderr
            unwritable = exc
    logger = logging.getLogger("local_llm_api")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_RequestId())
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    if unwritable is not None:
        logger.warning("LOG_FILE %s cannot be written (%s): logging to stderr only", log_file, unwritable.strerror or unwritable)
