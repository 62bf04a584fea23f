"""Container runtime configuration that points a node's engine at its rayfly mirror.

- containerd: ``<hosts-dir>/<registry>/hosts.toml`` (CRI and ``ctr --hosts-dir``); containerd
  adds ``?ns=<registry>`` to every request it sends to a mirror, which selects the upstream.
- CRI-O / podman: a ``[[registry]]`` entry per registry with a ``[[registry.mirror]]`` at
  ``<mirror>/<registry>`` in ``registries.conf``. These engines send no ``ns``: the registry's
  host as the first path component selects the upstream.
- Docker: ``registry-mirrors`` in ``daemon.json`` (Docker Hub only, by Docker's design).

Writers never lose an operator's file: an existing one is kept aside once as
``<file>.rayfly-orig`` and the new one is written atomically (temp file, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rayfly.errors import InvalidInput
from rayfly.proxy.oci import DOCKER_HUB, DOCKER_HUB_HOST, validate_registry

DEFAULT_MIRROR = "http://127.0.0.1:65001"
DEFAULT_HOSTS_DIR = "/etc/containerd/certs.d"
BACKUP_SUFFIX = ".rayfly-orig"


def _check_mirror(mirror: str) -> str:
    if not mirror.startswith(("http://", "https://")) or '"' in mirror or "\n" in mirror:
        raise InvalidInput(f"mirror endpoint {mirror!r} must be an http(s):// URL")
    return mirror.rstrip("/")


def default_server(registry: str) -> str:
    """The upstream endpoint containerd falls back to: Docker Hub's host for ``docker.io``."""
    return f"https://{DOCKER_HUB_HOST}" if registry == DOCKER_HUB else f"https://{registry}"


def containerd_hosts_toml(
    registry: str, mirror: str = DEFAULT_MIRROR, server: str | None = None, fallback: bool = True
) -> str:
    """The text of a containerd ``hosts.toml`` that sends pulls of ``registry`` to ``mirror``.

    With ``fallback`` the upstream stays the ``server``, used if the mirror fails (and for
    pushes). Without, the mirror is the server and the only host: containerd asks every host
    of the file for a blob whatever capabilities it lists (1.6 to 2.x), and adds the registry
    itself when no server is written, so nothing else keeps pulls off the registry. Pushes to
    ``registry`` then fail: the mirror serves pulls only.
    """
    registry, mirror = validate_registry(registry), _check_mirror(mirror)
    pulls = ['capabilities = ["pull", "resolve"]']
    if mirror.startswith("https://"):
        pulls.append("skip_verify = false")
    if fallback:
        server = _check_mirror(server or default_server(registry))
        lines = [f'server = "{server}"', "", f'[host."{mirror}"]', *(f"  {x}" for x in pulls)]
    elif server is not None:
        msg = "a server (--server) is the fallback upstream: give it or --no-fallback, not both"
        raise InvalidInput(msg)
    else:
        # no host besides the server, but the table must be there: containerd 1.6 reads a file
        # without it as invalid, and then pulls from the registry itself
        lines = [f'server = "{mirror}"', *pulls, "", "[host]"]
    return "\n".join(lines) + "\n"


def write_containerd_hosts(
    registry: str,
    hosts_dir: str | Path = DEFAULT_HOSTS_DIR,
    mirror: str = DEFAULT_MIRROR,
    server: str | None = None,
    fallback: bool = True,
) -> Path:
    """Write ``<hosts_dir>/<registry>/hosts.toml``; an existing file is kept aside first."""
    registry = validate_registry(registry)
    path = Path(hosts_dir) / registry / "hosts.toml"
    write_keeping_original(path, containerd_hosts_toml(registry, mirror, server, fallback))
    return path


def registries_conf_entry(
    registry: str = DOCKER_HUB, mirror: str = DEFAULT_MIRROR, insecure: bool | None = None
) -> str:
    """A ``registries.conf`` (v2) entry for CRI-O and podman: ``registry`` mirrored at
    ``<mirror>/<registry>``.

    CRI-O and podman send no ``ns``; the registry's host as the first path component tells the
    mirror which upstream a pull is for, so one mirror serves several registries. A port is
    written after ``__`` (``127.0.0.1__5000``): image references allow no ``:`` in a path.
    """
    registry, mirror = validate_registry(registry), _check_mirror(mirror)
    host = mirror.split("://", 1)[1]
    plain = mirror.startswith("http://") if insecure is None else insecure
    return (
        "[[registry]]\n"
        f'prefix = "{registry}"\n'
        f'location = "{registry}"\n\n'
        "[[registry.mirror]]\n"
        f'location = "{host}/{registry.replace(":", "__")}"\n'
        f"insecure = {'true' if plain else 'false'}\n"
    )


def registries_conf(
    registries: list[str], mirror: str = DEFAULT_MIRROR, insecure: bool | None = None
) -> str:
    """A ``registries.conf`` drop-in with one entry per registry (see
    :func:`registries_conf_entry`)."""
    if not registries:
        raise InvalidInput("name at least one registry to mirror")
    return "\n".join(registries_conf_entry(r, mirror, insecure) for r in dict.fromkeys(registries))


def docker_daemon_json(existing: str | None = None, mirror: str = DEFAULT_MIRROR) -> str:
    """``daemon.json`` with ``mirror`` first in ``registry-mirrors``, other settings kept."""
    mirror = _check_mirror(mirror)
    try:
        doc = json.loads(existing) if existing and existing.strip() else {}
    except ValueError:
        raise InvalidInput("existing daemon.json is not valid JSON: fix it first") from None
    if not isinstance(doc, dict):
        raise InvalidInput("existing daemon.json is not a JSON object")
    mirrors = [m for m in doc.get("registry-mirrors", []) if m.rstrip("/") != mirror]
    doc["registry-mirrors"] = [mirror, *mirrors]
    return json.dumps(doc, indent=2) + "\n"


def write_docker_daemon_json(path: str | Path, mirror: str = DEFAULT_MIRROR) -> Path:
    """Add the mirror to the ``daemon.json`` at ``path`` (kept aside first if it exists)."""
    path = Path(path)
    existing = path.read_text() if path.exists() else None
    write_keeping_original(path, docker_daemon_json(existing, mirror))
    return path


def write_keeping_original(path: Path, text: str) -> None:
    """Atomically write ``text`` to ``path``; keep a pre-existing file as ``path.rayfly-orig``.

    The original is saved only once, so re-running never overwrites it with rayfly's own file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if path.exists() and not backup.exists():
        backup.write_bytes(path.read_bytes())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
