"""transformers' LOAD REPORT when a critic starts from a causal LM: expected, so one line instead of a table.

A critic loaded from a policy folder has no value head (``score.*`` missing, newly initialised) and does not use the
LM head (``lm_head.*`` unexpected): transformers logs that as a warning table that looks like a failure. While a
critic loads, :func:`held_load_report` holds the report back; :meth:`HeldReport.settle` then logs one line when those
are its only entries, and the report as transformers wrote it when anything else is missing or unexpected.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Sequence

log = logging.getLogger(__name__)

TRANSFORMERS_LOGGER = "transformers.modeling_utils"


class HeldReport(logging.Filter):
    """Holds the LOAD REPORT records of one ``from_pretrained`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if "LOAD REPORT" in record.getMessage():
            self.records.append(record)
            return False
        return True

    def settle(self, info: dict, path: str, head: str, unused: Sequence[str] = ("lm_head",)) -> None:
        """One line when only the ``head`` is missing and only ``unused`` modules are unexpected; else the held
        report, logged as transformers wrote it."""
        missing = list(info.get("missing_keys") or [])
        unexpected = list(info.get("unexpected_keys") or [])
        mismatched = list(info.get("mismatched_keys") or [])
        expected = (all(k.split(".")[0] == head for k in missing)
                    and all(k.split(".")[0] in unused for k in unexpected) and not mismatched)
        if expected and missing:
            log.warning("critic from %s: value head %s newly initialised and %s unused, as expected when a critic "
                        "starts from a causal LM", path, ", ".join(sorted(missing)),
                        ", ".join(sorted(unexpected)) or "nothing")
            return
        for record in self.records:
            logging.getLogger(record.name).handle(record)


@contextlib.contextmanager
def held_load_report() -> Iterator[HeldReport]:
    """Holds transformers' LOAD REPORT back while the block runs; call ``settle`` on what it yields."""
    held = HeldReport()
    logger = logging.getLogger(TRANSFORMERS_LOGGER)
    logger.addFilter(held)
    try:
        yield held
    finally:
        logger.removeFilter(held)
