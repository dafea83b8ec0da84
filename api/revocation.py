"""Revoked bearer tokens, known to every API process without a round trip per request.

A token is revoked by its id (`jti`): stored in a Redis sorted set (score: the token's expiry, so
entries leave once the token could not be used anyway) and announced on a Redis channel. Each API
process holds one subscription: it loads the set when it subscribes and adds each announced id to
a set in memory, so checking a bearer token stays a dictionary lookup. Every listening process
acknowledges each announcement (a list the revoker waits on), and the revocation answers only
after all of them did, or after a few seconds (then it says how many confirmed): once it has
answered, the token is refused by every API process, whichever the client talks to next.

A process whose subscription is not established (starting, or reconnecting after an error) does
not trust its memory: it asks Redis (ZSCORE) for every bearer token until it is subscribed again.
When Redis does not answer either, a process that has been subscribed once answers from memory:
it held every revocation stored up to the moment its subscription broke, and no revocation can be
stored while Redis is unreachable (a revoker that reached Redis while this process could not is
told so: its answer counts this process as unconfirmed). Only a process that never loaded the set
(started during the outage) refuses bearer tokens, with 503. So a Redis outage does not stop
clients that authenticate with bearer tokens, as it stops no other request that PostgreSQL alone
can serve (fault suite, docs/reliability.md). Revocations live in Redis: a Redis restarted empty
forgets them, except in the memory of API processes that knew them (reloading adds, never
removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import uuid
from typing import Any

import redis.asyncio
import structlog
from redis.exceptions import RedisError

from worker.events import channel

log = structlog.get_logger(__name__)

REVOKED_KEY = "ledgerq:revoked-tokens"
# The pub/sub channel, named per Redis database (worker.events.channel): pub/sub is global to a
# Redis server, and deployments sharing one server on other databases must not hear (and wait
# for the acknowledgements of) each other's revocations.
CHANNEL = "token-revocations"
ACK_PREFIX = "ledgerq:token-revocations:ack:"
# How long a revocation waits for every listening process to acknowledge it.
ACK_TIMEOUT = 5.0
# A subscription that heard nothing (not even a pong) for this long is taken for dead.
SILENCE = 15.0
PING_EVERY = 5.0


class RevocationUnavailable(Exception):
    """Neither this process's subscription nor Redis can say whether a token is revoked."""


