"""File helpers shared by every stage: atomic writes and strict, line-numbered text reading.

Every JSON/CSV/checkpoint write in veco2 goes through :func:`atomic_write` so that a crash or a
full disk leaves the previous version of the file intact (write to a temporary file in the same
directory, fsync, then ``os.replace``).

:func:`fault_point` is the crash-test hook of the reliability tests (``tests/test_reliability.py``):
with ``VECO2_FAULT=NAME`` in the environment, the process kills itself with SIGKILL the first time
it reaches the point called ``NAME`` -- a real ``kill -9`` at an exact place (half-way through a
checkpoint, between two steps), which polling from outside cannot hit reliably.  Unset, it costs one
dictionary look-up.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


FAULT_ENV = "VECO2_FAULT"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL (no clean-up, no ``finally``) if ``$VECO2_FAULT == name``.

    Points in the code base: ``write:FILENAME`` (inside :func:`atomic_write`, after the data is
    written to the temporary file and before the rename), ``pretrain-step:N`` (after optimizer
    step N and its checkpoint, if any), ``checkpoint:N`` (half-way through writing checkpoint N),
    ``pretrain-finish`` (final model saved, summary not yet written), ``finetune-step:N``.
    """
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            fault_point(f"write:{path.name}")
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, indent=2, ensure_ascii=False, sort_keys=False, default=_json_default)
        handle.write("\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | Path) -> Any:
    """Read JSON; a corrupt file raises an :class:`InputError` naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, f"corrupt JSON: {err.msg}") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (line-buffered appends are atomic enough for logs)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file; a truncated last line (a killed writer) is dropped, any other bad line is an error."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # last line without newline: partial append of a killed run
                break
            raise InputError(path, number, f"corrupt JSON line: {err.msg}") from None
    return records


def open_text(path: str | Path) -> IO[bytes]:
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line of a UTF-8 text file (optionally gzipped).

    Strips a leading BOM and CR/LF line ends.  Invalid UTF-8 and NUL bytes raise an
    :class:`InputError` naming the file and line, so that nothing is mis-decoded silently.
    """
    with open_text(path) as handle:
        number = 0
        lines = iter(handle)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt .gz
                raise InputError(path, number + 1, f"corrupt compressed file ({type(err).__name__}: {err})") from None
            number += 1
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if b"\x00" in raw:
                raise InputError(path, number, "NUL byte in text (binary file?)")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(path, number, f"invalid UTF-8 at byte {err.start} of the line") from None
            yield number, text.rstrip("\r\n")
