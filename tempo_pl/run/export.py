"""Hugging Face export of a TEMPO checkpoint: the policy and the critic as plain folders, LoRA merged.

Works on every checkpoint a run writes: a Lightning ``.ckpt`` file (one process, DDP, or FSDP2 with
``save_distributed_checkpoint=False``) and a sharded FSDP2 folder (DCP, one file per rank), read in one process with
no process group, with ``torch.load(weights_only=True)`` (a file that needs more is refused, naming it). The models
are rebuilt from the specs saved in the checkpoint's hyper-parameters, in full precision even when the run trained
on a 4-bit base (QLoRA: the adapters are merged into the original weights, not into their NF4 rounding), then the
trained tensors are loaded over them and LoRA is merged:

- ``<out>/policy``: ``AutoModelForCausalLM`` weights + tokenizer;
- ``<out>/critic``: ``AutoModelForTokenClassification(num_labels=1)`` weights + tokenizer (the verl critic format).

Example::

    from tempo_pl.run.export import export_hf
    export_hf("runs/tempo/version_0/checkpoints/last", "export/step224")

    tempo-pl export runs/.../checkpoints/last export/step224      (or: python -m tempo_pl.run.export ...)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from tempo_pl.models.lora import save_merged
from tempo_pl.run.checkpoint_io import load_checkpoint_file

#: the file Lightning writes beside the shards of a distributed checkpoint (hyper-parameters, loops, callbacks)
SHARDED_METADATA = "meta.pt"
#: attribute names of the models in TempoModule, i.e. the state-dict prefixes of a checkpoint
POLICY, CRITIC = "policy", "critic"


def export_hf(
    checkpoint: Union[str, Path],
    out_dir: Union[str, Path],
    save_critic: bool = True,
) -> dict[str, Path]:
    """Write the checkpoint's policy (and critic) as Hugging Face folders; returns ``{"policy": path, "critic": path}``.

    Args:
        checkpoint: a ``.ckpt`` file or a sharded checkpoint folder of a ``TempoModule`` run.
        out_dir: folder to create ``policy/`` and ``critic/`` in.
        save_critic: also write the critic (when the run had one).
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    hparams = read_hyperparameters(checkpoint)
    if hparams.get(POLICY) is None:
        raise ValueError(f"{checkpoint}: the hyper-parameters name no `policy` spec; is this a TempoModule checkpoint?")
    from tempo_pl.models.builders import CriticSpec, ModelSpec, build_tokenizer

    policy_spec = as_spec(hparams[POLICY], ModelSpec)
    critic_spec = as_spec(hparams.get(CRITIC), CriticSpec)

    tokenizer = build_tokenizer(policy_spec)
    models = rebuild_models(policy_spec, critic_spec, shared_base=bool(hparams.get("shared_base", False)))
    load_trained_weights(models, checkpoint)
    if not save_critic:
        models.pop(CRITIC, None)
    # the rebuilt models serve this export only: merging in place spares a copy of each
    return save_hf_folders(models, out_dir, tokenizer, in_place=True)


def save_hf_folders(
    models: dict[str, nn.Module], out_dir: Union[str, Path], tokenizer=None, in_place: bool = False
) -> dict[str, Path]:
    """Write each model, LoRA merged (:func:`tempo_pl.models.lora.save_merged`), with the tokenizer to ``<out_dir>/<key>``.

    Returns the folder of each key. With ``in_place=False`` the models keep their adapters.
    """
    return {name: save_merged(model, Path(out_dir) / name, tokenizer, in_place) for name, model in models.items()}


def read_hyperparameters(checkpoint: Path) -> dict[str, Any]:
    """The module's saved hyper-parameters of a ``.ckpt`` file or a sharded checkpoint folder."""
    if checkpoint.is_dir():
        meta = checkpoint / SHARDED_METADATA
        if not meta.is_file():
            raise FileNotFoundError(f"{checkpoint} is a folder without {SHARDED_METADATA}: not a sharded checkpoint")
        state = load_checkpoint_file(meta)
    elif checkpoint.is_file():
        # the whole file is read: a full checkpoint has no separate metadata; mmap keeps the tensors on disk
        state = load_checkpoint_file(checkpoint, mmap=True)
    else:
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    hparams = state.get("hyper_parameters")
    if not hparams:
        raise ValueError(f"{checkpoint} holds no hyper_parameters (was save_hyperparameters() called?)")
    return dict(hparams)


