"""``data.sources``: each file format on small local files (gzip too), hub datasets read through the real
``datasets.load_dataset`` from local parquet copies in the hub layout (``VECO2_HUB_MIRROR``, as the
XTREME hub tests), one-line config errors, a real MUSE snippet through ``veco2 data prepare``."""

from __future__ import annotations

import gzip
import json
import lzma

import datasets
import pytest
import yaml

import hub_fixtures as hf
from veco2 import cli
from veco2.config import load_config
from veco2.data.sources import CorpusSources, pair_name
from veco2.errors import ConfigError, InputError
from veco2.xtreme.data import HUB_MIRROR_ENV

DE = ["Der Hund schläft.", "Die Katze trinkt Milch.", "Das Haus ist groß."]
EN = ["The dog sleeps.", "The cat drinks milk.", "The house is big."]
# The first lines of MUSE's en-de.txt (https://dl.fbaipublicfiles.com/arrival/dictionaries/en-de.txt): one
# pair a line, space-separated, a source word repeated for each of its translations.
MUSE_EN_DE = "the die\nthe der\nthe den\nthe das\nand und\nwas war\nwas wurde\nhouse haus\nhouse hauses\ndog hund\ncat katze\n"


def _sources(tmp_path, *entries, languages=("de",), corpus="null"):
    cfg = load_config(overrides=[f"data.corpus={corpus}", f"data.languages=[{', '.join(languages)}]",
                                 f"data.sources={json.dumps(list(entries))}"])
    return CorpusSources(cfg.data)


def _read(sources, role, lang="de"):
    return [record for record, _label, _number in sources.stream(role, lang).read(lambda stats: None)]


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".xz":
        data = lzma.compress(data)
    path.write_bytes(data)
    return path


def test_each_file_format_is_read_in_order_with_its_record_numbers(tmp_path):
    _write(tmp_path / "mono" / "de.txt.gz", "\n".join(DE[:2]) + "\n\n" + DE[2] + "\n")
    _write(tmp_path / "mono" / "de.extra.jsonl", "\n".join(json.dumps({"body": t}) for t in DE) + "\n")
    _write(tmp_path / "tsv" / "en-de.tsv", "en\tde\n" + "".join(f"{e}\t{d}\n" for e, d in zip(EN, DE)))
    _write(tmp_path / "moses" / "train.en-de.en.gz", "\n".join(EN) + "\n")
    _write(tmp_path / "moses" / "train.en-de.de.gz", "\n".join(DE) + "\n")
    _write(tmp_path / "jsonl" / "de.jsonl", "".join(json.dumps({"translation": {"en": e, "de": d}}) + "\n"
                                                  for e, d in zip(EN, DE)))
    sources = _sources(
        tmp_path,
        {"role": "mono", "kind": "files", "path": str(tmp_path / "mono" / "{lang}.txt.gz")},
        {"role": "mono", "kind": "files", "path": str(tmp_path / "mono" / "{lang}.*.jsonl"), "text_field": "body",
         "max_records": 2},
        {"role": "parallel", "kind": "files", "path": str(tmp_path / "tsv" / "en-{lang}.tsv")},
        {"role": "parallel", "kind": "files", "format": "moses", "path": str(tmp_path / "moses" / "train.en-{lang}")},
        {"role": "parallel", "kind": "files", "path": str(tmp_path / "jsonl" / "{lang}.jsonl"), "max_records": 1},
    )
    assert _read(sources, "mono") == DE + DE[:2]
    stream = sources.stream("mono", "de")
    numbers = [(label.rsplit("/", 1)[-1], n) for _, label, n in stream.read(lambda stats: None)]
    assert numbers == [("de.txt.gz", 1), ("de.txt.gz", 2), ("de.txt.gz", 4), ("de.extra.jsonl", 1), ("de.extra.jsonl", 2)]
    assert _read(sources, "parallel") == [*zip(EN, DE), *zip(EN, DE), (EN[0], DE[0])]
    assert sources.skipped() == {str(tmp_path / "mono" / "de.txt.gz"): {"empty line": 1},
                                 str(tmp_path / "tsv" / "en-de.tsv"): {"header line": 1}}


