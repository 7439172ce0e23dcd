"""Fine-tuning on accelerate: same numbers as the plain loop, devices, gradient accumulation, DDP,
step-level checkpoints, bf16, trackers, and retrieval on the device.

The reference for "same numbers" is :func:`_plain_loop`, the training loop of
``veco2/xtreme/finetune.py`` before it moved to accelerate (commit a7b2213), kept here with only its
checkpoint and evaluation code left out (evaluation runs in eval mode and draws no random numbers).
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_xtreme_data import write_tiny_layout
from transformers import AutoTokenizer

from veco2.errors import ConfigError
from veco2.xtreme import families, finetune
from veco2.xtreme.data import load_split
from veco2.xtreme.families import FAMILIES
from veco2.xtreme.finetune import parse_overrides, resolve_hyperparameters, run_finetune
from veco2.xtreme.registry import get_task

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_layout(tmp_path_factory.mktemp("xtreme"), n_copies=2)


@pytest.fixture(scope="module")
def no_dropout_dir(tiny_pretrained_dir, tmp_path_factory):
    """The tiny model without dropout, so that differently cut batches see the same function."""
    from transformers import AutoConfig, XLMRobertaModel

    config = AutoConfig.from_pretrained(tiny_pretrained_dir)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    out = tmp_path_factory.mktemp("no_dropout")
    XLMRobertaModel.from_pretrained(tiny_pretrained_dir, config=config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_pretrained_dir).save_pretrained(out)
    return out


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose mixed precision cannot change once set."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@contextmanager
def recording():
    """Record every embedding look-up (input device, weight device, rows, training mode) and the
    gradients of every AdamW step (cloned just before the step)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    lookups, grads = [], []

    def before_forward(module, args):
        if isinstance(module, torch.nn.Embedding) and args:
            lookups.append({"input": args[0].device, "weight": module.weight.device, "rows": int(args[0].shape[0]),
                            "training": module.training, "table": module.num_embeddings})

    def before_step(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.AdamW):
            grads.append([p.grad.detach().clone() for group in optimizer.param_groups for p in group["params"]])

    handles = [torch.nn.modules.module.register_module_forward_pre_hook(before_forward),
               register_optimizer_step_pre_hook(before_step)]
    try:
        yield lookups, grads
    finally:
        for handle in handles:
            handle.remove()


def _rising_dev_score(monkeypatch):
    """Every evaluation "improves", so the selected weights are the final ones."""
    real = finetune._dev_score
    calls = []

    def rising(task, family, model, dev):
        calls.append(1)
        return float(len(calls)), real(task, family, model, dev)[1]

    monkeypatch.setattr(finetune, "_dev_score", rising)


# ------------------------------------------------------------------------------ the plain loop

def _plain_pad(batch, pad_id):
    length = max(len(f["input_ids"]) for f in batch)
    out = {}
    for key in batch[0]:
        if key == "input_ids":
            out[key] = torch.tensor([f[key] + [pad_id] * (length - len(f[key])) for f in batch])
        elif key == "attention_mask":
            out[key] = torch.tensor([f[key] + [0] * (length - len(f[key])) for f in batch])
        elif key == "labels" and isinstance(batch[0][key], list):
            out[key] = torch.tensor([f[key] + [-100] * (length - len(f[key])) for f in batch])
        else:
            out[key] = torch.tensor([f[key] for f in batch])
    return out


