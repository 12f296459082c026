"""Compiled programs kept between runs: JAX's persistent compilation cache, on for every command.

Every command line (training and ``--mode=eval``, ``inpaint``, the web page, ``export``)
calls ``enable`` before its first compilation. The second ``inpaint`` of a photo then loads
its programs from disk instead of compiling them, and says so (``report()``):

    compilation: nothing compiled, 1 program(s) loaded from the cache in ~/.cache/isnet_jax/...

Where: ``<cache root>/jax_compilation_cache``, the cache root being ``$ISNET_JAX_CACHE`` or
``~/.cache/isnet_jax`` (the weights cache's). Moved by ``--compilation_cache=PATH``
(``--compilation-cache`` for ``inpaint``, ``app`` and ``export``) or
``$ISNET_JAX_COMPILATION_CACHE``; ``off`` turns it off. JAX's own variables win over our
defaults when set: ``JAX_COMPILATION_CACHE_DIR`` (the folder, when neither of ours is given),
``JAX_COMPILATION_CACHE_MAX_SIZE`` and ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``.

Bounded: at most ``MAX_BYTES`` (JAX's ``jax_compilation_cache_max_size``); past it JAX deletes
the least recently used programs. That bound makes JAX lock the folder (``filelock``) around
each read and write, so runs sharing it at once do not read half-written programs. It also
makes JAX keep an access time beside each program, and fail every write while one lacks it:
``enable`` adds those of programs written without a bound (by other JAX programs sharing
``$JAX_COMPILATION_CACHE_DIR``). Every program is kept, however fast it compiled (JAX's
default keeps those over 1 s only): a run that compiles nothing is then what the log can say.

Several processes (a pod, a SLURM job): JAX writes cache entries only from process 0
(``jax._src.compiler._cache_write``: concurrent writers contend on shared file systems such as
GCS); the other processes read the same folder and compile what they do not find there, and
write nothing. So hosts never overwrite each other's entries, whether each host has its own
``~/.cache`` (a TPU VM: only worker 0's cache fills; the others compile every run, as before)
or they share one (an NFS home on SLURM: process 0 fills it, the others load from it). A
program's key covers its devices and their topology: a pod's programs and a one-process run's
never mix.

CPU processes of one run (``python -m isnet_jax.rehearse``, a CPU SLURM job) share keys too:
JAX hashes a CPU program's topology per process, so process 1 never found what process 0
wrote and compiled every program again, every run (the rehearsal's second host spent 35 s of
each start on the training step alone). For programs that span several CPU processes
``enable`` hashes what all of them see alike instead: every device's id, process and kind, and
this machine's processor (so hosts of other CPU models never load each other's code). TPU and
GPU programs, and one-process programs, keep JAX's keys.
"""

from __future__ import annotations

import os
import pathlib
import sys

from absl import logging

# The weights cache's variable (issue 27's isnet_jax.weights): one root for what we keep.
CACHE_VARIABLE = "ISNET_JAX_CACHE"
# A folder for the compilation cache, or "off".
VARIABLE = "ISNET_JAX_COMPILATION_CACHE"
OFF = "off"
FOLDER = "jax_compilation_cache"
MAX_BYTES = 4 << 30
FLAG_HELP = (f"folder for compiled programs kept between runs, or {OFF} (default: "
             f"${VARIABLE}, else $JAX_COMPILATION_CACHE_DIR, else "
             f"${CACHE_VARIABLE}/{FOLDER}, ${CACHE_VARIABLE} defaulting to ~/.cache/isnet_jax)")

_HITS = "/jax/compilation_cache/cache_hits"
# Recorded by JAX as it writes an entry (its name notwithstanding).
_WRITES = "/jax/compilation_cache/cache_misses"
# Recorded for every program JAX hands to XLA or the cache: compiled or loaded.
_PROGRAMS = "/jax/core/compile/backend_compile_duration"
_counts = {"programs": 0, "hits": 0, "writes": 0}
_enabled: dict[str, pathlib.Path | None] = {}


def cache_root() -> pathlib.Path:
    """``$ISNET_JAX_CACHE``, else ``~/.cache/isnet_jax``."""
    root = os.environ.get(CACHE_VARIABLE)
    return pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache/isnet_jax"


def resolve(setting: str | None = None) -> pathlib.Path | None:
    """The folder ``setting`` (a flag's value) means, None for ``off``; unset: the variables
    (ours, then JAX's), then ``cache_root() / FOLDER``."""
    for value in (setting, os.environ.get(VARIABLE), os.environ.get("JAX_COMPILATION_CACHE_DIR")):
        if value:
            return None if value.strip().lower() == OFF else pathlib.Path(value).expanduser()
    return cache_root() / FOLDER


