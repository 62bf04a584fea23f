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


def test_a_timeline_file_the_run_could_not_write_fails_before_it_runs(tmp_path):
    dest = ["/etc/hostname", "--dest", str(tmp_path / "{node_id}")]
    result = run(*dest, "--timeline", str(tmp_path / "pieces.txt"))
    assert result.exit_code == 2 and "name it *.csv or *.parquet" in result.output
    result = run(*dest, "--timeline", str(tmp_path / "no" / "pieces.csv"))
    assert result.exit_code == 2 and "does not exist or is not writable" in result.output
    result = run(*dest, "--timeline", str(tmp_path / "pieces.csv"), "--submit")
    assert result.exit_code == 2 and "run without --submit" in result.output
    assert "--json" in result.output  # where a job says where its pieces came from
    assert list(tmp_path.iterdir()) == []


def test_insecure_means_a_registry_name_on_distribute_and_mirror():
    from rayfly.cli.common import plain_http
    from rayfly.cli.distribute import distribute
    from rayfly.cli.mirror import preheat, start

    image = ["--image", "127.0.0.1:5000/team/app:dev"]
    named = distribute.make_context("distribute", [*image, "--insecure", "127.0.0.1:5000"])
    bare = distribute.make_context("distribute", [*image, "--insecure"])
    other = distribute.make_context("distribute", [*image, "--insecure", "lab"])
    assert plain_http("127.0.0.1:5000", named.params["insecure"])
    assert plain_http("127.0.0.1:5000", bare.params["insecure"])  # the old flag still works
    assert not plain_http("127.0.0.1:5000", other.params["insecure"])
    assert not plain_http("127.0.0.1:5000", ())
    args = ["--insecure", "Lab", "--insecure", "127.0.0.1:5000"]
    assert start.make_context("start", args).params["insecure"] == ("Lab", "127.0.0.1:5000")
    pre = preheat.make_context("preheat", ["127.0.0.1:5000/a:1", "--insecure", "127.0.0.1:5000"])
    assert plain_http("127.0.0.1:5000", pre.params["insecure"])
    assert plain_http("lab", ("LAB",))
