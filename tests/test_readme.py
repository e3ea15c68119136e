"""The front page cannot rot. The README's own fenced shell commands are read from README.md itself, and the
cheap ones run as written: ``--help``, ``info``, a tiny search and its drawing, and ``detect`` against a served
model. Every command of the CLI table exists with the flags the table gives it, and every measured number on the
page has the command that printed it in the same paragraph (a table: in the paragraph that introduces it)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ANYTIME = ".venv/bin/anytime"
CHEAP = ("--help", "info", "search", "draw", "detect")  # what runs in seconds; serve/train/demo have tests of their own


def fenced_commands(text: str) -> list[list[str]]:
    """Every command of the ```bash blocks, continuation lines joined, comments dropped, ``a && b`` split."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1:]
    return [c for c in commands if c]


def anytime_commands() -> list[list[str]]:
    return [c[1:] for c in fenced_commands(README) if c[0] == ANYTIME]


def kind(args: list[str]) -> str:
    return "--help" if args == ["--help"] else args[0]


def test_the_readme_shows_each_cheap_kind_of_command():
    kinds = {kind(a) for a in anytime_commands()}
    assert set(CHEAP) <= kinds, f"the README lost its {sorted(set(CHEAP) - kinds)} example(s)"
    assert ["scripts/demo"] in fenced_commands(README) and ["scripts/test"] in fenced_commands(README)


def run_anytime(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "anytime", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"anytime {shlex.join(args)}:\n{done.stderr[-2000:]}"
    return done


@pytest.mark.parametrize("args", [a for a in anytime_commands() if kind(a) in ("--help", "info")], ids=shlex.join)
def test_help_and_info_run_as_written(args, tmp_path):
    out = run_anytime(args, tmp_path).stdout
    assert ("usage: anytime" in out) if args == ["--help"] else ("GMACs" in out and "exit" in out)


def test_the_tiny_search_and_its_drawing_run_as_written(tmp_path):
    """In order, in one directory, as a user would paste them: the drawing reads the search's best.json."""
    steps = [a for a in anytime_commands() if kind(a) in ("search", "draw")]
    searches = [a for a in steps if a[0] == "search"]
    assert searches and all(a[a.index("--proxy") + 1] == "tiny" for a in searches), "only a tiny search is cheap"
    for args in steps:
        run_anytime(args, tmp_path, timeout=600)
    drawn = [Path(tmp_path, a[a.index("--out") + 1]) for a in steps if a[0] == "draw"]
    assert drawn and all(p.stat().st_size > 5_000 for p in drawn)


def test_detect_runs_as_written_against_a_served_model(tiny_stack, tiny_synth_dir, tmp_path):
    """The README's address and image stand for the reader's: the test's gateway and one of its images take
    their places when the README's image is not there (it is made by the demo)."""
    for args in (a for a in anytime_commands() if kind(a) == "detect"):
        args = list(args)
        args[args.index("--server") + 1] = tiny_stack.address
        image = ROOT / args[1]
        args[1] = str(image) if image.exists() else str(next((tiny_synth_dir / "val").glob("*.png")))
        done = run_anytime(args, tmp_path)
        assert "exit" in done.stdout
        if "--draw" in args:
            assert (tmp_path / args[args.index("--draw") + 1]).stat().st_size > 1_000


def cli_table() -> list[tuple[str, list[str]]]:
    """(command, flags) of each row of the README's command table."""
    rows = []
    for cell in re.findall(r"^\| `anytime ([^`]+)`", README, re.M):
        for variant in cell.split(" / "):
            words = variant.strip("` ").split()
            rows.append((words[0], re.findall(r"--[a-z][a-z-]*", variant)))
    return rows


def test_every_command_of_the_table_exists_with_its_flags(tmp_path):
    rows = cli_table()
    assert len(rows) >= 12
    for command, flags in rows:
        help_text = run_anytime([*command.split()[:1], "--help"], tmp_path).stdout
        if command == "data":
            continue
        missing = [f for f in flags if f not in help_text]
        assert not missing, f"anytime {command} --help has no {missing}"


MEASURED = re.compile(r"\d+(?:\.\d+)?\s?(?:ms\b|%|requests/s|MB\b)|\b0\.\d{3}\b")
COMMAND = re.compile(r"`(?:\.venv/bin/|scripts/|anytime |benchmarks/)[^`]*`")


def paragraphs(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def bare_numbers(text: str) -> list[str]:
    """The paragraphs of ``text`` that state a measured number without a command (a table: in its caption)."""
    blocks = paragraphs(text)
    bare = []
    for i, block in enumerate(blocks):
        if not MEASURED.search(block):
            continue
        is_table = block.lstrip().startswith("|")
        where = blocks[i - 1] if is_table and i else block
        if not COMMAND.search(where):
            bare.append(block.strip()[:120])
    return bare


def test_the_number_check_catches_a_bare_number():
    assert bare_numbers("It met 99.5 % of budgets.\n\nFrom `scripts/demo`: 99.5 % met.") == ["It met 99.5 % of budgets."]
    assert bare_numbers("Caption without a command:\n\n| a |\n|---|\n| 12 ms |")


def test_every_measured_number_sits_beside_its_command():
    bare = bare_numbers(README)
    assert not bare, "numbers without the command that printed them:\n" + "\n".join(bare)
