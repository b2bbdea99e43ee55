"""Throw-away build roots: every build in a private mount namespace, over an overlay.

A build sees the drone's *build root* (its own system, or a clean base) through
an overlay filesystem: every write lands in an upper layer under the drone's
work directory, which is removed when the build ends, so the drone's system
never changes. Only what the build must share with the drone is passed
through at its own path: PKGDIR and DISTDIR (writable: the built binary, the
cache of downloaded binaries and sources), the repositories and the build
profile's configuration (read-only), the build's log directory. The drone's
work directory (other builds' layers) is hidden under an empty tmpfs.

Each emerge of a build runs as ``python -m swarmtools.cleanroom ROOM -- emerge
...``, which enters new mount and PID namespaces, lays out the root and runs
the command in it. The layers stay on disk between the steps of one build (its
dependencies, then the package), the mounts never reach the host: they live
in the namespace and vanish with its last process. The PID namespace makes the
build die with the drone: the helper dies with its parent (PR_SET_PDEATHSIG),
the namespace's first process with the helper, and the kernel kills every
process left in a namespace whose first process is gone.

Where the drone's system is ``/`` (a Gentoo host), the overlay is mounted
apart and the build is chrooted into it, with ``/proc``, ``/dev`` and ``/sys``;
in a Portage prefix (tests, the demo) the overlay is moved onto the prefix's
own path, so its paths need no change. A build root spanning several
filesystems gets an overlay for each (a fresh tmpfs for a tmpfs); one that
cannot be overlaid stops the build, naming it: never built half-isolated.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The helper's own exit code when it could not set the root up (as env(1)
# and chroot(1) use 125); its one line on stderr starts with MARK.
UNAVAILABLE = 125
MARK = "cleanroom: "

_CLONE_NEWNS, _CLONE_NEWPID = 0x00020000, 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
_PR_SET_PDEATHSIG = 1
# File systems that hold no files of the build root: skipped (a chrooted build
# gets its own /proc, /dev and /sys).
_PSEUDO = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "mqueue", "securityfs",
           "debugfs", "tracefs", "bpf", "pstore", "hugetlbfs", "configfs", "fusectl",
           "binfmt_misc", "autofs", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs"}
_CHROOT_SYSTEM = ("/dev", "/sys")  # bound recursively into a chrooted root


@dataclass(frozen=True)
class Bind:
    """A path the build shares with the drone, at the same path inside."""

    path: str
    writable: bool = False


@dataclass(frozen=True)
class Room:
    """One build's root: LOWER (the build root's EROOT) seen at TARGET (the drone's EROOT).

    LAYERS is this build's directory (upper layers, overlay work directories,
    the mount point); HIDE are paths of the drone the build must not see.
    """

    lower: str
    target: str
    layers: str
    binds: tuple[Bind, ...] = ()
    hide: tuple[str, ...] = ()
    chroot: bool = field(init=False)

    def __post_init__(self):
        for name in ("lower", "target", "layers"):
            object.__setattr__(self, name, os.path.normpath(getattr(self, name)))
        object.__setattr__(self, "chroot", self.target == "/")

    def command(self, argv: list[str]) -> list[str]:
        """ARGV run inside this room (through the helper)."""
        spec = json.dumps({**asdict(self), "binds": [asdict(b) for b in self.binds]})
        return [sys.executable, "-m", "swarmtools.cleanroom", spec, "--", *argv]

    @classmethod
    def from_json(cls, text: str) -> Room:
        data = json.loads(text)
        data.pop("chroot", None)
        return cls(**{**data, "binds": tuple(Bind(**b) for b in data["binds"]),
                      "hide": tuple(data["hide"])})


def die_with_parent() -> None:
    """For Popen(preexec_fn=...): the helper is killed when the drone dies (SIGKILL too)."""
    parent = os.getppid()
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the drone died before the line above
        os._exit(UNAVAILABLE)


def probe(room: Room) -> str | None:
    """Why builds cannot run in ROOM on this host, or None: it sets the room up and runs true."""
    if os.geteuid() != 0:
        return "not root (a build root needs mount namespaces and overlayfs)"
    if not Path(room.lower, "var", "db", "pkg").is_dir():
        return (f"the build root {room.lower} is not a Portage root (no var/db/pkg): seed it "
                "from a stage3 tarball, then swarm-drone --base")
    try:
        proc = subprocess.run(room.command(["true"]), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)
    except subprocess.TimeoutExpired:
        return "setting up the build root took over 60 s"
    finally:
        remove(room.layers)
    if proc.returncode == 0:
        return None
    return failure(proc.stderr) or f"a command in the build root exited {proc.returncode}"


def failure(stderr: str) -> str | None:
    """The helper's reason in a command's stderr, if setting the room up failed."""
    for line in stderr.splitlines():
        if line.startswith(MARK):
            return line[len(MARK):]
    return None


def remove(layers: str | Path) -> None:
    """Throw a build's layers away (as root: the overlay work directory is mode 000)."""
    shutil.rmtree(layers, ignore_errors=True)