def enable(setting: str | None = None) -> pathlib.Path | None:
    """Points JAX's persistent compilation cache at ``resolve(setting)`` (or turns it off),
    bounded by ``MAX_BYTES``, and starts counting compilations for ``report``. Call before the
    process's first compilation: JAX reads the settings once, then. Imports JAX: a command
    that may not need it (``inpaint`` in onnxruntime) calls this once it knows it does."""
    import jax

    folder = resolve(setting)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
    else:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(folder))
        if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
        if jax.config.jax_compilation_cache_max_size > 0:
            _add_access_times(folder)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if not _enabled:
        _share_cpu_keys()
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _enabled["folder"] = folder
    return folder


def _add_access_times(folder: pathlib.Path) -> None:
    # A bounded cache (JAX's LRU eviction) reads the access-time file beside every entry
    # before each write, and fails the write when one is missing: entries written by JAX
    # without a bound (another JAX program's in a shared $JAX_COMPILATION_CACHE_DIR, a test
    # process's) have none, and then no command of ours saved anything again. Such an entry
    # counts as last used when it was written.
    try:
        for entry in folder.glob("*-cache"):
            atime = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
            if not atime.exists():
                atime.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))
    except OSError:
        pass  # a folder we cannot write: JAX says so at its first write


def _processor() -> str:
    """This machine's processor model and instruction-set flags (Linux), else what
    ``platform`` knows: compiled CPU code is only loaded where it can run."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f.read().split("\n\n")[0].splitlines()
                     if line.startswith(("model name", "flags", "Features", "CPU part"))]
        if lines:
            return "\n".join(lines)
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _share_cpu_keys() -> None:
    # See the module docstring. JAX computes a key in jax._src.cache_key.get, which looks
    # _hash_accelerator_config up by name at each call; where that changes, keys stay JAX's.
    try:
        from jax._src import cache_key
    except ImportError:
        return
    original = getattr(cache_key, "_hash_accelerator_config", None)
    hash_string = getattr(cache_key, "_hash_string", None)
    if original is None or hash_string is None or getattr(original, "_isnet_jax", False):
        return
    processor = _processor()

    def hash_accelerator_config(hash_obj, accelerators) -> None:
        devices = list(accelerators.flat)
        if (len({d.process_index for d in devices}) > 1
                and all(d.platform == "cpu" for d in devices)):
            for d in devices:
                hash_string(hash_obj, f"{d.device_kind}/{d.id}/{d.process_index}")
            hash_string(hash_obj, processor)
        else:
            original(hash_obj, accelerators)

    hash_accelerator_config._isnet_jax = True
    cache_key._hash_accelerator_config = hash_accelerator_config


def _on_event(event: str, **_) -> None:
    if event == _HITS:
        _counts["hits"] += 1
    elif event == _WRITES:
        _counts["writes"] += 1


def _on_duration(event: str, seconds: float, **_) -> None:
    if event == _PROGRAMS:
        _counts["programs"] += 1


def counts() -> tuple[int, int]:
    """``(compiled, loaded)``: programs XLA compiled and programs loaded from the cache in
    this process since ``enable``."""
    return _counts["programs"] - _counts["hits"], _counts["hits"]


def report(without_jax: str = "") -> str:
    """One line on what this process compiled and what it loaded from the cache;
    ``without_jax``: what ran instead, said when JAX was never imported (nothing compiled)."""
    if "jax" not in sys.modules:
        return f"compilation: nothing compiled{f' ({without_jax})' if without_jax else ''}"
    compiled, loaded = counts()
    if not _enabled:  # JAX ran without enable(): nothing was counted
        return "compilation: not counted (the compilation cache was not enabled)"
    folder = _enabled.get("folder")
    if folder is None:
        return (f"compilation: {compiled} program(s) compiled; the cache is off (the "
                f"compilation cache flag or ${VARIABLE}), nothing kept for the next run")
    if compiled == 0:
        return (f"compilation: nothing compiled, {loaded} program(s) loaded from the cache in "
                f"{folder}")
    # Fewer saved than compiled: another process is the writer (see above), or JAX could not
    # write (its warning says why).
    return (f"compilation: {compiled} program(s) compiled, {_counts['writes']} saved to the "
            f"cache in {folder} for the next run, {loaded} loaded from it")


def log_report() -> None:
    """``report()`` in the log (INFO)."""
    logging.info("%s", report())