class TokenDenylist:
    """Revoked token ids of one Redis, for one API process (one event loop)."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            redis_url, socket_keepalive=True, socket_connect_timeout=5
        )
        self.channel = channel(CHANNEL, self.client)
        self.revoked: dict[str, float] = {}  # token id -> expiry (seconds since the epoch)
        # True while subscribed and loaded: memory then holds every revocation.
        self.ready = False
        # True once memory was loaded: it then holds every revocation stored before the
        # subscription last broke.
        self.synced = False
        self._answering_from_memory = False
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ checking

    def known(self, token_id: str) -> bool | None:
        """True: revoked. False: not revoked. None: memory cannot tell (ask `lookup`)."""
        self._ensure_listening()
        expires = self.revoked.get(token_id)
        if expires is not None:
            return True
        return False if self.ready else None

    async def lookup(self, token_id: str) -> bool:
        """Ask Redis directly (while the subscription is down). Raises RevocationUnavailable."""
        try:
            score = await self.client.zscore(REVOKED_KEY, token_id)
        except RedisError as exc:
            raise RevocationUnavailable(str(exc)) from exc
        if score is not None:
            self.revoked[token_id] = float(score)
        return score is not None

    async def is_revoked(self, token_id: str) -> bool:
        """Memory while subscribed; else Redis; else, once synced, memory as of the break.
        Raises RevocationUnavailable only when this process never loaded the set."""
        known = self.known(token_id)
        if known is not None:
            return known
        try:
            revoked = await self.lookup(token_id)
        except RevocationUnavailable:
            if not self.synced:
                raise
            if not self._answering_from_memory:
                self._answering_from_memory = True
                log.warning("token_revocations_from_memory", known=len(self.revoked))
            return token_id in self.revoked
        self._answering_from_memory = False
        return revoked

    # ------------------------------------------------------------ revoking

    async def revoke(self, token_id: str, expires: float) -> tuple[int, int]:
        """Revoke a token until `expires`; returns (processes that confirmed, processes listening).
        Raises RedisError when the revocation could not be stored."""
        self.revoked[token_id] = expires
        now = time.time()
        ack_key = ACK_PREFIX + uuid.uuid4().hex
        message = json.dumps({"id": token_id, "exp": expires, "ack": ack_key})
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zadd(REVOKED_KEY, {token_id: expires})
            pipe.zremrangebyscore(REVOKED_KEY, "-inf", now)
            pipe.publish(self.channel, message)
            results = await pipe.execute()
        listening = int(results[-1])
        confirmed = 0
        deadline = time.monotonic() + ACK_TIMEOUT
        try:
            while confirmed < listening:
                left = deadline - time.monotonic()
                if left <= 0 or await self.client.blpop([ack_key], timeout=left) is None:
                    break
                confirmed += 1
        finally:
            with contextlib.suppress(RedisError):
                await self.client.delete(ack_key)
        if confirmed < listening:
            log.warning("token_revocation_unconfirmed", confirmed=confirmed, listening=listening)
        return confirmed, listening

    # ------------------------------------------------------------ listening

    def _ensure_listening(self) -> None:
        if self._task is None or self._task.done():
            # A context of its own: not the request's that happened to start it (its log fields).
            self._task = asyncio.get_running_loop().create_task(
                self._listen_forever(), context=contextvars.Context()
            )

    def _forget_expired(self) -> None:
        now = time.time()
        for token_id in [t for t, expires in self.revoked.items() if expires <= now]:
            del self.revoked[token_id]

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                self.ready = False
                with contextlib.suppress(Exception):
                    await self.client.aclose()
                raise
            except Exception as exc:  # reconnect: until then every check asks Redis
                self.ready = False
                log.warning("token_revocations_listener_error", error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _listen(self) -> None:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Load only once subscribed: a revocation is then either in the set already or on
            # its way to this subscription, never in neither.
            while True:
                reply = await pubsub.get_message(timeout=SILENCE)
                if reply is None:
                    raise TimeoutError("no subscription confirmation")
                if reply["type"] == "subscribe":
                    break
            stored: list[Any] = await self.client.zrangebyscore(
                REVOKED_KEY, time.time(), "+inf", withscores=True
            )
            self._forget_expired()
            for member, score in stored:
                name = member.decode() if isinstance(member, bytes) else str(member)
                self.revoked[name] = float(score)
            self.ready = self.synced = True
            self._answering_from_memory = False
            log.info("token_revocations_listening", known=len(self.revoked))
            heard = time.monotonic()
            pinged = heard
            while True:
                reply = await pubsub.get_message(timeout=PING_EVERY)
                now = time.monotonic()
                if reply is not None:
                    heard = now
                    if reply["type"] == "message":
                        await self._announced(reply["data"])
                    continue
                if now - heard > SILENCE:
                    raise TimeoutError(f"the subscription was silent for {SILENCE:.0f} s")
                if now - pinged >= PING_EVERY:
                    await pubsub.ping()
                    pinged = now
        finally:
            self.ready = False
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _announced(self, data: Any) -> None:
        try:
            message = json.loads(data)
            token_id, expires, ack_key = str(message["id"]), float(message["exp"]), message["ack"]
        except (ValueError, KeyError, TypeError):
            log.warning("token_revocation_malformed")
            return
        self.revoked[token_id] = expires
        if len(self.revoked) % 1024 == 0:
            self._forget_expired()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(ack_key, 1)
            pipe.expire(ack_key, 60)
            await pipe.execute()


_denylists: dict[tuple[str, int], TokenDenylist] = {}


def denylist_for(redis_url: str) -> TokenDenylist:
    """This process's denylist for a Redis (one per event loop: tests run several apps)."""
    key = (redis_url, id(asyncio.get_running_loop()))
    found = _denylists.get(key)
    if found is None:
        found = _denylists[key] = TokenDenylist(redis_url)
    return found
