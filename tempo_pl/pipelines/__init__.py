"""Pipelines of several ``tempo-pl fit`` runs (``tempo-pl demo``, ``tempo-pl compare``).

They drive the core through its command line and read back its TensorBoard logs; the core (module, algorithms,
rewards, data) never imports them, so a training run pays nothing for the orchestration.
"""
