"""What a stage says to the person at the terminal: its one-line summary, and nothing else at INFO.

A flow calls `say(line)`: the line goes to the Prefect run log (the UI keeps it with every other
record) marked as a stage line. The `t2v` command quiets Prefect's console handler to warnings and
calls `show_stage_lines()`, so the terminal gets the progress bars, the stage lines, task retries
and warnings, while per-task INFO records (one per rendered shard, checkpoint, registration) stay in
the Prefect and MLflow logs. A served deployment or a Prefect worker keeps Prefect's own console.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from prefect import get_run_logger

STAGE_LINE = "t2v_stage_line"  # LogRecord attribute that marks a stage's summary line
RETRY_PREFIX = "Task run failed with"  # Prefect's INFO record when a task fails and will be retried


def say(line: str) -> None:
    """Log a line meant for the terminal as well as the run log (a stage summary or a notice)."""
    get_run_logger().info(line, extra={STAGE_LINE: True})


class StageLines(logging.Filter):
    """INFO records a quiet console still shows: stage lines and Prefect's retry notices (warnings and
    errors reach the terminal through Prefect's own console handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return False
        return bool(getattr(record, STAGE_LINE, False)) or record.getMessage().startswith(RETRY_PREFIX)


def show_stage_lines(stream: TextIO | None = None) -> None:
    """Print stage lines and retries of flow and task runs to `stream` (stderr), plainly; once per process.

    Attached to Prefect's run loggers after Prefect has set up logging (importing this module does),
    so Prefect's later, incremental setups keep it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(StageLines())
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # siblings: a record reaches one of them, never both
        logger = logging.getLogger(name)
        if not any(isinstance(f, StageLines) for h in logger.handlers for f in h.filters):
            logger.addHandler(handler)
