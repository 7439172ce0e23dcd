"""Golden tests for veco2.xtreme.aggregate on the hand-made tree in tests/data/mock_predictions
(values in its README.md; every expected number below is worked out by hand in the comments)."""

import json
import math
import shutil
from pathlib import Path

import pytest

from veco2.errors import InputError, Veco2Error
from veco2.xtreme.aggregate import (
    OFFICIAL_LANGUAGES,
    TASK_CATEGORIES,
    TASKS,
    load_results_tree,
    summarise,
    task_score,
    xtreme_score,
)

MOCK = Path(__file__).parent / "data" / "mock_predictions"
MOCK_LANGUAGES = {t: ["de", "en"] for t in TASKS} | {
    "tydiqa": ["en", "fi"],
    "bucc2018": ["de", "fr"],
    "tatoeba": ["de", "fr"],
}
# baseline seed0 task scores: xnli (70+80)/2, pawsx (80+90)/2, udpos (60+80)/2, panx (50+70)/2,
# xquad ((60+80)/2 + (40+60)/2)/2, mlqa (60+40)/2, tydiqa (50+40)/2, bucc (60+80)/2, tatoeba (50+70)/2
BASELINE_SEED0 = {"xnli": 75, "pawsx": 85, "udpos": 70, "panx": 60, "xquad": 60, "mlqa": 50, "tydiqa": 45,
                  "bucc2018": 70, "tatoeba": 60}  # fmt: skip


def test_official_language_lists():
    assert TASKS == ("xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba")
    counts = {t: len(set(v)) for t, v in OFFICIAL_LANGUAGES.items()}
    assert counts == {"xnli": 15, "pawsx": 7, "udpos": 33, "panx": 40, "xquad": 11, "mlqa": 7, "tydiqa": 9,
                      "bucc2018": 4, "tatoeba": 36}  # fmt: skip
    assert " ".join(OFFICIAL_LANGUAGES["tatoeba"]) == (
        "af ar bg bn de el es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr nl pt ru sw ta te th tl tr ur vi zh"
    )
    assert sorted(t for ts in TASK_CATEGORIES.values() for t in ts) == sorted(TASKS)


def test_task_score_plain_and_qa():
    assert task_score({"de": {"accuracy": 70.0}, "en": {"accuracy": 80.0}}, "xnli", languages=["de", "en"]) == {
        "accuracy": 75.0,
        "score": 75.0,
    }
    per_language = {"de": {"f1": 60.0, "exact_match": 40.0}, "en": {"f1": 80.0, "exact_match": 60.0}}
    # mean F1 70, mean EM 50 -> (70 + 50) / 2
    assert task_score(per_language, "xquad", languages=["de", "en"]) == {"f1": 70.0, "exact_match": 50.0, "score": 60.0}


def test_missing_language_is_an_error():
    with pytest.raises(Veco2Error, match=r"^xnli: results missing for language\(s\) en$"):
        task_score({"de": {"accuracy": 70.0}}, "xnli", languages=["de", "en"])
    # default = official list: 13 of 15 languages missing, all named
    with pytest.raises(Veco2Error, match="xnli: results missing for language.* ar bg el es fr hi ru sw th tr ur vi zh$"):
        task_score({"de": {"accuracy": 70.0}, "en": {"accuracy": 80.0}}, "xnli")
    with pytest.raises(Veco2Error, match="language en has no exact_match"):
        task_score({"en": {"f1": 1.0}}, "mlqa", languages=["en"])
    with pytest.raises(Veco2Error, match="unknown XTREME task"):
        task_score({"en": {"f1": 1.0}}, "squad2")


def test_xtreme_score_is_mean_of_tasks_not_categories():
    result = xtreme_score(BASELINE_SEED0)
    # categories: (75+85)/2 = 80, (70+60)/2 = 65, (60+50+45)/3 = 51.667, (70+60)/2 = 65
    assert result["categories"] == pytest.approx(
        {"classification": 80.0, "structured_prediction": 65.0, "question_answering": 155 / 3, "retrieval": 65.0}
    )
    assert result["xtreme"] == pytest.approx(575 / 9)  # 63.889; the category mean would be 65.417
    assert result["xtreme"] != pytest.approx(sum(result["categories"].values()) / 4)
    assert result["missing"] == []


