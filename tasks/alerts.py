"""Delivering an alert (`common.alerts`): its own task, so a webhook that is slow, down or
failing never blocks or fails a run, and an alert survives the death of the process that
noticed the run's end (acks_late: a worker that dies delivering it leaves it to another).

Connection errors, timeouts, 5xx, 408 and 429 are retried with exponential backoff and
jitter, `VECTOR_ALERT_RETRIES` times; any other answer is final.
"""

from __future__ import annotations

import logging

from common.alerts import AlertBody, post, retry_delay
from common.config import load_alert_settings
from common.exceptions import AlertDeliveryError
from tasks import names
from tasks.app import app

log = logging.getLogger(__name__)


@app.task(name=names.SEND_ALERT, bind=True, max_retries=None, throws=(AlertDeliveryError,))
def send_alert(self, body: AlertBody) -> dict:
    """POST `body` to the worker's `VECTOR_ALERT_WEBHOOK`; nothing when it is unset."""
    config = load_alert_settings()
    event = body.get("event")
    if config.webhook is None:
        return {"event": event, "sent": False}
    try:
        status = post(config, body)
    except AlertDeliveryError as exc:
        attempt = self.request.retries
        if exc.transient and attempt < config.retries:
            log.info("%s alert: %s; trying again (%d of %d)", event, exc, attempt + 1, config.retries)
            delay = retry_delay(attempt, config)
            raise self.retry(countdown=delay, exc=exc, max_retries=config.retries) from None
        log.warning("%s alert not delivered after %d tries: %s", event, attempt + 1, exc)
        raise
    return {"event": event, "sent": True, "status": status}
