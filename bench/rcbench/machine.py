"""The machine: CPU accounting from /proc, placement, versions, and the run lock.

CPU time is read in clock ticks (USER_HZ) from /proc/stat and /proc/<pid>/stat. With tick
accounting (this kernel: CONFIG_TICK_CPU_ACCOUNTING, no IRQ_TIME_ACCOUNTING), a task's
stime includes the interrupt and softirq ticks taken while it ran, so the machine's busy
time is user + nice + system + irq + softirq; "others" is that minus our processes' time.
"""

import fcntl
import os
import platform
import re
import subprocess
import time

HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

# /proc/stat "cpu" columns, in order.
_STAT_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
_BUSY = ("user", "nice", "system", "irq", "softirq")


def machine_ticks():
    """Aggregate /proc/stat CPU counters (ticks), by column name."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    assert fields[0] == "cpu"
    return dict(zip(_STAT_COLUMNS, map(int, fields[1:1 + len(_STAT_COLUMNS)])))


def process_ticks(pid):
    """(utime, stime) of a process, all threads included, in ticks; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def process_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def children(pid):
    """PIDs whose parent is pid (e.g. an nginx master's workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def _all_process_ticks():
    ticks = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            t = process_ticks(int(entry))
            if t is not None:
                ticks[int(entry)] = sum(t)
    return ticks


class CpuWindow:
    """CPU use over a time window: ours (given PIDs), others', steal.

    Percentages are of ONE core (100 = a whole core) so that "others used 10%" means the
    same thing whatever the core count.
    """

    def __init__(self, our_pids):
        self.our_pids = list(our_pids)
        self.t0 = time.monotonic()
        self.machine0 = machine_ticks()
        self.procs0 = _all_process_ticks()

    def finish(self, extra_our_ticks=0):
        """Close the window. extra_our_ticks: CPU of our processes that already exited
        (e.g. wrk's rusage), which /proc no longer shows."""
        elapsed = time.monotonic() - self.t0
        machine1 = machine_ticks()
        procs1 = _all_process_ticks()
        delta = {k: machine1[k] - self.machine0[k] for k in _STAT_COLUMNS}
        busy = sum(delta[k] for k in _BUSY)
        # ksoftirqd runs the network softirqs that our own loopback traffic raises.
        our_pids = set(self.our_pids) | {p for p in procs1 if process_name(p).startswith("ksoftirqd/")}
        ours = {pid: procs1.get(pid, self.procs0.get(pid, 0)) - self.procs0.get(pid, 0)
                for pid in our_pids}
        ours_total = sum(ours.values()) + extra_our_ticks
        others = max(0, busy - ours_total)
        # Name the heaviest other processes, to say why a run was redone.
        culprits = sorted(
            ((procs1[p] - self.procs0.get(p, 0), p) for p in procs1
             if p not in ours and procs1[p] - self.procs0.get(p, 0) > 0),
            reverse=True)[:3]
        scale = 100.0 / (HZ * elapsed) if elapsed > 0 else 0.0
        return CpuUse(
            elapsed=elapsed,
            others_pct=others * scale,
            steal_pct=delta["steal"] * scale,
            per_pid_pct={pid: t * scale for pid, t in ours.items()},
            per_pid_ticks=ours,
            culprits=[f"{process_name(p)}[{p}] {t * scale:.0f}%" for t, p in culprits],
        )


class CpuUse:
    def __init__(self, elapsed, others_pct, steal_pct, per_pid_pct, per_pid_ticks, culprits):
        self.elapsed = elapsed
        self.others_pct = others_pct
        self.steal_pct = steal_pct
        self.per_pid_pct = per_pid_pct
        self.per_pid_ticks = per_pid_ticks
        self.culprits = culprits

    def disturbed(self, limit_pct):
        return self.others_pct > limit_pct or self.steal_pct > limit_pct

    def describe(self):
        text = f"others {self.others_pct:.0f}%, steal {self.steal_pct:.0f}% of a core"
        if self.culprits:
            text += " (" + ", ".join(self.culprits) + ")"
        return text


def wait_until_quiet(our_pids, limit_pct, max_wait, say, sample=1.0):
    """Block until a `sample`-second window has others' CPU <= limit_pct, or max_wait
    seconds have passed. Returns the seconds waited."""
    started = time.monotonic()
    last_report = 0.0
    while True:
        window = CpuWindow(our_pids)
        time.sleep(sample)
        use = window.finish()
        waited = time.monotonic() - started
        if not use.disturbed(limit_pct):
            return waited
        if waited >= max_wait:
            say(f"machine still busy after {waited:.0f}s ({use.describe()}); going on anyway")
            return waited
        if waited - last_report >= 30 or last_report == 0.0:
            say(f"waiting for the machine to be quiet: {use.describe()}")
            last_report = waited or 0.001


class RunLock:
    """One bench/run at a time on this machine (two would spoil each other's numbers)."""

    PATH = "/tmp/rcache-bench.lock"

    def __init__(self, say):
        self.say = say
        self.f = None

    def __enter__(self):
        self.f = open(self.PATH, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "?"
            self.say(f"another bench/run holds {self.PATH} (pid {holder}); waiting for it")
            fcntl.flock(self.f, fcntl.LOCK_EX)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"{os.getpid()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.seek(0)
        self.f.truncate()
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def _first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def describe(nginx, module, repo):
    """Facts for the report header."""
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True).stdout.strip()
    os_name = "?"
    if os.path.exists("/etc/os-release"):
        with open("/etc/os-release") as f:
            m = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M)
            os_name = m.group(1) if m else "?"
    return {
        "host": platform.node(),
        "os": os_name,
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": NCPU,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "nginx": _first_line([nginx, "-v"]).replace("nginx version: ", ""),
        "nginx_path": nginx,
        "module_path": module,
        "module_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(module))),
        "git_commit": commit + (" (src/ modified)" if dirty else ""),
        "memcached": _first_line(["memcached", "-V"]),
        "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0],
        "valgrind": _first_line(["valgrind", "--version"]),
        "strace": _first_line(["strace", "-V"]),
        "python": platform.python_version(),
    }
