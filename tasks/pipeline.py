"""What the pipeline imports: enqueue the vector chain once per pipeline task, follow,
cancel and list runs. The code lives in `tasks/client/`; this module keeps the documented
`from tasks.pipeline import ...` working."""

from common.output import NOT_RUN, stopped_message
from tasks.client.enqueue import (
    KEEPS_CLAIM,
    EnqueueResult,
    claim_key,
    enqueue_vector_management,
    reserve_timestamp,
    run_key,
    stamp_key,
)
from tasks.client.polling import wait_for_run
from tasks.client.runs import cancel_run, recent_runs, run_record, run_result, run_status

__all__ = [
    "KEEPS_CLAIM",
    "NOT_RUN",
    "EnqueueResult",
    "cancel_run",
    "claim_key",
    "enqueue_vector_management",
    "recent_runs",
    "reserve_timestamp",
    "run_key",
    "run_record",
    "run_result",
    "run_status",
    "stamp_key",
    "stopped_message",
    "wait_for_run",
]