def _plain_loop(family, model_dir, hp, seed, features):
    """The pre-accelerate loop: seeded head, AdamW, linear schedule, per-epoch seeded shuffle."""
    import transformers
    from transformers import get_linear_schedule_with_warmup

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    model = getattr(transformers, family.auto_class).from_pretrained(model_dir, **family.model_kwargs())
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": hp.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, eps=hp.adam_epsilon)
    total = math.ceil(len(features) / hp.batch_size) * hp.num_train_epochs
    if hp.max_steps is not None:
        total = min(total, hp.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(hp.warmup_steps, total), total)
    model.train()
    step = epoch = 0
    while step < total and epoch < hp.num_train_epochs:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        batches = [order[i:i + hp.batch_size].tolist() for i in range(0, len(order), hp.batch_size)]
        for b in range(len(batches)):
            loss = model(**_plain_pad([features[i] for i in batches[b]], family.tokenizer.pad_token_id)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if b + 1 == len(batches):
                epoch += 1
            if step >= total or b + 1 == len(batches):
                break
    return model.state_dict()


@pytest.mark.parametrize("task,overrides", [
    ("xnli", {"batch_size": 3, "num_train_epochs": 2, "learning_rate": 1e-3, "warmup_steps": 2, "weight_decay": 0.01}),
    ("udpos", {"batch_size": 2, "max_steps": 5, "eval_steps": 2, "learning_rate": 1e-3, "max_seq_length": 6}),
    ("xquad", {"batch_size": 3, "max_steps": 4, "learning_rate": 1e-3, "max_seq_length": 32, "doc_stride": 8,
               "max_query_length": 8}),
])
def test_one_cpu_process_is_bit_identical_to_the_plain_loop(task, overrides, tiny_pretrained_dir, tiny_root,
                                                           tmp_path, monkeypatch):
    spec = get_task(task)
    hp = resolve_hyperparameters(spec, overrides)
    family = FAMILIES[spec.family](spec, AutoTokenizer.from_pretrained(tiny_pretrained_dir), hp)
    features = family.train_features(load_split(spec, "train", "en", data_root=tiny_root))
    expected = _plain_loop(family, tiny_pretrained_dir, hp, 7, features)

    _rising_dev_score(monkeypatch)
    result = run_finetune(task, tiny_pretrained_dir, tmp_path, seeds=[7], data_root=tiny_root, overrides=overrides,
                          languages=["en"])[0]
    weights = load_file(tmp_path / task / "seed7" / "best.safetensors")
    assert result["selection"]["best_step"] == result["selection"]["steps"]  # the final weights were kept
    assert weights.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(weights[k], expected[k])]
    assert not different, different[:5]
    assert result["execution"] == {"device": "cpu", "num_processes": 1,
                                   "micro_batch_size": overrides["batch_size"], "mixed_precision": "no",
                                   "peak_gpu_memory_bytes": None}


# ------------------------------------------------------------------------------ devices and batch sizes

def test_model_and_every_batch_live_on_the_accelerator_device(tiny_pretrained_dir, tiny_root, tmp_path):
    from accelerate import PartialState

    with recording() as (lookups, _):
        result = run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                              overrides={"batch_size": 4, "max_steps": 2, "eval_batch_size": 3}, languages=["en", "de"])[0]
    device = PartialState().device
    assert lookups and all(x["input"] == device and x["weight"] == device for x in lookups)
    train = {x["rows"] for x in lookups if x["training"]}
    vocabulary = max(x["table"] for x in lookups)  # one word-embedding look-up per forward pass
    evaluation = [x["rows"] for x in lookups if not x["training"] and x["table"] == vocabulary]
    assert train == {4}
    # 8 dev and 8 + 2 test examples in forward passes of eval_batch_size = 3
    assert evaluation == [3, 3, 2] + [3, 3, 2] + [2]
    assert result["execution"]["device"] == str(device)


def test_retrieval_runs_on_the_device_with_its_batch_size_and_bf16(tiny_pretrained_dir, tiny_root, tmp_path):
    from accelerate import PartialState

    from veco2.xtreme.retrieval_run import run_evaluate

    with recording() as (lookups, _):
        plain = run_evaluate("tatoeba", tiny_pretrained_dir, tmp_path / "fp32", data_root=tiny_root,
                             languages=["de"], batch_size=1)
    device = PartialState().device
    assert lookups and all(x["input"] == device and x["weight"] == device for x in lookups)
    assert {x["rows"] for x in lookups} == {1}  # the two sentences per side one at a time
    assert plain["hyperparameters"]["batch_size"] == 1 and plain["hyperparameters"]["mixed_precision"] == "no"
    assert plain["execution"] == {"device": str(device), "peak_gpu_memory_bytes": None}  # no CUDA here

    linear_dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: linear_dtypes.add(out.dtype) if isinstance(module, torch.nn.Linear) else None)
    try:
        bf16 = run_evaluate("tatoeba", tiny_pretrained_dir, tmp_path / "bf16", data_root=tiny_root,
                            languages=["de"], mixed_precision="bf16")
    finally:
        hook.remove()
    assert linear_dtypes == {torch.bfloat16} and bf16["hyperparameters"]["mixed_precision"] == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        run_evaluate("tatoeba", tiny_pretrained_dir, tmp_path / "fp16", data_root=tiny_root, languages=["de"],
                     mixed_precision="fp16")


