"""Checkpoints record each training pool's row count and a hash of its rows: a resume over a D_U (or D_L) file whose
rows changed, even to the same count, is refused naming the pool and the file, unless ``allow_changed_data``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _tiny_run import tiny_config, write_config
from tempo_pl.data.datamodule import TempoDataModule, rows_hash
from tempo_pl.data.sources import DatasetSpec
from tempo_pl.data.streams import PromptRow


def _write_questions(path: Path, offset: int = 0) -> Path:
    rows = [{"id": f"q{i}", "problem": f"What is {i + offset} + {i}?", "answer": str(2 * i + offset)} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_hash_follows_every_field_and_the_order() -> None:
    rows = [PromptRow("a", "p", "1", True), PromptRow("b", "q", None, False)]
    base = rows_hash(rows)
    assert rows_hash(list(rows)) == base and len(base) == 64
    assert rows_hash(rows[::-1]) != base
    assert rows_hash([PromptRow("a", "p", "2", True), rows[1]]) != base
    assert rows_hash([rows[0], PromptRow("b", "q!", None, False)]) != base


def test_the_fingerprints_name_each_pool_and_its_file(tmp_path: Path) -> None:
    questions = _write_questions(tmp_path / "du.jsonl")
    data = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=8"), unlabeled=DatasetSpec(path=str(questions)),
                           batch_size=2)
    data.setup("fit")
    prints = data.fingerprints()
    assert prints["unlabeled"]["rows"] == 8 and prints["unlabeled"]["source"] == str(questions)
    assert prints["labeled"]["rows"] == 8 and prints["labeled"]["source"] == "synthetic:labeled?size=8"
    saved = data.state_dict()
    _write_questions(questions, offset=1)
    changed = TempoDataModule(labeled=DatasetSpec(path="synthetic:labeled?size=8"), unlabeled=DatasetSpec(path=str(questions)),
                              batch_size=2)
    changed.setup("fit")
    with pytest.raises(ValueError, match=r"the unlabeled pool \(.*du.jsonl\) differs .* the same 8 rows in number"):
        changed.load_state_dict(saved)
    data.load_state_dict(saved)  # the same rows: accepted


@pytest.mark.slow
def test_a_resume_on_a_changed_unlabeled_file_is_refused(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    questions = _write_questions(tmp_path / "du.jsonl")

    def edit(cfg):
        cfg["data"]["init_args"]["unlabeled"] = {"path": str(questions)}

    config = write_config(tiny_config(tmp_path, edit, steps=1), tmp_path / "cfg.yaml")
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    _write_questions(questions, offset=1)  # same count, other questions
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("[tempo-pl] error: TempoDataModule: the unlabeled pool (") and str(questions) in last
    assert "allow_changed_data: true" in last
    # with allow_changed_data the same resume goes on (the run had finished: nothing is left to train)
    main(["fit", "--config", str(config), "--ckpt_path", "last", "--data.init_args.allow_changed_data=true"])
