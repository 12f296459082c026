"""``python -m isnet_jax.rehearse``: the Cloud TPU pod path, rehearsed on one machine.

Everything of a pod-slice run except the chips: N hosts (default 4 processes x 2 CPU devices,
the shape of a v4-16 or a v5litepod-8), each running the real command line
(``python -m isnet_jax.main ... --distributed``), one ``gs://`` workdir in a local Cloud
Storage emulator (``gcs_emulator``), and the things that happen to such runs:

  exact         4 hosts x 2 devices train as 1 process x 8 devices does on the same global
                batches; their gs:// checkpoint restores in one process for eval and inpaint
  preemption    SIGTERM to one host (a maintenance event, a Spot reclaim): every host saves the
                same step and exits 0; the same command resumes there and ends with the
                parameters of the uninterrupted run
  lost_host     kill -9 of one host while a save is in flight: the others stop within
                ``LOST_HOST_BOUND_S`` with one line naming the lost process; a restart resumes
                from the newest complete step, naming the unfinished one it skips
  bucket_fault  the bucket goes away during a save and comes back: the run retries or stops
                with one line naming the bucket path (then the same command resumes); no
                step is half-committed: the last restores to the uninterrupted run's weights
  host_count    a resume on another host count (4 -> 2): one line saying what to pass; with
                --config.data.resume_position=False it trains on

Each scenario prints one line (``PASS``/``FAIL``, its seconds, what it saw). Every process and
port it starts is stopped at the end, also on Ctrl-C. The tests (``rehearse/test_rehearse.py``)
run these same functions on a tiny model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import portpicker

SCENARIOS = ("exact", "preemption", "lost_host", "bucket_fault", "host_count")

# The hosts' --lost_host_timeout (liveness.py): a host silent this long is lost. Shorter than
# the default (60 s) to keep the rehearsal short; the surviving hosts must all have stopped
# within LOST_HOST_BOUND_S of the kill (the timeout, a watch period, and the exit).
LOST_HOST_TIMEOUT_S = 20
LOST_HOST_BOUND_S = 45

# Sizes: "tiny" for the tests (32 px, ISNet blocks=1 at a quarter of the release's width: 1/16
# of its parameters, so that the hosts' gradient all-reduces, saves and restores are quick; the
# release's init and constant learning rate, so that runs of any length share one compiled
# step), "demo" the demo config's model (64 px) as a user would first try.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"image_size": 32, "model.width": 8, "model.init": "release",
             "model.init_scale": 0.001, "lr_schedule": "constant", "warmup_steps": 0},
    "demo": {},
}
# A config from configs/ (--config) at a size these CPUs train in minutes: its own model and
# losses (4 blocks, VGG on), at 64 px on the bundled photos in place of its dataset.
CONFIG_SIZES: dict[str, Any] = {"image_size": 64, "data.source": "skimage"}
_COMMON = {
    "batch_size": 8, "log_every_steps": 1, "image_every_steps": 0, "eval_every_steps": 0,
    "checkpoint_every_steps": 2, "max_checkpoints_to_keep": 20,
    "data.skimage_num_images": 64, "eval.num_images_final": 8, "eval.batch_size": 8,
}
_REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class Verdict:
    """One scenario's outcome: ``line()`` is what the rehearsal prints."""

    name: str
    ok: bool
    seconds: float
    detail: str

    def line(self) -> str:
        verdict = "PASS" if self.ok else "FAIL"
        return f"{verdict}  {self.name:<13} {self.seconds:5.0f} s  {self.detail}"


