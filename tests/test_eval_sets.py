"""The benchmark registry: local copies, local files in the common schema, and the Hub path (mocked, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tempo_pl.data.eval_sets import BENCHMARKS, DATA_DIR_ENV, BenchmarkInfo, load_benchmark, rows_to_schema

DATA = Path(__file__).parents[2] / "shared" / "data"
COUNTS = {"aime2024": 30, "aime2025": 30, "amc2023": 40, "math500": 500, "gsm8k": 1319}


@pytest.fixture
def no_hub(monkeypatch):
    """Fail loudly if anything tries the Hub."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected load_dataset{args}")

    monkeypatch.setattr(datasets, "load_dataset", refuse)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_registered_names_load_from_the_local_dir(no_hub, name):
    rows = load_benchmark(name, local_dir=str(DATA))
    assert len(rows) == COUNTS[name]
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        assert isinstance(row["id"], str) and isinstance(row["problem"], str) and row["problem"]
        assert isinstance(row["answer"], str) and row["answer"]


def test_local_rows_keep_their_values_and_extra_fields(no_hub):
    aime = load_benchmark("aime2024", local_dir=str(DATA))
    assert (aime[0]["id"], aime[0]["answer"]) == ("2024-I-1", "204")
    assert aime[0]["url"].startswith("https://")  # extra fields survive
    gsm = load_benchmark("gsm8k", local_dir=str(DATA))
    assert (gsm[0]["id"], gsm[0]["answer"]) == ("gsm8k-test-0", "18")
    assert gsm[0]["solution"].endswith("#### 18")


def test_env_var_names_the_local_dir(no_hub, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(DATA))
    assert len(load_benchmark("amc2023")) == 40


def test_local_files_in_the_common_schema(no_hub, tmp_path):
    rows = [{"id": "a", "problem": "1+1?", "answer": 2, "level": 1}, {"problem": "2+2?", "answer": "4"}]
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    expected = [
        {"id": "a", "problem": "1+1?", "answer": "2", "level": 1},  # answers become strings
        {"id": "mine-1", "problem": "2+2?", "answer": "4"},  # a missing id is <stem>-<row>
    ]
    assert load_benchmark(str(jsonl)) == expected

    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps(rows), encoding="utf-8")
    assert load_benchmark(str(as_json)) == expected

    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "problem": "1+1?", "answer": "2"}]), parquet)
    assert load_benchmark(str(parquet)) == [{"id": "a", "problem": "1+1?", "answer": "2"}]


def test_local_file_errors_name_the_row(no_hub, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "problem": "p", "answer": "1"}\n{"id": "y", "problem": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl row 1: missing field\(s\) \['answer'\]"):
        load_benchmark(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "p", "answer": "1"}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match="broken.jsonl' line 2: not valid JSON"):
        load_benchmark(str(broken))
    csv = tmp_path / "x.csv"
    csv.write_text("problem,answer\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unsupported benchmark file type '.csv'"):
        load_benchmark(str(csv))
    with pytest.raises(ValueError, match="unknown benchmark 'aime2099'.*'aime2024'"):
        load_benchmark("aime2099")


# Hub rows as the Hub datasets store them (field names and types per dataset card)
HUB_ROWS = {
    "aime2024": [{"id": 60, "problem": "P", "solution": "S", "answer": "025", "url": "u", "year": "2024"}],
    "aime2025": [{"problem": "P", "answer": "70", "id": "0"}],
    "amc2023": [{"id": 0, "question": "P", "answer": 27.0, "url": "u"}],
    "math500": [{"problem": "P", "solution": "S", "answer": "\\frac{1}{2}", "subject": "Algebra", "level": 2,
                 "unique_id": "test/algebra/1.json"}],
    "gsm8k": [{"question": "P", "answer": "6 * 2 = <<6*2=12>>12\n#### 1,200"}],
}
HUB_EXPECTED = {
    "aime2024": {"id": "60", "problem": "P", "answer": "25", "solution": "S", "url": "u", "year": "2024"},
    "aime2025": {"id": "0", "problem": "P", "answer": "70"},
    "amc2023": {"id": "0", "problem": "P", "answer": "27", "url": "u"},
    "math500": {"id": "test/algebra/1.json", "problem": "P", "answer": "\\frac{1}{2}", "solution": "S",
                "subject": "Algebra", "level": 2},
    "gsm8k": {"id": "gsm8k-test-0", "problem": "P", "answer": "1200"},
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_path_maps_fields(monkeypatch, tmp_path, name):
    calls = []

    def fake_load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return datasets.Dataset.from_list(HUB_ROWS[name])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    # no local dir, then a local dir without the file: both go to the Hub
    for local_dir in (None, str(tmp_path)):
        assert load_benchmark(name, local_dir=local_dir) == [HUB_EXPECTED[name]]
    info = BENCHMARKS[name]
    assert calls == [(info.hub_path, info.hub_config, info.split)] * 2


def test_registry_names_the_usual_hub_datasets():
    assert {name: (i.hub_path, i.hub_config, i.split) for name, i in BENCHMARKS.items()} == {
        "aime2024": ("HuggingFaceH4/aime_2024", None, "train"),
        "aime2025": ("math-ai/aime25", None, "test"),
        "amc2023": ("math-ai/amc23", None, "test"),
        "math500": ("HuggingFaceH4/MATH-500", None, "test"),
        "gsm8k": ("openai/gsm8k", "main", "test"),
    }
    assert {i.file for i in BENCHMARKS.values()} == {
        "aime2024.jsonl", "aime2025.jsonl", "amc2023.jsonl", "math500.jsonl", "gsm8k_test.jsonl"
    }


def test_schema_mapping_errors():
    info = BENCHMARKS["gsm8k"]
    with pytest.raises(ValueError, match=r"gsm8k row 0: missing field\(s\) \['answer'\]"):
        rows_to_schema([{"question": "q"}], info)
    with pytest.raises(ValueError, match="gsm8k row 0: no '#### <number>'"):
        rows_to_schema([{"question": "q", "answer": "it is 5"}], info)
    with pytest.raises(ValueError, match="answer_format must be one of"):
        BenchmarkInfo("x", "x.jsonl", "me/x", "test", "q", "a", answer_format="float")
    with pytest.raises(ValueError, match="hub_path must be a non-empty string"):
        BenchmarkInfo("x", "x.jsonl", "", "test", "q", "a")
    numbers = BenchmarkInfo("n", "n.jsonl", "me/n", "test", "q", "a", id_field=None, id_prefix="n-",
                            answer_format="number")
    assert [r["answer"] for r in rows_to_schema([{"q": "", "a": v} for v in (27.0, "025", 2.5, "x+1")], numbers)] == [
        "27", "25", "2.5", "x+1"
    ]
