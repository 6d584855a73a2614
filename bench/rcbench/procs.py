"""Starting and stopping the processes of a benchmark, by PID, whatever happens.

Every process is started through `Processes.start`, which
  * pins it to CPUs with `taskset` (the affinity is inherited by nginx's workers),
  * asks the kernel to send it SIGTERM if this harness dies (prctl PR_SET_PDEATHSIG), so
    even a `kill -9` of bench/run leaves no memcached or nginx behind,
  * remembers it, so `stop_all` (called from a `finally`) stops everything by PID.
"""

import ctypes
import os
import random
import signal
import socket
import subprocess
import time

from . import machine

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port(taken=()):
    """A free 127.0.0.1 TCP port below the kernel's ephemeral range (32768-60999 here), so
    outgoing connections of other programs (a stock memcached_pass benchmark opens tens of
    thousands) cannot be holding it when our server binds it."""
    low, high = 20000, 32000
    for _ in range(1000):
        port = random.randint(low, high)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


class Processes:
    def __init__(self):
        self._running = []  # (name, Popen)

    def start(self, name, argv, cpus=None, log=None):
        """Start argv (pinned to `cpus`, e.g. "0") with stdout+stderr to the file `log`."""
        if cpus is not None:
            argv = ["taskset", "-c", str(cpus)] + list(argv)
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        finally:
            if log:
                out.close()
        self._running.append((name, proc))
        return proc

    def stop(self, proc, timeout=10.0):
        """SIGTERM (nginx: fast shutdown; memcached, valgrind: exit), then SIGKILL. An nginx
        master's workers are killed too if they outlive it."""
        if proc.poll() is None:
            kids = machine.children(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for kid in kids:
                try:
                    os.kill(kid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._running = [(n, p) for n, p in self._running if p is not proc]

    def stop_all(self):
        for _, proc in reversed(list(self._running)):
            self.stop(proc)

    def check_alive(self):
        """Raise if a process we started has died (nginx crashed, memcached exited)."""
        for name, proc in self._running:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} (pid {proc.pid}) exited with status {proc.returncode}")


def wait_for_port(port, proc, timeout=15.0):
    """Until something accepts on 127.0.0.1:port; fails early if proc exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited ({proc.returncode}) before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")
