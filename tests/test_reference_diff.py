"""Differential test: the pure functions of ``tempo_pl.algorithms`` against the authors' reference code.

The reference (a fork of verl) is not part of this repository and nothing of it is stored here. Point
``TEMPO_REFERENCE_DIR`` at a checkout or export of it, a folder holding ``verl/trainer/ppo/core_algos.py``::

    mkdir -p /tmp/tempo_ref && git -C <reference clone> archive HEAD verl | tar -x -C /tmp/tempo_ref
    TEMPO_REFERENCE_DIR=/tmp/tempo_ref python -m pytest -q tests/test_reference_diff.py

Without it every test here is skipped. Importing verl needs ray, omegaconf and more, so the reference is read as source
at test time: ``core_algos.py`` and ``utils/torch_functional.py`` are parsed with ``ast``; the top-level function
definitions active at import are kept (a later ``def`` of a name replaces an earlier one; code inside string literals
is not a definition, as for Python); the registered estimator and policy-loss names are read from their decorators;
and the functions are executed with torch, numpy and small stubs (decorators removed, ``verl_F`` holding the masked
statistics read the same way, a stand-in ``ActorConfig``).

Every comparison runs in float64 on random inputs (several seeds, right-padded masks, groups of several sizes,
labeled and unlabeled rows) and must agree to ``TOL``. tempo-pl's functions are called the way ``TempoModule`` calls
them (through the registries, with an ``AlgorithmConfig``), the reference's the way its trainer and workers call them
(``em_ray_trainer.compute_advantage``, ``dp_actor``, ``dp_critic``). Each convention where the two differ on purpose
has its own test, named after it, so a failure names the convention (``docs/algorithm.md``, "Where tempo-pl differs").

The reference's ``masked_mean`` adds 1e-8 to its denominator, a relative difference of about 1e-8 / (valid tokens);
the batches here hold dozens of valid tokens, which keeps it near 3e-10, under ``TOL``.
"""

from __future__ import annotations

import __future__
import ast
import math
import os
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch

from tempo_pl.algorithms.advantages import last_token_value
from tempo_pl.algorithms.losses import AGG_MODES, aggregate_loss, value_loss
from tempo_pl.algorithms.registry import AdvantageBatch, advantage_estimator, advantage_names, policy_loss_fn
from tempo_pl.config import AlgorithmConfig

REFERENCE_ENV = "TEMPO_REFERENCE_DIR"
CORE_ALGOS = Path("verl/trainer/ppo/core_algos.py")
TORCH_FUNCTIONAL = Path("verl/utils/torch_functional.py")
TOL = 1e-9
SEEDS = [0, 1, 2, 3, 4]
DTYPE = torch.float64

pytestmark = pytest.mark.skipif(
    not os.environ.get(REFERENCE_ENV),
    reason=f"{REFERENCE_ENV} is not set (a checkout of the reference, holding {CORE_ALGOS})",
)


