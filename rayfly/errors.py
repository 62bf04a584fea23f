"""Typed errors of rayfly: one hierarchy under :class:`RayflyError`.

This module imports nothing else from rayfly, so every layer may raise these.
Every message names the thing that was wrong and what to do about it.
"""

from __future__ import annotations


class RayflyError(Exception):
    """Base of every error rayfly raises on purpose."""


class InvalidInput(RayflyError, ValueError):
    """An argument given by the user is malformed (a bad option, a bad size, a bad template)."""


class InvalidStorageOption(InvalidInput):
    """A ``--storage-option`` is malformed or not accepted by the source's filesystem."""


class NodeNotFound(InvalidInput):
    """A node id given with ``--nodes`` is not an alive node of the cluster."""


class SourceError(RayflyError):
    """Something went wrong while reading from the origin."""


class SourceNotFound(SourceError, FileNotFoundError):
    """The origin answered that the object does not exist (404, NoSuchKey, no such file)."""


class OriginUnreachable(SourceError, ConnectionError):
    """The origin could not be reached after the configured retries."""


class OriginChanged(SourceError):
    """The object changed at the origin after it was listed (its validators no longer match):
    fatal for the task on every node; running the distribution again fetches the new version."""


class RangeIgnored(SourceError):
    """The origin answered a ranged read with the whole object: the task falls back to one
    sequential stream read."""


class IntegrityError(RayflyError):
    """Bytes did not match the digest they were supposed to have."""


class PieceCorrupt(IntegrityError):
    """A piece's fast digest did not match the one its first holder reported."""


class DigestMismatch(IntegrityError):
    """A whole file's sha256 did not match the expected one."""


class PieceUnavailable(RayflyError):
    """A peer was asked for a piece it does not hold (evicted, never fetched, or failed)."""


class StorageError(RayflyError, OSError):
    """The node's piece store or a destination could not be written."""


class CacheFull(StorageError):
    """The piece store cannot make room for a task within its quota."""


class ClusterError(RayflyError):
    """Ray could not be started or reached, or a rayfly actor is missing."""


class TaskNotFound(RayflyError, KeyError):
    """A task id is unknown to the scheduler."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not found"


class MissingDependency(RayflyError, ImportError):
    """An optional package (matplotlib, tqdm, pandas) is needed for this call but not installed."""


class JobFailed(RayflyError):
    """A job submitted to the cluster ended in a state other than SUCCEEDED."""


class MetricsUnavailable(ClusterError):
    """A node's Prometheus endpoint did not answer, so a metric cannot be summed."""


class SchedulerUnavailable(ClusterError):
    """The scheduler actor did not answer within the retry time (it is gone, not restarting)."""
