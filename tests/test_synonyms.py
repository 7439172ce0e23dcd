"""Dictionary-synonym mining: hand-checked word pairs in several scripts, subword span mapping on a
tiny trained tokenizer, corpus mining (in process and with workers) and the span storage format."""

import gzip

import numpy as np
import pytest

from veco2.data.synonyms import (
    MiningStats,
    SynonymMiner,
    char_to_token_spans,
    load_spans,
    mine_corpus,
    pack_spans,
    save_spans,
    spans_of_pair,
)
from veco2.data.tokenizer import train_unigram_tokenizer
from veco2.errors import ConfigError, InputError


def matched_words(miner, src, tgt):
    return [(src[a:b], tgt[c:d]) for (a, b), (c, d) in miner.match(src, tgt)]


EN_DE = [
    ("the", "der"), ("the", "die"), ("the", "das"),  # one-to-many
    ("dog", "Hund"), ("house", "Haus"), ("street", "Straße"), ("big", "groß"),
    ("New York", "New York"), ("york", "York"), ("ice cream", "Eis"), ("well-known", "bekannt"),
    ("!!", "?"),  # no word on either side: skipped, counted
]


@pytest.fixture(scope="module")
def en_de():
    return SynonymMiner(EN_DE, "en", "de")


# -------------------------------------------------------------------------- hand-checked matches


def test_latin_case_and_punctuation(en_de):
    assert matched_words(en_de, "The dog barks!", "Der Hund bellt.") == [("The", "Der"), ("dog", "Hund")]
    # case folding, not lower-casing: "Straße" and "STRASSE" fold to the same word
    assert matched_words(en_de, "A big street.", "Eine GROSSE STRASSE.") == [("street", "STRASSE")]
    assert en_de.skipped_entries == 1


def test_multiword_entries_longest_first(en_de):
    assert matched_words(en_de, "I like ice cream in New York.", "Ich mag Eis in New York.") == [
        ("ice cream", "Eis"),
        ("New York", "New York"),  # not "York" -> "York": the longer entry wins on both sides
    ]
    # hyphenated entry matches hyphenated text; punctuation inside the phrase breaks it
    assert matched_words(en_de, "the well-known dog", "Der Hund ist bekannt") == [
        ("the", "Der"), ("well-known", "bekannt"), ("dog", "Hund"),
    ]
    assert matched_words(en_de, "well known", "bekannt") == [("well known", "bekannt")]
    assert matched_words(en_de, "well, known", "bekannt") == []


def test_repeated_words_nearest_is_one_to_one(en_de):
    src, tgt = "the house and the dog", "der Hund und das Haus"
    assert matched_words(en_de, src, tgt) == [("the", "der"), ("house", "Haus"), ("the", "das"), ("dog", "Hund")]
    # more target occurrences than source ones: each source word takes the closest relative position
    # "the" centre 1.5/7 = .21 -> "der"#1 (.08) not "der"#2 (.64); "dog" .79 -> "Hund"#2 (.89) not #1 (.33)
    pairs = en_de.match("the dog", "der Hund, der Hund")
    assert pairs == [((0, 3), (0, 3)), ((4, 7), (14, 18))]


def test_repeated_words_all_combinations():
    miner = SynonymMiner(EN_DE, "en", "de", repeats="all")
    assert matched_words(miner, "the house and the dog", "der Hund und das Haus") == [
        ("the", "der"), ("the", "das"), ("house", "Haus"), ("the", "der"), ("the", "das"), ("dog", "Hund"),
    ]


def test_no_match(en_de):
    assert en_de.match("Hello world.", "Hallo Welt.") == []
    assert en_de.match("", "") == []
    assert en_de.match("the dog", "") == []


def test_cyrillic_case_and_one_to_many():
    miner = SynonymMiner([("house", "дом"), ("house", "здание"), ("big", "большой")], "en", "ru")
    assert matched_words(miner, "The big house.", "Большой ДОМ.") == [("big", "Большой"), ("house", "ДОМ")]
    assert matched_words(miner, "A house, a house.", "Здание, дом.") == [("house", "Здание"), ("house", "дом")]


def test_arabic_words_keep_their_marks_and_punctuation_splits():
    miner = SynonymMiner([("book", "كِتَاب"), ("new", "جديد"), ("where", "أين")], "en", "ar")
    src, tgt = "Where is the new book?", "أين الكتاب؟ هذا كِتَاب جديد،"
    # "الكتاب" (with the article, no harakat) is another word form: no match; "كِتَاب" keeps its marks
    assert matched_words(miner, src, tgt) == [("Where", "أين"), ("new", "جديد"), ("book", "كِتَاب")]


def test_devanagari_combining_marks_stay_inside_the_word():
    miner = SynonymMiner([("Hindi", "हिन्दी"), ("speak", "बोलता")], "en", "hi")
    assert matched_words(miner, "I speak Hindi.", "मैं हिन्दी बोलता हूँ।") == [("speak", "बोलता"), ("Hindi", "हिन्दी")]
    # a combining mark above U+FFFF (musical tremolo, U+1D167) also stays inside its word
    astral = SynonymMiner([("note", "a\U0001D167b")], "en", "de")
    assert astral.match("note", "a\U0001D167b c") == [((0, 4), (0, 3))]


