"""An objective is its class: the registry, config sections from the config dataclasses, and a
fourth loss registered from outside the package trained through ``veco2.trainer.pretrain``."""

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_training_overrides

from veco2.config import (ConfigError, MaskedLMConfig, ObjectivesConfig, SequenceContrastiveConfig,
                          TokenContrastiveConfig, load_config, save_config, weights_hash)
from veco2.data.batching import SpecialTokens, StepBatches, StepSampler, step_seed
from veco2.errors import Veco2Error
from veco2.model import Veco2ForPretraining, build_encoder
from veco2.objectives import (OBJECTIVES, MaskedLM, Objective, SequenceContrastive, TokenContrastive,
                              register_objective, unregister_objective)
from veco2.trainer import prepare_data, pretrain

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"


@dataclass
class HiddenNormConfig:
    weight: float = 0.0
    scale: float = 1.0


class HiddenNorm(Objective):
    """A toy fourth loss: ``scale · mean over real tokens of ||h||²`` of the main pass's last layer."""

    def __init__(self, config: HiddenNormConfig):
        super().__init__()
        self.config = config

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.config.scale * hidden[mask.bool()].pow(2).sum(-1).mean()

    def batch_loss(self, encoded) -> torch.Tensor:
        return self(encoded.main.hidden_states[-1], encoded.batch.attention_mask)


@pytest.fixture
def hidden_norm():
    register_objective("hidden_norm", HiddenNorm, HiddenNormConfig)
    yield
    unregister_objective("hidden_norm")


def test_the_registry_holds_the_three_objectives_and_their_defaults_are_the_configs():
    assert list(OBJECTIVES) == ["mlm", "seq", "tok"]
    assert (OBJECTIVES["mlm"], OBJECTIVES["seq"], OBJECTIVES["tok"]) == (MaskedLM, SequenceContrastive, TokenContrastive)
    assert MaskedLM().config == MaskedLMConfig()
    assert SequenceContrastive().config == SequenceContrastiveConfig()
    assert TokenContrastive().config == TokenContrastiveConfig()
    # The attributes the model and trainer read come from the config (they used to differ).
    seq, tok = SequenceContrastive(), TokenContrastive()
    assert (seq.negatives, seq.encoding, seq.layer) == ("gather", "separate", None)
    assert (tok.exclude_copies, tok.encoding, tok.layer) == (True, "separate", -1)
    # Keyword options replace config fields; unknown ones are a TypeError from dataclasses.replace.
    assert SequenceContrastive(temperature=0.3).config == SequenceContrastiveConfig(temperature=0.3)
    with pytest.raises(TypeError):
        SequenceContrastive(temprature=0.3)


def test_the_model_builds_each_objective_from_its_section(small_corpus_dir):
    cfg = load_config(ABLATIONS / "mlm_seq_tok.yaml", overrides=tiny_training_overrides(
        small_corpus_dir, **{"objectives.seq.temperature": 0.2, "objectives.tok.subword_pooling": "first"}))
    model = Veco2ForPretraining(build_encoder(cfg.model, 300, 1), cfg.objectives)
    assert model.objective_names == ["mlm", "seq", "tok"]
    # seq.layer None -> the retrieval layer (2/3 of 2 layers = 1); tok.layer -1 -> hidden state 2.
    assert model.seq.config == dataclasses.replace(cfg.objectives.seq, layer=1)
    assert model.tok.config == dataclasses.replace(cfg.objectives.tok, layer=2)
    assert (model.seq.temperature, model.tok.pooling) == (0.2, "first")
    off = load_config(ABLATIONS / "mlm.yaml", overrides=tiny_training_overrides(small_corpus_dir))
    model = Veco2ForPretraining(build_encoder(off.model, 300, 1), off.objectives)
    assert model.objective_names == ["mlm"] and model.seq is None and model.tok is None


def test_one_definition_of_the_loss_weights(small_corpus_dir, hidden_norm):
    cfg = load_config(ABLATIONS / "mlm_seq_tok.yaml",
                      overrides=tiny_training_overrides(small_corpus_dir, **{"objectives.hidden_norm.weight": 0.25}))
    assert cfg.objectives.weights() == {"mlm": 1.0, "seq": 1.0, "tok": 1.0, "hidden_norm": 0.25}


