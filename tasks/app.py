"""The Celery application, at the bottom of the task side: it imports no task module (a
worker loads them from `include` in celeryconfig), so task definitions and the clients
that send runs both import it and neither imports the other.

Task modules declare with `@app.task` on this app rather than `@shared_task`: a shared
task resolves the thread's current app, and a thread that never set one (a request
thread of the API) would fall back to Celery's default app and its amqp broker.
"""

from celery import Celery

app = Celery("pgvector_backup")
app.config_from_object("celeryconfig")
