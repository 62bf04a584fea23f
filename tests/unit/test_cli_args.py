"""Argument checks of `rayfly distribute` that fail before any cluster is touched."""

from click.testing import CliRunner

from rayfly.cli import main


def run(*args: str):
    return CliRunner().invoke(main, ["distribute", *args])


def test_source_and_dest_or_image_are_required():
    result = run()
    assert result.exit_code == 2 and "give SOURCE and --dest" in result.output
    assert "give SOURCE and --dest" in run("s3://b/k").output


def test_image_excludes_source_and_dest():
    result = run("s3://b/k", "--image", "docker.io/library/alpine:3")
    assert result.exit_code == 2 and "not both" in result.output


def test_bad_dest_template_fails_fast():
    result = run("/etc/hostname", "--dest", "/tmp/{nodeid}/x")
    assert result.exit_code == 2 and "unknown placeholder {nodeid}" in result.output
