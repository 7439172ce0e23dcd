"""A pre-training corpus on disk, in the layout of the embedded demo corpus.

::

    ROOT/parallel/{train,dev,test}/en-LANG.tsv[.gz]   en<TAB>LANG sentence pairs
    ROOT/mono/LANG.txt[.gz]                           one sentence per line (en included)
    ROOT/dict/en-LANG.tsv[.gz]                        en_word<TAB>LANG_word dictionary entries

``corpus="demo"`` resolves to the corpus shipped inside the package (``veco2/demo_data``).
Readers count what they skip (:class:`~veco2.data.readers.ReadStats`); :class:`Corpus` keeps
every stats object so the shard builder can record them in its manifest.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError, Veco2Error
from .readers import ReadStats, read_monolingual, read_parallel

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_data"


def _find(base: Path) -> Path | None:
    for candidate in (base, base.with_name(base.name + ".gz")):
        if candidate.exists():
            return candidate
    return None


class Corpus:
    def __init__(self, root: str | Path = "demo"):
        self.root = DEMO_DIR if str(root) == "demo" else Path(root)
        if not (self.root / "parallel").is_dir():
            raise Veco2Error(f"{self.root}: not a corpus directory (expected parallel/, mono/, dict/ inside; "
                             "build the demo one with `veco2 data build-demo`)")
        self.stats: list[ReadStats] = []

    def languages(self) -> list[str]:
        """Non-English languages with training pairs, sorted."""
        names = (p.name.split(".")[0] for p in (self.root / "parallel" / "train").glob("en-*.tsv*"))
        return sorted(n.removeprefix("en-") for n in names)

    def _path(self, relative: str) -> Path:
        path = _find(self.root / relative)
        if path is None:
            raise Veco2Error(f"{self.root / relative}: missing from the corpus (also tried .gz)")
        return path

    def _read(self, reader, relative: str) -> list:
        """Read one file; an empty file, or one whose every line is a skip, is an error (a wrong or
        broken file, not noise), other skips are counted, logged and kept for the data card."""
        path = self._path(relative)
        stats = ReadStats()
        records = list(reader(path, stats))
        if stats.read == 0:
            raise InputError(path, None, "empty file (no lines)")
        if not records:
            reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(stats.skipped.items()))
            raise InputError(path, None, f"no usable line among {stats.read} ({reasons})")
        stats.log_summary()
        self.stats.append(stats)
        return records

    def parallel(self, lang: str, split: str = "train") -> list[tuple[str, str]]:
        return self._read(read_parallel, f"parallel/{split}/en-{lang}.tsv")

    def monolingual(self, lang: str) -> list[str]:
        return self._read(read_monolingual, f"mono/{lang}.txt")

    def dictionary_path(self, lang: str) -> Path | None:
        return _find(self.root / f"dict/en-{lang}.tsv")

    def skipped(self) -> dict[str, dict[str, int]]:
        return {s.path: dict(s.skipped) for s in self.stats if s.skipped}
