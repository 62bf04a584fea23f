"""Nodes and how a user picks them: ``--nodes`` selectors, pure functions without Ray.

A selector is one of:

- ``all``: every alive node;
- ``N``: the first N nodes (in a stable order), ``P%``: that share of them, rounded up, at least 1;
- ``label:KEY=VALUE``: nodes whose Ray label KEY is VALUE (``ray start --labels``);
- ``resource:NAME``: nodes that have the custom or built-in resource NAME (``GPU``, ...);
- ``ID[,ID...]`` or ``id:ID[,ID...]``: nodes by id (a unique prefix is enough); ids given
  separately add up. Digits alone are a count up to :data:`COUNT_DIGITS` of them and an id
  prefix when longer (``5674875569`` is a node, ``12`` is twelve nodes); ``id:`` says it outright.

Several selectors of different kinds intersect: the filters (labels, resources, ids,
``exclude_head``) first, then a count or share of what they left.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from rayfly.errors import InvalidInput, NodeNotFound

HEAD_RESOURCE = "node:__internal_head__"
COUNT_DIGITS = 6
"""Digits alone are a count up to this many of them (a million nodes); longer, an id prefix."""


@dataclass(frozen=True)
class NodeInfo:
    """An alive Ray node: its id, address, host name, labels and resources."""

    node_id: str
    node_ip: str
    hostname: str
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    resources: dict[str, float] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_head(self) -> bool:
        """True for the head node (where the GCS runs)."""
        return HEAD_RESOURCE in self.resources


Spec = str | int | list[str] | None


def _as_selectors(spec: Spec) -> list[str]:
    if spec is None:
        return ["all"]
    if isinstance(spec, int):
        return [str(spec)]
    if isinstance(spec, str):
        return [spec]
    return [str(s) for s in spec] or ["all"]


def select_nodes(spec: Spec, nodes: list[NodeInfo], exclude_head: bool = False) -> list[NodeInfo]:
    """The nodes that ``spec`` (one selector, or a list of them that intersect) picks.

    Raises :class:`InvalidInput` for a malformed selector and :class:`NodeNotFound` when the
    selectors match no node (or an id matches none or several).
    """
    selectors = [s.strip() for s in _as_selectors(spec)]
    counts = [s for s in selectors if _is_count(s)]
    if len(counts) > 1:
        raise InvalidInput(f"--nodes: give one count or share, not {', '.join(counts)}")
    chosen = [n for n in nodes if not (exclude_head and n.is_head)]
    ids = [_id_part(s) for s in selectors if _is_id(s)]
    if ids:  # node ids, repeated or comma-separated, are one selector: any of them
        chosen = _filter(",".join(ids), chosen, nodes)
    for sel in selectors:
        if ":" in sel and not _is_id(sel):
            chosen = _filter(sel, chosen, nodes)
    if not chosen:
        what = " and ".join(selectors) + (" without the head" if exclude_head else "")
        raise NodeNotFound(f"--nodes {what} matches no alive node; {_describe(nodes)}")
    return _take(counts[0], chosen, len(nodes)) if counts else chosen


def _is_count(sel: str) -> bool:
    return (sel.isdigit() and len(sel) <= COUNT_DIGITS) or sel.endswith("%")


def _is_id(sel: str) -> bool:
    return sel.startswith("id:") or (sel != "all" and ":" not in sel and not _is_count(sel))


def _id_part(sel: str) -> str:
    return sel.removeprefix("id:")


def _take(sel: str, chosen: list[NodeInfo], alive: int) -> list[NodeInfo]:
    if sel.endswith("%"):
        try:
            share = float(sel[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise InvalidInput(f"--nodes {sel}: a share must be more than 0% and at most 100%")
        return chosen[: max(1, math.ceil(len(chosen) * share / 100))]
    n = int(sel)
    if not 1 <= n <= len(chosen):
        raise InvalidInput(
            f"--nodes {sel}: {len(chosen)} node(s) to choose from ({alive} alive); "
            f"for a node whose id starts with {sel}, give id:{sel}"
        )
    return chosen[:n]


def _filter(sel: str, chosen: list[NodeInfo], alive: list[NodeInfo]) -> list[NodeInfo]:
    kind, sep, arg = sel.partition(":")
    if sep and kind == "label":
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise InvalidInput(f"--nodes {sel}: use label:KEY=VALUE, e.g. label:zone=us-east-1a")
        return [n for n in chosen if n.labels.get(key) == value]
    if sep and kind == "resource":
        if not arg:
            raise InvalidInput(f"--nodes {sel}: use resource:NAME, e.g. resource:GPU")
        return [n for n in chosen if n.resources.get(arg, 0) > 0]
    ids = {n.node_id for n in _by_ids(sel.split(","), alive)}
    return [n for n in chosen if n.node_id in ids]


def _by_ids(wanted: Iterable[str], nodes: list[NodeInfo]) -> list[NodeInfo]:
    out = []
    for w in (x.strip() for x in wanted if x.strip()):
        matches = [n for n in nodes if n.node_id.startswith(w)]
        if len(matches) != 1:
            what = "is not an alive node" if not matches else "matches several nodes"
            raise NodeNotFound(
                f"--nodes: {w!r} {what} (selectors: all, N, P%, label:K=V, resource:NAME, "
                f"ids or id:IDS); {_describe(nodes)}"
            )
        out.append(matches[0])
    return out


def _describe(nodes: list[NodeInfo]) -> str:
    ids = ", ".join(n.node_id[:12] for n in nodes) or "none"
    labels = sorted({f"{k}={v}" for n in nodes for k, v in n.labels.items() if "ray.io/" not in k})
    text = f"alive nodes: {ids}"
    return text + (f"; labels: {', '.join(labels)}" if labels else "")


def _label(node: NodeInfo) -> str:
    return f"{node.node_id[:12]} ({node.node_ip}, {node.hostname})"


def match_node(spec: str, nodes: list[NodeInfo], flag: str = "--source-node") -> NodeInfo:
    """The one node ``spec`` names: a node id prefix, an IP address or a hostname.

    Raises :class:`NodeNotFound` naming the matches when several nodes match (simulated nodes
    of one machine share IP and hostname: use an id prefix), or the alive nodes when none does.
    """
    wanted = spec.strip()
    matches = [
        n
        for n in nodes
        if wanted and (n.node_id.startswith(wanted) or wanted in (n.node_ip, n.hostname))
    ]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listed = ", ".join(map(_label, matches))
        raise NodeNotFound(
            f"{flag} {spec!r} matches {len(matches)} nodes: {listed}; give a node id prefix"
        )
    alive = ", ".join(map(_label, nodes)) or "none"
    raise NodeNotFound(
        f"{flag} {spec!r} is not an alive node (id prefix, IP or hostname); alive nodes: {alive}"
    )
