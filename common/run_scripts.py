"""The Lua scripts of `common.run_state`: every transition of a run's record is one
script, so two observers never both win one.

The scripts that judge a run (`judging(...)`) also answer which end they recorded, if
any: only the one observer whose script ended the run learns it, so a run's end is
announced (an alert) once, whoever saw it.
"""

# KEYS[1] state hash, KEYS[2] task hash. ARGV[1] beat key prefix, ARGV[2] now, ARGV[3]
# reason, ARGV[4] '1' if a run may be judged now, ARGV[5] truncate deadline, ARGV[6] keep
# seconds, ARGV[7] liveness window; ARGV[8..] are each script's own.
JUDGE = """
-- The end this script recorded, if any: the script answers it beside its own answer.
local ended = false
-- A run that ends frees its database lock, if it still holds it.
local function end_run(state, reason)
  ended = state
  redis.call('HSET', KEYS[1], 'state', state, 'reason', reason, 'finished_at', ARGV[2])
  local lock = redis.call('HGET', KEYS[1], 'lock')
  if lock and redis.call('GET', lock) == redis.call('HGET', KEYS[1], 'run_id') then
    redis.call('DEL', lock)
  end
end
-- Running tasks none of which beats: the run lost its workers. No task for longer than
-- the truncate deadline: it was lost before or between its steps, and can never finish.
local function judge()
  local state = redis.call('HGET', KEYS[1], 'state')
  if ARGV[4] ~= '1' or (state ~= 'queued' and state ~= 'running') then return state end
  local tasks = redis.call('HGETALL', KEYS[2])
  local running = 0
  for i = 1, #tasks, 2 do
    if tasks[i + 1] == 'running' then
      running = running + 1
      if redis.call('EXISTS', ARGV[1] .. tasks[i]) == 1 then return state end
    end
  end
  if running > 0 then
    end_run('abandoned', ARGV[3])
    return 'abandoned'
  end
  local last = redis.call('HGET', KEYS[1], 'heartbeat_at') or redis.call('HGET', KEYS[1], 'requested_at')
  if tonumber(ARGV[2]) - tonumber(last or ARGV[2]) > tonumber(ARGV[5]) then
    end_run('abandoned', 'no task of it ran for longer than VECTOR_TRUNCATE_DEADLINE')
    return 'abandoned'
  end
  return state
end
"""
# ARGV[8] task id.
BEGIN = """
local state = judge()
if not state then return 'missing' end
if state ~= 'queued' and state ~= 'running' then return state end
redis.call('HSET', KEYS[1], 'state', 'running', 'heartbeat_at', ARGV[2])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[8], 'running')
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('SET', ARGV[1] .. ARGV[8], 1, 'EX', ARGV[7])
return 'running'
"""
# ARGV[8] task id. Only a task of a live run beats.
BEAT = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' and redis.call('HGET', KEYS[2], ARGV[8]) == 'running' then
  redis.call('SET', ARGV[1] .. ARGV[8], 1, 'EX', ARGV[7])
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[2])
end
return state
"""
# ARGV[8] task id. Its end counts as the run's last sign of life.
END = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[2]) end
redis.call('HSET', KEYS[2], ARGV[8], 'done')
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('DEL', ARGV[1] .. ARGV[8])
return state
"""
# ARGV[8] the new state, ARGV[9..] the states it may follow.
FINISH = """
local state = judge()
for i = 9, #ARGV do
  if state == ARGV[i] then
    end_run(ARGV[8], ARGV[3])
    return 'ok'
  end
end
return state or 'missing'
"""
# Once truncating, a run can no longer be cancelled: the TRUNCATE is one short transaction.
CANCEL = """
local state = judge()
if state ~= 'queued' and state ~= 'running' then return state or 'missing' end
if redis.call('HGET', KEYS[1], 'truncating') == '1' then return 'truncating' end
end_run('cancelled', ARGV[3])
return 'ok'
"""
JUST_JUDGE = "return judge()"
TRUNCATING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'running' then redis.call('HSET', KEYS[1], 'truncating', '1') end
return state or 'missing'
"""


def judging(body: str) -> str:
    """`body` (BEGIN, FINISH, CANCEL, JUST_JUDGE) after JUDGE, as one script answering
    {body's answer, the end it recorded or nil}."""
    return JUDGE + "local function body()\n" + body + "\nend\nreturn {body() or false, ended}\n"


# KEYS[1] the claim. ARGV[1] the run it must still name, ARGV[2] the new run, ARGV[3] ttl.
SWAP_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""
