"""Typed config: defaults, YAML layering, overrides, strict validation with clear messages."""

from pathlib import Path

import pytest
import yaml

from veco2.config import Config, config_from_dict, load_config, save_config
from veco2.errors import ConfigError

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"


def test_layers_apply_in_order_and_overrides_parse_yaml_values(tmp_path):
    first = tmp_path / "scale.yaml"
    first.write_text("training: {max_steps: 50, lr: 1e-3}\nobjectives: {seq: {weight: 0.5}}\n")
    second = tmp_path / "variant.yaml"
    second.write_text("name: v\nobjectives: {seq: {weight: 2}}\n")
    cfg = load_config(first, second, overrides=["training.max_steps=7", "data.languages=[de, zh]",
                                                "model.init_from=null", "objectives.seq.projection=64"])
    assert cfg.name == "v"
    assert cfg.training.max_steps == 7 and cfg.training.lr == 1e-3  # "1e-3" (YAML 1.1 string) read as a float
    assert cfg.objectives.seq.weight == 2.0 and isinstance(cfg.objectives.seq.weight, float)
    assert cfg.data.languages == ["de", "zh"] and cfg.model.init_from is None
    assert cfg.objectives.seq.projection == 64
    assert cfg.objectives.tok.weight == Config().objectives.tok.weight  # untouched default


def test_snakemake_style_nested_dict_overrides():
    cfg = load_config(overrides={"training": {"batch_size": 8}, "objectives": {"tok": {"negatives": "both_sides"}}})
    assert cfg.training.batch_size == 8 and cfg.objectives.tok.negatives == "both_sides"


@pytest.mark.parametrize("override,message", [
    ("training.lrr=1", "unknown key 'training.lrr'; allowed keys here: seed, batch_size"),
    ("objectives.seq.negatives=memory", "objectives.seq.negatives: got 'memory', expected one of 'in_batch', 'gather', 'queue'"),
    ("training.batch_size=-4", "training.batch_size: got -4, must be > 0"),
    ("training.batch_size=2.5", "training.batch_size: got 2.5, expected int"),
    ("training.lr=fast", "training.lr: got 'fast', expected float"),
    ("data.bilingual_ratio=1.5", "data.bilingual_ratio: got 1.5, must be between 0 and 1"),
    ("model.size=huge", "model.size: got 'huge', expected one of 'tiny', 'small', 'base', 'large'"),
    ("training.tensorboard=yes please", "training.tensorboard: got 'yes please', expected bool"),
    ("objectives=3", "objectives: expected a mapping, got 3"),
    ("training.max_steps", "expected key.path=value"),
])
def test_bad_values_name_the_key_and_the_allowed_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainig: {lr: 1}\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'trainig'"):
        load_config(typo)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(ABLATIONS / "mlm_seq_tok.yaml", overrides=["training.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    again = config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text()))
    assert again == cfg


def test_every_ablation_file_is_a_valid_config():
    names = set()
    for path in sorted(ABLATIONS.glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.name == path.stem
        names.add(cfg.name)
    assert {"mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok"} <= names


def test_one_weights_hash_ignores_exactly_the_bookkeeping_settings():
    import dataclasses

    from veco2.config import Config, weights_hash

    def bookkeeping(section, prefix=""):
        found = set()
        for f in dataclasses.fields(section):
            name = f"{prefix}{f.name}"
            if not f.metadata.get("affects_weights", True):
                found.add(name)
            elif dataclasses.is_dataclass(getattr(section, f.name)):
                found |= bookkeeping(getattr(section, f.name), f"{name}.")
        return found

    assert bookkeeping(Config()) == {
        "name", "description", "evaluation", "data.num_workers", "data.prepare_workers", "data.prepare_chunk_size",
        "training.compile", "training.checkpoint_every",
        "training.keep_checkpoints", "training.checkpoint_dir", "training.log_every", "training.max_nonfinite_skips",
        "training.tensorboard", "training.peak_flops"}
    base = weights_hash(load_config())
    changed = load_config(overrides=["name=other", "training.compile=true", "training.log_every=1",
                                     "training.checkpoint_every=7", "training.checkpoint_dir=/elsewhere",
                                     "evaluation.heldout_pairs=3", "data.num_workers=2", "training.tensorboard=false"])
    assert weights_hash(changed) == base  # a resumed run may change all of these
    for override in ("training.lr=0.1", "training.seed=5", "objectives.seq.weight=0.5", "data.max_length=32",
                     "model.size=small"):
        assert weights_hash(load_config(overrides=[override])) != base, override


@pytest.mark.parametrize("text, message", [
    ("training:\n  lr: 0.1\n  lr: 0.2\n", r"bad\.yaml:3: .*lr.*"),                  # a key given twice
    ("objectives:\n  seq: {weight: .nan}\n", r"bad\.yaml:2: .*finite"),          # .nan would switch the loss off
    ("objectives:\n  tok: {weight: .inf}\n", r"bad\.yaml:2: .*finite"),
    ("a: " + "[" * 10000 + "]" * 10000 + "\n", r"bad\.yaml:1: .*deep"),          # RecursionError before
])
def test_config_files_reject_duplicates_non_finite_numbers_and_runaway_nesting(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("override", ["objectives.seq.weight=.nan", "objectives.tok.weight=.inf", "training.lr=-.inf"])
def test_overrides_reject_non_finite_numbers(override):
    with pytest.raises(ConfigError, match="is not a finite number"):
        load_config(overrides=[override])
