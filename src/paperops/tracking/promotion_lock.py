"""The promotion lock: one champion decision at a time per registered model, on any MLflow store.

Two trainings finishing together must not both compare against the same old champion. MLflow has
no lock API, but every store makes one write atomic: creating a registered model, whose name is
unique (SQLite and PostgreSQL through a primary key, a remote `mlflow server` through the same
store behind REST). So the lock is the registered model `<name>.promotion-lock`: created to enter
(exactly one creator wins, the others get RESOURCE_ALREADY_EXISTS and poll with jitter, bounded),
deleted to leave. Its tags say who holds it and until when; a holder that died leaves a lock
whose `expires_at` has passed, and the next waiter breaks it. Breaking is itself serialised by
another unique name, `<lock>.break-<token>`, so two waiters never both break the same lock and
delete the one a third process just took (a waiter that dies in the milliseconds of breaking
leaves both behind; the timeout error says what to delete). SQLite's "database is locked" is
retried like a held lock. The paperops commands never show these models (`registry.is_lock_name`).

May import: tracking.registry (names, RegistryError) and the standard library; mlflow inside
functions.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from paperops.tracking.registry import LOCK_SUFFIX, RegistryError

log = logging.getLogger("paperops.tracking.promotion_lock")

TIMEOUT_S = 60.0  # how long a promotion waits for the lock before giving up
TTL_S = 120.0  # a lock older than this was left by a dead holder (a decision takes < 1 s)
POLL_S = 0.2  # mean wait between attempts (jittered 0.5x-1.5x)
DESCRIPTION = (
    "paperops promotion lock: held while the champion of {name} is decided (seconds). "
    "Safe to delete if no `paperops train` / `models promote` / `models rollback` is running."
)
_JITTER = random.SystemRandom()  # waiters that started together must not poll in step
_RETRYABLE = ("TEMPORARILY_UNAVAILABLE", "RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def actor() -> str:
    """Who acts: $PAPEROPS_ACTOR if set (CI, a service account), else user@host."""
    env = os.environ.get("PAPEROPS_ACTOR", "").strip()
    if env:
        return env
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (from its tags), and until when."""

    owner: str
    token: str
    acquired_at: str
    expires_at: str

    def tags(self) -> dict[str, str]:
        return {
            "owner": self.owner,
            "token": self.token,
            "acquired_at": self.acquired_at,
            "expires_at": self.expires_at,
        }

    def expired(self, now: float) -> bool:
        try:
            return datetime.fromisoformat(self.expires_at).timestamp() < now
        except ValueError:  # a lock with a broken tag cannot be trusted to ever end
            return True


def _code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


def _exists(e: Exception) -> bool:
    return _code(e) in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")


def _retryable(e: Exception) -> bool:
    return _code(e) in _RETRYABLE or "database is locked" in str(e).lower()


def read_holder(client: Any, name: str) -> Holder | None:
    """The current holder of `name`'s lock, or None when it is free."""
    from mlflow.exceptions import MlflowException

    try:
        rm = client.get_registered_model(lock_name(name))
    except MlflowException as e:
        if _retryable(e):
            return None
        raise
    tags = rm.tags or {}
    created = (rm.creation_timestamp or 0) / 1000
    return Holder(
        owner=tags.get("owner", "unknown (no owner tag)"),
        token=tags.get("token", ""),
        acquired_at=tags.get("acquired_at", _iso(created)),
        expires_at=tags.get("expires_at", _iso(created + TTL_S)),
    )


def _delete(client: Any, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(model)
    except MlflowException as e:
        if not _retryable(e):
            raise


def _break_stale(client: Any, name: str, stale: Holder) -> bool:
    """Delete a lock whose holder died; only one waiter may break one stale lock. True when
    this call deleted it."""
    from mlflow.exceptions import MlflowException

    breaker = f"{lock_name(name)}.break-{stale.token or 'untagged'}"
    try:
        client.create_registered_model(breaker, tags={"owner": actor()})
    except MlflowException as e:
        if _exists(e) or _retryable(e):
            return False  # another waiter is breaking this very lock
        raise
    try:
        current = read_holder(client, name)
        if current is not None and current.token == stale.token:  # not a fresh lock since
            log.warning(
                "breaking the stale promotion lock %s: held by %s since %s, expired %s",
                lock_name(name),
                stale.owner,
                stale.acquired_at,
                stale.expires_at,
            )
            _delete(client, lock_name(name))
            return True
        return False
    finally:
        _delete(client, breaker)


def acquire(
    client: Any,
    name: str,
    *,
    timeout: float | None = None,
    ttl: float | None = None,
    poll: float | None = None,
) -> Holder:
    """Take `name`'s promotion lock, waiting up to `timeout` seconds (default TIMEOUT_S);
    RegistryError after. A lock taken lives `ttl` seconds (default TTL_S) if never released."""
    from mlflow.exceptions import MlflowException

    timeout = TIMEOUT_S if timeout is None else timeout
    ttl = TTL_S if ttl is None else ttl
    poll = POLL_S if poll is None else poll
    lock = lock_name(name)
    deadline = time.monotonic() + timeout
    holder: Holder | None = None
    while True:
        now = time.time()
        me = Holder(f"{actor()} pid {os.getpid()}", uuid.uuid4().hex, _iso(now), _iso(now + ttl))
        broke = False
        try:
            client.create_registered_model(
                lock, tags=me.tags(), description=DESCRIPTION.format(name=name)
            )
            return me
        except MlflowException as e:
            if _exists(e):
                holder = read_holder(client, name) or holder
                if holder is not None and holder.expired(time.time()):
                    broke = _break_stale(client, name, holder)
            elif not _retryable(e):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise RegistryError(_timeout_message(name, timeout, holder))
        if not broke:
            time.sleep(min(left, poll * _JITTER.uniform(0.5, 1.5)))


def release(client: Any, name: str, me: Holder) -> None:
    """Leave the lock; never raises (an unreleased lock expires after its TTL)."""
    for attempt in range(20):
        try:
            current = read_holder(client, name)
            if current is None:
                return
            if current.token != me.token:
                log.warning(
                    "promotion lock %s was broken while held (now held by %s): the decision took "
                    "longer than its TTL",
                    lock_name(name),
                    current.owner,
                )
                return
            _delete(client, lock_name(name))
            return
        except Exception as e:  # a store hiccup must not turn a made decision into an error
            if attempt == 19:
                log.error("could not release %s (%s); it expires %s", name, e, me.expires_at)
                return
            time.sleep(POLL_S)


@contextmanager
def promotion_lock(
    client: Any, name: str, *, timeout: float | None = None, ttl: float | None = None
) -> Iterator[Holder]:
    """Hold `name`'s promotion lock for the body: read champion, compare, move alias, record."""
    me = acquire(client, name, timeout=timeout, ttl=ttl)
    try:
        yield me
    finally:
        release(client, name, me)


def _timeout_message(name: str, timeout: float, holder: Holder | None) -> str:
    lock = lock_name(name)
    who = (
        f"held by {holder.owner} since {holder.acquired_at} (expires {holder.expires_at})"
        if holder is not None
        else "the store kept answering 'busy'"
    )
    return (
        f"timed out after {timeout:g} s waiting for the promotion lock {lock!r}: {who}. "
        "Another registration or promotion of this model is running; retry when it is done. "
        "If none is (its holder died), the lock is broken automatically once it expires; to "
        f"clear it now, delete the registered model {lock!r} and any {lock + '.break-*'!r} "
        f"(MLflow UI, or `MlflowClient().delete_registered_model({lock!r})`)"
    )
