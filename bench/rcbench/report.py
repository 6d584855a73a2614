"""report.md (and chart.png) from results.json."""

import os

from . import chart
from .variants import HTTP_BLOCKS

# The targets of issue 4 (part 2, and part 3's front-cache target).
HIT_VS_TUNED = 1.0
HIT_VS_KA32 = 2.0
MAX_NEW_CONNS = 0.001
MISS_VS_PROXY = 0.9
BYPASS_VS_PROXY = 0.95
FRONT_VS_STATIC = 1.3
LOADED = (50, 200)  # "at 50 and 200 connections"
# Issue 13 (round 2): the miss memo against proxying the same page.
MEMO_VS_PROXY = 0.95


class Results:
    """Look-ups over results.json."""

    def __init__(self, results):
        self.r = results
        self.rows = {(s["variant"], s["size"], s["conns"]): s for s in results["summary"]}
        self.sizes = results["settings"]["sizes"]
        self.conns = results["settings"]["conns"]
        self.variants = [v for v in results["variants"] if not results["variants"][v]["skipped"]]

    def get(self, variant, size, conns):
        return self.rows.get((variant, size, conns))

    def ratio(self, a, b, size, conns):
        """(median ratio a/b, True when a's and b's min-max ranges overlap) or None."""
        ra, rb = self.get(a, size, conns), self.get(b, size, conns)
        if not ra or not rb:
            return None
        overlap = ra["rps_min"] <= rb["rps_max"] and rb["rps_min"] <= ra["rps_max"]
        return ra["rps"] / rb["rps"], overlap


def _ms(us):
    return f"{us / 1000:.2f}"


def _k(rps):
    return f"{rps / 1000:.1f}k"


def _ratio_cell(res, a, b, size, conns):
    x = res.ratio(a, b, size, conns)
    return f"{x[0]:.2f}" if x else "–"


def _bound(row):
    """Which side saturated its core during the run."""
    sides = []
    if row["server_cpu_pct"] >= 90:
        sides.append("server")
    if row["wrk_cpu_pct"] >= 90:
        sides.append("wrk")
    return "+".join(sides) or "–"


def header(res):
    m, s = res.r["meta"], res.r["settings"]
    reps = f"{s['reps']} (static, return200, rcache_front: {s['reps'] + 2})" if not s["quick"] \
        else "1"
    check = ("every response of every run is checked in wrk's Lua script (status 200, "
             "`Content-Length` and body length = the page)" if s["check_all"] else
             f"every response of the {s['warmup_s']} s warm-up run before each measured run is "
             "checked in wrk's Lua script (status 200, `Content-Length` and body length = the "
             "page); the measured runs count wrk's errors (connect/read/write/timeout, status "
             "≥ 400) and check that the bytes received are exactly requests × the size of a "
             "correct response (per-response Lua checks cost wrk CPU and would cap the "
             "client-bound variants; see bench/README.md)")
    redone = sum(r["attempts"] - 1 for r in res.r["runs"])
    lines = [
        f"# rcache benchmark — {m['started'][:16].replace('T', ' ')}",
        "",
    ]
    if not res.r.get("complete"):
        lines += [f"**Incomplete run** ({res.r.get('error') or 'interrupted'}): only the runs "
                  "listed were made.", ""]
    if s["quick"]:
        lines += ["**Quick run** (`--quick`, smoke test): 1 rep of 1 s per variant; the numbers "
                  "are indicative only.", ""]
    lines += [
        "## Setup",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"{m['os']}, Linux {m['kernel']} (a VM; other jobs may share the host).",
        f"- **Software**: {m['nginx']} (the vendored build; it also has the stock memcached "
        f"module) with `{os.path.basename(m['module_path'])}` built {m['module_mtime']} "
        f"(git {m['git_commit']}); {m['memcached']} (default threads, `-m 256 -c 8192`); "
        f"{m['wrk']}; {m['valgrind']}; {m['strace']}.",
        f"- **Placement**: nginx under test (master + `worker_processes 1`), memcached and the "
        f"app pinned to CPU {s['server_cpu']} with `taskset`; `wrk -t1` pinned to CPU "
        f"{s['client_cpu']}. All on 127.0.0.1, all at nice {s.get('nice', 0)}. Ratios are only "
        "comparable within this layout.",
        "- **The app** (behind `proxy`, MISS and BYPASS) is a second, stock nginx "
        "(`worker_processes 1`, no module) serving the page file; nginx reaches it over "
        "HTTP/1.1 with `upstream app { keepalive 1024; }`, so app connections are reused and "
        "the app connection is not what is measured. A Python app would be the bottleneck.",
        "- **nginx config**: `access_log off`, `sendfile on`, `default_type text/html`, "
        "otherwise nginx defaults; one `server` per variant in one nginx (appendix).",
        f"- **Load**: `wrk -t1 -c<conns> -d{s['duration_s']}s --latency`, "
        + (f"after a {s['warmup_s']} s warm-up run at the same concurrency; " if s["warmup_s"] else "")
        + f"variants interleaved, the order rotated each rep; reps: {reps}. Cells show the "
        "median and the min–max of the reps; latencies are medians of the reps' percentiles.",
        f"- **Checks**: {check}. A variant with errors is flagged.",
        f"- **Quiet machine**: CPU used by other processes during each run is measured from "
        f"`/proc/stat` minus our processes' `/proc/<pid>/stat`; a run where others (or VM "
        f"steal) took more than {s['max_others_pct']:g}% of a core was redone (up to 3 times, "
        f"after waiting up to 30 s for quiet). Redone: {redone} of {len(res.r['runs'])} runs"
        f"; still disturbed after that: {sum(1 for r in res.r['runs'] if r.get('disturbed'))}.",
        "- **Costs per request**: CPU µs per request of nginx, memcached and the app (their "
        "`/proc/<pid>/stat` during the run ÷ requests); new memcached connections per request "
        "(memcached `stats` `total_connections`, read on one persistent connection); nginx "
        "user-space instructions per request (`valgrind --tool=callgrind`, one keep-alive "
        "client, `(Ir(N2) − Ir(N1)) / (N2 − N1)`); system calls per request (`strace -c -f` "
        "on the worker, same difference).",
        f"- **Command**: `{s['command']}` — runtime {m['runtime_s'] // 60} min "
        f"{m['runtime_s'] % 60} s (finished {m['finished'][:16].replace('T', ' ')}).",
        "",
    ]
    return lines


