"""Sessions and event streams in Redis, so that every replica of a deployment serves every session.

- A session's record (negotiated revision, client capabilities, principal, log level, subscriptions) is a Redis
  key that expires after the idle timeout; each replica keeps a local ``Session`` for what cannot travel
  (requests in flight, futures waiting for the client). Most requests cost no Redis command for it: the replica's
  copy serves while it is fresh, that is, Redis gave or took the whole record less than the slack ago (a second, or a
  tenth of the idle time if less) and the session bus has stayed subscribed since. Otherwise a ``GETEX`` reads the
  record and refreshes its TTL (``GET`` and ``EXPIRE``, pipelined, on a Redis older than 6.2): a busy session costs
  one command per slack, and its idle time keeps counting from its last request, give or take the slack. The record
  is written back only when the request changed it (``logging/setLevel``, ``resources/(un)subscribe``,
  ``notifications/initialized``), in one round trip with a ``changed`` message on the bus that the other replicas
  apply to their copies.
- Coherence window: a change or an end (DELETE) made on one replica reaches the copies of the others within the
  bus's delivery time (a request there in that window, milliseconds, may still see the session as it was). Pub/sub
  delivers at most once: when a replica's bus connection fails or subscribes again, every copy it holds stops being
  fresh, and until it is subscribed each request reads Redis. A read that overlapped a write or an end of any
  session is not fresh either (it may predate it). Whatever the bus does, no copy serves longer than the slack after
  Redis last gave or took its record. While Redis is known to be away, no copy serves: requests fail as below.
- A response or GET stream is a Redis stream: the replica running the request appends, and any replica can
  replay it from ``Last-Event-ID`` and follow it to its end, for the session that opened it only (each entry names
  the session by a digest of its id; a stream of another session is not found). A finished stream expires
  ``KEEP_FINISHED_SECONDS`` after its end, or at once when its session lets it go.
- A session's GET stream (standalone) outlives its connections. The replica that opened it writes it; the
  connection reading it, on any replica, holds a reader key (its token, refreshed every second and kept at least
  ``KEEP_FINISHED_SECONDS``) that tells the writer how long the stream has gone unread, and tells an earlier
  reader that a resume took over (it ends). Each refresh keeps the stream itself too (until its end), however long
  it goes without an event; on the replica writing it, a reader waits for its first event however long that takes
  (without a priming event, a new stream has no key in Redis until then). When the writer is gone, the replica a
  client resumes on adopts the stream: one script checks the writer's liveness and writes an entry naming the
  adopter (an entry of its own kind, no event: readers skip it), so only one does.
- What a client sends for a request running on another replica (its answer to a server request, a
  cancellation) goes to that replica over a pub/sub channel.

Redis may go away, and come back. Every command is bounded by the client's timeouts (the server makes the
client with ``ERLMCP_REDIS_TIMEOUT_SECONDS``); a background task checks Redis every second, which readiness
reports (one warning when Redis goes, one info when it is back). While Redis is known to be away, what needs
it fails at once with :class:`SessionStoreUnavailable` (the transport answers 503 with ``Retry-After``).
What a running request writes later (its events, the session record) is kept and written, in order, once
Redis answers again: a request that was running when Redis went away still finishes and can be resumed. The
bus listener subscribes again after an outage.

Each replica refreshes a liveness key; a reader following a stream whose writer's key has been gone for a while
(the replica was killed) ends its connection instead of waiting for events that will never come.

The per-client session quota (``max_sessions_per_owner``) is one Redis set per client of the ids of its
sessions (the client's name hashed into the key). One script creates a session: it checks the quota and adds
the id to the set together with the session's record, so two replicas cannot both take a client's last slot.
Ids whose record is gone (ended, or expired) are dropped from the set when it looks full; DELETE removes its
id at once. The set expires on its own some time after the last of its sessions (each replica keeps the sets
of the sessions it serves from expiring earlier); reading and writing a session cost nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from app.sessions.events import KEEP_FINISHED_SECONDS, MAX_FINISHED_STREAMS, Event, EventStream, note_gap
from app.sessions.memory import Session, SessionLimitError, SessionQuotaError
from app.sessions.store import SessionStoreUnavailable

__all__ = ["RedisEventStream", "RedisSessionStore"]

log = structlog.get_logger(__name__)

_CLOSED = b"-1"  # the sequence number of the end-of-stream marker
_UNAVAILABLE = "the session store is unavailable: Redis does not answer"
_FAILURES = (RedisError, OSError)  # what a command raises when Redis does not answer (OSError: TimeoutError too)
CHECK_SECONDS = 1.0  # how often each replica checks Redis and refreshes its liveness key
_LIVENESS_MS = 3000  # a replica's liveness key lasts this long after its last refresh
_WRITER_GONE_SECONDS = 2.0  # a reader gives up on a stream whose writer's key was missing this long
_READER_SECONDS = 1.0  # how often the reader of a standalone stream refreshes its key (and sees a takeover)
_STANDALONE = b"g"  # the kind (field ``k``) of a standalone stream's entries; a call's stream has none
_ADOPTION = b"a"  # the kind of the entry naming a standalone stream's adopter: no event (readers skip it)
_REFRESH_SLACK_SECONDS = 1.0  # a request that changed nothing refreshes the TTL (EXPIRE) when its last is older
_OVERLAPPED = -1  # the bus generation of a copy whose read overlapped a write: never fresh (see RedisSessionStore.get)

# A new session, counted against its owner's quota, in one atomic step. When the owner's set of session ids
# looks full, the ids whose record is gone (ended, or expired) leave it first; the record is written and the id
# joins only below the quota. Returns -1 when created, else how many live sessions the owner holds.
_CREATE_SCRIPT = """
-- KEYS[1]: the new session's record; KEYS[2]: the owner's set of session ids
-- ARGV: the record, its TTL (s), the session id, the quota, the set's TTL (s), the prefix of record keys
local quota = tonumber(ARGV[4])
if redis.call('SCARD', KEYS[2]) >= quota then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', ARGV[6] .. id) == 0 then
      redis.call('SREM', KEYS[2], id)
    end
  end
  local held = redis.call('SCARD', KEYS[2])
  if held >= quota then
    redis.call('EXPIRE', KEYS[2], ARGV[5])
    return held
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return -1
"""


# A standalone stream whose writer replica is gone, taken over by this replica, in one atomic step: when its last
# entry is not its end and the replica it names is not alive, an entry naming this replica (of its own kind, no event:
# readers skip it, whatever was trimmed before it) makes this replica its writer for every reader. Returns the
# sequence number to go on from, or nil when the stream ended, is not a standalone stream, or its writer lives.
_ADOPT_SCRIPT = """
-- KEYS[1]: the stream; ARGV: this replica, the prefix of liveness keys, the most entries kept, the stream's TTL (s)
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return false end
local fields = {}
local raw = last[1][2]
for i = 1, #raw, 2 do fields[raw[i]] = raw[i + 1] end
if fields['seq'] == '-1' or (fields['k'] ~= 'g' and fields['k'] ~= 'a') or not fields['s'] then return false end
if fields['w'] and redis.call('EXISTS', ARGV[2] .. fields['w']) == 1 then return false end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], '*', 'seq', fields['seq'], 'data', '', 'w', ARGV[1], 's', fields['s'],
           'k', 'a')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return fields['seq']
