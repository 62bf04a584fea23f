"""``rayfly distribute --submit``: run a distribution as a Ray job and follow its logs.

The job runs ``python -m rayfly.cli distribute ...`` on the cluster (so rayfly must be
installed there, or shipped with ``--working-dir``); the job's driver connects to its own
cluster, and the client only talks to the dashboard's job-submission API.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import Any, TextIO

from rayfly.errors import ClusterError, InvalidInput, JobFailed

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def entrypoint(args: list[str]) -> str:
    """The job's shell command for ``rayfly distribute ARGS``."""
    return "python -m rayfly.cli distribute " + shlex.join(args)


def distribute_args(
    source: str,
    dest: str,
    *,
    nodes: str | list[str] = "all",
    exclude_head: bool = False,
    piece_size: int | None = None,
    concurrency: int | None = None,
    limit_rate: str | None = None,
    sha256: str | None = None,
    storage_options: tuple[str, ...] = (),
    tag: str = "",
    timeout: float | None = None,
    pin: bool = False,
    as_json: bool = False,
    source_node: str | None = None,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    max_files: int | None = None,
) -> list[str]:
    """The ``rayfly distribute`` arguments (no cluster address: the job uses its own)."""
    args = [source, "--dest", dest]
    for selector in [nodes] if isinstance(nodes, str) else nodes:
        args += ["--nodes", str(selector)]
    if exclude_head:
        args.append("--exclude-head")
    optional = {
        "--piece-size": piece_size,
        "--concurrency": concurrency,
        "--limit-rate": limit_rate,
        "--sha256": sha256,
        "--tag": tag or None,
        "--timeout": timeout,
        "--source-node": source_node,
        "--max-files": max_files,
    }
    for flag, value in optional.items():
        if value is not None:
            args += [flag, str(value)]
    for option in storage_options:
        args += ["--storage-option", option]
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            args += [flag, pattern]
    return args + (["--pin"] if pin else []) + (["--json"] if as_json else [])


def use_local_token() -> None:
    """Send this machine's Ray token (``ray start`` made one) unless RAY_AUTH_MODE says no.

    ``ray start --head`` turns token authentication on by default, but clients only send the
    token with ``RAY_AUTH_MODE=token``; without this, ``--submit`` would get a 401.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication import authentication_token_setup as setup

        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except (ImportError, AttributeError):  # a Ray without token authentication
        return


def client(address: str | None) -> Any:
    """A job-submission client for the dashboard at ``address`` (clear error if unreachable)."""
    if not address:
        raise InvalidInput(
            "--submit needs the dashboard address: --address http://HEAD:8265 "
            "(the head's dashboard port, not the GCS port)"
        )
    if "://" in address and not address.startswith(("http://", "https://")):
        raise InvalidInput(
            f"--address {address!r}: --submit talks to the dashboard over http(s), "
            "e.g. http://HEAD:8265"
        )
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    use_local_token()
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise ClusterError(
            f"the Ray dashboard at {address} refused us: {str(exc).splitlines()[0]} Put the "
            "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (see `ray get-auth-token`)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"cannot reach the Ray dashboard at {address}: {exc} Is the head started with "
            "--include-dashboard=true, and is this its dashboard port (default 8265)?"
        ) from None


def submit(
    args: list[str],
    address: str | None,
    *,
    working_dir: str | None = None,
    runtime_env: dict[str, Any] | None = None,
    follow: bool = True,
    timeout: float | None = None,
    out: TextIO | None = None,
) -> tuple[str, str]:
    """Submit ``rayfly distribute ARGS`` as a job; with ``follow``, stream its logs to the end.

    Returns ``(job_id, status)``. Raises :class:`JobFailed` when the job ends in another state
    than SUCCEEDED (its last log lines are in the message).
    """
    jobs = client(address)
    env = dict(runtime_env or {})
    if working_dir:
        env["working_dir"] = working_dir
    job_id = jobs.submit_job(entrypoint=entrypoint(args), runtime_env=env or None)
    stream = out or sys.stdout
    print(f"rayfly: submitted job {job_id} to {address}", file=sys.stderr)
    if not follow:
        return job_id, str(jobs.get_job_status(job_id))
    status, logs = wait(jobs, job_id, stream, timeout)
    if status != "SUCCEEDED":
        tail = "\n".join(logs.strip().splitlines()[-10:])
        raise JobFailed(f"job {job_id} ended {status}; last log lines:\n{tail}")
    return job_id, status


def wait(jobs: Any, job_id: str, out: TextIO, timeout: float | None) -> tuple[str, str]:
    """Follow a job's logs until it ends; returns its final status and all its logs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    while True:
        status = str(jobs.get_job_status(job_id).value)
        logs = jobs.get_job_logs(job_id)
        out.write(logs[shown:])
        out.flush()
        shown = len(logs)
        if status in TERMINAL:
            return status, logs
        if deadline is not None and time.monotonic() > deadline:
            jobs.stop_job(job_id)
            raise JobFailed(f"job {job_id} still {status} after {timeout}s; stopped it")
        time.sleep(0.5)
