"""The documentation holds together: README.md stays a short guide, every relative link in README.md
and docs/*.md points at a file (and a heading) that exists, and no tracked file speaks of how the work
went instead of what the project is: numbered issues or sessions, helper letters, machine temporary
paths."""

import re
import subprocess

import pytest
from PIL import Image

from helpers import ROOT

README_MAX_LINES = 400
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.MULTILINE)
# Each alternative names work-log wording, never a word a description needs: a numbered issue or
# session, a session named as the current or an earlier one, a helper's letter, a machine temporary
# path. (The examples below are split in two strings, so that this file passes its own check.)
PROCESS_WORDS = re.compile(
    r"\bissues? #?\d+"
    r"|\bsessions? \d+"
    r"|\b(?:this|earlier|previous|last|next|an earlier) session\b"
    r"|(?-i:\bhelper [A-Z]\b)"
    r"|/tm[p]/",
    re.IGNORECASE)


def markdown_pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    seen, result = {}, set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move depth to docs/"


def test_every_relative_link_points_at_a_file_and_heading_that_exist():
    broken = []
    for page in markdown_pages():
        for target in LINK.findall(FENCE.sub("", page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def tracked_files():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return [ROOT / name for name in listed.decode().split("\0") if name and (ROOT / name).is_file()]


def texts(path):
    """The words a file carries: its text, or for a PNG its text chunks (figure metadata)."""
    if path.suffix == ".png":
        with Image.open(path) as image:
            return "\n".join(f"{key}: {value}" for key, value in image.info.items() if isinstance(value, str))
    data = path.read_bytes()
    return "" if b"\0" in data[:8192] else data.decode("utf-8", errors="replace")


def test_no_tracked_file_speaks_of_the_work_log():
    found = []
    for path in tracked_files():
        for number, line in enumerate(texts(path).splitlines(), 1):
            match = PROCESS_WORDS.search(line)
            if match:
                found.append(f"{path.relative_to(ROOT)}:{number}: {match.group(0)!r} in {line.strip()[:120]}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("line, flagged", [
    ("# The residual codec (iss" "ue 11): contract", True),
    ("see iss" "ue #4 for the plan", True),
    ("measured in sess" "ion 4, under load", True),
    ("Measured before the change in this sess" "ion", True),
    ("as help" "er E's run found", True),
    ("--code_dir=/tm" "p/C_code", True),
    ('@pytest.fixture(scope="session")', False),
    ("from helpers import ROOT", False),
    ("start_new_session=True", False),
    ("def test_x(tmp_path):", False),
    ("a missing list, an unknown label: one line names the issue", False),
])
def test_the_pattern_flags_work_log_words_only(line, flagged):
    assert bool(PROCESS_WORDS.search(line)) == flagged
