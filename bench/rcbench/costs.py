"""Costs per request that do not depend on wall-clock noise, measured with ONE keep-alive
client doing requests one after the other:

* nginx user-space instructions per request: nginx runs under `valgrind --tool=callgrind`
  (master_process off, so the one process is the worker). For each variant the counters
  are zeroed, N1 requests are made and the counts dumped; again for N2 requests on the same
  connection; instructions/request = (Ir(N2) - Ir(N1)) / (N2 - N1). Whatever does not
  scale with the request count (the zero/dump boundaries, a timer firing) cancels out.
* system calls per request: `strace -c -f` attached to the running worker of the nginx
  under test, for N1 and then N2 requests, same difference.
"""

import glob
import os
import re
import signal
import subprocess
import time

from .servers import HttpConnection, Nginx


def _requests(port, path, n, expected_len):
    conn = HttpConnection(port)
    try:
        for _ in range(n):
            status, _, body, _ = conn.get(path)
            if status != 200 or len(body) != expected_len:
                raise RuntimeError(f"GET {path} on :{port}: status {status}, {len(body)} bytes")
    finally:
        conn.close()


class Callgrind:
    """One nginx under callgrind serving every variant (ports as given). With keep, each
    segment's profile stays in prefix as callgrind.<label>.<n>req.out, for
    callgrind_annotate."""

    def __init__(self, procs, binary, prefix, conf_text, ports, keep=False):
        self.prefix = prefix
        self.keep = keep
        self.out = os.path.join(prefix, "callgrind.out")
        # Uncompressed names: each dump is then readable on its own by callgrind_annotate.
        wrapper = ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
                   f"--callgrind-out-file={self.out}.%p"]
        self.nginx = Nginx(procs, binary, prefix, conf_text, "nginx under callgrind",
                           cpus=None, ports=ports, wrapper=wrapper)
        self.pid = self.nginx.proc.pid

    def _control(self, flag):
        out = subprocess.run(["callgrind_control", flag, str(self.pid)],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0 or "OK" not in out.stdout:
            raise RuntimeError(f"callgrind_control {flag} failed: {out.stdout}{out.stderr}")

    def _segment(self, path, n, expected_len, conn, label):
        """Ir of n requests on the open connection conn."""
        before = set(glob.glob(f"{self.out}.{self.pid}.*"))
        self._control("-z")
        for _ in range(n):
            status, _, body, _ = conn.get(path)
            if status != 200 or len(body) != expected_len:
                raise RuntimeError(f"GET {path} under callgrind: status {status}, {len(body)} bytes")
        self._control("-d")
        for _ in range(100):
            new = set(glob.glob(f"{self.out}.{self.pid}.*")) - before
            if new:
                break
            time.sleep(0.05)
        (dump,) = new
        with open(dump) as f:
            summary = [int(l.split()[1]) for l in f if l.startswith("summary:")]
        if not summary:
            raise RuntimeError(f"no summary line in {dump}")
        if self.keep:
            os.rename(dump, os.path.join(self.prefix, f"callgrind.{label}.{n}req.out"))
        else:
            os.unlink(dump)
        return summary[0]

    def per_request(self, port, path, expected_len, n1, n2, label, warmup=20):
        _requests(port, path, warmup, expected_len)  # pools, lazy initialisation
        time.sleep(0.3)  # let the worker (slow under valgrind) see that connection close
        conn = HttpConnection(port)
        try:
            conn.get(path)  # the connection is accepted and set up before counting starts
            ir1 = self._segment(path, n1, expected_len, conn, label)
            ir2 = self._segment(path, n2, expected_len, conn, label)
        finally:
            conn.close()
        return (ir2 - ir1) / (n2 - n1)

    def stop(self):
        self.nginx.stop()


def _strace_counts(path):
    """{syscall: calls} from an `strace -c` summary file."""
    counts = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) in (5, 6) and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
    return counts


def _strace_segment(procs, worker_pid, port, path, n, expected_len, out):
    conn = HttpConnection(port)  # connected (and used once) before the trace starts
    try:
        conn.get(path)
        log = out + ".stderr"
        for stale in (out, log):
            if os.path.exists(stale):
                os.unlink(stale)
        proc = procs.start("strace", ["strace", "-c", "-f", "-o", out, "-p", str(worker_pid)], log=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(log) as f:
                if "attached" in f.read():
                    break
            time.sleep(0.02)
        else:
            procs.stop(proc)
            raise RuntimeError("strace did not attach (ptrace not permitted?)")
        for _ in range(n):
            status, _, body, _ = conn.get(path)
            if status != 200 or len(body) != expected_len:
                raise RuntimeError(f"GET {path} under strace: status {status}, {len(body)} bytes")
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        procs.stop(proc)
    finally:
        conn.close()
    return _strace_counts(out)


def syscalls_per_request(procs, worker_pid, port, path, expected_len, n1, n2, scratch):
    """(total syscalls per request, {syscall: per request}) for the worker."""
    _requests(port, path, 5, expected_len)
    time.sleep(0.1)  # let the worker see that connection's close before tracing
    c1 = _strace_segment(procs, worker_pid, port, path, n1, expected_len, scratch + ".1")
    c2 = _strace_segment(procs, worker_pid, port, path, n2, expected_len, scratch + ".2")
    per = {name: (c2.get(name, 0) - c1.get(name, 0)) / (n2 - n1) for name in set(c1) | set(c2)}
    per = {name: v for name, v in per.items() if abs(v) >= 0.005}
    return sum(per.values()), dict(sorted(per.items(), key=lambda kv: -kv[1]))