def test_a_registered_section_is_merged_checked_hashed_and_saved(small_corpus_dir, tmp_path, hidden_norm):
    overrides = tiny_training_overrides(small_corpus_dir)
    base = load_config(ABLATIONS / "mlm.yaml", overrides=overrides)
    assert base.objectives.hidden_norm == HiddenNormConfig()
    cfg = load_config(ABLATIONS / "mlm.yaml",
                      overrides=overrides + ["objectives.hidden_norm.weight=2", "objectives.hidden_norm.scale=0.5"])
    assert cfg.objectives.hidden_norm == HiddenNormConfig(weight=2.0, scale=0.5)
    assert isinstance(cfg.objectives.hidden_norm.weight, float)
    assert cfg.to_dict()["objectives"]["hidden_norm"] == {"weight": 2.0, "scale": 0.5}
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").objectives.hidden_norm == cfg.objectives.hidden_norm
    with pytest.raises(ConfigError, match=r"unknown key 'objectives.hidden_norm.scal'; allowed keys here: weight, scale"):
        load_config(ABLATIONS / "mlm.yaml", overrides=overrides + ["objectives.hidden_norm.scal=1"])
    with pytest.raises(ConfigError, match=r"objectives.hidden_norm.weight: got -1.0, must be >= 0"):
        load_config(ABLATIONS / "mlm.yaml", overrides=overrides + ["objectives.hidden_norm.weight=-1"])
    # A switched-off registered objective cannot change the weights: the hash is the one of a
    # config without it; switched on, its settings are part of the hash.
    unregister_objective("hidden_norm")
    unregistered_hash = weights_hash(load_config(ABLATIONS / "mlm.yaml", overrides=overrides))
    register_objective("hidden_norm", HiddenNorm, HiddenNormConfig)
    assert weights_hash(base) == unregistered_hash
    assert weights_hash(cfg) != unregistered_hash


def test_registration_errors():
    with pytest.raises(Veco2Error, match="is not a subclass of veco2.objectives.Objective"):
        register_objective("plain", torch.nn.Module, HiddenNormConfig)
    with pytest.raises(ConfigError, match="must be a dataclass with a float 'weight' field"):
        register_objective("no_weight", HiddenNorm, dataclasses.make_dataclass("NoWeight", [("scale", float, 1.0)]))
    with pytest.raises(Veco2Error, match="'seq' is already registered"):
        register_objective("seq", HiddenNorm, HiddenNormConfig)
    with pytest.raises(ConfigError, match="must be a Python identifier"):
        register_objective("sections", HiddenNorm, HiddenNormConfig)  # an ObjectivesConfig method
    assert list(OBJECTIVES) == ["mlm", "seq", "tok"] and not hasattr(ObjectivesConfig(), "no_weight")


@pytest.mark.slow  # two 3-step runs: ~25 s on 2 shared cores
def test_a_fourth_loss_trains_through_pretrain_and_its_weight_applies(small_corpus_dir, tmp_path, hidden_norm):
    shared = {"training.max_steps": 3, "training.log_every": 1, "training.checkpoint_every": 100,
              "data.tokenizer": tmp_path / "data" / "tokenizer", "data.shard_dir": tmp_path / "data" / "shards"}
    overrides = tiny_training_overrides(small_corpus_dir, **shared)
    tokenizer, shards = prepare_data(load_config(ABLATIONS / "mlm.yaml", overrides=tiny_training_overrides(
        small_corpus_dir)), tmp_path / "data")
    metrics = {}
    for weight in (0, 2):
        cfg = load_config(ABLATIONS / "mlm.yaml", overrides=overrides + [f"objectives.hidden_norm.weight={weight}",
                                                                         "objectives.hidden_norm.scale=0.5"])
        pretrain(cfg, tmp_path / f"weight{weight}")
        lines = (tmp_path / f"weight{weight}" / "metrics.jsonl").read_text().splitlines()
        metrics[weight] = [json.loads(line) for line in lines]
    off, on = metrics[0][0], metrics[2][0]  # step 1: the same initial weights and batch
    assert "loss_hidden_norm" not in off and on["loss_hidden_norm"] > 0  # weight 0: switched off
    assert on["loss_mlm"] == off["loss_mlm"]
    assert on["loss"] == off["loss"] + 2 * on["loss_hidden_norm"]  # exactly its weighted term
    # Its gradient reaches the encoder: the runs part after the first update.
    assert metrics[2][-1]["loss_mlm"] != metrics[0][-1]["loss_mlm"]

    # The logged term is the toy formula on the initial model and the first batch, computed here
    # from scratch the way the trainer seeds them (model init: training.seed; dropout: step_seed).
    cfg = load_config(ABLATIONS / "mlm.yaml", overrides=overrides + ["objectives.hidden_norm.weight=2",
                                                                     "objectives.hidden_norm.scale=0.5"])
    special = SpecialTokens.of(tokenizer)
    torch.manual_seed(cfg.training.seed)
    model = Veco2ForPretraining(build_encoder(cfg.model, len(tokenizer), special.pad), cfg.objectives).train()
    sampler = StepSampler(shards.num_mono, shards.num_bi, shards.mono_lengths(), shards.bi_lengths(),
                          cfg.training.batch_size, cfg.data.bilingual_ratio, cfg.training.seed,
                          cfg.data.bucket_by_length, cfg.data.bucket_window)
    batch = StepBatches(shards, sampler, cfg, special, 0, 1)[0]
    torch.manual_seed(step_seed(cfg.training.seed, 0, 0))
    with torch.no_grad():
        hidden = model.encode(batch.input_ids, batch.attention_mask, segment_ids=batch.segment_ids,
                              position_ids=batch.position_ids).hidden_states[-1]
    by_hand = 0.5 * float(sum((h ** 2).sum() for h in hidden[batch.attention_mask.bool()])
                          / int(batch.attention_mask.sum()))
    assert on["loss_hidden_norm"] == pytest.approx(by_hand, rel=1e-5)