class ScenarioFailed(AssertionError):
    """A scenario saw something a TPU user must not: the message says what."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioFailed(message)


# ---------------------------------------------------------------------------------------------
# Hosts: N processes of the real command line on localhost
# ---------------------------------------------------------------------------------------------

_LIVE: set[Hosts] = set()  # every group still running: killed on exit whatever happens


class Hosts:
    """``count`` processes of ``python -m isnet_jax.main --distributed`` (one coordinator port,
    gloo collectives, ``devices`` CPU devices each), their output in ``logdir/TAG.hostI.log``.

    Each host is its own session (a terminal's Ctrl-C reaches only the rehearsal, which then
    kills them); ``kill()`` (also on leaving the ``with`` block) ends every one of them.
    """

    def __init__(self, rehearsal: Rehearsal, tag: str, workdir: str, flags: list[str], *,
                 count: int, devices: int):
        self.tag, self.count, self.workdir = tag, count, workdir
        self.logs = [rehearsal.logdir / f"{tag}.host{i}.log" for i in range(count)]
        port = portpicker.pick_unused_port()
        env = {**os.environ, **rehearsal.env,
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        self.started = time.monotonic()
        self.procs: list[subprocess.Popen] = []
        _LIVE.add(self)
        for i in range(count):
            with open(self.logs[i], "w") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "isnet_jax.main", f"--workdir={workdir}",
                     "--distributed", f"--coordinator_address=127.0.0.1:{port}",
                     f"--num_processes={count}", f"--process_id={i}",
                     f"--lost_host_timeout={LOST_HOST_TIMEOUT_S}", *flags],
                    cwd=_REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True))

    def log(self, i: int) -> str:
        return self.logs[i].read_text(errors="replace")

    def wait_for(self, i: int, pattern: str, timeout: float) -> re.Match:
        """Waits until host ``i``'s log matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(pattern, self.log(i))
            if found:
                return found
            if self.procs[i].poll() is not None:
                raise ScenarioFailed(f"{self.tag}: host {i} exited with status "
                                     f"{self.procs[i].returncode} before /{pattern}/ "
                                     f"({self.logs[i]}):\n{self.tail(i)}")
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"{self.tag}: no /{pattern}/ in host {i}'s log within "
                                     f"{timeout:.0f} s ({self.logs[i]})")
            time.sleep(0.2)

    def wait(self, timeout: float, hosts: list[int] | None = None) -> list[int | None]:
        """Waits up to ``timeout`` s for these hosts (default all) to exit; their statuses
        (None: still running)."""
        hosts = list(range(self.count)) if hosts is None else hosts
        deadline = time.monotonic() + timeout
        for i in hosts:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.procs[i].wait(max(deadline - time.monotonic(), 0.01))
        return [self.procs[i].poll() for i in hosts]

    def finish(self, timeout: float) -> None:
        """Waits for a run that must end well: every host exits 0."""
        codes = self.wait(timeout)
        for i, code in enumerate(codes):
            expect(code == 0, f"{self.tag}: host {i} "
                   + ("still running" if code is None else f"exited with status {code}")
                   + f" after {timeout:.0f} s ({self.logs[i]}):\n{self.tail(i)}")

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)

    def tail(self, i: int, lines: int = 15) -> str:
        return "\n".join(self.log(i).splitlines()[-lines:])

    def kill(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        _LIVE.discard(self)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def kill_all_hosts() -> None:
    for hosts in list(_LIVE):
        hosts.kill()


# ---------------------------------------------------------------------------------------------
# The rehearsal: shared settings and the reference run
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Rehearsal:
    """What every scenario shares: the bucket, the host shape, the model, the logs.

    ``bucket``: a started ``gcs_emulator.Emulator`` (its ``env`` goes to every host);
    ``steps``: training steps of each run (checkpoints every 2).
    """

    bucket: Any
    logdir: pathlib.Path
    hosts: int = 4
    devices: int = 2
    model: str = "tiny"
    # A config file (``configs/places2.py``) to rehearse instead of the demo's: trained at
    # ``CONFIG_SIZES``, with VGG19 fetched on first use from ``weights`` (``env``).
    config: str = ""
    steps: int = 8
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # config.data overrides
    # More variables for every host (the stand-in weights' table and the shared cache).
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)
    timeout: float = 900  # a whole run of the hosts
    _reference: str | None = None

    @property
    def env(self) -> dict[str, str]:
        cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(
            pathlib.Path(tempfile.gettempdir()) / "isnet_jax_rehearse_jax_cache")
        return {**self.bucket.env, "JAX_PLATFORMS": "cpu",
                "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
                "JAX_COMPILATION_CACHE_DIR": cache,
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
                "PYTHONUNBUFFERED": "1", **self.extra_env}

    def overrides(self, **more: Any) -> dict[str, Any]:
        data = {f"data.{k}": v for k, v in self.data.items()}
        sizes = dict(CONFIG_SIZES if self.config else MODELS[self.model])
        if self.model == "tiny" or self.config:
            # One image per device: on CPU the step is compute-bound (a global batch of 8 takes
            # 3 s a step on 2 hosts x 2 devices of 2 cores, 4 images half that), and nothing the
            # scenarios check depends on the batch size.
            sizes["batch_size"] = self.hosts * self.devices
        return {**_COMMON, **sizes, "num_train_steps": self.steps, **data, **more}

    def flags(self, **more: Any) -> list[str]:
        config = [f"--config={self.config}"] if self.config else []
        return config + [f"--config.{k}={v}" for k, v in self.overrides(**more).items()]

    def workdir(self, name: str) -> str:
        return self.bucket.path(f"{name}-{os.getpid()}-{time.time_ns() % 10**9}")

    def launch(self, tag: str, workdir: str, *, hosts: int | None = None, **more: Any) -> Hosts:
        count = hosts or self.hosts
        return Hosts(self, tag, workdir, self.flags(**more), count=count,
                     devices=self.hosts * self.devices // count)

    def reference(self) -> str:
        """The uninterrupted run of ``steps`` steps (shared by exact and preemption)."""
        if self._reference is None:
            workdir = self.workdir("reference")
            with self.launch("reference", workdir) as run:
                run.finish(self.timeout)
            self._reference = workdir
        return self._reference


def _fresh_listings() -> None:
    # gcsfs caches directory listings per process: this one must see what the hosts wrote since.
    import gcsfs

    for fs in list(gcsfs.GCSFileSystem._cache.values()):
        fs.invalidate_cache()


def saved_steps(workdir: str) -> list[int]:
    from isnet_jax import checkpoint

    _fresh_listings()
    return checkpoint.all_steps(workdir)


def generator_distance(workdir_a: str, workdir_b: str, step: int) -> float:
    """The largest absolute difference between two checkpoints' generator weights at ``step``
    (restored in this process, whatever topology wrote them)."""
    import jax
    import numpy as np
    from flax import nnx

    from isnet_jax import checkpoint

    _fresh_listings()
    trees = [jax.tree.leaves(nnx.to_pure_dict(nnx.state(
        checkpoint.restore_generator(w, step)[0]))) for w in (workdir_a, workdir_b)]
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(*trees, strict=True))


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


