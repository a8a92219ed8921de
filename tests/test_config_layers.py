"""Every shipped run: its config layers resolve to the settings recorded in tests/data/config_settings.json.

A shipped run is a base config plus overlays (``tempo-pl fit --config BASE --config OVERLAY``, ``docs/configs.md``);
:data:`RUNS` lists each with its layers. ``tests/data/config_settings.json`` holds, per run, every key its files set
(dotted key -> value; comments and layering dropped): a compact, reviewable record of what each run sets, written by
this file (``python tests/test_config_layers.py --write``) from the layers of :data:`RUNS`.

Why the settings and not the printed ``--print_config``: the test resolves both sides, the layered files and the
recorded settings, with the package's CLI parser (built once) and compares the two resolved configs whole. Every key
the CLI has is compared, defaults included, yet an option added to the package (a new default) changes both sides
alike and needs no new test data; only a change to what a shipped run sets does, and the record's diff is then the
settings that changed. The plain merge of :mod:`tempo_pl.run.config_layers` (what the pipelines read) is checked against
the same record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tempo_pl.run.config_layers import config_args, flat, nested, read_layers

ROOT = Path(__file__).resolve().parents[1]
SETTINGS_FILE = ROOT / "tests" / "data" / "config_settings.json"

_TINY = "configs/tiny.yaml"
_AIME = "configs/tempo/aime.yaml"
_DEMO = "configs/demo/tempo.yaml"
_PAPER_MODELS = ("olmo3_7b", "qwen3_8b", "qwen3_14b")

RUNS: dict[str, tuple[str, ...]] = {
    # the tiny random Qwen3 on the synthetic task (CPU): TEMPO, FSDP2, the baselines and the frozen critic
    "configs/tiny": (_TINY,),
    "configs/fsdp2_tiny": (_TINY, "configs/fsdp2_tiny.yaml"),
    **{f"configs/baselines/{m}": (_TINY, f"configs/baselines/{m}.yaml")
       for m in ("ttrl", "empo", "intuitor", "rlvr_oracle", "zero_rl")},
    "configs/tempo/frozen_critic": (_TINY, "configs/tempo/frozen_critic.yaml"),
    # the paper's runs: the AIME base, a model, and QLoRA on one GPU
    **{f"configs/tempo/{m}_aime": (_AIME, f"configs/tempo/{m}_aime.yaml") for m in _PAPER_MODELS},
    **{f"configs/tempo/{m}_aime_qlora": (_AIME, f"configs/tempo/{m}_aime.yaml", f"configs/tempo/{m}_aime_qlora.yaml")
       for m in _PAPER_MODELS},
    # the offline demo's stages: warm start, stage 1, and the test-time runs over TEMPO's
    "configs/demo/sft": ("configs/demo/sft.yaml",),
    "configs/demo/zero_rl": ("configs/demo/zero_rl.yaml",),
    "configs/demo/tempo": (_DEMO,),
    **{f"configs/demo/{m}": (_DEMO, f"configs/demo/{m}.yaml") for m in ("ttrl", "empo", "intuitor", "frozen_critic")},
    "examples/custom_advantage": (_TINY, "examples/custom_advantage.yaml"),
}
"""Every shipped run: its name (the path of its last layer, without ``.yaml``) and its config files, base first."""

NOT_RUNS = {"configs/demo/scenarios.yaml"}
"""YAML files under configs/ that are no ``tempo-pl fit`` config (the demo's scenario table)."""


def layered_settings(layers) -> dict:
    return flat(read_layers([ROOT / p for p in layers]))


def write_settings(runs: dict[str, tuple[str, ...]] = RUNS) -> None:
    """Record every run's settings in :data:`SETTINGS_FILE` (one sorted key per line, so its diff reads well)."""
    runs_text = []
    for name, layers in runs.items():
        keys = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(layered_settings(layers).items())]
        runs_text.append(f" {json.dumps(name)}: {{\n" + ",\n".join(keys) + "\n }")
    SETTINGS_FILE.parent.mkdir(parents=True, exist_ok=True)
    SETTINGS_FILE.write_text("{\n" + ",\n".join(runs_text) + "\n}\n")


