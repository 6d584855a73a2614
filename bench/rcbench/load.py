"""wrk runs, and the per-request counters read around them."""

import json
import os
import resource
import subprocess

from . import machine

CHECK_LUA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "check.lua")


def _children_ticks():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * machine.HZ


def wrk(procs, url, conns, duration, expected_len, check_each, cpus, log, our_pids):
    """Run `wrk -t1 -c conns -d duration --latency` with check.lua; returns its numbers plus
    the CPU use of the window (ours, others', steal) and wrk's own CPU.

    check_each: check every response's status, Content-Length and body length in Lua
    (costs wrk CPU, see README); otherwise only wrk's counters are kept."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s",
            "-s", CHECK_LUA, url, "--", str(expected_len), "check" if check_each else "count-only"]
    open(log, "w").close()
    ticks0 = _children_ticks()
    window = machine.CpuWindow(our_pids)
    proc = procs.start("wrk", argv, cpus=cpus, log=log)
    try:
        proc.wait(duration + 60)
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise RuntimeError(f"wrk did not finish: {' '.join(argv)}")
    wrk_ticks = _children_ticks() - ticks0
    cpu = window.finish(extra_our_ticks=wrk_ticks)
    procs.stop(proc)  # forget it
    with open(log) as f:
        output = f.read()
    line = next((l for l in output.splitlines() if l.startswith("RCBENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {' '.join(argv)}\n{output[-2000:]}")
    result = json.loads(line[len("RCBENCH "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["wrk_cpu_pct"] = wrk_ticks * 100.0 / (machine.HZ * cpu.elapsed)
    return result, cpu
