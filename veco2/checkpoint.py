"""Rolling training checkpoints that work the same on one process, DDP and FSDP.

A checkpoint ``root/step-N`` holds the model (``model.safetensors``), the optimizer
(``optimizer.pt``) and ``trainer_state.json`` (step counters, data position, scheduler).  Model
and optimizer states are *full* (unsharded) state dicts keyed by parameter names, gathered with
``torch.distributed.checkpoint.state_dict`` — the one API that understands plain modules, DDP
and FSDP (1 and 2) alike — so a checkpoint written by 8 sharded GPUs resumes on 1 CPU and back.

Gathering is collective: under DDP/FSDP every process calls :func:`save_checkpoint` and
:func:`gather_model_state`; only the main process (rank 0) receives the tensors and writes.
Loading happens after ``accelerator.prepare`` (FSDP shards the parameters there), every process
reading the same files.  Full state dicts need the whole model in CPU memory of rank 0, which
is right for the sizes veco2 trains (``large`` ≈ 560M parameters); sharded DCP checkpoints for
far larger models are not implemented.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .errors import Veco2Error
from .fileio import fault_point, read_json, remove_stale_temporaries, write_json


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _options(**extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload gathers onto rank 0 only; it needs a process group, and one process needs no gathering.
    return StateDictOptions(full_state_dict=True, cpu_offload=_distributed(), **extra)


def _is_main() -> bool:
    return not _distributed() or torch.distributed.get_rank() == 0


def tied_aliases(model: torch.nn.Module) -> dict[str, str]:
    """Names of parameters that are another parameter (tied embedding / decoder), alias -> name kept.

    safetensors refuses two names for one tensor, and a gathered state dict holds them as copies;
    the file keeps one, and loading restores the alias from it.
    """
    model = getattr(model, "module", model)  # DDP's wrapper adds a "module." prefix
    first: dict[int, str] = {}
    aliases = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(param), name)
        if kept != name:
            aliases[name] = kept
    return aliases


def gather_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full model state dict, on CPU on the main process (``{}`` on the others). Collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_options())
    return {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.tmp`` = interrupted while writing).

    Listing them is the first thing a resuming run does, so on the main process this also removes
    what interrupted saves left in ``root`` (:func:`remove_interrupted_saves`); every save
    publishes its checkpoint before it lists them, so no save in progress is ever removed.
    """
    if _is_main():
        remove_interrupted_saves(root)
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))


def remove_interrupted_saves(root: Path) -> list[str]:
    """Delete the ``step-N.tmp`` directories and atomic-write temporaries that a killed
    :func:`save_checkpoint` left in ``root``; returns their names.  Main process only, with no save
    in progress (a resuming run holds its output directory's lock)."""
    removed = []
    for stale in sorted(root.glob("step-*.tmp")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale.name)
    return removed + remove_stale_temporaries(root)


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, optimizer, scheduler, state: dict, keep: int) -> Path:
    """Write ``root/step-N`` atomically (a ``.tmp`` directory renamed when complete).

    Every process must call it (the gathering is collective); the main process writes.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    model_state = gather_model_state(model)
    for alias in tied_aliases(model):
        model_state.pop(alias, None)
    optimizer_state = get_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), options=_options())
    final = root / f"step-{step:09d}"
    if not _is_main():
        return final
    tmp = root / f"step-{step:09d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save(optimizer_state, tmp / "optimizer.pt")
    fault_point(f"checkpoint:{step}")  # crash tests: killed half-way through a checkpoint
    write_json(tmp / "trainer_state.json", {**state, "scheduler": scheduler.state_dict()})
    for handle in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(handle, "rb") as f:
            os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> dict:
    """Restore model, optimizer and scheduler from ``path``; returns the trainer state.

    Call it on every process, after ``accelerator.prepare`` (each process reads the full state
    and keeps its shard).
    """
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    try:
        model_state = load_file(str(path / "model.safetensors"))
        for alias, kept in tied_aliases(model).items():
            if kept in model_state:
                model_state[alias] = model_state[kept]
        try:
            missing, unexpected = set_model_state_dict(model, model_state, options=_options(strict=False))
        except RuntimeError as err:
            if "size mismatch" not in str(err):
                raise
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
            raise Veco2Error(f"{path}/model.safetensors: checkpoint of another architecture ({first})") from None
        if missing or unexpected:
            raise Veco2Error(f"{path}/model.safetensors: checkpoint of another architecture "
                             f"(missing {len(missing)}, unexpected {len(unexpected)} tensors; e.g. "
                             f"{(list(missing) + list(unexpected))[0]})")
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
        set_optimizer_state_dict(model, getattr(optimizer, "optimizer", optimizer), optimizer_state, options=_options())
    except Veco2Error:
        raise
    except Exception as err:  # truncated or corrupt files
        raise Veco2Error(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         "delete it to resume from the previous one") from None
    state = read_json(path / "trainer_state.json")
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def export_encoder(encoder, state_dict: dict[str, torch.Tensor], tokenizer, model_dir: Path) -> None:
    """Write the encoder (MLM model) in Hugging Face format from its full ``state_dict``, atomically.

    ``state_dict`` comes from :func:`gather_model_state` (keys without the wrapper's prefix), so
    weights held as FSDP shards are saved whole.  Main process only.
    """
    tmp_dir = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    encoder.save_pretrained(tmp_dir, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp_dir)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp_dir, model_dir)