def test_xtreme_score_missing_tasks():
    partial = {t: v for t, v in BASELINE_SEED0.items() if t not in ("tydiqa", "tatoeba")}
    with pytest.raises(Veco2Error, match="missing: tydiqa tatoeba"):
        xtreme_score(partial)
    result = xtreme_score(partial, allow_missing=True)
    assert result["xtreme"] is None
    assert result["missing"] == ["tydiqa", "tatoeba"]
    assert result["categories"]["classification"] == 80.0
    assert result["categories"]["question_answering"] is None and result["categories"]["retrieval"] is None


def test_load_results_tree():
    df = load_results_tree(MOCK)
    assert list(df.columns) == ["variant", "task", "seed", "language", "metric", "value"]
    # per variant: 7 fine-tuned tasks x 2 seeds x 22 (lang, metric) rows per seed + 2 retrieval x 2 langs
    assert len(df) == 2 * (2 * 22 + 4)
    assert sorted(df["variant"].unique()) == ["baseline", "veco2"]
    assert sorted(df.loc[df["task"] == "tatoeba", "seed"].unique()) == [0]
    row = df[(df.variant == "veco2") & (df.task == "xquad") & (df.seed == 1) & (df.language == "en") & (df.metric == "f1")]
    assert row["value"].tolist() == [89.0]  # 80 + 9


def test_summarise_mock_tree():
    table = summarise(load_results_tree(MOCK), languages=MOCK_LANGUAGES)
    get = lambda variant, name: table[(table.variant == variant) & (table.name == name)].iloc[0]  # noqa: E731

    # baseline xnli: seed0 75, seed1 77 -> mean 76, sample std 2/sqrt(2)
    xnli = get("baseline", "xnli")
    assert (xnli["mean"], xnli["n_seeds"]) == (76.0, 2)
    assert xnli["std"] == pytest.approx(math.sqrt(2))
    # baseline mlqa: 50, 52 -> 51
    assert get("baseline", "mlqa")["mean"] == 51.0
    # retrieval is seedless: one value, std undefined (NaN) with ddof=1
    bucc = get("baseline", "bucc2018")
    assert (bucc["mean"], bucc["n_seeds"]) == (70.0, 1) and math.isnan(bucc["std"])
    # categories per seed: classification 80 / 82 ; retrieval 65 / 65 (broadcast seed0)
    assert get("baseline", "classification")["mean"] == 81.0
    assert (get("baseline", "retrieval")["mean"], get("baseline", "retrieval")["std"]) == (65.0, 0.0)
    # XTREME per seed: 575/9 and (575 + 7*2)/9 -> mean 1164/18, std (14/9)/sqrt(2)
    xt = get("baseline", "xtreme")
    assert xt["mean"] == pytest.approx(1164 / 18)
    assert xt["std"] == pytest.approx(14 / 9 / math.sqrt(2))
    assert xt["n_seeds"] == 2
    # veco2: seed0 = baseline+5 everywhere (sum 620), seed1 = +9 on the 7 fine-tuned tasks, retrieval
    # +5 (sum 575 + 63 + 10 = 648) -> mean 1268/18 = 70.444, std (28/9)/sqrt(2)
    xt = get("veco2", "xtreme")
    assert xt["mean"] == pytest.approx(1268 / 18)
    assert xt["std"] == pytest.approx(28 / 9 / math.sqrt(2))
    assert get("veco2", "tydiqa")["mean"] == 45 + 7.0  # (50 + 54) / 2
    # population std on request: |77 - 75| / 2
    assert summarise(load_results_tree(MOCK), languages=MOCK_LANGUAGES, ddof=0).query(
        "variant == 'baseline' and name == 'xnli'"
    )["std"].item() == 1.0