def exact(r: Rehearsal) -> str:
    workdir = r.reference()
    step = 2
    check = subprocess.run(
        [sys.executable, "-c", "import sys; from isnet_jax.rehearse import scenarios; "
         "scenarios.single_process_check(*sys.argv[1:])",
         workdir, r.config, json.dumps(r.overrides()), str(r.hosts), str(step)],
        cwd=_REPO, capture_output=True, text=True, timeout=r.timeout,
        env={**os.environ, **r.env,
             "XLA_FLAGS": f"--xla_force_host_platform_device_count={r.hosts * r.devices}"})
    expect(check.returncode == 0, f"the one-process check failed:\n{check.stderr[-3000:]}")
    result = json.loads(check.stdout.strip().splitlines()[-1])
    expect(result["g_grad"] < 1e-2 and result["d_grad"] < 5e-2
           and result["param_outliers"] < 1e-4,
           f"{r.hosts}x{r.devices} differs from 1x{r.hosts * r.devices} at step {step}: {result}")
    return (f"{r.hosts}x{r.devices} = 1x{r.hosts * r.devices} at step {step} (gradients within "
            f"{max(result['g_grad'], result['d_grad']):.0e}); {workdir} restored in one "
            f"process: eval PSNR {result['eval_psnr']:.1f} dB, inpaint ok")


