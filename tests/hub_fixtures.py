"""Tiny local copies of the hub datasets XTREME is read from, in the hub's own parquet layout.

:func:`write_hub_mirror` writes ``ROOT/google/xtreme`` and ``ROOT/facebook/xnli`` as the hub stores
them since their conversion to parquet: one directory per config holding
``{split}-00000-of-00001.parquet`` (written by ``datasets.Dataset.to_parquet``, so the features,
ClassLabel names included, travel in the parquet schema metadata), and a ``README.md`` whose YAML
front matter has the ``dataset_info:`` features (spelled as on the cards, :data:`CARD_FEATURES`)
and split sizes, and the ``configs:`` list (config name -> data files per split).  This is
the layout ``hf download google/xtreme --repo-type dataset --local-dir ROOT/google/xtreme`` gives,
which ``VECO2_HUB_MIRROR=ROOT`` points veco2 at.  :func:`write_local_layout` writes the same content
in the official XTREME file formats (google-research/xtreme ``download_data.sh``), so a test can
check that both sources give the same examples.

Where each schema comes from (column names, feature types, splits per config):

- ``google/xtreme`` dataset card on the hub (``dataset_info`` per config, parquet data files added
  by the "Add CONFIG data files" commits, e.g. 823902d "Add udpos.English data files", 54171a6
  "Add PAWS-X.en data files") and its former loading script ``xtreme.py`` (huggingface/datasets
  ``datasets/xtreme/xtreme.py``):

  * ``XNLI``: ``language, sentence1, sentence2, gold_label`` (all strings; ``gold_label`` is the
    label name), splits ``test`` and ``validation``, all 15 languages mixed in one config;
  * ``PAWS-X.{lang}``: ``sentence1, sentence2, label`` -- ``label`` a *string* ``"0"``/``"1"`` (the
    google/xtreme config has no ``id`` column and no ClassLabel, unlike
    ``google-research-datasets/paws-x``), splits ``train, validation, test``;
  * ``udpos.{Language}``: ``tokens`` (list of strings), ``pos_tags`` (list of ClassLabel over the 17
    UPOS tags ADJ ... X), splits ``train, validation, test`` (test only for some languages);
  * ``PAN-X.{lang}``: ``tokens``, ``ner_tags`` (list of ClassLabel O, B-PER, I-PER, B-ORG, I-ORG,
    B-LOC, I-LOC), ``langs`` (list of strings), splits ``train, validation, test``;
  * ``SQuAD``, ``tydiqa``, ``MLQA.{ctx}.{q}``: ``id, title, context, question, answers`` with
    ``answers`` a sequence of ``{answer_start: int32, text: string}`` (so a dict of lists); splits
    ``train, validation`` (SQuAD, tydiqa -- tydiqa mixes all languages, ids ``english-...``,
    ``arabic-...``) and ``test, validation`` (MLQA);
  * ``XQuAD.{lang}``: ``id, context, question, answers`` (no ``title``), split ``validation`` only;
  * ``bucc18.{lang}``: ``source_sentence, target_sentence, source_lang, target_lang`` (strings), one
    row per *gold pair*; the loading script puts the sentence ids of the pair (``de-000000001``,
    ``en-000000005``) in ``source_lang``/``target_lang``; splits ``validation`` (BUCC "sample") and
    ``test`` (BUCC "training");
  * ``tatoeba.{iso3}``: the same four columns, ``source_sentence`` the non-English line *with its
    trailing newline* (the script keeps the lines as read), ``source_lang`` the ISO 639-3 code,
    ``target_lang`` ``eng``; split ``validation`` only.

- ``facebook/xnli`` dataset card (config ``en``): ``premise, hypothesis`` (strings) and ``label``, a
  ClassLabel over ``entailment, neutral, contradiction``; splits ``train`` (MultiNLI),
  ``test``, ``validation``.  ClassLabel's ``-1`` is ``datasets``' "no label" value.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import yaml
from datasets import Features

UPOS = ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X"]
PANX_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NLI_LABELS = ["entailment", "neutral", "contradiction"]


def _class_label(names: list[str], indent: str) -> str:
    return f"{indent}class_label:\n{indent}  names:\n" + "".join(f"{indent}    '{i}': {n}\n" for i, n in enumerate(names))


# The ``features`` of each config exactly as the dataset cards' ``dataset_info`` spell them (the
# google/xtreme card was written by datasets 2.x: lists are ``sequence:``).
_STRING = "  dtype: string\n"
_QA = ("- name: id\n" + _STRING + "- name: title\n" + _STRING + "- name: context\n" + _STRING
       + "- name: question\n" + _STRING
       + "- name: answers\n  sequence:\n  - name: answer_start\n    dtype: int32\n  - name: text\n    dtype: string\n")
_RETRIEVAL = "".join(f"- name: {c}\n" + _STRING for c in ("source_sentence", "target_sentence", "source_lang", "target_lang"))
CARD_FEATURES = {
    "XNLI": "".join(f"- name: {c}\n" + _STRING for c in ("language", "sentence1", "sentence2", "gold_label")),
    "PAWS-X": "".join(f"- name: {c}\n" + _STRING for c in ("sentence1", "sentence2", "label")),
    "udpos": "- name: tokens\n  sequence: string\n- name: pos_tags\n  sequence:\n" + _class_label(UPOS, "    "),
    "PAN-X": ("- name: tokens\n  sequence: string\n- name: ner_tags\n  sequence:\n" + _class_label(PANX_TAGS, "    ")
              + "- name: langs\n  sequence: string\n"),
    "squad": _QA,  # SQuAD, tydiqa, MLQA.*
    "XQuAD": _QA.replace("- name: title\n" + _STRING, ""),
    "retrieval": _RETRIEVAL,  # bucc18.*, tatoeba.*
    "facebook/xnli": ("- name: premise\n" + _STRING + "- name: hypothesis\n" + _STRING
                      + "- name: label\n" + _class_label(NLI_LABELS, "  ")),
}
FEATURES = {name: Features._from_yaml_list(yaml.safe_load(text)) for name, text in CARD_FEATURES.items()}


# ---------------------------------------------------------------------------------------------
# The content: a few real-looking rows per config, in the hub's row format
# ---------------------------------------------------------------------------------------------

EN = ["The quick brown fox jumps over the lazy dog.", "Open the document and save the file."]
DE = ["Der schnelle braune Fuchs springt über den faulen Hund.", "Öffnen Sie das Dokument und speichern Sie die Datei."]
FR = ["Le renard brun rapide saute par-dessus le chien paresseux.", "Ouvrez le document et enregistrez le fichier."]


def _qa(id_, context, question, answer, title="t"):
    return {"id": id_, "title": title, "context": context, "question": question,
            "answers": {"answer_start": [context.index(answer)], "text": [answer]}}


def _xnli(lang, s1, s2, label):
    return {"language": lang, "sentence1": s1, "sentence2": s2, "gold_label": label}


def _panx(tokens, tags, lang):
    return {"tokens": tokens, "ner_tags": [PANX_TAGS.index(t) for t in tags], "langs": [lang] * len(tokens)}


def _udpos(tokens, tags):
    return {"tokens": tokens, "pos_tags": [UPOS.index(t) for t in tags]}


def _pair(src_id, tgt_id, src, tgt):
    return {"source_sentence": src, "target_sentence": tgt, "source_lang": src_id, "target_lang": tgt_id}


def _tatoeba(src_lines, tgt_lines, iso3):
    return [{"source_sentence": s + "\n", "target_sentence": t + "\n", "source_lang": iso3, "target_lang": "eng"}
            for s, t in zip(src_lines, tgt_lines)]


SQUAD_TRAIN = [_qa("q0", EN[0], "What jumps?", "brown fox"), _qa("q1", EN[1], "What is saved?", "the file"),
               _qa("q2", EN[0], "What is lazy?", "dog", title="u")]
SQUAD_DEV = [_qa("v0", EN[1], "What is opened?", "the document")]
TYDIQA_TRAIN = [_qa("english-1", EN[0], "What jumps?", "fox"), _qa("arabic-1", DE[0], "Was?", "Fuchs"),
                _qa("english-2", EN[1], "What is saved?", "file"), _qa("finnish-1", FR[0], "Quoi?", "renard")]
TYDIQA_DEV = [_qa("arabic-9", DE[1], "Was speichern Sie?", "die Datei"), _qa("english-9", EN[1], "What opens?", "document"),
              _qa("arabic-10", DE[0], "Was springt?", "Fuchs"), _qa("englishx-1", EN[0], "Who?", "fox")]
# PAN-X test of German; train/dev of English
PANX = {"en": {"train": [_panx(["Peter", "opened", "Google", "in", "New", "York"],
                               ["B-PER", "O", "B-ORG", "O", "B-LOC", "I-LOC"], "en"),
                         _panx(["Mary", "Smith", "left", "."], ["B-PER", "I-PER", "O", "O"], "en")],
               "validation": [_panx(["Acme", "Corp", "hired", "Bob"], ["B-ORG", "I-ORG", "O", "B-PER"], "en")],
               "test": [_panx(["Paris", "is", "big"], ["B-LOC", "O", "O"], "en")]},
        "de": {"train": [_panx(["Hans", "lacht"], ["B-PER", "O"], "de")],
               "validation": [_panx(["Berlin", "ruft"], ["B-LOC", "O"], "de")],
               "test": [_panx(["Angela", "Merkel", "besucht", "Siemens", "in", "München"],
                              ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC"], "de")]}}
UDPOS = {"English": {"train": [_udpos(["The", "quick", "fox", "jumps", "."], ["DET", "ADJ", "NOUN", "VERB", "PUNCT"]),
                               _udpos(["Open", "the", "file"], ["VERB", "DET", "NOUN"])],
                     "validation": [_udpos(["Save", "it", "now", "!"], ["VERB", "PRON", "ADV", "PUNCT"])],
                     "test": [_udpos(["Oh", ",", "two", "cats"], ["INTJ", "PUNCT", "NUM", "NOUN"])]},
         "German": {"train": [_udpos(["Er", "geht"], ["PRON", "VERB"])],
                    "validation": [_udpos(["Sie", "kommt"], ["PRON", "VERB"])],
                    "test": [_udpos(["Der", "schnelle", "Fuchs", "springt", "."], ["DET", "ADJ", "NOUN", "VERB", "PUNCT"]),
                             _udpos(["und", "weil", "x"], ["CCONJ", "SCONJ", "X"])]}}
XNLI = {"validation": [_xnli("en", "Open the document.", "Save the file.", "neutral"),
                       _xnli("de", "Öffne das Dokument.", "Speichere die Datei.", "neutral"),
                       _xnli("en", "The fox jumps.", "The fox jumps.", "entailment")],
        "test": [_xnli("de", "Der Fuchs springt.", "Der Fuchs springt.", "entailment"),
                 _xnli("en", "The dog is lazy.", "The dog is quick.", "contradiction"),
                 _xnli("fr", "Le chien dort.", "Le chien court.", "contradiction"),
                 _xnli("de", "Öffnen Sie das Dokument.", "Speichern Sie die Datei.", "neutral")]}
# facebook/xnli en: ClassLabel ints; the -1 ("no label") row must be left out by the conversion
MNLI_TRAIN = [{"premise": "Open the document.", "hypothesis": "Save the file.", "label": 1},
              {"premise": "The dog is lazy.", "hypothesis": "The dog is quick.", "label": 2},
              {"premise": "Nobody agreed here.", "hypothesis": "It is unclear.", "label": -1},
              {"premise": "The fox jumps.", "hypothesis": "An animal moves.", "label": 0}]
PAWSX = {"en": {"train": [("The fox jumps.", "A fox jumps.", "1"), ("The dog sleeps.", "The sleep dogs.", "0")],
                "validation": [("Open it.", "Open it now.", "1")],
                "test": [("Save it.", "It saves.", "0")]},
         "de": {"train": [("Er lacht.", "Er lacht laut.", "1")],
                "validation": [("Sie geht.", "Sie kommt.", "0")],
                "test": [("Der Fuchs springt.", "Es springt der Fuchs.", "1"), ("Er schläft.", "Schläft er?", "0")]}}
XQUAD = {"en": [_qa("56beb4343aeaaa14008c925b", EN[0], "What jumps?", "brown fox")],
         "de": [_qa("56beb4343aeaaa14008c925b", DE[0], "Was springt?", "braune Fuchs"),
                _qa("56beb4343aeaaa14008c925c", DE[1], "Was speichern Sie?", "die Datei")]}
MLQA = {"en": {"test": [_qa("m-en-0", EN[1], "What is saved?", "the file")],
               "validation": [_qa("m-en-dev", EN[0], "What jumps?", "fox")]},
        "de": {"test": [_qa("m-de-0", DE[0], "Was springt?", "Fuchs", title="Fuchs"),
                        _qa("m-de-1", DE[1], "Was öffnen Sie?", "das Dokument", title="Datei")],
               "validation": [_qa("m-de-dev", DE[1], "Was?", "Datei")]}}
TATOEBA = {"deu": (DE, EN), "fra": (FR, EN)}
BUCC_DE = {"de": ["Der Fuchs springt.", "Guten Morgen.", "Öffnen Sie das Dokument."],
           "en": ["Good morning, world.", "The fox jumps.", "Open the document."],
           "gold": [(0, 1), (2, 2)]}  # indices into de / en


def _bucc_id(lang, i):
    return f"{lang}-{i + 1:09d}"


def _bucc_rows():
    return [_pair(_bucc_id("de", s), _bucc_id("en", t), BUCC_DE["de"][s], BUCC_DE["en"][t]) for s, t in BUCC_DE["gold"]]


def xtreme_configs() -> dict[str, tuple[str, dict[str, list[dict]]]]:
    """google/xtreme configs: name -> (schema key, {split: rows})."""
    pawsx = lambda rows: [{"sentence1": a, "sentence2": b, "label": l} for a, b, l in rows]  # noqa: E731
    configs = {
        "XNLI": ("XNLI", XNLI),
        "SQuAD": ("squad", {"train": SQUAD_TRAIN, "validation": SQUAD_DEV}),
        "tydiqa": ("squad", {"train": TYDIQA_TRAIN, "validation": TYDIQA_DEV}),
        "bucc18.de": ("retrieval", {"validation": _bucc_rows(), "test": _bucc_rows()}),
    }
    for lang, splits in PANX.items():
        configs[f"PAN-X.{lang}"] = ("PAN-X", splits)
    for language, splits in UDPOS.items():
        configs[f"udpos.{language}"] = ("udpos", splits)
    for lang, splits in PAWSX.items():
        configs[f"PAWS-X.{lang}"] = ("PAWS-X", {s: pawsx(rows) for s, rows in splits.items()})
    for lang, rows in XQUAD.items():
        configs[f"XQuAD.{lang}"] = ("XQuAD", {"validation": [{k: v for k, v in r.items() if k != "title"} for r in rows]})
    for lang, splits in MLQA.items():
        configs[f"MLQA.{lang}.{lang}"] = ("squad", splits)
    for iso3, (src, tgt) in TATOEBA.items():
        configs[f"tatoeba.{iso3}"] = ("retrieval", {"validation": _tatoeba(src, tgt, iso3)})
    return configs


def xnli_configs() -> dict[str, tuple[str, dict[str, list[dict]]]]:
    """facebook/xnli config ``en``."""
    dev_test = [{"premise": "Der Satz.", "hypothesis": "Ein Satz.", "label": 0}]
    return {"en": ("facebook/xnli", {"train": MNLI_TRAIN, "validation": dev_test, "test": dev_test})}


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------

def write_hub_dataset(repo_dir: Path, configs: dict[str, tuple[str, dict[str, list[dict]]]]) -> Path:
    """One hub dataset repo in the parquet layout: ``CONFIG/SPLIT-00000-of-00001.parquet`` per split
    (``Dataset.to_parquet``: the features go into the parquet schema metadata) plus ``README.md``
    whose front matter has ``dataset_info`` (features as the card spells them, split sizes) and
    ``configs`` (config -> data files per split), as on the hub.  ``configs`` maps a config name to
    (a key of :data:`CARD_FEATURES`, {split: rows})."""
    dataset_info, card_configs = [], []
    for name, (schema, splits) in configs.items():
        split_info = []
        for split, rows in splits.items():
            dataset = datasets.Dataset.from_list(rows, features=FEATURES[schema])
            dataset.to_parquet(str(repo_dir / name / f"{split}-00000-of-00001.parquet"))
            split_info.append({"name": split, "num_bytes": dataset.data.nbytes, "num_examples": len(rows)})
        dataset_info.append({"config_name": name, "features": yaml.safe_load(CARD_FEATURES[schema]),
                             "splits": split_info})
        card_configs.append({"config_name": name,
                             "data_files": [{"split": split, "path": f"{name}/{split}-*"} for split in splits]})
    front_matter = yaml.safe_dump({"dataset_info": dataset_info, "configs": card_configs},
                                  sort_keys=False, allow_unicode=True)
    (repo_dir / "README.md").write_text(f"---\n{front_matter}---\n\n# Tiny test copy\n", encoding="utf-8")
    return repo_dir


def write_hub_mirror(root: Path) -> Path:
    """``ROOT/google/xtreme`` and ``ROOT/facebook/xnli`` (what ``VECO2_HUB_MIRROR=ROOT`` reads)."""
    write_hub_dataset(root / "google" / "xtreme", xtreme_configs())
    write_hub_dataset(root / "facebook" / "xnli", xnli_configs())
    return root


def _squad_json(rows, with_title=True):
    """SQuAD v1.1 JSON, one article per title (in first-seen order), one paragraph per question."""
    articles: dict[str, list] = {}
    for r in rows:
        articles.setdefault(r.get("title", "") if with_title else "", []).append(
            {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"],
                                               "answers": [{"text": t, "answer_start": s} for t, s in
                                                           zip(r["answers"]["text"], r["answers"]["answer_start"])]}]})
    return json.dumps({"version": "1.1", "data": [{"title": t, "paragraphs": p} for t, p in articles.items()]},
                      ensure_ascii=False)


def write_local_layout(root: Path) -> Path:
    """The same content in the official local XTREME file formats (see ``veco2.xtreme.data``)."""
    def w(rel, text):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    local_split = {"train": "train", "validation": "dev", "test": "test"}
    tsv = lambda rows: "".join(f"{a}\t{b}\t{l}\n" for a, b, l in rows)  # noqa: E731
    w("xnli/train-en.tsv", tsv((r["premise"], r["hypothesis"], NLI_LABELS[r["label"]])
                               for r in MNLI_TRAIN if r["label"] >= 0))
    w("xnli/dev-en.tsv", tsv((r["sentence1"], r["sentence2"], r["gold_label"]) for r in XNLI["validation"]
                             if r["language"] == "en"))
    for lang in ("en", "de", "fr"):
        w(f"xnli/test-{lang}.tsv", tsv((r["sentence1"], r["sentence2"], r["gold_label"]) for r in XNLI["test"]
                                       if r["language"] == lang))
    for lang, splits in PAWSX.items():
        for split, rows in splits.items():
            w(f"pawsx/{local_split[split]}-{lang}.tsv", tsv(rows))
    conll = lambda sents: "".join("".join(f"{w_}\t{t}\n" for w_, t in zip(ws, ts)) + "\n" for ws, ts in sents)  # noqa: E731
    for lang, splits in PANX.items():
        for split, rows in splits.items():
            w(f"panx/{local_split[split]}-{lang}.tsv",
              conll((r["tokens"], [PANX_TAGS[i] for i in r["ner_tags"]]) for r in rows))
    for language, lang in (("English", "en"), ("German", "de")):
        for split, rows in UDPOS[language].items():
            w(f"udpos/{local_split[split]}-{lang}.tsv", conll((r["tokens"], [UPOS[i] for i in r["pos_tags"]]) for r in rows))
    w("squad/train-v1.1.json", _squad_json(SQUAD_TRAIN))
    w("squad/dev-v1.1.json", _squad_json(SQUAD_DEV))
    for lang, rows in XQUAD.items():
        w(f"xquad/xquad.{lang}.json", _squad_json(rows))
    for lang, splits in MLQA.items():
        w(f"mlqa/test-context-{lang}-question-{lang}.json", _squad_json(splits["test"]))
    w("tydiqa/tydiqa-goldp-v1.1-train.json", _squad_json(TYDIQA_TRAIN))
    for code, lang in (("english", "en"), ("arabic", "ar")):  # XTREME splits the GoldP dev file per language
        w(f"tydiqa/dev-goldp-{lang}.json", _squad_json([r for r in TYDIQA_DEV if r["id"].startswith(code + "-")]))
    for iso3, (src, tgt) in TATOEBA.items():
        w(f"tatoeba/tatoeba.{iso3}-eng.{iso3}", "".join(s + "\n" for s in src))
        w(f"tatoeba/tatoeba.{iso3}-eng.eng", "".join(t + "\n" for t in tgt))
    for split in ("dev", "test"):
        for side in ("de", "en"):
            w(f"bucc2018/de-en.{split}.{side}", "".join(f"{_bucc_id(side, i)}\t{s}\n" for i, s in enumerate(BUCC_DE[side])))
        w(f"bucc2018/de-en.{split}.gold", "".join(f"{_bucc_id('de', s)}\t{_bucc_id('en', t)}\n" for s, t in BUCC_DE["gold"]))
    return root
