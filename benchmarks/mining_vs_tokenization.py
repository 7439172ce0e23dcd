"""Benchmark: dictionary-synonym mining vs plain batched tokenization of the same parallel pairs.

Both passes run in one process, on the same pairs, with the same tokenizer and batch size:

- ``tokenize``: for each batch, one ``encode_batch`` call over both sides (no special tokens) and the
  ids of every encoding materialised as Python lists -- what any pre-processing must do anyway;
- ``mine``: :func:`veco2.data.synonyms.mine_corpus` -- the same tokenization plus dictionary matching
  and character -> subword span mapping (encoding on a helper thread while matching, the default);
- ``mine_no_overlap``: the same with ``overlap=False`` (encode, then match).

The passes alternate (tokenize, mine, mine_no_overlap, then reversed, ...) for ``--repeats`` rounds; the medians,
pairs/s and the ratio mining / tokenization (target <= 2) are printed as JSON, together with the share
of pairs with at least one match and the matches per pair of each language (on its distinct pairs).
Process CPU time (all threads) is reported beside wall time: on a shared, busy machine the wall-time
ratio swings with the other load, the CPU-time ratio much less.

Pairs: the demo corpus (``veco2/demo_data/parallel/<split>/en-LANG.tsv.gz`` with the dictionaries
``dict/en-LANG.tsv.gz``), each language cycled in proportion to its size up to ``--pairs`` in total.
Tokenizer: ``--tokenizer`` (a saved directory or hub name) or, by default, a Unigram tokenizer trained
here on the demo monolingual text (``--vocab-size``).

    python benchmarks/mining_vs_tokenization.py                 # 200k pairs
    python benchmarks/mining_vs_tokenization.py --pairs 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from veco2.data.synonyms import MiningStats, SynonymMiner, backend_of, mine_corpus  # noqa: E402
from veco2.data.tokenizer import load_tokenizer, train_unigram_tokenizer  # noqa: E402
from veco2.fileio import iter_lines  # noqa: E402


def read_pairs(path: Path) -> list[tuple[str, str]]:
    pairs, skipped = [], 0
    for _, line in iter_lines(path):
        fields = line.split("\t")
        if len(fields) == 2 and fields[0] and fields[1]:
            pairs.append((fields[0], fields[1]))
        else:
            skipped += 1
    if skipped:
        print(f"{path}: skipped {skipped} lines without two fields", file=sys.stderr)
    return pairs


def cycled(pairs: list, n: int) -> list:
    return list(itertools.islice(itertools.cycle(pairs), n))


def tokenize_only(backend, pairs, batch_size: int) -> int:
    tokens = 0
    for i in range(0, len(pairs), batch_size):
        batch = pairs[i : i + batch_size]
        encodings = backend.encode_batch([s for s, _ in batch] + [t for _, t in batch], add_special_tokens=False)
        for encoding in encodings:
            tokens += len(encoding.ids)
    return tokens


def mine_all(per_language, tokenizer, batch_size: int, num_workers: int, overlap: bool) -> int:
    tokens = 0
    for miner, pairs in per_language:
        mined_pairs = mine_corpus(pairs, miner, tokenizer, batch_size=batch_size, num_workers=num_workers, overlap=overlap)
        for mined in mined_pairs:
            tokens += len(mined.src_ids) + len(mined.tgt_ids)
    return tokens


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "veco2" / "demo_data")
    parser.add_argument("--split", default="train")
    parser.add_argument("--languages", nargs="*", help="default: every en-LANG pair with a dictionary")
    parser.add_argument("--pairs", type=int, default=200_000, help="total pairs timed (cycled corpus)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--tokenizer", help="saved tokenizer directory or hub name; default: train one")
    parser.add_argument("--vocab-size", type=int, default=16_000)
    parser.add_argument("--train-lines", type=int, default=4000, help="monolingual lines per language")
    parser.add_argument("--save-tokenizer", type=Path, help="keep the trained tokenizer in this directory")
    args = parser.parse_args(argv)

    languages = args.languages or sorted(
        p.name[3:].split(".")[0]
        for p in (args.data / "parallel" / args.split).glob("en-*.tsv.gz")
        if (args.data / "dict" / p.name).exists()
    )
    corpora = {lang: read_pairs(args.data / "parallel" / args.split / f"en-{lang}.tsv.gz") for lang in languages}
    miners = {lang: SynonymMiner.from_tsv(args.data / "dict" / f"en-{lang}.tsv.gz", "en", lang) for lang in languages}

    started = time.perf_counter()
    if args.tokenizer:
        tokenizer, tokenizer_name = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        texts = []
        for lang in ["en", *languages]:
            mono = args.data / "mono" / f"{lang}.txt.gz"
            texts += [line for _, line in itertools.islice(iter_lines(mono), args.train_lines)]
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = train_unigram_tokenizer(texts, args.vocab_size, args.save_tokenizer or tmp)
        tokenizer_name = f"unigram trained on {len(texts)} demo mono lines, vocab {len(tokenizer)}"
    tokenizer_seconds = time.perf_counter() - started
    backend = backend_of(tokenizer)

    # Per-language statistics on the distinct pairs.
    per_language_stats = {}
    for lang in languages:
        stats = MiningStats()
        for _ in mine_corpus(corpora[lang], miners[lang], tokenizer, batch_size=args.batch_size, stats=stats):
            pass
        per_language_stats[lang] = {
            **stats.as_dict(),
            "dictionary_entries": len(miners[lang]),
            "tgt_segmentation": "chars" if miners[lang].tgt.unspaced else "space",
        }

    total = sum(len(c) for c in corpora.values())
    shares = {lang: round(args.pairs * len(corpora[lang]) / total) for lang in languages}
    per_language = [(miners[lang], cycled(corpora[lang], shares[lang])) for lang in languages]
    all_pairs = [pair for _, pairs in per_language for pair in pairs]
    n_pairs = len(all_pairs)

    passes = ("tokenize", "mine", "mine_no_overlap")
    times = {name: [] for name in passes}
    cpu = {name: [] for name in passes}  # process CPU time, all threads: robust to a busy machine
    tokens = {}
    for repeat in range(args.repeats):
        order = passes if repeat % 2 == 0 else passes[::-1]
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "tokenize":
                tokens[name] = tokenize_only(backend, all_pairs, args.batch_size)
            else:
                overlap = name == "mine"
                tokens[name] = mine_all(per_language, tokenizer, args.batch_size, args.num_workers, overlap)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    if len(set(tokens.values())) != 1:
        raise SystemExit(f"token counts differ: {tokens}")

    median = {name: statistics.median(values) for name, values in times.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    result = {
        "benchmark": "mining_vs_tokenization",
        "pairs": n_pairs,
        "languages": languages,
        "split": args.split,
        "tokens_per_pass": tokens["tokenize"],
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "repeats": args.repeats,
        "tokenizer": tokenizer_name,
        "tokenizer_setup_s": round(tokenizer_seconds, 2),
        "seconds": {name: [round(v, 3) for v in values] for name, values in times.items()},
        "median_s": {name: round(v, 3) for name, v in median.items()},
        "pairs_per_s": {name: round(n_pairs / v) for name, v in median.items()},
        "ratio_mine_over_tokenize": round(median["mine"] / median["tokenize"], 3),
        "ratio_mine_no_overlap_over_tokenize": round(median["mine_no_overlap"] / median["tokenize"], 3),
        "cpu_seconds": {name: [round(v, 3) for v in values] for name, values in cpu.items()},
        "median_cpu_s": {name: round(v, 3) for name, v in median_cpu.items()},
        "cpu_ratio_mine_over_tokenize": round(median_cpu["mine"] / median_cpu["tokenize"], 3),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        "target_ratio": 2.0,
        "per_language": per_language_stats,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
        },
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
