"""The merge-list parser against real emerge outputs and hand-made edge cases."""


import pytest
from conftest import EMERGE_DATA, emerge_files
from hypothesis import given
from hypothesis import strategies as st

from swarmtools.emerge import ParseError, parse_merge_list


def parse_file(name: str):
    return parse_merge_list((EMERGE_DATA / name).read_text())


@pytest.mark.parametrize("path", emerge_files(), ids=lambda p: p.name)
def test_every_row_of_every_real_output_is_parsed(path):
    text = path.read_text()
    merge_list = parse_merge_list(text)
    row_lines = [l for l in text.splitlines() if l.startswith("[")]
    assert len(merge_list.rows) == len(row_lines)
    for kind in ("ebuild", "binary", "uninstall", "nomerge", "blocks"):
        assert sum(r.kind == kind for r in merge_list.rows) == sum(
            l.startswith("[" + kind) for l in row_lines)
    for row in merge_list.packages():
        assert row.cp and row.version and row.cpv.startswith(row.cp + "-")


def test_flag_columns_slots_and_old_versions():
    rows = {r.cp: r for r in parse_file("varieties-01.txt").rows}
    assert rows["app-misc/testing"].flag("keyword") == "~"
    assert rows["app-misc/ask"].flag("interactive") == "I"
    assert rows["media-video/fetchme"].flag("fetch") == "f"
    slotty = rows["dev-lang/slotty"]
    assert (slotty.flag("new"), slotty.flag("slot"), slotty.slot) == ("N", "S", "2")
    assert slotty.old == ["1.5:1::test_repo"]
    new = rows["app-misc/newpkg"]
    assert new.repo == "test_repo" and new.size_kib == 0
    assert new.enabled_use() == "foo python_targets_python3_12"

    rows = {r.cp: r for r in parse_file("varieties-02.txt").rows}
    libfoo = rows["dev-libs/libfoo"]
    assert (libfoo.flag("new"), libfoo.flag("update")) == ("r", "U")
    assert (libfoo.slot, libfoo.subslot) == ("0", "1.2")
    ssl = libfoo.use["USE"][0]
    assert (ssl.name, ssl.enabled, ssl.changed, ssl.new) == ("ssl", True, True, True)
    downy = rows["media-libs/downy"]
    assert (downy.flag("update"), downy.flag("downgrade"), downy.old) == ("U", "D", ["3.0::test_repo"])
    reinst = rows["sys-apps/reinst"]
    assert reinst.flag("slot") == "R" and reinst.enabled_use() == "b"


def test_forced_flags_and_use_expand_groups():
    row = parse_file("gnome-pretend-emptytree-verbose.txt").rows[0]
    assert row.cpv == "app-arch/xz-utils-5.0.5-r1"
    abi = row.use["ABI_X86"]
    assert [(f.name, f.enabled, f.forced) for f in abi] == [
        ("64", True, True), ("32", False, True), ("x32", False, True)]
    assert row.enabled_use() == "abi_x86_64 nls threads"
    assert row.size_kib == 1276


def test_binary_rows_carry_build_ids():
    (row,) = parse_file("varieties-04.txt").rows
    assert (row.kind, row.cpv, row.build_id) == ("binary", "app-misc/binme-3", 2)
    (row,) = parse_file("varieties-09.txt").rows
    assert (row.kind, row.cpv, row.build_id, row.flag("fetch")) == ("binary", "app-misc/remote-1", 1, "g")


def test_blockers_uninstalls_and_nomerge():
    rows = parse_file("varieties-03.txt").rows
    blocker = rows[1]
    assert (blocker.kind, blocker.blocker, blocker.satisfied) == ("blocks", "app-text/dos2unix", False)
    assert "soft blocking app-text/hd2u-1" in blocker.detail
    kinds = [r.kind for r in parse_file("varieties-08.txt").rows]
    assert kinds == ["ebuild", "uninstall", "blocks"]
    assert parse_file("varieties-08.txt").rows[2].satisfied is True
    nomerge = parse_file("varieties-22.txt").rows[0]
    assert (nomerge.kind, nomerge.cpv) == ("nomerge", "app-misc/h2-1")


def test_tree_depth_and_reverse_order():
    merge_list = parse_file("varieties-10.txt")
    assert [r.depth for r in merge_list.rows] == [0, 1, 2, 2]
    assert merge_list.reverse
    # Merge order is bottom-up: the top of the tree is merged last.
    assert merge_list.packages()[-1].cp == "app-misc/top"


def test_tree_and_flat_scans_hold_the_same_packages():
    flat = parse_file("gnome-pretend-emptytree-verbose.txt").packages()
    tree = parse_file("gnome-pretend-emptytree-verbose-tree.txt").packages()
    assert {(r.cpv, r.slot, r.enabled_use()) for r in flat} == {
        (r.cpv, r.slot, r.enabled_use()) for r in tree}


def test_columns_and_quiet_forms():
    rows = parse_file("varieties-14.txt").rows
    assert [(r.cpv, r.repo) for r in rows] == [
        ("dev-build/tool-1", "test_repo"), ("app-misc/newpkg-1.0", "test_repo"),
        ("app-misc/bdeppkg-1", "test_repo"), ("app-misc/top-1", "test_repo")]
    assert rows[1].enabled_use() == "foo python_targets_python3_12"
    rows = parse_file("varieties-06.txt").rows  # -q: six flag columns
    assert [(r.cpv, r.flag("new")) for r in rows] == [("app-misc/testing-1", "N"),
                                                      ("app-misc/newpkg-1.0", "N")]


