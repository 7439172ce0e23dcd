"""Golden tests for veco2.xtreme.retrieval: exact k-NN with the lowest-index tie rule, Tatoeba, BUCC."""

import numpy as np
import pytest

from veco2.errors import Veco2Error
from veco2.xtreme.retrieval import (
    bucc_evaluate,
    bucc_f1,
    bucc_threshold_search,
    distinct_pairs,
    knn,
    l2_normalize,
    margin_scores,
    mine,
    tatoeba_accuracy,
    tatoeba_evaluate,
)


def at_angles(*degrees):
    """Unit vectors in the plane: cos(a, b) = cos(angle difference), so nearest = closest angle."""
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def brute_force_knn(queries, keys, k):
    """Full similarity matrix in float64, order by (score desc, index asc) with lexsort."""
    sims = np.asarray(queries, dtype=np.float64) @ np.asarray(keys, dtype=np.float64).T
    cols = np.arange(sims.shape[1])
    order = np.stack([np.lexsort((cols, -row))[:k] for row in sims])
    return np.take_along_axis(sims, order, axis=1), order


# --- k-NN ---------------------------------------------------------------------------------------


def test_l2_normalize_numpy_and_zero_rows():
    x = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]])


def test_knn_ties_go_to_lowest_index():
    keys = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    query = np.array([[1.0, 0.0]])
    for key_chunk in (1, 2, 3, 5, 100):
        scores, idx = knn(query, keys, 3, key_chunk_size=key_chunk)
        assert idx.tolist() == [[1, 3, 4]], key_chunk
        np.testing.assert_array_equal(scores, [[1.0, 1.0, 1.0]])
        scores, idx = knn(query, keys, 5, key_chunk_size=key_chunk)
        assert idx.tolist() == [[1, 3, 4, 0, 2]], key_chunk