def as_spec(value, spec_class):
    """A spec from the hyper-parameters: the dataclass itself, or its fields as a dict (how the CLI stores it)."""
    if value is None or isinstance(value, spec_class):
        return value
    if isinstance(value, dict):
        fields = {f.name for f in dataclasses.fields(spec_class)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{spec_class.__name__} in the checkpoint has unknown keys {unknown}")
        return spec_class(**value)
    raise TypeError(f"cannot read a {spec_class.__name__} from {type(value).__name__}")


def full_precision(spec):
    """The spec with its 4-bit quantization turned off (LoRA merges into the original weights)."""
    if spec is None or not spec.load_in_4bit:
        return spec
    return dataclasses.replace(spec, load_in_4bit=False)


def rebuild_models(policy_spec, critic_spec, shared_base: bool = False) -> dict[str, nn.Module]:
    """The run's models, unsharded and in full precision, keyed by their state-dict prefix."""
    if shared_base:
        from tempo_pl.models.shared_base import build_shared_actor_critic

        policy, critic = build_shared_actor_critic(full_precision(policy_spec), full_precision(critic_spec))
        return {POLICY: policy, CRITIC: critic}
    from tempo_pl.models.builders import build_critic, build_policy

    models = {POLICY: build_policy(full_precision(policy_spec))}
    if critic_spec is not None:
        models[CRITIC] = build_critic(full_precision(critic_spec), full_precision(policy_spec))
    return models


def load_trained_weights(models: dict[str, nn.Module], checkpoint: Path) -> list[str]:
    """Load the checkpoint's tensors into ``models`` in place; returns the keys loaded.

    A key is loaded when the checkpoint has it with the model's shape. Every trainable parameter must be among them
    (else the checkpoint belongs to another configuration); a 4-bit base's packed weights, absent or shaped
    differently in the rebuilt full-precision model, are what is left out.
    """
    # one tree under the state-dict prefixes, walked the standard way (a shared-base view lists a subset itself)
    tree = nn.Module()
    for prefix, model in models.items():
        tree.add_module(prefix, model)
    targets = tree.state_dict()
    available = _checkpoint_shapes(checkpoint)
    selected = {k: t for k, t in targets.items() if available.get(k) == tuple(t.shape)}
    missing = [name for name, param in tree.named_parameters() if param.requires_grad and name not in selected]
    if missing:
        raise ValueError(
            f"{checkpoint} lacks {len(missing)} trained tensors of the rebuilt models (e.g. {missing[:3]}): it was "
            "written by another model configuration"
        )
    if checkpoint.is_dir():
        import torch.distributed.checkpoint as dcp

        # DCP reads straight into these tensors, which share storage with the models' parameters
        dcp.load({"state_dict": selected}, checkpoint_id=str(checkpoint))
    else:
        state = load_checkpoint_file(checkpoint, mmap=True, verify=False)["state_dict"]
        with torch.no_grad():
            for key, tensor in selected.items():
                tensor.copy_(state[key])
    return sorted(selected)


def _checkpoint_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    if checkpoint.is_dir():
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        metadata = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
        prefix = "state_dict."
        return {
            key[len(prefix):]: tuple(meta.size)
            for key, meta in metadata.items()
            if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
        }
    state = load_checkpoint_file(checkpoint, mmap=True, verify=False)["state_dict"]
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, Tensor)}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="tempo-pl export",
                                     description="Export a TEMPO checkpoint's policy and critic as HF folders.")
    parser.add_argument("checkpoint", help="a .ckpt file or a sharded checkpoint folder")
    parser.add_argument("out_dir", help="folder to write policy/ and critic/ into")
    parser.add_argument("--no-critic", action="store_true", help="write the policy only")
    args = parser.parse_args(argv)
    written = export_hf(args.checkpoint, args.out_dir, save_critic=not args.no_critic)
    for name, path in written.items():
        print(f"{name}: {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