# ------------------------------------------------------------------------------ gradient accumulation

@pytest.mark.parametrize("task,overrides", [
    # 8 examples in global batches of 6: the second batch (2 examples) leaves one micro-batch empty
    ("xnli", {"batch_size": 6}),
    # token-level loss over sentences of 5 and 3 words: one-sentence micro-batches of unequal weight
    ("udpos", {"batch_size": 4}),
])
def test_gradient_accumulation_gives_the_full_batch_gradient(task, overrides, no_dropout_dir, tiny_root, tmp_path):
    settings = {**overrides, "max_steps": 2, "max_grad_norm": 1e9, "learning_rate": 1e-3}  # no clipping
    grads, rows = {}, {}
    for accumulation in (1, 2, 3) if task == "xnli" else (1, 2, 4):
        with recording() as (lookups, captured):
            run_finetune(task, no_dropout_dir, tmp_path / str(accumulation), seeds=[1], data_root=tiny_root,
                         overrides={**settings, "gradient_accumulation_steps": accumulation}, languages=["en"])
        grads[accumulation] = captured
        rows[accumulation] = sorted({x["rows"] for x in lookups if x["training"]})
    for accumulation in rows:  # micro-batches of batch_size / accumulation rows
        assert max(rows[accumulation]) == overrides["batch_size"] // accumulation
    if task == "xnli":  # the last batch (2 examples) as 2 / 1 + 1 / 1 + 1 + an empty share
        assert rows == {1: [2, 6], 2: [1, 3], 3: [1, 2]}
    for accumulation, captured in grads.items():
        assert len(captured) == 2
        for step in range(2):
            for full, accumulated in zip(grads[1][step], captured[step]):
                torch.testing.assert_close(accumulated, full, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in grads[1][0]) > 1e-3  # a real gradient, not zeros


def test_batch_size_must_divide_into_micro_batches(tiny_pretrained_dir, tiny_root, tmp_path):
    with pytest.raises(ConfigError, match=r"batch_size 6 .* not divisible by 1 process\(es\) x "
                                          r"gradient_accumulation_steps 4"):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                     overrides={"batch_size": 6, "gradient_accumulation_steps": 4})


def test_new_settings_are_checked_and_only_result_keys_change_the_run_hash(tiny_pretrained_dir, tiny_root, tmp_path):
    spec = get_task("xnli")
    assert resolve_hyperparameters(spec, parse_overrides(["mixed_precision=no"])).mixed_precision == "no"
    assert resolve_hyperparameters(spec, parse_overrides(["report_to=tensorboard,wandb"])).report_to == \
        "tensorboard,wandb"
    for bad, message in [({"mixed_precision": "fp8"}, "mixed_precision must be one of no, bf16, fp16"),
                         ({"report_to": "nonsense"}, "unknown tracker nonsense"),
                         ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive"),
                         ({"save_steps": 2.5}, "save_steps must be a positive integer or null"),
                         ({"eval_batch_size": "64"}, "eval_batch_size must be a positive integer")]:
        with pytest.raises(ConfigError, match=message):
            resolve_hyperparameters(spec, bad)
    with pytest.raises(ConfigError, match="mixed_precision fp16 needs a GPU; use bf16 on a CPU"):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path / "fp16", seeds=[1], data_root=tiny_root,
                     overrides={"mixed_precision": "fp16"})
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    uninstalled = sorted(set(LOGGER_TYPE_TO_CLASS) - {str(t) for t in get_available_trackers()})
    if uninstalled:  # accelerate itself would drop it silently
        with pytest.raises(ConfigError, match=f"report_to={uninstalled[0]}: the package of {uninstalled[0]} is not"):
            run_finetune("xnli", tiny_pretrained_dir, tmp_path / "tracker", seeds=[1], data_root=tiny_root,
                         overrides={"report_to": uninstalled[0]})
    settings = dict(seeds=[1], data_root=tiny_root, languages=["en"])
    base = {"batch_size": 4, "max_steps": 2}
    first = run_finetune("xnli", tiny_pretrained_dir, tmp_path, overrides=base, **settings)[0]
    assert {k: first["hyperparameters"][k] for k in finetune.ENGINE_DEFAULTS if k not in base} == \
        {k: v for k, v in finetune.ENGINE_DEFAULTS.items() if k not in base}
    same = run_finetune("xnli", tiny_pretrained_dir, tmp_path, overrides={
        **base, "eval_batch_size": 1, "save_steps": 1, "logging_steps": 1, "report_to": "none"}, **settings)[0]
    # skipped: the first run's results.json, its wall time included
    assert same["run_hash"] == first["run_hash"] and same["wall_seconds"] == first["wall_seconds"]
    other = run_finetune("xnli", tiny_pretrained_dir, tmp_path, overrides={**base, "gradient_accumulation_steps": 2},
                         **settings)[0]
    assert other["run_hash"] != first["run_hash"]


