"""Jobs: a real head with the dashboard (`ray start --head --include-dashboard=true`), real
`ray job submit` and `rayfly distribute --submit`; the job's files checked on disk.

The head is this module's own one-node cluster (the session's cluster has no dashboard); it is
started in its own process group and that group alone is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from rayfly.demo_origin import make_file
from tests.conftest import free_port, sha256_file
from tests.support import cli

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


class Head:
    """A `ray start --head --block` process group with the dashboard on loopback.

    ``auth="token"``: the head runs with token authentication, its token in ``root`` (nothing
    of ``~/.ray`` is read); the clients get the token's path. ``auth="off"``: a machine where
    Ray never ran (an empty HOME, no token anywhere), so Ray starts the head without token
    authentication; its clients run with the same empty HOME.
    """

    def __init__(self, root: Path, auth: str) -> None:
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.auth = auth
        self.client_env = _auth_env(root, auth)
        node_env = {**self.client_env, **({"RAY_AUTH_MODE": "token"} if auth == "token" else {})}
        env = {
            **_without_auth(os.environ),
            **node_env,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAYFLY_CACHE_DIR": str(root / "cache"),
            "RAY_ADDRESS": "",
            # on a loaded 2-core machine the agent may take long to come up: wait, don't crash
            "RAY_agent_register_timeout_ms": "180000",
        }
        # short: Ray's socket paths under it must stay within 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="rh", dir=os.environ.get("RAY_TMPDIR"))
        self.log = open(root / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "ray",
                "start",
                "--head",
                "--block",
                "--include-dashboard=true",
                f"--port={free_port()}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                # ports other Ray nodes on this machine may hold by default (52365, 10001)
                f"--dashboard-agent-listen-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                "--num-cpus=2",
                f"--object-store-memory={150 * MiB}",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.dashboard + "/api/version", timeout=2):
                    break
            except urllib.error.HTTPError:
                break  # it answers (401: token authentication is on)
            except OSError:
                time.sleep(0.5)
        while time.monotonic() < deadline:  # until the node's job agent has registered
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}")
            out = run(self, ["ray", "job", "submit", "--address", self.dashboard, "--", "true"])
            if out.returncode == 0:
                return
            time.sleep(1)
        raise TimeoutError(f"no dashboard taking jobs at {self.dashboard} after {timeout}s")

    def stop(self) -> None:
        pgid = self.proc.pid  # the session leader: its group is everything this head started
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.2)
        self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _auth_env(root: Path, auth: str) -> dict[str, str]:
    """What a client of a head in mode ``auth`` needs: the token's path, or an empty HOME."""
    if auth == "token":
        token = root / "auth_token"
        token.write_text(secrets.token_hex(32))
        return {"RAY_AUTH_TOKEN_PATH": str(token)}
    (root / "home").mkdir()
    return {"HOME": str(root / "home")}


