"""Data as it comes: save_to_disk folders, in-memory datasets, conversational columns, the errors for what cannot be
read (each names the file and, where it applies, the line, row and field), and the D_L / D_U overlap guard."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, IterableDataset

from tempo_pl.data.datamodule import TempoDataModule
from tempo_pl.data.sources import DataError, DatasetSpec, load_records
from tempo_pl.sft import SFTDataModule


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows(n, prefix="q", topic="apples"):
    return [{"id": f"{prefix}{i}", "problem": f"{i} {topic} plus one?", "answer": str(i + 1)} for i in range(n)]


def error_of(call) -> str:
    with pytest.raises((DataError, FileNotFoundError, ValueError)) as caught:
        call()
    return str(caught.value)


# ---------------------------------------------------------------- unreadable files


def test_empty_file_says_it_is_empty(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert error_of(lambda: load_records(DatasetSpec(str(path)), "labeled")) == (
        f"dataset file {str(path)!r} is empty (0 bytes)")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n")
    message = error_of(lambda: load_records(DatasetSpec(str(blank)), "labeled"))
    assert message == f"dataset file {str(blank)!r} has no rows"


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "seven.jsonl", rows(6))
    with path.open("a") as f:
        f.write('{"id": "q6", "problem": "x", "answer": }\n')
    message = error_of(lambda: load_records(DatasetSpec(str(path)), "labeled"))
    assert message == f"{str(path)!r} line 7: not valid JSON (Expecting value at column 40)"
    # a JSON array file: line and column of the fault
    array = tmp_path / "array.json"
    array.write_text('[\n {"id": 1, "problem": "p", "answer": "1"},\n {"id": 2 "problem": "q"}\n]\n')
    assert "array.json' line 3: not valid JSON (Expecting ',' delimiter at column 11)" in error_of(
        lambda: load_records(DatasetSpec(str(array)), "labeled"))
    not_object = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    assert "list.jsonl' line 1: expected a JSON object per line, got list" in error_of(
        lambda: load_records(DatasetSpec(str(not_object)), "labeled"))


def test_non_utf8_bytes_name_the_file_line_and_column(tmp_path):
    path = write_jsonl(tmp_path / "latin1.jsonl", rows(2))
    with path.open("ab") as f:
        f.write('{"id": "q2", "problem": "caf\u00e9?", "answer": "1"}\n'.encode("latin-1"))
    message = error_of(lambda: load_records(DatasetSpec(str(path)), "labeled"))
    assert message.startswith(f"{str(path)!r} line 3: not UTF-8 text (byte b'\\xe9' at column 29")
    assert "re-save the file as UTF-8" in message
    whole = tmp_path / "latin1.json"
    whole.write_bytes('[{"id": 1,\n "problem": "\u00e9", "answer": "1"}]'.encode("latin-1"))
    assert "latin1.json' line 2: not UTF-8 text" in error_of(lambda: load_records(DatasetSpec(str(whole)), "labeled"))


def test_damaged_parquet_unsupported_suffix_and_arrow_file(tmp_path):
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"not a parquet file")
    assert f"could not read {str(parquet)!r} as parquet: " in error_of(
        lambda: load_records(DatasetSpec(str(parquet)), "labeled"))
    folder = tmp_path / "mixed_folder"
    folder.mkdir()
    (folder / "rows.csv").write_text("problem,answer\n1+1,2\n")
    message = error_of(lambda: load_records(DatasetSpec(str(folder)), "labeled"))
    assert "no json/jsonl/parquet files and no save_to_disk dataset" in message and "found: rows.csv" in message
    arrow = tmp_path / "data-00000-of-00001.arrow"
    arrow.write_bytes(b"x")
    assert "a file of a save_to_disk folder: give the folder" in error_of(
        lambda: load_records(DatasetSpec(str(arrow)), "labeled"))


# ---------------------------------------------------------------- other column names


def test_other_column_names_are_reported_once_with_expected_and_found(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": f"q{i}", "final": "1", "uid": i} for i in range(50)]), path)
    message = error_of(lambda: load_records(DatasetSpec(str(path)), "labeled"))
    assert message == (
        f"labeled dataset 'other' ({path}): no column problem_field='problem', answer_field='answer', "
        "id_field='id'; the rows have columns ['question', 'final', 'uid']. Map them with problem_field, "
        "answer_field, id_field (id_field: null numbers the rows by position)")
    mapped = DatasetSpec(str(path), problem_field="question", answer_field="final", id_field="uid")
    assert len(load_records(mapped, "labeled")) == 50
    # an unlabeled pool needs no answer column; a conversational column gets a hint
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"id": "a", "prompt": [{"role": "user", "content": "Hi?"}]}])
    message = error_of(lambda: load_records(DatasetSpec(str(chat)), "unlabeled"))
    assert "no column problem_field='problem';" in message and "problem_field: prompt reads the user message" in message


# ---------------------------------------------------------------- save_to_disk folders and in-memory datasets


def test_save_to_disk_folders_are_read_as_datasets(tmp_path):
    Dataset.from_list(rows(3)).save_to_disk(str(tmp_path / "dl_saved"))
    records = load_records(DatasetSpec(str(tmp_path / "dl_saved")), "labeled")
    # the arrow rows, not dataset_info.json / state.json
    assert [(r.id, r.answer) for r in records] == [("dl_saved:q0", "1"), ("dl_saved:q1", "2"), ("dl_saved:q2", "3")]

    DatasetDict(train=Dataset.from_list(rows(2)), test=Dataset.from_list(rows(4, "t"))).save_to_disk(
        str(tmp_path / "dd"))
    assert len(load_records(DatasetSpec(str(tmp_path / "dd"), split="test"), "eval")) == 4
    message = error_of(lambda: load_records(DatasetSpec(str(tmp_path / "dd"), split="validation"), "eval"))
    assert message == (f"{tmp_path / 'dd'} (save_to_disk): a DatasetDict without split 'validation'; its splits are "
                       "['test', 'train'] (set the dataset's `split`)")


def test_in_memory_datasets_through_the_python_api(tmp_path):
    labeled = Dataset.from_list(rows(4, "l"))
    unlabeled = DatasetDict(train=Dataset.from_list(
        [{"question": f"{i} pears plus one?", "gold": i + 1} for i in range(6)]))
    dm = TempoDataModule(
        labeled=labeled,
        unlabeled=DatasetSpec(data=unlabeled, name="pears", problem_field="question", answer_field="gold",
                              id_field=None),
        eval_sets=[Dataset.from_list(rows(2, "e", "plums"))],
        batch_size=2,
    )
    dm.setup("fit")
    assert [r.id for r in dm.labeled_rows] == ["labeled:l0", "labeled:l1", "labeled:l2", "labeled:l3"]
    assert dm.heldout_answers == {f"pears:{i}": str(i + 1) for i in range(6)}
    assert dm.eval_set_names == ["eval0"] and len(dm.val_dataloader()[0].dataset) == 2
    # hyperparameters describe the in-memory data instead of copying it
    assert dm.hparams["labeled"]["data"] == "in-memory Dataset of 4 rows (not saved)"
    assert dm.hparams["labeled"]["path"] is None


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of `path` and `data`"),
    ({"path": "x.jsonl", "data": Dataset.from_list([{"a": 1}])}, "got both"),
    ({"data": [{"problem": "p"}]}, "DatasetSpec.data must be a datasets.Dataset or DatasetDict, got list"),
    ({"data": "in-memory Dataset of 4 rows (not saved)"}, "not saved with the hyperparameters"),
])
def test_dataset_spec_data_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DatasetSpec(**kwargs)


def test_in_memory_dataset_dict_split_and_iterable_errors():
    spec = DatasetSpec(data=DatasetDict(test=Dataset.from_list(rows(1))))
    assert error_of(lambda: load_records(spec, "labeled")) == (
        "in-memory DatasetDict: a DatasetDict without split 'train'; its splits are ['test'] (set the dataset's "
        "`split`)")
    from tempo_pl.data.readers import table_from_dataset

    iterable = IterableDataset.from_generator(lambda: iter(rows(1)))
    assert "an IterableDataset cannot be checked before training" in error_of(
        lambda: table_from_dataset(iterable, "train", "in-memory IterableDataset"))
    assert "has no rows" in error_of(lambda: load_records(DatasetSpec(data=Dataset.from_list(rows(1)).select([])),
                                                          "labeled"))


# ---------------------------------------------------------------- conversational columns


def test_trl_prompt_and_messages_columns_give_the_user_message(tmp_path):
    prompt_rows = [{"id": "a", "prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"},
                   {"id": "b", "prompt": [{"role": "user", "content": "What is 3 + 3?"}], "answer": "6"}]
    records = load_records(DatasetSpec(data=Dataset.from_list(prompt_rows), problem_field="prompt"), "labeled")
    assert [r.problem for r in records] == ["What is 2 + 2?", "What is 3 + 3?"]
    messages = write_jsonl(tmp_path / "chat.jsonl", [
        {"id": "c", "messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}],
         "answer": "2"},
        {"id": "d", "messages": [{"role": "user", "content": [{"type": "text", "text": "What is "},
                                                              {"type": "text", "text": "4 + 4?"}]}], "answer": "8"}])
    assert [r.problem for r in load_records(DatasetSpec(str(messages), problem_field="messages"), "labeled")] == [
        "1 + 1?", "What is 4 + 4?"]


@pytest.mark.parametrize("conversation, reason", [
    ([{"role": "user", "content": "Q"}, {"role": "system", "content": "Be brief."}],
     "a system message must be the first message and the only one, got roles ['user', 'system']"),
    ([{"role": "system", "content": " "}, {"role": "user", "content": "Q"}], "the system message is empty"),
    ([{"role": "user", "content": "Q1"}, {"role": "user", "content": "Q2"}],
     "expected exactly one user message, got 2 (roles ['user', 'user'])"),
    ([{"role": "user", "content": [{"type": "image"}]}], "user message has non-text parts ['image']"),
])
def test_unusable_conversations_name_file_line_and_field(tmp_path, conversation, reason):
    path = write_jsonl(tmp_path / "conv.jsonl", [
        {"id": "ok", "prompt": [{"role": "user", "content": "fine"}], "answer": "1"},
        {"id": "bad", "prompt": conversation, "answer": "1"}])
    message = error_of(lambda: load_records(DatasetSpec(str(path), problem_field="prompt"), "labeled"))
    assert f"{path} line 2 (row 1, id 'bad'): field 'prompt': {reason}" in message, message


def test_a_rows_own_system_message_travels_with_it_to_the_prompt_batch_and_sft(tmp_path):
    chat = [{"id": "a", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1?"}],
             "answer": "2"},
            {"id": "b", "prompt": [{"role": "user", "content": "2 + 2?"}], "answer": "4"}]
    records = load_records(DatasetSpec(data=Dataset.from_list(chat), problem_field="prompt"), "labeled")
    assert [(r.problem, r.system_prompt, r.conversational) for r in records] == [
        ("1 + 1?", "Be brief.", True), ("2 + 2?", None, True)]
    dm = TempoDataModule(labeled=DatasetSpec(data=Dataset.from_list(chat), problem_field="prompt"), batch_size=2,
                         prompt_template="plain")
    dm.setup("fit")
    dm.streams.source = "labeled"
    batch = next(dm.streams)
    assert dict(zip(batch.ids, batch.system_prompts)) == {"in_memory:a": "Be brief.", "in_memory:b": None}
    sft_rows = [{"messages": [*row["prompt"], {"role": "assistant", "content": row["answer"]}]} for row in chat]
    sft = SFTDataModule(str(write_jsonl(tmp_path / "sft.jsonl", sft_rows)), problem_field="messages",
                        solution_field="messages", prompt_template="plain")
    assert sft.load_pairs() == [("1 + 1?", "2", "Be brief."), ("2 + 2?", "4", None)]


def test_sft_reads_messages_and_prompt_completion_columns(tmp_path):
    chat = [{"messages": [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "\\boxed{2}"}]}]
    dm = SFTDataModule(str(write_jsonl(tmp_path / "sft.jsonl", chat)), problem_field="messages",
                       solution_field="messages", prompt_template="plain")
    assert dm.load_pairs() == [("1 + 1?", "\\boxed{2}", None)]
    pairs = Dataset.from_list([{"prompt": [{"role": "user", "content": "2 + 2?"}],
                                "completion": [{"role": "assistant", "content": "4"}]}])
    dm = SFTDataModule(pairs, problem_field="prompt", solution_field="completion", prompt_template="plain")
    assert dm.load_pairs() == [("2 + 2?", "4", None)]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "Q"}]}])
    dm = SFTDataModule(str(bad), problem_field="messages", solution_field="messages")
    message = error_of(dm.load_pairs)
    assert "bad.jsonl line 1 (row 0, id '?'): field 'messages': the last message must be the assistant's reply" in (
        message)
    other = write_jsonl(tmp_path / "other.jsonl", [{"q": "Q", "a": "A"}])
    assert "SFT dataset (" in error_of(lambda: SFTDataModule(str(other)).load_pairs())
    assert "no column problem_field='problem', solution_field='solution'; the rows have columns ['q', 'a']" in (
        error_of(lambda: SFTDataModule(str(other)).load_pairs()))


# ---------------------------------------------------------------- D_L / D_U overlap


def test_overlapping_questions_are_refused_with_a_count_and_an_example(tmp_path):
    dl = write_jsonl(tmp_path / "dl.jsonl", rows(5, "l"))
    # two of D_U's questions are D_L's, up to case and whitespace; repeats count once
    du_rows = rows(3, "u", "pears") + [{"id": "u3", "problem": "1  APPLES plus one?"},
                                       {"id": "u4", "problem": "3 apples\nplus one?"}]
    du = write_jsonl(tmp_path / "du.jsonl", du_rows)
    dm = TempoDataModule(labeled=DatasetSpec(str(dl)), unlabeled=DatasetSpec(str(du), repeat=4))
    message = error_of(lambda: dm.setup("fit"))
    assert message == (
        f"TempoDataModule: 2 question(s) are in both D_L ({dl}) and D_U ({du}) (compared case-folded, whitespace "
        "collapsed), e.g. labeled row 'dl:l1' and unlabeled row 'du:u3': '1 apples plus one?'. E-steps would train "
        "the critic on the answers of test questions. Remove them from one pool, or set allow_overlap: true.")
    allowed = TempoDataModule(labeled=DatasetSpec(str(dl)), unlabeled=DatasetSpec(str(du)), allow_overlap=True)
    with pytest.warns(UserWarning, match="allow_overlap: true.*2 question"):
        allowed.setup("fit")
    assert len(allowed.unlabeled_rows) == 5
    with pytest.raises(ValueError, match="allow_overlap must be true or false"):
        TempoDataModule(labeled=DatasetSpec(str(dl)), allow_overlap="yes")


def test_overlap_inside_a_mixed_dataset_is_refused(tmp_path):
    mixed = write_jsonl(tmp_path / "mix.jsonl", [
        {"id": 0, "problem": "Same question", "answer": "1", "is_labeled": True},
        {"id": 1, "problem": "same question", "answer": "1", "is_labeled": False}])
    dm = TempoDataModule(mixed=DatasetSpec(str(mixed), labeled_field="is_labeled"))
    assert "1 question(s) are in both the mixed dataset's labeled and unlabeled rows" in error_of(
        lambda: dm.setup("fit"))
