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
    with pytest.raises(FileNotFoundError, match="no TensorBoard run"):
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
