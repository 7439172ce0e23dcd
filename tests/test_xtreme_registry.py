"""The XTREME task registry: nine task files, official languages, errors for unknown names."""

import pytest

from veco2.errors import Veco2Error
from veco2.xtreme import aggregate
from veco2.xtreme.registry import get_task, list_tasks

NINE = {"xnli", "pawsx", "udpos", "panx", "xquad", "mlqa", "tydiqa", "bucc2018", "tatoeba"}


def test_registry_loads_the_nine_tasks_with_official_languages():
    assert set(list_tasks()) == NINE == set(aggregate.TASKS)
    for name in NINE:
        task = get_task(name)
        assert isinstance(task.version, int) and task.version >= 1
        assert task.languages == aggregate.OFFICIAL_LANGUAGES[name]
        assert name in aggregate.TASK_CATEGORIES[task.category]
    counts = {name: len(get_task(name).languages) for name in NINE}
    assert counts == {"xnli": 15, "pawsx": 7, "udpos": 33, "panx": 40, "xquad": 11, "mlqa": 7, "tydiqa": 9,
                      "bucc2018": 4, "tatoeba": 36}


def test_official_hyperparameters_and_heads():
    xnli, pos, xquad = get_task("xnli"), get_task("udpos"), get_task("xquad")
    assert (xnli.hyperparameters["learning_rate"], xnli.hyperparameters["num_train_epochs"],
            xnli.hyperparameters["batch_size"], xnli.hyperparameters["max_seq_length"]) == (2e-5, 5, 32, 128)
    assert (pos.hyperparameters["learning_rate"], pos.hyperparameters["num_train_epochs"]) == (2e-5, 10)
    hp = xquad.hyperparameters
    assert (hp["learning_rate"], hp["num_train_epochs"], hp["max_seq_length"], hp["doc_stride"],
            hp["warmup_steps"], hp["weight_decay"]) == (3e-5, 3, 384, 128, 500, 1e-4)
    assert xnli.labels == ("entailment", "neutral", "contradiction")
    assert get_task("panx").labels[0] == "O" and len(get_task("panx").labels) == 7
    assert len(pos.labels) == 17 and pos.metrics == ("pos_f1", "token_accuracy")
    assert get_task("mlqa").metric == "mlqa_f1_em" and get_task("tydiqa").metric == "squad_f1_em"
    assert {get_task(t).family for t in NINE} == {"classification", "tagging", "qa", "retrieval"}


def test_every_language_has_a_data_code_where_the_data_needs_one():
    for name in ("udpos", "tatoeba", "tydiqa"):
        task = get_task(name)
        assert set(task.languages) <= set(task.language_codes), name
    assert get_task("tatoeba").code("de") == "deu" and get_task("udpos").code("de") == "German"
    assert get_task("tydiqa").code("sw") == "swahili"
    assert get_task("xnli").hub["train"]["path"] == "facebook/xnli"  # XNLI has no train split of its own
    assert get_task("mlqa").hub["test"]["name"].format(code="de") == "MLQA.de.de"


def test_unknown_task_lists_known_tasks():
    with pytest.raises(Veco2Error, match="unknown XTREME task 'xnlii'.*pawsx.*xnli"):
        get_task("xnlii")


def test_unknown_language_is_an_error():
    with pytest.raises(Veco2Error, match="no language 'xx'.*ar bg de"):
        get_task("xnli").check_language("xx")
    assert get_task("xnli").check_languages(["de", "en"]) == ("de", "en")
