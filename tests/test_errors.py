"""``cli.run_cli``: a Ctrl-C that Python drops is still the one line and status 130; the
errors of the reads Orbax abandons after a failed restore print nothing."""

import subprocess
import sys
import textwrap

from helpers.paths import REPO

from isnet_jax import cli

# Python raises KeyboardInterrupt wherever the main thread is; inside a weakref or gc callback
# (JAX runs one at every collection) it prints "Exception ignored" with a traceback and goes on.
_LOST = textwrap.dedent(
    """
    import gc, os, signal, sys, weakref
    from isnet_jax import cli, interrupts

    class Thing:
        pass

    def body():
        thing = Thing()
        def callback(_):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs at a bytecode boundary in here
                pass
        ref = weakref.ref(thing, callback)
        del thing
        gc.collect()
        print("work went on", flush=True)
        interrupts.check_interrupted()  # what a long loop does at each step
        print("not reached", flush=True)
        return 0

    sys.exit(cli.run_cli(body, "the test's work stopped"))
    """
)


def test_a_ctrl_c_lost_in_a_callback_still_stops_the_work_with_one_line():
    out = subprocess.run([sys.executable, "-c", _LOST], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == cli.EXIT_INTERRUPTED, out.stderr
    assert out.stdout.splitlines() == ["work went on"]
    assert out.stderr.splitlines() == ["interrupted (Ctrl-C); the test's work stopped"]


# Orbax's abandoned read tasks raise this; asyncio logs a task whose exception nobody retrieved
# when the task is collected while its loop runs (the route a damaged checkpoint took in
# tests/test_main.py one run in several).
_ABANDONED = textwrap.dedent(
    """
    import asyncio, gc, logging, sys
    from isnet_jax import cli

    logging.basicConfig(stream=sys.stderr)
    if sys.argv[1] == "quiet":
        cli.quiet_abandoned_reads()

    async def read(message):
        raise Exception(message)

    async def main():
        for message in ("Encountered error while reading array index: (slice(0, 3),)",
                        "some other failure"):
            task = asyncio.ensure_future(read(message))
            await asyncio.sleep(0)
            del task
            gc.collect()

    asyncio.run(main())
    """
)


def test_abandoned_reads_logged_by_asyncio_are_dropped_and_nothing_else():
    def stderr(mode):
        out = subprocess.run([sys.executable, "-c", _ABANDONED, mode], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stderr

    loud = stderr("loud")
    assert "Task exception was never retrieved" in loud
    assert "Encountered error while reading" in loud and "some other failure" in loud
    quiet = stderr("quiet")
    assert "Encountered error while reading" not in quiet
    assert "some other failure" in quiet
