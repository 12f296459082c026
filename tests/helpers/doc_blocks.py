"""The fenced shell blocks of README.md and docs/*.md, how each is checked, and how the run
blocks run (tests/test_docs_commands.py checks the markers, installs and dry runs;
tests/docs/ runs the run blocks, one test file per document).

Each fenced shell block (```bash, sh, shell, console) is preceded by a marker comment that says
how (docs/testing.md, "Documentation commands"):

    <!-- doc-test: run -->            run in bash, after the substitutions of ``SUBSTITUTIONS``
                                      and with ``TINY`` appended to every isnet_jax.main command
    <!-- doc-test: dry-run -->        each ``bash launch/*.sh`` command run with --dry-run
    <!-- doc-test: install -->        each ``pip install`` names extras setup.cfg defines
    <!-- doc-test: skip: REASON -->   not run; REASON says why and what covers it
    <!-- doc-test: same: DOC -->      every command is a command of a run block of DOC (a path
                                      like README.md), which runs it: a command repeated in
                                      another document runs once

A block without a marker, or with an unknown one, fails ``test_every_block_is_marked`` with its
file and line. ``pip install`` lines of a run block are checked as an install block, not run.

The run blocks of one file run in order in one fresh folder (a later block may use what an
earlier one wrote), holding stand-ins for the user's files (``user_files``). Nothing is
downloaded: the release's .pth files are the golden release-format ones, VGG19 comes from a
local stand-in of its publisher (``$ISNET_JAX_WEIGHTS_TABLE``), the TFDS data is the tiny
ArrayRecord dataset.
"""

from __future__ import annotations

import configparser
import dataclasses
import pathlib
import re
import resource
import shlex
import subprocess
import time

import numpy as np
from PIL import Image

from helpers import tiny_dataset
from helpers.paths import REPO
from helpers.tiny import TINY_FLAGS
from isnet_jax.models import WIDTH

SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
KINDS = ("run", "dry-run", "install", "skip", "same")

# The one place where a documented command is changed before it runs: user paths become the
# stand-ins, sizes and step counts become tiny. {golden}, {vgg19}, {ckpt}, {shared}, {tfds} and
# {cwd} are filled in by the test.
SUBSTITUTIONS = [
    # The release's weights and torchvision's VGG19: the golden release-format files
    # (blocks=2) and a random VGG19 of the real shapes.
    ("InpaintingModel_gen.pth", "{golden}/InpaintingModel_gen.pth"),
    ("InpaintingModel_dis.pth", "{golden}/InpaintingModel_dis.pth"),
    ("vgg19-dcbb9e9d.pth", "{vgg19}"),
    # "your checkpoint": the converted golden generator.
    ("CKPT", "{ckpt}"),
    # Folders outside the run's folder.
    ("/tmp/isnet-demo", "{shared}/isnet-demo"),  # README's quick start (docs/ repeat it: same)
    ("/tmp/tfds", "{cwd}/tfds"),
    ("/tmp/isnet-tfds", "{cwd}/isnet-tfds"),
    ("~/data/", "{cwd}/data/"),
    # Sizes and steps inside commands that are not isnet_jax.main's flags.
    ("--height 256 --width 256", "--height 32 --width 32"),
    # (the heredoc's command in scaling.md: the demo's TINY run, so its programs are cached)
    ('"--config.num_train_steps=20"', "{tiny_list}"),
]

# Appended to every `python -m isnet_jax.main` command (later flags win): tiny sizes and steps,
# the tiny TFDS dataset in place of CelebA / Places2. 4 steps and these eval sizes are
# tests/test_main.py's own run, so the demo commands compile the programs the rest of the suite
# has already cached (tests/helpers/tiny.py), and one run checks a periodic evaluation.
TINY = [*TINY_FLAGS, "--config.num_train_steps=4", "--config.eval.num_images_final=4",
        "--config.data.num_workers=0", f"--config.data.name={tiny_dataset.NAME}",
        "--config.data.data_dir={tfds}", "--config.data.eval_split=test"]
# Added for the release's configs (a --config= other than the demo's): the golden generator's
# block count and width, which init_from and --checkpoint need (blocks: half the release's 4 to
# compile).
RELEASE_CONFIG_TINY = ["--config.model.blocks=2", f"--config.model.width={WIDTH}"]

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->$")