@pytest.mark.parametrize("chunk,key_chunk", [(1, 1), (3, 4), (7, 50), (1000, 1000)])
def test_knn_many_ties_equals_brute_force(chunk, key_chunk):
    # small integer vectors: dot products are exact in float32, so ties are exact
    rng = np.random.default_rng(0)
    keys = rng.integers(-2, 3, size=(60, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(25, 3)).astype(np.float32)
    want_scores, want_idx = brute_force_knn(queries, keys, 6)
    scores, idx = knn(queries, keys, 6, chunk_size=chunk, key_chunk_size=key_chunk, normalize=False)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(scores, want_scores)


@pytest.mark.parametrize("chunk,key_chunk", [(1, 1), (5, 13), (64, 17), (300, 2), (2048, 16384)])
def test_chunked_knn_equals_full_matrix_on_random_vectors(chunk, key_chunk):
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((97, 16)).astype(np.float32)
    keys = rng.standard_normal((131, 16)).astype(np.float32)
    want_scores, want_idx = brute_force_knn(l2_normalize(queries), l2_normalize(keys), 5)
    scores, idx = knn(queries, keys, 5, chunk_size=chunk, key_chunk_size=key_chunk)
    assert scores.shape == (97, 5) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_knn_input_errors():
    with pytest.raises(Veco2Error, match="k=3"):
        knn(np.ones((1, 2)), np.ones((2, 2)), 3)
    with pytest.raises(Veco2Error, match="dimension"):
        knn(np.ones((1, 2)), np.ones((2, 3)), 1)
    with pytest.raises(Veco2Error, match="NaN"):
        knn(np.array([[np.nan, 1.0]]), np.ones((2, 2)), 1)
    with pytest.raises(Veco2Error, match="backend"):
        knn(np.ones((1, 2)), np.ones((2, 2)), 1, backend="annoy")


# --- Tatoeba ------------------------------------------------------------------------------------


def test_tatoeba_accuracy_hand_vectors():
    src = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tgt = np.array([[0.9, 0.1], [1.0, 1.0], [0.0, 1.0]])
    # nearest by cosine: src0 -> tgt0 (0.994), src1 -> tgt2 (1.0), src2 -> tgt1 (1.0)
    assert tatoeba_accuracy(src, tgt) == pytest.approx(100 / 3)
    assert tatoeba_accuracy(src, tgt, gold=[0, 2, 1]) == 100.0
    # cosine, not dot product: a long vector does not win
    assert tatoeba_accuracy([[1.0, 0.1]], [[1.0, 0.0], [10.0, 5.0]]) == 100.0
    # exact tie: the lowest index wins
    assert tatoeba_accuracy([[1.0, 0.0]], [[2.0, 0.0], [1.0, 0.0]], gold=[0]) == 100.0


def test_tatoeba_scores_xtreme_direction_with_the_reverse_beside_it():
    # XTREME indexes the non-English side and queries it with English (evaluate_retrieval.py:
    # similarity_search(x=xx, y=en) -> idx.add(x), idx.search(y)).
    xx = at_angles(0, 40, 90)
    en = at_angles(30, 45, 80)
    # en -> xx: e0 (30deg) is 10deg from x1, 30 from x0 -> x1 (wrong); e1 (45) -> x1 (5deg) right;
    #           e2 (80) -> x2 (10deg) right: 2 of 3.
    # xx -> en: x0 (0) -> e0 (30deg) right; x1 (40) -> e1 (5deg) right; x2 (90) -> e2 (10deg) right: 3 of 3.
    result = tatoeba_evaluate(xx, en)
    assert result["accuracy"] == pytest.approx(200 / 3)
    assert result["accuracy_xx_to_en"] == 100.0
    assert result["predictions"].tolist() == [1, 1, 2]  # per English line: the non-English line retrieved
    assert result["accuracy"] == tatoeba_accuracy(en, xx) and result["accuracy_xx_to_en"] == tatoeba_accuracy(xx, en)
    with pytest.raises(Veco2Error, match="2 non-English but 3 English sentences; the test files must be line-aligned"):
        tatoeba_evaluate(xx[:2], en)


def test_evaluate_tatoeba_writes_xtreme_direction_and_its_predictions(tiny_pretrained_dir, tmp_path, monkeypatch):
    """run_evaluate end to end with the encoder replaced by hand-placed sentence vectors."""
    from test_xtreme_data import DE, EN, FR, write_tiny_layout

    from veco2.xtreme import retrieval_run

    # xx: x0 0deg, x1 90deg; en: e0 60deg, e1 80deg.
    # en -> xx: e0 -> x1 (30deg, wrong), e1 -> x1 (10deg, right): 50 %, predictions 1, 1.
    # xx -> en: x0 -> e0 (60deg vs 80), x1 -> e1 (10deg vs 30): 100 %.
    place = dict(zip([*DE, *FR, *EN], at_angles(0, 90, 0, 90, 60, 80)))

    def fake_encode(sentences, model, tokenizer, *, layers, **kwargs):
        return {layer: np.stack([place[s] for s in sentences]).astype(np.float32) for layer in layers}

    monkeypatch.setattr(retrieval_run, "encode", fake_encode)
    root = write_tiny_layout(tmp_path / "xtreme")
    out = tmp_path / "out"
    record = retrieval_run.run_evaluate("tatoeba", tiny_pretrained_dir, out, data_root=root, languages=["de", "fr"])
    assert record["scores"] == {lang: {"accuracy": 50.0, "accuracy_xx_to_en": 100.0} for lang in ("de", "fr")}
    assert record["task_score"] == 50.0  # the headline direction only
    predictions = out / "tatoeba" / "seed0" / "predictions" / "tatoeba" / "test-de.tsv"
    assert predictions.read_text() == "1\n1\n"


# --- BUCC: margin scores and mining --------------------------------------------------------------


def test_ratio_margin_scores_by_hand():
    src = np.array([[1.0, 0.0], [0.0, 1.0]])
    tgt = np.array([[1.0, 0.0], [0.6, 0.8]])
    # cos: x0y0 1, x0y1 .6, x1y0 0, x1y1 .8 ; k=4 is clipped to 2
    # fwd means x0 .8, x1 .4 ; bwd means y0 .5, y1 .7
    # (x0,y0) 1/((.8+.5)/2) = 1/.65 ; (x0,y1) .6/.75 = .8 ; (x1,y1) .8/.55 ; (x1,y0) 0
    fwd_ind, fwd, bwd_ind, bwd = margin_scores(src, tgt, k=4)
    assert fwd_ind.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(fwd, [[1 / 0.65, 0.8], [0.8 / 0.55, 0.0]], rtol=1e-6)
    assert bwd_ind.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(bwd, [[1 / 0.65, 0.0], [0.8 / 0.55, 0.8]], rtol=1e-6)
    cands = mine(src, tgt, src_ids=["s0", "s1"], tgt_ids=["t0", "t1"])
    assert [(s, t) for s, t, _ in cands] == [("s0", "t0"), ("s1", "t1")]
    np.testing.assert_allclose([c[2] for c in cands], [1 / 0.65, 0.8 / 0.55], rtol=1e-6)


def test_mine_greedy_dedup_uses_each_sentence_once():
    src = np.array([[1.0, 0.0], [0.8, 0.6]])
    tgt = np.array([[1.0, 0.0], [0.0, 1.0]])
    # k=1: fwd x0->y0 (cos 1), x1->y0 (.8); bwd y0->x0 (1), y1->x1 (.6)
    # means fwd 1, .8 ; bwd 1, .6. scores: (x0,y0) 1 ; (x1,y0) .8/.9 ; (x1,y1) .6/.7
    # greedy: keep (0,0); (1,0) loses its target; keep (1,1)
    cands = mine(src, tgt, k=1)
    assert [(s, t) for s, t, _ in cands] == [(0, 0), (1, 1)]
    np.testing.assert_allclose([c[2] for c in cands], [1.0, 0.6 / 0.7], rtol=1e-6)
    with pytest.raises(Veco2Error, match="wrong id file"):
        mine(src, tgt, src_ids=["a"])


# --- BUCC: threshold search and F1 ---------------------------------------------------------------

CANDIDATES = [("a1", "b1", 0.9), ("a2", "b2", 0.8), ("a3", "b3", 0.8), ("a4", "b4", 0.7), ("a5", "b5", 0.5)]
GOLD = [("a1", "b1"), ("a3", "b3"), ("a4", "b4"), ("a6", "b6")]  # a6-b6 was never mined


def test_bucc_threshold_search_hand_set():
    # cut >=.9: P 1, R 1/4 -> .4 ; >=.8 (both tied .8 together): P 2/3, R 1/2 -> 4/7 ;
    # >=.7: P 3/4, R 3/4 -> .75 (best) ; >=.5: P 3/5, R 3/4 -> 2/3. Threshold halfway .7/.5 = .6
    threshold = bucc_threshold_search(CANDIDATES, GOLD)
    assert threshold == pytest.approx(0.6)
    assert bucc_f1(CANDIDATES, GOLD, threshold) == pytest.approx(
        {"precision": 75.0, "recall": 75.0, "f1": 75.0, "threshold": 0.6}
    )
    assert bucc_f1(CANDIDATES, GOLD, 0.8)["f1"] == pytest.approx(400 / 7)


def test_bucc_threshold_search_never_splits_ties():
    # Walking one candidate at a time (official script) would score "c1 only" as F1 1.0 and cut at
    # (.8+.8)/2 = .8, where extraction keeps both .8 pairs. Distinct scores: >=.8 -> P 1/2, R 1 ->
    # 2/3 ; >=.2 -> P 1/3 -> 1/2. Best .8, threshold (.8+.2)/2 = .5, F1 at it = 66.67.
    cands = [("s2", "t2", 0.8), ("s1", "t1", 0.8), ("s3", "t3", 0.2)]
    threshold = bucc_threshold_search(cands, [("s1", "t1")])
    assert threshold == pytest.approx(0.5)
    assert bucc_f1(cands, [("s1", "t1")], threshold)["f1"] == pytest.approx(200 / 3)


def test_bucc_best_cut_at_lowest_candidate():
    # the official script crashes here (items[i + 1] past the end); the cut is the lowest score itself
    cands = [("x", "y", 0.9), ("u", "v", 0.5)]
    threshold = bucc_threshold_search(cands, [("x", "y"), ("u", "v")])
    assert threshold == 0.5
    assert bucc_f1(cands, [("x", "y"), ("u", "v")], threshold)["f1"] == 100.0


def test_distinct_pairs_keeps_each_pair_once_with_its_highest_score():
    cands = [("a", "x", 0.3), ("b", "y", 0.5), ("a", "x", 0.7), ("b", "y", 0.1)]
    assert distinct_pairs(cands) == [("a", "x", 0.7), ("b", "y", 0.5)]


def test_bucc_threshold_search_counts_a_repeated_pair_once():
    # (c, z) is wrong and listed twice.  Counted twice (old): cuts .9 -> F1 2/3, .8 -> 1/2,
    # .7 -> P 1/3 R 1/2 -> .4, .6 -> P 2/4 R 1 -> 2/3; the first maximum .9 gives (.9+.8)/2 = .85.
    # Once, with its maximum .8 (official read_candidate2score): .9 -> 2/3, .8 -> 1/2,
    # .6 -> P 2/3 R 1 -> .8 (best), the lowest score: threshold .6.
    cands = [("a", "x", 0.9), ("c", "z", 0.8), ("c", "z", 0.7), ("b", "y", 0.6)]
    gold = [("a", "x"), ("b", "y")]
    threshold = bucc_threshold_search(cands, gold)
    assert threshold == 0.6
    assert bucc_f1(cands, gold, threshold) == pytest.approx(
        {"precision": 200 / 3, "recall": 100.0, "f1": 80.0, "threshold": 0.6}
    )


def test_mine_returns_a_repeated_id_pair_once():
    # Two rows share each id: both one-to-one pairs (row0, row0) and (row1, row1) are ("s", "t"), score 1.
    same = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert mine(same, same, k=1, src_ids=["s", "s"], tgt_ids=["t", "t"]) == [("s", "t", 1.0)]


def test_bucc_no_correct_candidate_and_errors():
    assert bucc_threshold_search([("x", "y", 0.9), ("u", "v", 0.5)], [("p", "q")]) == 0.9
    assert bucc_f1([("x", "y", 0.9)], [("p", "q")], 0.0) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 0.0}
    with pytest.raises(Veco2Error, match="no candidates"):
        bucc_threshold_search([], [("p", "q")])
    with pytest.raises(Veco2Error, match="gold pair list is empty"):
        bucc_f1(CANDIDATES, [], 0.5)


