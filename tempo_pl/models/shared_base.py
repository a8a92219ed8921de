"""Policy and critic on one frozen (4-bit) base with two LoRA adapters: about half the memory of two QLoRA models.

TEMPO's critic is a model of the policy's size. With QLoRA, the frozen base dominates memory, and the policy and the
critic can share it: one peft model holds the base and two adapters, ``"default"`` (the policy's, the one
:func:`~tempo_pl.models.builders.build_policy` creates) and ``"critic"``, and the critic adds its scalar value
head. Two thin modules give the training loop the two models it expects:

- :class:`PolicyView`: a causal LM (``forward``, ``generate``, ``disable_adapter``) that runs the policy adapter;
  it owns the shared peft model as its child, so the base and both adapters are checkpointed once, under ``policy``.
- :class:`CriticView`: a token-classification model (``.logits`` of shape (N, L, 1)) that runs the critic adapter on
  the same base and reads the final hidden states with its own ``score`` head.

Each view activates its adapter before every call, so the two can be used in any order. Both adapters stay
trainable at all times; each view's ``parameters()`` lists only what its optimizer must update (policy: the policy
adapter; critic: the critic adapter and the head), and a backward pass through one view leaves the other adapter's
gradients untouched, because only the active adapter enters the graph.

Example::

    policy, critic = build_shared_actor_critic(
        ModelSpec(name_or_path="Qwen/Qwen3-8B", dtype="bfloat16", load_in_4bit=True, lora=LoraSpec(r=64)),
        CriticSpec(lora=LoraSpec(r=64)),
    )
    logits = policy(input_ids=ids).logits            # policy adapter
    values = critic(input_ids=ids).logits[..., 0]    # critic adapter + value head
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from tempo_pl.models.builders import (
    CRITIC_OVERRIDES,
    build_policy,
    init_value_head,
    seeded,
    token_classification_class,
)
from tempo_pl.models.lora import disable_bnb_avx512bf16, lora_config

#: the adapter :func:`~tempo_pl.models.builders.build_policy` creates (peft's default name) is the policy's
POLICY_ADAPTER = "default"
CRITIC_ADAPTER = "critic"


def build_shared_actor_critic(policy_spec, critic_spec) -> tuple["PolicyView", "CriticView"]:
    """The policy and the critic as two adapters on the policy's base; returns ``(policy, critic)``.

    The base comes from ``policy_spec`` (4-bit when ``load_in_4bit``); the critic adapter takes ``critic_spec.lora``
    (default: the policy's LoRA settings), and its fresh value head ``critic_spec.head_init_std`` (0 = every initial
    value is 0). Seeds: ``policy_spec.seed`` for the base and the policy adapter, ``critic_spec.seed`` for the critic
    adapter and the head.

    Args:
        policy_spec: a :class:`~tempo_pl.models.builders.ModelSpec` with ``lora`` set (a shared base is frozen).
        critic_spec: a :class:`~tempo_pl.models.builders.CriticSpec` that names no weights of its own.
    """
    if policy_spec.lora is None:
        raise ValueError("shared base: policy.lora is required, the base the policy and the critic share is frozen")
    if critic_spec is None:
        raise ValueError("shared base: a critic spec is required (the critic adapter and head are built from it)")
    if critic_spec.name_or_path is not None or critic_spec.config is not None:
        raise ValueError(
            "shared base: the critic lives on the policy's base, so critic.name_or_path and critic.config must be "
            f"unset (got name_or_path={critic_spec.name_or_path!r}, config set: {critic_spec.config is not None})"
        )
    model = build_policy(policy_spec)
    with seeded(critic_spec.seed):
        model.add_adapter(CRITIC_ADAPTER, lora_config(critic_spec.lora or policy_spec.lora, task_type="CAUSAL_LM"))
        hidden = model.get_base_model().config.hidden_size
        head = nn.Linear(hidden, 1)
        init_value_head(head, critic_spec.head_init_std)
    # add_adapter leaves the new adapter frozen and inactive; both adapters train, each through its own view
    for param in adapter_parameters(model, POLICY_ADAPTER) + adapter_parameters(model, CRITIC_ADAPTER):
        param.requires_grad_(True)
    if policy_spec.load_in_4bit:
        disable_bnb_avx512bf16(model)
    return PolicyView(model), CriticView(model, head)


def _adapter_key(name: str) -> str:
    return f".{name}."


def adapter_parameters(model: nn.Module, adapter: str) -> list[nn.Parameter]:
    """The LoRA parameters of one adapter (their names hold ``.<adapter>.``)."""
    return [p for n, p in model.named_parameters() if "lora_" in n and _adapter_key(adapter) in n]


def activate_adapter(model: nn.Module, adapter: str) -> None:
    """Route every LoRA layer of ``model`` through ``adapter`` without touching ``requires_grad``.

    peft's ``set_adapter`` also freezes the inactive adapters, which would take the other view's adapter out of its
    optimizer's reach (and flip ``requires_grad`` on sharded parameters mid-run); the layers' active-adapter field is
    the part of it the forward pass reads.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            if adapter not in module.lora_A:
                raise KeyError(f"adapter {adapter!r} is not on {type(module).__name__}")
            module._active_adapter = [adapter]
    model.base_model.active_adapter = adapter


