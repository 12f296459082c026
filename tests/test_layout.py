"""The package's shape: what a wheel installs, and an import graph without cycles.

The import graph is read from the source with ``ast`` (nothing is imported): an edge ``a -> b``
is a module-level import of ``b`` in ``a``; importing ``isnet_jax.x.y`` runs ``isnet_jax.x``'s
``__init__`` too, so that counts as an edge to the package as well. An import inside a function
is allowed (to keep a start-up or ``import isnet_jax`` light) only where moving it to the top
would close no cycle.
"""

from __future__ import annotations

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from helpers.tiny import TINY_FLAGS

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "isnet_jax"


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(module: str, node: ast.Import | ast.ImportFrom, is_package: bool,
              known: dict[str, pathlib.Path]) -> set[str]:
    """The isnet_jax modules ``node`` runs, the packages above them included."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1
            package = module.split(".")[: None if is_package else -1]
            package = package[: len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        out |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return {m for m in out if m in known}


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """``(edges, inner)``: module-level edges, and ``(module, line, target)`` of imports inside
    functions."""
    known = _modules()
    edges, inner = {}, []
    for module, path in known.items():
        edges[module] = set()
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, module=module, is_package=is_package):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import | ast.ImportFrom):
                    targets = _imported(module, child, is_package, known) - {module}
                    # A package's own submodules run after it: no edge back to it.
                    targets = {t for t in targets if not module.startswith(t + ".")}
                    if in_function:
                        inner.extend((module, child.lineno, t) for t in sorted(targets))
                    else:
                        edges[module] |= targets
                visit(child, in_function or isinstance(
                    child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

        visit(ast.parse(path.read_text()), False)
    return edges, inner


def _reaches(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path of edges from ``start`` to ``goal``, or None."""
    todo, came = [start], {start: None}
    while todo:
        node = todo.pop()
        if node == goal:
            path = [node]
            while came[path[-1]] is not None:
                path.append(came[path[-1]])
            return path[::-1]
        for nxt in sorted(edges[node]):
            if nxt not in came:
                came[nxt] = node
                todo.append(nxt)
    return None


def test_no_import_cycle():
    edges, _ = import_graph()
    assert len(edges) > 30 and "isnet_jax.models.vgg" in edges["isnet_jax.models.build"]
    cycles = []
    for module, targets in edges.items():
        for target in targets:
            back = _reaches(edges, target, module)
            if back:
                cycles.append(" -> ".join([module, *back]))
    assert not cycles, cycles


def test_no_import_inside_a_function_hides_a_cycle():
    edges, inner = import_graph()
    assert inner, "the scan finds the lazy imports (main's train/evaluate at least)"
    hidden = [f"{m}:{line} imports {t}, which imports {' -> '.join(path)}"
              for m, line, t in inner if (path := _reaches(edges, t, m))]
    assert not hidden, hidden


# The command lines; everything else is library, which never imports ``isnet_jax.cli`` (its
# parser, exit codes and process-wide hooks), not even through another module.
COMMAND_LINES = {"isnet_jax.main", "isnet_jax.inpaint", "isnet_jax.app", "isnet_jax.convert",
                 "isnet_jax.masks", "isnet_jax.export.__main__", "isnet_jax.rehearse.scenarios"}


def test_library_modules_do_not_import_the_command_line_helpers():
    edges, _ = import_graph()
    library = [m for m in edges if m not in COMMAND_LINES and m != "isnet_jax.cli"
               and not m.startswith(("isnet_jax.benchmarks.", "isnet_jax.rehearse."))]
    assert "isnet_jax.train" in library and "isnet_jax.input_pipeline" in library
    through = {m: path for m in library if (path := _reaches(edges, m, "isnet_jax.cli"))}
    assert not through, through


@pytest.mark.slow
def test_a_wheel_installs_only_isnet_jax_and_runs_the_demo_from_anywhere(tmp_path):
    """``pip wheel`` of the checkout, installed into a fresh venv that borrows this one's
    dependencies (a ``.pth`` line: no download, no reinstall of jax or TensorFlow), runs
    ``python -m isnet_jax.main`` with no ``--config`` outside any checkout."""
    source = tmp_path / "source"  # built from a copy: the build leaves nothing in the checkout
    for name in ("isnet_jax", "configs", "setup.cfg", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns(
            "__pycache__")} if (ROOT / name).is_dir() else {}))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "-w", tmp_path / "dist", source], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("isnet_jax-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
        assert "isnet_jax/configs/demo.py" in archive.namelist()
        shipped = {pathlib.PurePath(n).stem for n in archive.namelist() if n.endswith(".py")}
    assert top == {"isnet_jax", wheel.name.split("-py")[0] + ".dist-info"}, top
    # Test fixtures and bug reproductions live in tests/ and tools/, not in the wheel.
    assert not shipped & {"tiny_dataset", "jax2onnx_repro", "conftest"}, shipped

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index",
                                wheel], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr[-2000:]
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    # After the venv's own site-packages: the installed isnet_jax comes first.
    (pathlib.Path(site.stdout.strip()) / "borrowed.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [python, "-c", "import importlib.util, isnet_jax; print(isnet_jax.__file__); "
         "print(importlib.util.find_spec('configs'))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.split() == [f"{venv}/lib/python{sys.version_info[0]}."
                                    f"{sys.version_info[1]}/site-packages/isnet_jax/__init__.py",
                                    "None"], where.stdout
    # The tests' tiny run (its programs are in the compilation cache), no --config.
    run = subprocess.run(
        [python, "-m", "isnet_jax.main", "--workdir=run", "--config.num_train_steps=4",
         *TINY_FLAGS, "--config.eval.num_images_final=4"],
        cwd=elsewhere, env=dict(env, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
        timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 4/4" in run.stderr
    assert (elsewhere / "run" / "checkpoints" / "4").is_dir()
