"""Writes docs/cli.md from the parsers themselves: every command line, every flag.

    python tools/make_cli_docs.py            # rewrite docs/cli.md
    python tools/make_cli_docs.py --check    # status 1 if docs/cli.md differs from the parsers

The argparse commands' parsers are taken in this process (``cli.parser_of``: nothing runs);
the absl commands (main and three benchmarks) each print their flags with absl's
``--helpxml`` in their own process, since their flags live in one global registry.
``tests/test_cli_docs.py`` holds docs/cli.md to the parsers flag by flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "cli.md"
sys.path.insert(0, str(REPO))

from isnet_jax import cli  # noqa: E402  (the checkout's package, not an installed one)


@dataclasses.dataclass(frozen=True)
class Command:
    """A command line: ``name`` as typed, the modules whose ``__main__`` block runs it, and
    ``parse``, ``MODULE:FUNCTION`` taking argv (argparse) or None (absl: ``--helpxml``)."""

    name: str
    modules: tuple[str, ...]
    parse: str | None = None
    subcommand: str | None = None  # masks: the flags are its "split" subcommand's
    old_values: tuple[tuple[str, str], ...] = ()  # deprecated value forms, not flags

    @property
    def title(self) -> str:
        return f"{self.name} {self.subcommand}" if self.subcommand else self.name


COMMANDS = (
    Command("python -m isnet_jax.main", ("isnet_jax.main",),
            old_values=(("--checkpoint=STEP", "--step=STEP"),)),
    Command("python -m isnet_jax.inpaint", ("isnet_jax.inpaint",), "isnet_jax.inpaint:parse_args"),
    Command("python -m isnet_jax.app", ("isnet_jax.app",), "isnet_jax.app:parse_args"),
    Command("python -m isnet_jax.convert", ("isnet_jax.convert",), "isnet_jax.convert:main"),
    Command("python -m isnet_jax.export", ("isnet_jax.export.__main__",),
            "isnet_jax.export.__main__:parse_args"),
    Command("python -m isnet_jax.masks", ("isnet_jax.masks",), "isnet_jax.masks:main", "split"),
    Command("python -m isnet_jax.rehearse",
            ("isnet_jax.rehearse.__main__", "isnet_jax.rehearse.scenarios"),
            "isnet_jax.rehearse.scenarios:parse_args"),
    Command("python -m isnet_jax.benchmarks.compare_torch",
            ("isnet_jax.benchmarks.compare_torch",)),
    Command("python -m isnet_jax.benchmarks.export", ("isnet_jax.benchmarks.export",),
            "isnet_jax.benchmarks.export:main"),
    Command("python -m isnet_jax.benchmarks.fid_lpips", ("isnet_jax.benchmarks.fid_lpips",),
            "isnet_jax.benchmarks.fid_lpips:main"),
    Command("python -m isnet_jax.benchmarks.inpaint", ("isnet_jax.benchmarks.inpaint",),
            "isnet_jax.benchmarks.inpaint:parse_args"),
    Command("python -m isnet_jax.benchmarks.input_pipeline",
            ("isnet_jax.benchmarks.input_pipeline",), "isnet_jax.benchmarks.input_pipeline:main"),
    Command("python -m isnet_jax.benchmarks.sweep", ("isnet_jax.benchmarks.sweep",)),
    Command("python -m isnet_jax.benchmarks.train_step", ("isnet_jax.benchmarks.train_step",)),
)


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    argument: str
    default: str
    help: str


# ---------------------------------------------------------------------------------------------
# Reading the parsers


def parser(command: Command) -> argparse.ArgumentParser:
    """The argparse parser of ``command`` (its subcommand's, for masks)."""
    module, function = command.parse.split(":")
    top = cli.parser_of(getattr(importlib.import_module(module), function))
    if command.subcommand is None:
        return top
    (subparsers,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    sub = subparsers.choices[command.subcommand]
    if sub.description is None:  # what `--help` of the command says of it
        (sub.description,) = [a.help for a in subparsers._choices_actions
                              if a.dest == command.subcommand]
    return sub


def documented(action: argparse.Action) -> bool:
    """The flags a user sees in ``--help``: not ``--help`` itself, nor hidden ones (internal,
    or old spellings, which are listed apart)."""
    return (bool(action.option_strings) and action.help != argparse.SUPPRESS
            and not isinstance(action, argparse._HelpAction))


def _shown(value) -> str:
    if isinstance(value, list | tuple):
        return " ".join(map(str, value))
    if isinstance(value, os.PathLike | str) and str(value).startswith(str(REPO.parent) + "/"):
        return os.path.relpath(value, REPO)  # not the folder of this machine's checkout
    return str(value)


def argparse_flags(p: argparse.ArgumentParser) -> list[Flag]:
    formatter = p._get_formatter()
    flags = []
    for action in p._actions:
        if not documented(action):
            continue
        if action.nargs == 0:
            argument, default = "", "off"
        else:
            argument = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}" if action.choices
                else {int: "N", float: "X"}.get(action.type, action.dest.upper()))
            if action.nargs in ("+", "*"):
                argument += " ..."
            default = ("required" if action.required else
                       "-" if action.default in (None, "") else _shown(action.default))
        text = formatter._expand_help(action) if action.help else ""
        flags.append(Flag(", ".join(action.option_strings), argument, default, text))
    return flags


