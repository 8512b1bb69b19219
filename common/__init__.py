"""Engine for backing up, emptying and restoring a LangChain PGVector store.

Nothing in this package imports Celery: every function here runs against a bare
PostgreSQL connection and a directory, so it can be tested and reused directly.
"""
