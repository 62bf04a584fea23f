"""The testbed report's per-run phases, on a run with known link samples."""

from bench.broadcast.report import phases, phases_table


def run(series, reads_mib):
    return {
        "method": "rayfly",
        "run": 0,
        "n": 2,
        "extra": {"piece_size": 2 << 20},
        "links": {"origin": {"tx_done_s": 8.0}, "series": {"hosts_rx": series}},
        "hosts": [
            {"seconds": s, "verified": True, "bytes_from_origin": r << 20}
            for s, r in zip((9.5, 10.0), reads_mib, strict=True)
        ],
    }


def test_phases_split_the_link_samples_at_the_start_and_the_origin_s_end():
    # host 0 takes the origin's whole output for the first second; both are busy later
    h0 = [[0.5, 0.9], [1.0, 0.9], [2.0, 0.5], [3.0, 0.5], [6.5, 0.9], [7.5, 0.9], [8.5, 0.2]]
    h1 = [[0.5, 0.0], [1.0, 0.1], [2.0, 0.5], [3.0, 0.5], [6.5, 0.7], [7.5, 0.7], [8.5, 0.2]]
    p = phases(run([h0, h1], (300, 212)))
    assert p["makespan_s"] == 10.0
    assert p["links_start"] == (0.9 + 0.9 + 0.5 + 0.5 + 0.0 + 0.1 + 0.5 + 0.5) / 8
    assert p["links_main"] == (0.9 + 0.9 + 0.7 + 0.7) / 4
    assert p["first_busiest"] == 0.9
    assert p["reads_mib"] == [300, 212]
    assert "| 0 | 2 MiB | 10.00 s | 8.0 s | 0.49 | 0.80 | 0.90 | 212-300 |" in phases_table(
        {"runs": [run([h0, h1], (300, 212))]}
    )