def single_process_check(workdir: str, config_file: str, overrides: str, hosts: str,
                         step: str) -> None:
    """(Run in a process with hosts x devices CPU devices.) Trains ``step`` steps in one process
    on the global batches that ``hosts`` hosts read, compares with the hosts' checkpoint of that
    step, and restores their latest checkpoint for ``--mode=eval`` and inpainting. Prints JSON.
    ``config_file``: the hosts' ``--config`` ("" for the demo's)."""
    import jax
    import numpy as np

    from isnet_jax import checkpoint, configs, evaluate, input_pipeline, sharding, train
    from isnet_jax.inpainter import Inpainter

    config = configs.load(config_file or str(configs.DEMO))
    config.update_from_flattened_dict(json.loads(overrides))
    hosts, step = int(hosts), int(step)
    trainer = train.Trainer(config, sharding.create_mesh(config.mesh))
    iters = [input_pipeline.create_train_iterator(config, process_index=p, process_count=hosts)
             for p in range(hosts)]
    state = trainer.init_state()
    for _ in range(step):
        parts = [next(it) for it in iters]
        image, mask = (jax.device_put(np.concatenate([p[k] for p in parts]),
                                      trainer.batch_sharding) for k in ("image", "mask"))
        state, _, _ = trainer.train_step(state, trainer.vgg_state, image, mask)
    with checkpoint.training_manager(workdir, 100) as mngr:
        theirs = checkpoint.restore_train_state(mngr, step, trainer.abstract_state, None)
    result = state_distance(jax.device_get(state), jax.device_get(theirs), config.learning_rate)
    scores = evaluate.evaluate_checkpoint(config, workdir)
    result["eval_psnr"] = float(next(iter(scores.values()))["psnr"])
    generator, _ = checkpoint.restore_generator(workdir)
    image = (np.random.default_rng(0).uniform(size=(48, 40, 3)) * 255).astype(np.uint8)
    known = np.ones((48, 40), np.float32)
    known[10:30, 8:24] = 0
    filled = Inpainter(generator, size=config.image_size).inpaint(image, known).image
    assert filled.shape == image.shape and np.array_equal(filled[known > 0], image[known > 0])
    print(json.dumps(result))


def relative_distance(x: Any, y: Any) -> float:
    """The worst array's ``||x - y|| / ||x||`` over two pytrees of the same structure."""
    import jax
    import numpy as np

    return max(float(np.linalg.norm(np.asarray(u, np.float64) - np.asarray(v, np.float64))
                     / max(np.linalg.norm(np.asarray(u, np.float64)), 1e-30))
               for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True))


def state_distance(a: dict, b: dict, learning_rate: float) -> dict[str, float]:
    """How far apart two training states are after the same steps, in well-conditioned terms
    (as ``tests/helpers/states.step_distance``): the worst array's relative distance of Adam's first
    moments (``g_grad``, ``d_grad``) and the share of parameter elements more than
    ``learning_rate / 100`` apart (Adam moves an element with a near-zero gradient by up to
    ``2 * lr`` on a rounding-level change, so a few may)."""
    import jax
    import numpy as np

    result = {f"{n}_grad": relative_distance(a[f"{n}_opt"].inner_state[0].mu,
                                             b[f"{n}_opt"].inner_state[0].mu)
              for n in ("g", "d")}
    far = total = 0
    for key in ("g_params", "d_params"):
        for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key]), strict=True):
            diff = np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
            far += int(np.sum(diff > learning_rate / 100))
            total += diff.size
    result["param_outliers"] = far / total
    return result


def _preempted_steps(run: Hosts) -> list[int | None]:
    steps = []
    for i in range(run.count):
        found = re.search(r"Preemption or SIGTERM at step (\d+)", run.log(i))
        steps.append(int(found.group(1)) if found else None)
    return steps