def clear_stale(directory: Path) -> list[str]:
    """Remove the layers builds of a killed drone left in DIRECTORY; their names."""
    stale = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []
    for name in stale:
        remove(directory / name)
    return stale


# The helper: everything below runs in the namespaces, as root.

class Unavailable(Exception):
    """The room cannot be set up; the message says why."""


@functools.cache
def _libc():
    # Loaded before any fork: die_with_parent runs between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]
    return libc


def _mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
           data: str | None = None) -> None:
    encode = (lambda s: None if s is None else os.fsencode(s))
    if _libc().mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        code = ctypes.get_errno()
        what = f"{fstype} {source}" if fstype else source
        hint = {errno.ENODEV: " (no overlay file system in this kernel: modprobe overlay)",
                errno.EPERM: " (not permitted: a container without CAP_SYS_ADMIN?)"}
        raise Unavailable(f"cannot mount {what} on {target}: {os.strerror(code)}"
                          + hint.get(code, ""))


def _escape(path: str) -> str:
    # overlayfs splits its options at ',' and lower directories at ':'.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _inside(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return root == "/" or path == root or path.startswith(root + "/")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, file system type, super options) of every mount, parents first."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            # The kernel writes a space as \040 (and tab, newline, backslash alike).
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), left.split()[4])
            fstype, _source, options = (right.split() + ["", ""])[:3]
            found.append((point, fstype, options))
    return found


