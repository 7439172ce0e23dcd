"""How ``veco2 bench`` times systems: interleaved rounds of training steps (:func:`compare`), the
device's peak FLOP/s for MFU, peak-memory probes in child processes and the description of the
device that every result records."""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from ..errors import Veco2Error
from ..model import flops_per_token
from ..trainer import PEAK_FLOPS
from .systems import System, SystemSpec, load_data


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_steps(system: System, steps: int) -> dict[str, float]:
    _sync(system.device)
    started = time.perf_counter()
    totals = {"tokens": 0, "positions": 0, "real_positions": 0, "main_positions": 0, "masked": 0, "span_x_tokens": 0.0}
    for _ in range(steps):
        for key, value in system.step().items():
            totals[key] += value
    _sync(system.device)
    totals["seconds"] = time.perf_counter() - started
    return totals


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def compare(specs: list[SystemSpec], args) -> dict:
    """Build every system, warm up, then alternate them for ``args.repeats`` rounds.

    Every system is built once and warmed up (``args.warmup`` steps, not timed); then in each round
    each system runs ``args.steps`` training steps, the order of the systems reversed every other
    round, so slow drifts of a shared machine hit all of them alike.  A step is the whole thing:
    building the batch from the memory-mapped shards, host→device copy, forward, backward, gradient
    clipping and the optimizer step (on GPU it ends with a synchronisation).  Every system draws the
    same instances at every step (the sampler without length bucketing), so per-round ratios compare
    the same work.  Reported per system, medians over rounds: ``tokens_per_s`` (non-pad tokens of
    the main MLM/TLM pass; a second, clean encoding of the same tokens is not counted again),
    ``padding_share`` (padded / all positions of every encoder pass), ``mfu`` on GPU
    (``flops_per_token × tokens_per_s / peak``, PaLM's model FLOPs utilisation, arXiv 2204.02311
    appendix B, with the mean attention span of a token: its own sequence, also when packed) and
    ``peak_memory_mib`` (``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak RSS of a child
    process that builds the system alone, since one process cannot separate the systems' memory).
    """
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _compare(specs, args)
    finally:
        torch.set_num_threads(threads)


def _compare(specs: list[SystemSpec], args) -> dict:
    device = resolve_device(args.device)
    shards, special = load_data(args)
    systems = [System(spec, args, shards, special, device) for spec in specs]
    for system in systems:
        run_steps(system, args.warmup)
    rounds: dict[str, list[dict]] = {s.spec.label: [] for s in systems}
    for r in range(args.repeats):
        order = systems if r % 2 == 0 else systems[::-1]
        for system in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result = run_steps(system, args.steps)
            if device.type == "cuda":
                result["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            rounds[system.spec.label].append(result)
        print(f"round {r + 1}/{args.repeats}: " + ", ".join(
            f"{label} {rs[-1]['tokens'] / rs[-1]['seconds']:.0f} tok/s" for label, rs in rounds.items()), flush=True)

    peak = peak_flops(device, args.peak_flops)
    results = {}
    for system in systems:
        rs = rounds[system.spec.label]
        tokens = sum(x["tokens"] for x in rs)
        masked_share = sum(x["masked"] for x in rs) / max(tokens, 1)
        span = sum(x["span_x_tokens"] for x in rs) / max(tokens, 1)
        head_share = masked_share if system.cfg.model.sparse_mlm_head else \
            sum(x["main_positions"] for x in rs) / max(tokens, 1)  # the full head: every main-pass position
        fpt = flops_per_token(system.encoder, span, head_share)
        tps = statistics.median(x["tokens"] / x["seconds"] for x in rs)
        entry = {
            "kind": system.spec.kind, "variant": system.spec.variant, "overrides": system.spec.overrides,
            "options": system.options,
            "tokens_per_s": tps,
            "steps_per_s": statistics.median(args.steps / x["seconds"] for x in rs),
            "tokens_per_s_rounds": [x["tokens"] / x["seconds"] for x in rs],
            "padding_share": 1 - sum(x["real_positions"] for x in rs) / sum(x["positions"] for x in rs),
            "mean_tokens_per_step": tokens / (len(rs) * args.steps),
            "masked_share": masked_share, "mean_attention_span": span,
            "flops_per_token": fpt,
            "mfu": fpt * tps / peak if peak else None,
        }
        if device.type == "cuda":
            entry["peak_memory_mib"] = max(x["peak_memory_mib"] for x in rs)
        results[system.spec.label] = entry
    if device.type != "cuda" and not args.no_memory:
        for system in systems:
            results[system.spec.label]["peak_memory_mib"] = child_peak_rss(system.spec, args)
    return {"device": device_description(device), "peak_flops": peak, "systems": results}


def peak_rss_mib() -> float:
    """Peak resident memory of this process's address space (``VmHWM``; reset at exec, unlike
    ``ru_maxrss``, which a spawned child inherits from its parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_probe(spec: SystemSpec, args, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    shards, special = load_data(args)
    system = System(spec, args, shards, special, device)
    run_steps(system, max(2, args.steps))
    queue.put(peak_rss_mib())


def child_peak_rss(spec: SystemSpec, args) -> float:
    """Peak RSS (MiB) of a fresh process that builds ``spec`` alone and runs a few steps."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_rss_probe, args=(spec, args, queue))
    process.start()
    value = queue.get(timeout=3600)
    process.join()
    return float(value)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise Veco2Error(f"--device {name}: no CUDA device here")
    return torch.device(name)


def device_description(device: torch.device) -> dict:
    info = {"type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def ratio_rounds(result: dict, numerator: str, denominator: str) -> float:
    """Median over rounds of the per-round ratio (both systems timed in the same round)."""
    a = result["systems"][numerator]["tokens_per_s_rounds"]
    b = result["systems"][denominator]["tokens_per_s_rounds"]
    return statistics.median(x / y for x, y in zip(a, b))


def retrieval_child(n: int, dim: int, k: int, chunk: int, seed: int, queue) -> None:
    """``veco2 bench retrieval`` in a spawned child: margin mining of n × n random vectors, its time
    and peak RSS."""
    from ..xtreme.retrieval import mine

    generator = torch.Generator().manual_seed(seed)
    src = torch.randn(n, dim, generator=generator)
    tgt = src + 0.5 * torch.randn(n, dim, generator=generator)  # noisy copies: half of them mined back
    started = time.perf_counter()
    candidates = mine(src, tgt, k=k, chunk_size=chunk)
    seconds = time.perf_counter() - started
    correct = sum(s == t for s, t, _ in candidates[:n])
    queue.put({"seconds": seconds, "candidates": len(candidates), "correct_in_top_n": int(correct),
               "peak_rss_mib": peak_rss_mib(),
               "vectors_mib": 2 * n * dim * 4 / 2**20})