def _bucc_split(rng, n_pairs, n_noise, dim=12, noise=0.35):
    base = rng.standard_normal((n_pairs, dim))
    src = np.vstack([base + noise * rng.standard_normal(base.shape), rng.standard_normal((n_noise, dim))])
    tgt = np.vstack([base + noise * rng.standard_normal(base.shape), rng.standard_normal((n_noise, dim))])
    perm = rng.permutation(len(tgt))  # shuffle the target side so gold is not the diagonal
    tgt = tgt[perm]
    where = np.argsort(perm)  # row of original target j
    src_ids = [f"src-{i}" for i in range(len(src))]
    tgt_ids = [f"tgt-{j}" for j in range(len(tgt))]
    gold = [(src_ids[i], tgt_ids[where[i]]) for i in range(n_pairs)]
    return src, tgt, src_ids, tgt_ids, gold


def test_bucc_evaluate_carries_dev_threshold_to_test():
    rng = np.random.default_rng(7)
    dev = _bucc_split(rng, 30, 15)
    test = _bucc_split(rng, 40, 25, noise=0.6)
    result = bucc_evaluate(
        dev[0], dev[1], dev[4], test[0], test[1], test[4],
        dev_src_ids=dev[2], dev_tgt_ids=dev[3], test_src_ids=test[2], test_tgt_ids=test[3],
    )  # fmt: skip
    dev_cands = mine(dev[0], dev[1], src_ids=dev[2], tgt_ids=dev[3])
    test_cands = mine(test[0], test[1], src_ids=test[2], tgt_ids=test[3])
    dev_threshold = bucc_threshold_search(dev_cands, dev[4])
    assert result["threshold"] == dev_threshold
    assert result["dev"] == bucc_f1(dev_cands, dev[4], dev_threshold)
    assert result["test"] == bucc_f1(test_cands, test[4], dev_threshold)
    # the test number uses the dev threshold, not a threshold re-optimised on test
    assert bucc_threshold_search(test_cands, test[4]) != dev_threshold
    assert result["dev"]["f1"] > 80.0  # the planted pairs are found
    assert 0.0 < result["test"]["f1"] <= 100.0
