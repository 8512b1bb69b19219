"""The Redis keys through which one table's range-split tasks share its backup."""

from __future__ import annotations

import json
import uuid
from typing import Any

import redis

from common import run_keys
from common.periodic import Periodic
from common.split.plan import SplitPlan

KEY_TTL_S = 24 * 3600  # outlives any run; the keys hold no secret
BEAT_TTL_S = 15.0
BEAT_EVERY_S = 3.0

# One script, so the holder never sees a claimed range without its heartbeat.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('SET', KEYS[2], 1, 'EX', ARGV[3])
    return 1
end
return 0
"""


class Heartbeat:
    """Keeps Redis keys alive from a thread while this process works."""

    def __init__(self, client: redis.Redis, *keys: str) -> None:
        self._client, self._keys = client, list(keys)
        self._beat()
        self._periodic = Periodic(self._beat, BEAT_EVERY_S, "split-heartbeat")

    def add(self, key: str) -> None:
        self._keys.append(key)
        self._beat()

    def _beat(self) -> None:
        try:
            with self._client.pipeline() as pipe:
                for key in self._keys:
                    pipe.set(key, 1, ex=int(BEAT_TTL_S))
                pipe.execute()
        except redis.RedisError:
            pass  # a missed beat only makes the others presume this process dead: safe

    def stop(self) -> None:
        self._periodic.stop()


class SplitBoard:
    """One table's coordination in a run: who holds it, the plan, claimed and finished
    ranges, and the table's settled result. `who` names this task."""

    def __init__(self, client: redis.Redis, run_id: str, table: str, who: str) -> None:
        self.client, self.who = client, who
        self.prefix = run_keys.split(run_id, table)
        self._claim = client.register_script(CLAIM)

    def key(self, *parts: Any) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    def elect(self) -> int | None:
        """A new attempt number if this task is now the holder, else None.

        The holder's key expires unless beaten; a redelivered holder finds its own name.
        """
        holder = self.key("holder")
        if not self.client.set(holder, self.who, nx=True, ex=int(BEAT_TTL_S)):
            current = self.client.get(holder)
            if current is None or current.decode() != self.who:
                return None
            self.client.set(holder, self.who, ex=int(BEAT_TTL_S))
        return self.new_attempt()

    def holding(self) -> Heartbeat:
        """Keeps this task the holder while it works."""
        return Heartbeat(self.client, self.key("holder"))

    def new_attempt(self) -> int:
        return int(self.client.incr(self.key("attempt")))

    def attempt(self) -> int:
        return int(self.client.get(self.key("attempt")) or 0)

    def publish(self, plan: SplitPlan) -> None:
        self.client.set(self.key("plan"), plan.to_json(), ex=KEY_TTL_S)

    def plan(self) -> SplitPlan | None:
        raw = self.client.get(self.key("plan"))
        return SplitPlan.from_json(raw) if raw else None

    def claim(self, attempt: int, chunk: int) -> bool:
        keys = [self.key(attempt, "claim", chunk), self.alive_key(attempt, chunk)]
        return bool(self._claim(keys=keys, args=[self.who, KEY_TTL_S, int(BEAT_TTL_S)]))

    def alive_key(self, attempt: int, chunk: int) -> str:
        return self.key(attempt, "alive", chunk)

    def alive(self, attempt: int, chunk: int) -> bool:
        return bool(self.client.exists(self.alive_key(attempt, chunk)))

    def close(self, attempt: int) -> None:
        """Every range is claimed: a task arriving now has nothing to do."""
        self.client.set(self.key(attempt, "closed"), 1, ex=KEY_TTL_S)

    def closed(self, attempt: int) -> bool:
        return bool(self.client.exists(self.key(attempt, "closed")))

    def finish(self, attempt: int, chunk: int, outcome: dict[str, Any]) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self.key(attempt, "done", chunk), json.dumps(outcome), ex=KEY_TTL_S)
            pipe.rpush(self.key(attempt, "finished"), chunk)
            pipe.expire(self.key(attempt, "finished"), KEY_TTL_S)
            pipe.delete(self.alive_key(attempt, chunk))
            pipe.execute()

    def wait_for_finish(self, attempt: int, timeout: float) -> None:
        """Until any chunk of the attempt finishes, or `timeout`: the holder's wake-up."""
        self.client.blpop([self.key(attempt, "finished")], timeout=timeout)

    def outcome(self, attempt: int, chunk: int) -> dict[str, Any] | None:
        raw = self.client.get(self.key(attempt, "done", chunk))
        return json.loads(raw) if raw else None

    def settle(self, result: dict[str, Any]) -> None:
        """The table's result, success or failure: every later task of the table returns."""
        self.client.set(self.key("result"), json.dumps({"holder": self.who, "result": result}), ex=KEY_TTL_S)

    def settled(self) -> dict[str, Any] | None:
        raw = self.client.get(self.key("result"))
        return json.loads(raw) if raw else None

    # Range-split on object storage (`common.split.parts`): each copier uploads its rows
    # as parts of the table's one multipart upload and says which, once, when it is done.

    def note_upload(self, attempt: int, upload_id: str) -> None:
        self.client.set(self.key(attempt, "upload"), upload_id, ex=KEY_TTL_S)

    def uploads(self) -> dict[int, str]:
        """Every attempt's multipart upload, by attempt."""
        found = {}
        for attempt in range(1, self.attempt() + 1):
            upload_id = self.client.get(self.key(attempt, "upload"))
            if upload_id:
                found[attempt] = upload_id.decode()
        return found

    def number_parts_from(self, attempt: int, first: int) -> None:
        """Part numbers handed out from here on follow `first` (the holder's first part)."""
        self.client.set(self.key(attempt, "parts"), first, ex=KEY_TTL_S)

    def next_part(self, attempt: int) -> int:
        return int(self.client.incr(self.key(attempt, "parts")))

    def join_stream(self, attempt: int) -> tuple[str, str]:
        """This task will upload parts: (its stream's name, the heartbeat key to keep). The
        holder waits for the stream's `end_stream`, or for its heartbeat to stop. Called
        before any range is claimed. The name is new each time: a redelivered task must
        never stand in for the stream its killed run left unfinished."""
        stream = f"{self.who}:{uuid.uuid4().hex[:12]}"
        alive = self.key(attempt, "stream-alive", stream)
        with self.client.pipeline() as pipe:
            pipe.set(alive, 1, ex=int(BEAT_TTL_S))
            pipe.sadd(self.key(attempt, "streams"), stream)
            pipe.expire(self.key(attempt, "streams"), KEY_TTL_S)
            pipe.execute()
        return stream, alive

    def end_stream(self, attempt: int, stream: str, record: dict[str, Any]) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self.key(attempt, "stream", stream), json.dumps(record), nx=True, ex=KEY_TTL_S)
            pipe.rpush(self.key(attempt, "finished"), f"stream:{stream}")
            pipe.expire(self.key(attempt, "finished"), KEY_TTL_S)
            pipe.delete(self.key(attempt, "stream-alive", stream))
            pipe.execute()

    def streams(self, attempt: int) -> list[str]:
        return sorted(m.decode() for m in self.client.smembers(self.key(attempt, "streams")))

    def stream(self, attempt: int, stream: str) -> dict[str, Any] | None:
        raw = self.client.get(self.key(attempt, "stream", stream))
        return json.loads(raw) if raw else None

    def stream_alive(self, attempt: int, stream: str) -> bool:
        return bool(self.client.exists(self.key(attempt, "stream-alive", stream)))
