"""Which Redis failures are an outage (serve without Redis, say so) and which are a programming error."""

from __future__ import annotations

import redis.exceptions

# What makes Redis unable to take the store's operations for now, as an outage does: it is unreachable
# (TimeoutError, asyncio's too on 3.11, and ConnectionRefusedError are OSErrors), still loading its AOF
# (BusyLoadingError, a redis ConnectionError), a replica after a failover (READONLY), at maxmemory (OOM),
# without a master (MASTERDOWN; MasterNotFoundError from a Sentinel is a ConnectionError), a cluster
# with slots no node serves (CLUSTERDOWN, SlotNotCoveredError) or redirecting for too long (ClusterError),
# or a transaction refused for one of those (EXECABORT); or it refuses this client: a wrong password
# (AuthenticationError, a ConnectionError), an ACL without the command (NOPERM), protected mode (DENIED).
# Those last persist until an operator mends them, but the answer is the same: serve without Redis, say so.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ClusterError,  # ClusterDownError and MasterDownError too
    redis.exceptions.SlotNotCoveredError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ExecAbortError,
    OSError,
)


def is_outage(exc: BaseException) -> bool:
    """True for a failure that says Redis cannot take commands now; False for a programming error (a wrong
    type, a cross-slot command), which a retry would not mend."""
    if isinstance(exc, CONNECTION_ERRORS):
        return True
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("DENIED"):
        return True
    # The cluster client's "cannot be connected" carries the connection failure behind it as its cause.
    cause = exc.__cause__
    return isinstance(exc, redis.exceptions.RedisClusterException) and cause is not None and is_outage(cause)
