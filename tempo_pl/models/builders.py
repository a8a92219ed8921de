"""Policy and critic: typed specs and builders (full, LoRA, QLoRA).

The policy is a causal LM. The critic is the same kind of backbone with a scalar ``score`` head on every token, kept
in the ``AutoModelForTokenClassification(num_labels=1)`` format, so a critic trained by verl loads as is and ours
loads in verl. Adapters, 4-bit bases and merging are in :mod:`tempo_pl.models.lora`. Nothing here knows Lightning:
``TempoModule.configure_model`` calls the builders; the forward passes are in :mod:`tempo_pl.models.forward`.

Example::

    policy_spec = ModelSpec(config=tiny_qwen3_config(vocab_size=101), tokenizer="builtin:char", seed=0)
    tokenizer = build_tokenizer(policy_spec)
    policy = build_policy(policy_spec)
    critic = build_critic(CriticSpec(), policy_spec)      # policy backbone, fresh value head
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForTokenClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_layers import GenericForTokenClassification
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING,
)

from tempo_pl.models.load_report import held_load_report
from tempo_pl.models.lora import (
    bnb_config,
    disable_bnb_avx512bf16,
    is_loaded_quantized,
    lora_config,
    quantize_via_disk,
)
from tempo_pl.models.pretrained_sources import loading, loading_tokenizer
from tempo_pl.models.tiny import resolve_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSpec:
    """LoRA adapters (peft) on the policy or the critic.

    Example::

        LoraSpec(r=8, alpha=16, target_modules=["q_proj", "v_proj"])
    """

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator: the adapter's output is multiplied by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input during training (0 keeps old and new log-probs of a rollout comparable)."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``"all-linear"`` for every linear layer except the output head."""

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"LoraSpec.r must be positive, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoraSpec.dropout must be in [0, 1), got {self.dropout}")
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("LoraSpec.target_modules is an empty list")


@dataclass
class ModelSpec:
    """Where a model comes from and how it is loaded.

    Exactly one of ``name_or_path`` (a hub name or a local directory) and ``config`` (random weights, for tests and
    offline demos) names the weights.

    Example::

        ModelSpec(name_or_path="Qwen/Qwen3-8B", dtype="bfloat16", lora=LoraSpec(r=64), load_in_4bit=True)
        ModelSpec(config=tiny_qwen3_config(vocab_size=101), tokenizer="builtin:char", seed=0)
    """

    name_or_path: Optional[str] = None
    """Hub name or local directory of the weights."""
    config: Optional[dict] = None
    """A config dict (with ``model_type``) to build the model from, with random weights, instead of loading one."""
    tokenizer: Optional[str] = None
    """Tokenizer name or directory; defaults to ``name_or_path``. ``"builtin:char"`` is the offline char tokenizer."""
    dtype: str = "float32"
    """Parameter dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"`` (also the 4-bit compute and storage dtype)."""
    attn_implementation: Optional[str] = "sdpa"
    """Transformers attention backend (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``); None = library default."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant) to save memory."""
    lora: Optional[LoraSpec] = None
    """Train LoRA adapters instead of the full weights (the base is frozen); None = full fine-tuning."""
    load_in_4bit: bool = False
    """QLoRA: NF4-quantize the frozen base with bitsandbytes; needs ``lora``. Storage dtype = ``dtype`` (FSDP-able)."""
    trust_remote_code: bool = False
    """Allow model and tokenizer code from the checkpoint's repository."""
    seed: Optional[int] = None
    """Seeds every random initialisation the builder does (weights from ``config``, LoRA adapters, a fresh value
    head) without touching the global RNG; None draws from the global RNG."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.dtype not in DTYPES:
            raise ValueError(f"{name}.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.name_or_path is not None and self.config is not None:
            raise ValueError(f"{name}: give name_or_path or config, not both")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError(f"{name}.config needs a 'model_type' key (e.g. 'qwen3')")
        if self.load_in_4bit and self.lora is None:
            raise ValueError(f"{name}.load_in_4bit=True needs `lora`: a 4-bit base has no trainable weights")
        if isinstance(self.lora, dict):  # from YAML without class_path
            self.lora = LoraSpec(**self.lora)
        self._check_source()

    def _check_source(self) -> None:
        if self.name_or_path is None and self.config is None:
            raise ValueError("ModelSpec needs name_or_path or config")


@dataclass
class CriticSpec(ModelSpec):
    """The critic: a backbone with a scalar value head on every token (token-classification format, 1 label).

    Its weights come from ``name_or_path`` (a critic checkpoint, or a causal-LM checkpoint that then gets a fresh
    head), from ``config``, or, when both are None and ``init_from_policy`` is set, from the policy's own source
    (same ``name_or_path``, or same ``config`` and ``seed``) with a fresh head.

    Example::

        CriticSpec(name_or_path="ckpt/stage1/critic", dtype="bfloat16")
        CriticSpec(init_from_policy=True, head_init_std=0.0)
    """

    init_from_policy: bool = True
    """With neither name_or_path nor config: start from the policy's weights (the backbone) and a fresh head."""
    head_init_std: float = 0.0
    """Std of a fresh head's normal weight init; 0 = zero weight, so every initial value is 0 (the neutral
    V = 2 P(correct) - 1 of a ±1 reward). The bias always starts at 0. A loaded head is never re-initialised."""

    def __post_init__(self) -> None:
        if self.head_init_std < 0:
            raise ValueError(f"CriticSpec.head_init_std must be >= 0, got {self.head_init_std}")
        super().__post_init__()

    def _check_source(self) -> None:
        if self.name_or_path is None and self.config is None and not self.init_from_policy:
            raise ValueError("CriticSpec needs name_or_path, config, or init_from_policy=True")