def test_summarise_with_official_languages_reports_missing():
    with pytest.raises(Veco2Error, match=r"baseline seed0: xnli: results missing for language\(s\) ar bg"):
        summarise(load_results_tree(MOCK))


def test_token_accuracy_is_averaged_beside_f1():
    df = load_results_tree(MOCK)
    sel = df[(df.variant == "baseline") & (df.task == "udpos") & (df.seed == 0)]
    per_language = {lang: dict(zip(g.metric, g.value)) for lang, g in sel.groupby("language")}
    assert task_score(per_language, "udpos", languages=["de", "en"]) == {"f1": 70.0, "token_accuracy": 92.0, "score": 70.0}


@pytest.fixture
def tree_copy(tmp_path):
    return Path(shutil.copytree(MOCK, tmp_path / "results"))


def test_tatoeba_task_score_uses_the_xtreme_direction_only():
    # "accuracy" (English queries, XTREME) enters the score; "accuracy_xx_to_en" is averaged beside it.
    per_language = {"de": {"accuracy": 50.0, "accuracy_xx_to_en": 100.0},
                    "fr": {"accuracy": 70.0, "accuracy_xx_to_en": 90.0}}
    result = task_score(per_language, "tatoeba", languages=["de", "fr"])
    assert result == {"accuracy": 60.0, "accuracy_xx_to_en": 95.0, "score": 60.0}
    with pytest.raises(Veco2Error, match="tatoeba: language fr has no accuracy score"):
        task_score({"de": per_language["de"], "fr": {"accuracy_xx_to_en": 90.0}}, "tatoeba", languages=["de", "fr"])


def test_aggregate_docstring_cites_public_sources_only():
    import veco2.xtreme.aggregate as aggregate

    assert "SPEC" not in Path(aggregate.__file__).read_text(encoding="utf-8")
    assert "arXiv 2003.11080" in aggregate.__doc__


def test_corrupt_json_names_the_file(tree_copy):
    bad = tree_copy / "veco2" / "panx" / "seed1" / "results.json"
    bad.write_text('{"task": "panx", "scores": {', encoding="utf-8")
    with pytest.raises(InputError, match=r"veco2/panx/seed1/results\.json:1: corrupt JSON"):
        load_results_tree(tree_copy)


def test_inconsistent_results_file_is_an_error(tree_copy):
    path = tree_copy / "baseline" / "xnli" / "seed0" / "results.json"
    data = json.loads(path.read_text())
    del data["scores"]["en"]
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"baseline/xnli/seed0/results\.json: declared language\(s\) without scores: en"):
        load_results_tree(tree_copy)
    data["scores"]["en"] = {"accuracy": "80"}
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="is not a finite number"):
        load_results_tree(tree_copy)
    data["scores"]["en"] = {"accuracy": 80}
    data["seed"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match="does not match its directory seed0"):
        load_results_tree(tree_copy)


def test_missing_language_in_tree_is_an_error(tree_copy):
    # file consistent with itself (declares only de) but the aggregation asks for de and en
    path = tree_copy / "baseline" / "pawsx" / "seed1" / "results.json"
    data = json.loads(path.read_text())
    data["languages"] = ["de"]
    del data["scores"]["en"]
    path.write_text(json.dumps(data))
    with pytest.raises(Veco2Error, match=r"baseline seed1: pawsx: results missing for language\(s\) en"):
        summarise(load_results_tree(tree_copy), languages=MOCK_LANGUAGES)


def test_missing_seed_of_a_fine_tuned_task_is_an_error(tree_copy):
    shutil.rmtree(tree_copy / "veco2" / "udpos" / "seed1")
    with pytest.raises(Veco2Error, match="veco2 seed1: XTREME score needs all 9 tasks; missing: udpos"):
        summarise(load_results_tree(tree_copy), languages=MOCK_LANGUAGES)
