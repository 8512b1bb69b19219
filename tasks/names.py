"""Every task's name, in one place: clients send by name, so they never import a task
definition, and a task's name is the one thing both sides must agree on."""

BACKUP_TABLE = "vector.backup_table"
BACKUP_SET = "vector.backup_vector_tables"
TRUNCATE = "vector.truncate_vector_tables"
DISCARD_RUN = "vector.discard_run"
VERIFY_SET = "vector.verify_backup_set"
RESTORE_SET = "vector.restore_backup_set"
NIGHTLY_BACKUP = "vector.nightly_backup"
APPLY_RETENTION = "vector.apply_retention"
RESTORE_DRILL = "vector.restore_drill"
SEND_ALERT = "vector.send_alert"
