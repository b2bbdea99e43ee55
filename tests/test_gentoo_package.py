"""packaging/gentoo: what can be checked of the overlay without a Gentoo tree.

No ::gentoo here (Debian), so the ebuilds are never sourced against their
eclasses. Their install function runs in bash with recording stand-ins for
Portage's helpers (newinitd, doexe ...): what it installs, and where.
"""

import re
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from swarmtools import deploy

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "packaging" / "gentoo"
PACKAGE = OVERLAY / "app-portage" / "swarmtools"
EBUILDS = sorted(PACKAGE.glob("*.ebuild"))
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
README = (ROOT / "README.md").read_text()

# Each helper's destination, as Portage's own helpers (ebuild(5)) install.
RECORDERS = r"""
inherit() { :; }
distutils-r1_python_install_all() { :; }
exeinto() { exe_dir=$1; }
insinto() { ins_dir=$1; }
doexe() { for f; do echo "$f ${exe_dir}/${f##*/}"; done; }
doins() { for f; do echo "$f ${ins_dir}/${f##*/}"; done; }
newinitd() { echo "$1 /etc/init.d/$2"; }
newconfd() { echo "$1 /etc/conf.d/$2"; }
systemd_dounit() { for f; do echo "$f /usr/lib/systemd/system/${f##*/}"; done; }
"""


def installs(ebuild: Path) -> dict[str, str]:
    """What EBUILD's python_install_all installs: repository file -> where it goes."""
    script = f"{RECORDERS}\nsource {ebuild}\npython_install_all\n"
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False,
                       cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.splitlines())


def variables(ebuild: Path) -> dict[str, str]:
    script = f"inherit() {{ INHERIT=$*; }}\nsource {ebuild}\n" + "".join(
        f'printf "%s\\0%s\\0" {name} "${{{name}[*]}}"\n'
        for name in ("EAPI", "INHERIT", "DISTUTILS_USE_PEP517", "PYTHON_COMPAT", "KEYWORDS",
                     "SRC_URI", "EGIT_REPO_URI", "RDEPEND", "LICENSE", "SLOT"))
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True,
                       env={"PYTHON_USEDEP": "PYTHON_USEDEP", "PV": "0", "P": "swarmtools-0"})
    words = r.stdout.split("\0")
    return dict(zip(words[::2], words[1::2]))


def test_the_overlay_is_named_and_builds_on_gentoo():
    assert (OVERLAY / "profiles" / "repo_name").read_text() == "swarmtools\n"
    layout = (OVERLAY / "metadata" / "layout.conf").read_text()
    assert re.search(r"^masters = gentoo$", layout, re.MULTILINE)


def test_there_is_the_release_and_the_live_ebuild():
    assert [e.name for e in EBUILDS] == [f"swarmtools-{VERSION}.ebuild", "swarmtools-9999.ebuild"]


@pytest.mark.parametrize("ebuild", EBUILDS, ids=lambda e: e.name)
def test_the_ebuild_is_bash(ebuild):
    r = subprocess.run(["bash", "-n", str(ebuild)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("ebuild", EBUILDS, ids=lambda e: e.name)
def test_the_ebuild_builds_with_distutils_and_needs_the_system_portage(ebuild):
    v = variables(ebuild)
    assert v["EAPI"] == "8" and v["DISTUTILS_USE_PEP517"] == "setuptools"
    assert "distutils-r1" in v["INHERIT"].split() and "systemd" in v["INHERIT"].split()
    targets = v["PYTHON_COMPAT"].split()
    assert "python3_11" in targets and not any(re.fullmatch(r"python3_([0-9]|10)", t)
                                               for t in targets)
    assert v["LICENSE"] == "GPL-2" and v["SLOT"] == "0"
    depend = v["RDEPEND"].split()
    for atom in ("sys-apps/portage[PYTHON_USEDEP]", "dev-python/click[PYTHON_USEDEP]",
                 "dev-python/tabulate[PYTHON_USEDEP]", "dev-python/filelock[PYTHON_USEDEP]",
                 "net-misc/rsync", "net-misc/openssh", "app-arch/zstd", "app-crypt/gnupg"):
        assert atom in depend, atom
    if ebuild.name.endswith("-9999.ebuild"):
        assert "git-r3" in v["INHERIT"].split() and v["EGIT_REPO_URI"]
        assert not v["KEYWORDS"] and not v["SRC_URI"]
    else:
        assert v["KEYWORDS"] and v["SRC_URI"] and not v["EGIT_REPO_URI"]


def test_metadata_xml_follows_gentoos_dtd():
    text = (PACKAGE / "metadata.xml").read_text()
    assert '<!DOCTYPE pkgmetadata SYSTEM "https://www.gentoo.org/dtd/metadata.dtd">' in text
    root = ET.fromstring(text)  # well-formed
    # The rules of metadata.dtd for the elements a package's metadata.xml may hold.
    assert root.tag == "pkgmetadata"
    allowed = {"maintainer", "natural-name", "longdescription", "slots", "use", "upstream",
               "stabilize-allarches"}
    assert {child.tag for child in root} <= allowed
    for maintainer in root.iter("maintainer"):
        assert maintainer[0].tag == "email" and maintainer.get("type") in ("person", "project")
    for flag in root.iter("flag"):
        assert flag.get("name")
    assert root.find("longdescription").text.strip()


@pytest.mark.parametrize("ebuild", EBUILDS, ids=lambda e: e.name)
def test_every_file_the_ebuild_installs_is_here_and_where_the_readme_says(ebuild):
    installed = installs(ebuild)
    assert set(installed) == set(deploy.package_files())
    for source, target in installed.items():
        assert (ROOT / source).is_file(), source
        assert f"`{target}`" in README, f"{source} goes to {target}, which no README names"
    assert installed["cron/postsync.d/swarm-fresh"] == "/etc/portage/postsync.d/swarm-fresh"
    assert installed["init/swarm-drone.initd"] == "/etc/init.d/swarm-drone"
