"""Run bookkeeping: run folders, RNG state, logging at the RL step, export of checkpoints."""
