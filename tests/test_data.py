"""TempoDataModule and dataset sources: reading, checking, splitting D_L / D_U, labels kept out of training."""

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import tempo_pl.data as data_package
from tempo_pl.data import sources
from tempo_pl.data.datamodule import TempoDataModule
from tempo_pl.data.sources import DataError, DatasetSpec, load_records, register_source, unregister_source
from tempo_pl.data.streams import EMStreams
from tempo_pl.data.templates import BOXED_TEMPLATE, TEMPLATES, apply_template, resolve_template
from tempo_pl.types import PromptBatch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qa_rows(n, prefix="q", answers=True, unit=""):
    return [{"id": f"{prefix}{i}", "problem": f"What is {i} + 1{unit}?", **({"answer": str(i + 1)} if answers else {})}
            for i in range(n)]


# ---------------------------------------------------------------- templates


def test_templates_substitute_without_format_and_resolve_names():
    # str.format would choke on the LaTeX braces of both the template and the problem.
    text = apply_template(BOXED_TEMPLATE, r"Compute \frac{1}{2}.")
    assert text == "Compute \\frac{1}{2}.\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert resolve_template("plain") == "{problem}" and resolve_template("verl_boxed") == TEMPLATES["verl_boxed"]
    assert resolve_template("Q: {problem} A:") == "Q: {problem} A:"
    with pytest.raises(ValueError, match="must contain '{problem}'"):
        resolve_template("no placeholder")


def test_data_module_rejects_a_template_without_problem_at_init():
    with pytest.raises(ValueError, match="TempoDataModule.prompt_template must contain"):
        TempoDataModule(unlabeled=DatasetSpec("x.jsonl"), prompt_template="Solve it.")


# ---------------------------------------------------------------- reading


def test_jsonl_rows_get_ids_templates_and_string_answers(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "a", "problem": "P1", "answer": 5},      # int answer -> "5"
        {"id": 7, "problem": "P2", "answer": 27.0},     # integral float (AMC style) -> "27"; int id -> "7"
        {"id": "c", "problem": "P3", "answer": " 0.5 "},  # strings are stripped
    ])
    dm = TempoDataModule(labeled=DatasetSpec(str(path)), prompt_template="Q: {problem}", batch_size=1)
    dm.setup("fit")
    assert [(r.id, r.prompt, r.answer, r.is_labeled) for r in dm.labeled_rows] == [
        ("train:a", "Q: P1", "5", True), ("train:7", "Q: P2", "27", True), ("train:c", "Q: P3", "0.5", True),
    ]


def test_parquet_and_folder_sources(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(qa_rows(2, "p")), folder / "a.parquet")
    write_jsonl(folder / "b.jsonl", qa_rows(3, "j"))
    (folder / "notes.txt").write_text("ignored: not a dataset file")

    records = load_records(DatasetSpec(str(folder / "a.parquet")), "labeled")
    assert [(r.id, r.problem, r.answer) for r in records] == [
        ("a:p0", "What is 0 + 1?", "1"), ("a:p1", "What is 1 + 1?", "2")
    ]

    folder_records = load_records(DatasetSpec(str(folder), name="pool"), "labeled")
    assert [r.id for r in folder_records] == ["pool:p0", "pool:p1", "pool:j0", "pool:j1", "pool:j2"]  # files sorted


def test_relative_paths_resolve_under_data_dir(tmp_path):
    write_jsonl(tmp_path / "dl.jsonl", qa_rows(2))
    records = load_records(DatasetSpec("dl.jsonl"), "labeled", data_dir=str(tmp_path))
    assert [r.id for r in records] == ["dl:q0", "dl:q1"]


def test_shared_benchmark_file_reads_as_an_eval_set():
    dm = TempoDataModule(eval_sets=[DatasetSpec(str(SHARED_DATA / "aime2024.jsonl"), name="aime24")], eval_limit=3,
                         eval_batch_size=2)
    dm.setup("validate")
    loaders = dm.val_dataloader()
    batches = list(loaders[0])
    assert [len(b) for b in batches] == [2, 1]  # eval_limit 3 rows, batches of 2, no drop_last
    assert batches[0].ids[0] == "aime24:2024-I-1" and batches[0].answers[0] == "204"
    assert all(isinstance(b, PromptBatch) and all(b.is_labeled) for b in batches)
    assert dm.eval_set_names == ["aime24"]


def test_shipped_benchmark_name_reads_the_local_copy_under_data_dir():
    dm = TempoDataModule(unlabeled=DatasetSpec("aime2025", repeat=2), data_dir=str(SHARED_DATA), batch_size=4)
    dm.setup("fit")
    # 30 AIME 2025 problems, each twice; answers stripped from the rows, kept for telemetry.
    assert len(dm.unlabeled_rows) == 60 and dm.unlabeled_rows[0].id == dm.unlabeled_rows[1].id
    assert all(row.answer is None for row in dm.unlabeled_rows) and len(dm.heldout_answers) == 30