@dataclasses.dataclass
class Block:
    path: pathlib.Path
    line: int  # of the opening fence, 1-based
    language: str
    kind: str | None  # None: no marker
    reason: str
    text: str

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def documents(root: pathlib.Path) -> list[pathlib.Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(root: pathlib.Path) -> list[Block]:
    """The fenced shell blocks of README.md and docs/*.md under ``root``, each with the marker
    on the last non-blank line before it (kind None when there is none)."""
    found = []
    for path in documents(root):
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = _FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            if fence.group(1) in SHELL_LANGUAGES:
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                marker = _MARKER.match(before.strip())
                kind, reason = None, ""
                if marker:
                    kind, _, reason = marker.group(1).partition(":")
                    kind, reason = kind.strip(), reason.strip()
                found.append(Block(path.relative_to(root), i + 1, fence.group(1), kind, reason,
                                   "\n".join(lines[i + 1:end])))
            i = end + 1
    return found


def problems(root: pathlib.Path) -> list[str]:
    """One line per block whose marker is missing or wrong, naming its file and line."""
    out, found = [], blocks(root)
    for block in found:
        if block.kind is None:
            out.append(f"{block.where()}: a ```{block.language} block without a "
                       "<!-- doc-test: run|dry-run|install|skip: REASON|same: DOC --> marker")
        elif block.kind not in KINDS:
            out.append(f"{block.where()}: unknown marker kind {block.kind!r}")
        elif block.kind == "skip" and not block.reason:
            out.append(f"{block.where()}: a skip marker needs a reason (skip: REASON)")
        elif block.kind == "same":
            out.extend(_same_problems(block, found))
    return out


def _same_problems(block: Block, found: list[Block]) -> list[str]:
    """A ``same: DOC`` block whose commands are not all commands of DOC's run blocks."""
    run = {c for b in found if str(b.path) == block.reason and b.kind == "run"
           for c in commands(b.text)}
    if not run:
        return [f"{block.where()}: same: {block.reason!r} names no document with run blocks"]
    if not commands(block.text):
        return [f"{block.where()}: an empty block marked same"]
    return [f"{block.where()}: {c!r} is not a command of a run block of {block.reason}"
            for c in commands(block.text) if c not in run]


def commands(text: str) -> list[str]:
    """The block's commands: continuation lines joined, comments and blank lines dropped
    (a heredoc stays one command with its body)."""
    out, heredoc = [], None
    for line in text.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            out[-1] += "\n" + line
            if line.strip() == heredoc:
                heredoc = None
            continue
        line = re.sub(r"(^|\s)#(\s.*)?$", "", line).strip()
        if not line:
            continue
        out.append(line)
        here = re.search(r"<<-?\s*'?(\w+)'?", line)
        if here:
            heredoc = here.group(1)
    return out


def extras_defined() -> set[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return set(config["options.extras_require"])


def check_install(command: str) -> None:
    """A `pip install` line installs this checkout with extras setup.cfg defines; `git clone`
    and `cd` lines pass."""
    parts, current = [], []
    for word in shlex.split(command) + ["&&"]:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    for words in parts:
        part = shlex.join(words)
        if words[:2] == ["git", "clone"] or words[:1] == ["cd"]:
            continue
        assert words[:2] == ["pip", "install"], f"not an install command: {part}"
        targets = [w for w in words[2:] if not w.startswith("-")]
        assert targets, part
        for target in targets:
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
            assert match, f"{part}: installs {target!r}, not this checkout"
            for extra in (match.group(1) or "").split(","):
                assert not extra or extra in extras_defined(), f"{part}: no extra {extra!r}"


def check_dry_run(command: str) -> None:
    words = shlex.split(command)
    assert words[0] == "bash" and words[1].startswith("launch/"), \
        f"a dry-run block holds launch scripts only: {command}"
    result = subprocess.run(["bash", words[1], "--dry-run", *words[2:]], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    syntax = subprocess.run(["bash", "-n"], input=result.stdout, capture_output=True, text=True)
    assert syntax.returncode == 0, f"{command}: its plan is not valid bash\n{syntax.stderr}"


def runnable(command: str, values: dict[str, str]) -> str:
    values = {**values, "tiny_list": ", ".join(f'"{f.format(**values)}"' for f in TINY)}
    for old, new in SUBSTITUTIONS:
        command = command.replace(old, new.format(**values))
    if re.search(r"python3? -m isnet_jax\.main\b", command) and "<<" not in command:
        tiny = TINY + (RELEASE_CONFIG_TINY if re.search(r"--config=(?!configs/demo\.py)", command)
                       else [])
        command += " " + " ".join(shlex.quote(f.format(**values)) for f in tiny)
    return command


@dataclasses.dataclass
class Ran:
    block: Block
    script: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    cpu_seconds: float  # its processes' user and system time: its cost on a loaded machine


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_document(doc: str, values: dict[str, str], env: dict[str, str], cwd: pathlib.Path,
                 timeout: float = 1800) -> list[Ran]:
    """Runs the run blocks of ``doc`` (a path relative to the checkout) in order in ``cwd``,
    after the stand-ins of ``user_files``; stops at the first that fails (a later block may
    need what it makes)."""
    user_files(cwd)
    values = {**values, "cwd": str(cwd)}
    out = []
    for block in blocks(REPO):
        if str(block.path) != doc or block.kind != "run":
            continue
        script = [runnable(c, values) for c in commands(block.text) if not c.startswith("pip ")]
        start, cpu = time.monotonic(), _children_cpu()
        try:
            result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + "\n".join(script)],
                                    cwd=cwd, env=env, capture_output=True, text=True,
                                    timeout=timeout)
            returncode, stdout, stderr = result.returncode, result.stdout, result.stderr
        except subprocess.TimeoutExpired as e:
            # A guard against a hang, not a time budget: on a 2-core machine that other jobs
            # load 10-fold, a block that compiles takes over 15 minutes (the first cause of
            # training.md's blocks "never completing"). Said as the block's failure, with its
            # log, so that it is not a fixture error in every test of the file.
            returncode = -1
            stdout = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
                else (e.stdout or "")
            stderr = ((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes)
                      else (e.stderr or "")) + f"\n[timed out after {timeout:.0f} s]"
        out.append(Ran(block, script, returncode, stdout, stderr,
                       time.monotonic() - start, _children_cpu() - cpu))
        if returncode:
            break
    return out


def check_ran(doc: str, ran: list[Ran]) -> None:
    """Every run block of ``doc`` ran and exited 0; each one's time is printed (-s, or the
    test's captured output)."""
    for r in ran:
        log = (r.stdout + r.stderr)[-6000:]
        assert r.returncode == 0, f"{r.block.where()} failed:\n" + "\n".join(r.script) + "\n" + log
        print(f"{r.block.where()}: {r.seconds:.0f} s ({r.cpu_seconds:.0f} s of CPU)")
    expected = [b.where() for b in blocks(REPO) if str(b.path) == doc and b.kind == "run"]
    assert [r.block.where() for r in ran] == expected and expected


def user_files(cwd: pathlib.Path) -> None:
    """What a user has beside the commands: a photo and a mask, folders of them, a mask set."""
    from skimage import data

    rng = np.random.default_rng(0)
    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    for folder in ("photos", "my_photos", "my_val", "data/places2/val"):
        (cwd / folder).mkdir(parents=True)
        for k, photo in enumerate(photos):
            Image.fromarray(photo[:64, :64]).save(cwd / folder / f"p{k}.jpg")
    (cwd / "masks").mkdir()
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:40, 16:48] = 0  # black = hole, the default polarity
    for k in range(len(photos)):
        Image.fromarray(mask).save(cwd / "masks" / f"p{k}.png")
    Image.fromarray(photos[0][:64, :64]).save(cwd / "photo.jpg")
    Image.fromarray(mask).save(cwd / "mask.png")
    masks = cwd / "data" / "testing_mask_dataset"
    masks.mkdir(parents=True)
    for k in range(10):
        m = np.full((64, 64), 255, np.uint8)
        side = int(rng.integers(10, 50))
        m[:side, :side] = 0
        Image.fromarray(m).save(masks / f"{k:05d}.png")
    for name in ("isnet_jax", "configs", "launch", "tests", "setup.cfg"):
        (cwd / name).symlink_to(REPO / name)