# ------------------------------------------------------------------------------ step-level checkpoints

def test_kill_between_evaluations_resumes_from_the_step_checkpoint(tiny_pretrained_dir, tiny_root, tmp_path,
                                                                  monkeypatch):
    # 8 examples, batches of 2: 4 steps per epoch, 2 epochs; dev evaluation only at the epoch ends (4, 8)
    settings = dict(seeds=[3], data_root=tiny_root, languages=["en", "de"],
                    overrides={"batch_size": 2, "num_train_epochs": 2, "save_steps": 2, "learning_rate": 1e-3})
    straight = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "straight", **settings)[0]
    seed_dir = tmp_path / "killed" / "xnli" / "seed3"

    def killed_at_step_3(name):
        if name == "finetune-step:3":
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "fault_point", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_finetune("xnli", tiny_pretrained_dir, tmp_path / "killed", **settings)
    saved = torch.load(seed_dir / "checkpoint.pt", weights_only=True)
    assert saved["state"]["step"] == 2 and saved["state"]["history"] == []  # saved between evaluations
    assert not (seed_dir / "best.safetensors").exists()

    monkeypatch.setattr(finetune, "fault_point", lambda name: None)
    with recording() as (_, steps):
        resumed = run_finetune("xnli", tiny_pretrained_dir, tmp_path / "killed", **settings)[0]
    assert len(steps) == 6  # steps 3..8 only
    assert resumed["scores"] == straight["scores"]
    assert resumed["selection"]["history"] == straight["selection"]["history"]
    assert (seed_dir / "best.safetensors").read_bytes() == \
        (tmp_path / "straight" / "xnli" / "seed3" / "best.safetensors").read_bytes()
    assert not (seed_dir / "checkpoint.pt").exists()


# ------------------------------------------------------------------------------ bf16 and trackers