ZH = [("I", "我"), ("love", "爱"), ("China", "中国"), ("Chinese", "中国人"), ("people", "人民"),
      ("T-shirt", "T恤"), ("tea", "th")]


def test_han_forward_maximum_matching():
    miner = SynonymMiner(ZH, "en", "zh-CN")
    assert miner.tgt.unspaced and not miner.src.unspaced
    assert matched_words(miner, "I love China", "我爱中国。") == [("I", "我"), ("love", "爱"), ("China", "中国")]
    # greedy longest match takes 中国人, leaving 民: "people" finds no 人民
    assert matched_words(miner, "Chinese people", "中国人民") == [("Chinese", "中国人")]
    assert matched_words(miner, "my T-shirt", "我的T恤") == [("T-shirt", "T恤")]
    # a match may not cut a Latin word inside Chinese text ("th" inside "python"), but may touch Han
    assert matched_words(miner, "tea", "我爱python") == []
    assert matched_words(miner, "tea", "我爱th") == [("tea", "th")]


def test_segmentation_detected_from_entries_without_language_code():
    assert SynonymMiner(ZH).tgt.unspaced
    assert not SynonymMiner(EN_DE).tgt.unspaced
    assert not SynonymMiner(ZH, "en", "zh", tgt_segmentation="space").tgt.unspaced


def test_japanese_and_thai():
    ja = SynonymMiner([("I", "私"), ("cat", "猫")], "en", "ja")
    assert matched_words(ja, "I like cats, the cat.", "私は猫が好きです") == [("I", "私"), ("cat", "猫")]
    th = SynonymMiner([("I", "ฉัน"), ("love", "รัก"), ("cat", "แมว")], "en", "th")
    assert matched_words(th, "I love the cat", "ฉันรักแมว") == [("I", "ฉัน"), ("love", "รัก"), ("cat", "แมว")]


def test_bad_options_and_dictionary_files(tmp_path):
    with pytest.raises(ConfigError, match="repeats"):
        SynonymMiner(EN_DE, repeats="first")
    with pytest.raises(ConfigError, match="src_segmentation"):
        SynonymMiner(EN_DE, src_segmentation="words")
    path = tmp_path / "en-de.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("dog\tHund\n\nhouse\tHaus\ncat Katze\n")
    with pytest.raises(InputError, match=r"en-de\.tsv\.gz:4: expected 'source<TAB>target'"):
        SynonymMiner.from_tsv(path, "en", "de")
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("dog\tHund\n\nhouse\tHaus\n")
    miner = SynonymMiner.from_tsv(path, "en", "de")
    assert len(miner) == 2
    assert matched_words(miner, "dog house", "Hundehaus Hund") == [("dog", "Hund")]


# -------------------------------------------------------------------------- character -> subword spans


def test_char_to_token_spans_hand_made_offsets():
    #        ▁    ▁the   ▁     dog    ,   (zero-width)
    offsets = [(0, 1), (0, 3), (3, 4), (4, 7), (7, 8), (8, 8)]
    ids = [6, 10, 6, 11, 12, 13]
    assert char_to_token_spans(offsets, (0, 3)) == (0, 2)
    assert char_to_token_spans(offsets, (0, 3), ids, lone_space_id=6) == (1, 2)  # lone ▁ trimmed
    assert char_to_token_spans(offsets, (4, 7), ids, 6) == (3, 4)
    assert char_to_token_spans(offsets, (5, 6), ids, 6) == (3, 4)  # inside one piece
    assert char_to_token_spans(offsets, (8, 9), ids, 6) is None  # only a zero-width token there
    # a piece straddling the word boundary belongs to the word
    assert char_to_token_spans([(0, 3), (3, 6)], (2, 5)) == (0, 2)


