"""Where the benchmark data sets live, and reading them safely.

The compact sets ship in the repository's ``data/`` folder (gzip, with their licences and
``data/ATTRIBUTION.md``). The folder is found, in order: ``graphthrift bench --data DIR``
(``using_data_dir``), ``GRAPHTHRIFT_DATA_DIR``, the checkout this code runs from, the
working directory's ``data/``. An explicit folder (the first two) wins even when it lacks
a set, so the message names the folder the user chose.

A missing or damaged set raises ``DataSetMissing``: one line that names the set, the path
and how to get it. Benches catch it, say it, and run the rest.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from graphthrift.errors import DataFileError, DataSetMissing

__all__ = [
    "DATA_ENV",
    "SETS",
    "DataFileError",
    "DataSet",
    "DataSetMissing",
    "data_dir",
    "data_file",
    "has_set",
    "read_text",
    "using_data_dir",
]

DATA_ENV = "GRAPHTHRIFT_DATA_DIR"
MARKER = "ATTRIBUTION.md"  # marks the repository's data folder
_override: ContextVar[Path | None] = ContextVar("graphthrift_data_dir", default=None)


@dataclass(frozen=True, slots=True)
class DataSet:
    """A benchmark set: its folder, the files the benches read, and where it comes from."""

    name: str
    files: tuple[str, ...]
    source: str


SETS: dict[str, DataSet] = {
    s.name: s
    for s in (
        DataSet("banking77", ("train.csv", "test.csv"), "github.com/PolyAI-LDN/task-specific-datasets"),
        DataSet("stsb", ("sts-train.csv", "sts-test.csv"), "ixa2.si.ehu.eus/stswiki (STS benchmark)"),
        DataSet("xquad_en", ("xquad.en.json",), "github.com/google-deepmind/xquad"),
        DataSet("topical_chat", ("valid_freq.json",), "github.com/alexa/Topical-Chat"),
        DataSet(
            "sgd_test",
            ("sgd_test_compact.jsonl",),
            "github.com/google-research-datasets/dstc8-schema-guided-dialogue (reduced)",
        ),
    )
}  # fmt: skip
DataSetMissing.hints.update(
    {
        name: f"it ships in the graphthrift repository's data/ folder; pass --data"
        f" <checkout>/data or set {DATA_ENV} (source: {s.source}, see data/ATTRIBUTION.md)"
        for name, s in SETS.items()
    }
)


@contextmanager
def using_data_dir(path: str | os.PathLike[str] | None) -> Iterator[None]:
    """Use ``path`` as the data folder inside the block (``--data DIR``); None changes nothing."""
    if path is None:
        yield
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"--data {path}: no such directory (expected the data/ folder of a checkout)"
        )
    token = _override.set(folder.resolve())
    try:
        yield
    finally:
        _override.reset(token)


def _is_data_folder(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def data_dir() -> Path | None:
    """The data folder: ``--data``, ``GRAPHTHRIFT_DATA_DIR``, this checkout's, or ``./data``."""
    chosen = _override.get()
    if chosen is not None:
        return chosen
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[3] / "data"
    for candidate in (checkout, Path.cwd() / "data"):
        if _is_data_folder(candidate):
            return candidate.resolve()
    return None


def _locate(folder: Path, name: str) -> Path | None:
    """``name`` or ``name.gz`` (or, for a ``.gz`` name, the plain file) in ``folder``."""
    plain = name[:-3] if name.endswith(".gz") else name
    for candidate in (folder / f"{plain}.gz", folder / plain):
        if candidate.is_file():
            return candidate
    return None


def data_file(dataset: str, name: str, root: Path | None = None) -> Path:
    """The path of ``dataset/name`` (gzipped or not); raises ``DataSetMissing``."""
    base = root if root is not None else data_dir()
    if base is None:
        raise DataSetMissing(dataset, None, "not found (no data folder)")
    found = _locate(base / dataset, name)
    if found is None:
        raise DataSetMissing(dataset, base / dataset / name)
    return found


def has_set(dataset: str, root: Path | None = None) -> bool:
    """Whether every file ``dataset`` needs is present (not whether it reads cleanly)."""
    base = root if root is not None else data_dir()
    if base is None:
        return False
    return all(_locate(base / dataset, f) is not None for f in SETS[dataset].files)


def read_text(path: Path) -> str:
    """The whole text of ``path``, gunzipped when it is gzip; raises ``DataFileError``."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataFileError(path, f"truncated or corrupt gzip ({exc})") from None
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_set_file(dataset: str, name: str, root: Path | None = None) -> str:
    """The text of ``dataset/name``; a missing or damaged file raises ``DataSetMissing``."""
    path = data_file(dataset, name, root)
    try:
        return read_text(path)
    except DataFileError as exc:
        raise DataSetMissing(dataset, path, f"is damaged ({exc.problem})") from None
