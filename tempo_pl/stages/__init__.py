"""The stages of one RL step that :class:`~tempo_pl.module.TempoModule` runs in sequence, each a plain function
tested on its own: the step's route, collection (generate, filter, refill; one step ahead with
``training.rollout_ahead``), the no-grad forward pass, scoring, mini-batch optimization, the updates' losses and the
step's metrics (``docs/algorithm.md``, "One RL step")."""