class _Layout:
    """Builds the merged tree at MERGED for ROOM, in the new mount namespace."""

    def __init__(self, room: Room):
        self.room = room
        self.merged = os.path.join(room.layers, "root")
        self.count = 0

    def at(self, path: str) -> str:
        """Where PATH of the build's view lies in the merged tree."""
        relative = os.path.relpath(path, self.room.target)
        return os.path.normpath(os.path.join(self.merged, relative))

    def overlay(self, lower: str, where: str) -> None:
        self.count += 1
        upper = os.path.join(self.room.layers, f"upper{self.count}")
        work = os.path.join(self.room.layers, f"work{self.count}")
        for directory in (upper, work, where):
            os.makedirs(directory, exist_ok=True)
        _mount("overlay", where, "overlay", 0, f"lowerdir={_escape(lower)},"
               f"upperdir={_escape(upper)},workdir={_escape(work)}")

    def build(self) -> None:
        room = self.room
        self.overlay(room.lower, self.merged)
        passed = [b.path for b in room.binds] + list(room.hide)
        if room.chroot:
            passed += [*_CHROOT_SYSTEM, "/proc"]
        for point, fstype, options in _mounts():
            if (point == os.path.normpath(room.lower) or not _inside(point, room.lower)
                    or fstype in _PSEUDO or any(_inside(point, p) for p in passed)):
                continue
            where = self.at(os.path.join(room.target, os.path.relpath(point, room.lower)))
            if fstype == "tmpfs":
                os.makedirs(where, exist_ok=True)
                keep = ",".join(o for o in options.split(",") if o.split("=")[0] in
                                ("size", "mode", "nr_inodes"))
                _mount("tmpfs", where, "tmpfs", _MS_NOSUID | _MS_NODEV, keep or None)
            else:
                try:
                    self.overlay(point, where)
                except Unavailable as exc:
                    raise Unavailable(f"the build root spans {point} ({fstype}), which cannot "
                                      f"be overlaid: {exc}; make build_root one tree (a stage)")
        for path in (p for p in room.hide if room.chroot or _inside(p, room.target)):
            where = self.at(path)
            if not os.path.isdir(where):  # not in this root: nothing to hide
                continue
            _mount("tmpfs", where, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64k,mode=755")
        if room.chroot:
            self._system()
        for bind in room.binds:
            if room.chroot or _inside(bind.path, room.target):
                self._bind(bind.path, self.at(bind.path), bind.writable)

    def _bind(self, source: str, where: str, writable: bool) -> None:
        if not os.path.exists(source):
            raise Unavailable(f"cannot pass {source} through to the build: it does not exist")
        if os.path.isdir(source):
            os.makedirs(where, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(where), exist_ok=True)
            if not os.path.exists(where):
                open(where, "a").close()
        _mount(source, where, None, _MS_BIND | _MS_REC)
        if not writable:
            _mount(None, where, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)

    def _system(self) -> None:
        """A chrooted build's /proc (its own PID namespace), /dev, /sys and name service."""
        proc = self.at("/proc")
        os.makedirs(proc, exist_ok=True)
        _mount("proc", proc, "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        for path in _CHROOT_SYSTEM:
            self._bind(path, self.at(path), writable=path == "/dev")
        for path in ("/etc/resolv.conf", "/etc/hosts"):  # to fetch sources by name
            if os.path.isfile(path):
                self._bind(path, self.at(path), writable=False)

    def enter(self) -> None:
        """Make the merged tree the build's view: chroot into it, or move it onto TARGET."""
        if self.room.chroot:
            os.chroot(self.merged)
        else:
            _mount(self.merged, self.room.target, None, _MS_MOVE)
            _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        os.chdir("/")


def _run_as_init(room: Room, argv: list[str], alive: int) -> int:
    """PID 1 of the new namespace: set the root up, run ARGV, reap, return its status."""
    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.set_blocking(alive, False)
    try:  # EOF: the helper died before PR_SET_PDEATHSIG took
        if os.read(alive, 1) == b"":
            return UNAVAILABLE
    except BlockingIOError:
        pass
    layout = _Layout(room)
    layout.build()
    layout.enter()
    # Signals reach the build from the drone (its process group); as PID 1 this
    # process would ignore them anyway, and must only wait.
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda *_: None)
    child = os.fork()
    if child == 0:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"{MARK}cannot run {argv[0]} in the build root: {exc.strerror}",
                  file=sys.stderr, flush=True)
            os._exit(UNAVAILABLE)
    while True:  # orphans of the build are reparented here: reap them too
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        if pid == child:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str]) -> int:
    """``python -m swarmtools.cleanroom ROOM -- COMMAND...``: run COMMAND in ROOM."""
    if len(argv) < 3 or argv[1] != "--":
        print(f"{MARK}usage: python -m swarmtools.cleanroom ROOM_JSON -- COMMAND...",
              file=sys.stderr)
        return 2
    room, command = Room.from_json(argv[0]), argv[2:]
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS | _CLONE_NEWPID) != 0:
        print(f"{MARK}cannot make mount and PID namespaces: "
              f"{os.strerror(ctypes.get_errno())} (needs root with CAP_SYS_ADMIN, not an unprivileged "
              "container)", file=sys.stderr)
        return UNAVAILABLE
    try:
        # Nothing mounted below may propagate back to the host.
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    except Unavailable as exc:
        print(f"{MARK}{exc}", file=sys.stderr)
        return UNAVAILABLE
    alive, keep = os.pipe()
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)  # they reach the build through the group
    init = os.fork()
    if init == 0:
        os.close(keep)
        try:
            os._exit(_run_as_init(room, command, alive))
        except (Unavailable, OSError) as exc:
            print(f"{MARK}{exc}", file=sys.stderr, flush=True)
            os._exit(UNAVAILABLE)
    os.close(alive)
    while True:
        try:
            _, status = os.waitpid(init, 0)
            break
        except InterruptedError:
            continue
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
