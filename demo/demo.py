"""The whole swarm on this one machine.

Builds throw-away Portage prefixes holding the example repository: one for
the orchestrator's scan, one for each of two drones, and later one for a
client. Serves the binhost over HTTP on loopback, writes a single-host
config, fills the queue from the real `emerge --pretend --emptytree @world`
and resolves its dependency graph (swarm-resolve), lets the two drones build
the queue concurrently (local transport: each drone runs swarm-delegate and
rsync directly), each package only once what it needs is published: every
report starts swarm-sync, and a cron-like loop runs it every two seconds
too (d2 is kept from one package by a swarm-exclude rule, and swarm-status
--why says what each package waits for). No drone compiles anything it did
not claim, and each build runs in a throw-away root over the drone's own
system (overlayfs in a private mount namespace; as root), so the
dependencies it installs never reach the drone: each drone's var/db/pkg is
shown before and after. Then a fresh client installs the whole world with
`emerge --getbinpkgonly`: nothing is built from source. The drones build
with the scan's Portage configuration (the build profile), not their own:
d2's own package.use turns off a flag the scan turns on, and the published
binary has it on all the same. Then the tree moves on (a version bump and a
new package land in the orchestrator's repository, as after emerge --sync):
the postsync hook re-scans, only the bumped package is queued again, the
drones find their repositories behind the scan's and sync them (their
sync_command copies the orchestrator's, standing in for a mirror) before
building it, and it is published, superseding the old build; the binhost is
frozen as a release before and after it (swarm-release: the first promoted
to the channel stable, then a diff). The new package, added to the world
file, is picked up by the next `swarm-fresh --if-changed` (a second run
finds nothing changed and runs no emerge). A second build profile, lean
(example-app without compress, on the same binhost), builds only that one
package; both builds are published side by side, and a client with lean's
settings gets its own as a binary. swarm-config check --remote
compares each drone and the binhost with the config, and swarm-status
writes the status page (www/index.html) and prints the metrics.
Everything lives under $SWARM_DEMO_DIR (default /tmp/swarm-demo).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import threading
from datetime import UTC
from pathlib import Path

from swarmtools.config import edit
from swarmtools.prefix import create_prefix

DEMO = Path(os.environ.get("SWARM_DEMO_DIR", "/tmp/swarm-demo"))


def show(*args: str, env: dict) -> str:
    """Run a command as a person would type it, echo it and its output."""
    print(f"\n$ {shlex.join(args)}", flush=True)
    proc = subprocess.run(args, env=env, text=True, capture_output=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"demo: '{shlex.join(args)}' failed with exit code {proc.returncode}")
    return proc.stdout


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    prefix = create_prefix(DEMO / "orchestrator-prefix")
    print(f"demo: Portage prefix with the example repository at {prefix.root}")
    out = subprocess.run(
        ["swarm-config", "init", "--dir", str(DEMO / "swarm"),
         *[f"--scan-env={k}={v}" for k, v in prefix.env_overrides().items()]],
        text=True, capture_output=True, check=True)
    config = Path(out.stdout.strip())
    env = {**os.environ, "SWARM_CONFIG": str(config)}
    # The web server serves the binhost and, beside it, the releases.
    (DEMO / "swarm" / "binhost").mkdir(parents=True, exist_ok=True)
    server, base = serve(DEMO / "swarm")
    url = f"{base}/binhost"
    try:
        # Drones install from the binhost too (what swarm-config render drone says).
        drones = {name: create_prefix(DEMO / f"drone-{name}", binhost_url=url)
                  for name in ("d1", "d2")}
        # d2's own settings would build example-app without its default flag:
        # drones build with the scan's (the profile's) all the same.
        (drones["d2"].root / "etc/portage/package.use").write_text("app-misc/example-app -compress\n")
        # Each build runs in a throw-away root over the drone's own system
        # (overlayfs in a mount namespace): that needs root.
        isolation = "overlay" if os.geteuid() == 0 else "none"
        if isolation == "none":
            print("demo: not root: the drones build in their live systems (isolation = none)")
        edit(config, {
            "binhost": {"url": url},
            "drones": {name: {"host": "localhost", "transport": "local", "isolation": isolation,
                              "environment": p.env_overrides(),
                              # Stands in for emerge --sync from the orchestrator's mirror.
                              "sync_command": ["rsync", "-a", "--delete", f"{prefix.repo}/",
                                               f"{p.repo}/"]}
                       for name, p in drones.items()},
            "delegate": {"heartbeat_seconds": 5, "poll_seconds": 2, "idle_max_seconds": 10},
        })
        print(f"demo: config written to {config}, with drones d1 and d2 (one prefix each)")
        print(f"demo: the binhost {DEMO / 'swarm' / 'binhost'} is served at {url}")

        show("swarm-config", "check", env=env)
        own_systems = {name: installed(p) for name, p in drones.items()}
        show("swarm-fresh", env=env)
        show("swarm-resolve", "--json", env=env)
        show("swarm-exclude", "add", "app-misc/example-docs", "--drone", "d2",
             "--reason", "demo: only d1 builds the docs", env=env)
        show("swarm-status", env=env)
        show("swarm-status", "--why", "app-misc/example-app", env=env)
        show("swarm-status", "--why", "app-misc/example-docs", env=env)
        build(env)
        show("swarm-sync", "-v", env=env)
        show("swarm-status", env=env)
        index = (DEMO / "swarm" / "binhost" / "Packages").read_text()
        use = re.search(r"CPV: app-misc/example-app-1.0\n(?:.+\n)*?USE: (.*)", index).group(1)
        print(f"demo: app-misc/example-app on the binhost has USE=\"{use}\" (the scan's), though "
              "d2's own package.use says -compress")
        if "compress" not in use.split():
            sys.exit("demo: a drone's own settings reached a published binary")
        compiled_only_what_was_claimed(drones, config)
        systems_unchanged(drones, own_systems, isolation)
        install_client(url)
        first = release_name()
        show("swarm-release", "create", first, env=env)
        show("swarm-release", "promote", first, env=env)

        print("\ndemo: emerge --sync brings a new version of app-misc/example-docs and a new "
              "package, app-misc/example-extra, into the orchestrator's tree", flush=True)
        docs = prefix.repo / "app-misc" / "example-docs"
        shutil.copy(docs / "example-docs-1.0.ebuild", docs / "example-docs-1.1.ebuild")
        extra = prefix.repo / "app-misc" / "example-extra"
        extra.mkdir()
        shutil.copy(docs / "example-docs-1.0.ebuild", extra / "example-extra-1.0.ebuild")
        hook = DEMO / "postsync.d" / "swarm-fresh"  # /etc/portage/postsync.d/ on a real host
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(show("swarm-config", "render", "postsync", "--user",
                             pwd.getpwuid(os.geteuid()).pw_name, env=env))
        hook.chmod(0o755)
        show(str(hook), env=env)
        show("swarm-status", "--packages", "--state", "needed", env=env)
        build(env)
        show("swarm-sync", "-v", env=env)
        second = f"{first}.1"
        show("swarm-release", "create", second, env=env)
        show("swarm-release", "diff", first, second, env=env)
        show("swarm-config", "binrepos", "--channel", "stable", env=env)
        pinned = create_prefix(DEMO / "stable-client", binhost_url=f"{base}/releases/stable")
        live = create_prefix(DEMO / "latest-client", binhost_url=url)
        print(f"demo: a client pinned to {base}/releases/stable would install "
              f"{offered(pinned)}; one on the live binhost {offered(live)} "
              f"('swarm-release promote {second}' moves stable there)", flush=True)
        show("swarm-release", "list", env=env)

        print("\ndemo: the admin adds app-misc/example-extra to the world file", flush=True)
        world = prefix.root / "var" / "lib" / "portage" / "world"
        world.write_text(world.read_text() + "app-misc/example-extra\n")
        show("swarm-fresh", "--if-changed", env=env)
        build(env)
        show("swarm-sync", "-v", env=env)
        show("swarm-fresh", "--if-changed", "-v", env=env)  # nothing changed: no emerge
        second_profile(prefix, config, url, env)
        systems_unchanged(drones, own_systems, isolation)
        show("swarm-config", "render", "drone", "d1", env=env)
        show("swarm-config", "check", "--remote", env=env)
        show("swarm-status", env=env)
        page = DEMO / "www" / "index.html"
        page.parent.mkdir(exist_ok=True)
        show("swarm-status", "--html", str(page), env=env)
        print(f"demo: the status page is {page} (open it in a browser; cron writes it every "
              f"minute on a real orchestrator), its figures in {page.with_suffix('.json')}")
        show("swarm-status", "--prometheus", env=env)
    finally:
        server.terminate()
        server.wait()
    print(f"\ndemo: done; everything is under {DEMO}")


def second_profile(prefix, config: Path, url: str, env: dict) -> None:
    """A second build profile on the same binhost: example-app without compress.

    Only what differs is built: the one package, published beside the first
    build of it; a client with that profile's settings gets it as a binary.
    """
    root = DEMO / "profile-lean"
    shutil.copytree(prefix.root / "etc", root / "etc", symlinks=True)
    (root / "etc/portage/package.use").write_text("app-misc/example-app -compress\n")
    print(f"\ndemo: a second build profile, lean (PORTAGE_CONFIGROOT {root}): the same "
          "settings but app-misc/example-app -compress, published to the same binhost",
          flush=True)
    edit(config, {"profiles": {"default": {}, "lean": {"config_root": str(root)}}})
    show("swarm-fresh", "--profile", "lean", env=env)
    build(env)
    show("swarm-sync", "-v", env=env)
    blocks = (DEMO / "swarm" / "binhost" / "Packages").read_text().split("\n\n")[1:]
    entries = [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks
               if block.strip()]
    builds = [(e["PATH"], e.get("USE") or "(none)") for e in entries
              if e["CPV"] == "app-misc/example-app-1.0"]
    print(f"demo: the binhost lists app-misc/example-app-1.0 {len(builds)} times: "
          + ", ".join(f"{path} USE={use}" for path, use in builds))
    if len(builds) != 2:
        sys.exit("demo: the two profiles' builds are not both published")
    client = create_prefix(DEMO / "lean-client", binhost_url=url)
    (client.root / "etc/portage/package.use").write_text("app-misc/example-app -compress\n")
    proc = client.run(["emerge", "--pretend", "--getbinpkgonly", "--oneshot", "--color=n",
                       "--verbose", "app-misc/example-app"])
    row = next((line for line in proc.stdout.splitlines()
                if "app-misc/example-app-1.0" in line), "")
    print(f"demo: a client with lean's settings would install: {row.strip()}")
    if not row.startswith("[binary") or "-compress" not in row:
        sys.exit("demo: a client of the second profile would not get its binary")
    show("swarm-status", env=env)


def serve(directory: Path) -> tuple[subprocess.Popen, str]:
    """Serve the binhost over HTTP on loopback, as a web server would."""
    directory.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = re.search(r"port (\d+)", server.stdout.readline()).group(1)
    return server, f"http://127.0.0.1:{port}"


def build(env: dict) -> None:
    """Both drones until the queue is empty, with swarm-sync every 2 s as cron would."""
    print("\n$ swarm-drone --drone d1 --drain -v &  swarm-drone --drone d2 --drain -v &"
          "  (and swarm-sync -q every 2 s)", flush=True)
    procs = [subprocess.Popen(["swarm-drone", "--drone", name, "--drain", "-v"], env=env)
             for name in ("d1", "d2")]
    done = threading.Event()

    def cron():
        while not done.wait(2):
            subprocess.run(["swarm-sync", "-q"], env=env)

    thread = threading.Thread(target=cron)
    thread.start()
    codes = [p.wait() for p in procs]
    done.set()
    thread.join()
    if any(codes):
        sys.exit("demo: a drone failed")


def installed(prefix) -> list[str]:
    """What a drone's own system has installed (its var/db/pkg)."""
    return sorted(str(p.relative_to(prefix.root / "var/db/pkg"))
                  for p in (prefix.root / "var/db/pkg").glob("*/*"))