def merged_adapter(model: nn.Module, adapter: str) -> nn.Module:
    """A standalone Hugging Face causal LM: a copy of the shared base with ``adapter`` merged, the other dropped."""
    merged = copy.deepcopy(model)
    for other in (POLICY_ADAPTER, CRITIC_ADAPTER):
        if other != adapter:
            merged.delete_adapter(other)
    activate_adapter(merged, adapter)
    return merged.merge_and_unload()


class PolicyView(nn.Module):
    """The policy of a shared base: the causal LM with the policy adapter active.

    Args:
        model: the peft model holding the base and both adapters (this view registers it as ``model``).

    Example::

        policy, critic = build_shared_actor_critic(policy_spec, critic_spec)
        sequences = policy.generate(input_ids=ids, max_new_tokens=64)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        activate_adapter(self.model, POLICY_ADAPTER)
        return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs) -> Tensor:
        activate_adapter(self.model, POLICY_ADAPTER)
        return self.model.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        """The Hugging Face causal LM (with both adapters injected)."""
        return self.model.get_base_model()

    def disable_adapter(self):
        """Context in which the frozen base runs without adapters (the reference model of a KL penalty)."""
        return self.model.disable_adapter()

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The base's and the policy adapter's parameters; the critic adapter belongs to the critic's optimizer."""
        critic = _adapter_key(CRITIC_ADAPTER)
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if not ("lora_" in name and critic in name):
                yield name, param

    def merged_model(self) -> nn.Module:
        """A standalone Hugging Face causal LM: a copy of the base with the policy adapter merged."""
        return merged_adapter(self.model, POLICY_ADAPTER)


class CriticView(nn.Module):
    """The critic of a shared base: the critic adapter on the policy's base, and a value head on every token.

    It does not register the shared model (the policy view does), so checkpoints hold the base once; its own state
    is the ``score`` head. Outputs carry ``logits`` of shape (N, L, 1), like ``AutoModelForTokenClassification``.

    Args:
        model: the shared peft model.
        head: the value head, hidden size -> 1.
    """

    def __init__(self, model: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "_shared", model)  # not a child: the policy view owns it
        self.score = head

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, **kwargs):
        from transformers.modeling_outputs import TokenClassifierOutput

        activate_adapter(self._shared, CRITIC_ADAPTER)
        backbone = self.get_base_model().base_model
        captured: dict[str, Tensor] = {}

        def keep_hidden(module, args, output) -> None:
            captured["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        # through the causal LM's own forward (so hooks on it, e.g. FSDP2's, run) with the LM head on 1 position only
        handle = backbone.register_forward_hook(keep_hidden)
        try:
            self._shared(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         **{"use_cache": False, **kwargs, "logits_to_keep": 1})
        finally:
            handle.remove()
        hidden = captured["hidden"]
        return TokenClassifierOutput(logits=self.score(hidden.to(self.score.weight.dtype)))

    def get_base_model(self) -> nn.Module:
        return self._shared.get_base_model()

    def train(self, mode: bool = True) -> "CriticView":
        super().train(mode)
        self._shared.train(mode)
        return self

    @property
    def shared(self) -> nn.Module:
        """The shared peft model, so that every name :meth:`named_parameters` gives resolves by attribute."""
        return self._shared

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True):
        """The critic adapter's parameters (named as in the shared model, under ``shared.``) and the value head's.

        ``recurse=False`` lists this module's own parameters only, as ``nn.Module`` does: none. Distributed
        checkpointing walks a model module by module with ``recurse=False``; listing the adapter there too would name
        it twice, once through the policy view that owns it and once through ``shared``.
        """
        if recurse:
            critic = _adapter_key(CRITIC_ADAPTER)
            base = f"{prefix}." if prefix else ""
            for name, param in self._shared.named_parameters():
                if "lora_" in name and critic in name:
                    yield f"{base}shared.{name}", param
        yield from super().named_parameters(prefix, recurse, remove_duplicate)

    def merged_model(self) -> nn.Module:
        """A standalone ``*ForTokenClassification`` model (num_labels=1): the base with the critic adapter merged,
        and this head as its ``score``; it loads with ``AutoModelForTokenClassification``."""
        causal_lm = merged_adapter(self._shared, CRITIC_ADAPTER)
        config = copy.deepcopy(causal_lm.config)
        for key, value in CRITIC_OVERRIDES.items():
            setattr(config, key, value)
        cls = token_classification_class(config)
        critic = cls._from_config(config, dtype=causal_lm.dtype)
        critic.base_model.load_state_dict(causal_lm.base_model.state_dict())
        with torch.no_grad():
            critic.score.weight.copy_(self.score.weight.to(critic.score.weight.dtype))
            critic.score.bias.copy_(self.score.bias.to(critic.score.bias.dtype))
        return critic
