"""Benchmark of ``veco2 data prepare``: pairs/s and peak memory of the whole preparation on the demo
corpus cycled to N pairs, with 1 and more worker processes, each run in a fresh subprocess; and the
cost of dictionary mining against plain tokenization.  ``veco2 bench prepare`` is its command line;
results and how to read them: ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..data.corpus import DEMO_DIR

#: The environment of every timed run: one thread per process.
ONE_THREAD = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "RAYON_RS_NUM_CPUS": "1",
              "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: Monolingual sentences per language (en and de) per parallel pair of the benchmark corpus.
MONO_PER_PAIR = 0.25


def _demo_lines(relative: str) -> list[str]:
    with gzip.open(DEMO_DIR / relative, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def build_corpus(root: Path, pairs: int, lang: str = "de") -> Path:
    """A corpus in the corpus layout: the demo en-``lang`` training pairs cycled to ``pairs`` lines,
    ``MONO_PER_PAIR * pairs`` monolingual lines of en and ``lang``, the demo dictionary."""
    for folder in ("parallel/train", "mono", "dict"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    sources = {f"parallel/train/en-{lang}.tsv": (_demo_lines(f"parallel/train/en-{lang}.tsv.gz"), pairs),
               "mono/en.txt": (_demo_lines("mono/en.txt.gz"), int(pairs * MONO_PER_PAIR)),
               f"mono/{lang}.txt": (_demo_lines(f"mono/{lang}.txt.gz"), int(pairs * MONO_PER_PAIR))}
    for relative, (lines, count) in sources.items():
        with open(root / relative, "w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in itertools.islice(itertools.cycle(lines), count))
    shutil.copy(DEMO_DIR / "dict" / f"en-{lang}.tsv.gz", root / "dict" / f"en-{lang}.tsv.gz")
    return root


def build_tokenizer(out: Path, lang: str = "de", vocab_size: int = 8000) -> Path:
    """The demo scale's tokenizer kind (Unigram, 8000 pieces) trained on the demo's en and ``lang`` text."""
    from ..data.tokenizer import train_unigram_tokenizer

    if not (out / "tokenizer.json").exists():
        train_unigram_tokenizer(_demo_lines("mono/en.txt.gz") + _demo_lines(f"mono/{lang}.txt.gz"),
                                vocab_size=vocab_size, out_dir=out)
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _is_python(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
            return handle.read().startswith("python")
    except (FileNotFoundError, ProcessLookupError):
        return False


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/PID/task/TID/children``)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    todo.extend(int(child) for child in handle.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


class TreeMemory:
    """Peak resident memory of this process and of its whole process tree (the worker processes),
    sampled every ``interval`` seconds from ``/proc`` (Linux): the sum of ``VmRSS`` over the tree at
    each sample, and this process's own ``VmHWM`` (its exact peak)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.tree_peak_kb, self.worker_peak_kb = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            sizes = {pid: _status_kb(pid, "VmRSS") for pid in _tree(me)}
            self.tree_peak_kb = max(self.tree_peak_kb, sum(sizes.values()))
            # workers are the Python children; a short-lived helper (git, for the provenance) is none
            self.worker_peak_kb = max([self.worker_peak_kb, *(kb for pid, kb in sizes.items()
                                                              if pid != me and _is_python(pid))])
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_once(corpus: Path, tokenizer: Path, out: Path, workers: int, chunk_size: int = 50000) -> dict:
    """One whole preparation in this process (call it in a fresh one): wall seconds, this process's
    peak RSS (``VmHWM``), the largest worker's and the process tree's (:class:`TreeMemory`)."""
    from ..config import load_config
    from ..trainer import prepare_data

    cfg = load_config(overrides=[f"data.corpus={corpus}", f"data.tokenizer={tokenizer}", "data.max_length=128",
                                 f"data.prepare_workers={workers}", f"data.prepare_chunk_size={chunk_size}"])
    before_kb = _status_kb(os.getpid(), "VmRSS")
    with TreeMemory() as memory:
        started = time.perf_counter()
        _, shards = prepare_data(cfg, out)
        seconds = time.perf_counter() - started
    shard_bytes = sum(p.stat().st_size for p in (out / "shards").glob("*.np[yz]"))
    main_kb = _status_kb(os.getpid(), "VmHWM")
    return {"seconds": seconds, "pairs": shards.num_bi, "sentences": shards.num_mono, "shard_bytes": shard_bytes,
            "main_rss_before_mb": before_kb / 1024, "main_max_rss_mb": main_kb / 1024,
            "worker_max_rss_mb": memory.worker_peak_kb / 1024,
            "tree_max_rss_mb": max(memory.tree_peak_kb, main_kb) / 1024}


def mining_cost(corpus: Path, tokenizer: Path, pairs: int = 20000, lang: str = "de") -> dict:
    """Seconds to mine ``pairs`` pairs (tokenize both sides + dictionary matching + spans, one
    process) against plain tokenization of the same pairs; ``ratio`` = mining / tokenization."""
    from ..data.corpus import Corpus
    from ..data.synonyms import backend_of, mine_corpus
    from ..data.tokenizer import load_tokenizer

    data = Corpus(corpus)
    sample = list(itertools.islice(data.iter_parallel(lang), pairs))
    miner = data.dictionary(lang)
    backend = backend_of(load_tokenizer(tokenizer))
    started = time.perf_counter()
    for start in range(0, len(sample), 1024):
        batch = sample[start:start + 1024]
        backend.encode_batch([s for s, _ in batch] + [t for _, t in batch], add_special_tokens=False)
    tokenize = time.perf_counter() - started
    started = time.perf_counter()
    for _ in mine_corpus(sample, miner, backend, batch_size=1024, max_length=126):
        pass
    mine = time.perf_counter() - started
    return {"pairs": len(sample), "tokenize_seconds": tokenize, "mine_seconds": mine, "ratio": mine / tokenize}


