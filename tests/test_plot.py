"""`tempo-pl plot`: accuracy, pass@k and distinct answers against the RL step for existing runs, PNG and Markdown."""

from __future__ import annotations

import pytest

from test_compare import two_runs, write_run
from tempo_pl.cli import main
from tempo_pl.pipelines.plot import find_runs, plot_runs


def test_runs_are_found_under_a_folder_and_named_by_their_path(tmp_path):
    two_runs(tmp_path / "out")
    write_run(tmp_path / "out" / "a" / "checkpoints", {"val/x/mean@2": [(0, 1.0)]})  # not a run folder
    runs = find_runs([tmp_path / "out"])
    assert runs == {"a": tmp_path / "out" / "a", "b": tmp_path / "out" / "b"}
    assert find_runs([tmp_path / "out" / "a"]) == {"a": tmp_path / "out" / "a"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no run \(eval/<set>_step<N>.jsonl or events"):
        find_runs([tmp_path / "empty"])


def test_plot_writes_a_png_and_a_table_per_shared_eval_set(tmp_path, capsys):
    two_runs(tmp_path / "out")
    write_run(tmp_path / "out" / "sft", {"train/sft/loss": [(0, 1.0)]})  # a run without evaluation
    written = plot_runs([tmp_path / "out"])
    out = capsys.readouterr().out
    assert "[plot] without evaluation, left out: sft" in out
    png, md = written["heldout:png"], written["heldout:markdown"]
    assert png == tmp_path / "out" / "plots" / "heldout.png" and png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(written) == ["heldout:markdown", "heldout:png"]  # "other" was logged by one run only
    table = md.read_text()
    assert "| a | no | 4 |" in table and "| b (oracle) | yes | 4 |" in table
    assert "distinct_answers start" in table and "seed" not in table.splitlines()[0]
    assert (tmp_path / "out" / "plots" / "heldout_curves.csv").is_file()


def test_plot_figure_has_accuracy_pass_and_diversity_panels(tmp_path, monkeypatch):
    from tempo_pl.pipelines import plot as plot_module

    figures = []
    real = plot_module.plot_curves
    monkeypatch.setattr(plot_module, "plot_curves", lambda *a, **k: figures.append(real(*a, **k)))
    two_runs(tmp_path)
    plot_runs([tmp_path / "a", tmp_path / "b"], output=tmp_path / "p", eval_set="heldout")
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["mean@4", "pass@4", "distinct_answers"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["accuracy", "pass rate", "distinct answers per question"]
    diversity = {line.get_label(): list(line.get_ydata()) for line in fig.axes[2].get_lines()}
    assert diversity == {"a": [3.0, 2.5, 2.0], "b (oracle)": [3.0, 1.5, 1.0]}


def test_plot_errors_name_the_problem(tmp_path):
    write_run(tmp_path / "only_train", {"train/policy/loss": [(0, 1.0)]})
    with pytest.raises(RuntimeError, match="none of the runs logged an evaluation"):
        plot_runs([tmp_path])
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        main(["plot", str(tmp_path / "missing")])


def write_eval_run(log_dir, steps: dict[int, list[list[bool]]], command: str = "fit", oracle: bool = False):
    """A run folder as any tracker leaves it: per-question eval JSONL for the ``heldout`` set (one list of
    verdicts per question at each RL step), the command that made it and its config; no TensorBoard file."""
    from tempo_pl.evaluation.records import QuestionResult, write_question_jsonl
    from tempo_pl.run.run_folder import COMMAND_NAME

    for step, questions in steps.items():
        records = [QuestionResult(f"q{i}", "1", ["r"] * len(v), ["1" if ok else str(9 + j) for j, ok in enumerate(v)],
                                  list(v)) for i, v in enumerate(questions)]
        write_question_jsonl(log_dir / "eval" / f"heldout_step{step:06d}.jsonl", records)
    (log_dir / COMMAND_NAME).write_text(command + "\n")
    (log_dir / "config.yaml").write_text(f"data:\n  init_args:\n    expose_unlabeled_answers: {str(oracle).lower()}\n")
    return log_dir


def test_plot_reads_the_eval_jsonl_whatever_the_tracker_and_labels_validate_only_folders(tmp_path, capsys):
    out = tmp_path / "runs"
    # step 0: q0 2 of 4 right, q1 none; step 2: q0 all, q1 1 of 4
    write_eval_run(out / "csv_run", {0: [[1, 1, 0, 0], [0, 0, 0, 0]], 2: [[1, 1, 1, 1], [1, 0, 0, 0]]})
    write_eval_run(out / "check", {0: [[1, 0, 0, 0], [0, 0, 0, 0]]}, command="validate")
    write_eval_run(out / "oracle", {0: [[0, 0, 0, 0], [0, 0, 0, 0]], 2: [[1, 1, 1, 1], [1, 1, 1, 1]]}, oracle=True)
    written = plot_runs([out])
    table = written["heldout:markdown"].read_text()
    assert "| csv_run | no | 2 | 0.2500 | 0.6250 | 0.6250 | 0.5000 | 1.0000 | 1.0000 |" in table  # mean@4, pass@4
    assert "| check (validate only) | no | 0 | 0.1250 | 0.1250 | 0.1250 |" in table
    assert "| oracle (oracle) | yes | 2 | 0.0000 | 1.0000 | 1.0000 |" in table
    # distinct answers: wrong answers are distinct numbers, right ones one cluster
    assert "| maj@4 start |" in table.splitlines()[2] or "maj@4 start" in table
    assert written["heldout:png"].read_bytes()[:4] == b"\x89PNG"
