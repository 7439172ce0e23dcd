"""Fetch XTREME once on a networked machine into the local official layout, with a manifest.

``veco2 prefetch --tasks xnli panx ... --out DIR`` reads every split/language a task needs through
:func:`veco2.xtreme.data.load_split` with ``hub=True`` (``datasets.load_dataset("google/xtreme", ...)``)
and writes it in the layout the local loaders read (see :mod:`veco2.xtreme.data`), then writes
``DIR/manifest.json`` with the sha256 of every file.  Copy DIR to the offline machine and pass
``--data-root DIR``; :func:`verify` (``veco2 prefetch --verify DIR``) checks the files against the
manifest.

BUCC 2018 is the exception: the hub's ``bucc18`` configs hold only gold pairs, so the original corpus
archives are downloaded from https://comparable.limsi.fr/bucc2018/ ("sample" -> dev, "training" ->
test, as XTREME's ``download_data.sh`` does).

With ``$VECO2_HUB_MIRROR=DIR`` (a local mirror of the hub datasets, see :mod:`veco2.xtreme.data`)
the hub reads come from ``DIR/google/xtreme`` and ``DIR/facebook/xnli`` instead of the network; the
tests prefetch that way from tiny copies in the hub's parquet layout (``tests/test_xtreme_hub.py``).
The BUCC download is not mirrored.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import Veco2Error
from ..fileio import atomic_write, read_json, write_json, write_text
from ..provenance import sha256_file
from .data import load_split, local_path
from .registry import TaskSpec, get_task, list_tasks

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUCC_URL = "https://comparable.limsi.fr/bucc2018/bucc2018-{lang}-en.{part}-gold.tar.bz2"
BUCC_PARTS = {"dev": "sample", "test": "training"}


# ---------------------------------------------------------------------------------------------
# Writers: the inverse of the local readers
# ---------------------------------------------------------------------------------------------

def tsv_pair_text(examples: list[dict]) -> str:
    return "".join(f"{e['text_a']}\t{e['text_b']}\t{e['label']}\n" for e in examples)


def conll_text(examples: list[dict]) -> str:
    return "".join("".join(f"{w}\t{t}\n" for w, t in zip(e["words"], e["tags"])) + "\n" for e in examples)


def squad_json_text(examples: list[dict]) -> str:
    """SQuAD v1.1 JSON, one paragraph per distinct (title, context), questions in input order."""
    articles: dict[str, dict] = {}
    paragraphs: dict[tuple, dict] = {}
    for e in examples:
        article = articles.setdefault(e.get("title", ""), {"title": e.get("title", ""), "paragraphs": []})
        key = (e.get("title", ""), e["context"])
        if key not in paragraphs:
            paragraphs[key] = {"context": e["context"], "qas": []}
            article["paragraphs"].append(paragraphs[key])
        paragraphs[key]["qas"].append({
            "id": e["id"], "question": e["question"],
            "answers": [{"text": t, "answer_start": s}
                        for t, s in zip(e["answers"]["text"], e["answers"]["answer_start"])]})
    return json.dumps({"version": "1.1", "data": list(articles.values())}, ensure_ascii=False) + "\n"


def _write_split(task: TaskSpec, split: str, lang: str, examples, root: Path) -> list[Path]:
    path = local_path(task, split, lang, root)
    fmt = task.local["format"]
    if fmt == "tsv_pair":
        write_text(path, tsv_pair_text(examples))
    elif fmt == "conll":
        write_text(path, conll_text(examples))
    elif fmt == "squad_json":
        write_text(path, squad_json_text(examples))
    elif fmt == "tatoeba":
        write_text(Path(f"{path}.{task.code(lang)}"), "".join(s.replace("\n", " ") + "\n" for s in examples["src"]))
        write_text(Path(f"{path}.eng"), "".join(s.replace("\n", " ") + "\n" for s in examples["tgt"]))
        return [Path(f"{path}.{task.code(lang)}"), Path(f"{path}.eng")]
    else:
        raise Veco2Error(f"no writer for format {fmt!r}")
    return [path]


def fetch_bucc(lang: str, root: Path) -> list[Path]:
    """Download and unpack the BUCC 2018 ``{lang}-en`` sample (dev) and training (test) archives."""
    written = []
    for split, part in BUCC_PARTS.items():
        url = BUCC_URL.format(lang=lang, part=part)
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                blob = response.read()
        except OSError as err:
            raise Veco2Error(f"bucc2018: downloading {url} failed ({err}); fetch it by hand and unpack "
                             f"{lang}-en.{part}.{{{lang},en,gold}} as bucc2018/{lang}-en.{split}.*") from None
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:bz2") as archive:
            for member in archive.getmembers():
                name = Path(member.name).name  # e.g. de-en.sample.de
                for ext in (lang, "en", "gold"):
                    if name == f"{lang}-en.{part}.{ext}":
                        target = root / "bucc2018" / f"{lang}-en.{split}.{ext}"
                        with atomic_write(target, "wb") as handle:
                            handle.write(archive.extractfile(member).read())
                        written.append(target)
    if len(written) != 6:
        raise Veco2Error(f"bucc2018 {lang}: expected 6 files in the archives, found {len(written)}")
    return written


# ---------------------------------------------------------------------------------------------
# Prefetch and verify
# ---------------------------------------------------------------------------------------------

def prefetch(tasks: Sequence[str], out: str | Path, languages: Sequence[str] | None = None) -> dict:
    """Download ``tasks`` (default languages: the official lists) into ``out``; returns the manifest."""
    out = Path(out)
    written: list[Path] = []
    for name in tasks or list_tasks():
        task = get_task(name)
        langs = list(task.check_languages(languages)) if languages else list(task.languages)
        if task.name == "bucc2018":
            for lang in langs:
                written += fetch_bucc(lang, out)
            continue
        if task.train_language is not None:
            for split in ("train", "dev"):
                examples = load_split(task, split, task.train_language, hub=True)
                if examples is not None:
                    written += _write_split(task, split, task.train_language, examples, out)
        for lang in langs:
            written += _write_split(task, "test", lang, load_split(task, "test", lang, hub=True), out)
        log.info("prefetch: %s done", task.name)
    return write_manifest(out, extra={"tasks": list(tasks or list_tasks())})


def write_manifest(root: str | Path, extra: dict | None = None) -> dict:
    """sha256 of every file under ``root`` (except the manifest) into ``root/manifest.json``; an
    existing manifest's entries are kept and updated."""
    root = Path(root)
    previous = read_json(root / MANIFEST) if (root / MANIFEST).exists() else {}
    files = dict(previous.get("files", {}))
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[path.relative_to(root).as_posix()] = sha256_file(path)
    manifest = {**previous, **(extra or {}), "files": files, "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(root / MANIFEST, manifest)
    return manifest


def verify(root: str | Path, files: Iterable[str] | None = None) -> int:
    """Check files under ``root`` against ``root/manifest.json``; returns the number checked.

    A missing manifest, a missing file or a sha256 mismatch raises a Veco2Error naming the file.
    """
    root = Path(root)
    if not (root / MANIFEST).exists():
        raise Veco2Error(f"{root}: no {MANIFEST}; was it written by `veco2 prefetch`?")
    expected = read_json(root / MANIFEST).get("files", {})
    names = list(files) if files is not None else sorted(expected)
    for name in names:
        if name not in expected:
            raise Veco2Error(f"{root / name}: not listed in {root / MANIFEST}")
        path = root / name
        if not path.exists():
            raise Veco2Error(f"{path}: listed in the manifest but missing")
        digest = sha256_file(path)
        if digest != expected[name]:
            raise Veco2Error(f"{path}: sha256 {digest[:12]}... does not match the manifest ({expected[name][:12]}...); "
                             "the file changed or is corrupt: fetch it again with `veco2 prefetch`")
    return len(names)
