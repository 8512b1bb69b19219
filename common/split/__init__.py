"""Range-split backup: one table copied by several processes under one snapshot, into one file.

A single COPY is bound by the one server backend formatting the rows, so the way past
`psql \\copy` is several backends at once. Each of a table's chord header tasks calls
`SplitJob.run` (`job.py`); the roles are decided at run time, so a pool of any size finishes:

- the first task to arrive becomes the holder: it exports its REPEATABLE READ snapshot
  (`pg_export_snapshot`, as `pg_dump -j` does), writes the file's header to the table's
  temp file, splits the table into block ranges (`ctid`, 16 per worker) and copies
  every range nobody has claimed yet;
- a task arriving while the holder's transaction is open imports the snapshot
  (`SET TRANSACTION SNAPSHOT`) and claims ranges too.

Every copier appends its ranges to the one file itself (`common.shared_file`): rows in
whole blocks, ranges in the order they finish, one sha256 read behind the writers. Where
appends are not atomic (a network filesystem) or the file is compressed (one stream
through one compressor), helpers write part files instead, which the holder appends in
range order, and the holder, which then has time to spare, runs a helper thread too.
Every range arrives without the header and trailer its COPY wraps it in (the format's
`range_header` and `trailer`, cut by `common.copier.copy_range`); the holder writes the
format's trailer once, after the last range, so the file reads as one COPY's output.

Nobody waits for a task that has not started: the holder copies what is unclaimed
itself, so with one pool process it simply does the whole table. The holder waits only
for ranges that running helpers claimed. A helper's error fails the table. A helper
that stops beating is presumed dead: a part file it left is never read and the holder
copies its range again; blocks it may have appended cannot be told apart, so the holder
drops the file and starts over alone. A holder that dies is replaced: its redelivered
task (or, once its heartbeat expires, any other task of the table) starts a new attempt
from scratch. The coordination lives in Redis keys of the run, like the run lock.

The pieces: `board.py` (the Redis keys), `plan.py` (the typed plan and the ranges),
`holder.py` (the holder's copier, which `common.backup.backup_table` drives like the
single-stream one), `helper.py` (claiming and copying ranges), `job.py` (the roles).
"""

from common.split.board import SplitBoard
from common.split.job import SplitJob, merge_parts
from common.split.plan import SplitPlan, holder_chunks, remove_parts

__all__ = ["SplitBoard", "SplitJob", "SplitPlan", "holder_chunks", "merge_parts", "remove_parts"]