def test_hyperparameters_survive_a_weights_only_checkpoint_load(tmp_path):
    dm = TempoDataModule(unlabeled=DatasetSpec("u.jsonl", limit=3), eval_sets=[DatasetSpec("aime2024")])
    torch.save({"datamodule_hyper_parameters": dict(dm.hparams)}, tmp_path / "hp.pt")
    loaded = torch.load(tmp_path / "hp.pt", weights_only=True)["datamodule_hyper_parameters"]
    assert loaded["unlabeled"]["limit"] == 3 and loaded["eval_sets"][0]["path"] == "aime2024"


def test_limit_and_repeat(tmp_path):
    path = write_jsonl(tmp_path / "du.jsonl", qa_rows(5))
    records = load_records(DatasetSpec(str(path), limit=2, repeat=3), "unlabeled")
    # First 2 rows, each replicated 3 times in place, ids unchanged.
    assert [r.id for r in records] == ["du:q0"] * 3 + ["du:q1"] * 3


def test_id_field_none_numbers_rows(tmp_path):
    path = write_jsonl(tmp_path / "noid.jsonl", [{"problem": "A", "answer": "1"}, {"problem": "B", "answer": "2"}])
    assert [r.id for r in load_records(DatasetSpec(str(path), id_field=None), "labeled")] == ["noid:0", "noid:1"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_records(DatasetSpec(str(tmp_path / "nowhere.jsonl")), "labeled")
    with pytest.raises(FileNotFoundError, match="no json/jsonl/parquet files and no save_to_disk dataset"):
        load_records(DatasetSpec(str(tmp_path)), "labeled")


def test_hub_names_go_through_load_dataset_with_the_split(monkeypatch):
    from datasets import Dataset

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return Dataset.from_list([{"question": "Hub Q", "final": 12, "uid": "h1"}])

    monkeypatch.setattr(sources, "load_dataset", fake_load_dataset)
    spec = DatasetSpec("someorg/math-set", split="test", problem_field="question", answer_field="final", id_field="uid")
    records = load_records(spec, "labeled")
    assert calls == [("someorg/math-set", {"split": "test"})]
    assert [(r.id, r.problem, r.answer) for r in records] == [("math-set:h1", "Hub Q", "12")]

    def offline(path, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(sources, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load Hub dataset 'someorg/math-set' .split 'test'.: offline"):
        load_records(spec, "labeled")


def test_benchmark_names_dispatch_to_load_benchmark(monkeypatch):
    calls = []
    fake = types.ModuleType("tempo_pl.data.eval_sets")
    fake.BENCHMARKS = {"aime2024": None}
    fake.load_benchmark = lambda name, local_dir=None: calls.append((name, local_dir)) or [
        {"id": "2024-I-1", "problem": "Aya walks.", "answer": "204"}
    ]
    monkeypatch.setitem(sys.modules, "tempo_pl.data.eval_sets", fake)
    monkeypatch.setattr(data_package, "benchmarks", fake, raising=False)

    records = load_records(DatasetSpec("aime2024"), "eval", data_dir="/some/dir")
    assert calls == [("aime2024", "/some/dir")]
    assert [(r.id, r.answer) for r in records] == [("aime2024:2024-I-1", "204")]


def test_registered_prefix_sources(monkeypatch):
    seen = []

    def loader(path):
        seen.append(path)
        return [{"id": "labeled-00000", "problem": "Start with 2. Add 3.", "answer": "5"}]

    register_source("toysrc", loader)
    try:
        records = load_records(DatasetSpec("toysrc:labeled?size=1"), "labeled")
        assert seen == ["toysrc:labeled?size=1"]
        assert [(r.id, r.answer) for r in records] == [("toysrc:labeled-00000", "5")]
        with pytest.raises(ValueError, match="already registered"):
            register_source("toysrc", loader)
    finally:
        unregister_source("toysrc")
    with pytest.raises(DataError, match="no source is registered for prefix 'toysrc'"):
        load_records(DatasetSpec("toysrc:labeled"), "labeled")


# ---------------------------------------------------------------- D_L / D_U and labels


def make_pools(tmp_path, n_labeled=6, n_unlabeled=8, **kwargs):
    dl = write_jsonl(tmp_path / "dl.jsonl", qa_rows(n_labeled, "l"))
    du = write_jsonl(tmp_path / "du.jsonl", qa_rows(n_unlabeled, "u", unit=" apples"))  # not D_L's questions
    dm = TempoDataModule(labeled=DatasetSpec(str(dl)), unlabeled=DatasetSpec(str(du)), **kwargs)
    dm.setup("fit")
    return dm


def test_unlabeled_answers_are_stripped_and_kept_as_heldout(tmp_path):
    dm = make_pools(tmp_path, batch_size=4)
    assert dm.heldout_answers == {f"du:u{i}": str(i + 1) for i in range(8)}
    streams = dm.train_dataloader()
    assert isinstance(streams, EMStreams) and streams is dm.streams
    for source in ("unlabeled", "mixed", "labeled"):
        streams.source = source
        batch = next(streams)
        for row_id, answer, labeled in zip(batch.ids, batch.answers, batch.is_labeled):
            assert labeled == row_id.startswith("dl:")
            assert (answer is not None) == labeled


def test_expose_unlabeled_answers_is_the_loud_oracle(tmp_path):
    with pytest.warns(UserWarning, match="ORACLE BASELINE.*8 of 8 unlabeled rows"):
        dm = make_pools(tmp_path, batch_size=4, expose_unlabeled_answers=True)
    streams = dm.train_dataloader()
    streams.source = "unlabeled"
    batch = next(streams)
    assert batch.answers == [dm.heldout_answers[i] for i in batch.ids]
    assert batch.is_labeled == [True] * 4  # they travel as labeled rows: the verifier grades them


def test_expose_without_any_unlabeled_answer_is_an_error(tmp_path):
    du = write_jsonl(tmp_path / "du.jsonl", qa_rows(4, answers=False))
    dm = TempoDataModule(unlabeled=DatasetSpec(str(du)), expose_unlabeled_answers=True)
    with pytest.raises(DataError, match="no unlabeled row carries an answer"):
        dm.setup("fit")


def verl_rows():
    # The reference's single parquet: answer and label flag nested under reward_model; unlabeled rows carry an empty
    # placeholder ground truth or a real one kept for evaluation.
    return [
        {"id": 0, "prompt_text": "L0", "reward_model": {"ground_truth": "1", "is_labeled": True}},
        {"id": 1, "prompt_text": "U1", "reward_model": {"ground_truth": "", "is_labeled": False}},
        {"id": 2, "prompt_text": "L2", "reward_model": {"ground_truth": "3", "is_labeled": True}},
        {"id": 3, "prompt_text": "U3", "reward_model": {"ground_truth": "4", "is_labeled": False}},
        {"id": 4, "prompt_text": "U4", "reward_model": {"ground_truth": "5", "is_labeled": False}},
    ]


def test_mixed_verl_parquet_with_dotted_fields_is_split_into_pools(tmp_path):
    path = tmp_path / "mix.parquet"
    pq.write_table(pa.Table.from_pylist(verl_rows()), path)
    spec = DatasetSpec(str(path), problem_field="prompt_text", answer_field="reward_model.ground_truth",
                       labeled_field="reward_model.is_labeled")
    dm = TempoDataModule(mixed=spec, batch_size=2, prompt_template="plain")
    dm.setup("fit")
    assert [(r.id, r.prompt, r.answer) for r in dm.labeled_rows] == [("mix:0", "L0", "1"), ("mix:2", "L2", "3")]
    assert [(r.id, r.answer, r.is_labeled) for r in dm.unlabeled_rows] == [
        ("mix:1", None, False), ("mix:3", None, False), ("mix:4", None, False)
    ]
    assert dm.heldout_answers == {"mix:3": "4", "mix:4": "5"}  # the empty placeholder is no answer


def test_mixed_excludes_separate_pools_and_needs_a_label_column():
    with pytest.raises(ValueError, match="excludes labeled and unlabeled"):
        TempoDataModule(mixed=DatasetSpec("m.parquet", labeled_field="is_labeled"),
                        labeled=DatasetSpec("l.jsonl"), unlabeled=DatasetSpec("u.jsonl"))
    with pytest.raises(ValueError, match="mixed needs labeled_field"):
        TempoDataModule(mixed=DatasetSpec("m.parquet"))
    with pytest.raises(ValueError, match="labeled.labeled_field is only read for the `mixed` dataset"):
        TempoDataModule(labeled=DatasetSpec("l.jsonl", labeled_field="is_labeled"))


@pytest.mark.parametrize(
    "kwargs, key",
    [({"batch_size": 0}, "batch_size"), ({"eval_batch_size": True}, "eval_batch_size"),
     ({"eval_limit": 0}, "eval_limit"),
     ({"mixed_labeled_fraction": -0.1}, "mixed_labeled_fraction"), ({"seed": "1"}, "seed")],
)
def test_data_module_arguments_are_checked(kwargs, key):
    with pytest.raises(ValueError, match=f"TempoDataModule.{key}"):
        TempoDataModule(unlabeled=DatasetSpec("u.jsonl"), **kwargs)


def test_dataset_spec_checks_limit_and_repeat():
    with pytest.raises(ValueError, match="limit"):
        DatasetSpec("x.jsonl", limit=0)
    with pytest.raises(ValueError, match="repeat"):
        DatasetSpec("x.jsonl", repeat=0)


def test_streams_take_rank_and_world_size_from_the_trainer(tmp_path):
    dl = write_jsonl(tmp_path / "dl.jsonl", qa_rows(4, "l"))
    du = write_jsonl(tmp_path / "du.jsonl", qa_rows(8, "u", unit=" apples"))
    seen = []
    for rank in (0, 1):
        dm = TempoDataModule(labeled=DatasetSpec(str(dl)), unlabeled=DatasetSpec(str(du)), batch_size=2, seed=4)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm.setup("fit")
        assert (dm.streams.unlabeled.rank, dm.streams.unlabeled.world_size) == (rank, 2)
        seen.append([i for _ in range(2) for i in next(dm.streams).ids])  # a full epoch: 8 // 2 = 4 rows per rank
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 8


def test_no_eval_sets_means_no_validation_loaders(tmp_path):
    dm = make_pools(tmp_path)
    assert dm.val_dataloader() == [] and dm.eval_set_names == []


def test_training_needs_a_pool():
    dm = TempoDataModule(eval_sets=[DatasetSpec(str(SHARED_DATA / "amc2023.jsonl"))])
    with pytest.raises(ValueError, match="training needs `labeled` and/or `unlabeled`, or `mixed`"):
        dm.setup("fit")
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()


# ---------------------------------------------------------------- malformed rows


GOOD = {"id": "ok", "problem": "Fine?", "answer": "1"}


@pytest.mark.parametrize(
    "bad_row, role, field, reason",
    [
        ({"id": "b", "answer": "1"}, "labeled", "problem", "missing"),
        ({"id": "b", "problem": 42, "answer": "1"}, "labeled", "problem", "expected a string, got int"),
        ({"id": "b", "problem": "   ", "answer": "1"}, "labeled", "problem", "empty problem"),
        ({"id": "b", "problem": "Q"}, "labeled", "answer", "missing answer on a labeled row"),
        ({"id": "b", "problem": "Q", "answer": ""}, "eval", "answer", "empty answer on a labeled row"),
        ({"id": "b", "problem": "Q", "answer": [1, 2]}, "labeled", "answer", "expected a string or a number, got list"),
        ({"id": "b", "problem": "Q", "answer": True}, "unlabeled", "answer",
         "expected a string or a number, got bool True"),
        ({"id": "b", "problem": "Q", "answer": {"v": 1}}, "unlabeled", "answer",
         "expected a string or a number, got dict"),
        ({"id": "ok", "problem": "Q", "answer": "2"}, "labeled", "id", "duplicate id"),
    ],
)
def test_malformed_rows_name_file_row_and_field(tmp_path, bad_row, role, field, reason):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD, bad_row])
    with pytest.raises(DataError) as error:
        load_records(DatasetSpec(str(path)), role)
    message = str(error.value)
    shown_id = bad_row["id"]
    assert f"{path} line 2 (row 1, id '{shown_id}'): field '{field}': {reason}" in message, message
    assert "1 malformed row(s)" in message


def test_malformed_mixed_flag_and_missing_id(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"id": "a", "problem": "Q", "answer": "1", "is_labeled": "yes"},
        {"problem": "Q", "answer": "1", "is_labeled": True},
    ])
    with pytest.raises(DataError) as error:
        load_records(DatasetSpec(str(path), labeled_field="is_labeled"), "mixed")
    message = str(error.value)
    assert "line 1 (row 0, id 'a'): field 'is_labeled': expected a boolean (or 0/1), got 'yes'" in message
    assert "line 2 (row 1, id '?'): field 'id': missing id (set id_field: null" in message


def test_many_bad_rows_are_summarised_and_raised_at_setup(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"id": f"r{i}", "problem": "", "answer": "1"} for i in range(8)])
    dm = TempoDataModule(labeled=DatasetSpec(str(path)))  # nothing read at init
    with pytest.raises(DataError) as error:
        dm.setup("fit")
    message = str(error.value)
    # 8 bad rows: the first MAX_REPORTED_ROWS = 5 listed, the other 3 counted.
    assert "labeled dataset 'bad'" in message and "8 malformed row(s)" in message
    assert "row 4, id 'r4')" in message and "row 5, id 'r5')" not in message and "... and 3 more" in message


def test_limit_skips_checking_rows_it_drops(tmp_path):
    path = write_jsonl(tmp_path / "tail.jsonl", [GOOD, {"id": "bad", "problem": None}])
    assert [r.id for r in load_records(DatasetSpec(str(path), limit=1), "labeled")] == ["tail:ok"]


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"id": 1, "problem": \n')
    with pytest.raises(DataError, match="broken.jsonl' line 1: not valid JSON"):
        load_records(DatasetSpec(str(path)), "labeled")