def test_bf16_autocast_on_cpu(tiny_pretrained_dir, tiny_root, tmp_path, fresh_accelerate_state):
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: dtypes.add((module.training, out.dtype)) if isinstance(module, torch.nn.Linear)
        else None)
    try:
        result = run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root,
                              overrides={"batch_size": 4, "max_steps": 2, "mixed_precision": "bf16"},
                              languages=["en"])[0]
    finally:
        hook.remove()
    assert dtypes == {(True, torch.bfloat16), (False, torch.bfloat16)}  # training and prediction
    assert result["execution"]["mixed_precision"] == "bf16" and result["hyperparameters"]["mixed_precision"] == "bf16"
    weights = load_file(tmp_path / "xnli" / "seed1" / "best.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}  # float32 master weights


def test_tensorboard_logs_loss_learning_rate_and_dev_score(tiny_pretrained_dir, tiny_root, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    losses = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: losses.append(float(out.loss.detach()))
        if module.training and getattr(out, "loss", None) is not None else None)
    try:
        result = run_finetune("xnli", tiny_pretrained_dir, tmp_path, seeds=[1], data_root=tiny_root, languages=["en"],
                              overrides={"batch_size": 4, "max_steps": 3, "eval_steps": 2, "logging_steps": 2,
                                         "learning_rate": 1e-3, "report_to": "tensorboard"})[0]
    finally:
        hook.remove()
    logs = tmp_path / "xnli" / "seed1" / "logs" / "veco2-finetune"
    events = EventAccumulator(str(logs))
    events.Reload()

    def scalars(tag):
        return [(e.step, e.value) for e in events.Scalars(tag)]

    assert len(losses) == 3
    # logged at step 2 (mean of steps 1-2) and at the last step 3; lr after step s: 1e-3 * (3 - s) / 3
    assert [s for s, _ in scalars("train/loss")] == [2, 3]
    assert [v for _, v in scalars("train/loss")] == pytest.approx([(losses[0] + losses[1]) / 2, losses[2]], rel=1e-6)
    assert [v for _, v in scalars("train/learning_rate")] == pytest.approx([1e-3 / 3, 0.0], rel=1e-6, abs=1e-12)  # float32
    assert scalars("eval/dev_score") == [(h["step"], pytest.approx(h["dev_score"])) for h in
                                         result["selection"]["history"]]


# ------------------------------------------------------------------------------ two processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_torchrun(no_dropout_dir, tiny_root, tmp_path):
    """DDP on 2 CPU processes (gloo, ``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``; on GPUs
    ``accelerate launch --multi_gpu`` starts the same processes): each trains half of every global
    batch, the all-reduced gradient is the single-process gradient of the whole batch, evaluation is
    sharded and gathered in order, and one results.json is written."""
    args = ["finetune", "--task", "xnli", "--model", str(no_dropout_dir), "--seeds", "1", "--data-root", str(tiny_root),
            "--languages", "en", "de", "--max-steps", "2", "batch_size=8", "eval_batch_size=2",
            "max_grad_norm=1e9", "learning_rate=1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT),
           "ACCELERATE_USE_CPU": "1"}
    env.pop("VECO2_FAULT", None)
    launch = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(ROOT / "tests" / "launch_finetune.py"), str(tmp_path / "dump"), *args, "--out", str(tmp_path / "ddp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert launch.returncode == 0, launch.stderr[-3000:]
    seed_dir = tmp_path / "ddp" / "xnli" / "seed1"
    assert sorted(p.name for p in (tmp_path / "ddp").rglob("results.json")) == ["results.json"]
    result = json.loads((seed_dir / "results.json").read_text())
    assert result["execution"]["num_processes"] == 2 and result["execution"]["micro_batch_size"] == 4

    with recording() as (_, single):
        run_finetune("xnli", no_dropout_dir, tmp_path / "single", seeds=[1], data_root=tiny_root, languages=["en", "de"],
                     overrides={"max_steps": 2, "batch_size": 8, "max_grad_norm": 1e9, "learning_rate": 1e-3})
    ranks = [torch.load(tmp_path / "dump" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for dump in ranks:
        assert set(dump["train_rows"]) == {4}  # half of every 8-example batch per process
        assert len(dump["grads"]) == 2
        for step in range(2):
            for ddp, full in zip(dump["grads"][step], single[step]):
                torch.testing.assert_close(ddp, full, rtol=1e-4, atol=1e-7)

    # predictions gathered from both processes, in order: those of one process with the same weights
    spec = get_task("xnli")
    hp = resolve_hyperparameters(spec, {"batch_size": 8})
    family = FAMILIES["classification"](spec, AutoTokenizer.from_pretrained(no_dropout_dir), hp)
    model = finetune._load_model(family, no_dropout_dir, 1)
    model.load_state_dict(load_file(seed_dir / "best.safetensors"))
    for lang in ("en", "de"):
        expected = family.prediction_text(family.predict(model, load_split(spec, "test", lang, data_root=tiny_root)))
        assert (seed_dir / "predictions" / "xnli" / f"test-{lang}.tsv").read_text() == expected


class _Echo(torch.nn.Module):
    """"Logits" that are the input ids, so that every output says which feature it belongs to."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": input_ids.float().unsqueeze(-1) + self.weight})()


def _sharded_prediction_worker():
    from accelerate.state import PartialState

    PartialState._reset_state()  # the forked worker starts from the launcher's environment, not the parent's state
    state = families.process_state()
    assert state.num_processes == 2
    torch.set_num_threads(1)
    features = [{"input_ids": list(range(10 * i, 10 * i + 1 + i % 3)), "attention_mask": [1] * (1 + i % 3)}
                for i in range(7)]
    mine = []
    original = _Echo.forward

    def counting(self, input_ids, attention_mask):
        mine.append(int(input_ids.shape[0]))
        return original(self, input_ids, attention_mask)

    _Echo.forward = counting
    outputs = families.forward_batches(_Echo(), features, 2, 0, ["logits"])
    assert [o[0][:, 0].tolist() for o in outputs] == [[float(t) for t in f["input_ids"]] for f in features]
    assert mine == ([2, 2] if state.process_index == 0 else [2, 1])  # batches 0-1 here, 2-3 there


def test_prediction_is_sharded_over_processes_and_gathered_in_order():
    from accelerate import debug_launcher

    debug_launcher(_sharded_prediction_worker, num_processes=2)
