"""What a build is, and how a binary package can differ from what the queue asked for.

A package's build identity is its CPV, SLOT and sub-slot, repository and
enabled USE (USE_EXPAND included), as the scan saw them, built for the
scan's CHOST with the profile's compiler flags. A binary package's metadata (from the gpkg itself, or its
entry in a binhost's index) is compared with it flag by flag, so a reason
can say what differs. USE is compared within the package's IUSE, without
the USE_EXPAND groups Portage hides from its merge list (USE_EXPAND_HIDDEN:
the scan never shows them, so it never asks for them).
"""

from __future__ import annotations

from collections.abc import Mapping


def enabled_use(metadata: Mapping[str, str], hidden: tuple[str, ...] = ()) -> set[str]:
    """Enabled flags of a binary package within its IUSE, hidden groups left out."""
    iuse = {flag.lstrip("+-") for flag in metadata.get("IUSE", "").split()}
    return {flag for flag in metadata.get("USE", "").split()
            if flag in iuse and not flag.startswith(hidden)}


def hidden_prefixes(settings) -> tuple[str, ...]:
    """The flag prefixes of USE_EXPAND_HIDDEN groups (e.g. 'kernel_'), from a portage.config."""
    return tuple(group.lower() + "_" for group in settings.get("USE_EXPAND_HIDDEN", "").split())


def differences(queued: Mapping, metadata: Mapping[str, str], chost: str | None,
                hidden: tuple[str, ...] = ()) -> list[str]:
    """How a binary package differs from the queued identity, one phrase a value.

    QUEUED has the queue's columns (cpv, slot, subslot, repo, use);
    METADATA a binary package's (SLOT, USE, IUSE, repository or REPO, CHOST).
    An empty list: it is the build the queue asked for.
    """
    found = []
    slot, _, subslot = metadata.get("SLOT", "0").partition("/")
    if slot != queued["slot"]:
        found.append(f"SLOT {slot} (the scan: {queued['slot']})")
    elif subslot and queued["subslot"] and subslot != queued["subslot"]:
        found.append(f"sub-slot {subslot} (the scan: {queued['subslot']})")
    repo = metadata.get("repository") or metadata.get("REPO") or ""
    if queued["repo"] and repo != queued["repo"]:
        found.append(f"repository {repo or '-'} (the scan: {queued['repo']})")
    wanted = set(queued["use"].split())
    built = enabled_use(metadata, hidden)
    flags = [f"+{flag}" for flag in sorted(built - wanted)] + [f"-{flag}" for flag in sorted(wanted - built)]
    if flags:
        found.append(f"USE {' '.join(flags)} (the scan: {queued['use'] or 'none'})")
    if chost and metadata.get("CHOST") and metadata["CHOST"] != chost:
        found.append(f"CHOST {metadata['CHOST']} (the scan: {chost})")
    return found


# The compiler flags a binary package records (Portage's build-info; no
# Fortran flags there).
RECORDED_FLAGS = ("CFLAGS", "CXXFLAGS", "LDFLAGS")


def machine_options(flags: str) -> set[str]:
    """The machine options among compiler FLAGS (-march=, -mtune=, -mavx2 ...): which CPUs
    can run the code. (-mno-... only takes an instruction set away.)"""
    return {flag for flag in flags.split() if flag.startswith("-m") and not flag.startswith("-mno-")}


def flag_differences(metadata: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """How a binary package's compiler flags differ from WANTED (the profile's, for that
    package), one phrase a variable of RECORDED_FLAGS.

    A binary package records its flags as its ebuild left them: ebuilds add
    and remove flags themselves (flag-o-matic's append-flags, filter-flags,
    replace-flags -O3 -O2), so equal strings cannot be asked for. What only
    the settings it was built with bring is a machine option the profile's
    flags lack (-march=znver4 for a generic profile): that is a difference.
    """
    found = []
    for key in RECORDED_FLAGS:
        built, want = " ".join(metadata.get(key, "").split()), " ".join(wanted.get(key, "").split())
        if machine_options(built) - machine_options(want):
            found.append(f'{key} "{built}" (the profile: "{want}")')
    return found
