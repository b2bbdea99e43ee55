"""Print the edges of Portage's own depgraph for `emerge -pe --with-bdeps=y @world`, as JSON.

Run with the environment of a prefix (tests/test_resolve.py does): one line
a merge edge, {"dependent", "dependency", "buildtime", "runtime", "post"},
from the digraph Portage's resolver builds, the truth swarm-resolve's edges
are compared with.
"""

import json
import sys

from _emerge.actions import load_emerge_config
from _emerge.create_depgraph_params import create_depgraph_params
from _emerge.depgraph import backtrack_depgraph
from _emerge.stdout_spinner import stdout_spinner


def main() -> None:
    config = load_emerge_config()
    settings, trees = config.target_config.settings, config.trees
    root = config.target_config
    root.sets = root.setconfig.getSets()
    options = {"--pretend": True, "--emptytree": True, "--with-bdeps": "y", "--quiet": True}
    params = create_depgraph_params(options, "")
    spinner = stdout_spinner()
    spinner.update = lambda: True  # no spinner on stdout: it carries the JSON
    ok, graph, _ = backtrack_depgraph(settings, trees, options, params, "", ["@world"], spinner)
    if not ok:
        sys.exit("the resolver failed")
    digraph = graph._dynamic_config.digraph
    for parent in digraph:
        if getattr(parent, "operation", None) != "merge":
            continue
        for child in digraph.child_nodes(parent):
            if getattr(child, "operation", None) != "merge":
                continue
            priorities = digraph.nodes[parent][0][child]
            print(json.dumps({
                "dependent": str(parent.cpv), "dependency": str(child.cpv),
                "buildtime": any(p.buildtime for p in priorities),
                "runtime": any(p.runtime for p in priorities),
                "post": any(p.runtime_post for p in priorities)}))


if __name__ == "__main__":
    main()