PAIRS = [
    ("The dog sleeps in the big house.", "Der Hund schläft im großen Haus."),
    ("The house is big.", "Das Haus ist groß."),
    ("I like ice cream in New York!", "Ich mag Eis in New York!"),
    ("the dog and the house", "der Hund und das Haus"),
    ("Hello world.", "Hallo Welt."),
    ("A big street, a big dog.", "Eine große Straße, ein großer Hund."),
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    corpus = [text for pair in PAIRS for text in pair] * 60
    corpus += [f"{a} {b} {n}" for n in range(30) for a, b in PAIRS]
    return train_unigram_tokenizer(corpus, vocab_size=120)


def reference_token_span(offsets, ids, lone_id, start, end):
    """Independent reference: indices of non-empty, non-lone-▁ tokens overlapping [start, end)."""
    hit = [k for k, (a, b) in enumerate(offsets) if a < end and b > start and b > a and ids[k] != lone_id]
    return (hit[0], hit[-1] + 1) if hit else None


def test_spans_decode_back_to_the_matched_words(en_de, tiny_tokenizer):
    mined = list(mine_corpus(PAIRS, en_de, tiny_tokenizer, batch_size=4))
    lone = tiny_tokenizer.convert_tokens_to_ids("▁")
    assert len(mined) == len(PAIRS)
    checked = 0
    for (src, tgt), result in zip(PAIRS, mined):
        src_enc = tiny_tokenizer(src, add_special_tokens=False, return_offsets_mapping=True)
        tgt_enc = tiny_tokenizer(tgt, add_special_tokens=False, return_offsets_mapping=True)
        assert result.src_ids == src_enc["input_ids"] and result.tgt_ids == tgt_enc["input_ids"]
        word_pairs = en_de.match(src, tgt)
        assert len(result.spans) == len(word_pairs)
        for (s0, s1, t0, t1), ((a, b), (c, d)) in zip(result.spans, word_pairs):
            assert (s0, s1) == reference_token_span(src_enc["offset_mapping"], result.src_ids, lone, a, b)
            assert (t0, t1) == reference_token_span(tgt_enc["offset_mapping"], result.tgt_ids, lone, c, d)
            src_piece = tiny_tokenizer.decode(result.src_ids[s0:s1]).strip()
            tgt_piece = tiny_tokenizer.decode(result.tgt_ids[t0:t1]).strip()
            # pieces never cross a space (Metaspace), but may carry attached punctuation
            assert src_piece.strip(".,!") == src[a:b] and tgt_piece.strip(".,!") == tgt[c:d]
            checked += 1
    assert checked == 14  # 3 + 3 + 2 + 4 + 0 + 2 hand-counted (big/großen: other word form, no match)


def test_mining_statistics_and_truncation(en_de, tiny_tokenizer):
    stats = MiningStats()
    list(mine_corpus(PAIRS, en_de, tiny_tokenizer, batch_size=2, stats=stats))
    assert stats.as_dict() == {
        "pairs": 6, "pairs_with_match": 5, "share_with_match": 5 / 6,
        "matches": 14, "matches_per_pair": 14 / 6, "unmappable": 0, "truncated": 0,
    }
    # cut to 3 tokens before matching: "▁ T h" | "▁D e r" -- the cut inside "The" keeps the whole
    # word, so The/Der is the one match (▁ trimmed: tokens 1-3 / 0-3); the cut pair is counted
    short = MiningStats()
    mined = list(mine_corpus(PAIRS[:1], en_de, tiny_tokenizer, max_length=3, stats=short))
    assert len(mined[0].src_ids) == 3 and len(mined[0].tgt_ids) == 3
    assert mined[0].spans == [(1, 3, 0, 3)]
    assert (short.truncated, short.matches, short.unmappable) == (1, 1, 0)


def test_workers_give_the_same_result_in_order(en_de, tiny_tokenizer):
    pairs = PAIRS * 5
    one = list(mine_corpus(pairs, en_de, tiny_tokenizer, batch_size=4))
    stats = MiningStats()
    two = list(mine_corpus(iter(pairs), en_de, tiny_tokenizer, batch_size=4, num_workers=2, stats=stats))
    assert one == two
    assert stats.pairs == 30 and stats.matches == 70
    assert list(mine_corpus(pairs, en_de, tiny_tokenizer, batch_size=7, overlap=False)) == one


# -------------------------------------------------------------------------- storage


def test_span_storage_round_trip_and_validation(tmp_path):
    per_pair = [[(1, 2, 1, 3), (4, 6, 5, 6)], [], [(0, 1, 2, 4)]]
    spans, offsets = pack_spans(per_pair)
    assert spans.dtype == np.int32 and spans.shape == (3, 4)
    assert offsets.tolist() == [0, 2, 2, 3]
    path = tmp_path / "shard-00000.spans.npz"
    save_spans(path, spans, offsets)
    loaded_spans, loaded_offsets = load_spans(path)
    assert [spans_of_pair(loaded_spans, loaded_offsets, i).tolist() for i in range(3)] == [
        [[1, 2, 1, 3], [4, 6, 5, 6]], [], [[0, 1, 2, 4]],
    ]
    empty_spans, empty_offsets = pack_spans([[], []])
    save_spans(path, empty_spans, empty_offsets)
    assert load_spans(path)[1].tolist() == [0, 0, 0]
    with pytest.raises(InputError, match="offsets must run from 0 to 3"):
        save_spans(path, spans, np.array([0, 2, 2]))
    with pytest.raises(InputError, match="empty or negative"):
        save_spans(path, np.array([[2, 2, 0, 1]]), np.array([0, 1]))
    assert load_spans(path)[1].tolist() == [0, 0, 0]  # failed writes left the file as it was
    path.write_bytes(b"not numpy")
    with pytest.raises(InputError, match="not a span file"):
        load_spans(path)
    with pytest.raises(InputError, match="file not found"):
        load_spans(tmp_path / "missing.npz")
