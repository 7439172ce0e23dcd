"""Reporting layer: golden tests on the synthetic results tree of tests/data/results_tree.

The tree's values are documented in tests/data/results_tree/generate.py: per variant, seeds 1/2/3
shift every fine-tuned score by -1/0/+1 times the variant's spread (so mean = base + offset,
sample std = spread), languages en/second/third shift by +6/-2/-4 (task mean unchanged, non-English
mean 3 below it, transfer gap 9).  Every expected number below follows from those rules by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from veco2.errors import InputError
from veco2.report import build_report, load_results
from veco2.report.html import external_references
from veco2.report.tables import (MISSING, ablation_table, cost_table, main_table, per_language_table, probe_table,
                                 significance)

TREE = Path(__file__).parent / "data" / "results_tree"
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def tree():
    return load_results(TREE)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    return build_report(TREE, tmp_path_factory.mktemp("report"))


def _row(frame: pd.DataFrame, key: str, value: str) -> pd.Series:
    rows = frame[frame[key] == value]
    assert len(rows) == 1, f"{key}={value}: {len(rows)} rows"
    return rows.iloc[0]


# ---------------------------------------------------------------------------------------------
# Golden tables
# ---------------------------------------------------------------------------------------------


def test_main_table_golden(tree):
    table = main_table(tree)
    num, disp = table.numeric, table.display
    mlm = _row(num, "model", "mlm")
    assert mlm["XNLI"] == pytest.approx(70.0) and mlm["XNLI std"] == pytest.approx(1.0)
    assert mlm["XQuAD F1"] == pytest.approx(66.0) and mlm["XQuAD EM"] == pytest.approx(56.0)
    assert mlm["TyDiQA EM std"] == pytest.approx(1.0)
    assert mlm["BUCC"] == pytest.approx(40.0) and math.isnan(mlm["BUCC std"])  # one deterministic run
    assert mlm["Classification"] == pytest.approx(75.0)
    assert mlm["QA"] == pytest.approx((61 + 51 + 47) / 3)
    assert mlm["Retrieval"] == pytest.approx(39.0) and math.isnan(mlm["Retrieval std"])
    # XTREME score = mean of the nine task scores; 7 of 9 tasks move with the seed.
    assert mlm["Avg"] == pytest.approx(58.0) and mlm["Avg std"] == pytest.approx(7 / 9)
    tok = _row(num, "model", "mlm_tok")
    assert tok["Avg"] == pytest.approx(59.5) and tok["Avg std"] == pytest.approx(14 / 9)

    shown = _row(disp, "Model", "mlm")
    assert shown["XNLI"] == "70.0 ± 1.0"
    assert shown["XQuAD (F1/EM)"] == "66.0 ± 1.0/56.0 ± 1.0"
    assert shown["BUCC"] == "40.0"
    assert shown["Avg"] == "58.0 ± 0.8"
    assert shown["Seeds"] == "3"
    assert list(disp.columns[3:]) == ["XNLI", "PAWS-X", "POS", "NER", "XQuAD (F1/EM)", "MLQA (F1/EM)",
                                      "TyDiQA (F1/EM)", "BUCC", "Tatoeba", "Classification", "Structured", "QA",
                                      "Retrieval", "Avg", "Avg en", "Avg non-en", "Avg Δ mlm"]
    # English apart (the 7 tasks with an English test set: +6 each) and the non-English mean (-3 on
    # those 7, the retrieval tasks' score on the other 2): (444 + 42) / 7 and (444 - 21 + 78) / 9.
    assert mlm["Avg en"] == pytest.approx(486 / 7) and mlm["Avg en std"] == pytest.approx(1.0)
    assert mlm["Avg non-en"] == pytest.approx(501 / 9) and mlm["Avg non-en std"] == pytest.approx(7 / 9)
    assert shown["Avg en"] == "69.4 ± 1.0" and shown["Avg non-en"] == "55.7 ± 0.8"
    # The XTREME score's delta against mlm (OFFSET of generate.py), n/a on mlm itself.
    assert _row(num, "model", "mlm_seq_tok")["Avg Δ mlm"] == pytest.approx(3.0)
    assert _row(disp, "Model", "mlm_tok")["Avg Δ mlm"] == "+1.5" and shown["Avg Δ mlm"] == "n/a"

    # Reference rows: visibly labelled, with their source, and outside our numbers.
    mbert = _row(disp, "Model", "mBERT (reported)")
    assert mbert["Source"].startswith("reported: Hu et al. 2020")
    assert mbert["XQuAD (F1/EM)"] == "64.5/49.4" and mbert["Avg"] == "59.6"
    assert _row(disp, "Model", "VECO large (reported)")["PAWS-X"] == "n/r"
    assert table.row_kinds[-3:] == ["reported"] * 3
    without = main_table(tree, references=False).numeric
    pd.testing.assert_frame_equal(without, num.iloc[: len(without)][without.columns], check_dtype=False)
    assert set(tree.summary["variant"]) == {"mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok"}


def test_ablation_table_deltas_and_significance(tree):
    table = ablation_table(tree)
    num, disp = table.numeric, table.display
    assert list(num["variant"]) == ["mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok"]
    seq, tok, both = (_row(num, "variant", v) for v in ("mlm_seq", "mlm_tok", "mlm_seq_tok"))
    assert seq["XNLI Δ"] == pytest.approx(2.0) and seq["XNLI significant"] is True  # 2 >= max(1, 1)
    assert tok["XNLI Δ"] == pytest.approx(1.5) and tok["XNLI significant"] is False  # 1.5 < max(2, 1)
    assert both["Avg Δ"] == pytest.approx(3.0) and both["Avg significant"] is True  # 3 >= 7/9
    assert tok["Avg Δ"] == pytest.approx(1.5) and tok["Avg significant"] is False  # 1.5 < 14/9
    assert seq["BUCC Δ"] == pytest.approx(2.0) and seq["BUCC significant"] is None  # single runs
    assert _row(disp, "Variant", "mlm")["XNLI"] == "70.0 ± 1.0"
    assert _row(disp, "Variant", "mlm_seq")["XNLI"] == "72.0 ± 1.0 (+2.0)"
    assert _row(disp, "Variant", "mlm_tok")["XNLI"] == "71.5 ± 2.0 (+1.5 n.s.)"
    assert _row(disp, "Variant", "mlm_seq")["BUCC"] == "42.0 (+2.0 ?)"
    assert _row(disp, "Variant", "mlm_seq_tok")["Avg"] == "61.0 ± 0.4 (+3.0)"


def test_transfer_and_english_ablation_tables_split_the_languages(tree):
    transfer = ablation_table(tree, scope="non-en")
    english = ablation_table(tree, scope="en")
    assert transfer.name == "transfer" and english.name == "ablation_en"
    seq = _row(transfer.numeric, "variant", "mlm_seq")
    assert seq["XNLI"] == pytest.approx(72.0 - 3) and seq["XNLI Δ"] == pytest.approx(2.0)  # de -2, es -4
    assert seq["BUCC"] == pytest.approx(42.0)  # retrieval: every language is non-English
    assert seq["Avg"] == pytest.approx((444 - 21 + 78) / 9 + 2.0) and seq["Avg Δ"] == pytest.approx(2.0)
    assert _row(transfer.display, "Variant", "mlm_seq")["XNLI"] == "69.0 ± 1.0 (+2.0)"
    tok = _row(english.numeric, "variant", "mlm_tok")
    assert tok["XNLI"] == pytest.approx(71.5 + 6) and tok["XNLI std"] == pytest.approx(2.0)
    assert tok["XQuAD"] == pytest.approx(66 - 5 + 1.5 + 6)  # (F1 + EM) / 2 of English
    assert math.isnan(tok["BUCC"]) and _row(english.display, "Variant", "mlm_tok")["Tatoeba"] == "n/a"
    assert tok["Avg"] == pytest.approx(486 / 7 + 1.5) and tok["Avg Δ"] == pytest.approx(1.5)
    assert "non-English" in transfer.notes[0] and "English test sets only" in english.notes[0]


def test_significance_rule():
    assert significance(1.0, 1.0, 0.5) is True  # equal to the larger std: not "smaller than"
    assert significance(-0.99, math.nan, 1.0) is False
    assert significance(2.0, math.nan, math.nan) is None
    assert significance(math.nan, 1.0, 1.0) is None


def test_per_language_tables(tree):
    xnli = per_language_table(tree, "xnli")
    mlm = _row(xnli.numeric, "variant", "mlm")
    assert list(xnli.numeric.columns) == ["variant", "en", "de", "es", "mean (non-en)", "gap (en − rest)",
                                          "mean (non-en) Δ mlm"]
    assert _row(xnli.numeric, "variant", "mlm_seq")["mean (non-en) Δ mlm"] == pytest.approx(2.0)
    assert _row(xnli.display, "Model", "mlm")["mean (non-en) Δ mlm"] == "n/a"
    assert (mlm["en"], mlm["de"], mlm["es"]) == pytest.approx((76.0, 68.0, 66.0))
    assert mlm["mean (non-en)"] == pytest.approx(67.0) and mlm["gap (en − rest)"] == pytest.approx(9.0)
    assert _row(xnli.display, "Model", "mlm_tok")["gap (en − rest)"] == "+9.0"
    # QA per language = (F1 + EM) / 2: en F1 = 66 + 6 = 72, EM = 62.
    xquad = per_language_table(tree, "xquad")
    assert _row(xquad.numeric, "variant", "mlm")["en"] == pytest.approx(67.0)
    # Retrieval tasks pair every language with English: no English column, gap n/a.
    bucc = per_language_table(tree, "bucc2018")
    assert "en" not in bucc.numeric.columns
    assert _row(bucc.numeric, "variant", "mlm_seq")["mean (non-en)"] == pytest.approx(42.0)
    assert set(bucc.display["gap (en − rest)"]) == {"n/a"}


def test_cost_table(tree):
    num = cost_table(tree).numeric
    assert list(num["relative_cost"]) == pytest.approx([1.0, 1.25, 2.0, 2.5])
    assert list(num["peak_rss_mb"]) == pytest.approx([2000, 2100, 2200, 2300])
    assert list(num["wall_time_s"]) == pytest.approx([100, 125, 200, 250])
    assert list(cost_table(tree).display["Wall time"]) == ["0:01:40", "0:02:05", "0:03:20", "0:04:10"]


def test_cost_is_cpu_time_per_token_when_recorded_and_ignores_a_distorted_wall_clock(tmp_path):
    """With CPU times in summary.json the cost ratio is theirs: mlm_tok's tokens/s collapsing (it shared
    its cores) does not make it dear; a run without CPU times falls back to the wall ratio, marked."""
    import json
    import shutil

    root = tmp_path / "tree"
    shutil.copytree(TREE, root)
    cpu = {"mlm": 0.002, "mlm_seq": 0.0024, "mlm_tok": 0.0021}  # CPU s per token; mlm_seq_tok: none recorded
    for variant, seconds in cpu.items():
        path = root / "pretrain" / variant / "summary.json"
        summary = json.loads(path.read_text())
        summary.update(median_cpu_seconds_per_token=seconds, torch_threads=1)
        if variant == "mlm_tok":
            summary["median_tokens_per_s"] = summary["median_tokens_per_s"] / 16.7  # wall clock under contention
        path.write_text(json.dumps(summary))
    table = cost_table(load_results(root))
    num, disp = table.numeric, table.display
    assert list(num["relative_cost"]) == pytest.approx([1.0, 1.2, 1.05, 2.5])
    assert list(num["relative_cost_measure"]) == ["cpu", "cpu", "cpu", "wall"]
    assert list(disp["Cost vs mlm (×)"]) == ["1.00", "1.20", "1.05", "2.50 (wall)"]
    assert list(disp["CPU s / 1k tokens"]) == ["2.000", "2.400", "2.100", MISSING]
    assert "CPU time of the training process" in table.notes[0]


def test_retrieval_by_layer_and_sweeps_loaded(tree):
    layers = tree.by_layer[(tree.by_layer["variant"] == "mlm") & (tree.by_layer["task"] == "bucc2018")]
    assert dict(zip(layers["layer"], layers["score"])) == pytest.approx({0: 30.0, 1: 35.0, 2: 40.0})
    trials = tree.sweeps["seq_weight"]["trials"]
    assert len(trials) == 5 and trials["value"].max() == pytest.approx(58.5)
    assert tree.missing == []


# ---------------------------------------------------------------------------------------------
# Written outputs
# ---------------------------------------------------------------------------------------------


def test_outputs_written(full_report):
    out = full_report.out_dir
    for name in ("transfer", "main", "ablation_en", "ablation", "cost", "per_language_xnli", "per_language_tatoeba"):
        for ext in ("csv", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0
    tex = (out / "tables" / "main.tex").read_text(encoding="utf-8")
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "70.0 $\\pm$ 1.0" in tex and "mlm\\_seq\\_tok" in tex
    md = (out / "tables" / "ablation.md").read_text(encoding="utf-8")
    assert "| mlm_tok " in md and "71.5 ± 2.0 (+1.5 n.s.)" in md
    csv = pd.read_csv(out / "tables" / "main.csv")
    assert _row(csv, "model", "mlm_seq")["Avg"] == pytest.approx(60.0)
    for name in ("ablation_bars", "delta_heatmap", "loss_curves", "retrieval_by_layer", "word_translation_by_layer",
                 "sweep_seq_weight"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (out / "figures" / f"{name}.svg").read_bytes()[:2000]
    assert (out / "missing.txt").read_text(encoding="utf-8") == ""
    html = full_report.html.read_text(encoding="utf-8")
    assert 'id="table-main"' in html and "mBERT (reported)" in html
    # the headline first: the cross-lingual table, then the main table, English, all languages
    order = [html.index(f'id="{anchor}"') for anchor in ("transfer-table", "main-table", "ablation-en-table",
                                                          "ablation-table")]
    assert order == sorted(order)
    assert html.count('src="data:image/png;base64,') == 6
    assert external_references(html) == []
    assert "http://" not in html and "https://" not in html
    assert "0123456789abcdef" in html and "cfg-mlm_seq" in html  # provenance of the runs


def test_external_reference_detector_catches_urls():
    assert external_references('<img src="https://cdn.example/x.png">')
    assert external_references("<link href='//cdn.example/a.css'>")
    assert external_references("<style>a { background: url( http://x/y.png ) }</style>")
    assert external_references('<img src="data:image/png;base64,AAAA">') == []


# ---------------------------------------------------------------------------------------------
# Partial trees: gaps are "—" and listed, never zeros
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def partial_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial") / "results"
    shutil.copytree(TREE, root, ignore=shutil.ignore_patterns("generate.py"))
    shutil.rmtree(root / "xtreme" / "mlm_tok" / "xnli")  # a whole task
    shutil.rmtree(root / "xtreme" / "mlm_seq" / "pawsx" / "seed3")  # one seed
    path = root / "xtreme" / "mlm_seq_tok" / "udpos" / "seed2" / "results.json"
    record = json.loads(path.read_text())  # a run without one of the task's languages
    record["languages"].remove("es")
    del record["scores"]["es"]
    path.write_text(json.dumps(record))
    for result in (root / "xtreme").glob("*/*/seed0/results.json"):  # retrieval without the layer sweep
        record = json.loads(result.read_text())
        record.pop("task_score_by_layer")
        result.write_text(json.dumps(record))
    (root / "pretrain" / "mlm_tok" / "metrics.jsonl").unlink()
    (root / "benchmarks" / "pretrain" / "mlm_seq_tok.tsv").unlink()
    shutil.copy(Path(__file__).parent / "data" / "results_tree" / "generate.py", root / "unrelated.py")
    # The sweep's own Optuna plot (veco2.sweep writes sweeps/{study}/plots/*.png) is embedded as is.
    (root / "sweeps" / "seq_weight" / "plots").mkdir()
    (root / "sweeps" / "seq_weight" / "plots" / "history.png").write_bytes(_tiny_png())
    return root


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buffer, format="PNG")
    return buffer.getvalue()


EXPECTED_GAPS = [
    "xtreme/mlm_seq_tok/udpos/seed2: language(s) es missing; run left out of the means",
    "xtreme/mlm_seq/pawsx: seed(s) 3 missing",
    "xtreme/mlm_tok: task(s) xnli missing",
    "pretrain/mlm_tok/metrics.jsonl missing",
    "benchmarks/pretrain/mlm_seq_tok.tsv missing",
]


def test_partial_tree_shows_gaps(partial_tree, tmp_path, capsys, caplog):
    from veco2.report.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(partial_tree), "--out", str(tmp_path / "out")])
    with caplog.at_level("WARNING"):
        assert args.func(args) == 0
    stderr = capsys.readouterr().err
    missing = (tmp_path / "out" / "missing.txt").read_text(encoding="utf-8").splitlines()
    assert sorted(missing) == sorted(EXPECTED_GAPS)
    for gap in EXPECTED_GAPS:
        assert gap in stderr and gap in caplog.text

    tree = load_results(partial_tree)
    main = main_table(tree)
    tok = _row(main.display, "Model", "mlm_tok")
    assert tok["XNLI"] == MISSING and tok["Classification"] == MISSING and tok["Avg"] == MISSING
    assert tok["PAWS-X"] == "81.5 ± 2.0"  # the rest of the row is still there
    assert math.isnan(_row(main.numeric, "model", "mlm_tok")["XNLI"])
    seq = _row(main.numeric, "model", "mlm_seq")  # seeds 1, 2 of pawsx: 81, 82
    assert seq["PAWS-X"] == pytest.approx(81.5) and seq["PAWS-X std"] == pytest.approx(0.5 ** 0.5)
    assert _row(main.display, "Model", "mlm_seq")["Seeds"] == "2–3"
    both = _row(main.numeric, "model", "mlm_seq_tok")  # udpos seeds 1, 3: 77.5, 78.5
    assert both["POS"] == pytest.approx(78.0) and both["POS std"] == pytest.approx(0.5 ** 0.5)

    assert _row(ablation_table(tree).display, "Variant", "mlm_tok")["XNLI"] == MISSING
    assert set(_row(per_language_table(tree, "xnli").display, "Model", "mlm_tok").iloc[1:]) == {MISSING}
    assert _row(cost_table(tree).display, "Variant", "mlm_seq_tok")["Wall time"] == MISSING

    csv = pd.read_csv(tmp_path / "out" / "tables" / "main.csv", keep_default_na=False)
    assert _row(csv, "model", "mlm_tok")["XNLI"] == ""  # empty, not 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert 'id="missing"' in html and "xtreme/mlm_tok: task(s) xnli missing" in html
    assert '<td class="missing">—</td>' in html
    assert 'id="sweep-seq_weight-history.png"' in html
    assert "Retrieval accuracy by layer: not available" in html
    assert tree.by_layer.empty


def test_tree_without_any_qa_task_renders_qa_columns_as_missing(tmp_path):
    root = tmp_path / "results"
    shutil.copytree(TREE, root, ignore=shutil.ignore_patterns("generate.py", "xquad", "mlqa", "tydiqa"))
    main = main_table(load_results(root))
    row = _row(main.display, "Model", "mlm")
    assert row["XQuAD (F1/EM)"] == row["QA"] == row["Avg"] == MISSING
    assert row["XNLI"] == "70.0 ± 1.0"


def test_bad_inputs_name_file_and_line(tmp_path):
    root = tmp_path / "results"
    (root / "pretrain" / "mlm").mkdir(parents=True)
    (root / "pretrain" / "mlm" / "summary.json").write_text("{not json")
    with pytest.raises(InputError, match=r"summary.json:1: corrupt JSON"):
        load_results(root)
    (root / "pretrain" / "mlm" / "summary.json").write_text("{}")
    bench = root / "benchmarks" / "pretrain" / "mlm.tsv"
    bench.parent.mkdir(parents=True)
    bench.write_text("s\th:m:s\tmax_rss\n1.0\t0:00:01\n")
    with pytest.raises(InputError, match=r"mlm.tsv:2: 2 cells for 3 columns"):
        load_results(root)
    with pytest.raises(InputError, match="results directory not found"):
        load_results(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------
# Notebook and headless Chromium
# ---------------------------------------------------------------------------------------------


def test_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "reports" / "veco2_results.ipynb", as_version=4)
    os.environ["VECO2_RESULTS"] = str(TREE)
    try:
        nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        del os.environ["VECO2_RESULTS"]
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 variants: mlm, mlm_seq, mlm_tok, mlm_seq_tok" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 6
    html_tables = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "70.0 ± 1.0" in html_tables


def _chromium(url: str, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
               f"--user-data-dir={tmp / 'profile'}", "--window-size=1600,1000", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def page_requests(net_log: Path) -> list[str]:
    """URLs the PAGE asked for, from a Chromium ``--log-net-log`` file.

    Chromium's own background traffic (update checks, account probes) has initiator
    "not an origin"; requests made by a page carry the page's origin ("null" for file://).
    """
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] == start_job and "url" in params and params.get("initiator") != "not an origin":
            urls.append(params["url"])
    return urls


@pytest.mark.chromium
@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian package "
                                                  "'chromium') is not installed; .ci/run installs it")
def test_report_in_headless_chromium(full_report, tmp_path):
    from PIL import Image

    url = full_report.html.resolve().as_uri()
    shot, net_log = tmp_path / "report.png", tmp_path / "net.json"
    result = _chromium(url, tmp_path, f"--screenshot={shot}", f"--log-net-log={net_log}")
    assert shot.exists(), result.stderr[-2000:]
    requests = page_requests(net_log)
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []

    dom = _chromium(url, tmp_path, "--dump-dom").stdout
    assert 'id="table-main"' in dom and "70.0 ± 1.0" in dom and "mBERT (reported)" in dom

    image = Image.open(shot).convert("L")
    assert image.size == (1600, 1000)
    # The main table sits in the first screen: its rows are dark text on white, so the middle band
    # of the screenshot is far from blank.
    band = image.crop((0, 250, 1600, 500))
    dark = sum(1 for p in band.tobytes() if p < 128)
    assert dark > 5000, f"only {dark} dark pixels where the main table should be"

    # The detector itself must see a page that does fetch something.
    leaky = tmp_path / "leaky.html"
    leaky.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    _chromium(leaky.as_uri(), tmp_path, f"--screenshot={tmp_path / 'leaky.png'}",
              f"--log-net-log={tmp_path / 'leaky.json'}")
    assert "http://example.invalid/x.png" in page_requests(tmp_path / "leaky.json")


# ---------------------------------------------------------------------------------------------
# Baselines: models scored without pre-training here (the workflow's `baselines:`)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree_with_baseline(tmp_path_factory):
    """The golden tree plus a baseline ``xlmr``: mlm's XTREME results with every score 4 lower,
    and no pretrain/ directory (as the workflow writes a hub model's results)."""
    root = tmp_path_factory.mktemp("with_baseline") / "results"
    shutil.copytree(TREE, root)
    shutil.copytree(root / "xtreme" / "mlm", root / "xtreme" / "xlmr")
    for path in (root / "xtreme" / "xlmr").glob("*/seed*/results.json"):
        doc = json.loads(path.read_text())
        doc["scores"] = {lang: {metric: value - 4.0 for metric, value in metrics.items()}
                         for lang, metrics in doc["scores"].items()}
        path.write_text(json.dumps(doc))
    return load_results(root)


def test_a_model_without_pretraining_is_a_baseline_row_in_every_table(tree_with_baseline):
    tree = tree_with_baseline
    assert tree.variants == ["mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok", "xlmr"] and tree.baselines == ["xlmr"]
    assert not [gap for gap in tree.missing if "xlmr" in gap]  # no pre-training outputs are expected of it

    main = main_table(tree, references=False)
    xlmr, seq = _row(main.numeric, "model", "xlmr"), _row(main.numeric, "model", "mlm_seq")
    assert xlmr["source"] == "this suite: baseline (not pre-trained here)"
    assert xlmr["XNLI"] == pytest.approx(66.0) and xlmr["Avg"] == pytest.approx(54.0)  # mlm's 58 - 4
    assert seq["Avg Δ mlm"] == pytest.approx(2.0) and seq["Avg Δ xlmr"] == pytest.approx(6.0)
    assert xlmr["Avg Δ mlm"] == pytest.approx(-4.0)
    assert _row(main.display, "Model", "xlmr")["Avg Δ xlmr"] == "n/a"

    ablation = ablation_table(tree)
    assert list(ablation.numeric["variant"]) == tree.variants
    row = _row(ablation.numeric, "variant", "mlm_seq")
    assert row["XNLI Δ"] == pytest.approx(2.0) and row["XNLI Δ xlmr"] == pytest.approx(6.0)
    assert row["XNLI significant xlmr"] is True  # 6 >= max(1, 1)
    assert _row(ablation.display, "Variant", "mlm_seq")["XNLI"] == "72.0 ± 1.0 (+2.0; +6.0)"
    assert _row(ablation.display, "Variant", "mlm")["XNLI"] == "70.0 ± 1.0 (+4.0)"  # only against xlmr
    assert _row(ablation.display, "Variant", "xlmr")["XNLI"] == "66.0 ± 1.0 (-4.0)"
    assert "Δ against mlm and xlmr" in ablation.title

    xnli = per_language_table(tree, "xnli")
    assert _row(xnli.numeric, "variant", "mlm_tok")["mean (non-en) Δ xlmr"] == pytest.approx(5.5)  # 1.5 + 4

    cost = cost_table(tree)
    assert list(cost.numeric["variant"]) == ["mlm", "mlm_seq", "mlm_tok", "mlm_seq_tok"]  # not pre-trained here


def test_demo_results_carry_the_banner_in_every_caption_and_page(tmp_path, full_report):
    from veco2.report.load import DEMO_BANNER

    assert DEMO_BANNER not in full_report.html.read_text()  # the golden tree is not demo data
    root = tmp_path / "results"
    shutil.copytree(TREE, root)
    path = root / "xtreme" / "mlm" / "xnli" / "seed1" / "results.json"
    doc = json.loads(path.read_text())
    doc["data"] = {**(doc.get("data") or {}), "demo": True}  # one run on the packaged demo data is enough
    path.write_text(json.dumps(doc))
    outputs = build_report(root, tmp_path / "report")
    assert f'id="demo-banner"><strong>{DEMO_BANNER}.' in outputs.html.read_text()
    for name in ("main", "ablation", "cost", "per_language_xnli"):
        assert (outputs.out_dir / "tables" / f"{name}.md").read_text().startswith("**")
        assert DEMO_BANNER in (outputs.out_dir / "tables" / f"{name}.md").read_text().splitlines()[0]
        assert DEMO_BANNER in (outputs.out_dir / "tables" / f"{name}.tex").read_text()


def test_loss_curves_plot_each_term_on_its_own_axis_and_not_their_sum(tree):
    from veco2.report.plots import plot_loss_curves

    fig = plot_loss_curves(tree)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["MLM loss", "sequence contrastive loss", "token contrastive loss"]  # no weighted total
    mlm_panel = fig.axes[0]
    lines = {line.get_label(): line for line in mlm_panel.get_lines()}
    frame = tree.metrics["mlm"]
    assert list(lines["mlm"].get_ydata()) == list(frame["loss_mlm"])


def test_an_added_variant_is_in_every_table_and_the_reference_is_a_setting(tmp_path):
    """A copied ablation file runs as one more variant (pretrain/, xtreme/, a benchmark file): every
    table has its row, and the variant deltas are taken against `reference` (report.reference)."""
    root = tmp_path / "results"
    shutil.copytree(TREE, root)
    for part in ("pretrain", "xtreme"):
        shutil.copytree(root / part / "mlm_seq", root / part / "mlm_seq_half")
    shutil.copy(root / "benchmarks" / "pretrain" / "mlm_seq.tsv", root / "benchmarks" / "pretrain" / "mlm_seq_half.tsv")
    tree = load_results(root)
    assert "mlm_seq_half" in tree.variants and tree.baselines == []
    for table in (main_table(tree, references=False), ablation_table(tree), cost_table(tree),
                  per_language_table(tree, "xnli")):
        assert "mlm_seq_half" in set(table.numeric.iloc[:, 0]), table.name
    assert _row(ablation_table(tree).numeric, "variant", "mlm_seq_half")["XNLI Δ"] == pytest.approx(2.0)

    against_seq = load_results(root, reference="mlm_seq")
    table = ablation_table(against_seq)
    assert table.title == "Ablation of the alignment objectives, all languages (Δ against mlm_seq)"
    assert _row(table.numeric, "variant", "mlm")["XNLI Δ"] == pytest.approx(-2.0)
    assert _row(table.numeric, "variant", "mlm_seq_half")["XNLI Δ"] == pytest.approx(0.0)
    assert _row(cost_table(against_seq).numeric, "variant", "mlm")["relative_cost"] == pytest.approx(0.8)


def _write_run(root, variant, task, seed, languages, correct: dict):
    """A results.json and its example_statistics.json, consistent with each other."""
    import numpy as np

    from veco2.xtreme import aggregate
    from veco2.xtreme.metrics import ExampleStatistics
    from veco2.xtreme.results import RunResult, write_example_statistics

    seed_dir = root / "xtreme" / variant / task / f"seed{seed}"
    stats = {lang: ExampleStatistics("mean", ["accuracy"], np.asarray(correct[lang], float)[:, None])
             for lang in languages}
    scores = {lang: s.score() for lang, s in stats.items()}
    summary = aggregate.task_score(scores, task, languages=languages)
    write_example_statistics(seed_dir, stats)
    RunResult(task=task, languages=languages, seed=seed, scores=scores, task_score=summary["score"],
              data={"demo": False}).write(seed_dir / "results.json")


def test_single_runs_split_by_language_have_intervals_and_no_spread(tmp_path):
    """One seed (the demo): the English and non-English cells are one value with its bootstrap
    interval, never "± 0.0", and the transfer Δ is the hand-computed difference of means."""
    languages = ["en", "de", "es"]
    mlm = {"en": [1] * 8 + [0] * 2, "de": [1] * 3 + [0] * 7, "es": [1] * 4 + [0] * 6}
    seq = {"en": [1] * 8 + [0] * 2, "de": [1] * 6 + [0] * 4, "es": [1] * 5 + [0] * 5}
    _write_run(tmp_path, "mlm", "xnli", 1, languages, mlm)
    _write_run(tmp_path, "mlm_seq", "xnli", 1, languages, seq)
    tree = load_results(tmp_path)
    transfer = _row(ablation_table(tree, scope="non-en").numeric, "variant", "mlm_seq")
    assert transfer["XNLI"] == pytest.approx(55.0) and math.isnan(transfer["XNLI std"])  # (60 + 50) / 2
    assert transfer["XNLI Δ"] == pytest.approx(55.0 - 35.0)
    assert transfer["XNLI Δ low"] <= 20.0 <= transfer["XNLI Δ high"]
    english = _row(ablation_table(tree, scope="en").numeric, "variant", "mlm_seq")
    assert english["XNLI"] == pytest.approx(80.0) and english["XNLI Δ"] == pytest.approx(0.0)
    main = _row(main_table(tree, references=False).display, "Model", "mlm")
    assert main["Avg en"].startswith("80.0 [") and main["Avg non-en"].startswith("35.0 [")


def test_ablation_deltas_carry_paired_bootstrap_intervals_that_decide_significance(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    languages = ["en", "de"]
    base = {lang: rng.integers(0, 2, 300) for lang in languages}
    for seed in (1, 2, 3):
        fixed = {lang: np.where(rng.random(300) < 0.4, 1, base[lang]) for lang in languages}  # +~20 points
        noise = {lang: base[lang].copy() for lang in languages}
        for lang in languages:
            noise[lang][rng.choice(300, 3, replace=False)] ^= 1  # 3 of 300 answers differ
        _write_run(tmp_path, "mlm", "xnli", seed, languages, base)
        _write_run(tmp_path, "mlm_seq", "xnli", seed, languages, fixed)
        _write_run(tmp_path, "mlm_tok", "xnli", seed, languages, noise)
    tree = load_results(tmp_path)
    table = ablation_table(tree)
    seq, tok = _row(table.numeric, "variant", "mlm_seq"), _row(table.numeric, "variant", "mlm_tok")
    assert seq["XNLI significant"] is True and seq["XNLI Δ low"] > 0
    assert tok["XNLI significant"] is False and tok["XNLI Δ low"] < 0 < tok["XNLI Δ high"]
    assert seq["XNLI Δ low"] < seq["XNLI Δ"] < seq["XNLI Δ high"]
    cell = _row(table.display, "Variant", "mlm_seq")["XNLI"]
    assert cell.endswith("]*)") and " [+" in cell
    assert "paired bootstrap interval over test examples and seeds (1000 resamples, seed 0)" in table.notes[0]
    main = main_table(tree, references=False)
    mlm = _row(main.numeric, "model", "mlm")
    assert mlm["XNLI low"] < mlm["XNLI"] < mlm["XNLI high"]


def test_probe_table_gives_word_translation_deltas_with_intervals(tmp_path):
    import json
    import shutil

    import numpy as np

    root = tmp_path / "tree"
    shutil.copytree(TREE, root)
    rng = np.random.default_rng(0)
    base = {lang: rng.integers(0, 2, (150, 2)) for lang in ("de", "zh")}
    better = {lang: np.maximum(rows, (rng.random((150, 2)) < 0.4).astype(int)) for lang, rows in base.items()}
    for variant, rows in (("mlm", base), ("mlm_tok", better), ("mlm_seq", base)):
        path = root / "pretrain" / variant / "summary.json"
        summary = json.loads(path.read_text())
        by_layer = {str(layer): {lang: 100 * r.mean() for lang, r in rows.items()} for layer in (0, 1)}
        for scores in by_layer.values():
            scores["mean"] = sum(scores.values()) / 2
        summary["word_translation"] = {"layer": 1, "items": {lang: 150 for lang in rows}, "by_layer": by_layer,
                                       "correct": {str(layer): {lang: r.tolist() for lang, r in rows.items()}
                                                   for layer in (0, 1)}}
        path.write_text(json.dumps(summary))
    table = probe_table(load_results(root))
    tok, seq = _row(table.numeric, "variant", "mlm_tok"), _row(table.numeric, "variant", "mlm_seq")
    expected = np.mean([100 * (better[lang].mean() - base[lang].mean()) for lang in ("de", "zh")])
    assert tok["word_translation Δ mlm"] == pytest.approx(expected)
    assert tok["word_translation Δ mlm significant"] is True and tok["word_translation Δ mlm low"] > 0
    assert seq["word_translation Δ mlm"] == pytest.approx(0.0) and seq["word_translation Δ mlm significant"] is False
    assert _row(table.display, "Variant", "mlm_tok")["Δ mlm"].endswith("]*")
    assert np.isnan(_row(table.numeric, "variant", "mlm_seq_tok")["word_translation"])  # no probe recorded
