"""Rollout engines: the transformers ``generate`` engine, vLLM in-process and as a server, the policy's weights as vLLM
loads them, and prompt rendering."""