def test_dictionaries_muse_and_freedict_first_file_found_wins(tmp_path):
    _write(tmp_path / "muse" / "en-de.txt", MUSE_EN_DE)
    _write(tmp_path / "freedict" / "eng-fra.tei.gz", "<TEI><text><body><entry><form><orth>dog</orth></form>"
           "<sense><cit type='trans'><quote>chien</quote></cit></sense></entry></body></text></TEI>\n")
    sources = _sources(tmp_path,
                       {"role": "mono", "kind": "files", "path": str(tmp_path / "m.txt"), "languages": ["de"]},
                       {"role": "dict", "kind": "files", "path": str(tmp_path / "muse" / "en-{lang}.txt")},
                       {"role": "dict", "kind": "files", "path": str(tmp_path / "freedict" / "eng-{lang3}.tei")},
                       languages=("de", "fr", "sw"))
    assert sources.dictionary_path("de") == tmp_path / "muse" / "en-de.txt"
    assert sources.dictionary_path("fr") == tmp_path / "freedict" / "eng-fra.tei.gz"
    assert sources.dictionary_path("sw") is None


def test_xz_files_are_read(tmp_path):
    _write(tmp_path / "de.txt.xz", "\n".join(DE) + "\n")
    sources = _sources(tmp_path, {"role": "mono", "kind": "files", "path": str(tmp_path / "{lang}.txt")})
    assert _read(sources, "mono") == DE


def test_an_empty_file_is_an_error_at_the_end_of_its_stream(tmp_path):
    _write(tmp_path / "de.txt", "\n \n")
    sources = _sources(tmp_path, {"role": "mono", "kind": "files", "path": str(tmp_path / "{lang}.txt")})
    with pytest.raises(InputError, match=r"de\.txt: no usable line among 2 \(empty line: 2\)"):
        _read(sources, "mono")
    sources = _sources(tmp_path, {"role": "mono", "kind": "files", "path": str(tmp_path / "{lang}.missing.txt")})
    with pytest.raises(InputError, match=r"de\.missing\.txt: no such file"):
        _read(sources, "mono")


# ---------------------------------------------------------------------------------------------
# Hub datasets: local copies in the hub's parquet layout

CARD_FEATURES = {"cc100": "- name: id\n  dtype: string\n- name: text\n  dtype: string\n",
                 **{f"opus-{pair}": f"- name: translation\n  dtype:\n    translation:\n      languages:\n"
                                    f"      - {pair[:2]}\n      - {pair[3:]}\n" for pair in ("de-en", "en-zh")}}


@pytest.fixture
def hub(tmp_path_factory, monkeypatch, tmp_path):
    """statmt/cc100 and Helsinki-NLP/opus-100 copies under $VECO2_HUB_MIRROR (hub_fixtures' writer)."""
    for name, text in CARD_FEATURES.items():
        monkeypatch.setitem(hf.CARD_FEATURES, name, text)
        monkeypatch.setitem(hf.FEATURES, name, datasets.Features._from_yaml_list(yaml.safe_load(text)))
    root = tmp_path_factory.mktemp("hub")
    cc100 = {lang: ("cc100", {"train": [{"id": str(i), "text": t} for i, t in enumerate(texts)]})
             for lang, texts in (("de", DE), ("en", EN), ("zh-Hans", ["狗在睡觉。", "猫喝牛奶。"]))}
    hf.write_hub_dataset(root / "statmt" / "cc100", cc100)
    rows = [{"translation": {"en": e, "de": d}} for e, d in zip(EN, DE)]
    hf.write_hub_dataset(root / "Helsinki-NLP" / "opus-100", {
        "de-en": ("opus-de-en", {"train": rows + [{"translation": {"en": "", "de": "leer"}}], "validation": rows[:2]}),
        "en-zh": ("opus-en-zh", {"train": [{"translation": {"en": EN[0], "zh": "狗在睡觉。"}}]}),
    })
    monkeypatch.setenv(HUB_MIRROR_ENV, str(root))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return root


CC100 = {"role": "mono", "kind": "hub", "name": "statmt/cc100", "config": "{lang}", "configs": {"zh": "zh-Hans"}}
OPUS100 = {"role": "parallel", "kind": "hub", "name": "Helsinki-NLP/opus-100", "config": "{pair}",
           "heldout_split": "validation"}


def test_hub_sources_stream_cc100_and_opus100_layouts(hub, tmp_path):
    sources = _sources(tmp_path, CC100, OPUS100, languages=("de", "zh"))
    assert _read(sources, "mono", "de") == DE and _read(sources, "mono", "en") == EN
    assert _read(sources, "mono", "zh") == ["狗在睡觉。", "猫喝牛奶。"]
    assert _read(sources, "parallel", "de") == list(zip(EN, DE))
    assert sources.skipped() == {"hub:Helsinki-NLP/opus-100/de-en:train": {"empty side": 1}}
    assert _read(sources, "parallel", "zh") == [(EN[0], "狗在睡觉。")]
    assert sources.heldout_pairs("de") == list(zip(EN, DE))[:2]
    assert (pair_name("de"), pair_name("zh")) == ("de-en", "en-zh")