"""


# An entry of a standalone stream, written only while this replica is the stream's writer (its last entry names this
# replica, or it has none): once another replica adopted the stream (the writer looked gone, say while this one was
# cut off from Redis), this one must not number events on over the adopter's. Returns 1 when written, else 0.
_APPEND_SCRIPT = """
-- KEYS[1]: the stream; ARGV: this replica, the most entries kept, the stream's TTL (s), then the entry's fields
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local raw = last[1][2]
  for i = 1, #raw, 2 do
    if raw[i] == 'w' and raw[i + 1] ~= ARGV[1] then return 0 end
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', unpack(ARGV, 4))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""


# The refresh of a standalone stream's reader, in one step: its reader key kept, and the stream kept as long again as
# after an entry, until it ends (a finished stream keeps its short life): a quiet stream being read does not expire as
# an idle one. Returns the reader key's value before (whose reader it names; nil when it had expired).
_READING_SCRIPT = """
-- KEYS[1]: the reader key; KEYS[2]: the stream; ARGV: the reader key's TTL (s), the stream's TTL (s)
local holder = redis.call('GET', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #last > 0 then
  local raw = last[1][2]
  local ended = false
  for i = 1, #raw, 2 do
    if raw[i] == 'seq' and raw[i + 1] == '-1' then ended = true end
  end
  if not ended then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
end
return holder
"""


def _entries(reply: Any) -> list[tuple[Any, dict[bytes, bytes]]]:
    """The entries of the one stream in an XREAD reply (a RESP2 list, or a RESP3 mapping)."""
    if not reply:
        return []
    items = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if items and isinstance(items[0], list) and len(items) == 1 and isinstance(items[0][0], list):
        items = items[0]  # RESP3 wraps the entries once more
    return [(entry_id, fields) for entry_id, fields in items]


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _session_tag(session_id: str) -> bytes:
    """What a stream's entries carry to name their session: a digest of its id (the id itself is a credential)."""
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:32].encode()


@dataclass(slots=True)
class _Stored:
    """A session's record as this replica last read or wrote it (or as another replica announced it on the bus)."""

    record: bytes
    refreshed: float  # when a command last set its TTL (GETEX, SET, EXPIRE; a time taken before the command)
    confirmed: float  # when Redis last gave or took the whole record (GETEX, SET): the copy serves a slack after
    generation: int  # the bus generation then (_OVERLAPPED: the read overlapped a write), see RedisSessionStore.get


def _apply(session: Session, record: dict[str, Any], base: dict[str, Any] | None) -> None:
    """Take what a request may change (initialized, log level, subscriptions) from ``record`` into a replica's copy,
    but for a field a request here changed and has not saved yet: one that differs from ``base``, the record as the
    replica last read or wrote it (its save writes it; None: take every field)."""
    if base is None or session.initialized == base["initialized"]:
        session.initialized = record["initialized"]
    if base is None or session.log_level == base["log_level"]:
        session.log_level = record["log_level"]
    if base is None or sorted(session.subscriptions) == base["subscriptions"]:
        session.subscriptions = set(record["subscriptions"])


