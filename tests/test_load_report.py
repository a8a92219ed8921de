"""A critic started from a causal LM: transformers' LOAD REPORT table becomes one line that says it is expected; any
other missing or unexpected weight keeps the full report."""

from __future__ import annotations

import logging

from tempo_pl.models.load_report import TRANSFORMERS_LOGGER, held_load_report


def test_a_critic_from_a_policy_folder_logs_one_line(tmp_path, tiny_policy_spec, tiny_tokenizer, caplog):
    from tempo_pl.models.builders import CriticSpec, build_critic, build_policy

    build_policy(tiny_policy_spec).save_pretrained(tmp_path / "policy")
    tiny_tokenizer.save_pretrained(tmp_path / "policy")
    transformers_logger = logging.getLogger(TRANSFORMERS_LOGGER)
    transformers_logger.addHandler(caplog.handler)  # transformers' loggers do not propagate to the root
    try:
        with caplog.at_level(logging.INFO):
            build_critic(CriticSpec(name_or_path=str(tmp_path / "policy")))
    finally:
        transformers_logger.removeHandler(caplog.handler)
    messages = [r.getMessage() for r in caplog.records if "LOAD REPORT" in r.getMessage() or "critic from" in r.getMessage()]
    assert messages == [f"critic from {tmp_path / 'policy'}: value head score.bias, score.weight newly initialised and "
                        "lm_head.weight unused, as expected when a critic starts from a causal LM"]


def test_any_other_missing_weight_keeps_the_full_report():
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger(TRANSFORMERS_LOGGER)
    logger.addHandler(handler)
    try:
        with held_load_report() as held:
            logger.warning("Qwen3ForTokenClassification LOAD REPORT from: x\n| table |")
            logger.warning("another warning")
            assert seen == ["another warning"]  # the report is held back while loading, nothing else
        held.settle({"missing_keys": ["score.weight", "model.norm.weight"], "unexpected_keys": []}, "x", head="score")
    finally:
        logger.removeHandler(handler)
    assert seen == ["another warning", "Qwen3ForTokenClassification LOAD REPORT from: x\n| table |"]
    assert held not in logger.filters