def test_a_hub_source_and_a_muse_dictionary_through_data_prepare(hub, tmp_path, tiny_tokenizer_dir):
    muse = _write(tmp_path / "dict" / "en-de.txt", MUSE_EN_DE)
    sources = [CC100, OPUS100, {"role": "dict", "kind": "files", "path": str(tmp_path / "dict" / "en-{lang}.txt")}]
    assert cli.main(["data", "prepare", "--out", str(tmp_path / "out"), "--workers", "1", "data.corpus=null",
                     "data.languages=[de]", f"data.tokenizer={tiny_tokenizer_dir}",
                     f"data.sources={json.dumps(sources)}"]) == 0
    manifest = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
    assert manifest["bi"]["de"]["dictionary"] == str(muse) and manifest["bi"]["de"]["pairs"] == 3
    assert manifest["bi"]["de"]["pairs_with_match"] == 3  # the/der/die/das, dog/hund, cat/katze, house/haus
    assert manifest["bi"]["de"]["dictionary_duplicate_entries"] == 0
    assert manifest["mono"] == {"en": {"sentences": 3, "empty_after_tokenization": 0, "truncated": 0},
                                "de": {"sentences": 3, "empty_after_tokenization": 0, "truncated": 0}}
    assert manifest["corpus"] is None and manifest["sources"][0]["name"] == "statmt/cc100"
    assert manifest["parts"][-1]["sources"] == [["hub:Helsinki-NLP/opus-100/de-en:train", 1, 3]]


def test_a_hub_dataset_missing_from_the_mirror_is_one_line(hub, tmp_path):
    sources = _sources(tmp_path, {**CC100, "name": "statmt/cc101"})
    with pytest.raises(InputError, match=r"hub:statmt/cc101/de:train: .*has no copy of statmt/cc101"):
        _read(sources, "mono")


# ---------------------------------------------------------------------------------------------
# Config errors: one line naming data.sources[i].key


@pytest.mark.parametrize("entry, message", [
    ({"role": "mono", "kind": "files", "path": "x/{lang}.txt", "nme": 1}, r"unknown key 'data\.sources\[1\]\.nme'"),
    ({"kind": "files", "path": "x"}, r"data\.sources\[1\]\.role: missing"),
    ({"role": "mono", "path": "x"}, r"data\.sources\[1\]\.kind: missing"),
    ({"role": "mono", "kind": "hub"}, r"data\.sources\[1\]\.name: missing"),
    ({"role": "dict", "kind": "hub", "name": "x"}, r"data\.sources\[1\]\.kind: dictionaries are files"),
    ({"role": "mono", "kind": "files", "path": "x/{lang}.tsv"}, r"data\.sources\[1\]\.format: tsv holds parallel or dict"),
    ({"role": "mono", "kind": "files", "path": "x/{lang}.bin"}, r"data\.sources\[1\]\.format: cannot tell"),
    ({"role": "mono", "kind": "files", "path": "x/de.txt"}, r"data\.sources\[1\]\.path: has no \{lang\}"),
    ({"role": "mono", "kind": "files", "path": "x/{lang}.txt", "split": "train", "name": "y"},
     r"data\.sources\[1\]\.name: only for kind: hub"),
    ({"role": "mono", "kind": "hub", "name": "y", "heldout_split": "validation"},
     r"data\.sources\[1\]\.heldout_split: only for parallel"),
    ({"role": "parallel", "kind": "hub", "name": "y", "src_field": "en"}, r"data\.sources\[1\]\.tgt_field: .*together"),
    ({"role": "mono", "kind": "hub", "name": "y", "max_records": 0}, r"data\.sources\[1\]\.max_records: got 0"),
    ({"role": "mono", "kind": "hub", "name": "y", "max_records": "many"},
     r"data\.sources\[1\]\.max_records: got 'many', expected int or null"),
])
def test_source_config_errors_name_the_key(tmp_path, entry, message):
    with pytest.raises(ConfigError, match=message):
        _sources(tmp_path, {"role": "mono", "kind": "files", "path": "m/{lang}.txt"}, entry)


def test_without_corpus_the_languages_must_be_named(tmp_path):
    cfg = load_config(overrides=["data.corpus=null", 'data.sources=[{role: mono, kind: files, path: "m/{lang}.txt"}]'])
    with pytest.raises(ConfigError, match=r"data\.languages: must be set when data\.corpus is null"):
        CorpusSources(cfg.data).languages(cfg.data.languages)
    with pytest.raises(ConfigError, match=r"data\.corpus is null and data\.sources is empty"):
        CorpusSources(load_config(overrides=["data.corpus=null"]).data)
