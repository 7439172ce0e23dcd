"""Alignment probes of a pre-trained encoder: word translation from contextual embeddings.

A dictionary word pair found in a held-out (dev) sentence pair is embedded in its own sentences
(mean of the word's subword vectors at a layer); each source word retrieves its nearest target word
by cosine among all the language's items, and the reverse.  :func:`word_translation_probe` keeps
only the dictionary entries that never were a synonym pair of the training shards
(:func:`trained_word_pairs`, ``word_items(exclude=...)``), so the token-level loss
never pulled them together: the probe measures alignment that generalises, not a memorised pair
(the word-level evaluation of XLM-Align, Chi et al. 2021, arXiv 2106.06381, and of cross-lingual
word retrieval in general).  Used by the trainer's summary (per layer) and the sweeps' proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class WordItem:
    """One dictionary word pair in one dev sentence pair: token ids of each side (no special tokens)
    and the subword spans of the two words (end exclusive)."""

    src_ids: list[int]
    tgt_ids: list[int]
    src_span: tuple[int, int]
    tgt_span: tuple[int, int]

    @property
    def src_word(self) -> tuple[int, ...]:
        return tuple(self.src_ids[self.src_span[0]:self.src_span[1]])

    @property
    def tgt_word(self) -> tuple[int, ...]:
        return tuple(self.tgt_ids[self.tgt_span[0]:self.tgt_span[1]])


def word_items(corpus, lang: str, tokenizer, pairs: int, max_length: int, max_words: int = 200,
               exclude: set | None = None) -> list[WordItem]:
    """Dictionary word pairs found in the first ``pairs`` dev pairs of en-``lang``.

    Matching is :class:`veco2.data.synonyms.SynonymMiner` (the token loss's own dictionary matcher).
    One item per distinct (source word, target word) subword pair -- its first occurrence -- up to
    ``max_words``, leaving out the pairs in ``exclude``; a language without a dictionary gives none.
    """
    from .data.synonyms import SynonymMiner, mine_corpus

    path = corpus.dictionary_path(lang)
    if path is None:
        return []
    miner = SynonymMiner.from_file(path, "en", lang)
    items, seen = [], set(exclude or ())
    for mined in mine_corpus(corpus.parallel(lang, "dev")[:pairs], miner, tokenizer, max_length=max_length):
        for s0, s1, t0, t1 in mined.spans:
            item = WordItem(mined.src_ids, mined.tgt_ids, (s0, s1), (t0, t1))
            key = (item.src_word, item.tgt_word)
            if key not in seen:
                seen.add(key)
                items.append(item)
            if len(items) >= max_words:
                return items
    return items


def trained_word_pairs(shards, lang_id: int) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The (source word, target word) subword pairs of language ``lang_id`` that the training shards
    hold as synonym spans: what the token-level loss trained on."""
    pairs = set()
    for i in np.flatnonzero(np.asarray(shards.languages("bi")) == lang_id):
        src, tgt, spans = shards.bi(int(i))
        for s0, s1, t0, t1 in spans.tolist():
            pairs.add((tuple(src[s0:s1].tolist()), tuple(tgt[t0:t1].tolist())))
    return pairs


def word_vectors(encoder, ids_and_spans: list[tuple[list[int], tuple[int, int]]], layers: list[int], bos: int,
                 eos: int, pad: int, batch_size: int = 64):
    """``{layer: [n, H]}`` L2-normalised mean of each word's subword vectors at ``layer``, with its
    sentence as context (``<s> ids </s>``); one forward pass per batch for every layer."""
    import torch

    vectors: dict[int, list] = {layer: [] for layer in layers}
    device = next(encoder.parameters()).device
    for start in range(0, len(ids_and_spans), batch_size):
        chunk = ids_and_spans[start:start + batch_size]
        length = max(len(ids) for ids, _ in chunk) + 2
        input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for i, (ids, _) in enumerate(chunk):
            row = [bos, *ids, eos]
            input_ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        hidden = encoder(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                         output_hidden_states=True).hidden_states
        for layer in layers:
            for i, (_, (s0, s1)) in enumerate(chunk):
                vectors[layer].append(hidden[layer][i, 1 + s0:1 + s1].float().mean(0))  # +1: the <s> in front
    return {layer: torch.nn.functional.normalize(torch.stack(v), dim=-1) for layer, v in vectors.items()}


def word_translation_correct(encoder, items: list[WordItem], layers: list[int], special) -> dict[int, np.ndarray]:
    """Per layer, ``[n, 2]`` 0/1: whether item ``i``'s source word retrieves a target of the same word
    (same subword sequence, so repeated target words are not counted wrong; ties: the lowest index)
    and the reverse.  Items need at least 2 of them."""
    import torch

    with torch.no_grad():
        was_training = encoder.training
        encoder.eval()
        src = word_vectors(encoder, [(it.src_ids, it.src_span) for it in items], layers, special.bos, special.eos,
                           special.pad)
        tgt = word_vectors(encoder, [(it.tgt_ids, it.tgt_span) for it in items], layers, special.bos, special.eos,
                           special.pad)
        encoder.train(was_training)
    tgt_words = [it.tgt_word for it in items]
    src_words = [it.src_word for it in items]
    out = {}
    for layer in layers:
        sim = src[layer] @ tgt[layer].T
        forward, backward = sim.argmax(dim=1).tolist(), sim.argmax(dim=0).tolist()
        out[layer] = np.array([[tgt_words[j] == tgt_words[i], src_words[k] == src_words[i]]
                               for i, (j, k) in enumerate(zip(forward, backward))], dtype=np.float64)
    return out


def word_translation_accuracy(encoder, items: list[WordItem], layer: int, special) -> float | None:
    """Word-translation accuracy (percent) at ``layer``, both directions averaged
    (:func:`word_translation_correct`); None when fewer than 2 items."""
    if len(items) < 2:
        return None
    return 100.0 * float(word_translation_correct(encoder, items, [layer], special)[layer].mean())


def word_translation_probe(encoder, tokenizer, corpus, shards, languages: list[str], layers: list[int],
                           pairs: int, max_length: int, max_words: int) -> dict:
    """The word-translation probe of a pre-trained encoder on held-out dictionary entries, for the
    run's summary: ``{"by_layer": {layer: {lang: percent, "mean": ...}}, "items": {lang: n},
    "correct": {layer: {lang: [[source→target, target→source], ...]}}}`` (the 0/1 rows are what the
    report's paired bootstrap resamples).  A language with fewer than 2 held-out items is left out."""
    from types import SimpleNamespace

    special = SimpleNamespace(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    ids = {lang: i for i, lang in enumerate(shards.manifest["languages"])}
    by_layer: dict[int, dict[str, float]] = {layer: {} for layer in layers}
    correct: dict[int, dict[str, list]] = {layer: {} for layer in layers}
    counts = {}
    for lang in languages:
        items = word_items(corpus, lang, tokenizer, pairs, max_length, max_words,
                           exclude=trained_word_pairs(shards, ids[lang]))
        if len(items) < 2:
            continue
        counts[lang] = len(items)
        for layer, rows in word_translation_correct(encoder, items, layers, special).items():
            by_layer[layer][lang] = 100.0 * float(rows.mean())
            correct[layer][lang] = rows.astype(int).tolist()
    for scores in by_layer.values():
        if scores:
            scores["mean"] = sum(scores.values()) / len(scores)
    return {"items": counts, "by_layer": {str(k): v for k, v in by_layer.items()},
            "correct": {str(k): v for k, v in correct.items()}}