# ----------------------------------------------------------------------------------------------------- building


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Seed the CPU and current-accelerator RNG for the block, restoring the global state afterwards."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The spec's tokenizer, left-padded (for generation), with a pad token (eos when the tokenizer has none)."""
    name = spec.tokenizer or spec.name_or_path
    if name is None:
        raise ValueError(f"{type(spec).__name__}.tokenizer is required when the model is built from `config`")
    with loading_tokenizer(type(spec).__name__, name, from_model_folder=spec.tokenizer is None):
        tokenizer = resolve_tokenizer(name, trust_remote_code=spec.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _bnb_config(spec: ModelSpec, skip_modules: Optional[list[str]]):
    return bnb_config(DTYPES[spec.dtype], skip_modules)


def _config_from_dict(config: dict, overrides: dict) -> PretrainedConfig:
    values = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(config["model_type"], **{**values, **overrides})


def _initialising_on_meta() -> bool:
    """True inside a meta-device init context (``FSDP2Recipe.rank0_init`` on every rank but 0): a checkpoint is then
    built from its config alone, without reading its weights, which arrive from rank 0 when the model is sharded."""
    return torch.empty(0).device.type == "meta"


def _load_kwargs(spec: ModelSpec) -> dict:
    return {"dtype": DTYPES[spec.dtype], "attn_implementation": spec.attn_implementation}


def token_classification_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The architecture's ``*ForTokenClassification`` class; for one that has none (OLMo2/3, Gemma3, ...), build the
    same generic class transformers builds for Qwen3/Llama and register it with ``AutoModelForTokenClassification``,
    so the state dict is ``model.* + score.weight + score.bias`` and saved critics load back through the auto class."""
    if type(config) in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING:
        return MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[type(config)]
    causal_lm = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    pretrained = next(
        c for c in causal_lm.__mro__[1:] if issubclass(c, PreTrainedModel) and c.__name__.endswith("PreTrainedModel")
    )
    name = causal_lm.__name__.replace("ForCausalLM", "") + "ForTokenClassification"
    cls = type(name, (GenericForTokenClassification, pretrained), {"__module__": __name__})
    globals()[name] = cls  # picklable by name
    AutoModelForTokenClassification.register(type(config), cls, exist_ok=True)
    return cls


def _quantize_via_disk(model: PreTrainedModel, auto_cls, spec: ModelSpec, skip_modules: Optional[list[str]]):
    return quantize_via_disk(model, auto_cls, _bnb_config(spec, skip_modules), **_load_kwargs(spec))


def _finish(model: PreTrainedModel, spec: ModelSpec, task_type: str, modules_to_save: Optional[list[str]]) -> nn.Module:
    """Gradient checkpointing, LoRA adapters, and the bitsandbytes CPU trap, in the same order for every model."""
    if spec.gradient_checkpointing:
        # transformers >= 5 renamed it; the old name still works on 4.x
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    if spec.lora is not None:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(spec.lora, task_type, modules_to_save))
    if spec.load_in_4bit:
        # the value pass and the old-log-prob pass are eval-mode no-grad forwards too, not only generate
        disable_bnb_avx512bf16(model)
    return model


def build_policy(spec: ModelSpec) -> nn.Module:
    """The policy: a causal LM; a peft ``PeftModel`` when ``spec.lora`` is set (QLoRA when also ``load_in_4bit``).

    Example::

        policy = build_policy(ModelSpec(name_or_path="Qwen/Qwen3-8B", dtype="bfloat16", lora=LoraSpec()))
    """
    with seeded(spec.seed):
        if spec.config is not None:
            config = _config_from_dict(spec.config, {})
            model = AutoModelForCausalLM.from_config(config, **_load_kwargs(spec))
            if spec.load_in_4bit:
                model = _quantize_via_disk(model, AutoModelForCausalLM, spec, skip_modules=None)
        elif _initialising_on_meta():
            config = AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
            model = AutoModelForCausalLM.from_config(config, **_load_kwargs(spec))
        else:
            kwargs = _load_kwargs(spec)
            if spec.load_in_4bit:
                kwargs["quantization_config"] = _bnb_config(spec, skip_modules=None)
            with loading(spec.name_or_path, f"{type(spec).__name__}.name_or_path"):
                model = AutoModelForCausalLM.from_pretrained(
                    spec.name_or_path, trust_remote_code=spec.trust_remote_code, **kwargs
                )
        return _finish(model, spec, task_type="CAUSAL_LM", modules_to_save=None)


#: config overrides of every critic: one output, and no dropout before the head (values must be deterministic)
CRITIC_OVERRIDES = {"num_labels": 1, "classifier_dropout": 0.0}
_HEAD = "score"


def init_value_head(head: nn.Linear, std: float) -> None:
    """Zero bias, and a zero (``std == 0``) or normal(0, std) weight: a fresh head's values start at or near 0."""
    with torch.no_grad():
        if std == 0.0:
            head.weight.zero_()
        else:
            head.weight.normal_(0.0, std)
        if head.bias is not None:
            head.bias.zero_()


def _critic_from_pretrained(path: str, spec: CriticSpec) -> tuple[PreTrainedModel, bool]:
    """Load a critic (or a causal LM, then the head is fresh); returns the model and whether its head is fresh."""
    with loading(path, f"{type(spec).__name__}.name_or_path" + ("" if spec.name_or_path else " (the policy's)")):
        config = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code, **CRITIC_OVERRIDES)
    cls = token_classification_class(config)
    if _initialising_on_meta():
        return cls._from_config(config, **_load_kwargs(spec)), False
    kwargs = _load_kwargs(spec)
    if spec.load_in_4bit:
        kwargs["quantization_config"] = _bnb_config(spec, skip_modules=[_HEAD])
    with held_load_report() as report:  # a fresh value head is expected: one line, not transformers' table
        model, info = cls.from_pretrained(
            path, config=config, output_loading_info=True, trust_remote_code=spec.trust_remote_code, **kwargs
        )
    report.settle(info, path, head=_HEAD)
    fresh = any(key.split(".")[0] == _HEAD for key in info["missing_keys"])
    return model, fresh


