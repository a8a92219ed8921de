"""Packaging: `tempo_pl.callbacks` (the repo-root callbacks/ folder) imports from an editable install and a wheel;
the pipelines and the configs (tempo_pl/configs, read by `tempo-pl demo`) ship in the wheel and the core never imports
the pipelines; a config typo is named. (Every shipped run's configs parse: tests/test_config_layers.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_editable_install_maps_callbacks_folder() -> None:
    import tempo_pl.callbacks

    assert Path(tempo_pl.callbacks.__file__).resolve().parent == ROOT / "callbacks"
    assert hasattr(tempo_pl.callbacks, "EMSchedule")


@pytest.mark.slow
def test_wheel_installs_callbacks_as_subpackage(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = dist.glob("tempo_pl-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tempo_pl/callbacks/em_schedule.py" in names
    assert "tempo_pl/module.py" in names
    assert "tempo_pl/pipelines/demo.py" in names and "tempo_pl/pipelines/report.py" in names
    assert not any(n.startswith("callbacks/") for n in names)
    # the shipped configs travel as package data: `tempo-pl demo` reads its stage configs from the wheel
    demo_configs = {n for n in names if n.startswith("tempo_pl/configs/demo/")}
    from tempo_pl.pipelines.demo_stages import STAGES

    assert demo_configs == {f"tempo_pl/configs/demo/{c}" for s in STAGES for c in s.configs} | {
        "tempo_pl/configs/demo/scenarios.yaml"}
    shipped = {f"tempo_pl/{p.relative_to(ROOT)}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped <= set(names) and not any(n.startswith("configs/") for n in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-c", "import tempo_pl.callbacks as c, tempo_pl; print(c.__file__); print(c.EMSchedule)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert Path(first).resolve().is_relative_to(site.resolve()), first
    lookup = subprocess.run(
        [sys.executable, "-c", "from tempo_pl.pipelines.demo import DemoConfig, DEMO_CONFIGS; "
                               "DemoConfig(out='o'); print(DEMO_CONFIGS)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert lookup.returncode == 0, lookup.stderr[-2000:]
    assert Path(lookup.stdout.strip()) == (site / "tempo_pl" / "configs" / "demo").resolve()


@pytest.mark.slow
def test_core_never_imports_the_pipelines() -> None:
    # the pipelines drive the core through its command line; the other way round, every training run would load the
    # orchestration (rich, matplotlib, the demo's stage graph) and the two could no longer change apart
    code = ("import sys, tempo_pl.module, tempo_pl.algorithms, tempo_pl.rewards, tempo_pl.data, tempo_pl.callbacks, "
            "tempo_pl.cli; print(sorted(m for m in sys.modules if m.startswith('tempo_pl.pipelines')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_config_typo_is_named(tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("max_new_tokens: 24", "max_new_tokenz: 24"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(bad), "--print_config"])
    assert exit_info.value.code != 0
    assert "max_new_tokenz" in capsys.readouterr().err


def test_plain_pytest_collects_the_tests_that_import_their_helpers() -> None:
    # `python -P` leaves the working folder off sys.path, as the `pytest` script does (`python -m pytest` adds it)
    out = subprocess.run([sys.executable, "-P", "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/test_eval_rng.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "No module named 'tests'" not in out.stdout


@pytest.mark.parametrize("option, reason", [
    (["--model.init_args.sampling.n", "0"], "SamplingConfig.n must be >= 1, got 0"),
    (["--model.init_args.sampling.max_new_tokens", "0"], "SamplingConfig.max_new_tokens must be >= 1, got 0"),
    (["--model.init_args.algorithm.advantage", "nope"], "algorithm.advantage must be one of"),
])
def test_a_refused_config_value_ends_with_its_reason(option: list, reason: str, tmp_path: Path, capsys) -> None:
    from tempo_pl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "configs" / "tiny.yaml"), *option,
              f"--trainer.logger.init_args.save_dir={tmp_path}"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"[tempo-pl] error: {reason}"), last
