"""``cli.run_cli``: a Ctrl-C that Python drops is still the one line and status 130."""

import subprocess
import sys
import textwrap

from conftest import REPO

from isnet_jax import cli

# Python raises KeyboardInterrupt wherever the main thread is; inside a weakref or gc callback
# (JAX runs one at every collection) it prints "Exception ignored" with a traceback and goes on.
_LOST = textwrap.dedent(
    """
    import gc, os, signal, sys, weakref
    from isnet_jax import cli

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
        cli.check_interrupted()  # what a long loop does at each step
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