def systems_unchanged(drones: dict, before: dict, isolation: str) -> None:
    """Each drone's own var/db/pkg: what its builds installed never reached it."""
    for name, prefix in drones.items():
        now = installed(prefix)
        print(f"demo: {name}'s own system (its var/db/pkg): {len(before[name])} packages "
              f"before the builds, {len(now)} after")
        if isolation == "overlay" and now != before[name]:
            sys.exit(f"demo: {name}'s builds changed its own system: {now}")


def compiled_only_what_was_claimed(drones: dict, config: Path) -> None:
    """What each drone's builds logged: everything compiled was claimed (the rest came as
    binaries). Builds run in throw-away roots: the drone keeps their emerge.log."""
    import sqlite3

    from swarmtools.config import load

    conn = sqlite3.connect(load(config).database)
    for name, prefix in drones.items():
        claimed = {cpv for (cpv,) in conn.execute(
            "SELECT p.cpv FROM events e JOIN packages p ON p.id = e.package_id"
            " WHERE e.event = 'claimed' AND e.drone = ?", (name,))}
        log = (prefix.root / "var/tmp/swarmtools" / name / "emerge.log").read_text()
        compiled = re.findall(r"=== \(\d+ of \d+\) Compiling/\w+ \(([^:]+)::", log)
        binaries = len(re.findall(r"=== \(\d+ of \d+\) Merging Binary", log))
        print(f"demo: {name} compiled {len(compiled)} packages, all of them its own claims: "
              f"{set(compiled) <= claimed}; it installed {binaries} dependencies as binaries")
        if not set(compiled) <= claimed:
            sys.exit(f"demo: {name} compiled what it did not claim: {set(compiled) - claimed}")
    conn.close()


