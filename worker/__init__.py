"""Processes we run: the Celery app (`worker.app`), the CLI, the HTTP API and the demo."""

from worker.celery_app import app

__all__ = ["app"]
