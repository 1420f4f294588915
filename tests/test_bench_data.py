"""The benchmark data: found in the repo, read gzipped or not, and missing or damaged sets
said in one line while the rest runs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from graphthrift.bench import _data, command
from graphthrift.bench._data import (
    DataFileError,
    DataSetMissing,
    data_dir,
    has_set,
    read_set_file,
    read_text,
    using_data_dir,
)
from graphthrift.cli import main

REPO = Path(__file__).resolve().parents[1]


def _tiny_data(root: Path) -> Path:
    """A data folder with a few records of banking77 and xquad_en, and no other set."""
    (root / "banking77").mkdir(parents=True)
    rows = (
        "text,category\nHow do I activate my card?,activate_my_card\nWhere is my refund?,refund\n"
    )
    (root / "banking77" / "test.csv").write_text(rows + "Can I change my PIN?,change_pin\n")
    (root / "banking77" / "train.csv").write_text(rows)
    paragraphs = [
        {"context": "The bridge opened in 1932.", "qas": [{"question": "When?", "id": "1", "answers": [{"text": "1932", "answer_start": 22}]}]},
        {"context": "The river is 300 km long.", "qas": [{"question": "How long?", "id": "2", "answers": [{"text": "300 km", "answer_start": 12}]}]},
    ]  # fmt: skip
    squad = {"data": [{"title": "t", "paragraphs": paragraphs}]}
    (root / "xquad_en").mkdir()
    (root / "xquad_en" / "xquad.en.json").write_text(json.dumps(squad))
    return root


def _sgd_copy(root: Path, *, truncate: bool = False) -> Path:
    """A data folder holding the repo's sgd_test, whole or with its gzip cut in half."""
    folder = root / "sgd_test"
    folder.mkdir(parents=True)
    source = REPO / "data" / "sgd_test" / "sgd_test_compact.jsonl.gz"
    target = folder / source.name
    if truncate:
        raw = source.read_bytes()
        target.write_bytes(raw[: len(raw) // 2])
    else:
        shutil.copy(source, target)
    return root


def test_the_repo_ships_every_set_with_its_licence() -> None:
    root = REPO / "data"
    assert (root / "ATTRIBUTION.md").is_file()
    for name in _data.SETS:
        assert has_set(name, root), name
        licences = [
            p
            for p in (root / name).iterdir()
            if p.name.lower().startswith(("licen", "datalicen", "cc-by"))
        ]
        assert licences, f"{name} has no licence file"
        assert name in (root / "ATTRIBUTION.md").read_text()


def test_data_dir_order_flag_then_env_then_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRAPHTHRIFT_DATA_DIR", raising=False)
    assert data_dir() == (REPO / "data").resolve()  # this checkout's folder
    monkeypatch.setenv("GRAPHTHRIFT_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    flag = tmp_path / "flag"
    flag.mkdir()
    with using_data_dir(flag):
        assert data_dir() == flag.resolve()
    assert data_dir() == tmp_path.resolve()
    with pytest.raises(ValueError, match="no such directory"), using_data_dir(tmp_path / "nope"):
        pass


def test_plain_and_gzipped_files_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "sts-test.csv").write_text("a\tb\n")
    assert read_set_file("stsb", "sts-test.csv", tmp_path) == "a\tb\n"
    (tmp_path / "stsb" / "sts-test.csv").unlink()
    (tmp_path / "stsb" / "sts-test.csv.gz").write_bytes(gzip.compress(b"c\td\n"))
    assert read_set_file("stsb", "sts-test.csv", tmp_path) == "c\td\n"


def test_truncated_gzip_is_a_named_damaged_set(tmp_path: Path) -> None:
    root = _sgd_copy(tmp_path, truncate=True)
    path = root / "sgd_test" / "sgd_test_compact.jsonl.gz"
    with pytest.raises(DataFileError, match="truncated or corrupt gzip"):
        read_text(path)
    with pytest.raises(DataSetMissing) as caught:
        read_set_file("sgd_test", "sgd_test_compact.jsonl", root)
    assert caught.value.dataset == "sgd_test"
    assert "damaged" in str(caught.value) and "--data" in str(caught.value)


def test_missing_set_message_names_the_set_and_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataSetMissing) as caught:
        read_set_file("banking77", "test.csv", tmp_path)
    message = str(caught.value)
    assert "banking77" in message and str(tmp_path) in message
    assert "GRAPHTHRIFT_DATA_DIR" in message and "data/" in message


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())  # undo rich's line wrapping


def test_no_data_dir_route_says_which_set_instead_of_crashing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _run(["bench", "route", "--quick", "--data", str(empty)], capsys)
    assert code == 1
    assert "bench route skipped: data set banking77 not found" in out
    assert "Traceback" not in out and "fit needs" not in out


def test_route_on_too_little_data_skips_the_classifier_not_the_bench(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug: with a tiny workload the classifier's training split was empty and the run
    stopped with "fit needs as many labels as texts, got 0/0"."""
    monkeypatch.setenv("GRAPHTHRIFT_DATA_DIR", str(_tiny_data(tmp_path / "tiny")))
    out = tmp_path / "route.json"
    code, printed = _run(["bench", "route", "--quick", "--json", str(out)], capsys)
    assert code == 0, printed
    figures = json.loads(out.read_text())
    assert "training split holds" in figures["classifier"]["skipped"]
    assert figures["n"] == 150 and 0 < figures["cheap_fraction"] <= 1


def test_partial_data_runs_what_it_can_and_names_what_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _sgd_copy(tmp_path / "partial")  # sgd_test only: no topical_chat, no xquad_en
    monkeypatch.setattr(
        command,
        "BENCHMARKS",
        {k: v for k, v in command.BENCHMARKS.items() if k in ("history", "compress", "route")},
    )
    target = tmp_path / "out" / "bench.json"
    argv = ["bench", "--quick", "--data", str(root), "--json", str(target)]
    code, out = _run(argv, capsys)
    assert code == 0
    assert "bench history: data set topical_chat not found" in out
    assert "bench route skipped: data set banking77 not found" in out
    assert "bench compress skipped: data set xquad_en not found" in out
    figures: dict[str, Any] = json.loads(target.read_text())
    assert figures["history"]["n_conversations"] > 0
    assert set(figures["history"]["datasets"]) == {"sgd_test"}
    assert figures["route"]["missing"] == ["banking77"]
    assert figures["compress"]["missing"] == ["xquad_en"]
    assert (target.parent / "history.json").is_file()
    assert "summary" in out and "skipped for missing data: compress, route" in out


def test_history_runs_the_other_set_when_one_gzip_is_truncated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _sgd_copy(tmp_path / "d", truncate=True)
    topical = root / "topical_chat"
    topical.mkdir()
    shutil.copy(REPO / "data" / "topical_chat" / "valid_freq.json.gz", topical)
    out = tmp_path / "history.json"
    argv = ["bench", "history", "--limit", "3", "--data", str(root), "--json", str(out)]
    code, printed = _run(argv, capsys)
    assert code == 0
    assert "data set sgd_test is damaged" in printed and "truncated or corrupt gzip" in printed
    assert set(json.loads(out.read_text())["datasets"]) == {"topical_chat"}


def test_the_repo_never_reads_a_folder_beside_the_checkout() -> None:
    hits = []
    for folder in ("src", "tests", "notebooks", "scripts", "benchmarks"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".ipynb", ".sh") and path.name != Path(__file__).name:
                text = path.read_text(encoding="utf-8")
                if "../shared" in text or '"shared" / "data"' in text:
                    hits.append(str(path.relative_to(REPO)))
    assert hits == []