def release_name() -> str:
    """Today's date, as swarm-release names a release (a rerun of the demo starts afresh)."""
    from datetime import datetime

    return datetime.now(UTC).strftime("%Y.%m.%d")


def offered(client, atom: str = "app-misc/example-docs") -> str:
    """The build of ATOM a client would install from its binhost (CPV and build id)."""
    proc = client.run(["emerge", "--pretend", "--getbinpkgonly", "--oneshot", "--color=n", atom])
    rows = [line for line in proc.stdout.splitlines() if line.startswith("[binary")]
    return rows[0].split("]", 1)[1].split()[0] if rows else "nothing"


def install_client(url: str) -> None:
    """A new machine installs the world from the binhost only."""
    client = create_prefix(DEMO / "client", binhost_url=url)
    print(f"\ndemo: a fresh client (prefix {client.root}) with PORTAGE_BINHOST={url}")
    print("$ emerge --getbinpkgonly @world", flush=True)
    proc = client.run(["emerge", "--getbinpkgonly", "--color=n", "@world"])
    if proc.returncode != 0:
        sys.stdout.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        sys.exit("demo: the client could not install from the binhost")
    binaries = len(re.findall(r"^>>> Emerging binary", proc.stdout, re.MULTILINE))
    sources = len(re.findall(r"^>>> Emerging \(", proc.stdout, re.MULTILINE))
    print(f"demo: the client installed {binaries} binary packages; built from source: {sources}")
    if sources or not binaries:
        sys.exit("demo: the client built from source")


if __name__ == "__main__":
    main()
