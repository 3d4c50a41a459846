"""The Lua scripts the Redis backplane runs, and why their epochs make lost writes visible.

Keys, per channel C: a hash `{prefix}:{C}:h` holding the history's epoch `e`, its last
sequence number `s` and `r`, the identity of the Redis dataset lineage that last wrote the
hash; and a capped stream `{prefix}:{C}:x`, the history (entry `<seq>-0`, fields `d` data,
`t` time).

An id `<epoch>-<seq>` must never name two messages. Within one Redis process that holds by
construction: the script increments `s` and appends under it atomically. It breaks when the
dataset goes back in time, and Redis gives no sign of it in the data itself: a restart from
an RDB or AOF file older than the last acknowledged writes, or a failover to a replica that
had not received them (replication is asynchronous), leaves `s` behind what clients were
given, and the next publishes would reuse their ids.

The rule: a channel's epoch is valid only in the lineage that wrote it, named by the live
server's `run_id` and `master_replid` (INFO server, replication). Every script first reads
both and compares them with `r`; if they differ, or the hash is gone (a restart without
persistence, an expiry, FLUSHALL), it starts a new epoch: the stream is dropped, `s` starts
again from 0, `r` becomes the live identity. Why this is enough:

- `run_id` is random per process start and kept nowhere on disk: no RDB, AOF or replication
  stream can bring an old one back, so after a restart no loaded hash matches. A replica's
  copy of `r` names its primary (writes reach replicas as effects, `r` included), never the
  replica itself, so a promoted replica starts new epochs too.
- `master_replid` is new each time a server becomes a primary (a promotion) and is replaced
  by its primary's while it is a replica. It catches the one case `run_id` alone misses: a
  process that wrote a channel, became a replica and received an older copy of that very
  hash (still naming it), then was promoted again.
- The check and the write are one script: atomic, on the server that runs it. Nothing is
  cached by a node, so a transparent reconnect (redis-py's, or Sentinel's switch to a new
  primary) cannot make a node write under an identity it learnt from a previous server.
- It is conservative: a clean restart or a failover that lost nothing also starts new
  epochs, so resuming clients get a reset they did not strictly need. A reset is explicit;
  a reused id is a silent gap.

The check costs about 10 µs per script call on Redis 7.0 (INFO itself about 6 µs, plain
`string.find` rather than patterns for the rest), against about 20 µs for the publish script
without it: commandstats, the best of six runs of 10,000 publishes on a shared 2-core
machine. One INFO per pipeline instead of per call would need a script publishing many
channels at once; not done. Redis replicates a script's effects, not the script (the default
since 5.0), so a write after INFO is allowed. Redis before 7.0 takes one INFO section per
call: 7.0 is the oldest Redis these scripts run on.
"""

from __future__ import annotations

__all__ = ["PUBLISH", "SNAPSHOT"]

# Both scripts start here. KEYS: hash, stream. ARGV[1]: a candidate epoch, ARGV[2]: ttl
# seconds (0: keep). After it, `epoch` is valid in the live server's lineage.
_EPOCH = """
local info = redis.call('INFO', 'server', 'replication')
local at, from = string.find(info, 'run_id:', 1, true), string.find(info, 'master_replid:', 1, true)
local run = string.sub(info, at + 7, at + 46) .. ':' .. string.sub(info, from + 14, from + 53)
local held = redis.call('HMGET', KEYS[1], 'e', 'r')
local epoch = held[1]
if not epoch or held[2] ~= run then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 's', 0, 'r', run)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
"""

# ARGV[3..6]: data, timestamp, history size, pub/sub channel. Numbers the message, appends it
# and PUBLISHes `"<epoch> <seq> <ts> <data>"`. Returns the epoch and seq.
PUBLISH = (
    _EPOCH
    + """
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'd', ARGV[3], 't', ARGV[4])
redis.call('PUBLISH', ARGV[6], epoch .. ' ' .. seq .. ' ' .. ARGV[4] .. ' ' .. ARGV[3])
return {epoch, seq}
"""
)

# ARGV[3]: history size. Returns the epoch, the head seq and the newest entries, newest
# first: one consistent snapshot.
SNAPSHOT = (
    _EPOCH
    + """
local seq = redis.call('HGET', KEYS[1], 's')
return {epoch, seq, redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])}
"""
)
