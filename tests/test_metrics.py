"""Golden tests for veco2.xtreme.metrics: hand-computed values and the installed seqeval as reference."""

import random
import warnings

import pytest
from seqeval.metrics import f1_score as seqeval_package_f1
from seqeval.metrics.sequence_labeling import get_entities as seqeval_package_entities

from veco2.errors import Veco2Error
from veco2.xtreme import metrics
from veco2.xtreme.metrics import (
    METRICS,
    accuracy,
    get_entities,
    mlqa_f1_em,
    mlqa_normalize,
    pos_f1,
    seqeval_f1,
    squad_f1_em,
    squad_normalize,
    token_accuracy,
)

UPOS = "ADJ ADP ADV AUX CCONJ DET INTJ NOUN NUM PART PRON PROPN PUNCT SCONJ SYM VERB X".split()
NER = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def package_f1(gold, pred):
    with warnings.catch_warnings():  # seqeval 1.x warns on non-NE tags / zero division
        warnings.simplefilter("ignore")
        return 100.0 * seqeval_package_f1(gold, pred)


# --- accuracy ----------------------------------------------------------------------------------


def test_accuracy_percent():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 75.0
    assert accuracy(["a"], ["a"]) == 100.0
    assert accuracy(["a", "b"], ["b", "a"]) == 0.0


def test_accuracy_rejects_empty_and_mismatched():
    with pytest.raises(Veco2Error, match="no examples"):
        accuracy([], [])
    with pytest.raises(Veco2Error, match="2 predictions for 3 labels"):
        accuracy([1, 2], [1, 2, 3])


# --- seqeval F1: NER (IOB2), where 0.0.12 and 1.x agree ----------------------------------------


@pytest.mark.parametrize("semantics", ["0.0.12", "1.x"])
def test_seqeval_matches_package_on_random_iob2(semantics):
    rng = random.Random(1234)
    for _ in range(400):
        gold = [[rng.choice(NER) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 4))]
        pred = [[t if rng.random() < 0.7 else rng.choice(NER) for t in s] for s in gold]
        assert seqeval_f1(gold, pred, semantics=semantics) == pytest.approx(package_f1(gold, pred), abs=1e-9)


def test_seqeval_1x_semantics_matches_package_on_random_upos():
    # The 1.x mode is the installed package exactly, also on plain UPOS tags (chunk sets too).
    rng = random.Random(99)
    for _ in range(300):
        gold = [[rng.choice(UPOS) for _ in range(rng.randint(0, 8))] for _ in range(rng.randint(1, 4))]
        pred = [[t if rng.random() < 0.6 else rng.choice(UPOS) for t in s] for s in gold]
        assert seqeval_f1(gold, pred, semantics="1.x") == pytest.approx(package_f1(gold, pred), abs=1e-9)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert get_entities(gold, semantics="1.x") == seqeval_package_entities(gold)


def test_seqeval_ner_hand_cases():
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    assert seqeval_f1(gold, gold) == 100.0  # all right
    assert seqeval_f1(gold, [["O", "O", "B-ORG", "O"]]) == 0.0  # all wrong
    assert seqeval_f1(gold, [["O", "O", "O", "O"]]) == 0.0  # empty predictions (no chunk)
    assert seqeval_f1([[]], [[]]) == 0.0  # nothing at all: seqeval returns 0
    # I- without B- starts a chunk: gold (PER,0,1) equals pred B-PER I-PER
    assert seqeval_f1([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]) == 100.0
    assert get_entities([["O", "I-LOC", "B-LOC"]]) == [("LOC", 1, 1), ("LOC", 2, 2)]
    # single-token chunks: gold (PER,0,0) (PER,1,1) (ORG,3,3); pred (PER,0,1) (ORG,3,3)
    # correct 1 -> P = 1/2, R = 1/3, F1 = 2*(1/6)/(5/6) = 0.4
    assert seqeval_f1([["B-PER", "B-PER", "O", "B-ORG"]], [["B-PER", "I-PER", "O", "B-ORG"]]) == pytest.approx(40.0)
    # chunks never cross sentences: [B-PER] [I-PER] is two chunks, as is [B-PER] [B-PER]
    assert seqeval_f1([["B-PER"], ["I-PER"]], [["B-PER"], ["B-PER"]]) == 100.0
    assert seqeval_f1([["B-PER", "I-PER"]], [["B-PER", "B-PER"]]) == 0.0


def test_seqeval_shape_errors():
    with pytest.raises(Veco2Error, match="1 predicted sentences for 2 gold"):
        seqeval_f1([["O"], ["O"]], [["O"]])
    with pytest.raises(Veco2Error, match="sentence 0 has 1 predicted tags for 2 gold"):
        seqeval_f1([["O", "O"]], [["O"]])
    with pytest.raises(Veco2Error, match="semantics"):
        seqeval_f1([["O"]], [["O"]], semantics="2.0")


# --- UD-POS: seqeval over plain UPOS tags, 0.0.12 semantics -------------------------------------


