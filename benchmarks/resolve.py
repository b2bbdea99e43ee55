"""swarm-resolve's cost: cold, warm and after one bump, beside the emerge scan it follows.

Generates an ebuild repository shaped like the largest shared DAG
(tests/data/dags/gnome.json: its packages, slots and edges), with
dependency strings written as real ones are: USE conditionals on enabled
and disabled flags, `||` groups whose first choice does not exist, slot
dependencies; edges that close a cycle become PDEPEND, as Portage would
need. Its md5-cache is made with egencache. Then, side by side:

  - `emerge --pretend --emptytree @world` on it (what swarm-fresh runs);
  - `swarm-resolve` cold (empty cache), warm (nothing changed), and after a
    one-package version bump (swarm-fresh first; the bump alone is read).

Targets: warm and one-bump at least 20x faster than cold; cold below the
emerge time. The last line is one JSON object of the figures. --quick: the
graph's first 50 packages in merge order (and the edges among them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from timing import quick_parser

from swarmtools import config as config_mod
from swarmtools.prefix import create_prefix

DAG = Path(__file__).resolve().parents[1] / "tests" / "data" / "dags" / "gnome.json"
REPO = "bench"
QUICK_PACKAGES = 50


def split(cpv: str) -> tuple[str, str, str]:
    from portage.versions import catpkgsplit

    category, pn, version, revision = catpkgsplit(cpv)
    return category, pn, version + ("" if revision == "r0" else f"-{revision}")


def ebuild(node: dict, deps: dict[str, list[str]]) -> str:
    slot = node["slot"]
    iuse = " ".join(node["use"] + ["absent"])  # 'absent' is off: its deps vanish
    lines = ["EAPI=8", 'DESCRIPTION="generated"', 'HOMEPAGE="https://example.invalid"',
             'S="${WORKDIR}"', 'LICENSE="MIT"', f'SLOT="{slot}"', 'KEYWORDS="amd64"',
             f'IUSE="{iuse}"']
    for kind in ("DEPEND", "RDEPEND", "PDEPEND"):
        if deps.get(kind):
            lines.append(f'{kind}="{" ".join(deps[kind])}"')
    return "\n".join(lines) + "\n"


def atom(node: dict, number: int) -> str:
    """A dependency on NODE, in one of the forms real ebuilds use."""
    category, pn, version = split(node["cpv"])
    slot = node["slot"].split("/")[0]
    forms = [f"{category}/{pn}", f">={category}/{pn}-{version}", f"{category}/{pn}:{slot}",
             f"|| ( {category}/{pn}-not-packaged {category}/{pn} )"]
    return forms[number % len(forms)]


def generate(root: Path, count: int | None) -> tuple[list[dict], Path]:
    """The repository of the DAG's first COUNT packages in merge order (None: all)."""
    data = json.loads(DAG.read_text())
    nodes = {n["id"]: n for n in data["nodes"] if count is None or n["order"] < count}
    deps: dict[int, dict[str, list[str]]] = {n: {} for n in nodes}
    edges = [e for e in data["edges"] if e["from"] in nodes and e["to"] in nodes]
    for number, edge in enumerate(edges):
        dependent, dependency = nodes[edge["to"]], nodes[edge["from"]]
        text = atom(dependency, number)
        if dependent["use"] and number % 3 == 0:  # under an enabled USE flag
            text = f"{dependent['use'][number % len(dependent['use'])]}? ( {text} )"
        kinds = ["PDEPEND"] if not edge["in_merge_order"] else [
            {"DEPEND": "DEPEND", "RDEPEND": "RDEPEND", "PDEPEND": "PDEPEND"}[k] for k in edge["kinds"]]
        for kind in kinds:
            deps[edge["to"]].setdefault(kind, []).append(text)
    repo = root / "repo"
    (repo / "profiles" / "default" / "linux").mkdir(parents=True)
    (repo / "metadata").mkdir()
    (repo / "profiles" / "repo_name").write_text(f"{REPO}\n")
    for eapi in (repo / "profiles" / "eapi", repo / "profiles" / "default" / "linux" / "eapi"):
        eapi.write_text("8\n")
    (repo / "profiles" / "arch.list").write_text("amd64\n")
    (repo / "profiles" / "default" / "linux" / "make.defaults").write_text(
        'ARCH="amd64"\nACCEPT_KEYWORDS="amd64"\nCHOST="x86_64-pc-linux-gnu"\nELIBC="glibc"\n'
        'KERNEL="linux"\nUSERLAND="GNU"\n')
    (repo / "metadata" / "layout.conf").write_text(
        "masters =\nthin-manifests = true\nsign-manifests = false\ncache-formats = md5-dict\n")
    categories = set()
    for node_id, node in nodes.items():
        category, pn, version = split(node["cpv"])
        categories.add(category)
        (repo / category / pn).mkdir(parents=True, exist_ok=True)
        # A dependency only a disabled flag wants: gone once USE is applied.
        deps[node_id].setdefault("DEPEND", []).append("absent? ( dev-libs/not-packaged )")
        (repo / category / pn / f"{pn}-{version}.ebuild").write_text(ebuild(node, deps[node_id]))
    (repo / "profiles" / "categories").write_text("".join(f"{c}\n" for c in sorted(categories)))
    world = [f"{split(n['cpv'])[0]}/{split(n['cpv'])[1]}:{n['slot'].split('/')[0]}"
             for n in nodes.values()]
    return world, repo


