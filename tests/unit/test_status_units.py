"""Pure parts of the status/jobs/notebook layer, without Ray: plots, progress, job arguments,
runtime_env files, status text, pin matching."""

from __future__ import annotations

import functools
import io
import json
import shlex
import sys

import pytest

from rayfly import plot, submit
from rayfly.cli.distribute import load_runtime_env
from rayfly.errors import InvalidInput, MissingDependency
from rayfly.progress import ProgressBar
from rayfly.protocol import FileResult, NodeResult, PieceTime, flag_disagreements, summarize_node
from rayfly.report import Report
from rayfly.status import format_status


def sample_report() -> Report:
    a = NodeResult("aaaa1111", "10.0.0.1", "a", "/d/a", bytes=30, ok=True)
    a.timeline = [PieceTime(100.0, 10, "", 0.25), PieceTime(101.0, 20, "bbbb2222", 1.5)]
    b = NodeResult("bbbb2222", "10.0.0.2", "b", "/d/b", bytes=30, ok=True)
    b.timeline = [PieceTime(100.5, 30, "aaaa1111", 0.5)]
    return Report("http://o/f", "/d/{node_id}", [a, b], 30, 2.0, ["t1"])


def test_timeline_rows_count_from_the_first_piece():
    rows = plot.timeline_rows(sample_report())
    assert [(r["node_id"], r["time_s"], r["seconds"], r["cumulative_bytes"]) for r in rows] == [
        ("aaaa1111", 0.0, 0.25, 10),
        ("aaaa1111", 1.0, 1.5, 30),
        ("bbbb2222", 0.5, 0.5, 30),
    ]
    assert [(r["from_origin"], r["parent"]) for r in rows] == [
        (True, None),
        (False, "bbbb2222"),
        (False, "aaaa1111"),
    ]
    table = sample_report().timeline_table()
    assert table.num_rows == 3 and table.column_names == list(plot.TIMELINE_COLUMNS)