def preemption(r: Rehearsal) -> str:
    reference = r.reference()
    workdir = r.workdir("preemption")
    victim = min(1, r.hosts - 1)
    with r.launch("preemption", workdir) as run:
        run.wait_for(victim, r"step 2/", r.timeout)
        run.signal(victim, signal.SIGTERM)
        run.finish(r.timeout)
        steps = _preempted_steps(run)
    expect(len(set(steps)) == 1 and steps[0] is not None,
           f"the hosts did not all stop at one preemption step: {steps}")
    step = steps[0]
    expect(step < r.steps, f"the run ended (step {step}) before the preemption was noticed")
    expect(saved_steps(workdir)[-1] == step,
           f"no checkpoint of the preemption step {step}: {saved_steps(workdir)}")
    with r.launch("preemption_resume", workdir) as run:
        run.finish(r.timeout)
        expect(f"Resuming from the checkpoint of step {step}" in run.log(0),
               f"the restart did not resume from step {step}:\n{run.tail(0)}")
    distance = generator_distance(reference, workdir, r.steps)
    expect(distance < 1e-5, f"after the resume, step {r.steps}'s generator differs from the "
           f"uninterrupted run's by {distance:.2e}")
    return (f"SIGTERM to host {victim}: all {r.hosts} saved step {step} and exited 0; resumed, "
            f"step {r.steps} = uninterrupted run (max |dG| {distance:.0e})")


