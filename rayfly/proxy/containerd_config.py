"""containerd's own ``config.toml``: the ``config_path`` that makes its CRI plugin read hosts.toml.

containerd reads ``<hosts-dir>/<registry>/hosts.toml`` only when the CRI plugin's registry
``config_path`` names the hosts directory. Where that key lives depends on the schema of the
config file, not only on the binary:

- schema ``version = 2`` (containerd 1.x; 2.x still reads and migrates it):
  ``[plugins."io.containerd.grpc.v1.cri".registry] config_path = ...``
- schema ``version = 3`` (containerd 2.x):
  ``[plugins."io.containerd.cri.v1.images".registry] config_path = ...``

An existing file decides by its ``version``; a missing one by the installed containerd's major
version (``containerd --version``). The merge keeps every other setting; the caller writes it
with :func:`rayfly.proxy.runtimes.write_keeping_original`, so the operator's file (and its
comments) stays aside as ``config.toml.rayfly-orig``. containerd reads ``config.toml`` only when
it starts: a restart is needed, while hosts.toml changes apply at once.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Any

import tomli_w

from rayfly.errors import InvalidInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_TOML = "/etc/containerd/config.toml"

# config schema version -> the plugin table whose "registry" holds config_path
_REGISTRY_PLUGIN = {2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.images"}
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.\d+)?")


def parse_containerd_version(text: str) -> int:
    """The major version in ``containerd --version`` output, e.g. ``containerd github.com/...
    1.6.20~ds1 ...`` -> 1; raises :class:`InvalidInput` if it names no version."""
    words = text.split()
    for word in words[2:] + words[:2]:  # "containerd <module path> <version> <revision>"
        m = _VERSION.match(word)
        if m:
            return int(m.group(1))
    raise InvalidInput(f"cannot read a containerd version from {text.strip()!r}")


def installed_containerd_major(binary: str = "containerd") -> int | None:
    """The major version of the containerd on this machine, or None if there is none."""
    path = shutil.which(binary)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_containerd_version(out.stdout or out.stderr)


def schema_for(existing: dict[str, Any] | None, containerd_major: int | None) -> int:
    """Which config schema to write: the existing file's, else the one of the installed major
    version (1.x: 2, 2.x and later: 3; unknown: 2, which every containerd since 1.5 reads)."""
    if existing:
        version = existing.get("version", 1)
        if version not in _REGISTRY_PLUGIN:
            raise InvalidInput(
                f"containerd config schema version {version!r} is not supported: migrate it "
                "first with `containerd config migrate`"
            )
        return int(version)
    return 3 if containerd_major is not None and containerd_major >= 2 else 2


def with_config_path(
    existing_text: str | None, hosts_dir: str, containerd_major: int | None
) -> str:
    """``config.toml`` text with the CRI registry ``config_path`` set to ``hosts_dir``, every
    other setting kept (comments are not: the original is kept aside by the writer)."""
    try:
        doc = tomllib.loads(existing_text) if existing_text and existing_text.strip() else {}
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"existing containerd config is not valid TOML: {exc}") from None
    schema = schema_for(doc, containerd_major)
    doc["version"] = schema
    plugins = _table(doc, "plugins")
    registry = _table(_table(plugins, _REGISTRY_PLUGIN[schema]), "registry")
    if registry.get("mirrors") or registry.get("configs"):
        raise InvalidInput(
            "containerd's config sets registry 'mirrors'/'configs', which containerd ignores "
            "once config_path is set: move them to hosts.toml files first"
        )
    registry["config_path"] = hosts_dir
    return tomli_w.dumps(doc)


def _table(parent: dict[str, Any], key: str) -> dict[str, Any]:
    node = parent.setdefault(key, {})
    if not isinstance(node, dict):
        raise InvalidInput(f"containerd config: {key!r} is not a table")
    return node