def run_prepare_benchmark(pairs: list[int], workers: list[int], work_dir: str | Path | None = None,
                          results_dir: str | Path | None = "benchmarks/results", chunk_size: int = 50000,
                          keep: bool = False) -> dict:
    """Prepare the cycled demo corpus of each size in ``pairs`` with each number of ``workers`` (a fresh
    subprocess per run); returns (and writes as JSON to ``results_dir``) the measurements."""
    work = Path(work_dir) if work_dir else Path(os.environ.get("TMPDIR", "/tmp")) / f"veco2-bench-prepare-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(work / "tokenizer")
    runs = []
    for n in pairs:
        corpus = build_corpus(work / f"corpus-{n}", n)
        for w in workers:
            out = work / f"out-{n}-{w}"
            shutil.rmtree(out, ignore_errors=True)
            # One thread per process (the in-process tokenizer too): N workers = N cores, so the runs
            # measure how preparation scales with workers, not the tokenizer's own thread pool.
            env = {**os.environ, **ONE_THREAD}
            proc = subprocess.run([sys.executable, "-m", "veco2.bench.prepare", str(corpus), str(tokenizer), str(out),
                                   str(w), str(chunk_size)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"prepare of {n} pairs with {w} workers failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run.update(target_pairs=n, workers=w, pairs_per_s=run["pairs"] / run["seconds"],
                       records_per_s=(run["pairs"] + run["sentences"]) / run["seconds"],
                       shard_bytes_per_pair=run["shard_bytes"] / run["pairs"])
            runs.append(run)
            print(_row(run), flush=True)
            if not keep:
                shutil.rmtree(out, ignore_errors=True)
        if not keep:
            shutil.rmtree(corpus, ignore_errors=True)
    cost = mining_cost(build_corpus(work / "corpus-mining", 20000), tokenizer)
    result = {"runs": runs, "mining": cost, "mono_per_pair": MONO_PER_PAIR, "chunk_size": chunk_size,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "targets": _targets(runs, cost)}
    if results_dir is not None:
        path = Path(results_dir) / f"prepare-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        result["path"] = str(path)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _targets(runs: list[dict], cost: dict) -> dict:
    """The issue's targets: peak RSS +<20 % from the smallest to the largest corpus (per worker count);
    the most workers >= 1.6x the pairs/s of 1 (at the largest corpus); mining <= 2x tokenization."""
    out: dict = {"mining_at_most_2x_tokenization": cost["ratio"] <= 2.0}
    sizes = sorted({r["target_pairs"] for r in runs})
    for w in sorted({r["workers"] for r in runs}):
        by_size = {r["target_pairs"]: r for r in runs if r["workers"] == w}
        growth = by_size[sizes[-1]]["tree_max_rss_mb"] / by_size[sizes[0]]["tree_max_rss_mb"] - 1
        out[f"rss_growth_{sizes[0]}_to_{sizes[-1]}_workers_{w}"] = round(growth, 3)
        out[f"rss_growth_under_20pct_workers_{w}"] = growth < 0.2
    largest = {r["workers"]: r for r in runs if r["target_pairs"] == sizes[-1]}
    if 1 in largest and len(largest) > 1:
        most = max(largest)
        speedup = largest[most]["pairs_per_s"] / largest[1]["pairs_per_s"]
        out[f"speedup_{most}_workers"] = round(speedup, 2)
        out[f"speedup_{most}_workers_at_least_1.6x"] = speedup >= 1.6
    return out


HEADER = (f"{'pairs':>9} {'workers':>7} {'seconds':>8} {'pairs/s':>8} {'records/s':>9} {'main RSS MB':>11} "
          f"{'worker RSS MB':>13} {'tree RSS MB':>11} {'shard B/pair':>12}")


def _row(run: dict) -> str:
    return (f"{run['pairs']:>9} {run['workers']:>7} {run['seconds']:>8.1f} {run['pairs_per_s']:>8.0f} "
            f"{run['records_per_s']:>9.0f} {run['main_max_rss_mb']:>11.0f} {run['worker_max_rss_mb']:>13.0f} "
            f"{run['tree_max_rss_mb']:>11.0f} {run['shard_bytes_per_pair']:>12.0f}")


def format_table(result: dict) -> str:
    lines = [HEADER, *(_row(r) for r in result["runs"])]
    m = result["mining"]
    lines.append(f"mining {m['pairs']} pairs: {m['mine_seconds']:.2f} s, plain tokenization {m['tokenize_seconds']:.2f} s, "
                 f"ratio {m['ratio']:.2f}")
    lines.append("targets: " + ", ".join(f"{k}={v}" for k, v in result["targets"].items()))
    return "\n".join(lines)


if __name__ == "__main__":  # one run, in the fresh process run_prepare_benchmark starts
    corpus_arg, tokenizer_arg, out_arg, workers_arg, chunk_arg = sys.argv[1:6]
    print(json.dumps(run_once(Path(corpus_arg), Path(tokenizer_arg), Path(out_arg), int(workers_arg), int(chunk_arg))))
