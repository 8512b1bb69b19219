"""Celery tasks: thin wrappers that wire the `common` engine to the broker."""