def test_pos_f1_merges_runs_and_differs_from_token_accuracy():
    gold = [["DET", "NOUN", "NOUN", "VERB"]]
    pred = [["DET", "NOUN", "VERB", "VERB"]]
    # gold chunks (DET,0,0) (NOUN,1,2) (VERB,3,3); pred (DET,0,0) (NOUN,1,1) (VERB,2,3)
    # correct: DET only -> P = R = 1/3 -> F1 = 33.33; token accuracy 3/4 = 75
    assert pos_f1(gold, pred) == pytest.approx(100 / 3)
    assert token_accuracy(gold, pred) == 75.0
    assert pos_f1(gold, pred) == pytest.approx(package_f1(gold, pred))  # no CONJ / X involved: versions agree


def test_pos_f1_sconj_sym_are_single_token_chunks():
    # S-prefixed tags: every token its own chunk. gold: 4 chunks, pred: SCONJ SCONJ SYM NOUN = 4
    # chunks, 3 correct -> P = R = 3/4 -> 75
    gold = [["SCONJ", "SCONJ", "SYM", "SYM"]]
    pred = [["SCONJ", "SCONJ", "SYM", "NOUN"]]
    assert get_entities(gold) == [("SCONJ", 0, 0), ("SCONJ", 1, 1), ("SYM", 2, 2), ("SYM", 3, 3)]
    assert pos_f1(gold, pred) == pytest.approx(75.0)


def test_pos_f1_cconj_sconj_where_versions_differ():
    gold = [["CCONJ", "SCONJ", "NOUN"]]
    pred = [["CCONJ", "CCONJ", "NOUN"]]
    # 0.0.12: gold (CCONJ,0,0) (SCONJ,1,1) (NOUN,2,2); pred (CCONJ,0,1) (NOUN,2,2)
    #   correct 1 -> P = 1/2, R = 1/3 -> F1 = 2*(1/6)/(5/6) = 40
    assert pos_f1(gold, pred) == pytest.approx(40.0)
    # 1.x: CCONJ and SCONJ both have type CONJ; gold (CONJ,1,1) (OUN,2,2); pred (CONJ,0,1) (OUN,2,2)
    #   correct 1 -> P = R = 1/2 -> 50, as the installed package says
    assert get_entities(gold, semantics="1.x") == [("CONJ", 1, 1), ("OUN", 2, 2)]
    assert seqeval_f1(gold, pred, semantics="1.x") == pytest.approx(50.0)
    assert package_f1(gold, pred) == pytest.approx(50.0)


def test_pos_f1_trailing_x_run_where_versions_differ():
    gold = [["NOUN", "X", "X"]]
    pred = [["NOUN", "X", "NOUN"]]
    # 0.0.12: gold (NOUN,0,0) (X,1,2); pred (NOUN,0,0) (X,1,1) (NOUN,2,2)
    #   correct 1 -> P = 1/3, R = 1/2 -> F1 = 2*(1/6)/(5/6) = 40
    assert pos_f1(gold, pred) == pytest.approx(40.0)
    # 1.x: X has the type of O, so the trailing X run never ends and is dropped: gold {(OUN,0,0)};
    #   pred (OUN,0,0) (_,1,1) (OUN,2,2) -> P = 1/3, R = 1 -> F1 = 50
    assert get_entities(gold, semantics="1.x") == [("OUN", 0, 0)]
    assert seqeval_f1(gold, pred, semantics="1.x") == pytest.approx(50.0)
    assert package_f1(gold, pred) == pytest.approx(50.0)


# --- SQuAD v1.1 ---------------------------------------------------------------------------------


def test_squad_normalize():
    assert squad_normalize("The  Eiffel-Tower!") == "eiffeltower"
    assert squad_normalize("An apple, a pear and THE plum.") == "apple pear and plum"
    assert squad_normalize("theatre") == "theatre"  # articles only as whole words
    # non-ASCII punctuation is NOT removed by the SQuAD normaliser (used for XQuAD/TyDiQA)
    assert squad_normalize("«Paris», 。") == "«paris» 。"


def test_squad_f1_em_golden():
    predictions = {"q1": "the cat sat", "q2": "Paris.", "q4": "ignored"}
    references = {"q1": ["a cat sat down", "dog"], "q2": ["paris"], "q3": ["anything"]}
    # q1: tokens [cat sat] vs [cat sat down]: P = 1, R = 2/3 -> F1 0.8 (max over the 2 answers), EM 0
    # q2: exact after normalisation -> F1 1, EM 1;  q3: no prediction -> 0 (counted, not dropped)
    scores = squad_f1_em(predictions, references)
    assert scores["f1"] == pytest.approx(100 * (0.8 + 1 + 0) / 3)
    assert scores["exact_match"] == pytest.approx(100 / 3)


def test_squad_empty_prediction():
    # "" and "a" both normalise to "": exact match 1, but F1 0 (no common token) - the official quirk
    assert squad_f1_em({"q": ""}, {"q": ["a"]}) == {"f1": 0.0, "exact_match": 100.0}
    assert squad_f1_em({"q": ""}, {"q": ["Paris"]}) == {"f1": 0.0, "exact_match": 0.0}