@pytest.mark.parametrize("name", ["pieces.csv", "pieces.parquet"])
def test_the_timeline_is_written_whole_as_csv_or_parquet(tmp_path, name):
    import pyarrow.csv
    import pyarrow.parquet

    target = tmp_path / name
    target.write_text("an older file\n")
    assert sample_report().write_timeline(target) == target
    if name.endswith(".csv"):  # an empty parent (the origin) reads back as null
        nulls = pyarrow.csv.ConvertOptions(strings_can_be_null=True)
        back = pyarrow.csv.read_csv(target, convert_options=nulls).to_pylist()
    else:
        back = pyarrow.parquet.read_table(target).to_pylist()
    assert back == plot.timeline_rows(sample_report())
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("pieces.txt", r"name it \*\.csv or \*\.parquet"),
        ("missing/pieces.csv", r"directory .*missing' does not exist or is not writable"),
        ("adir.csv", r"is a directory"),
    ],
)
def test_a_timeline_path_that_cannot_work_is_refused_before_anything_runs(tmp_path, name, message):
    (tmp_path / "adir.csv").mkdir()
    with pytest.raises(InvalidInput, match=message):
        plot.check_timeline_path(tmp_path / name)
    with pytest.raises(InvalidInput, match=message):
        sample_report().write_timeline(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.csv"]


def test_a_nodes_piece_times_are_summed_up_as_median_and_p90():
    node = NodeResult("cccc3333", "10.0.0.3", "c", "/d/c")
    times = [7, 1, 10, 3, 5, 2, 9, 4, 8, 6]
    node.timeline = [PieceTime(100.0 + i, 1, "aaaa1111", float(s)) for i, s in enumerate(times)]
    node.files = [FileResult("c", "/d/c", 10, "x" * 64, 10.0, 0, 10, True)]
    summarize_node(node, single=True)
    assert (node.piece_p50_s, node.piece_p90_s) == (5.0, 9.0)
    assert {"piece_p50_s", "piece_p90_s"} <= set(node.row())
    empty = summarize_node(NodeResult("dddd4444", "10.0.0.4", "d", "/d/d"), single=True)
    assert (empty.piece_p50_s, empty.piece_p90_s) == (0.0, 0.0) and empty.parents == {}


def test_a_nodes_pieces_are_summed_up_per_parent_in_the_json():
    node = NodeResult("cccc3333", "10.0.0.3", "c", "/d/c")
    node.timeline = [PieceTime(100.0 + i, 2, "aaaa1111", float(s)) for i, s in enumerate([3, 1, 2])]
    node.timeline += [PieceTime(104.0, 5, "", 0.5), PieceTime(105.0, 7, "bbbb2222", 4.0)]
    node.files = [FileResult("c", "/d/c", 18, "x" * 64, 10.0, 5, 13, True)]
    summarize_node(node, single=True)
    assert node.parents == {
        "aaaa1111": {"pieces": 3, "bytes": 6, "p50_s": 2.0, "p90_s": 3.0},
        "bbbb2222": {"pieces": 1, "bytes": 7, "p50_s": 4.0, "p90_s": 4.0},
        "origin": {"pieces": 1, "bytes": 5, "p50_s": 0.5, "p90_s": 0.5},
    }
    report = Report("http://o/c", "/d/c", [node], 18, 10.0)
    assert json.loads(report.to_json())["nodes"][0]["parents"] == node.parents
    assert "parents" not in node.row()  # the flat table keeps its columns


def _node(name: str, files: list[tuple[str, str]]) -> NodeResult:
    node = NodeResult(name * 8, "10.0.0.1", name, f"/d/{name}")
    node.files = [
        FileResult(rel, f"/d/{name}/{rel}", 4, sha, 1.0, 0, 4, True) for rel, sha in files
    ]
    return summarize_node(node, single=False)


def test_copies_that_differ_between_nodes_fail_everywhere_and_say_so():
    good, bad = "a" * 64, "b" * 64
    nodes = [_node(n, [("x", good), ("y", "c" * 64)]) for n in "pq"]
    nodes.append(_node("r", [("x", bad), ("y", "c" * 64)]))
    assert flag_disagreements(nodes, single=False) == 3
    report = Report("s3://b/p/", "/d/{node_id}/", nodes, 8, 1.0)
    assert not report.ok and report.nodes_failed == 3
    for node in nodes:
        x, y = node.files
        assert not x.ok and y.ok and node.bytes == 4 and node.sha256 is None
        assert f"sha256 {good[:12]} on 2 nodes, {bad[:12]} on 1 node" in str(x.error)
        assert str(node.error).startswith("x: the nodes' copies differ")
    same = [_node(n, [("x", good)]) for n in "pq"]
    assert flag_disagreements(same, single=False) == 0 and all(n.ok for n in same)


def test_plot_draws_two_lines_per_node():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = sample_report().plot()
    assert len(ax.get_lines()) == 4
    assert ax.get_ylabel() == "MiB received"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependency, match=r"pip install matplotlib"):
        sample_report().plot()


def test_to_pandas_without_pandas_names_the_alternative(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MissingDependency, match=r"pip install pandas.*to_arrow"):
        sample_report().to_pandas()


def test_progress_bar_with_and_without_tqdm():
    stream = io.StringIO()
    with ProgressBar("x", stream=stream) as bar:
        if bar._tqdm is not None:
            bar._tqdm = None  # the fallback: one line per tenth
        for done in (0, 5, 50, 100):
            bar(done, 100, 0, 2)
    assert stream.getvalue().splitlines() == [
        "x: 0% of 100 bytes, nodes 0/2",
        "x: 50% of 100 bytes, nodes 0/2",
        "x: 100% of 100 bytes, nodes 0/2",
    ]
    tqdm = pytest.importorskip("tqdm")
    out = io.StringIO()
    with ProgressBar("y") as bar:
        bar._tqdm = functools.partial(tqdm.tqdm, file=out)
        bar(512, 1024, 1, 2)
        assert bar._bar.n == 512 and bar._bar.total == 1024
    assert "nodes 1/2" in out.getvalue()


