"""chart.png: grouped bars of req/s per variant, one panel per page size and load."""

COLORS = {  # baselines grey, stock nginx orange, rcache blue/green
    "static": "#9e9e9e", "return200": "#cfcfcf", "proxy": "#6d6d6d",
    "stock": "#fdd0a2", "stock_ka32": "#fd8d3c", "stock_tuned": "#d94801",
    "stock_miss": "#8c2d04",
    "rcache_hit": "#2171b5", "rcache_miss": "#6baed6", "rcache_bypass": "#c6dbef",
    "rcache_front": "#238b45",
}


def draw(path, res):
    """Draw the chart; returns None, or why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing (apt-get install python3-matplotlib)"
    loads = [c for c in res.conns if c in (50, 200)] or res.conns[-1:]
    variants = res.variants
    fig, axes = plt.subplots(len(loads), len(res.sizes), squeeze=False,
                             figsize=(4.6 * len(res.sizes), 3.8 * len(loads)))
    for i, conns in enumerate(loads):
        for j, size in enumerate(res.sizes):
            ax = axes[i][j]
            rows = [(v, res.get(v, size, conns)) for v in variants]
            rows = [(v, r) for v, r in rows if r]
            xs = range(len(rows))
            med = [r["rps"] / 1000 for _, r in rows]
            low = [r["rps_min"] / 1000 for _, r in rows]
            high = [r["rps_max"] / 1000 for _, r in rows]
            # return200 (a 3-byte body, not a page) would squash the page variants: the
            # scale is set by the others and an off-scale bar is cut and labelled.
            pages = [h for (v, _), h in zip(rows, high) if v != "return200"] or high
            top = max(pages) * 1.15
            shown = [min(m, top) for m in med]
            ax.bar(xs, shown, color=[COLORS.get(v, "#444") for v, _ in rows],
                   hatch=["//" if m > top else "" for m in med],
                   edgecolor="#333", linewidth=0.4)
            for x, m, lo, hi in zip(xs, med, low, high):
                if m > top:
                    ax.text(x, top * 0.97, f"{m:.0f}\n(off\nscale)", ha="center", va="top",
                            fontsize=6.5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
                    continue
                ax.errorbar(x, m, yerr=[[m - lo], [hi - m]], color="#222", capsize=2,
                            elinewidth=0.8)
                ax.text(x, hi + top * 0.01, f"{m:.0f}", ha="center", va="bottom", fontsize=6.5)
            ax.set_ylim(0, top * 1.04)
            ax.set_xticks(list(xs))
            ax.set_xticklabels([v for v, _ in rows], rotation=55, ha="right", fontsize=7.5)
            ax.set_title(f"{size} page, {conns} connections", fontsize=10)
            ax.set_ylabel("thousand req/s" if j == 0 else "")
            ax.grid(axis="y", linewidth=0.3)
            ax.set_axisbelow(True)
            ax.tick_params(axis="y", labelsize=8)
    m = res.r["meta"]
    fig.suptitle(f"rcache vs stock nginx ({m['nginx']}, 1 worker), {m['started'][:10]}\n"
                 "req/s, median of the reps; error bars: min–max", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