def test_portage_messages_are_kept_as_notes_with_line_numbers():
    merge_list = parse_file("varieties-01.txt")
    notes = dict(merge_list.notes)
    assert any("masked" in text for text in notes.values())
    lines = (EMERGE_DATA / "varieties-01.txt").read_text().splitlines()
    for line_no, text in merge_list.notes:
        assert lines[line_no - 1].rstrip() == text


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("hello world\nthis is not emerge\n", "no merge list"),
    ("[ebuild  N     ] not/a-valid-atom!!::x 0 KiB\nTotal: 1 package\n", "not understood"),
    ("[ebuild  N     ] app-misc/a-1::r  0 KiB\n", "truncated"),
    ("[ebuild  N     ] app-misc/a-1::r  0 KiB\nTotal: 2 packages (2 new)\n", "truncated"),
    ("[ebuild  N     ] app-misc/a-1::r  USE=\"foo 0 KiB\nTotal: 1 package\n", "not understood"),
    ("\0\1\2binary", "binary"),
])
def test_bad_input_is_refused(text, message):
    with pytest.raises(ParseError, match=message):
        parse_merge_list(text)


def test_truncated_real_output_is_refused():
    text = (EMERGE_DATA / "server-pretend-emptytree-verbose.txt").read_text()
    with pytest.raises(ParseError):
        parse_merge_list(text[: len(text) // 2])  # cut mid-line
    lines = text.splitlines(keepends=True)
    with pytest.raises(ParseError, match="truncated"):
        parse_merge_list("".join(lines[:100]))  # cut at a line end


names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-qs-z][a-z0-9]{0,5})?", fullmatch=True)  # no "-r1" tail
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}[a-z]?(_(alpha|beta|pre|rc|p)[0-9]{0,2})?(-r[1-9])?",
                         fullmatch=True)
flags = st.lists(st.tuples(st.booleans(), st.booleans(), st.sampled_from(["", "*", "%", "%*"]),
                           st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)),
                 max_size=5, unique_by=lambda t: t[3])


@given(cat=names, pn=names, ver=versions, slot=st.sampled_from(["", ":2", ":0/1.2", ":3.0/3.0"]),
       repo=st.sampled_from(["", "::gentoo", "::my_repo"]), use=flags, depth=st.integers(0, 4),
       columns=st.sampled_from(["  N     ", " IN    ~", "  r  U  ", "   R    ", "     UD#"]),
       size=st.one_of(st.none(), st.integers(0, 10**7)))
def test_generated_rows_parse_back(cat, pn, ver, slot, repo, use, depth, columns, size):
    use_text = " ".join(f"{'(' if forced else ''}{'' if on else '-'}{name}{mark}{')' if forced else ''}"
                        for on, forced, mark, name in use)
    line = f"[ebuild{columns}]{' ' * (depth + 1)}{cat}/{pn}-{ver}{slot}{repo} "
    if use:
        line += f' USE="{use_text}"'
    if size is not None:
        line += f" {size} KiB"
    text = line + ("\nTotal: 1 package (1 new)\n" if size is not None else "\n")
    (row,) = parse_merge_list(text).rows
    assert (row.cp, row.version, row.depth) == (f"{cat}/{pn}", ver, depth)
    assert row.slot == (slot[1:].split("/")[0] if slot else "0")
    assert row.repo == repo[2:]
    assert row.size_kib == size
    assert row.flags == columns[1:]
    assert row.enabled_use() == " ".join(sorted(name for on, _, _, name in use if on))


SERVER = EMERGE_DATA / "server-pretend-emptytree-verbose.txt"


@pytest.mark.parametrize("cut", [186, 300, 1000])
def test_a_list_cut_inside_a_row_is_refused(cut):
    # `head -c N` of a real list: the last row may still look like a row ("::tes").
    text = SERVER.read_text()
    first_row = text.index("[ebuild")
    with pytest.raises(ParseError, match="cut off|truncated"):
        parse_merge_list(text[: first_row + cut % 120 + 20])
    with pytest.raises(ParseError, match="cut off|truncated"):
        parse_merge_list(text[:cut * 7])


@pytest.mark.parametrize("text", [
    "[nomerge       ] app-misc/h2-1::test_repo\n",
    '[blocks B      ] app-text/dos2unix ("app-text/dos2unix" is soft blocking app-text/hd2u-1)\n',
])
def test_a_list_of_only_nomerge_or_blockers_without_total_is_refused(text):
    with pytest.raises(ParseError, match="no merge list"):
        parse_merge_list(text)


@pytest.mark.parametrize("row", [
    "[ebuild  N     ] app-misc/foo-1.0:$lot::gentoo  0 KiB",      # no such slot name
    "[ebuild  N     ] app-misc/foo-1.0:0/::gentoo  0 KiB",        # empty sub-slot
    "[ebuild  N     ] app-misc/foo-1.0::gen.too  0 KiB",          # no such repository name
    "[ebuild  N     ] app-misc/foo-1.0::g/x  0 KiB",
    "[ebuild  N     ] app-misc/foo-1.0:=::gentoo  0 KiB",         # an operator, not a slot
])
def test_rows_with_names_portage_could_never_print_are_refused(row):
    with pytest.raises(ParseError, match="not understood"):
        parse_merge_list(f"{row}\nTotal: 1 package (1 new)\n")