class _Parsed(Exception):
    def __init__(self, parser) -> None:
        self.parser = parser


@pytest.fixture(scope="module")
def fit_parser():
    """The parser of ``tempo-pl fit`` / ``validate``, built once: TempoCLI stopped before it parses anything."""
    from tempo_pl.cli import TempoCLI

    class ParserOnly(TempoCLI):
        def parse_arguments(self, parser, args) -> None:
            raise _Parsed(parser)

    with pytest.raises(_Parsed) as parsed:
        ParserOnly(args=[])
    return parsed.value.parser


def resolved(parser, config_args_: list[str]) -> dict:
    """What ``tempo-pl fit <config_args_> --print_config`` resolves, as a dict (without the config file list)."""
    cfg = parser.parse_args(["fit", *config_args_]).fit.clone()
    del cfg["config"]
    return cfg.as_dict()


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(SETTINGS_FILE.read_text())


def test_every_config_file_belongs_to_a_run_and_every_run_is_recorded(recorded):
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml")}
    used = {layer for layers in RUNS.values() for layer in layers}
    assert shipped - NOT_RUNS == {u for u in used if u.startswith("configs/")}
    assert all((ROOT / u).is_file() for u in used)
    assert set(recorded) == set(RUNS)
    assert all(name == layers[-1].removesuffix(".yaml") for name, layers in RUNS.items())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_layers_resolve_to_the_recorded_settings(name, fit_parser, recorded, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # custom_advantage's estimator
    layers = [str(ROOT / p) for p in RUNS[name]]
    expected = recorded[name]
    assert layered_settings(RUNS[name]) == expected  # the pipelines' plain merge reads the same settings
    from_layers = resolved(fit_parser, config_args(layers))
    from_record = resolved(fit_parser, [f"--config={json.dumps(nested(expected))}"])
    assert from_layers == from_record
    assert from_layers["model"]["class_path"] == nested(expected)["model"]["class_path"]


def test_the_cli_layers_the_configs_it_is_given(capsys):
    from tempo_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *config_args([ROOT / _TINY, ROOT / "configs/baselines/ttrl.yaml"]), "--print_config"])
    assert exit_info.value.code in (None, 0), capsys.readouterr().err[-2000:]
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["init_args"]["critic"] is None
    assert printed["trainer"]["logger"]["init_args"]["name"] == "ttrl"
    assert printed["model"]["init_args"]["sampling"]["max_new_tokens"] == 24  # tiny.yaml's, kept


def test_an_overlay_changes_only_what_it_names(fit_parser):
    # the layering the shipped runs rely on: a partial class entry (no class_path) keeps the class below and
    # its other init_args; a list replaces the list below; null removes a model
    tiny = resolved(fit_parser, config_args([ROOT / _TINY]))
    overlay = yaml.safe_dump({"model": {"init_args": {"critic": None, "policy_optimizer": {"init_args": {"lr": 0.5}}}},
                              "trainer": {"callbacks": [{"class_path": "tempo_pl.callbacks.BaselineTelemetry"}],
                                          "logger": {"init_args": {"name": "other"}}}})
    layered = resolved(fit_parser, [*config_args([ROOT / _TINY]), f"--config={overlay}"])
    model, tiny_model = layered["model"]["init_args"], tiny["model"]["init_args"]
    assert model["critic"] is None and tiny_model["critic"] is not None
    assert model["policy_optimizer"]["init_args"] == {**tiny_model["policy_optimizer"]["init_args"], "lr": 0.5}
    assert [c["class_path"] for c in layered["trainer"]["callbacks"]] == ["tempo_pl.callbacks.BaselineTelemetry"]
    assert layered["trainer"]["logger"]["init_args"] == {**tiny["trainer"]["logger"]["init_args"], "name": "other"}
    assert {k: v for k, v in model.items() if k not in ("critic", "policy_optimizer")} == {
        k: v for k, v in tiny_model.items() if k not in ("critic", "policy_optimizer")}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_config_layers.py --write   (records every run's settings)")
    write_settings()
    print(f"wrote {SETTINGS_FILE.relative_to(ROOT)}: {len(RUNS)} runs")
