"""Reward sources: ground truth (Verifier), TEMPO's critic value, the label-free TTRL / EMPO / Intuitor baselines
and any TRL-style reward function (FunctionReward), plus the pseudo-label metrics that measure how far a label-free
reward is from the truth."""

from tempo_pl.rewards.base import RewardOutput, RewardSource
from tempo_pl.rewards.critic import CriticValue
from tempo_pl.rewards.function_reward import FunctionReward
from tempo_pl.rewards.graders import Grader, Verdict, build_grader, grader_names, register_grader
from tempo_pl.rewards.multiple_choice import MultipleChoiceGrader
from tempo_pl.rewards.physics import PhysicsGrader
from tempo_pl.rewards.self_rewards import MajorityVote, SelfCertainty, SemanticCluster
from tempo_pl.rewards.pseudo_labels import pseudo_label_metrics
from tempo_pl.rewards.verifier import Verifier

__all__ = [
    "CriticValue",
    "FunctionReward",
    "Grader",
    "MultipleChoiceGrader",
    "PhysicsGrader",
    "Verdict",
    "build_grader",
    "grader_names",
    "register_grader",
    "MajorityVote",
    "RewardOutput",
    "RewardSource",
    "SelfCertainty",
    "SemanticCluster",
    "Verifier",
    "pseudo_label_metrics",
]
