"""--include / --exclude / --max-files on a prefix's listing (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from rayfly.errors import InvalidInput, SourceNotFound
from rayfly.filters import select_files


@dataclass(frozen=True)
class F:
    relpath: str


FILES = [
    F(p)
    for p in [
        "config.json",
        "model.safetensors",
        "sub/model-2.safetensors",
        "sub/config.json",
        "README.md",
        "opt/state.pt",
    ]
]


def rel(files):
    return [f.relpath for f in files]


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ((), (), [f.relpath for f in FILES]),
        (
            ("*.safetensors", "config.json"),
            (),
            ["config.json", "model.safetensors", "sub/model-2.safetensors"],
        ),
        (
            (),
            ("opt/*", "*.md"),
            ["config.json", "model.safetensors", "sub/model-2.safetensors", "sub/config.json"],
        ),
        (("sub/*",), ("*.json",), ["sub/model-2.safetensors"]),
        (("*config.json",), (), ["config.json", "sub/config.json"]),
    ],
)
def test_patterns(include, exclude, expected):
    assert rel(select_files(FILES, "s3://b/p/", include, exclude)) == expected


def test_nothing_matches_is_a_clear_error():
    with pytest.raises(
        SourceNotFound, match=r"none of the 6 file\(s\) under s3://b/p/ matches --include '\*.bin'"
    ):
        select_files(FILES, "s3://b/p/", ["*.bin"])


def test_max_files_says_how_many():
    with pytest.raises(InvalidInput, match=r"holds 6 file.*more than --max-files 5"):
        select_files(FILES, "s3://b/p/", max_files=5)
    assert len(select_files(FILES, "s3://b/p/", max_files=6)) == 6


@pytest.mark.parametrize(
    ("include", "exclude", "max_files"), [([""], [], None), ([], ["  "], None), ([], [], 0)]
)
def test_bad_patterns(include, exclude, max_files):
    with pytest.raises(InvalidInput):
        select_files(FILES, "s3://b/p/", include, exclude, max_files)