class RedisEventStream(EventStream):
    """An event stream kept in a Redis stream; written by one replica, read by any."""

    def __init__(self, store: RedisSessionStore, stream_id: str, session_id: str, *, standalone: bool = False) -> None:
        super().__init__(id=stream_id, standalone=standalone)
        self._store = store
        self._redis = store.redis
        self._key = store.stream_key(stream_id)
        self._reader_key = store.reader_key(stream_id)
        self._reader = secrets.token_hex(6)  # this copy of the stream, in the tokens of the readers it attaches
        self._session_id = session_id
        self._session = _session_tag(session_id)
        self._ttl = store.ttl_seconds
        self._finished_ttl = store.finished_ttl_seconds
        # (longer than the time between two refreshes, however short the time to come back)
        self._reader_ttl = max(self._finished_ttl, int(3 * _READER_SECONDS))
        self._unwritten: deque[dict[str, bytes | str]] = deque()  # in order; written when Redis answers
        self._writing = asyncio.Lock()
        self._writes = standalone  # this copy writes the stream: a new GET stream (else found in Redis), or adopted

    def found_at(self, last: dict[bytes, bytes]) -> RedisEventStream:
        """This copy of a stream found in Redis, whose last entry is ``last``: ended, or numbered on from it."""
        self.standalone = last.get(b"k") in (_STANDALONE, _ADOPTION)
        sequence = last.get(b"seq", b"0")
        if sequence == _CLOSED:
            self.closed = True
        else:
            self._sequence = int(sequence)
        return self

    def adopted_at(self, sequence: int) -> None:
        """This replica writes the stream from now on, numbering on after ``sequence``."""
        self._sequence = sequence
        self._writes = True
        self.superseded = False

    async def append(self, data: bytes) -> Event:
        """Add an event (only the replica running the request writes)."""
        self._sequence += 1
        event = Event(f"{self.id}-{self._sequence}", data)
        await self._write({"seq": str(self._sequence), "data": data})
        return event

    async def close(self) -> None:
        """Mark the end, for readers on any replica."""
        self.closed = True
        await self._write({"seq": _CLOSED, "data": b""})

    async def _write(self, fields: dict[str, bytes | str]) -> None:
        """Write now, or, while Redis does not answer, keep the entry for when it does (never raises)."""
        if self.superseded:
            return
        fields["w"] = self._store.replica  # the writer, whose liveness readers check
        fields["s"] = self._session  # the session, which alone may read the stream
        if self.standalone:
            fields["k"] = _STANDALONE  # a replica that finds it may resume it as the session's GET stream
        self._unwritten.append(fields)
        if len(self._unwritten) > self.max_events:
            self._unwritten.popleft()  # the stream keeps only the last max_events anyway
        if self._store.known_down:
            self._store.defer(self)
            return
        await self.flush()

    @property
    def unwritten(self) -> int:
        """Entries waiting for Redis."""
        return len(self._unwritten)

    async def flush(self) -> bool:
        """Write the waiting entries, in order; False (they wait on) when Redis does not answer."""
        async with self._writing:
            while self._unwritten:
                try:
                    fields = self._unwritten[0]
                    ttl = self._finished_ttl if fields["seq"] == _CLOSED else self._ttl  # finished: kept briefly
                    if self.standalone:
                        pairs = [item for field in fields.items() for item in field]
                        args = [self._store.replica, self.max_events, ttl, *pairs]
                        if not await self._store.append_script(keys=[self._key], args=args):
                            self._superseded()
                            return True
                    else:
                        async with self._redis.pipeline(transaction=False) as pipe:
                            # (exactly: the stream keeps its latest max_events)
                            pipe.xadd(self._key, fields, maxlen=self.max_events, approximate=False)  # type: ignore[arg-type]
                            pipe.expire(self._key, ttl)
                            await pipe.execute()
                except _FAILURES:
                    self._store.defer(self)
                    return False
                self._unwritten.popleft()
        return True

    def _superseded(self) -> None:
        """Another replica adopted this standalone stream: this one writes no more of it."""
        self.superseded = True
        self._unwritten.clear()
        self._store.forget_copy(self._session_id, self)  # a resume here reads what the adopter writes, from Redis
        log.info("another replica carries on a GET stream this one wrote; stopped writing it", stream=self.id)

    async def take_over(self) -> int:
        """Make a connection about to read the stream its one reader, on every replica: its token in the reader key
        ends the connections reading it elsewhere (each sees the key name another, within a second), and tells the
        stream's writer that it is read."""
        generation = await super().take_over()
        try:
            await self._redis.set(self._reader_key, self._token(generation), ex=self._reader_ttl)
        except _FAILURES as exc:  # the reader then fails as Redis does, and the client resumes
            log.debug("could not record a stream's reader", stream=self.id, error=_reason(exc))
        return generation

    async def unread_for(self) -> float:
        """Seconds the stream has gone without a reader here or on any replica (whose reader key is refreshed while
        it reads, and kept at least ``KEEP_FINISHED_SECONDS``); 0 while Redis does not answer (asked again later)."""
        here = await super().unread_for()
        if not here:
            return 0.0
        try:
            left_ms = int(await self._redis.pttl(self._reader_key))
        except _FAILURES:
            return 0.0
        if left_ms <= 0:  # no reader anywhere for as long as the key lasts
            return here
        # (a reader refreshes its key every second or so: it counts as reading until two refreshes were missed)
        refreshed = self._reader_ttl - left_ms / 1000
        return max(0.0, min(here, refreshed - 2 * _READER_SECONDS))

    def _token(self, generation: int) -> bytes:
        """The reader key's value while the reader that took this copy over at ``generation`` reads the stream."""
        return f"{self._reader}:{generation}".encode()

    async def _still_reading(self, token: bytes) -> bool:
        """Refresh the reader key, and keep the stream (a quiet one, read, would expire as an idle one); False once
        another connection took the stream over (its token is there)."""
        keys, args = [self._reader_key, self._key], [self._reader_ttl, self._ttl]
        holder = await self._store.reading_script(keys=keys, args=args)
        if holder is None:  # it expired (Redis was away a while): the reader's again, unless another took it
            return bool(await self._redis.set(self._reader_key, token, ex=self._reader_ttl, nx=True))
        return bool(holder == token)

    async def follow(self, after: int = 0, *, generation: int | None = None) -> AsyncIterator[Event]:
        """The events after sequence ``after``, then new ones as they are appended anywhere, until the end marker
        (or :meth:`disconnect` ends this reader, another connection takes the stream over, the stream expires, its
        writer is gone, or Redis does not answer: the client resumes from the last event it got). A reader that
        took the stream over follows it with its ``generation`` (see :meth:`EventStream.follow`); it ends at once
        when another took it over since, here or through another copy (another request, or replica)."""
        took_over = generation is not None
        generation = self._generation if generation is None else generation
        attached = self.standalone and (took_over or self.readers > 0)
        token = self._token(generation) if attached else None
        # (one that took the stream over looks at the reader key at once: another may have taken it over meanwhile)
        refreshed = time.monotonic() - (_READER_SECONDS if took_over else 0.0)
        resumed = after
        position = "0-0"
        writer: bytes | None = None
        missing_since: float | None = None
        while self._generation == generation:
            try:
                if token is not None and time.monotonic() - refreshed >= _READER_SECONDS:
                    refreshed = time.monotonic()
                    if not await self._still_reading(token):
                        log.debug("a resume took a stream over; ended its earlier reader", stream=self.id)
                        return
                reply: Any = await self._redis.xread({self._key: position}, count=100, block=100)
                entries = _entries(reply)
                alive = True
                if not entries:
                    exists, alive = await self._store.stream_and_writer(self._key, writer)
                    # (a GET stream written here may have no key yet: none before its first event)
                    if not exists and not (self._writes and not self.superseded and not self.closed):
                        return
            except _FAILURES as exc:
                log.debug("a stream reader lost Redis; the client resumes", stream=self.id, error=_reason(exc))
                return
            if not entries:
                if alive:
                    missing_since = None
                elif missing_since is None:
                    missing_since = time.monotonic()
                elif time.monotonic() - missing_since >= _WRITER_GONE_SECONDS:
                    log.debug("the replica writing a stream is gone; ended its reader", stream=self.id)
                    return
                continue
            for entry_id, fields in entries:
                position = entry_id
                writer = fields.get(b"w", writer)
                if fields.get(b"k") == _ADOPTION:
                    continue
                sequence = fields[b"seq"]
                if sequence == _CLOSED:
                    return
                if int(sequence) > after:
                    if resumed:
                        note_gap(self.id, resumed, int(sequence))
                        resumed = 0
                    yield Event(f"{self.id}-{int(sequence)}", fields[b"data"])
                    after = int(sequence)
                if self._generation != generation:
                    return


