"""RunResult: the results.json schema that the fine-tuning and retrieval writers and the aggregation share."""

import json

import pytest
from test_xtreme_data import write_tiny_layout

from veco2.errors import InputError
from veco2.xtreme import aggregate
from veco2.xtreme.finetune import run_finetune
from veco2.xtreme.results import NOT_RECORDED, RunResult


def _full_result() -> RunResult:
    return RunResult(task="xnli", version=1, languages=["en", "de"], seed=2,
                     scores={"en": {"accuracy": 80.0}, "de": {"accuracy": 71.5}}, task_score=75.75,
                     task_means={"accuracy": 75.75, "score": 75.75}, language_subset=True,
                     selection={"on": "en dev", "best_step": 3, "best_dev_score": 80.0, "steps": 3, "history": []},
                     hyperparameters={"batch_size": 4, "eval_steps": None}, model={"path": "m", "name": None},
                     data={"source": "local", "root": "r", "demo": False}, n_train_examples=8, n_train_features=8,
                     execution={"device": "cpu", "peak_gpu_memory_bytes": None}, wall_seconds=1.5,
                     run_hash="abc", provenance={"git_commit": None}, extra={"from_an_older_version": [1]})


def test_written_result_reads_back_equal_with_the_same_keys(tmp_path):
    result = _full_result()
    path = tmp_path / "results.json"
    result.write(path)
    assert RunResult.read(path, task="xnli", seed=2) == result
    on_disk = json.loads(path.read_text(encoding="utf-8"))
    assert on_disk == result.to_json()
    assert list(on_disk)[:4] == ["task", "version", "languages", "seed"] and on_disk["from_an_older_version"] == [1]
    # retrieval-only keys are not written by a fine-tuning run; a recorded null is written
    assert "layer" not in on_disk and "scores_by_layer" not in on_disk and on_disk["model"]["name"] is None


def test_a_minimal_file_keeps_only_what_it_holds(tmp_path):
    path = tmp_path / "results.json"
    minimal = {"task": "tatoeba", "languages": ["de"], "seed": 0, "scores": {"de": {"accuracy": 50}},
               "scores_by_layer": None}
    path.write_text(json.dumps(minimal), encoding="utf-8")
    result = RunResult.read(path)
    assert result.version is NOT_RECORDED and result.scores_by_layer is None
    assert result.to_json() == minimal


MALFORMED = [
    ([1, 2], "results.json must hold a JSON object"),
    ({"task": "xnli", "languages": ["en"], "scores": {}}, "missing key 'seed'"),
    ({"task": "pawsx", "languages": ["en"], "seed": 1, "scores": {}}, "task 'pawsx' does not match its directory 'xnli'"),
    ({"task": "xnli", "languages": ["en"], "seed": 3, "scores": {}}, "seed 3 does not match its directory seed1"),
    ({"task": "xnli", "languages": ["en"], "seed": 1, "scores": [1]}, "'scores' must map language -> {metric: value}"),
    ({"task": "xnli", "languages": ["en", "de"], "seed": 1, "scores": {"de": {}}},
     "declared language(s) without scores: en"),
    ({"task": "xnli", "languages": ["en"], "seed": 1, "scores": {"en": 80}}, "scores['en'] must map metric -> value"),
    ({"task": "xnli", "languages": ["en"], "seed": 1, "scores": {"en": {"accuracy": float("nan")}}},
     "scores['en']['accuracy'] = nan is not a finite number"),
    ({"task": "xnli", "languages": ["en"], "seed": 1, "scores": {"en": {"accuracy": True}}},
     "scores['en']['accuracy'] = True is not a finite number"),
]


@pytest.mark.parametrize("content, message", MALFORMED)
def test_malformed_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "veco2" / "xnli" / "seed1" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InputError) as direct:
        RunResult.read(path, task="xnli", seed=1)
    assert str(direct.value) == f"{path}: {message}"
    with pytest.raises(InputError) as through_the_tree:
        aggregate.load_results_tree(tmp_path)
    assert str(through_the_tree.value) == str(direct.value)


def test_corrupt_json_names_the_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"task": "xnli",\n  oops}', encoding="utf-8")
    with pytest.raises(InputError, match=r"results\.json:2: corrupt JSON"):
        RunResult.read(path)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_layout(tmp_path_factory.mktemp("xtreme"), n_copies=2)


def test_what_fine_tuning_writes_reads_back_as_a_run_result(tiny_pretrained_dir, tiny_root, tmp_path):
    (returned,) = run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                               overrides={"max_steps": 2, "batch_size": 4}, languages=["en", "de"])
    path = tmp_path / "xnli" / "seed1" / "results.json"
    result = RunResult.read(path, task="xnli", seed=1)
    assert result.extra == {} and result.layer is NOT_RECORDED
    assert result.selection["steps"] == 2 and result.n_train_features == result.n_train_examples
    assert result.to_json() == json.loads(path.read_text(encoding="utf-8")) == json.loads(json.dumps(returned))


def test_what_retrieval_writes_reads_back_as_a_run_result(tiny_pretrained_dir, tiny_root, tmp_path):
    from veco2.xtreme.retrieval_run import run_evaluate

    returned = run_evaluate("tatoeba", tiny_pretrained_dir, tmp_path, data_root=tiny_root, languages=["de"])
    result = RunResult.read(tmp_path / "tatoeba" / "seed0" / "results.json", task="tatoeba", seed=0)
    assert result.extra == {} and result.selection is NOT_RECORDED
    assert result.scores_by_layer is None and result.layer == returned["layer"]
    assert result.to_json() == json.loads(json.dumps(returned))
