"""Imports run one way: down the layers below, never up, never in a circle.

Read from the source (every import, those inside functions too), so a
lazy import cannot hide a circle. A new module must be placed in a stage.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import add_drones, script, synthetic_scan

PACKAGE = Path(__file__).resolve().parents[1] / "swarmtools"

# The stages, top layer first. A module may import modules of its own stage
# and of every stage in a lower layer, never one of a higher layer; stages
# side by side in one layer do not import each other (the drone loads no
# orchestrator code; the queue and publication do not call each other).
LAYERS = (
    ("cli",),
    ("observe",),
    ("control",),
    ("queue", "publish"),
    ("rules", "drone"),
    ("portage",),
    ("base",),
)
STAGES = {
    # the commands: click front-ends, and swarm-delegate's switch (no click for the gateway)
    "cli": ("cli", "cli.common", "cli.config", "cli.delegate", "cli.drone", "cli.exclude",
            "cli.fresh", "cli.release", "cli.resolve", "cli.status", "cli.swarm_delegate",
            "cli.sync"),
    # figures, the status page, drift of the hosts, the files that deploy them
    "observe": ("status", "page", "charts", "metrics", "drift", "deploy"),
    # the orchestrator's side of the drones: claims, reports, the verbs, the ssh gateway
    "control": ("gateway", "verbs", "delegate", "placement"),
    # the scan fills the queue; the dependency graph orders it
    "queue": ("scan", "queue", "resolve"),
    # staging -> binhost, and releases of the binhost
    "publish": ("release", "sync"),
    # what is built where: exclusions, routes, eligibility, atoms
    "rules": ("exclude", "eligibility", "routing", "atoms"),
    # the drone: its worker loop, its builds, their throw-away roots, its way to the orchestrator
    "drone": ("drone", "build", "cleanroom", "transport"),
    # Portage and the files of the orchestrator and binhost
    "portage": ("binhost", "profile", "portageenv", "emerge", "emergelog", "gpkg", "staging",
                "prefix"),
    # what everything shares: config, database, row changes, clock, errors, output
    "base": ("config", "db", "packages", "console", "clock", "errors", "output", "identity",
             "crashpoints", "samples", "__init__"),
}


def modules() -> dict[str, Path]:
    """Every module of the package by its name in STAGES (cli.fresh, __init__ ...)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every import of a module of the package, lazy ones included."""
    # The package a relative import starts from: cli for cli.fresh and for cli itself.
    package = name if path.name == "__init__.py" and name != "__init__" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)] + ([node.module] if node.module else [])
                target = ".".join(parts)
            elif (node.module or "").split(".")[0] == "swarmtools":
                target = node.module.removeprefix("swarmtools").lstrip(".")
            else:
                continue
            for alias in node.names:  # from . import db: the module db; from .db import x: db
                sub = f"{target}.{alias.name}" if target else alias.name
                found.append((node.lineno, sub if sub in known else target or "__init__"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.removeprefix("swarmtools").lstrip(".") or "__init__")
                      for alias in node.names if alias.name.split(".")[0] == "swarmtools"]
    return [(line, target) for line, target in found if target != name]


def graph() -> dict[str, list[tuple[int, str]]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def stage_of() -> dict[str, str]:
    return {module: stage for stage, members in STAGES.items() for module in members}


def layer_of(stage: str) -> int:
    """0 for the top layer."""
    return next(i for i, layer in enumerate(LAYERS) if stage in layer)


def test_every_module_is_in_one_stage():
    placed = [module for members in STAGES.values() for module in members]
    assert len(placed) == len(set(placed)), "a module is in two stages"
    assert set(placed) == set(modules()), (
        f"not placed in STAGES: {sorted(set(modules()) - set(placed))}; "
        f"gone: {sorted(set(placed) - set(modules()))}")
    assert {stage for layer in LAYERS for stage in layer} == set(STAGES)


def upward_imports(edges: dict[str, list[tuple[int, str]]]) -> list[str]:
    """Each import that runs up a layer, or across to a stage beside its own."""
    stages = stage_of()
    wrong = []
    for module, targets in sorted(edges.items()):
        mine = stages[module]
        for line, target in targets:
            theirs = stages[target]
            if theirs == mine:
                continue
            if layer_of(theirs) < layer_of(mine):
                wrong.append(f"swarmtools/{module.replace('.', '/')}.py:{line} imports {target}: "
                             f"{mine} may not import {theirs}, a higher layer")
            elif layer_of(theirs) == layer_of(mine):
                wrong.append(f"swarmtools/{module.replace('.', '/')}.py:{line} imports {target}: "
                             f"{mine} and {theirs} stand side by side and import nothing "
                             "of each other")
    return wrong


def circles(edges: dict[str, list[tuple[int, str]]]) -> list[list[str]]:
    """One import circle through each module that is in one (as module paths)."""
    found, done = [], set()
    for start in sorted(edges):
        if start in done:
            continue
        # Depth first from START: a path that comes back to START is a circle.
        stack = [(start, [start])]
        seen = set()
        while stack:
            module, path = stack.pop()
            for _, target in edges[module]:
                if target == start:
                    found.append(path + [start])
                    done.update(path)
                    stack = []
                    break
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + [target]))
    return found


def test_no_module_imports_a_higher_layer():
    assert upward_imports(graph()) == []


def test_no_module_but_the_cli_imports_the_cli():
    # (The layers say it too; this names the rule design.md states.)
    outside = [(module, target) for module, targets in graph().items()
               if not module.startswith("cli") for _, target in targets
               if target.startswith("cli")]
    assert outside == []


def test_no_import_closes_a_circle():
    assert circles(graph()) == []


def test_the_checks_see_a_lazy_upward_import_and_a_circle():
    # The checks themselves, on a made-up graph: an import inside a
    # function of config (base) of status (observe), which imports config.
    edges = graph()
    edges["config"] = edges["config"] + [(999, "status")]
    assert any("config.py:999 imports status" in line for line in upward_imports(edges))
    assert any({"config", "status"} <= set(circle) for circle in circles(edges))


def test_the_gateway_loads_no_click(swarm, tmp_path):
    # Every ssh session of every drone runs the forced command: the installed
    # swarm-delegate serves a verb without loading click or a click front-end,
    # nor subprocess (which only a local drone's answers need, gateway.answer_here).
    add_drones(swarm.config, {"d1": {"transport": "ssh"}})
    assert swarm.run("swarm-fresh", "-q", "--from", "-", input=synthetic_scan(2)).returncode == 0
    env = {**swarm.env, "SSH_ORIGINAL_COMMAND": "swarm-delegate claim --json --drone d1"}
    r = subprocess.run([sys.executable, "-X", "importtime", script("swarm-delegate"), "gateway",
                        "--drone", "d1", "--config", str(swarm.config)],
                       env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["cpv"].startswith("app-test/"), r.stderr
    loaded = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
              if line.startswith("import time:") and "|" in line}
    assert "swarmtools.gateway" in loaded and "swarmtools.delegate" in loaded  # it saw them
    assert sorted(m for m in loaded if m.split(".")[0] == "click"
                  or m.startswith("swarmtools.cli.") and m != "swarmtools.cli.swarm_delegate"
                  or m == "subprocess") == []