def _without_auth(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` without Ray's token settings: each head decides them for itself."""
    return {k: v for k, v in env.items() if k not in AUTH_VARS}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def heads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Head]]:
    """Heads by authentication mode, each started on first use, all stopped at the end."""
    started: dict[str, Head] = {}

    def get(auth: str) -> Head:
        if auth not in started:
            started[auth] = _start_head(tmp_path_factory, auth)
        return started[auth]

    try:
        yield get
    finally:
        for h in started.values():
            h.stop()


def _start_head(tmp_path_factory: pytest.TempPathFactory, auth: str) -> Head:
    for attempt in (1, 2):  # a head that crashed while starting on a busy machine: once more
        h = Head(tmp_path_factory.mktemp(f"head-{auth}"), auth)
        try:
            h.wait_ready()
            return h
        except RuntimeError:
            h.stop()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture
def head(heads: Callable[[str], Head]) -> Head:
    """The head with token authentication (as `ray start --head` has when a token exists)."""
    return heads("token")


def dashboard_status(head: Head) -> int:
    """The HTTP status of a request without a token to the head's dashboard."""
    try:
        with urllib.request.urlopen(head.dashboard + "/api/version", timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def job_status(head: Head, job_id: str) -> str:
    """The job's status from Ray's JobSubmissionClient."""
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient as C; "
        "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    out = run(head, [sys.executable, "-c", code, head.dashboard, job_id], 60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def run(head: Head, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """A Ray client command for ``head`` (Ray's clients send a token only with
    RAY_AUTH_MODE=token)."""
    mode = {"RAY_AUTH_MODE": "token"} if head.auth == "token" else {}
    env = {**_without_auth(os.environ), "RAY_ADDRESS": "", **head.client_env, **mode}
    return cli.run(args, env, timeout)


def rayfly(head: Head | None, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The rayfly CLI without RAY_AUTH_MODE: it must find the token (if any) itself."""
    env = {**_without_auth(os.environ), "RAY_ADDRESS": "", **(head.client_env if head else {})}
    return cli.rayfly_cli(*args, env=env, timeout=timeout)


def report_in(output: str) -> dict:
    start = output.index('{\n  "source"')
    return json.JSONDecoder().raw_decode(output[start:])[0]


def test_ray_job_submit_runs_jobs_distribute(head, origin, origin_root, tmp_path):
    src = make_file(origin_root / "job.bin", 4 * MiB, seed=41)
    excludes = json.dumps({"excludes": [".git", "bench/results"]})
    dest = str(tmp_path / "{node_id}" / "job.bin")
    submit = ["ray", "job", "submit", "--address", head.dashboard, "--working-dir", "."]
    entry = ["python", "jobs/distribute.py", origin.url + "job.bin", "--dest", dest, "--json"]
    out = run(head, [*submit, "--runtime-env-json", excludes, "--", *entry])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = report_in(out.stdout)
    assert report["totals"]["nodes_ok"] == 1 and report["totals"]["nodes_failed"] == 0
    (node,) = report["nodes"]
    assert sha256_file(Path(node["path"])) == sha256_file(src)
    assert Path(node["path"]).parent.parent == tmp_path
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", out.stdout).group(0)
    assert job_status(head, job_id) == "SUCCEEDED"


@pytest.mark.parametrize("auth", ["token", "off"])
def test_rayfly_distribute_submit_follows_the_job(heads, auth, origin, origin_root, tmp_path):
    head = heads(auth)
    assert dashboard_status(head) == (401 if auth == "token" else 200)  # the mode it says
    src = make_file(origin_root / "submitted.bin", 3 * MiB, seed=42)
    dest = str(tmp_path / "{node_id}.bin")
    out = rayfly(
        head,
        "distribute", origin.url + "submitted.bin", "--dest", dest, "--json",
        "--submit", "--address", head.dashboard,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job_id = out.stderr.split("submitted job ", 1)[1].split()[0]
    assert job_status(head, job_id) == "SUCCEEDED"
    report = report_in(out.stdout)  # the job's logs, followed to the end
    (copy,) = list(tmp_path.iterdir())
    assert copy.name == report["nodes"][0]["node_id"] + ".bin"
    assert sha256_file(copy) == sha256_file(src) == report["nodes"][0]["sha256"]


def test_failed_job_exits_non_zero_with_its_logs(head, origin, tmp_path):
    out = rayfly(
        head, "distribute", origin.url + "no-such-file.bin", "--dest", str(tmp_path / "x.bin"),
        "--submit", "--address", head.dashboard,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "ended FAILED" in out.stderr
    assert "no-such-file.bin" in out.stderr
    assert not list(tmp_path.iterdir())


def test_submit_to_unreachable_dashboard_is_a_clear_error(tmp_path):
    address = f"http://127.0.0.1:{free_port()}"
    out = rayfly(
        None, "distribute", "http://127.0.0.1:1/f.bin", "--dest", str(tmp_path / "f.bin"),
        "--submit", "--address", address, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert f"cannot reach the Ray dashboard at {address}" in out.stderr


def test_job_manifests_are_well_formed():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((REPO / "jobs/runtime_env.yaml").read_text())
    RuntimeEnv(**env)  # raises on unknown or malformed fields
    job = yaml.safe_load((REPO / "jobs/rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "jobs/distribute.py" in job["spec"]["entrypoint"]
    RuntimeEnv(**yaml.safe_load(job["spec"]["runtimeEnvYAML"]))
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
