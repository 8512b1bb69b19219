"""The Celery application, at the bottom of the task side: it imports no task module (a
worker loads them from `include` in celeryconfig), so task definitions and the clients
that send runs both import it and neither imports the other.

Task modules declare with `@app.task` on this app rather than `@shared_task`: a shared
task resolves the thread's current app, and a thread that never set one (a request
thread of the API) would fall back to Celery's default app and its amqp broker.

Every process that may see a run end (a worker, the API, the CLI, the pipeline) loads
this module, so this is where alerts get their sender: the `vector.send_alert` task, sent
by name.
"""

from celery import Celery

from common import alerts
from tasks import names

app = Celery("pgvector_backup")
app.config_from_object("celeryconfig")

# Publishing waits at most about a second for the broker: an alert never holds up the
# task or the client that noticed the run's end (a lost one is logged).
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.4, "interval_max": 0.6}


def _send_alert(body: alerts.AlertBody) -> None:
    app.send_task(names.SEND_ALERT, args=(body,), retry=True, retry_policy=_PUBLISH_RETRY)


alerts.use_sender(_send_alert)