def _short(variant):
    return {"rcache_hit": "HIT", "rcache_miss": "MISS", "rcache_bypass": "BYPASS",
            "rcache_front": "FRONT", "stock_miss": "stock MISS"}.get(variant, variant)


def headline(res):
    """rcache's ratios at a glance (medians), for the README."""
    cols = [("rcache_hit", "stock_tuned"), ("rcache_hit", "stock_ka32"), ("rcache_hit", "static"),
            ("rcache_miss", "proxy"), ("rcache_bypass", "proxy"), ("rcache_front", "static"),
            ("stock_miss", "proxy")]
    cols = [(a, b) for a, b in cols if a in res.variants and b in res.variants]
    if not cols:
        return []
    lines = ["## Headline", "",
             "Ratios of median req/s. HIT, MISS, BYPASS: rcache at default settings; FRONT: "
             "its front cache; stock MISS: `memcached_pass` + `error_page 404` to the app.", "",
             "| page | conns | " + " | ".join(_short(a) + f" ÷ {b}" for a, b in cols) + " |",
             "|---|--:|" + "--:|" * len(cols)]
    for size in res.sizes:
        for conns in res.conns:
            cells = [_ratio_cell(res, a, b, size, conns) for a, b in cols]
            if any(c != "–" for c in cells):
                lines.append(f"| {size} | {conns} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def variants_table(res):
    lines = ["## Variants", "", "| variant | what | request |", "|---|---|---|"]
    for name, v in res.r["variants"].items():
        what = v["about"] + (f" — **skipped**: {v['skipped']}" if v["skipped"] else "")
        lines.append(f"| `{name}` | {what} | `{v['path'].replace('{page}', 'page-<size>')}` |")
    lines.append("")
    return lines


def throughput_tables(res):
    lines = ["## Throughput and latency", "",
             "Ratios are of medians. *bound*: the side that used ≥ 90% of its core (`server`: "
             "nginx + memcached + app on their shared core; `wrk`: the client — the variant "
             "may be faster than measured). CPU columns: µs of CPU per request.", ""]
    for size in res.sizes:
        for conns in res.conns:
            rows = [res.get(v, size, conns) for v in res.variants]
            rows = [r for r in rows if r]
            if not rows:
                continue
            lines += [f"### {size} page, {conns} connection{'s' if conns != 1 else ''}", "",
                      "| variant | req/s | min–max | p50 ms | p99 ms | × stock_tuned | × stock_ka32 "
                      "| × static | new mc conns/req | nginx µs | memcached µs | app µs | bound | notes |",
                      "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]
            for r in rows:
                v = r["variant"]
                notes = ", ".join(r["flags"]) + (f" (redone {r['redone']}×)" if r["redone"] else "")
                if r["errors"]:
                    notes = f"**{r['errors']} errors** " + notes
                lines.append(
                    f"| `{v}` | {r['rps']:,.0f} | {_k(r['rps_min'])}–{_k(r['rps_max'])} "
                    f"| {_ms(r['lat_p50_us'])} | {_ms(r['lat_p99_us'])} "
                    f"| {_ratio_cell(res, v, 'stock_tuned', size, conns)} "
                    f"| {_ratio_cell(res, v, 'stock_ka32', size, conns)} "
                    f"| {_ratio_cell(res, v, 'static', size, conns)} "
                    f"| {r['mc_new_conns_per_req']:.4f} | {r['cpu_us_nginx']:.1f} "
                    f"| {r['cpu_us_memcached']:.1f} | {r['cpu_us_app']:.1f} | {_bound(r)} | {notes} |")
            lines.append("")
    return lines


def fallback_table(res):
    others = [v for v in ("rcache_miss", "rcache_bypass", "stock_miss") if v in res.variants]
    if "proxy" not in res.variants or not others:
        return []
    lines = ["## MISS and BYPASS against proxying to the app directly", "",
             "| size | conns | proxy req/s | " + " | ".join(f"{v} req/s | × proxy" for v in others) + " |",
             "|---|--:|--:|" + "--:|--:|" * len(others)]
    for size in res.sizes:
        for conns in res.conns:
            p = res.get("proxy", size, conns)
            if not p:
                continue
            cells = []
            for v in others:
                r = res.get(v, size, conns)
                cells += [f"{r['rps']:,.0f}", _ratio_cell(res, v, "proxy", size, conns)] if r else ["–", "–"]
            lines.append(f"| {size} | {conns} | {p['rps']:,.0f} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def connections_table(res):
    vs = [v for v in ("stock", "stock_ka32", "stock_tuned", "rcache_hit", "rcache_miss",
                      "rcache_front", "stock_miss") if v in res.variants]
    if not vs:
        return []
    cols = [(s, c) for s in res.sizes for c in res.conns]
    lines = ["## New memcached connections per request", "",
             "memcached `total_connections` delta ÷ requests, median of the reps (worst rep in "
             "parentheses when it differs).", "",
             "| variant | " + " | ".join(f"{s} c={c}" for s, c in cols) + " |",
             "|---|" + "--:|" * len(cols)]
    for v in vs:
        cells = []
        for s, c in cols:
            r = res.get(v, s, c)
            if not r:
                cells.append("–")
                continue
            cell = f"{r['mc_new_conns_per_req']:.4f}"
            if r["mc_new_conns_per_req_max"] > r["mc_new_conns_per_req"] + 0.00005:
                cell += f" ({r['mc_new_conns_per_req_max']:.4f})"
            cells.append(cell)
        lines.append(f"| `{v}` | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def costs_tables(res):
    lines = []
    ins, sys = res.r.get("instructions") or {}, res.r.get("syscalls") or {}
    sizes = res.r["settings"]["callgrind_sizes"]
    if ins:
        lines += ["## nginx instructions per request (callgrind)", "",
                  "User-space instructions of the nginx process (nginx, libc, the module), one "
                  "keep-alive client, `master_process off`. Repeatable to 1–2%, unlike req/s (what "
                  "still varies: how often nginx updates its cached time, which depends on how "
                  "many event-loop turns a request takes under valgrind's slowdown); "
                  "but 80–95% of nginx's time on this machine is in the kernel, which this does "
                  "not count (see system calls below and CPU µs above).", "",
                  "| variant | " + " | ".join(sizes) + " |", "|---|" + "--:|" * len(sizes)]
        for v in res.variants:
            if v in ins:
                lines.append(f"| `{v}` | " + " | ".join(
                    f"{ins[v][s]:,.0f}" if s in ins[v] else "–" for s in sizes) + " |")
        if "rcache_hit" in ins and "stock_tuned" in ins:
            lines.append("| rcache_hit ÷ stock_tuned | " + " | ".join(
                f"{ins['rcache_hit'][s] / ins['stock_tuned'][s]:.2f}"
                if s in ins["rcache_hit"] and s in ins["stock_tuned"] else "–" for s in sizes) + " |")
        lines.append("")
    if sys:
        lines += ["## System calls per request (strace)", "",
                  "`strace -c -f` attached to the worker of the nginx under test, one keep-alive "
                  "client (under load, epoll batches events and the counts are lower).", "",
                  "| variant | " + " | ".join(sizes) + " | calls (" + sizes[len(sizes) // 2] + ") |",
                  "|---|" + "--:|" * len(sizes) + "---|"]
        for v in res.variants:
            if v in sys:
                mid = sys[v].get(sizes[len(sizes) // 2])
                detail = ", ".join(f"{n} {c:g}" for n, c in mid["calls"].items()) if mid else ""
                lines.append(f"| `{v}` | " + " | ".join(
                    f"{sys[v][s]['total']:.2f}" if s in sys[v] else "–" for s in sizes)
                    + f" | {detail} |")
        lines.append("")
    return lines


# --- targets -------------------------------------------------------------------------------

def _ratio_target(res, a, b, minimum, cells):
    """[(cell text, met)] for ratio a/b >= minimum over the (size, conns) cells measured."""
    out = []
    for size, conns in cells:
        x = res.ratio(a, b, size, conns)
        if x is None:
            continue
        ratio, overlap = x
        text = f"{size} c={conns}: {ratio:.2f}×"
        if overlap:
            text += " (ranges overlap)"
        out.append((text, ratio >= minimum))
    return out


def evaluate_targets(res):
    """[(name, status, detail)] with status 'met', 'not met' or 'not measured'."""
    loaded = [(s, c) for s in res.sizes for c in res.conns if c in LOADED]
    every = [(s, c) for s in res.sizes for c in res.conns]
    targets = []

    def add(name, cells, unit_note=""):
        if not cells:
            targets.append((name, "not measured", unit_note or "no runs for this target"))
            return
        status = "met" if all(ok for _, ok in cells) else "not met"
        detail = "; ".join(t if ok else f"**{t}**" for t, ok in cells)
        targets.append((name, status, detail + unit_note))

    add(f"rcache HIT (default config) ≥ {HIT_VS_TUNED}× stock hand-tuned (keepalive 256 + "
        "128k buffer), every size, 50 and 200 connections",
        _ratio_target(res, "rcache_hit", "stock_tuned", HIT_VS_TUNED, loaded))
    add(f"rcache HIT ≥ {HIT_VS_KA32}× stock `keepalive 32` at 10k (50 and 200 connections)",
        _ratio_target(res, "rcache_hit", "stock_ka32", HIT_VS_KA32,
                      [(s, c) for s, c in loaded if s == "10k"]))

    cells = []
    for v in ("rcache_hit", "rcache_miss"):
        for s, c in loaded:
            r = res.get(v, s, c)
            if r:
                worst = r["mc_new_conns_per_req_max"]
                cells.append((f"{v} {s} c={c}: {worst:.4f}", worst <= MAX_NEW_CONNS))
    add(f"≤ {MAX_NEW_CONNS} new memcached connections per request at 50 and 200 connections, "
        "default config", cells, " (worst rep of each cell)")

    add(f"MISS → fallback ≥ {MISS_VS_PROXY}× proxying to the app directly (every size and "
        "connection count)", _ratio_target(res, "rcache_miss", "proxy", MISS_VS_PROXY, every))
    add(f"BYPASS ≥ {BYPASS_VS_PROXY}× proxying to the app directly (every size and connection "
        "count)", _ratio_target(res, "rcache_bypass", "proxy", BYPASS_VS_PROXY, every))

    ins = res.r.get("instructions") or {}
    cells = []
    if "rcache_hit" in ins and "stock_tuned" in ins:
        for s in res.r["settings"]["callgrind_sizes"]:
            if s in ins["rcache_hit"] and s in ins["stock_tuned"]:
                a, b = ins["rcache_hit"][s], ins["stock_tuned"][s]
                cells.append((f"{s}: {a:,.0f} vs {b:,.0f} ({a / b:.2f}×)", a <= b))
    add("nginx instructions per HIT ≤ the hand-tuned stock variant's", cells)

    front = res.r["variants"].get("rcache_front", {})
    if front.get("skipped"):
        targets.append((f"(part 3) front-cache HIT ≥ {FRONT_VS_STATIC}× static at 10k, 50 "
                        "connections", "not measured", front["skipped"]))
    else:
        add(f"(part 3) front-cache HIT ≥ {FRONT_VS_STATIC}× static at 10k, 50 connections",
            _ratio_target(res, "rcache_front", "static", FRONT_VS_STATIC,
                          [(s, c) for s, c in every if s == "10k" and c == 50]))

    # Issue 13.
    if not front.get("skipped"):
        cells = []
        for s, c in loaded:
            x = res.ratio("rcache_front", "static", s, c)
            if x is None:
                continue
            f, st = res.get("rcache_front", s, c), res.get("static", s, c)
            text = (f"{s} c={c}: {x[0]:.2f}× (bound: {_bound(f)}; nginx µs {f['cpu_us_nginx']:.1f}"
                    f" vs {st['cpu_us_nginx']:.1f})")
            cells.append((text, x[0] >= FRONT_VS_STATIC))
        add(f"(issue 13) front cache ≥ {FRONT_VS_STATIC}× static at every size, 50 and 200 "
            "connections", cells)
    yardstick = "proxy_nocache" if "proxy_nocache" in res.variants else "proxy"
    add(f"(issue 13) repeat misses of a page that is not cacheable (the miss memo) ≥ "
        f"{MEMO_VS_PROXY}× `{yardstick}`, every size and connection count",
        _ratio_target(res, "rcache_memo", yardstick, MEMO_VS_PROXY, every))
    cells = []
    for s, c in loaded:
        rows = [res.get(v, s, c) for v in ("rcache_miss", "proxy", "rcache_hit", "rcache_front")]
        if not all(rows):
            continue
        miss, proxy, hit, front_row = (r["cpu_us_nginx"] for r in rows)
        over, exchange = miss - proxy, hit - front_row
        cells.append((f"{s} c={c}: MISS − proxy {over:.1f} µs vs HIT − front {exchange:.1f} µs",
                      over <= exchange))
    add("(issue 13) a cacheable MISS costs nginx no more over `proxy` than one HIT's memcached "
        "exchange (rcache_hit − rcache_front, nginx CPU µs per request)", cells)
    return targets


def targets_section(res):
    lines = ["## Targets (issues 4 and 13)", "",
             "Evaluated on the medians of this run, as measured — nothing re-run or excluded "
             "to pass. Cells that miss the target are in bold. \"ranges overlap\": the min–max "
             "ranges of the two variants overlap, so the ratio is within this run's noise.", ""]
    for name, status, detail in evaluate_targets(res):
        mark = {"met": "✅ met", "not met": "❌ not met"}.get(status, "➖ " + status)
        lines += [f"- **{mark}** — {name}.  ", f"  {detail}"]
    lines.append("")
    return lines


def notes_section(res):
    lines = []
    flagged = [s for s in res.r["summary"] if s["flags"] or s["errors"]]
    invalid = res.r.get("invalid") or []
    log = res.r.get("nginx_error_log_tail") or []
    if not (flagged or invalid or log):
        return []
    lines += ["## Anomalies", ""]
    for i in invalid:
        lines.append(f"- `{i['variant']}` {i['size']}: not measured — {i['why']}")
    for s in flagged:
        runs = [r for r in res.r["runs"] if (r["variant"], r["size"], r["conns"])
                == (s["variant"], s["size"], s["conns"])]
        what = [f"{flag} in {sum(flag in r['flags'] for r in runs)} of {len(runs)} reps"
                for flag in s["flags"]]
        if s["errors"]:
            what.append(f"{s['errors']} failed requests")
        lines.append(f"- `{s['variant']}` {s['size']} c={s['conns']}: " + ", ".join(what))
    if log:
        lines += ["", "Last lines of the error log of the nginx under test:", "", "```"] + log + ["```"]
    lines += ["",
              "Flags: `ERRORS` wrong status/length, wrk errors or a byte total that does not "
              "match; `WARMUP-ERRORS` the same in the warm-up run; `DISTURBED` other processes "
              "were busy in every attempt; `MEMCACHED-GETS-OFF` memcached did not see the gets "
              "and hits per request the variant is meant to make.", ""]
    return lines


def appendix(res):
    lines = ["## Appendix: each variant's nginx configuration", "",
             "Common to all (http level): `access_log off; sendfile on; default_type "
             "text/html;` and `upstream app { server 127.0.0.1:<app>; keepalive 1024; }`.", "",
             "```nginx"]
    for name, v in res.r["variants"].items():
        lines.append(f"# {name}" + (" (skipped)" if v["skipped"] else ""))
        for block in v["http"]:
            lines.append(HTTP_BLOCKS[block].replace("{mc}", "<memcached port>"))
        server = v["server"].replace("{mc}", "<memcached port>").replace("{pages}", "<pages>")
        lines.append("server { listen ...; " + " ".join(server.split()) + " }")
        lines.append("")
    lines += ["```", ""]
    return lines


def write(out_dir, results):
    res = Results(results)
    chart_note = chart.draw(os.path.join(out_dir, "chart.png"), res)
    lines = header(res)
    lines += headline(res)
    lines += targets_section(res)
    lines += ["![req/s per variant](chart.png)", ""] if chart_note is None else \
        [f"(No chart: {chart_note}.)", ""]
    lines += variants_table(res)
    lines += throughput_tables(res)
    lines += fallback_table(res)
    lines += connections_table(res)
    lines += costs_tables(res)
    lines += notes_section(res)
    lines += appendix(res)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines))
