"""Processes we run: the Celery app (`worker.app`), the demo, and (later) the CLI and API."""

from worker.celery_app import app

__all__ = ["app"]
