"""The Celery application: `celery -A worker worker -l info -E` finds it as `worker.app`."""

from celery import Celery

app = Celery("pgvector_backup")
app.config_from_object("celeryconfig")
