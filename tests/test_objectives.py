"""Tests for veco2.objectives against loop-based reference computations (float64)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from veco2.objectives import (
    MaskedLM,
    SequenceContrastive,
    TokenContrastive,
    combine_losses,
    drop_masked_positions,
    mask_tokens,
    momentum_update,
    pool,
)

DT = torch.float64


def close(a, b, tol=1e-9):
    a, b = torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT)
    return torch.allclose(a, b, atol=tol, rtol=tol)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def assert_same_value_and_grads(loss, ref, tensors):
    assert close(loss, ref), (float(loss), float(ref))
    for g, g_ref in zip(grads(loss, tensors), grads(ref, tensors)):
        if g is None or g_ref is None:  # unused by both (e.g. tgt in one-way queue mode)
            assert g is None and g_ref is None
            continue
        assert torch.allclose(g, g_ref, atol=1e-9, rtol=1e-7)


# -- loop-based reference building blocks ------------------------------------------------------


def ref_cos(u, v):
    dot = sum(u[i] * v[i] for i in range(u.shape[0]))
    return dot / (torch.sqrt(sum(u[i] ** 2 for i in range(u.shape[0])))
                  * torch.sqrt(sum(v[i] ** 2 for i in range(v.shape[0]))))


def ref_info_nce(positive_logit, negative_logits):
    """-log( e^pos / (e^pos + Σ e^neg) ) written out."""
    denom = torch.exp(positive_logit)
    for s in negative_logits:
        denom = denom + torch.exp(s)
    return -(positive_logit - torch.log(denom))


def ref_pool(hidden, mask, mode):
    vectors = []
    for b in range(hidden.shape[0]):
        if mode == "cls":
            vectors.append(hidden[b, 0])
            continue
        total, count = torch.zeros(hidden.shape[2], dtype=DT), 0
        for t in range(hidden.shape[1]):
            if mask[b, t]:
                total = total + hidden[b, t]
                count += 1
        vectors.append(total / count)
    return vectors


def random_mask(batch, length, generator):
    lengths = torch.randint(2, length + 1, (batch,), generator=generator)
    return torch.arange(length)[None, :] < lengths[:, None]


# -- mask_tokens / MaskedLM --------------------------------------------------------------------


def test_mask_tokens_statistics_and_special_tokens():
    g = torch.Generator().manual_seed(0)
    vocab, mask_id = 5000, 4
    ids = torch.randint(10, vocab, (64, 512), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[:, 400:] = True  # padding
    ids[special] = 1
    masked, labels = mask_tokens(ids, special, mask_token_id=mask_id, vocab_size=vocab,
                                 generator=torch.Generator().manual_seed(1))
    chosen = labels != -100
    assert not chosen[special].any()
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else is touched
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum().item() / (~special).sum().item()
    assert abs(rate - 0.15) < 0.01
    n = chosen.sum().item()
    as_mask = (masked[chosen] == mask_id).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015
    assert abs(1 - as_mask - kept - 0.1) < 0.015  # random replacements


def test_mask_tokens_deterministic_and_at_least_one_per_sequence():
    ids = torch.arange(40).reshape(8, 5) + 10
    special = torch.ones_like(ids, dtype=torch.bool)
    special[:7, 2] = False  # one maskable token in rows 0-6, none in row 7
    kwargs = dict(mask_token_id=4, vocab_size=100, rate=0.0)
    out1 = mask_tokens(ids, special, **kwargs, generator=torch.Generator().manual_seed(3))
    out2 = mask_tokens(ids, special, **kwargs, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(out1, out2))
    chosen = out1[1] != -100
    assert chosen[:7, 2].all() and chosen.sum() == 7  # exactly the one maskable token per row


def test_mask_tokens_at_least_one_per_packed_sequence():
    # Two packed rows: row 0 holds sequences 1, 2, 3 (3 has no maskable token), row 1 holds 1, 2.
    segments = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0],
                             [1, 1, 1, 2, 2, 2, 2, 2, 0, 0]])
    ids = torch.arange(20).reshape(2, 10) + 10
    special = segments == 0
    special[0, [0, 3, 4, 6, 7, 8]] = True  # <s>/</s>; sequence 3 of row 0 is only special tokens
    special[1, [0, 2, 3, 7]] = True
    kwargs = dict(mask_token_id=4, vocab_size=100, rate=0.0)  # only the at-least-one rule chooses
    for seed in range(5):
        _, labels = mask_tokens(ids, special, **kwargs, segment_ids=segments,
                                generator=torch.Generator().manual_seed(seed))
        chosen = labels != -100
        per_sequence = {(r, s): int(chosen[r][segments[r] == s].sum()) for r, s in
                        [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]}
        assert per_sequence == {(0, 1): 1, (0, 2): 1, (0, 3): 0, (1, 1): 1, (1, 2): 1}, per_sequence
        assert not (chosen & special).any()
    # One segment per row gives exactly the per-row draws (unpacked batches are unchanged).
    rows = torch.randint(10, 90, (6, 9), generator=torch.Generator().manual_seed(0))
    row_special = torch.zeros_like(rows, dtype=torch.bool)
    row_special[:, 0] = row_special[:, -1] = True
    row_special[2, 3:] = True  # a short row, padded
    for rate in (0.0, 0.15):
        per_row = mask_tokens(rows, row_special, **{**kwargs, "rate": rate}, generator=torch.Generator().manual_seed(1))
        one_segment = mask_tokens(rows, row_special, **{**kwargs, "rate": rate},
                                  segment_ids=(~row_special).long(), generator=torch.Generator().manual_seed(1))
        assert all(torch.equal(a, b) for a, b in zip(per_row, one_segment))


def test_sparse_mlm_equals_full_vocabulary_loss():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 7, 8, dtype=DT, generator=g, requires_grad=True)
    head = nn.Linear(8, 11).to(DT)
    labels = torch.full((3, 7), -100)
    labels[0, 1], labels[0, 4], labels[2, 6], labels[2, 0] = 3, 10, 0, 7
    loss = MaskedLM()(hidden, labels, head)
    full = F.cross_entropy(head(hidden).reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert_same_value_and_grads(loss, full, [hidden, head.weight, head.bias])


def test_mlm_without_masked_tokens_is_zero_with_graph():
    hidden = torch.randn(2, 4, 8, dtype=DT, requires_grad=True)
    head = nn.Linear(8, 5).to(DT)
    loss = MaskedLM()(hidden, torch.full((2, 4), -100), head)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert hidden.grad.abs().sum() == 0 and head.weight.grad.abs().sum() == 0


# -- pooling / sequence contrast ---------------------------------------------------------------


def test_pool_matches_loops():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 6, 3, dtype=DT, generator=g)
    mask = random_mask(4, 6, g)
    for mode in ("mean", "cls"):
        assert close(pool(hidden, mask, mode), torch.stack(ref_pool(hidden, mask, mode)))


def ref_sequence_loss(src, src_mask, tgt, tgt_mask, pooling, temperature, symmetric):
    x, y = ref_pool(src, src_mask, pooling), ref_pool(tgt, tgt_mask, pooling)

    def one_way(queries, keys):
        losses = []
        for i in range(len(queries)):
            logits = [ref_cos(queries[i], keys[j]) / temperature for j in range(len(keys))]
            losses.append(ref_info_nce(logits[i], logits[:i] + logits[i + 1:]))
        return sum(losses) / len(losses)

    loss = one_way(x, y)
    return (loss + one_way(y, x)) / 2 if symmetric else loss


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_sequence_contrastive_in_batch_matches_reference(pooling, symmetric):
    g = torch.Generator().manual_seed(1)
    src = torch.randn(5, 6, 4, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(5, 7, 4, dtype=DT, generator=g, requires_grad=True)
    src_mask, tgt_mask = random_mask(5, 6, g), random_mask(5, 7, g)
    objective = SequenceContrastive(pooling=pooling, symmetric=symmetric, temperature=0.3, negatives="in_batch")
    loss = objective(src, src_mask, tgt, tgt_mask)
    ref = ref_sequence_loss(src, src_mask, tgt, tgt_mask, pooling, 0.3, symmetric)
    assert_same_value_and_grads(loss, ref, [src, tgt])
    # Not distributed: "gather" is the in-batch loss.
    gathered = SequenceContrastive(pooling=pooling, symmetric=symmetric, temperature=0.3,
                                   negatives="gather")(src, src_mask, tgt, tgt_mask)
    assert close(gathered, loss)


def test_sequence_contrastive_projection_is_applied():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(3, 4, 6, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(3, 4, 6, dtype=DT, generator=g, requires_grad=True)
    mask = torch.ones(3, 4, dtype=torch.bool)
    objective = SequenceContrastive(6, projection=5, temperature=0.2).to(DT)
    linear = objective.projection[0]
    loss = objective(src, mask, tgt, mask)
    # Projection of the pooled vector, written out: tanh(W·mean + b) as a single-token "sequence".
    px = torch.tanh(F.linear(src.mean(1), linear.weight, linear.bias))[:, None, :]
    py = torch.tanh(F.linear(tgt.mean(1), linear.weight, linear.bias))[:, None, :]
    one = torch.ones(3, 1, dtype=torch.bool)
    ref = ref_sequence_loss(px, one, py, one, "mean", 0.2, True)
    assert_same_value_and_grads(loss, ref, [src, tgt, linear.weight])
    assert objective.embed(src, mask).shape == (3, 5)
    assert SequenceContrastive(6, projection=5, projection_kind="mlp").embed(
        src.float(), mask).shape == (3, 5)


@pytest.mark.parametrize("symmetric", [True, False])
def test_sequence_contrastive_queue_matches_reference_and_enqueues(symmetric):
    g = torch.Generator().manual_seed(3)
    n, h, size = 3, 4, 5
    objective = SequenceContrastive(h, negatives="queue", queue_size=size, temperature=0.5,
                                    symmetric=symmetric).to(DT)
    assert {"queue", "queue_ptr", "queue_filled"} <= set(objective.state_dict())
    first_keys = F.normalize(torch.randn(2, h, dtype=DT, generator=g), dim=-1)
    objective.enqueue(first_keys)  # 2 of 5 slots filled
    src = torch.randn(n, 6, h, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(n, 6, h, dtype=DT, generator=g, requires_grad=True)
    mask = random_mask(n, 6, g)
    src_keys = F.normalize(torch.randn(n, h, dtype=DT, generator=g), dim=-1)
    tgt_keys = F.normalize(torch.randn(n, h, dtype=DT, generator=g), dim=-1)
    loss = objective(src, mask, tgt, mask, src_keys=src_keys, tgt_keys=tgt_keys)

    x, y = ref_pool(src, mask, "mean"), ref_pool(tgt, mask, "mean")

    def one_way(queries, keys):
        losses = []
        for i in range(n):
            negatives = [ref_cos(queries[i], first_keys[j]) / 0.5 for j in range(2)]
            losses.append(ref_info_nce(ref_cos(queries[i], keys[i]) / 0.5, negatives))
        return sum(losses) / n

    ref = one_way(x, tgt_keys)
    if symmetric:
        ref = (ref + one_way(y, src_keys)) / 2
    assert_same_value_and_grads(loss, ref, [src, tgt])

    # Training mode enqueued src_keys then tgt_keys (6 keys) into 5 slots starting at slot 2:
    # ring order after wrap-around.
    written = torch.cat([first_keys, src_keys, tgt_keys])  # 8 keys written in total
    expected = torch.empty(size, h, dtype=DT)
    for k in range(8):
        expected[k % size] = written[k]
    assert close(objective.queue, expected)
    assert objective.queue_ptr.item() == 8 % size and objective.queue_filled.item() == size
    state = objective.state_dict()
    assert close(state["queue"], expected)
    restored = SequenceContrastive(h, negatives="queue", queue_size=size).to(DT)
    restored.load_state_dict(state)
    assert close(restored.queue, expected) and restored.queue_ptr.item() == 3

    # Eval mode does not enqueue; more keys than slots keeps the last ones.
    objective.eval()
    objective(src, mask, tgt, mask, src_keys=src_keys, tgt_keys=tgt_keys)
    assert close(objective.queue, expected)
    many = F.normalize(torch.randn(7, h, dtype=DT, generator=g), dim=-1)
    objective.enqueue(many)
    assert sorted(objective.queue.sum(1).tolist()) == sorted(many[-size:].sum(1).tolist())


def test_sequence_contrastive_dot_similarity_queue_matches_reference():
    """InfoXLM's XLCo: raw dot products between the query and the (un-normalised) keys."""
    g = torch.Generator().manual_seed(5)
    n, h = 3, 4
    objective = SequenceContrastive(h, negatives="queue", queue_size=4, temperature=0.25, symmetric=False,
                                    similarity="dot").to(DT)
    queued = torch.randn(2, h, dtype=DT, generator=g) * 3
    objective.enqueue(queued)
    assert close(objective.queue[:2], queued)  # stored as they are, not normalised
    src = torch.randn(n, 5, h, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(n, 5, h, dtype=DT, generator=g, requires_grad=True)
    mask = random_mask(n, 5, g)
    src_keys, tgt_keys = torch.randn(n, h, dtype=DT, generator=g), torch.randn(n, h, dtype=DT, generator=g) * 2
    loss = objective(src, mask, tgt, mask, src_keys=src_keys, tgt_keys=tgt_keys)
    x = ref_pool(src, mask, "mean")
    ref = sum(ref_info_nce(x[i] @ tgt_keys[i] / 0.25, [x[i] @ queued[j] / 0.25 for j in range(2)])
              for i in range(n)) / n
    assert_same_value_and_grads(loss, ref, [src])


def test_negatives_per_anchor():
    assert SequenceContrastive(negatives="in_batch").negatives_per_anchor(16, 8) == {"per_process": 15, "global": 15}
    assert SequenceContrastive(negatives="gather").negatives_per_anchor(16, 8) == {"per_process": 15, "global": 127}
    assert SequenceContrastive(negatives="gather").negatives_per_anchor(16) == {"per_process": 15, "global": 15}
    queue = SequenceContrastive(4, negatives="queue", queue_size=131072)
    assert queue.negatives_per_anchor(16, 8) == {"per_process": 0, "global": 131072}


def test_momentum_update():
    online, momentum = nn.Linear(3, 2).to(DT), nn.Linear(3, 2).to(DT)
    before = momentum.weight.detach().clone()
    momentum_update(online, momentum, 0.9)
    assert close(momentum.weight, 0.9 * before + 0.1 * online.weight.detach())


def one_hot_sequences(n, length, dim):
    """Sentence i = `length` copies of basis vector e_i: trivially separable pairs."""
    return torch.eye(dim, dtype=DT)[:n, None, :].expand(n, length, dim).clone()


def test_sequence_contrastive_separable_and_shuffled():
    src, tgt = one_hot_sequences(4, 3, 6), one_hot_sequences(4, 5, 6)
    src_mask, tgt_mask = torch.ones(4, 3, dtype=torch.bool), torch.ones(4, 5, dtype=torch.bool)
    objective = SequenceContrastive(temperature=0.02)
    assert objective(src, src_mask, tgt, tgt_mask).item() < 1e-6
    shuffled = objective(src, src_mask, tgt[[1, 2, 3, 0]], tgt_mask).item()
    assert shuffled > 40  # positive at cos 0, one negative at cos 1: about 1/τ = 50


# -- token contrast -------------------------------------------------------------------------------


def ref_token_loss(src, src_valid, tgt, tgt_valid, spans, *, subword_pooling, negatives,
                   exclude_other_matched, temperature, symmetric):
    """Per pair, with loops: word vectors, candidate tokens, InfoNCE; averaged over pairs."""
    spans = spans.tolist()

    def word(hidden, b, start, end):
        if subword_pooling == "first":
            return hidden[b, start]
        return sum(hidden[b, t] for t in range(start, end)) / (end - start)

    def direction(p, anchor_side, positive_side):
        sides = {"src": (src, src_valid, 1), "tgt": (tgt, tgt_valid, 3)}
        b = spans[p][0]
        a_hidden, a_valid, a_col = sides[anchor_side]
        q_hidden, q_valid, q_col = sides[positive_side]
        a_span, q_span = spans[p][a_col:a_col + 2], spans[p][q_col:q_col + 2]
        anchor = word(a_hidden, b, *a_span)
        positive = word(q_hidden, b, *q_span)

        def excluded(t, side_col, link_col):
            # Token t (of the side whose spans sit at side_col) is excluded if it lies in the word
            # of a pair q of the same instance whose span at link_col equals pair p's (any pair q
            # with exclude_other_matched).
            for q in range(len(spans)):
                if spans[q][0] != b:
                    continue
                same_link = spans[q][link_col:link_col + 2] == spans[p][link_col:link_col + 2]
                linked = exclude_other_matched or same_link
                if linked and spans[q][side_col] <= t < spans[q][side_col + 1]:
                    return True
            return False

        negative_logits = []
        for t in range(q_hidden.shape[1]):
            if q_valid[b, t] and not excluded(t, q_col, a_col):
                negative_logits.append(ref_cos(anchor, q_hidden[b, t]) / temperature)
        if negatives == "both_sides":
            for t in range(a_hidden.shape[1]):
                if a_valid[b, t] and not excluded(t, a_col, q_col):
                    negative_logits.append(ref_cos(anchor, a_hidden[b, t]) / temperature)
        return ref_info_nce(ref_cos(anchor, positive) / temperature, negative_logits)

    losses = []
    for p in range(len(spans)):
        loss = direction(p, "src", "tgt")
        if symmetric:
            loss = (loss + direction(p, "tgt", "src")) / 2
        losses.append(loss)
    return sum(losses) / len(losses)


# Instance 0 has 3 pairs; source word (1, 3) has two translations, and target word (4, 5) two
# source words (both linking rules are exercised).  Instance 1 has none, instance 2 has one.
SPANS = torch.tensor([
    [0, 1, 3, 2, 4],
    [0, 1, 3, 4, 5],
    [0, 4, 5, 4, 5],
    [0, 6, 7, 6, 8],
    [2, 2, 5, 1, 2],
])


@pytest.mark.parametrize("pooling", ["mean", "first"])
@pytest.mark.parametrize("negatives", ["other_side", "both_sides"])
@pytest.mark.parametrize("exclude_other_matched", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
def test_token_contrastive_matches_reference(pooling, negatives, exclude_other_matched, symmetric):
    g = torch.Generator().manual_seed(4)
    src = torch.randn(3, 8, 4, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(3, 9, 4, dtype=DT, generator=g, requires_grad=True)
    src_valid, tgt_valid = random_mask(3, 8, g), random_mask(3, 9, g)
    src_valid[0], tgt_valid[0] = True, True
    src_valid[:, 0] = tgt_valid[:, 0] = False  # <s>
    options = dict(subword_pooling=pooling, negatives=negatives,
                   exclude_other_matched=exclude_other_matched, temperature=0.3,
                   symmetric=symmetric)
    shuffled_spans = SPANS[torch.randperm(len(SPANS), generator=g)]  # order must not matter
    loss = TokenContrastive(**options, exclude_copies=False)(src, src_valid, tgt, tgt_valid, shuffled_spans)
    ref = ref_token_loss(src, src_valid, tgt, tgt_valid, SPANS, **options)
    assert_same_value_and_grads(loss, ref, [src, tgt])


def test_token_contrastive_exclude_copies_equals_removing_the_copies_by_hand():
    g = torch.Generator().manual_seed(6)
    # One pair: source word [11, 12] at 1..3, target word [21] at 4.  Copies: the source word again
    # at source 4..6 and target 1..3, the target word again at target 7.  Source position 6 holds
    # an 11 not followed by a 12 (no copy).
    src_ids = torch.tensor([[0, 11, 12, 5, 11, 12, 11, 2]])
    tgt_ids = torch.tensor([[0, 11, 12, 7, 21, 8, 9, 21, 2]])
    src_valid, tgt_valid = (src_ids > 2), (tgt_ids > 2)
    spans = torch.tensor([[0, 1, 3, 4, 5]])
    src = torch.randn(1, 8, 4, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(1, 9, 4, dtype=DT, generator=g, requires_grad=True)
    options = dict(negatives="both_sides", temperature=0.3)
    loss = TokenContrastive(**options, exclude_copies=True)(src, src_valid, tgt, tgt_valid, spans,
                                                             src_ids=src_ids, tgt_ids=tgt_ids)
    src_by_hand, tgt_by_hand = src_valid.clone(), tgt_valid.clone()
    src_by_hand[0, [4, 5]] = False
    tgt_by_hand[0, [1, 2, 7]] = False
    ref = ref_token_loss(src, src_by_hand, tgt, tgt_by_hand, spans, subword_pooling="mean", exclude_other_matched=False,
                         symmetric=True, **options)
    assert_same_value_and_grads(loss, ref, [src, tgt])
    kept = TokenContrastive(**options, exclude_copies=False)(src, src_valid, tgt, tgt_valid, spans)  # copies kept
    assert not close(kept, loss)
    with pytest.raises(ValueError, match="exclude_copies needs src_ids and tgt_ids"):
        TokenContrastive(exclude_copies=True)(src, src_valid, tgt, tgt_valid, spans)


def test_drop_masked_positions_by_hand():
    valid = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    chosen = torch.tensor([[0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    tgt_valid = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    tgt_chosen = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    spans = torch.tensor([[0, 1, 2, 1, 2],   # kept
                          [0, 2, 4, 1, 3],   # source word holds masked position 2
                          [0, 3, 5, 2, 3],   # kept
                          [1, 1, 3, 2, 3],   # target word holds masked position 2
                          [1, 1, 3, 1, 2]])  # kept
    src_out, tgt_out, kept = drop_masked_positions(valid, tgt_valid, spans, chosen, tgt_chosen)
    assert src_out.tolist() == [[0, 1, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0]]
    assert tgt_out.tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert kept.tolist() == [[0, 1, 2, 1, 2], [0, 3, 5, 2, 3], [1, 1, 3, 1, 2]]


def test_token_contrastive_joint_encoding_same_tensor():
    """TLM-style: one concatenated tensor passed twice with side masks."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 12, 4, dtype=DT, generator=g, requires_grad=True)
    src_valid = torch.zeros(2, 12, dtype=torch.bool)
    tgt_valid = torch.zeros(2, 12, dtype=torch.bool)
    src_valid[:, 1:5], tgt_valid[:, 6:11] = True, True
    spans = torch.tensor([[0, 1, 3, 6, 7], [0, 3, 4, 8, 10], [1, 2, 3, 9, 11]])
    options = dict(subword_pooling="mean", negatives="both_sides", exclude_other_matched=False,
                   temperature=0.2, symmetric=True)
    loss = TokenContrastive(**options, exclude_copies=False)(hidden, src_valid, hidden, tgt_valid, spans)
    ref = ref_token_loss(hidden, src_valid, hidden, tgt_valid, spans, **options)
    assert_same_value_and_grads(loss, ref, [hidden])


def test_token_contrastive_projection_applied_before_subword_pooling():
    g = torch.Generator().manual_seed(6)
    src = torch.randn(1, 5, 4, dtype=DT, generator=g, requires_grad=True)
    tgt = torch.randn(1, 5, 4, dtype=DT, generator=g, requires_grad=True)
    valid = torch.ones(1, 5, dtype=torch.bool)
    spans = torch.tensor([[0, 1, 3, 2, 4]])
    objective = TokenContrastive(4, projection=3, temperature=0.2, exclude_copies=False).to(DT)
    loss = objective(src, valid, tgt, valid, spans)
    linear = objective.projection[0]
    ref = ref_token_loss(torch.tanh(F.linear(src, linear.weight, linear.bias)), valid,
                         torch.tanh(F.linear(tgt, linear.weight, linear.bias)), valid, spans,
                         subword_pooling="mean", negatives="other_side", exclude_other_matched=False,
                         temperature=0.2, symmetric=True)
    assert_same_value_and_grads(loss, ref, [src, tgt, linear.weight])


def test_token_contrastive_no_pairs_is_zero_with_graph():
    src = torch.randn(2, 4, 3, dtype=DT, requires_grad=True)
    valid = torch.ones(2, 4, dtype=torch.bool)
    loss = TokenContrastive(exclude_copies=False)(src, valid, src, valid, torch.zeros(0, 5, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert src.grad.abs().sum() == 0


def test_token_contrastive_rejects_bad_spans():
    x = torch.randn(1, 4, 3)
    valid = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="row 0"):
        TokenContrastive(exclude_copies=False)(x, valid, x, valid, torch.tensor([[0, 2, 2, 0, 1]]))  # empty source span
    with pytest.raises(ValueError, match="out of range"):
        TokenContrastive(exclude_copies=False)(x, valid, x, valid, torch.tensor([[0, 0, 1, 3, 5]]))


def test_token_contrastive_separable_and_shuffled():
    # Every source token is its own basis vector; target token j copies source token perm[j].
    dim, length = 8, 8
    src = torch.eye(dim, dtype=DT)[None, :length]
    perm = [0, 3, 1, 2, 5, 4, 7, 6]
    tgt = src[:, perm]
    valid = torch.ones(1, length, dtype=torch.bool)
    valid[:, 0] = False
    # word (s, s+1) translates to target position perm.index(s)
    pairs = [[0, s, s + 1, perm.index(s), perm.index(s) + 1] for s in (1, 2, 3, 5, 7)]
    objective = TokenContrastive(temperature=0.02, negatives="both_sides", exclude_copies=False)
    assert objective(src, valid, tgt, valid, torch.tensor(pairs)).item() < 1e-6
    # Point each source word at the target token after its synonym (wrapping past position 0).
    wrong = [[0, s, s + 1, perm.index(s) % 7 + 1, perm.index(s) % 7 + 2]
             for s in (1, 2, 3, 5, 7)]
    assert objective(src, valid, tgt, valid, torch.tensor(wrong)).item() > 40


# -- combination -----------------------------------------------------------------------------------


def test_combine_losses():
    mlm = torch.tensor(2.0, requires_grad=True)
    seq = torch.tensor(3.0, requires_grad=True)
    tok = torch.tensor(5.0, requires_grad=True)
    total, values = combine_losses({"mlm": mlm, "seq": seq, "tok": tok},
                                   {"mlm": 1.0, "seq": 0.5, "tok": 0.0, "unused": 9.0})
    assert total.item() == 3.5
    assert values == {"mlm": 2.0, "seq": 3.0, "tok": 5.0, "total": 3.5}
    total.backward()
    assert (mlm.grad, seq.grad) == (1.0, 0.5)
    with pytest.raises(ValueError, match="tok"):
        combine_losses({"mlm": mlm, "tok": tok}, {"mlm": 1.0})
    assert not math.isnan(values["total"])