class RedisSessionStore:
    """The session backend for more than one replica."""

    def __init__(
        self,
        redis: Redis,
        *,
        max_sessions: int,
        idle_seconds: float,
        max_sessions_per_owner: int = 0,
        prefix: str = "erlmcp",
        check_seconds: float = CHECK_SECONDS,
        keep_finished_seconds: float = KEEP_FINISHED_SECONDS,
        max_finished_streams: int = MAX_FINISHED_STREAMS,
    ) -> None:
        self._redis = redis
        self._keep_finished = max(1, int(keep_finished_seconds))
        self._max_finished = max_finished_streams
        self._max = max_sessions
        self._per_owner = max_sessions_per_owner  # 0: no quota (a principal may have a quota of its own)
        self._idle = max(1, int(idle_seconds))
        # An owner's set outlives the idle time, and the replicas serving its sessions refresh it every half idle
        # time: it lasts while any of them lives, and goes some time after the last one.
        self._owner_ttl = 2 * self._idle
        self._owners_refreshed = time.monotonic()
        self._create_script = redis.register_script(_CREATE_SCRIPT)
        self._adopt_script = redis.register_script(_ADOPT_SCRIPT)
        self.append_script = redis.register_script(_APPEND_SCRIPT)  # (for RedisEventStream.flush)
        self.reading_script = redis.register_script(_READING_SCRIPT)  # (for RedisEventStream._still_reading)
        self._prefix = prefix
        self._local: dict[str, tuple[Session, float]] = {}
        self._channel = f"{prefix}:bus"
        self.replica = secrets.token_hex(6)  # this process, in its liveness key and in the entries it writes
        self._alive_key = self._replica_key(self.replica.encode())
        self._check_seconds = check_seconds
        self._up: bool | None = None  # None until the first check
        self._down_since = 0.0
        self._started: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._bus: asyncio.Task[None] | None = None
        self._bus_ready = asyncio.Event()  # set once the current bus connection is subscribed
        self._check_now = asyncio.Event()  # a command failed: check Redis without waiting for the next round
        self._unsaved: dict[str, Session] = {}  # records to write once Redis answers again
        self._unwritten: set[RedisEventStream] = set()  # streams with entries waiting for Redis
        # For each session held here: its record as this replica last read or wrote it, and when. A request that
        # changed nothing has nothing to write (see save), and a fresh one needs no read (see get); gone with the
        # session's local copy.
        self._stored: dict[str, _Stored] = {}
        # (a tenth of the idle time at most: the TTL a request leaves is never much short of the idle time)
        self._slack = min(_REFRESH_SLACK_SECONDS, self._idle / 10)
        # Counts the bus's subscriptions and losses: a copy confirmed in another generation may have missed a message.
        self._generation = 0
        self._resubscribing = False  # the bus subscribed before: the next subscription is a new one (logged)
        # Counts the writes and ends of records, here or announced by the bus; with the writes under way here, tells
        # a read whether one overlapped it (it may then predate it: the copy it leaves is not fresh).
        self._epoch = 0
        self._writing = 0
        self._getex = True  # False once Redis refused GETEX (older than 6.2: "unknown command"; or an ACL: NOPERM)

    @property
    def redis(self) -> Redis:
        """The Redis client this store uses (other shared state, such as rate limits, uses it too)."""
        return self._redis

    @property
    def ttl_seconds(self) -> int:
        """How long an idle session, or stream, is kept."""
        return self._idle

    @property
    def finished_ttl_seconds(self) -> int:
        """How long a finished stream is kept."""
        return self._keep_finished

    @property
    def keep_finished_seconds(self) -> float:
        """How long a finished stream stays resumable, and a standalone stream goes on without a reader."""
        return float(self._keep_finished)

    @property
    def known_down(self) -> bool:
        """Whether the last check found Redis not answering."""
        return self._up is False

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:session:{session_id}"

    def _owner_key(self, owner: str) -> str:
        """The key of an owner's set of session ids: the name hashed, so that any name makes a safe key."""
        return f"{self._prefix}:owner:{hashlib.sha256(owner.encode('utf-8', 'surrogatepass')).hexdigest()}"

    def stream_key(self, stream_id: str) -> str:
        """The Redis key of an event stream."""
        return f"{self._prefix}:events:{stream_id}"

    def reader_key(self, stream_id: str) -> str:
        """The Redis key naming the connection that reads a standalone stream (see :meth:`RedisEventStream.attach`)."""
        return f"{self._prefix}:events:{stream_id}:reader"

    def _replica_key(self, replica: bytes) -> bytes:
        return f"{self._prefix}:replica:".encode() + replica

    @staticmethod
    def _record(session: Session) -> bytes:
        return orjson.dumps(
            {
                "protocol_version": session.protocol_version,
                "client_info": session.client_info,
                "client_capabilities": session.client_capabilities,
                "principal": session.principal,
                "owner": session.owner,
                "initialized": session.initialized,
                "log_level": session.log_level,
                "subscriptions": sorted(session.subscriptions),
            }
        )

    # -- availability ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check Redis once, then keep checking it and listen on the bus in the background (the first call does
        this; every call waits for that first check)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._begin())
        await asyncio.shield(self._started)

    async def _begin(self) -> None:
        await self._check()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._restart_bus()
        if self._up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bus_ready.wait(), timeout=2 * self._check_seconds)

    async def unavailable(self) -> str | None:
        """None while Redis answers and the bus listens, else why not (for readiness)."""
        await self.start()
        if not self._up:
            return _UNAVAILABLE
        if not self._bus_ready.is_set():
            return "not yet listening on the session bus"
        return None

    @contextlib.contextmanager
    def _commands(self) -> Iterator[None]:
        """Around commands a request needs answered: fail at once while Redis is known to be away, and turn a
        failure into :class:`SessionStoreUnavailable` (a prompt check of Redis follows)."""
        if self._up is False:
            raise SessionStoreUnavailable(_UNAVAILABLE)
        try:
            yield
        except _FAILURES as exc:
            self._check_now.set()
            raise SessionStoreUnavailable(_UNAVAILABLE) from exc  # the reason (an address) stays in the log

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), timeout=self._check_seconds)
            self._check_now.clear()
            await self._check()
            if self._up:
                await self._refresh_owners()

    async def _refresh_owners(self) -> None:
        """Every half idle time, keep the owner sets of the sessions this replica serves from expiring while those
        sessions live (a session used for longer than its owner's set lasts would stop counting)."""
        now = time.monotonic()
        # Whatever the default quota: a key or token audience may set one of its own at any time (the key file changes).
        if now - self._owners_refreshed < self._idle / 2:
            return
        self._owners_refreshed = now
        owners = {s.owner for s, seen in self._local.values() if s.owner is not None and now - seen <= self._idle}
        if not owners:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for owner in owners:
                    pipe.expire(self._owner_key(owner), self._owner_ttl)
                await pipe.execute()
        except _FAILURES:
            self._check_now.set()

    async def _check(self) -> None:
        """One round: refresh this replica's liveness key (which tells whether Redis answers); on the way back,
        write what waited and listen on the bus again."""
        try:
            async with asyncio.timeout(2 * self._check_seconds + 1):  # the client's own timeouts come first
                await self._redis.set(self._alive_key, b"1", px=_LIVENESS_MS)
        except _FAILURES as exc:
            if self._up is not False:
                self._down_since = time.monotonic()
                log.warning(
                    "Redis does not answer: requests that need the session store get 503 until it does",
                    error=_reason(exc),
                )
            self._up = False
            return
        if not await self._write_waiting():
            return  # it went away again; still down (or not yet known to be up)
        if self._up is False:
            log.info("Redis answers again", down_seconds=round(time.monotonic() - self._down_since, 1))
            self._restart_bus()  # the subscription may not have survived (a restarted or failed-over Redis)
        self._up = True

    def defer(self, stream: RedisEventStream) -> None:
        """Have a stream's waiting entries written once Redis answers again."""
        self._unwritten.add(stream)

    async def _write_waiting(self) -> bool:
        """Write the records and stream entries that waited for Redis (and what came meanwhile); False when it
        stopped answering."""
        while self._unsaved or self._unwritten:
            for session_id, session in list(self._unsaved.items()):
                record, sent, generation = self._record(session), time.monotonic(), self._generation
                try:
                    await self._write_record(session_id, record)
                except _FAILURES:
                    return False
                self._remember(session_id, record, sent, generation)
                if self._unsaved.get(session_id) is session and self._record(session) == record:
                    del self._unsaved[session_id]  # (else it changed meanwhile: written again next time round)
            for stream in list(self._unwritten):
                self._unwritten.discard(stream)
                if not await stream.flush():
                    return False
        return True

    def _restart_bus(self) -> None:
        if self._bus is not None:
            self._bus.cancel()
        self._bus_ready = asyncio.Event()
        self._bus = asyncio.get_running_loop().create_task(self._listen(self._bus_ready))

    async def _listen(self, ready: asyncio.Event) -> None:
        """Deliver what other replicas publish for sessions held here; subscribe again whenever the connection
        fails, for as long as the store runs."""
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    item = await pubsub.get_message(timeout=self._check_seconds)
                    if item is None:
                        continue
                    if item.get("type") == "subscribe":
                        self._subscribed()
                        ready.set()
                    elif item.get("type") == "message":
                        self._on_message(item["data"])
            except _FAILURES as exc:
                log.debug("the session bus lost Redis; subscribing again", error=_reason(exc))
            finally:
                ready.clear()
                self._generation += 1  # messages may be missed from now on: no copy is fresh any longer
                with contextlib.suppress(*_FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self._check_seconds / 2)

    def _subscribed(self) -> None:
        """The bus (re)subscribed, redis-py's own reconnection included: what was published since the last
        subscription may have been missed, so no copy confirmed before counts as fresh."""
        self._generation += 1
        if self._resubscribing:
            log.debug("the session bus subscribed again; each session is read from Redis before its copy serves again")
        self._resubscribing = True

    def _on_message(self, data: bytes) -> None:
        """Apply what another replica published: an answer or a notification for a request running here, a session's
        changed record, or its end (this replica's own changes and ends were applied when made)."""
        try:
            message = orjson.loads(data)
            kind, session_id = message["type"], message["session"]
            if kind in ("changed", "deleted"):
                if message.get("replica") == self.replica:
                    return
                self._epoch += 1  # a read under way may predate it (held here or not yet)
            entry = self._local.get(session_id)
            if entry is None:
                return
            session = entry[0]
            if kind == "response":
                session.on_response(message["id"], message["payload"])
            elif kind == "notification":
                session.on_notification(message["method"], message["params"])
            elif kind == "changed":
                self._changed_elsewhere(session, message["record"].encode())
            elif kind == "deleted":
                self._forget(session_id)
                self._unsaved.pop(session_id, None)
                session.close()
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignored a malformed message on the session bus")

    def _changed_elsewhere(self, session: Session, record: bytes) -> None:
        """Another replica wrote a session's record: the copy here takes it (but for what a request here changed and
        has not saved yet), and so does what this replica remembers of the record, so that a request here that
        changes nothing does not write over it. Its freshness stays as it was: this is no read of Redis."""
        if session.id in self._unsaved:
            return  # what this replica holds is newer than Redis's copy, and is written over it once Redis answers
        stored = self._stored.get(session.id)
        _apply(session, orjson.loads(record), None if stored is None else orjson.loads(stored.record))
        if stored is not None:
            stored.record = record

    async def stream_and_writer(self, key: str, writer: bytes | None) -> tuple[bool, bool]:
        """Whether a stream still exists, and whether the replica writing it is alive (True when unknown)."""
        if writer is None or writer == self.replica.encode():
            return bool(await self._redis.exists(key)), True
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(key)
            pipe.exists(self._replica_key(writer))
            exists, alive = await pipe.execute()
        return bool(exists), bool(alive)

    # -- sessions ----------------------------------------------------------------------------------------------

    async def _publish(self, message: dict[str, Any]) -> None:
        with self._commands():
            await self._redis.publish(self._channel, orjson.dumps(message))

    @contextlib.contextmanager
    def _writes_records(self) -> Iterator[None]:
        """Around a write or an end of a session record: a read that overlaps it leaves no fresh copy."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
            self._epoch += 1

    async def _write_record(self, session_id: str, record: bytes) -> None:
        """Write a changed record (``XX``: a session ended meanwhile stays ended) with its idle time, and announce it
        to the other replicas' copies (a ``changed`` message), in one round trip.

        Raises:
            RedisError, OSError: Redis did not answer (the record may or may not have been written).
        """
        message = {"type": "changed", "session": session_id, "replica": self.replica, "record": record.decode()}
        with self._writes_records():
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(self._key(session_id), record, ex=self._idle, xx=True)
                pipe.publish(self._channel, orjson.dumps(message))
                await pipe.execute()

    def _prune(self) -> int:
        now = time.monotonic()
        # (a session whose GET stream is read here stays: requests may go to other replicas meanwhile)
        stale = [
            sid
            for sid, (s, seen) in self._local.items()
            if now - seen > self._idle and not s.in_flight and not (s.standalone and s.standalone.stream.readers)
        ]
        for session_id in stale:
            forgotten = self._forget(session_id)
            if forgotten is not None:
                forgotten.close()
        return len(stale)

    def _forget(self, session_id: str) -> Session | None:
        """Drop this replica's copy of a session (not closed here), and what it remembers of its record."""
        self._stored.pop(session_id, None)
        entry = self._local.pop(session_id, None)
        return None if entry is None else entry[0]

    def _remember(self, session_id: str, record: bytes, sent: float, generation: int) -> None:
        """What Redis holds of a session's record after this replica read or wrote it whole, its TTL counted from
        ``sent`` (a time taken before the command, with the bus ``generation`` then); only for a session held here."""
        if session_id in self._local:
            self._stored[session_id] = _Stored(record, sent, sent, generation)

    def _fresh(self, session_id: str) -> Session | None:
        """This replica's copy of a session when it may serve without a read: Redis is not known to be away, the
        bus is subscribed and has been since Redis last gave or took the record, less than the slack ago, and no
        change made here waits for Redis. None otherwise (read Redis)."""
        entry = self._local.get(session_id)
        stored = self._stored.get(session_id)
        if entry is None or stored is None or not self._up or not self._bus_ready.is_set():
            return None
        if stored.generation != self._generation or time.monotonic() - stored.confirmed >= self._slack:
            return None
        return None if session_id in self._unsaved else entry[0]

    async def _read(self, key: str) -> bytes | None:
        """A session's record, its TTL set to the idle time again: one GETEX, or, from a Redis that does not run it
        (older than 6.2, or an ACL that denies it), GET and EXPIRE pipelined (found out once, told once in the log)."""
        if self._getex:
            try:
                raw: Any = await self._redis.getex(key, ex=self._idle)
            except ResponseError as exc:
                if not isinstance(exc, NoPermissionError) and "unknown command" not in str(exc).lower():
                    raise
                if self._getex:  # (once, however many lookups were under way)
                    self._getex = False
                    log.warning(
                        "Redis does not run GETEX (it is older than 6.2, or an ACL denies it): each session lookup "
                        "sends GET and EXPIRE instead",
                        error=_reason(exc),
                    )
            else:
                return raw.encode() if isinstance(raw, str) else raw
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.expire(key, self._idle)
            raw, _ = await pipe.execute()
        return raw.encode() if isinstance(raw, str) else raw

    def expire(self) -> int:
        """Forget the local state of sessions idle longer than the idle time (Redis expires their records by
        itself); how many."""
        return self._prune()

    async def create(
        self,
        *,
        protocol_version: str,
        client_info: dict[str, Any],
        client_capabilities: dict[str, Any],
        principal: str | None,
        owner: str | None = None,
        quota: int | None = None,
    ) -> Session:
        """A new session, visible to every replica, counted against the quota of ``owner`` (default: the
        principal; none when both are None) on every replica: ``quota`` sessions (the owner's own; default:
        ``max_sessions_per_owner``; 0: no quota).

        Raises:
            SessionQuotaError: the owner already holds ``quota`` live sessions.
            SessionLimitError: this replica holds as many sessions as it may.
            SessionStoreUnavailable: Redis does not answer.
        """
        await self.start()
        self._prune()
        if len(self._local) >= self._max:
            raise SessionLimitError(f"this replica holds its maximum of {self._max} sessions; try again later")
        owner = principal if owner is None else owner
        session = Session(
            id=secrets.token_urlsafe(16),
            protocol_version=protocol_version,
            client_info=client_info,
            client_capabilities=client_capabilities,
            principal=principal,
            last_seen=time.monotonic(),
            owner=owner,
        )
        key, record = self._key(session.id), self._record(session)
        sent, generation = time.monotonic(), self._generation
        with self._commands():
            limit = self._per_owner if quota is None else quota
            if owner is None or not limit:
                await self._redis.set(key, record, ex=self._idle)
                held = -1
            else:
                keys = [key, self._owner_key(owner)]
                # (the prefix of record keys: the script checks which of the owner's sessions remain)
                args = (record, self._idle, session.id, limit, self._owner_ttl, self._key(""))
                held = int(await self._create_script(keys=keys, args=args))
        if owner is not None and held >= 0:
            raise SessionQuotaError(limit, owner)
        self._local[session.id] = (session, time.monotonic())
        self._remember(session.id, record, sent, generation)
        return session

    async def get(self, session_id: str) -> Session | None:
        """The session: this replica's copy while it is fresh (no command; see the module's coherence window), else
        refreshed from Redis (one ``GETEX``, which also refreshes its idle time); None when unknown, ended or expired.

        Raises:
            SessionStoreUnavailable: Redis does not answer (also for a session held here: while Redis is known to be
                away no copy serves, as on the replicas that hold none).
        """
        await self.start()
        cached = self._fresh(session_id)
        if cached is not None:
            self._local[session_id] = (cached, time.monotonic())
            return cached
        sent, generation, epoch, writing = time.monotonic(), self._generation, self._epoch, self._writing
        with self._commands():
            raw = await self._read(self._key(session_id))
        if raw is None:
            gone = self._forget(session_id)
            if gone is not None:
                gone.close()
            return None
        session = self._take(session_id, raw)
        if writing or self._writing or self._epoch != epoch:
            generation = _OVERLAPPED  # a write or an end overlapped the read, which may predate it: read again next
        self._remember(session_id, raw, sent, generation)
        return session

    def _take(self, session_id: str, raw: bytes) -> Session:
        """This replica's copy of a session brought up to the record Redis holds (made from it when there is none),
        but for what a request here changed and has not saved yet."""
        entry = self._local.get(session_id)
        stored = self._stored.get(session_id)
        if entry is not None and stored is not None and stored.record == raw:
            session = entry[0]  # (nothing changed elsewhere: nothing to take)
        elif entry is not None:
            session = entry[0]
            if session_id not in self._unsaved:  # else what this replica holds is newer than Redis's copy
                _apply(session, orjson.loads(raw), None if stored is None else orjson.loads(stored.record))
        else:
            record = orjson.loads(raw)
            session = Session(
                id=session_id,
                protocol_version=record["protocol_version"],
                client_info=record["client_info"],
                client_capabilities=record["client_capabilities"],
                principal=record["principal"],
                last_seen=time.monotonic(),
                owner=record.get("owner"),  # (a record written before the quota has none)
            )
            _apply(session, record, None)
        self._local[session_id] = (session, time.monotonic())
        return session

    async def save(self, session: Session) -> None:
        """Write back what a request changed; a session ended meanwhile stays ended (``XX``). While Redis does
        not answer, the record is written once it does (never raises: the request itself succeeded).

        A record as this replica last read or wrote it is not written again (most requests change nothing; the
        lookup refreshed its TTL), and a request that changed nothing does not write over what another replica
        changed meanwhile. A changed record is announced on the bus with its write (one round trip), for the copies
        other replicas hold. When that refresh is older than a second or a tenth of the idle time (a long request, or
        a connection that saves without looking the session up), an unchanged record has its TTL refreshed (one
        EXPIRE): the idle time counts from the end of the session's last request, give or take that much."""
        record = self._record(session)
        stored = self._stored.get(session.id)
        unchanged = stored is not None and stored.record == record
        if stored is not None and unchanged and time.monotonic() - stored.refreshed < self._slack:
            self._unsaved.pop(session.id, None)  # (a change kept for Redis was undone: Redis has it as it is)
            return
        if self._up is not False:
            sent, generation = time.monotonic(), self._generation
            try:
                if unchanged:
                    await self._redis.expire(self._key(session.id), self._idle)  # its TTL only: leaves others' writes
                else:
                    await self._write_record(session.id, record)
            except _FAILURES:
                self._check_now.set()
            else:
                self._unsaved.pop(session.id, None)
                if stored is not None and unchanged:
                    stored.refreshed = sent  # (its TTL only: no read, the copy is no fresher)
                else:
                    self._remember(session.id, record, sent, generation)
                return
        self._unsaved[session.id] = session

    async def delete(self, session_id: str) -> bool:
        """End the session on every replica.

        Raises:
            SessionStoreUnavailable: Redis does not answer.
        """
        key = self._key(session_id)
        with self._commands(), self._writes_records():
            # the record names the owner whose set holds the id (this replica may never have seen it)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.delete(key)
                raw, deleted = await pipe.execute()
            existed = bool(deleted)
            owner = self._owner_in(raw)
            if owner is not None:
                await self._redis.srem(self._owner_key(owner), session_id)
        self._unsaved.pop(session_id, None)
        gone = self._forget(session_id)
        if gone is not None:
            gone.close()
        await self._publish({"type": "deleted", "session": session_id, "replica": self.replica})
        return existed or gone is not None

    @staticmethod
    def _owner_in(raw: bytes | None) -> str | None:
        """The owner a session record names (None: none, no record, or not a record)."""
        if raw is None:
            return None
        try:
            owner = orjson.loads(raw).get("owner")
        except (ValueError, AttributeError):
            return None
        return owner if isinstance(owner, str) else None

    def new_stream(self, session: Session, *, max_events: int | None = None, standalone: bool = False) -> EventStream:
        """A stream kept in Redis, so that another replica can resume it (for this session only); it keeps its
        latest ``max_events`` events (default: the stream's own bound), in Redis as while Redis is away."""
        stream = RedisEventStream(self, secrets.token_hex(8), session.id, standalone=standalone)
        if max_events is not None:
            stream.max_events = max_events
        session.streams[stream.id] = stream
        return stream

    async def find_stream(self, session: Session, stream_id: str) -> EventStream | None:
        """A stream of the session, written here or on another replica; None when there is none, or it is another
        session's (whose entries name another session): the caller cannot tell the two apart.

        Raises:
            SessionStoreUnavailable: Redis does not answer.
        """
        local = session.streams.get(stream_id)
        if local is not None:
            return local
        if not stream_id or not all(c in "0123456789abcdef" for c in stream_id):
            return None
        with self._commands():
            last: Any = await self._redis.xrevrange(self.stream_key(stream_id), count=1)
        # Every entry names its session; the last one is always there (the stream keeps its latest entries).
        tag = last[0][1].get(b"s") if last else None
        if not isinstance(tag, bytes) or not hmac.compare_digest(tag, _session_tag(session.id)):
            return None
        return RedisEventStream(self, stream_id, session.id).found_at(last[0][1])

    async def adopt(self, session: Session, stream: EventStream) -> bool:
        """Write a session's standalone stream from now on when the replica that wrote it is gone (killed, or
        stopped): its readers, on any replica, see this replica as its writer; its events are numbered on. One
        replica adopts it, whichever asks first; False for the others, while its writer lives, once it ended, and
        for a stream written here already (the replica it was adopted from stops writing it: see ``_APPEND_SCRIPT``).

        Raises:
            SessionStoreUnavailable: Redis does not answer.
        """
        if not isinstance(stream, RedisEventStream) or not stream.standalone or stream.closed:
            return False
        if session.streams.get(stream.id) is stream and not stream.superseded:
            return False
        args = (self.replica, self._replica_key(b"").decode(), stream.max_events, self._idle)
        with self._commands():
            sequence = await self._adopt_script(keys=[self.stream_key(stream.id)], args=args)
        if sequence is None:
            return False
        stream.adopted_at(int(sequence))
        session.streams[stream.id] = stream
        log.info("adopted a GET stream whose replica is gone", stream=stream.id)
        return True

    async def finish_stream(self, session: Session, stream: EventStream) -> None:
        """The stream has its last event: its end marker sets it to expire ``keep_finished_seconds`` later; the
        finished streams the session no longer keeps (beyond ``max_finished_streams``) are deleted now."""
        if not stream.closed:
            await stream.close()
        await self._release(session.keep_finished(stream, seconds=self._keep_finished, most=self._max_finished))

    async def drop_stream(self, session: Session, stream: EventStream) -> None:
        """Forget a finished stream now, on every replica (a GET stream that the session's next GET replaces)."""
        session.forget(stream)
        await self._release([stream])

    def forget_copy(self, session_id: str, stream: RedisEventStream) -> None:
        """A session held here stops holding this replica's copy of its stream (another replica adopted it)."""
        entry = self._local.get(session_id)
        if entry is not None:
            entry[0].forget(stream)

    async def _release(self, streams: list[EventStream]) -> None:
        """Delete the Redis streams of streams a session let go (never raises: each expires soon anyway), but not one
        another replica writes now (it adopted it), nor one whose last entries wait for Redis (this replica cannot
        tell yet whether it still writes it)."""
        gone = [
            stream.id
            for stream in streams
            if isinstance(stream, RedisEventStream) and not stream.superseded and not stream.unwritten
        ]
        keys = [self.stream_key(stream_id) for stream_id in gone] + [self.reader_key(stream_id) for stream_id in gone]
        if not keys or self._up is False:
            return
        try:
            await self._redis.delete(*keys)
        except _FAILURES:
            self._check_now.set()

    async def deliver_response(self, session: Session, request_id: str | int | None, payload: dict[str, Any]) -> bool:
        """Hand the answer to the waiting request here, or to the replica that runs it.

        Raises:
            SessionStoreUnavailable: the answer is for another replica and Redis does not answer.
        """
        if session.on_response(request_id, payload):
            return True
        await self._publish({"type": "response", "session": session.id, "id": request_id, "payload": payload})
        return True

    async def deliver_notification(self, session: Session, method: str, params: dict[str, Any]) -> None:
        """Apply a notification here, and (cancellations) on the replica that runs the request.

        Raises:
            SessionStoreUnavailable: a cancellation is for another replica and Redis does not answer.
        """
        session.on_notification(method, params)
        if method == "notifications/cancelled" and params.get("requestId") not in session.in_flight:
            await self._publish({"type": "notification", "session": session.id, "method": method, "params": params})

    def __len__(self) -> int:
        """Sessions this replica holds (others hold theirs; the shared state is in Redis)."""
        return len(self._local)

    def all(self) -> list[Session]:
        """The sessions this replica holds a copy of."""
        return [session for session, _ in self._local.values()]

    async def close(self) -> None:
        """Stop checking and listening, write what waited if Redis answers, and close the connection."""
        tasks = [task for task in (self._started, self._watcher, self._bus) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._up:
            with contextlib.suppress(*_FAILURES):
                await self._write_waiting()
                await self._redis.delete(self._alive_key)  # readers of this replica's streams need not wait
        await self._redis.aclose()