def absl_helpxml(commands: list[Command]) -> dict[str, str]:
    """absl's ``--helpxml`` of each command, each in a process of its own (side by side)."""
    procs = {c.name: subprocess.Popen([sys.executable, "-m", c.modules[0], "--helpxml"],
                                      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for c in commands}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        if not stdout.lstrip().startswith("<?xml"):
            raise RuntimeError(f"{name} --helpxml printed no XML:\n{stderr[-2000:]}")
        out[name] = stdout
    return out


def own_absl_flag(element: ET.Element) -> bool:
    file = element.findtext("file")
    return file.startswith("isnet_jax") or file.startswith(str(REPO / "isnet_jax"))


def absl_flags_from_xml(text: str) -> list[Flag]:
    """The command's own flags (defined in isnet_jax: not absl's, nor its libraries')."""
    flags = []
    for element in ET.fromstring(text).iter("flag"):
        if not own_absl_flag(element):
            continue
        kind = element.findtext("type")
        default = element.findtext("default")
        meaning = element.findtext("meaning") or ""
        if kind == "config object":  # absl shows the loaded config; its help names the file
            named = re.search(r"default: ([\w.]+)\)", meaning)
            default = named.group(1) if named else "required"
        elif default in ("", "[]", "None"):
            default = "-"
        argument = {"bool": "", "int": "N", "float": "X"}.get(kind, "VALUE")
        if kind == "string enum":
            argument = "{" + ",".join(e.text for e in element.iter("enum_value")) + "}"
        elif kind == "config object":
            argument = "FILE"
        elif kind.startswith("comma separated"):
            argument = "A,B,..."
        elif kind.startswith("multi"):
            argument = "VALUE (repeatable)"
        flags.append(Flag(f"--{element.findtext('name')}", argument,
                          "off" if default == "false" else _shown(default), meaning))
    return sorted(flags, key=lambda f: f.name)


def summary(text: str | None) -> str:
    """The first sentence of a description that is not a usage line."""
    for paragraph in (text or "").split("\n\n"):
        line = " ".join(paragraph.split()).replace("``", "`")
        if line and not line.startswith(("``python", "python")):
            return re.split(r"(?<=\.)\s", line, maxsplit=1)[0]
    return ""


# ---------------------------------------------------------------------------------------------
# The page

HEAD = """\
# Command lines

<!-- Generated by `python tools/make_cli_docs.py` from the parsers: do not edit by hand. -->
Every command and every flag, generated from the parsers by `python tools/make_cli_docs.py`
(change a flag's help in the code, then run it); `tests/test_cli_docs.py` fails when this page
and the parsers disagree.

## One vocabulary

| what | flag |
|---|---|
| a checkpoint and its step | `--checkpoint PATH --step N` (default: the latest step) |
| batch size | `--batch-size N` |
| mask polarity | `--mask-polarity {hole_black,hole_white}` (training: a config field) |
| crop settings | `--crop-margin N`, `--crop-above N`, `--size N` |
| resize mode | `--resize-mode` (one; `--resize-modes` where a benchmark times several) |
| where results go | `--output DIR` |
| the PyTorch interpreter | `--torch-python` (`--torch_python` in compare_torch, an absl command) |

- Words are joined by dashes (`--batch-size`) in the argparse commands. The absl commands,
  `isnet_jax.main` and the benchmarks `train_step`, `compare_torch` and `sweep`, spell the same
  words with underscores (`--batch_size`): that is absl's convention, shared by the
  `--config.FIELD=VALUE` overrides of their `--config` file, whose fields are the config's
  (`configs/default.py` lists them, e.g. `--config.masks.polarity`).
- `PATH@STEP` is not taken by any flag (an error that names `--step`); only the config field
  `config.init_from`, one string, takes `DIR@STEP`.
- A mistake in a command (a bad flag or value, a missing file) is one `error:` line and exit
  status 2. An old spelling still works, after one line `warning: OLD is deprecated; use NEW`;
  the table at the end lists them. Every command takes `--help`.
"""


def section(command: Command, flags: list[Flag], description: str,
            old: dict[str, str]) -> str:
    lines = [f"## `{command.title}`", "", description, "",
             "| flag | argument | default | meaning |", "|---|---|---|---|"]
    for f in flags:
        argument = f"`{f.argument}`" if f.argument else ""
        cell = " ".join(f.help.split()).replace("|", "\\|")
        lines.append(f"| `{f.name}` | {argument} | {f.default} | {cell} |")
    if command.parse is None:
        lines += ["", "Plus `--config.FIELD=VALUE` for any field of the `--config` file "
                  "(`configs/default.py`), and absl's own flags (`--helpfull`, `--flagfile`, "
                  "logging: `--verbosity`, `--log_dir`, ...)."]
    if old:
        lines += ["", "Old spellings (still accepted, with a warning): " + ", ".join(
            f"`{o}` -> `{n}`" for o, n in old.items()) + "."]
    return "\n".join(lines) + "\n"


def collect() -> list[tuple[Command, list[Flag], str, dict[str, str]]]:
    """Per command: its flags, its one-line description and its old spellings."""
    xml = absl_helpxml([c for c in COMMANDS if c.parse is None])
    out = []
    for command in COMMANDS:
        if command.parse is None:
            flags = absl_flags_from_xml(xml[command.name])
            description = summary(ET.fromstring(xml[command.name]).findtext("usage"))
            old = {}
        else:
            p = parser(command)
            flags, old = argparse_flags(p), p.deprecated_aliases()
            description = summary(p.description or p.usage)
        out.append((command, flags, description, {**old, **dict(command.old_values)}))
    return out


def render(collected) -> str:
    parts = [HEAD]
    for command, flags, description, old in collected:
        parts.append(section(command, flags, description, old))
    parts.append("## Old spellings\n\n| command | old | use |\n|---|---|---|\n" + "".join(
        f"| `{command.title}` | `{o}` | `{n}` |\n"
        for command, _, _, old in collected for o, n in old.items()))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python tools/make_cli_docs.py",
                           description="Write docs/cli.md from the parsers.")
    p.add_argument("--check", action="store_true",
                   help="write nothing; status 1 if docs/cli.md differs from the parsers")
    args = p.parse_args(argv)
    text = render(collect())
    if args.check:
        same = DOC.is_file() and DOC.read_text() == text
        print(f"{DOC.relative_to(REPO)} {'matches' if same else 'differs from'} the parsers"
              + ("" if same else ": run python tools/make_cli_docs.py"))
        return 0 if same else 1
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}: {len(COMMANDS)} commands")
    return 0


if __name__ == "__main__":
    sys.exit(main())