def lost_host(r: Rehearsal) -> str:
    workdir = r.workdir("lost_host")
    victim = r.hosts - 1
    with r.launch("lost_host", workdir) as run:
        # A checkpoint step's log line: its asynchronous save is in flight, the next step's
        # collectives about to start.
        deadline = time.monotonic() + r.timeout  # step 2's save complete: one to resume from
        while 2 not in saved_steps(workdir) and time.monotonic() < deadline:
            time.sleep(0.5)
        run.wait_for(victim, r"step 4/", r.timeout)
        os.kill(run.procs[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        others = [i for i in range(r.hosts) if i != victim]
        codes = run.wait(LOST_HOST_BOUND_S, others)
        stopped = time.monotonic() - killed
        expect(all(c is not None for c in codes),
               f"{sum(c is None for c in codes)} of the other hosts still ran "
               f"{LOST_HOST_BOUND_S} s after host {victim} was killed (hung in a collective?)")
        expect(all(c != 0 for c in codes), f"a surviving host exited 0: {codes}")
        line = f"error: process {victim} of {r.hosts} stopped or was lost"
        named = [i for i in others if line in run.log(i)]
        expect(named, f"no surviving host named the lost process {victim} in an error line:\n"
               + run.tail(others[0]))
    complete = saved_steps(workdir)
    expect(bool(complete), "no complete checkpoint survived")
    # Two steps past the resume point are enough to show it: one more save, into the step
    # number the unfinished save had left behind.
    with r.launch("lost_host_resume", workdir, num_train_steps=complete[-1] + 2) as run:
        run.finish(r.timeout)
        log = run.log(0)
    expect(f"Resuming from the checkpoint of step {complete[-1]}" in log,
           f"the restart did not resume from step {complete[-1]}")
    expect(saved_steps(workdir)[-1] == complete[-1] + 2,
           f"the restart did not save step {complete[-1] + 2}: {saved_steps(workdir)}")
    skipped = re.search(r"unfinished checkpoint of step (\d+)", log)
    aside = f", named and set aside the unfinished step {skipped.group(1)}" if skipped else ""
    return (f"kill -9 of host {victim} after step 4: others stopped in {stopped:.0f} s "
            f"(bound {LOST_HOST_BOUND_S} s), exit {sorted(set(codes))}, naming it; resumed from "
            f"step {complete[-1]}{aside}")


def bucket_fault(r: Rehearsal) -> str:
    reference = r.reference()
    workdir = r.workdir("bucket_fault")
    outage = 5.0
    with r.launch("bucket_fault", workdir) as run:
        run.wait_for(0, r"step 2/", r.timeout)
        r.bucket.stop()
        time.sleep(outage)
        r.bucket.start()
        codes = run.wait(r.timeout)
        logs = [run.log(i) for i in range(r.hosts)]
    steps = saved_steps(workdir)
    if all(c == 0 for c in codes):
        outcome = f"the run retried through a {outage:.0f} s outage and finished"
        expect(steps[-1] == r.steps, f"the hosts exited 0 but the last complete step is "
               f"{steps[-1] if steps else None}, not {r.steps}: {steps}")
    else:
        lines = [line for log in logs for line in log.splitlines() if line.startswith("error:")]
        expect(bool(lines) and all(workdir in line for line in lines),
               f"the run failed (status {codes}) without one error line naming {workdir}")
        outcome = f"stopped with: {lines[0][:100]}"
        with r.launch("bucket_fault_resume", workdir) as run:
            run.finish(r.timeout)
        expect(saved_steps(workdir)[-1] == r.steps, f"the resume did not reach step {r.steps}")
    # The steps saved around the outage are whole: the last one restores in this process and
    # holds what the uninterrupted run holds.
    distance = generator_distance(reference, workdir, r.steps)
    expect(distance < 1e-5, f"step {r.steps} after the outage differs from the uninterrupted "
           f"run's by {distance:.2e}")
    return (f"{outcome}; complete steps then {steps}; step {r.steps} restores and equals the "
            f"uninterrupted run (max |dG| {distance:.0e})")


def host_count(r: Rehearsal) -> str:
    workdir = r.reference()
    fewer = max(r.hosts // 2, 1)
    with r.launch("host_count", workdir, hosts=fewer, num_train_steps=r.steps + 2) as run:
        codes = run.wait(r.timeout)
        logs = [run.log(i) for i in range(fewer)]
    errors_ = [line for line in logs[0].splitlines() if line.startswith("error:")]
    expect(codes == [2] * fewer and len(errors_) == 1 and "resume_position=False" in errors_[0],
           f"{fewer} hosts on a {r.hosts}-host checkpoint: status {codes}, lines {errors_}")
    with r.launch("host_count_resume", workdir, hosts=fewer, num_train_steps=r.steps + 2,
                  **{"data.resume_position": False}) as run:
        run.finish(r.timeout)
    expect(saved_steps(workdir)[-1] == r.steps + 2, "the run on fewer hosts did not train on")
    return (f"{r.hosts} -> {fewer} hosts: one error line saying what to pass; with "
            f"data.resume_position=False it trained on to step {r.steps + 2}")


_FUNCTIONS: dict[str, Callable[[Rehearsal], str]] = {
    "exact": exact, "preemption": preemption, "lost_host": lost_host,
    "bucket_fault": bucket_fault, "host_count": host_count,
}


def run_scenario(r: Rehearsal, name: str) -> Verdict:
    start = time.monotonic()
    try:
        detail, ok = _FUNCTIONS[name](r), True
    except ScenarioFailed as e:
        detail, ok = str(e), False
    except Exception as e:  # noqa: BLE001 - a scenario's own error is its verdict, not the end
        detail, ok = f"{type(e).__name__}: {e}", False
    finally:
        kill_all_hosts()
    return Verdict(name, ok, time.monotonic() - start, detail)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def bucket(name: str = "rehearsal") -> Iterator[Any]:
    """A started emulator (its objects in a temporary folder, removed after)."""
    from isnet_jax.rehearse import gcs_emulator

    with gcs_emulator.Emulator(name) as emulator, gcs_emulator.exported(emulator):
        yield emulator


@contextlib.contextmanager
def standin_weights(emulator: Any, folder: pathlib.Path) -> Iterator[dict[str, str]]:
    """A local stand-in for VGG19's publisher (a random VGG19 in torchvision's layout) and a
    weights cache in the bucket: the variables that point every host at both. The hosts fetch
    VGG19 as a paper run does on first use: process 0 downloads, converts and writes the
    ``gs://`` cache, the others read it."""
    from isnet_jax import weights
    from isnet_jax.rehearse import weights_server

    vgg = weights_server.write_vgg19(folder / "vgg19-standin.pth")
    with weights_server.serve({"vgg19": vgg}) as server:
        table = weights_server.write_table(folder / "weights-table.json", server, {"vgg19": vgg})
        yield {weights.TABLE_VARIABLE: str(table),
               weights.CACHE_VARIABLE: emulator.path("weights-cache")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from isnet_jax import cli

    parser = cli.ArgumentParser(
        prog="python -m isnet_jax.rehearse",
        description="Rehearse a Cloud TPU pod-slice run on this machine: N hosts (processes "
        "of CPU devices) run `python -m isnet_jax.main --distributed` against a local Cloud "
        "Storage emulator, through preemption, a lost host, a bucket outage and a resume on "
        "another host count. One line per scenario: PASS/FAIL, seconds, what it saw.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Scenarios:\n" + "\n".join(
            "  " + line for line in __doc__.split("\n\n")[2].splitlines()),
    )
    parser.add_argument("--hosts", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--devices", type=int, default=2,
                        help="CPU devices per process (default 2: 4 x 2 is a v4-16)")
    parser.add_argument("--model", choices=sorted(MODELS), default="demo",
                        help="demo: configs/demo.py's model (default); tiny: 32 px at "
                             "model.width 8, as the tests")
    parser.add_argument("--config", default="",
                        help="rehearse this config file instead of the demo's, e.g. "
                        "configs/places2.py: its model and losses (VGG19 from a local stand-in "
                        "of its publisher, through a gs:// weights cache every host reads) at "
                        "64 px on the bundled photos; --model is then ignored")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (default 8)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)} (default all)")
    parser.add_argument("--logs", default=None,
                        help="folder for every host's log (default: a new temporary folder)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios.split(",")) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {','.join(unknown)}: choose from {','.join(SCENARIOS)}")
    if args.hosts < 2 or args.devices < 1 or args.steps < 6:
        parser.error("need --hosts >= 2, --devices >= 1 and --steps >= 6")
    if args.config and not pathlib.Path(args.config).is_file():
        parser.error(f"--config {args.config}: no such file (e.g. configs/places2.py)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logdir = pathlib.Path(args.logs or tempfile.mkdtemp(prefix="isnet_rehearsal_"))
    logdir.mkdir(parents=True, exist_ok=True)
    what = (f"{args.config} at {CONFIG_SIZES['image_size']} px" if args.config
            else f"{args.model} model")
    print(f"Rehearsal: {args.hosts} hosts x {args.devices} CPU devices, {what}, "
          f"{args.steps} steps a run; host logs in {logdir}", flush=True)
    failed = 0

    def terminated(signum, frame):  # a `kill` of the rehearsal cleans up as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        with contextlib.ExitStack() as stack:
            emulator = stack.enter_context(bucket())
            print(f"Bucket: gs://{emulator.bucket} on {emulator.url} "
                  "(gcp-storage-emulator)", flush=True)
            r = Rehearsal(emulator, logdir, hosts=args.hosts, devices=args.devices,
                          model=args.model, config=args.config, steps=args.steps)
            if args.config:
                weights = stack.enter_context(standin_weights(emulator, logdir))
                r.extra_env.update(weights)
            for name in args.scenarios.split(","):
                verdict = run_scenario(r, name)
                failed += not verdict.ok
                print(verdict.line(), flush=True)
    except KeyboardInterrupt:
        kill_all_hosts()
        print("interrupted (Ctrl-C): every host and the bucket are stopped", file=sys.stderr)
        return 130
    finally:
        kill_all_hosts()
    print(f"{'All scenarios passed' if not failed else f'{failed} scenario(s) failed'}; "
          f"host logs in {logdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
