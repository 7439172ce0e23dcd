"""Published reference rows of the main table: every number has a source, and the rendered tables
label the rows "reported" (veco2/report/reference_rows.yaml, veco2.report.tables)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from veco2.errors import ConfigError
from veco2.report import load_results
from veco2.report.tables import REFERENCE_ROWS, REFERENCE_ROWS_FILE, load_reference_rows, main_table
from veco2.xtreme.aggregate import QA_TASKS, TASKS

TREE = Path(__file__).parent / "data" / "results_tree"
REPO = Path(__file__).resolve().parents[1]
ARXIV_ID = re.compile(r"arXiv \d{4}\.\d{4,5}")


@pytest.fixture(scope="module")
def table():
    return main_table(load_results(TREE))


def _row(frame, key, value):
    rows = frame[frame[key] == value]
    assert len(rows) == 1, f"{key}={value}: {len(rows)} rows"
    return rows.iloc[0]


def test_every_reference_row_has_a_source_with_an_arxiv_id():
    assert [row["model"] for row in REFERENCE_ROWS] == [
        "mBERT", "XLM-R base", "XLM-R large", "InfoXLM base", "InfoXLM large", "VECO large"]
    for row in REFERENCE_ROWS:
        assert row["source"].startswith("reported: "), row
        assert ARXIV_ID.search(row["source"]), f"{row['model']}: no arXiv id in {row['source']!r}"
        values = [v for task in TASKS if task in row for v in (row[task] if task in QA_TASKS else [row[task]])]
        assert values and all(0 < v <= 100 for v in values), row


def test_reference_rows_hold_the_published_numbers():
    rows = {row["model"]: row for row in REFERENCE_ROWS}
    # ERNIE-M README tables (PaddlePaddle/ERNIE ernie-m/README_zh.md): XNLI Avg, MLQA Avg F1/EM
    assert rows["XLM-R base"] == {"model": "XLM-R base", "source": rows["XLM-R base"]["source"],
                                  "xnli": 76.2, "mlqa": (63.7, 46.3)}
    assert (rows["InfoXLM base"]["xnli"], rows["InfoXLM base"]["mlqa"]) == (76.2, (67.9, 49.7))
    assert (rows["InfoXLM large"]["xnli"], rows["InfoXLM large"]["mlqa"]) == (81.4, (73.6, 55.2))
    assert "ERNIE-M (arXiv 2012.15674)" in rows["InfoXLM large"]["source"]
    # Hu et al. 2020 and the AliceMind README (unchanged)
    assert rows["XLM-R large"]["xquad"] == (76.6, 60.8) and rows["XLM-R large"]["Avg"] == 68.2
    assert (rows["VECO large"]["xnli"], rows["VECO large"]["tatoeba"]) == (79.9, 75.1)
    assert "arXiv 2003.11080" in rows["mBERT"]["source"]


def test_rendered_main_table_labels_every_reference_row_reported(table, tmp_path):
    n_ours = table.row_kinds.count("")
    reported = table.display.iloc[n_ours:]
    assert list(reported["Model"]) == [f"{row['model']} (reported)" for row in REFERENCE_ROWS]
    assert table.row_kinds[n_ours:] == ["reported"] * len(REFERENCE_ROWS)
    assert all(source.startswith("reported: ") for source in reported["Source"])
    assert all(kind == "" for kind in table.row_kinds[:n_ours])
    assert not table.display.iloc[:n_ours]["Model"].str.contains("reported").any()

    base = _row(table.display, "Model", "XLM-R base (reported)")
    assert base["XNLI"] == "76.2" and base["MLQA (F1/EM)"] == "63.7/46.3"
    assert base["PAWS-X"] == "n/r" and base["XQuAD (F1/EM)"] == "n/r" and base["Avg"] == "n/r"
    assert _row(table.numeric, "model", "InfoXLM large")["MLQA EM"] == 55.2

    html = table.to_html()
    assert html.count('<tr class="reported">') == len(REFERENCE_ROWS)
    markdown = table.to_markdown()
    for row in REFERENCE_ROWS:
        assert f"{row['model']} (reported)" in markdown
    csv = pd.read_csv(table.write(tmp_path)[0])
    assert list(csv["source"].iloc[n_ours:]) == [row["source"] for row in REFERENCE_ROWS]
    assert (csv["source"].iloc[:n_ours] == "this suite").all()


@pytest.mark.parametrize("body, problem", [
    ("rows:\n  - model: X\n    scores: {xnli: 70.0}\n", "row 1 (X): no 'source'"),
    ("rows:\n  - model: X\n    source: ' '\n    scores: {xnli: 70.0}\n", "row 1 (X): no 'source'"),
    ("rows:\n  - model: X\n    source: P, arXiv 1234.56789\n    scores: {mlqa: 70.0}\n",
     "row 1 (X): mlqa = 70.0; expected [F1, EM]"),
    ("rows:\n  - model: X\n    source: P\n    scores: {xnli: 170.0}\n", "row 1 (X): xnli = 170.0; expected a number"),
    ("rows:\n  - model: X\n    source: P\n    scores: {glue: 80.0}\n", "row 1 (X): unknown score key(s) glue"),
    ("rows: []\n", "expected a non-empty list under 'rows'"),
])
def test_bad_reference_file_is_a_one_line_error_naming_file_and_row(tmp_path, body, problem):
    path = tmp_path / "refs.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_reference_rows(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_shipped_file_loads_and_my_files_cite_no_internal_spec():
    assert load_reference_rows() == REFERENCE_ROWS and REFERENCE_ROWS_FILE.name == "reference_rows.yaml"
    for rel in ("veco2/report/tables.py", "veco2/report/reference_rows.yaml", "reports/README.md",
                "veco2/xtreme/retrieval.py", "veco2/xtreme/metrics.py"):
        assert "SPEC" not in (REPO / rel).read_text(encoding="utf-8"), rel