def test_qa_input_errors():
    with pytest.raises(Veco2Error, match="no reference"):
        squad_f1_em({}, {})
    with pytest.raises(Veco2Error, match="list of answer strings"):
        squad_f1_em({"q": "x"}, {"q": "x"})


def test_squad_empty_dataset_raises_one_line_error_and_says_so():
    # The official evaluate-v1.1.py divides by the question count (ZeroDivisionError); veco2 raises
    # a one-line Veco2Error, and the docstring documents it.
    for predictions in ({}, {"q": "Paris"}):
        with pytest.raises(Veco2Error) as err:
            squad_f1_em(predictions, {})
        assert str(err.value) == "squad_f1_em: no reference questions to score"
    doc = squad_f1_em.__doc__
    assert "Raises:" in doc and "no reference questions to score" in doc and "ZeroDivisionError" in doc


# --- MLQA ---------------------------------------------------------------------------------------


def test_mlqa_normalize_unicode_punctuation_and_articles():
    assert mlqa_normalize("«Hola», dijo el niño。、！", "es") == "hola dijo niño"
    assert mlqa_normalize("$5", "en") == "5"  # string.punctuation is included too
    assert mlqa_normalize("An apple, the end", "en") == "apple end"
    assert mlqa_normalize("Der Hund und die Katze", "de") == "hund und katze"
    assert mlqa_normalize("cái bàn của tôi", "vi") == "bàn tôi"
    assert mlqa_normalize("एक किताब।", "hi") == "एक किताब"  # no articles; danda is punctuation
    assert mlqa_normalize("the book", "hi") == "the book"


def test_mlqa_arabic_rule_removes_every_al():
    assert mlqa_normalize("الكتاب", "ar") == "كتاب"
    # the script's regex also removes "ال" inside words (documented quirk): مالك -> "م ك"
    assert mlqa_normalize("مالك", "ar") == "م ك"


def test_mlqa_chinese_mixed_segmentation():
    assert mlqa_normalize("北京大学，在 Beijing。", "zh") == "北 京 大 学 在 beijing"
    # F1 on characters: pred 4 chars, gold 2, 2 common -> P 1/2, R 1 -> 66.67; EM 0
    scores = mlqa_f1_em({"q": "北京大学"}, {"q": ["北京", "上海"]}, "zh")
    assert scores["f1"] == pytest.approx(200 / 3)
    assert scores["exact_match"] == 0.0
    # spacing does not matter for zh EM
    assert mlqa_f1_em({"q": "北京 大学"}, {"q": ["北京大学"]}, "zh") == {"f1": 100.0, "exact_match": 100.0}
    # the SQuAD normaliser sees one token each and gives 0 here
    assert squad_f1_em({"q": "北京大学"}, {"q": ["北京"]})["f1"] == 0.0


def test_mlqa_multiple_gold_and_empty_prediction():
    refs = {"a": ["el perro", "un gato negro"], "b": ["Madrid"]}
    preds = {"a": "gato", "b": ""}
    # a: vs "perro" 0; vs "gato negro": P 1, R 1/2 -> 2/3 ; b: empty -> 0
    scores = mlqa_f1_em(preds, refs, "es")
    assert scores["f1"] == pytest.approx(100 * (2 / 3) / 2)
    assert scores["exact_match"] == 0.0


def test_mlqa_unknown_language():
    with pytest.raises(Veco2Error, match="'fr' unknown"):
        mlqa_normalize("x", "fr")
    with pytest.raises(Veco2Error, match="'fr' unknown"):
        mlqa_f1_em({"q": "x"}, {"q": ["x"]}, "fr")


def test_mlqa_unknown_language_raises_before_scoring_and_says_so():
    # The official mlqa_evaluation_v1.py only fails once it normalises an answer, so a run without
    # predictions would pass; veco2 checks the language first, with a one-line Veco2Error.
    with pytest.raises(Veco2Error) as err:
        mlqa_f1_em({}, {"q": ["x"]}, "fr")
    assert str(err.value) == "mlqa_f1_em: language 'fr' unknown to the MLQA scorer; known: en es de ar hi vi zh"
    with pytest.raises(Veco2Error, match="mlqa_f1_em\\[en\\]: no reference questions to score"):
        mlqa_f1_em({}, {}, "en")
    doc = mlqa_f1_em.__doc__
    assert "Raises:" in doc and "unknown to the MLQA scorer" in doc and "before anything" in doc


# --- registry -----------------------------------------------------------------------------------


def test_metrics_registry():
    required = {"accuracy", "seqeval_f1", "pos_f1", "squad_f1_em", "mlqa_f1_em", "bucc_f1", "tatoeba_accuracy"}
    assert required <= set(METRICS)
    assert METRICS["accuracy"] is metrics.accuracy
    assert METRICS["bucc_f1"]([("a", "b", 1.0)], [("a", "b")], 0.5)["f1"] == 100.0
    assert METRICS["tatoeba_accuracy"]([[1.0, 0.0]], [[1.0, 0.0]]) == 100.0