def build_critic(spec: CriticSpec, policy_spec: Optional[ModelSpec] = None) -> nn.Module:
    """The critic: backbone + ``score`` head (hidden -> 1) on every token, token-classification format.

    LoRA on the critic keeps the head fully trainable (``modules_to_save=["score"]``).

    Args:
        spec: the critic's source and loading options.
        policy_spec: the policy's spec, read only when the critic starts from the policy's weights.

    Example::

        critic = build_critic(CriticSpec(init_from_policy=True), policy_spec)
        critic = build_critic(CriticSpec(name_or_path="ckpt/critic"))
    """
    with seeded(spec.seed):
        if spec.name_or_path is not None:
            model, fresh_head = _critic_from_pretrained(spec.name_or_path, spec)
        elif spec.config is not None or (policy_spec is not None and policy_spec.config is not None):
            model = _critic_from_config(spec, policy_spec)
            fresh_head = True
        elif policy_spec is not None:
            model, fresh_head = _critic_from_pretrained(policy_spec.name_or_path, spec)
        else:
            raise ValueError("build_critic: CriticSpec.init_from_policy needs the policy_spec")
        if fresh_head:
            init_value_head(getattr(model, _HEAD), spec.head_init_std)
        if spec.load_in_4bit and spec.name_or_path is None and not is_loaded_quantized(model):
            model = _quantize_via_disk(model, AutoModelForTokenClassification, spec, skip_modules=[_HEAD])
        return _finish(model, spec, task_type="TOKEN_CLS", modules_to_save=[_HEAD])


def _critic_from_config(spec: CriticSpec, policy_spec: Optional[ModelSpec]) -> PreTrainedModel:
    """A critic from a config dict: its own ``config``, or the policy's, with the policy's backbone copied in."""
    source = spec.config if spec.config is not None else policy_spec.config
    config = _config_from_dict(source, CRITIC_OVERRIDES)
    cls = token_classification_class(config)
    model = cls._from_config(config, **_load_kwargs(spec))
    if spec.config is None:
        # Rebuild the policy's weights exactly as build_policy does (same config and seed), then take its backbone.
        with seeded(policy_spec.seed):
            policy = AutoModelForCausalLM.from_config(_config_from_dict(source, {}), **_load_kwargs(spec))
        model.base_model.load_state_dict(policy.base_model.state_dict())
    return model
