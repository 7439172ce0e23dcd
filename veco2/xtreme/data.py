"""XTREME data loaders: every task split per language, from the local official layout or the hub.

Two sources, one output format (plain dicts per task family): (a) the local layout
(``veco2 prefetch``, the packaged demo data, or google-research/xtreme's ``download_data.sh``);
(b) the Hugging Face hub ``google/xtreme`` (``facebook/xnli`` ``en`` for the XNLI train split), or a
local mirror of it under ``$VECO2_HUB_MIRROR``.  File names and hub configs come from the task YAML
(:mod:`veco2.xtreme.registry`).  Layout, example dicts and the known traps handled here:
``docs/xtreme.md#task-data``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError, Veco2Error
from ..fileio import iter_lines, read_json
from .registry import TaskSpec, get_task

log = logging.getLogger(__name__)

DEMO_ROOT = Path(__file__).resolve().parent.parent / "demo_data" / "xtreme"
SPLITS = ("train", "dev", "test")

_WHERE_TO_GET = {
    "panx": " (PAN-X's original download link is dead: `veco2 prefetch` takes it from the hub configs "
            "google/xtreme PAN-X.LANG)",
    "bucc2018": " (BUCC mining needs the original corpus files from https://comparable.limsi.fr/bucc2018/ "
                "-- `veco2 prefetch --tasks bucc2018` fetches them; the hub's bucc18 configs hold only gold pairs)",
}


def resolve_root(data_root: str | Path | None) -> Path:
    """The local data root: ``data_root`` if given, else ``$VECO2_XTREME_DATA``, else the packaged demo data."""
    if data_root is not None:
        return Path(data_root)
    if os.environ.get("VECO2_XTREME_DATA"):
        return Path(os.environ["VECO2_XTREME_DATA"])
    return DEMO_ROOT


def is_demo_root(root: Path) -> bool:
    return root.resolve() == DEMO_ROOT.resolve()


def local_path(task: TaskSpec, split: str, lang: str, root: Path) -> Path | None:
    """The file (or, for BUCC/Tatoeba, file prefix) holding ``split`` of ``lang``; None if the task has no such split."""
    if split == "translate_train":
        template = task.local["files"].get("translate_train")
    else:
        template = task.local["files"].get(split)
    if template is None:
        return None
    return root / template.format(lang=lang, code=task.code(lang))


def _missing(task: TaskSpec, split: str, lang: str, path: Path) -> Veco2Error:
    return Veco2Error(
        f"{task.name} {split} data for {lang!r} not found: {path} does not exist. Fetch it once on a "
        f"networked machine with `veco2 prefetch --tasks {task.name} --out DIR` and pass --data-root DIR "
        f"(or read the hub directly with --hub){_WHERE_TO_GET.get(task.name, '')}")


def available_languages(task: str | TaskSpec, data_root: str | Path | None = None) -> list[str]:
    """Languages of ``task`` (in registry order) whose test data exists under the local root."""
    task = get_task(task)
    root = resolve_root(data_root)
    found = []
    for lang in task.languages:
        path = local_path(task, "test", lang, root)
        probe = path if task.local["format"] not in ("bucc", "tatoeba") else \
            Path(f"{path}.{'en' if task.local['format'] == 'bucc' else 'eng'}")
        if probe.exists():
            found.append(lang)
    return found


def run_languages(task: TaskSpec, languages: Iterable[str] | None, data_root: str | Path | None,
                  hub: bool) -> list[str]:
    """The languages a run tests on: ``languages`` (checked against the task), else those the packaged
    demo data has (when it is the local root), else the task's official list."""
    if languages:
        return list(task.check_languages(languages))
    if not hub and is_demo_root(resolve_root(data_root)):
        found = available_languages(task, data_root)
        if not found:
            raise Veco2Error(f"{task.name}: the packaged demo data has no test files for this task; pass "
                             f"--data-root DIR fetched with `veco2 prefetch --tasks {task.name} --out DIR`")
        return found
    return list(task.languages)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------

