"""Old module path of :class:`BaselineTelemetry`, kept while ``configs/tempo/frozen_critic.yaml`` still names
``tempo_pl.callbacks.telemetry.BaselineTelemetry``; new configs name ``tempo_pl.callbacks.BaselineTelemetry``.
Delete this file once no config uses the old path."""

from .baseline_telemetry import BaselineTelemetry, default_reward_threshold

__all__ = ["BaselineTelemetry", "default_reward_threshold"]
