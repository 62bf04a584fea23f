"""--nodes selectors (pure): counts, shares, labels, resources, ids, the head, intersections."""

from __future__ import annotations

import pytest

from rayfly.errors import InvalidInput, NodeNotFound
from rayfly.nodes import HEAD_RESOURCE, NodeInfo, select_nodes


def node(nid: str, head: bool = False, gpu: float = 0, **labels: str) -> NodeInfo:
    resources = {
        "CPU": 4.0,
        **({"GPU": gpu} if gpu else {}),
        **({HEAD_RESOURCE: 1.0} if head else {}),
    }
    return NodeInfo(nid, "10.0.0." + nid[-1], "h" + nid, labels, resources)


NODES = [
    node("aa1", head=True, zone="a"),
    node("bb2", gpu=1, zone="a", **{"accelerator-type": "H100"}),
    node("cc3", gpu=2, zone="b", **{"accelerator-type": "H100"}),
    node("dd4", zone="b"),
]


def ids(chosen: list[NodeInfo]) -> list[str]:
    return [n.node_id for n in chosen]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", ["aa1", "bb2", "cc3", "dd4"]),
        (None, ["aa1", "bb2", "cc3", "dd4"]),
        (2, ["aa1", "bb2"]),
        ("3", ["aa1", "bb2", "cc3"]),
        ("50%", ["aa1", "bb2"]),
        ("1%", ["aa1"]),  # rounds up: at least one node
        ("51%", ["aa1", "bb2", "cc3"]),
        ("100%", ["aa1", "bb2", "cc3", "dd4"]),
        ("label:accelerator-type=H100", ["bb2", "cc3"]),
        ("resource:GPU", ["bb2", "cc3"]),
        ("cc,dd", ["cc3", "dd4"]),
        (["aa1", "cc3"], ["aa1", "cc3"]),  # ids given separately: any of them
        (["label:zone=b", "cc", "aa"], ["cc3"]),
        (["label:zone=b", "resource:GPU"], ["cc3"]),
        (["label:zone=a", "50%"], ["aa1"]),
        (["50%", "label:zone=b"], ["cc3"]),  # filters first, then the share of what is left
        ("id:cc,dd", ["cc3", "dd4"]),
        (["id:aa", "label:zone=a"], ["aa1"]),
    ],
)
def test_selectors(spec, expected):
    assert ids(select_nodes(spec, NODES)) == expected


def test_exclude_head():
    assert ids(select_nodes("all", NODES, exclude_head=True)) == ["bb2", "cc3", "dd4"]
    assert ids(select_nodes("50%", NODES, exclude_head=True)) == ["bb2", "cc3"]
    assert NODES[0].is_head and not NODES[1].is_head


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("150%", InvalidInput, "at most 100%"),
        ("0%", InvalidInput, "more than 0%"),
        ("fast%", InvalidInput, "share"),
        ("5", InvalidInput, "4 node(s) to choose from"),
        ("5", InvalidInput, "give id:5"),
        ("label:zone", InvalidInput, "label:KEY=VALUE"),
        ("resource:", InvalidInput, "resource:NAME"),
        (["2", "50%"], InvalidInput, "one count or share"),
        ("label:zone=c", NodeNotFound, "matches no alive node"),
        ("label:accelerator-type=A100", NodeNotFound, "labels: accelerator-type=H100"),
        ("resource:TPU", NodeNotFound, "matches no alive node"),
        ("ee", NodeNotFound, "'ee' is not an alive node"),
    ],
)
def test_bad_selectors_are_clear_errors(spec, error, message):
    with pytest.raises(error) as info:
        select_nodes(spec, NODES)
    assert message in str(info.value)


def test_nothing_left_without_the_head():
    with pytest.raises(NodeNotFound, match="without the head"):
        select_nodes("aa", NODES, exclude_head=True)


DIGIT_NODES = [node("5674875569ab"), node("5674875570cd"), node("12ef"), node("99aa")]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("5674875569", ["5674875569ab"]),  # 10 digits: an id prefix (CI once drew such an id)
        ("2", ["5674875569ab", "5674875570cd"]),  # 6 digits or fewer: a count
        ("id:12", ["12ef"]),  # an id prefix that would read as a count
        ("id:5674875570", ["5674875570cd"]),
    ],
)
def test_digits_are_a_count_when_short_and_an_id_when_long(spec, expected):
    assert ids(select_nodes(spec, DIGIT_NODES)) == expected


def test_a_long_digit_prefix_of_two_nodes_is_refused_as_ambiguous():
    with pytest.raises(NodeNotFound, match="'5674875' matches several nodes"):
        select_nodes("5674875", DIGIT_NODES)