def load_split(task: str | TaskSpec, split: str, lang: str, *, data_root: str | Path | None = None,
               hub: bool = False) -> Any:
    """Examples of one split (``train`` | ``dev`` | ``test`` | ``translate_train``) in one language.

    ``train``/``dev`` exist in the task's ``train_language`` only (zero-shot protocol) -- except
    ``translate_train``, the machine-translated train data of ``lang`` (local layout only).
    Returns None when the task has no such split (TyDiQA has no English dev set).
    Raises Veco2Error for an unknown language, a missing local file (naming ``veco2 prefetch``) or
    a hub failure.
    """
    task = get_task(task)
    if split not in SPLITS + ("translate_train",):
        raise Veco2Error(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or translate_train")
    if split in ("train", "dev") and task.train_language is not None and lang != task.train_language:
        raise Veco2Error(f"{task.name}: the {split} split is used in {task.train_language!r} only "
                         f"(zero-shot protocol), not {lang!r}")
    task.check_language(lang)
    if hub and split != "translate_train":
        return _load_hub(task, split, lang)
    root = resolve_root(data_root)
    path = local_path(task, split, lang, root)
    if path is None:
        if split == "translate_train":
            raise Veco2Error(f"{task.name} has no translate-train layout in its task file")
        return None
    fmt = task.local["format"]
    _check_downloaded(root, path)
    if fmt == "tsv_pair":
        if not path.exists():
            raise _missing(task, split, lang, path)
        return read_tsv_pair(path, task.labels)
    if fmt == "conll":
        if not path.exists():
            raise _missing(task, split, lang, path)
        return read_conll(path, task.labels)
    if fmt == "squad_json":
        if not path.exists():
            raise _missing(task, split, lang, path)
        prefix = task.local.get("train_id_prefix") if split == "train" else None
        return read_squad_json(path, id_prefix=prefix)
    if fmt == "bucc":
        return read_bucc(path, lang, task=task, split=split)
    if fmt == "tatoeba":
        return read_tatoeba(path, task.code(lang), task=task, split=split, lang=lang)
    raise Veco2Error(f"{task.path}: unknown local format {fmt!r}")


_VERIFIED: dict[tuple, str] = {}


def _check_downloaded(root: Path, path: Path) -> None:
    """Check the files of ``path`` (a file or a BUCC/Tatoeba prefix) against ``root/manifest.json``.

    A root written by ``veco2 prefetch`` has a manifest with the sha256 of every downloaded file; a
    file that no longer matches (a broken copy, a partial download, an edit) is an error naming the
    file, before anything is read from it.  Roots without a manifest (the packaged demo data, files
    copied by hand) are read as they are.  Each file is hashed once per process (while its size and mtime stay).
    """
    from ..provenance import sha256_file

    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        return
    expected = read_json(manifest_path).get("files", {})
    candidates = [path] if path.exists() else sorted(path.parent.glob(path.name + ".*"))
    for candidate in candidates:
        name = candidate.relative_to(root).as_posix()
        if name not in expected or not candidate.is_file():
            continue
        stat = candidate.stat()
        key = (candidate, stat.st_mtime_ns, stat.st_size)
        digest = _VERIFIED.get(key) or sha256_file(candidate)
        if digest != expected[name]:
            raise InputError(candidate, None, f"sha256 {digest[:12]}... does not match {manifest_path} "
                                              f"({expected[name][:12]}...): the file changed or the download is "
                                              "incomplete; fetch it again with `veco2 prefetch`")
        _VERIFIED[key] = digest


# ---------------------------------------------------------------------------------------------
# Local readers, one per file format
# ---------------------------------------------------------------------------------------------

_TSV_HEADERS = ({"premise", "hypothesis", "label"}, {"sentence1", "sentence2", "label"},
                {"sentence1", "sentence2", "gold_label"})


def read_tsv_pair(path: str | Path, labels: Iterable[str] = ()) -> list[dict]:
    """``text_a \\t text_b \\t label`` lines (XNLI, PAWS-X).  A header line is skipped (logged); a
    line with another field count or a label outside ``labels`` is an InputError.  Test files
    without the label column (2 fields on every line) give ``label: None``."""
    labels = set(labels)
    examples = []
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and {f.strip().lower() for f in fields} in _TSV_HEADERS:
            log.info("%s: skipping header line", path)
            continue
        if len(fields) not in (2, 3):
            raise InputError(path, number, f"expected 'text_a<TAB>text_b<TAB>label', got {len(fields)} field(s)")
        label = fields[2].strip() if len(fields) == 3 else None
        if label is not None and labels and label not in labels:
            raise InputError(path, number, f"label {label!r} is not one of {', '.join(sorted(labels))}")
        examples.append({"id": f"{Path(path).stem}-{len(examples)}", "text_a": fields[0],
                         "text_b": fields[1], "label": label})
    if not examples:
        raise InputError(path, None, "no examples")
    if len({e["label"] is None for e in examples}) > 1:
        raise InputError(path, None, "some lines have a label and some do not")
    return examples


def read_conll(path: str | Path, labels: Iterable[str] = ()) -> list[dict]:
    """CoNLL-style ``word \\t tag`` lines, sentences separated by blank lines (UD-POS, PAN-X).  Lines
    with a word only (unlabelled test files) give ``tags: None`` for their sentence."""
    labels = set(labels)
    sentences: list[dict] = []
    words: list[str] = []
    tags: list[str | None] = []

    def flush():
        if words:
            sentences.append({"id": f"{Path(path).stem}-{len(sentences)}", "words": list(words),
                              "tags": None if any(t is None for t in tags) else list(tags)})
            words.clear()
            tags.clear()

    first_tagged = first_untagged = None  # a file is tagged throughout or not at all (test placeholders)
    for number, line in iter_lines(path):
        if not line.strip():
            flush()
            continue
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0]:
            raise InputError(path, number, f"expected 'word<TAB>tag', got {line!r}")
        tag = fields[1].strip() if len(fields) == 2 else None
        if tag is None and labels and len(fields[0].split()) == 2 and fields[0].split()[1] in labels:
            raise InputError(path, number, f"columns separated by spaces, not a TAB: {line!r}")
        if tag is not None and labels and tag not in labels:
            raise InputError(path, number, f"tag {tag!r} is not one of {', '.join(sorted(labels))}")
        if tag is None:
            first_untagged = first_untagged or number
        else:
            first_tagged = first_tagged or number
        if first_tagged and first_untagged:
            raise InputError(path, max(first_tagged, first_untagged),
                             f"a token without a tag in a tagged file (line {first_tagged} has one)"
                             if first_untagged > first_tagged else
                             f"a tagged token in a file whose line {first_untagged} has no tag")
        words.append(fields[0])
        tags.append(tag)
    flush()
    if not sentences:
        raise InputError(path, None, "no sentences")
    return sentences