def timed(command: list, env: dict) -> float:
    return run(command, env)[0]


def run(command: list, env: dict) -> tuple[float, str]:
    """Wall time of a whole command, and its output."""
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"{command[0]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - started, proc.stdout


def main() -> None:
    quick = quick_parser(__doc__).parse_args().quick
    bindir = Path(sys.executable).parent
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-resolve-"))
    try:
        world, repo = generate(tmp, QUICK_PACKAGES if quick else None)
        prefix = create_prefix(tmp / "prefix", repo_src=repo, world=world)
        env = prefix.env()
        print(f"generated {len(world)} ebuilds; egencache ...", flush=True)
        started = time.perf_counter()
        subprocess.run(["egencache", "--update", f"--repo={REPO}", "--jobs=2"], env=env, check=True,
                       capture_output=True)
        print(f"  md5-cache in {time.perf_counter() - started:.1f} s")
        scan = ["emerge", "--pretend", "--emptytree", "--verbose", "--color=n", "@world"]
        emerge_seconds = timed(scan, env)
        path = Path(subprocess.run([bindir / "swarm-config", "init", "--dir", str(tmp / "swarm"),
                                    *[f"--scan-env={k}={v}" for k, v in prefix.env_overrides().items()]],
                                   capture_output=True, text=True, check=True).stdout.strip())
        config_mod.edit(path, {"scan": {"command": scan}})
        swarm_env = {**os.environ, "SWARM_CONFIG": str(path)}
        # The scan alone: swarm-resolve is timed on its own below (older checkouts: no such key).
        subprocess.run([bindir / "swarm-config", "set", "scan.resolve=false"], env=swarm_env,
                       capture_output=True, check=False)
        timed([bindir / "swarm-fresh", "-q"], swarm_env)
        resolve = [str(bindir / "swarm-resolve"), "--json"]
        cold, out = run(resolve, swarm_env)
        cold_in = json.loads(out)["seconds"]
        warm, out = run(resolve, swarm_env)
        warm_in = json.loads(out)["seconds"]
        # A version bump: a new ebuild, its cache entry, a scan, then resolve.
        bumped = next(iter(sorted(prefix.repo.glob("*/*/*.ebuild"))))
        from portage.versions import catpkgsplit

        # -r99 of its version (a name with two revisions would be no ebuild at all).
        _, pn, version, _ = catpkgsplit(f"{bumped.parent.parent.name}/{bumped.stem}")
        shutil.copy(bumped, bumped.with_name(f"{pn}-{version}-r99.ebuild"))
        subprocess.run(["egencache", "--update", f"--repo={REPO}"], env=env, check=True,
                       capture_output=True)
        timed([bindir / "swarm-fresh", "-q"], swarm_env)
        bump, out = run(resolve, swarm_env)
        answer = json.loads(out)
        bump_in = answer["seconds"]
        baseline = timed([sys.executable, "-c", "import portage"], swarm_env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True) if not os.environ.get("KEEP") else print("kept", tmp)
    print("whole process (wall) | the resolution itself (swarm-resolve --json: seconds)")
    print(f"{'emerge --pretend --emptytree @world':<34} {emerge_seconds:>7.2f} s")
    print(f"{'python3 -c import portage':<34} {baseline:>7.2f} s")
    print(f"{'swarm-resolve, cold':<34} {cold:>7.2f} s | {cold_in:>6.3f} s   (target: below emerge)")
    print(f"{'swarm-resolve, warm':<34} {warm:>7.2f} s | {warm_in:>6.3f} s   "
          f"({cold_in / warm_in:.0f}x faster; target 20x)")
    print(f"{'swarm-resolve, after one bump':<34} {bump:>7.2f} s | {bump_in:>6.3f} s   "
          f"({cold_in / bump_in:.0f}x faster; recomputed {answer['recomputed']}, "
          f"cached {answer['cached']})")
    print(json.dumps({"packages": len(world), "emerge_s": round(emerge_seconds, 3),
                      "import_portage_s": round(baseline, 3),
                      "cold_s": round(cold, 3), "cold_resolve_s": round(cold_in, 4),
                      "warm_s": round(warm, 3), "warm_resolve_s": round(warm_in, 4),
                      "bump_s": round(bump, 3), "bump_resolve_s": round(bump_in, 4),
                      "bump_recomputed": answer["recomputed"], "bump_cached": answer["cached"]}))


if __name__ == "__main__":
    main()
