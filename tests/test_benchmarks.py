"""Every benchmark runs in its quick mode and ends with its figures, one line of JSON.

A benchmark nothing runs breaks unnoticed (benchmarks/fleet.py did). Here
each runs as `python benchmarks/NAME.py --quick`: small sizes, the steps of
its full run. Its figures are checked for sense (positive, counted right),
never for speed: the machine is shared, and only full runs are quoted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN
from sshd import require_openssh

ROOT = Path(__file__).resolve().parents[1]


def quick(script: str, *args: str) -> dict:
    """Run SCRIPT --quick with this venv's python: its figures, the last line of its output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    proc = subprocess.run([sys.executable, script, "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) > 1 and not _json_object(lines[-2]), \
        f"{script}: figures for people first, then exactly one line of JSON:\n{proc.stdout[-2000:]}"
    figures = _json_object(lines[-1])
    assert figures is not None, f"{script}: its last line is no JSON object: {lines[-1]!r}"
    return figures


def _json_object(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def positive(figures: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(figures[key], int | float) and figures[key] > 0, (key, figures[key])


def test_every_benchmark_has_a_quick_run_here():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")} - {"timing.py"}
    tested = set(re.findall(r'quick\("benchmarks/(\w+\.py)"', Path(__file__).read_text()))
    assert scripts == tested


def test_claim():
    figures = quick("benchmarks/claim.py")
    assert (figures["packages"], figures["rules"], figures["bulk_lines"]) == (200, 40, 2000)
    positive(figures, "floor_claims_per_s", "claims_per_s", "rules_claims_per_s", "rules_match_s",
             "cli_claim_s", "python_start_s", "bulk_add_s", "bulk_longest_claim_s", "bulk_claims")
    assert figures["rules_claimable"] == 200 - 40 // 4  # the global rules' packages stay


def test_fresh():
    figures = quick("benchmarks/fresh.py")
    positive(figures, "parse_rows_per_s", "python_start_s", "first_scan_s", "rescan_s",
             "share_of_emerge_pct", "longest_claim_s")
    assert list(figures["worlds_s"]) == ["5000"] and figures["worlds_s"]["5000"] > 0
    assert 1 <= figures["claims_during_largest"]
    assert 0 <= figures["claims_refused"] <= figures["claims_during_largest"]


def test_release():
    figures = quick("benchmarks/release.py")
    assert figures["packages"] == 100
    positive(figures, "create_s", "command_s", "added_bytes", "index_bytes", "promote_s")
    assert figures["added_bytes"] < 1_000_000  # links, not copies


def test_schedule():
    runs = quick("benchmarks/schedule.py")["runs"]
    assert sorted(r["policy"] for r in runs) == ["critical", "fifo", "gated"]
    for run in runs:
        assert (run["dag"], run["fleet"]) == ("server.json", "4,2,1,1")
        assert run["makespan"] >= run["lower_bound"] > 0
        assert 0 < run["utilisation"] <= 1
        # Only the seed's behaviour compiles missing dependencies again.
        assert (run["duplicates"] > 0) == (run["policy"] == "fifo"), run


@pytest.mark.slow
def test_if_changed():
    figures = quick("benchmarks/if_changed.py")
    positive(figures, "full_scan_s", "if_changed_s", "bundle_bytes", "snapshot_s",
             "state_digest_ms")
    assert figures["ebuilds"] == 300 and figures["state_timestamp_ms"] >= 0
    assert figures["if_changed_s"] < figures["full_scan_s"]  # no emerge ran


@pytest.mark.slow
def test_page():
    figures = quick("benchmarks/page.py")
    assert figures["packages"] == 200
    positive(figures, "events", "page_bytes", "json_bytes", "gather_s", "render_s", "command_s")
    assert figures["page_bytes"] < 200_000
    if shutil.which("chromium"):
        positive(figures, "browser_load_s")
    else:
        assert figures["browser_load_s"] is None


@pytest.mark.slow
def test_resolve():
    figures = quick("benchmarks/resolve.py")
    assert figures["packages"] == 50
    positive(figures, "emerge_s", "cold_s", "cold_resolve_s", "warm_s", "bump_s")
    # The bump was scanned: one package read again, the others from the cache.
    assert (figures["bump_recomputed"], figures["bump_cached"]) == (1, 49)


@pytest.mark.slow
def test_sync():
    figures = quick("benchmarks/sync.py")
    assert (figures["existing"], figures["new"]) == (40, 4)
    positive(figures, "first_index_s", "swarm_sync_s", "full_reindex_s", "ratio")


@pytest.mark.slow
def test_sync_memory():
    figures = quick("benchmarks/sync_memory.py")
    assert figures["manifest_mb"] == 2 and figures["gpkg_bytes"] > 2 << 20
    positive(figures, "peak_rss_mib")
    # The swarm-sync measured is the one that read the upload: it refused it.
    assert (figures["sync_exit"], figures["published"]) == (1, 0)
    assert figures["quarantined"] == ["app-misc/example-docs-1.0"]


@pytest.mark.slow
def test_fleet():
    require_openssh()
    figures = quick("benchmarks/fleet.py")
    positive(figures, "idle_drones", "busy_drones", "cpu_ms_per_session", "idle_sessions",
             "busy_sessions", "builds_reported")
    assert (figures["burst_failed_verbs"], figures["errors_logged"]) == (0, 0)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="throw-away roots need root")
def test_isolation():
    figures = quick("benchmarks/isolation.py")
    assert figures["builds"] == 2
    positive(figures, "setup_s", "teardown_s", "setup_teardown_s", "total_none_s",
             "total_overlay_s")
    # Per build: three rooms set up (one an emerge step) and the layers removed.
    assert figures["setup_teardown_s"] == pytest.approx(
        3 * figures["setup_s"] + figures["teardown_s"], abs=0.01)