def read_squad_json(path: str | Path, *, id_prefix: str | None = None) -> list[dict]:
    """SQuAD v1.1 JSON (``{"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}``) as a
    flat list of questions.  ``id_prefix`` keeps only ids starting with it (TyDiQA's mixed file)."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise InputError(path, None, "not SQuAD JSON: no top-level 'data' list")
    examples, dropped = [], 0
    for article in raw["data"]:
        for paragraph in article.get("paragraphs", []):
            context = paragraph.get("context")
            if not isinstance(context, str):
                raise InputError(path, None, f"article {article.get('title')!r}: paragraph without a context string")
            for qa in paragraph.get("qas", []):
                if "id" not in qa or "question" not in qa:
                    raise InputError(path, None, f"question without id/question in {article.get('title')!r}")
                if id_prefix is not None and not str(qa["id"]).startswith(id_prefix):
                    dropped += 1
                    continue
                answers = qa.get("answers", [])
                examples.append({
                    "id": str(qa["id"]), "title": article.get("title", ""), "context": context,
                    "question": qa["question"],
                    "answers": {"text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers]},
                })
    if dropped:
        log.info("%s: kept %d questions with id prefix %r, left out %d of other languages",
                 path, len(examples), id_prefix, dropped)
    if not examples:
        raise InputError(path, None, "no questions" + (f" with id prefix {id_prefix!r}" if id_prefix else ""))
    return examples


def _read_id_sentences(path: Path) -> tuple[list[str], list[str]]:
    ids, sentences = [], []
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t", 1)
        if len(fields) != 2:
            raise InputError(path, number, "expected 'id<TAB>sentence'")
        ids.append(fields[0])
        sentences.append(fields[1])
    if not ids:
        raise InputError(path, None, "no sentences")
    if len(set(ids)) != len(ids):
        raise InputError(path, None, "duplicate sentence ids")
    return ids, sentences


def read_bucc(prefix: str | Path, lang: str, *, task: TaskSpec | None = None, split: str = "test") -> dict:
    """BUCC 2018 corpus files ``{prefix}.{lang}``, ``{prefix}.en`` (``id \\t sentence``) and
    ``{prefix}.gold`` (``src_id \\t tgt_id``, may be absent for a blind test set: ``gold: None``)."""
    prefix = Path(prefix)
    src_path, tgt_path, gold_path = (Path(f"{prefix}.{ext}") for ext in (lang, "en", "gold"))
    for path in (src_path, tgt_path):
        if not path.exists():
            if task is not None:
                raise _missing(task, split, lang, path)
            raise InputError(path, None, "file not found")
    src_ids, src = _read_id_sentences(src_path)
    tgt_ids, tgt = _read_id_sentences(tgt_path)
    gold = None
    if gold_path.exists():
        gold = []
        known_src, known_tgt = set(src_ids), set(tgt_ids)
        for number, line in iter_lines(gold_path):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2:
                raise InputError(gold_path, number, "expected 'src_id<TAB>tgt_id'")
            if fields[0] not in known_src or fields[1] not in known_tgt:
                raise InputError(gold_path, number, f"gold pair {fields[0]} {fields[1]} names an unknown sentence id")
            gold.append((fields[0], fields[1]))
    return {"src_ids": src_ids, "src": src, "tgt_ids": tgt_ids, "tgt": tgt, "gold": gold}


def read_tatoeba(prefix: str | Path, code: str, *, task: TaskSpec | None = None, split: str = "test",
                 lang: str | None = None) -> dict:
    """Line-aligned Tatoeba files ``{prefix}.{code}`` (non-English side) and ``{prefix}.eng``."""
    src_path, tgt_path = Path(f"{prefix}.{code}"), Path(f"{prefix}.eng")
    sides = []
    for path in (src_path, tgt_path):
        if not path.exists():
            if task is not None:
                raise _missing(task, split, lang or code, path)
            raise InputError(path, None, "file not found")
        lines = [text for _, text in iter_lines(path)]
        while lines and not lines[-1].strip():
            lines.pop()
        sides.append(lines)
    if len(sides[0]) != len(sides[1]):
        raise InputError(tgt_path, None, f"{len(sides[1])} lines but {src_path.name} has {len(sides[0])}; "
                                         "Tatoeba files must be line-aligned")
    if not sides[0]:
        raise InputError(src_path, None, "no sentences")
    return {"src": sides[0], "tgt": sides[1]}


# ---------------------------------------------------------------------------------------------
# Hub reader (network, or a local mirror of the hub; same output format)
# ---------------------------------------------------------------------------------------------

HUB_MIRROR_ENV = "VECO2_HUB_MIRROR"


def hub_mirror() -> Path | None:
    """``$VECO2_HUB_MIRROR``: a local mirror of the hub datasets, for offline clusters and tests
    (``DIR/google/xtreme``, ``DIR/facebook/xnli``: copies of the dataset repositories); None if unset."""
    value = os.environ.get(HUB_MIRROR_ENV)
    return Path(value) if value else None


def _hub_offline() -> bool:
    return os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "", "false", "False") or \
        os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _one_line(err: Exception, limit: int = 400) -> str:
    """``err`` as one line (datasets' messages span lines, e.g. the list of available configs)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def load_hub_rows(task: TaskSpec, split: str, lang: str) -> tuple[list[dict], Any]:
    """Raw rows of one split/language from the hub (or ``$VECO2_HUB_MIRROR``), filtered as the task
    file says, plus the datasets features (for ClassLabel names).  Raises a one-line Veco2Error
    offline without a mirror, for a mirror without the dataset, or on any hub failure."""
    source = (task.hub or {}).get(split)
    if source is None:
        raise Veco2Error(f"{task.name}: no hub source for the {split} split")
    name = source.get("name")
    name = None if name is None else name.format(lang=lang, code=task.code(lang))
    mirror = hub_mirror()
    if mirror is not None:
        repo_dir = mirror / source["path"]
        if not repo_dir.is_dir():
            raise Veco2Error(f"{task.name}: {repo_dir} does not exist: ${HUB_MIRROR_ENV}={mirror} has no copy of "
                             f"{source['path']} (fill it with `hf download {source['path']} --repo-type dataset "
                             f"--local-dir {repo_dir}` on a networked machine)")
        location, where = str(repo_dir), f"the hub mirror {repo_dir}"
    else:
        if _hub_offline():
            raise Veco2Error(f"{task.name}: cannot read {source['path']} {name} from the hub while offline "
                             f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set); fetch it once on a networked machine "
                             f"with `veco2 prefetch --tasks {task.name} --out DIR` and pass --data-root DIR, "
                             f"or set ${HUB_MIRROR_ENV} to a local mirror of the hub datasets")
        location, where = source["path"], "the hub"
    import datasets

    try:
        dataset = datasets.load_dataset(location, name, split=source["split"])
    except Exception as err:  # network, missing config, changed hub layout: one clear line
        raise Veco2Error(f"{task.name}: loading {source['path']} {name} split {source['split']} from {where} "
                         f"failed ({type(err).__name__}: {_one_line(err)}); `veco2 prefetch --tasks {task.name} "
                         f"--out DIR` on a networked machine, then --data-root DIR") from None
    filt = source.get("filter") or {}
    if "column" in filt:  # XNLI: all languages in one config, told apart by a column
        dataset = dataset.filter(lambda value: value == lang, input_columns=filt["column"])
    if "id_prefix" in filt:  # TyDiQA-GoldP: all languages in one config, told apart by the id
        wanted = filt["id_prefix"].format(lang=lang, code=task.code(lang))
        dataset = dataset.filter(lambda value: str(value).startswith(wanted), input_columns="id")
    if len(dataset) == 0:
        raise Veco2Error(f"{task.name}: {source['path']} {name} {source['split']} (from {where}) has no rows for {lang!r}")
    return list(dataset), dataset.features