# ------------------------------------------------------------------------------------ reading the reference
def _active_defs(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Top-level ``def`` statements as bound after import: the last definition of a name wins."""
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def _enum_values(tree: ast.Module, class_name: str) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {
                stmt.targets[0].id: stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
            }
    raise LookupError(f"class {class_name} not found")


def _registered_names(tree: ast.Module, decorator: str) -> dict[str, str]:
    """``registered name -> function name`` from ``@decorator("name")`` / ``@decorator(AdvantageEstimator.X)``."""
    enum = _enum_values(tree, "AdvantageEstimator")
    names: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == decorator):
                continue
            arg = deco.args[0]
            if isinstance(arg, ast.Constant):
                names[arg.value] = node.name
            elif isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                names[enum[arg.attr]] = node.name
    return names


def _exec_defs(defs: list[ast.FunctionDef], namespace: dict[str, Any], filename: str) -> dict[str, Any]:
    """Define ``defs`` in ``namespace`` without their decorators; annotations stay unevaluated strings."""
    bare = []
    for node in defs:
        node = ast.parse(ast.unparse(node)).body[0]  # a copy
        node.decorator_list = []
        bare.append(node)
    module = ast.fix_missing_locations(ast.Module(body=bare, type_ignores=[]))
    code = compile(module, filename, "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    exec(code, namespace)
    return namespace


class ReferenceActorConfig:
    """Stand-in for verl's ``ActorConfig``: the fields the policy losses read."""

    def __init__(self, clip_ratio_low: float, clip_ratio_high: float, clip_ratio_c: float = 3.0) -> None:
        self.clip_ratio = clip_ratio_low
        self.clip_ratio_low = clip_ratio_low
        self.clip_ratio_high = clip_ratio_high
        self.clip_ratio_c = clip_ratio_c
        self.tis_imp_ratio_cap = 0  # truncated importance sampling off (no rollout log-probs)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class Reference:
    """The reference's functions, read from ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        core_path, tf_path = root / CORE_ALGOS, root / TORCH_FUNCTIONAL
        for path in (core_path, tf_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"{REFERENCE_ENV}={root}: {path} not found (expected a checkout of the reference)")
        tf_tree = ast.parse(tf_path.read_text(), filename=str(tf_path))
        tf_defs = _active_defs(tf_tree)
        stats = ["masked_sum", "masked_mean", "masked_var", "masked_whiten", "clip_by_value"]
        tf_ns = _exec_defs([tf_defs[n] for n in stats], {"torch": torch}, str(tf_path))
        self.verl_F = SimpleNamespace(**{n: tf_ns[n] for n in stats})

        core_tree = ast.parse(core_path.read_text(), filename=str(core_path))
        self.core_defs = _active_defs(core_tree)
        self.advantage_names = _registered_names(core_tree, "register_adv_est")
        self.policy_loss_names = _registered_names(core_tree, "register_policy_loss")
        wanted = {"agg_loss", "compute_value_loss", *self.advantage_names.values(), *self.policy_loss_names.values()}
        namespace = {
            "torch": torch,
            "np": np,
            "defaultdict": defaultdict,
            "Optional": Optional,
            "Any": Any,
            "F": torch.nn.functional,
            "verl_F": self.verl_F,
            "ActorConfig": ReferenceActorConfig,
            "AlgoConfig": type("AlgoConfig", (), {}),  # the vanilla loss asserts its config is not one
            # the GAE estimator also computes an AUROC metric with scikit-learn; its value is not compared
            "roc_auc_score": lambda labels, scores: 0.5,
        }
        self.ns = _exec_defs([self.core_defs[n] for n in sorted(wanted)], namespace, str(core_path))

    def advantage(self, name: str) -> Callable:
        return self.ns[self.advantage_names[name]]

    def policy_loss(self, name: str) -> Callable:
        return self.ns[self.policy_loss_names[name]]

    def __getattr__(self, name: str) -> Callable:
        return self.ns[name]


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference(Path(os.environ[REFERENCE_ENV]))


@pytest.fixture(autouse=True)
def float64_constants():
    """The reference builds constants with ``torch.tensor(1.0)`` (the default dtype); in float64 they must be float64
    too, or a float32 ``1 + 1e-6`` shows up as a 5e-8 difference that a float32 run of either code would not have."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DTYPE)
    yield
    torch.set_default_dtype(previous)


# ------------------------------------------------------------------------------------ random inputs
class Batch(SimpleNamespace):
    """One random RL step: N rows, R positions, right-padded masks, interleaved groups."""


def make_batch(seed: int, group_sizes: list[int], width: int = 9, empty_rows: bool = False,
               labeled_fraction: float = 0.5) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    n = sum(group_sizes)
    group_of = torch.repeat_interleave(torch.arange(len(group_sizes)), torch.tensor(group_sizes))
    group_of = group_of[torch.randperm(n, generator=gen)]  # a group's rows need not be adjacent
    group_ids = group_of * 7 + 3  # arbitrary integers, not 0..G-1
    lengths = torch.randint(0 if empty_rows else 1, width + 1, (n,), generator=gen)
    if empty_rows:
        lengths[torch.randint(0, n, (2,), generator=gen)] = 0
    mask = (torch.arange(width) < lengths.unsqueeze(-1)).to(DTYPE)
    is_labeled = torch.rand(n, generator=gen) < labeled_fraction
    verifier = torch.where(torch.rand(n, generator=gen) < 0.5, 1.0, -1.0).to(DTYPE)
    values = (torch.randn(n, width, generator=gen, dtype=DTYPE) * 0.7).clamp(-1.6, 1.6)
    # the reward manager writes a row's score on its last valid token (none for an empty row)
    token_level_rewards = torch.zeros(n, width, dtype=DTYPE)
    has_tokens = lengths > 0
    rows = torch.arange(n)[has_tokens]
    token_level_rewards[rows, lengths[has_tokens] - 1] = verifier[has_tokens]
    # tempo-pl's per-row outcome (stages.scoring.score_rollout with the CriticValue source on unlabeled rows)
    outcomes = torch.where(is_labeled, verifier, last_token_value(values, mask))
    return Batch(gen=gen, n=n, width=width, group_ids=group_ids, uid=np.array([f"uid-{g}" for g in group_ids.tolist()],
                 dtype=object), lengths=lengths, mask=mask, is_labeled=is_labeled, verifier=verifier, values=values,
                 token_level_rewards=token_level_rewards, outcomes=outcomes)


def tempo_advantage(name: str, b: Batch, **config: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """As ``TempoModule.advantages``: the registered estimator on an ``AdvantageBatch``."""
    batch = AdvantageBatch(scores=b.outcomes, mask=b.mask, group_ids=b.group_ids, is_labeled=b.is_labeled,
                           values=b.values)
    return advantage_estimator(name).fn(batch, AlgorithmConfig(advantage=name, **config))


def max_diff(ours: torch.Tensor, theirs: torch.Tensor, where: Optional[torch.Tensor] = None) -> float:
    ours, theirs = torch.as_tensor(ours).detach().to(DTYPE), torch.as_tensor(theirs).detach().to(DTYPE)
    diff = (ours - theirs).abs()
    if where is not None:
        diff = torch.where(where.bool(), diff, torch.zeros_like(diff))
    return float(diff.max()) if diff.numel() else 0.0


def assert_agrees(what: str, ours: torch.Tensor, theirs: torch.Tensor, where: Optional[torch.Tensor] = None) -> None:
    diff = max_diff(ours, theirs, where)
    assert diff <= TOL, f"{what}: max |tempo-pl - reference| = {diff:.3g} (tolerance {TOL:g})"


# ------------------------------------------------------------------------------------ the reference as read
def test_reference_registers_every_builtin_estimator_of_tempo_pl(ref):
    assert set(advantage_names()) <= set(ref.advantage_names), sorted(set(advantage_names()) - set(ref.advantage_names))
    assert "gspo" in ref.policy_loss_names and "vanilla" in ref.policy_loss_names
    # the value loss the critic calls is the last one defined at top level, the sequence-mean clip with is_labeled
    args = [a.arg for a in ref.core_defs["compute_value_loss"].args.args]
    assert args == ["vpreds", "returns", "values", "response_mask", "cliprange_value", "loss_agg_mode", "is_labeled"]


# ------------------------------------------------------------------------------------ advantages
@pytest.mark.parametrize("seed", SEEDS)
def test_em_token_advantage_and_returns_match_reference(ref, seed):
    """TEMPO's default estimator: z - V_t, whitened over every valid token of the batch; targets z."""
    b = make_batch(seed, [1, 2, 3, 4, 8], empty_rows=True)
    ours_adv, ours_ret = tempo_advantage("em_token", b)
    ref_adv, ref_ret = ref.advantage("em_token")(
        vpreds=b.values, token_level_rewards=b.token_level_rewards, response_mask=b.mask, index=b.uid,
        is_labeled=b.is_labeled.to(DTYPE).unsqueeze(1), norm_adv_by_std_in_grpo=True)
    # the reference does not re-mask after whitening (padding holds -mean/std); every consumer masks, so compare
    # valid tokens
    assert_agrees("em_token advantages", ours_adv, ref_adv, where=b.mask)
    assert_agrees("em_token returns", ours_ret, ref_ret)


@pytest.mark.parametrize("seed", SEEDS)
def test_em_advantage_and_returns_match_reference(ref, seed):
    """The sequence-level ``em`` estimator on groups of two or more responses."""
    b = make_batch(seed, [2, 3, 4, 8, 5])
    ours_adv, ours_ret = tempo_advantage("em", b)
    ref_adv, ref_ret = ref.advantage("em")(
        vpreds=b.values, token_level_rewards=b.token_level_rewards, response_mask=b.mask, index=b.uid,
        is_labeled=b.is_labeled.to(DTYPE).unsqueeze(1), norm_adv_by_std_in_grpo=True)
    assert_agrees("em advantages", ours_adv, ref_adv)
    assert_agrees("em returns", ours_ret, ref_ret)


@pytest.mark.parametrize("seed", SEEDS)
def test_em_advantage_one_response_per_prompt_matches_reference(ref, seed):
    """Convention (docs/algorithm.md, "Where tempo-pl differs"): ``em`` with a group of one row. The reference makes the row its own baseline
    (advantage 0); GRPO's convention passes the score through."""
    b = make_batch(seed, [1, 1, 1, 1, 1, 1, 3, 4])
    ours_adv, _ = tempo_advantage("em", b)
    ref_adv, _ = ref.advantage("em")(
        vpreds=b.values, token_level_rewards=b.token_level_rewards, response_mask=b.mask, index=b.uid,
        is_labeled=b.is_labeled.to(DTYPE).unsqueeze(1), norm_adv_by_std_in_grpo=True)
    assert_agrees("em advantages with groups of one", ours_adv, ref_adv)


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_advantage_matches_reference(ref, seed, norm_by_std):
    """Groups of one included (both pass the score through), with and without the std normalisation."""
    b = make_batch(seed, [1, 2, 3, 4, 8, 1])
    b.outcomes = b.verifier  # critic-free: every row's verifier score
    ours, ours_ret = tempo_advantage("grpo", b, grpo_norm_by_std=norm_by_std)
    theirs, theirs_ret = ref.advantage("grpo")(
        token_level_rewards=b.token_level_rewards, response_mask=b.mask, index=b.uid,
        norm_adv_by_std_in_grpo=norm_by_std)
    assert_agrees("grpo advantages", ours, theirs)
    assert_agrees("grpo returns", ours_ret, theirs_ret)


def _rloo_pair(ref, b: Batch):
    b.token_level_rewards = b.token_level_rewards * torch.rand(b.n, 1, generator=b.gen, dtype=DTYPE)  # non-binary
    b.outcomes = b.token_level_rewards.sum(-1)
    ours, _ = tempo_advantage("rloo", b)
    theirs, _ = ref.advantage("rloo")(token_level_rewards=b.token_level_rewards, response_mask=b.mask, index=b.uid,
                                      config=None)
    return ours, theirs


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_advantage_matches_reference(ref, seed):
    """Leave-one-out baseline on groups of two or more."""
    ours, theirs = _rloo_pair(ref, make_batch(seed, [2, 3, 4, 8]))
    assert_agrees("rloo advantages", ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_advantage_group_of_one_matches_reference(ref, seed):
    """Convention: ``rloo`` with a group of one row (the reference's registered ``rloo`` leaves the score as is;
    its ``rloo_vectorized`` and tempo-pl give 0)."""
    ours, theirs = _rloo_pair(ref, make_batch(seed, [1, 1, 2, 3, 1]))
    assert_agrees("rloo advantages with groups of one", ours, theirs)


@pytest.mark.parametrize("gamma, lam", [(1.0, 1.0), (0.99, 0.95)])
@pytest.mark.parametrize("seed", SEEDS)
def test_gae_advantage_and_returns_match_reference(ref, seed, gamma, lam):
    """GAE with the verifier score on the last token, whitened; compared on valid tokens (the reference leaves its
    whitened advantages and returns = values unmasked on padding)."""
    b = make_batch(seed, [2, 3, 4, 8], empty_rows=True)
    b.outcomes = b.verifier
    ours_adv, ours_ret = tempo_advantage("gae", b, gamma=gamma, lam=lam)
    ref_adv, ref_ret, _auroc = ref.advantage("gae")(
        token_level_rewards=b.token_level_rewards, values=b.values, response_mask=b.mask, gamma=gamma, lam=lam)
    assert_agrees("gae advantages", ours_adv, ref_adv, where=b.mask)
    assert_agrees("gae returns", ours_ret, ref_ret, where=b.mask)


# ------------------------------------------------------------------------------------ aggregation
@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_agg_loss_matches_reference(ref, seed, mode):
    """Every aggregation mode tempo-pl offers, on rows with at least one valid token (the reference's sequence
    means divide by zero on an empty row); token-mean also with empty rows."""
    b = make_batch(seed, [3, 4, 5], empty_rows=mode == "token-mean")
    loss_mat = torch.randn(b.n, b.width, generator=b.gen, dtype=DTYPE)
    assert_agrees(f"agg_loss {mode}", aggregate_loss(loss_mat, b.mask, mode), ref.agg_loss(loss_mat, b.mask, mode))


# ------------------------------------------------------------------------------------ policy losses
def _policy_inputs(b: Batch, spread: float, big_log_ratio: bool = False):
    gen = b.gen
    old = -torch.rand(b.n, b.width, generator=gen, dtype=DTYPE) * 3
    # a per-row drift of about `spread` (some rows inside the clip range, some outside) plus token noise
    drift = (torch.rand(b.n, 1, generator=gen, dtype=DTYPE) * 2 - 1) * spread
    logp = old + drift + torch.randn(b.n, b.width, generator=gen, dtype=DTYPE) * spread * 0.5
    if big_log_ratio:
        logp[0] = old[0] + 12.0  # beyond the log-ratio clamp at 10
    adv = torch.randn(b.n, b.width, generator=gen, dtype=DTYPE) * b.mask
    return logp.requires_grad_(), old, adv


def _compare_policy_loss(ref, ours_name: str, ref_name: str, b: Batch, logp, old, adv, config: AlgorithmConfig):
    ours_loss, ours_m = policy_loss_fn(ours_name).fn(logp, old, adv, b.mask, config)
    (ours_grad,) = torch.autograd.grad(ours_loss, logp)
    ref_config = ReferenceActorConfig(config.clip_low, config.clip_high)
    ref_loss, ref_clipfrac, ref_kl, _ = ref.policy_loss(ref_name)(
        old_log_prob=old, log_prob=logp, advantages=adv, response_mask=b.mask, loss_agg_mode=config.loss_agg_mode,
        config=ref_config)
    (ref_grad,) = torch.autograd.grad(ref_loss, logp)
    assert_agrees(f"{ours_name} loss", ours_loss, ref_loss)
    assert_agrees(f"{ours_name} gradient w.r.t. log-probs", ours_grad, ref_grad)
    assert_agrees(f"{ours_name} clipfrac", ours_m["clipfrac"], ref_clipfrac)
    assert_agrees(f"{ours_name} approx_kl", ours_m["approx_kl"], ref_kl)
    return ours_m["clipfrac"]


@pytest.mark.parametrize("clip_low, clip_high, spread", [(3e-4, 5e-4, 1e-3), (0.2, 0.28, 0.5)])
@pytest.mark.parametrize("seed", SEEDS)
def test_gspo_loss_clipfrac_and_gradients_match_reference(ref, seed, clip_low, clip_high, spread):
    """GSPO as the actor calls it: the reference scripts' clip range 3e-4 / 5e-4 and a wider one, one row beyond the
    log-ratio clamp."""
    b = make_batch(seed, [2, 3, 4, 8])
    logp, old, adv = _policy_inputs(b, spread, big_log_ratio=True)
    config = AlgorithmConfig(policy_loss="gspo", clip_low=clip_low, clip_high=clip_high)
    clipfrac = _compare_policy_loss(ref, "gspo", "gspo", b, logp, old, adv, config)
    assert 0 < clipfrac < 1  # both branches of the clip are exercised


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_ppo_loss_matches_reference_vanilla_inside_the_dual_clip_bound(ref, seed, mode):
    """tempo-pl's ``ppo`` against the reference's ``vanilla`` loss, with ratios below its dual-clip bound (3)."""
    b = make_batch(seed, [2, 3, 4, 8])
    logp, old, adv = _policy_inputs(b, 0.3)
    config = AlgorithmConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.28, loss_agg_mode=mode)
    assert float((logp.detach() - old).max()) < math.log(3.0)
    _compare_policy_loss(ref, "ppo", "vanilla", b, logp, old, adv, config)


@pytest.mark.parametrize("seed", SEEDS)
def test_ppo_loss_dual_clip_matches_reference(ref, seed):
    """Convention: the reference's ``vanilla`` PPO bounds the loss of a negative-advantage token at -A * 3 (dual
    clip, ``clip_ratio_c``); tempo-pl's ``ppo`` has no such bound."""
    b = make_batch(seed, [2, 3, 4, 8])
    logp, old, adv = _policy_inputs(b, 3.0)
    config = AlgorithmConfig(policy_loss="ppo", clip_low=0.2, clip_high=0.28, loss_agg_mode="token-mean")
    beyond_bound = (logp.detach() - old > math.log(3.0)) & (adv < 0) & (b.mask != 0)
    assert beyond_bound.any()  # the bound is exercised
    _compare_policy_loss(ref, "ppo", "vanilla", b, logp, old, adv, config)


# ------------------------------------------------------------------------------------ value loss
def _value_inputs(b: Batch, all_unlabeled: bool = False):
    gen = b.gen
    if all_unlabeled:
        b.is_labeled = torch.zeros(b.n, dtype=torch.bool)
    old_values = b.values
    # a per-row drift around the clip range 0.1 (some rows clipped, some not) plus token noise
    drift = (torch.rand(b.n, 1, generator=gen, dtype=DTYPE) * 2 - 1) * 0.25
    vpreds = (old_values + drift + torch.randn(b.n, b.width, generator=gen, dtype=DTYPE) * 0.05).requires_grad_()
    returns = torch.where(b.is_labeled, b.verifier, 0.0).unsqueeze(-1) * b.mask  # em_token's targets
    return vpreds, old_values, returns


def _value_loss_pair(ref, b: Batch, vpreds, old_values, returns, mode: str):
    """tempo-pl as ``TempoModule.update_critic`` calls it, the reference as ``dp_critic.update_critic`` with
    ``self_critic=True``."""
    alg = AlgorithmConfig(policy_loss="gspo" if mode == "seq-mean-token-mean" else "ppo", loss_agg_mode=mode)
    labeled_mask = b.mask * b.is_labeled.to(DTYPE).unsqueeze(-1)
    ours_loss, ours_m = value_loss(vpreds, old_values, returns, labeled_mask, alg.cliprange_value,
                                   clip_mode=alg.value_clip_mode, agg_mode=alg.loss_agg_mode)
    ref_loss, ref_clipfrac = ref.compute_value_loss(
        vpreds=vpreds, values=old_values, returns=returns, is_labeled=b.is_labeled.to(DTYPE).unsqueeze(1),
        response_mask=b.mask, cliprange_value=0.1, loss_agg_mode=mode)
    return ours_loss, ours_m["vf_clipfrac"], ref_loss, ref_clipfrac


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_value_loss_and_gradients_match_reference(ref, seed, mode):
    """The critic's sequence-mean clipped loss on labeled rows (unlabeled rows, some of them empty, carry no loss)."""
    b = make_batch(seed, [2, 3, 4, 8], empty_rows=True)
    if mode != "token-mean":  # the reference's sequence means divide by zero on an empty labeled row
        b.is_labeled = b.is_labeled & (b.lengths > 0)
    vpreds, old_values, returns = _value_inputs(b)
    ours_loss, _, ref_loss, _ = _value_loss_pair(ref, b, vpreds, old_values, returns, mode)
    (ours_grad,) = torch.autograd.grad(ours_loss, vpreds)
    (ref_grad,) = torch.autograd.grad(ref_loss, vpreds)
    assert_agrees(f"value loss ({mode})", ours_loss, ref_loss)
    assert_agrees(f"value loss gradient ({mode})", ours_grad, ref_grad)


def test_value_loss_without_labeled_rows_matches_reference(ref):
    b = make_batch(0, [2, 3, 4])
    vpreds, old_values, returns = _value_inputs(b, all_unlabeled=True)
    ours_loss, ours_clipfrac, ref_loss, ref_clipfrac = _value_loss_pair(ref, b, vpreds, old_values, returns,
                                                                         "seq-mean-token-mean")
    assert_agrees("value loss without labeled rows", ours_loss, ref_loss)
    assert_agrees("value clipfrac without labeled rows", ours_clipfrac, ref_clipfrac)
    (grad,) = torch.autograd.grad(ours_loss, vpreds)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("seed", SEEDS)
def test_value_clipfrac_matches_reference_token_weighting(ref, seed):
    """Convention (docs/algorithm.md, "Where tempo-pl differs"): ``value/clipfrac`` as the reference logs it is the fraction of labeled valid
    TOKENS in clipped rows (a clipped row of 3 tokens counts three times a row of 1), not the fraction of rows."""
    b = make_batch(seed, [2, 3, 4, 8])
    b.is_labeled[:] = True
    vpreds, old_values, returns = _value_inputs(b)
    _, ours_clipfrac, _, ref_clipfrac = _value_loss_pair(ref, b, vpreds, old_values, returns, "seq-mean-token-mean")
    assert 0 < float(ref_clipfrac) < 1
    assert_agrees("value clipfrac", ours_clipfrac, ref_clipfrac)
