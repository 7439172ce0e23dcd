"""Readers: each format, BOM, CRLF, gzip, counted skips and one-line errors."""

import gzip

import pytest

from veco2.data.readers import (
    ReadStats, read_dictionary, read_freedict_tei, read_monolingual, read_parallel, read_parallel_moses,
)
from veco2.errors import InputError


def write(path, data: bytes):
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def test_monolingual_bom_crlf_and_empty_lines_counted(tmp_path):
    path = write(tmp_path / "mono.txt", b"\xef\xbb\xbfFirst line\r\n\r\n  second  \r\n   \nthird")
    stats = ReadStats()
    assert list(read_monolingual(path, stats)) == ["First line", "second", "third"]
    assert (stats.read, stats.kept, stats.skipped) == (5, 3, {"empty line": 2})
    assert stats.skipped_lines["empty line"] == [2, 4]


def test_monolingual_gzip_and_invalid_utf8(tmp_path):
    path = write(tmp_path / "mono.txt.gz", "Grüße\n你好\n".encode())
    assert list(read_monolingual(path)) == ["Grüße", "你好"]
    bad = write(tmp_path / "bad.txt", b"ok\n\xff\xfe broken\n")
    with pytest.raises(InputError, match=r"bad.txt:2: invalid UTF-8"):
        list(read_monolingual(bad))


def test_parallel_tsv(tmp_path):
    path = write(tmp_path / "p.tsv.gz", b"\xef\xbb\xbfHello\tHallo\r\n\nOnly\t \nA b\tC d\n")
    stats = ReadStats()
    assert list(read_parallel(path, stats)) == [("Hello", "Hallo"), ("A b", "C d")]
    assert stats.skipped == {"empty line": 1, "empty side": 1}
    broken = write(tmp_path / "broken.tsv", b"a\tb\nno tab here\n")
    with pytest.raises(InputError, match=r"broken.tsv:2: expected 2 tab-separated columns"):
        list(read_parallel(broken))
    three = write(tmp_path / "three.tsv", b"a\tb\tc\n")
    with pytest.raises(InputError, match=r"three.tsv:1: .*found 3"):
        list(read_parallel(three))


def test_parallel_moses_aligned_and_mismatch(tmp_path):
    src = write(tmp_path / "c.en", b"one\ntwo\n\nfour\n")
    tgt = write(tmp_path / "c.de.gz", "eins\nzwei\ndrei\nvier\n".encode())
    stats = ReadStats()
    assert list(read_parallel_moses(src, tgt, stats)) == [("one", "eins"), ("two", "zwei"), ("four", "vier")]
    assert stats.skipped == {"empty side": 1} and stats.skipped_lines["empty side"] == [3]
    short = write(tmp_path / "short.de", b"eins\nzwei\n")
    with pytest.raises(InputError) as err:
        list(read_parallel_moses(src, short))
    message = str(err.value)
    assert "c.en" in message and "short.de" in message and "4" in message and "2 lines" in message


def test_dictionary_space_tab_and_malformed_counted(tmp_path):
    text = "cat Katze\ndog\tHund\nice cream\tEiscreme\n\nlonely\na b c\nred rot\n"
    path = write(tmp_path / "d.txt", text.encode())
    stats = ReadStats()
    pairs = read_dictionary(path, stats)
    assert pairs == [("cat", "Katze"), ("dog", "Hund"), ("ice cream", "Eiscreme"), ("red", "rot")]
    malformed = "malformed line (need 'src tgt' or 'src<TAB>tgt')"
    assert stats.skipped == {"empty line": 1, malformed: 2}
    assert stats.skipped_lines[malformed] == [5, 6]


def test_dictionary_all_malformed_is_an_error(tmp_path):
    path = write(tmp_path / "wrong.txt", b"just one field\n\nanother line of prose\n")
    with pytest.raises(InputError, match=r"wrong.txt:1: no usable dictionary line among 2"):
        read_dictionary(path)


TEI = """<?xml version="1.0" encoding="UTF-8"?>
<TEI xmlns="http://www.tei-c.org/ns/1.0"><text><body>
<entry><form><orth>cat</orth><pron>kat</pron></form>
  <sense><cit type="trans"><quote>Katze</quote></cit><cit type="trans"><quote>Kater</quote></cit></sense>
  <sense><cit type="trans"><quote>Katze</quote></cit></sense></entry>
<entry><form><orth>dog</orth></form><sense><cit type="trans"><quote>Hund</quote></cit></sense></entry>
<entry><form><orth>nothing</orth></form><sense><def>no translation</def></sense></entry>
</body></text></TEI>
"""


def test_freedict_tei(tmp_path):
    path = write(tmp_path / "eng-deu.tei.gz", TEI.encode())
    stats = ReadStats()
    assert list(read_freedict_tei(path, stats)) == [("cat", ["Katze", "Kater"]), ("dog", ["Hund"])]
    assert stats.skipped == {"entry without translation": 1}
    broken = write(tmp_path / "broken.tei", b"<TEI><entry><orth>x</orth>\n</TEI>")
    with pytest.raises(InputError, match=r"broken.tei:2: malformed TEI XML"):
        list(read_freedict_tei(broken))