def test_job_entrypoint_round_trips_every_option():
    args = submit.distribute_args(
        "s3://b/p/",
        "/data/{node_id}",
        nodes="2",
        piece_size=4 << 20,
        storage_options=("endpoint_url=http://127.0.0.1:9000", "anon=true"),
        tag="v 1",
        pin=True,
        as_json=True,
    )
    cmd = submit.entrypoint(args)
    assert cmd.startswith("python -m rayfly.cli distribute ")
    assert shlex.split(cmd)[4:] == args
    assert args[-2:] == ["--pin", "--json"]
    assert "--storage-option" in args and "--sha256" not in args
    assert "--source-node" not in args


def test_job_forwards_the_source_node():
    from rayfly.cli.distribute import distribute

    args = submit.distribute_args("/ckpt/x", "/data/x", source_node="worker-1")
    assert args[args.index("--source-node") + 1] == "worker-1"
    ctx = distribute.make_context("distribute", list(args))
    assert ctx.params["source_node"] == "worker-1" and ctx.params["source"] == "/ckpt/x"


@pytest.mark.parametrize(
    ("address", "message"),
    [(None, "--submit needs the dashboard address"), ("ray://h:10001", "over http")],
)
def test_submit_address_must_be_the_dashboard(address, message):
    with pytest.raises(InvalidInput, match=message):
        submit.client(address)


def test_runtime_env_file(tmp_path):
    good = tmp_path / "env.yaml"
    good.write_text("env_vars: {A: '1'}\nworking_dir: .\n")
    assert load_runtime_env(str(good)) == {"env_vars": {"A": "1"}, "working_dir": "."}
    assert load_runtime_env(None) == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(InvalidInput, match="must hold a mapping"):
        load_runtime_env(str(bad))
    with pytest.raises(InvalidInput, match="cannot read it"):
        load_runtime_env(str(tmp_path / "missing.yaml"))


def test_status_text():
    text = format_status(
        {
            "cluster": "10.0.0.1:6379",
            "nodes_alive": 2,
            "scheduler": False,
            "tasks": [],
            "peers": [{"node_id": "n1", "error": "no answer within 10.0s"}],
            "mirrors": [{"node_id": "n2", "healthy": False, "error": "ActorDiedError"}],
            "pins": [],
        }
    )
    assert "rayfly has not run on this cluster yet" in text
    assert "n1 unreachable: no answer" in text
    assert "UNHEALTHY ActorDiedError" in text


def test_status_text_says_why_pieces_asked_for_were_not_given():
    task = {
        "task_id": "0123456789abcdef0123", "state": "running", "length": 8 << 20, "pieces": 8,
        "nodes_done": 0, "peers": 2, "url": "http://o/x",
        "asks": {"asked": 12, "given": 2, "busy": 8, "origin": 0, "none": 2},
    }  # fmt: skip
    doc = {"cluster": "c", "nodes_alive": 2, "scheduler": True, "peers": [], "mirrors": []}
    text = format_status({**doc, "tasks": [task], "pins": []})
    assert "pieces asked=12 given=2 not given: holders busy=8 origin=0 none left=2" in text
    assert "asked=" not in format_status({**doc, "tasks": [{**task, "asks": {}}], "pins": []})


def test_status_text_says_when_a_cache_cannot_reserve_task_space():
    peer = {
        "node_id": "n1", "node_ip": "10.0.0.1", "cache_id": "c1", "cache_used": 0,
        "cache_quota": 1 << 30, "uploads": 0, "pieces_served": 0, "tasks_begun_unreserved": 2,
    }  # fmt: skip
    doc = {"cluster": "c", "nodes_alive": 1, "scheduler": True, "tasks": [], "mirrors": []}
    text = format_status({**doc, "peers": [peer], "pins": []})
    assert "space not reserved for 2 task(s): no fallocate on its disk" in text
    peer["tasks_begun_unreserved"] = 0
    assert "not reserved" not in format_status({**doc, "peers": [peer], "pins": []})
