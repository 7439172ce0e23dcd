"""The cheap proxy evaluation of a trial's encoder, each term in percent (0-100).

``retrieval`` (held-out dev-pair retrieval, the trainer's own check), ``word_translation``
(:func:`word_translation_accuracy`: dictionary words embedded in their sentences) and ``xnli`` (the
English dev accuracy of a quick fine-tune).  The proxy is their weighted mean (:func:`combine`);
:class:`Evaluator` reads the data once per worker.  Definitions: docs/sweeps.md.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import Config
from ..errors import Veco2Error
from ..probes import WordItem, word_items, word_translation_accuracy  # noqa: F401 -- re-exported
from .spec import ProxyWeights, Sweep

log = logging.getLogger(__name__)

#: Proxy terms, in the order they are computed (the fields of ProxyWeights).
PROXY_TERMS = tuple(f.name for f in dataclasses.fields(ProxyWeights))
#: Terms cheap enough to compute at every intermediate report.
CHEAP_TERMS = ("retrieval", "word_translation")


class _CachedCorpus:
    """Dev pairs and dictionary miners read once per worker (every trial evaluates the same ones)."""

    def __init__(self, root: str):
        from ..data.corpus import Corpus

        self.corpus = Corpus(root)
        self._pairs: dict[str, list] = {}

    def parallel(self, lang: str, split: str = "dev") -> list[tuple[str, str]]:
        if (lang, split) not in self._pairs:
            self._pairs[(lang, split)] = self.corpus.parallel(lang, split)
        return self._pairs[(lang, split)]

    def dictionary_path(self, lang: str):
        return self.corpus.dictionary_path(lang)


def combine(terms: dict[str, float | None], weights: dict[str, float]) -> float:
    """The proxy ``Σ w_k s_k / Σ w_k`` over terms with ``w_k > 0`` and a value (percent)."""
    used = [(weights.get(k, 0.0), v) for k, v in terms.items() if weights.get(k, 0.0) > 0 and v is not None]
    if not used:
        raise Veco2Error(f"no proxy term could be computed (terms {terms}, weights {weights})")
    return sum(w * v for w, v in used) / sum(w for w, _ in used)


class Evaluator:
    """Computes the proxy terms of a trial's encoder; data read once per worker."""

    def __init__(self, sweep: Sweep, cfg: Config, tokenizer, languages: list[str]):
        from ..data.batching import SpecialTokens

        self.sweep, self.tokenizer, self.languages = sweep, tokenizer, languages
        self.pairs = sweep.settings.proxy.pairs
        self.weights = sweep.settings.proxy.weights.as_dict()
        self.corpus = _CachedCorpus(cfg.data.corpus)
        self.special = SpecialTokens.of(tokenizer)
        self.pooling = cfg.evaluation.retrieval_pooling
        self.items = {}
        if self.weights.get("word_translation", 0) > 0:
            self.items = {lang: word_items(self.corpus, lang, tokenizer, self.pairs, cfg.data.max_length)
                          for lang in languages}
            counts = {lang: len(v) for lang, v in self.items.items()}
            log.info("word-translation items per language: %s", counts)
            if all(n < 2 for n in counts.values()):
                raise Veco2Error(f"proxy word_translation: fewer than 2 dictionary words found in the first "
                                 f"{self.pairs} dev pairs of every language ({counts}); raise proxy.pairs or set "
                                 "proxy.weights.word_translation to 0")

    def layer(self, cfg: Config, num_layers: int) -> int:
        from ..xtreme.retrieval_run import default_layer

        layer = cfg.evaluation.retrieval_layer
        return layer if layer is not None else default_layer(num_layers)

    def cheap_terms(self, mlm_encoder, cfg: Config, weights: dict[str, float],
                    retrieval: float | None = None) -> dict[str, float | None]:
        """The cheap terms with a weight > 0 in ``weights``, of an ``XLMRobertaForMaskedLM``
        (``retrieval`` may be given: the trainer's summary already holds it)."""
        from ..trainer import heldout_retrieval

        layer = self.layer(cfg, mlm_encoder.config.num_hidden_layers)
        terms: dict[str, float | None] = {}
        if weights.get("retrieval", 0) > 0:
            if retrieval is None:
                retrieval = heldout_retrieval(mlm_encoder.roberta, self.tokenizer, self.corpus, self.languages, layer,
                                              self.pooling, self.pairs).get("mean")
            terms["retrieval"] = retrieval
        if weights.get("word_translation", 0) > 0:
            scores = [word_translation_accuracy(mlm_encoder.roberta, items, layer, self.special)
                      for items in self.items.values()]
            scores = [s for s in scores if s is not None]
            terms["word_translation"] = sum(scores) / len(scores) if scores else None
        return terms

    def xnli(self, model_dir: Path, out_dir: Path, seed: int) -> float:
        """English dev accuracy of a quick XNLI fine-tune of ``model_dir`` (veco2.xtreme.finetune)."""
        from ..xtreme.finetune import run_finetune

        x = self.sweep.settings.proxy.xnli
        results = run_finetune("xnli", model_dir, out_dir, seeds=(seed,), data_root=x.data_root,
                               languages=["en"],
                               overrides={"max_steps": x.max_steps, "max_train_examples": x.max_train_examples,
                                          "batch_size": x.batch_size, "learning_rate": x.learning_rate,
                                          "eval_steps": x.max_steps})
        return float(results[0]["selection"]["best_dev_score"])
