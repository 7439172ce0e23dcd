"""File helpers shared by every stage: atomic writes and strict, line-numbered text reading.

Every JSON/CSV/checkpoint write in veco2 goes through :func:`atomic_write` so that a crash or a
full disk leaves the previous version of the file intact (write to a temporary file in the same
directory, fsync, then ``os.replace``).

:func:`fault_point` is the crash-test hook of the reliability tests (``tests/test_reliability.py``):
with ``VECO2_FAULT=NAME`` in the environment, the process kills itself with SIGKILL the first time
it reaches the point called ``NAME`` -- a real ``kill -9`` at an exact place (half-way through a
checkpoint, between two steps), which polling from outside cannot hit reliably.  Unset, it costs one
dictionary look-up.

:func:`remove_stale_temporaries` deletes the temporaries a killed :func:`atomic_write` leaves behind
(``.NAME.XXXXXXXX.tmp``); :func:`load_yaml` is the strict YAML reader (safe types only, no duplicate
keys, no ``.nan``/``.inf``, bounded nesting).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import json
import lzma
import math
import os
import re
import shutil
import signal
import tempfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import InputError, Veco2Error

_UMASK = os.umask(0)
os.umask(_UMASK)


FAULT_ENV = "VECO2_FAULT"


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL (no clean-up, no ``finally``) if ``$VECO2_FAULT == name``.

    Points in the code base: ``write:FILENAME`` (inside :func:`atomic_write`, after the data is
    written to the temporary file and before the rename), ``pretrain-step:N`` (after optimizer
    step N and its checkpoint, if any), ``checkpoint:N`` (half-way through writing checkpoint N),
    ``pretrain-finish`` (final model saved, summary not yet written), ``finetune-step:N``,
    ``prepare-part:NAME`` (a shard part of data preparation written, the next not started).
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


#: The name :func:`atomic_write` gives its temporary file: ``tempfile.mkstemp(prefix=".NAME.",
#: suffix=".tmp")``, whose random part is 8 characters of ``[a-z0-9_]`` (CPython's
#: ``tempfile._RandomNameSequence``).  :func:`tempfile.mkdtemp` with the same prefix and suffix
#: (``veco2.data.tokenizer``) gives the same shape of directory name.
_TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(directory: str | Path) -> list[str]:
    """Delete the temporaries that an interrupted :func:`atomic_write` (or a ``mkdtemp`` with the same
    naming) left in ``directory``; returns the names removed, sorted.

    Only entries named ``.NAME.XXXXXXXX.tmp`` directly inside ``directory`` are touched; nothing is
    followed through a symbolic link.  Call it only while holding the directory's lock (a resumed run):
    another process writing there at the same moment would lose its temporary.
    """
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not _TEMPORARY_NAME.fullmatch(entry.name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return sorted(removed)


def try_lock(path: str | Path, *, block: bool = True, mode: str = "w") -> IO | None:
    """An exclusive ``flock`` on ``path`` (created with its folder): the open handle, which holds the
    lock until it is closed or the process dies; with ``block=False`` None when another process holds
    it.  The one lock primitive of veco2 (output directories, GPU slots, a sweep's shared start)."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, mode)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold a blocking exclusive ``flock`` on ``path`` for the ``with`` block (:func:`try_lock`)."""
    handle = try_lock(path)
    try:
        yield
    finally:
        handle.close()  # closing the last handle releases the flock


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
    text = read_text(path)
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
    lines = read_text(path).split("\n")
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


_GZIP_MAGIC = b"\x1f\x8b"


def check_readable_file(path: str | Path) -> Path:
    """``path`` if it is a regular file (or a link to one) this process can open; otherwise an
    :class:`InputError` that says which of the usual mistakes it is: missing, a directory, a broken
    symbolic link, a symbolic-link loop, no permission."""
    path = Path(path)
    try:
        info = path.stat()
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(path, None, "symbolic link loop") from None
        if err.errno == errno.ENOENT and path.is_symlink():
            raise InputError(path, None, f"broken symbolic link (to {os.readlink(path)}, which does not exist)") from None
        if err.errno == errno.ENOENT:
            raise InputError(path, None, "file not found") from None
        raise InputError(path, None, f"cannot read ({err.strerror})") from None
    if path.is_dir():
        raise InputError(path, None, "is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(path, None, "cannot read (permission denied)")
    return path


def read_text(path: str | Path) -> str:
    """The whole UTF-8 text of ``path``; unreadable files and invalid UTF-8 are an :class:`InputError`."""
    path = check_readable_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(path, None, f"not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(path, None, f"cannot read ({err.strerror})") from None


def open_text(path: str | Path) -> IO[bytes]:
    """Open a text file for reading bytes, through gzip or xz when its name ends in ``.gz`` or ``.xz``.

    A gzip stream in a file without the ``.gz`` suffix is an error that says so (read as text it would
    be a "NUL byte" or "invalid UTF-8" error that hides the cause).
    """
    path = check_readable_file(path)
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        if path.suffix == ".xz":
            return lzma.open(path, "rb")
        handle = open(path, "rb")
    except OSError as err:
        raise InputError(path, None, f"cannot read ({err.strerror})") from None
    if handle.peek(2)[:2] == _GZIP_MAGIC:
        handle.close()
        raise InputError(path, None, f"gzip-compressed data in a file without the .gz suffix "
                                     f"(rename it to {path.name}.gz)")
    return handle


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
            except (EOFError, OSError, zlib.error, lzma.LZMAError) as err:  # truncated or corrupt .gz / .xz
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


# ---------------------------------------------------------------------------------------------
# Strict YAML

#: Default bound on the nesting of YAML collections (veco2's configs nest 3 levels).
MAX_YAML_DEPTH = 100


class _YamlProblem(Exception):
    def __init__(self, line: int | None, problem: str):
        super().__init__(problem)
        self.line, self.problem = line, problem


@functools.lru_cache(maxsize=None)
def _strict_loader(max_depth: int):
    """A ``yaml.SafeLoader`` subclass that refuses duplicate keys, non-finite floats and deep nesting."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        _depth = 0

        def compose_node(self, parent, index):
            # PyYAML composes recursively: bound the depth before Python's recursion limit is reached.
            opens = self.check_event(yaml.MappingStartEvent, yaml.SequenceStartEvent)
            if opens:
                self._depth += 1
                if self._depth > max_depth:
                    mark = self.peek_event().start_mark
                    raise _YamlProblem(mark.line + 1, f"nested deeper than {max_depth} levels")
            try:
                return super().compose_node(parent, index)
            finally:
                if opens:
                    self._depth -= 1

        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                first_line: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may override, by design
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    try:
                        if key in first_line:
                            raise _YamlProblem(line, f"duplicate key {key!r} (first at line {first_line[key]})")
                        first_line[key] = line
                    except TypeError:  # an unhashable key: SafeConstructor reports it below
                        continue
            return super().construct_mapping(node, deep)

        def construct_yaml_float(self, node):
            value = super().construct_yaml_float(node)
            if not math.isfinite(value):
                raise _YamlProblem(node.start_mark.line + 1, f"{node.value!r} is not a finite number")
            return value

    StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_yaml_float)
    return StrictLoader


def load_yaml(path_or_text: str | Path, *, source: str | Path | None = None, max_depth: int = MAX_YAML_DEPTH,
              error: type[Veco2Error] = InputError) -> Any:
    """Parse YAML strictly: a ``Path`` is read as a file, a ``str`` is the YAML text itself.

    Safe types only (``yaml.SafeLoader``), and three things PyYAML accepts silently are errors: a key
    given twice in one mapping (PyYAML keeps the last), a non-finite number (``.nan``, ``.inf``,
    ``1.0e+999``) and nesting deeper than ``max_depth`` (PyYAML recurses and ends in ``RecursionError``).
    Every problem is one line, ``SOURCE:LINE: problem``, raised as ``error`` (:class:`InputError`, or
    e.g. :class:`~veco2.errors.ConfigError` for config files); ``source`` names the text in messages
    (default: the path, or ``<yaml>``).  An empty document is ``None``.
    """
    import yaml

    if isinstance(path_or_text, Path):
        source = source if source is not None else path_or_text
        text = read_text(path_or_text)
    else:
        text, source = path_or_text, source if source is not None else "<yaml>"

    def fail(line: int | None, problem: str) -> Veco2Error:
        located = InputError(source, line, problem)
        return located if error is InputError else error(str(located))

    loader = None
    try:
        loader = _strict_loader(max_depth)(text)  # what yaml.load does, with a yaml.SafeLoader subclass
        return loader.get_single_data()
    except _YamlProblem as err:
        raise fail(err.line, err.problem) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise fail(None if mark is None else mark.line + 1, f"invalid YAML: {problem}") from None
    except RecursionError:  # nesting inside a scalar-free flow structure the composer never sees
        raise fail(None, f"nested too deeply to parse (limit {max_depth} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()