def _label_name(value, feature) -> str | None:
    """The label name of a hub value: a ClassLabel int -> its name (``-1``, datasets' "no label",
    and any other int outside the names -> None); a string label (google/xtreme's XNLI
    ``gold_label``, PAWS-X ``label``) as it is."""
    names = getattr(feature, "names", None)
    if names is not None and isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    return str(value)


def _local_ids(task: TaskSpec, split: str, lang: str, count: int) -> list[str]:
    """The ids the local reader gives the same examples (``{file stem}-{i}``, e.g. ``test-de-0``),
    so that hub and prefetched local data are the same examples."""
    stem = local_path(task, split, lang, Path()).stem
    return [f"{stem}-{i}" for i in range(count)]


def _load_hub(task: TaskSpec, split: str, lang: str) -> Any:
    source = (task.hub or {}).get(split)
    if source is None:
        return None
    fmt = task.local["format"]
    if fmt == "bucc":
        raise Veco2Error(
            f"bucc2018: the hub configs bucc18.{lang} hold only the gold pairs, not the corpora to mine; "
            f"real BUCC mining needs the original corpus files in the local layout "
            f"(bucc2018/{lang}-en.{{dev,test}}.{{{lang},en,gold}}): run `veco2 prefetch --tasks bucc2018 --out DIR` "
            f"(downloads them from https://comparable.limsi.fr/bucc2018/) and pass --data-root DIR")
    rows, features = load_hub_rows(task, split, lang)
    columns = source.get("columns", {})
    if fmt == "tsv_pair":
        label_feature = features[columns["label"]]
        pairs = [(row[columns["text_a"]], row[columns["text_b"]], _label_name(row[columns["label"]], label_feature))
                 for row in rows]
        kept = [p for p in pairs if p[2] in task.labels]
        if len(kept) < len(pairs):  # ClassLabel -1 ("no label") rows: counted, logged, left out
            log.warning("%s %s %s: leaving out %d rows without a valid label", task.name, split, lang,
                        len(pairs) - len(kept))
        return [{"id": id_, "text_a": a, "text_b": b, "label": label}
                for id_, (a, b, label) in zip(_local_ids(task, split, lang, len(kept)), kept)]
    if fmt == "conll":
        tag_feature = getattr(features[columns["tags"]], "feature", None)
        return [{"id": id_, "words": list(row[columns["words"]]),
                 "tags": [_label_name(t, tag_feature) for t in row[columns["tags"]]]}
                for id_, row in zip(_local_ids(task, split, lang, len(rows)), rows)]
    if fmt == "squad_json":
        return [{"id": str(row["id"]), "title": row.get("title", ""), "context": row["context"],
                 "question": row["question"],
                 "answers": {"text": list(row["answers"]["text"]),
                             "answer_start": [int(s) for s in row["answers"]["answer_start"]]}}
                for row in rows]
    if fmt == "tatoeba":  # the hub rows keep each line's newline
        return {"src": [row["source_sentence"].rstrip("\n") for row in rows],
                "tgt": [row["target_sentence"].rstrip("\n") for row in rows]}
    raise Veco2Error(f"{task.path}: unknown format {fmt!r}")


# ---------------------------------------------------------------------------------------------
# Long sentences in tagging tasks: windows that fit the model, mapped back afterwards
# ---------------------------------------------------------------------------------------------

def word_windows(subword_counts: list[int], budget: int) -> list[tuple[int, int]]:
    """Split a sentence into consecutive, non-overlapping word windows ``[start, end)`` whose
    subword counts sum to at most ``budget`` (the max length minus the special tokens).

    Greedy left to right, as XTREME's preprocessing splits long UD/PAN-X sentences.  A single word
    longer than the budget gets a window of its own (it is truncated when encoded, but its first
    subword -- the one that is labelled and predicted -- survives).  Every word is in exactly one
    window, so predictions map back to all words by concatenation.
    """
    if budget < 1:
        raise Veco2Error(f"max length leaves no room for words (budget {budget})")
    windows, start, used = [], 0, 0
    for i, count in enumerate(subword_counts):
        if i > start and used + count > budget:
            windows.append((start, i))
            start, used = i, 0
        used += count
    if subword_counts:
        windows.append((start, len(subword_counts)))
    return windows

