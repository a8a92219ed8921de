"""The stages of one RL step that :class:`~tempo_pl.module.TempoModule` runs in sequence, each a plain function
tested on its own: collection (generate, filter, refill), the no-grad forward pass, scoring, mini-batch optimization,
and the step's metrics (``docs/algorithm.md``, "One RL step")."""
