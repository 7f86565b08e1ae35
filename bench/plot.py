"""Draw docs/benchmarks.png from the raw figures in bench/results/*.json.

One panel per benchmark that has results; panels without results are left out. Run by
``make bench`` after the benchmarks, or alone to redraw::

    .venv/bin/python bench/plot.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, load_results, write_section  # noqa: E402

PNG = REPO / "docs" / "benchmarks.png"


def panel_cpu(ax: Any, r: dict[str, Any]) -> None:
    sides = r["sides"]
    for side, style in (("ours", "o-"), ("snakemake", "s--")):
        points = [(n, sides[f"{side}@{n}"]["items_per_s"]) for n in r["batches"]
                  if f"{side}@{n}" in sides]  # fmt: skip
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"{side} (per batch count)")
    for peer, color in (("pool", "black"), ("dask", "tab:green"), ("lithops", "tab:red")):
        if peer in sides:
            ax.axhline(sides[peer]["items_per_s"], color=color, linestyle=":", label=peer)
    if "pool" in sides:
        ax.axhline(0.85 * sides["pool"]["items_per_s"], color="grey", linewidth=0.8,
                   label="target: 0.85x pool")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("batches")
    ax.set_ylabel("items / s")
    ax.set_title(f"CPU-bound item job, {r['items']:,} items")
    ax.legend(fontsize=7)


def panel_plan(ax: Any, r: dict[str, Any]) -> None:
    rows = r["results"]
    xs = [row["n_batches"] for row in rows]
    ax.plot(xs, [row["ours"]["wall_s"] for row in rows], "o-", label="ours")
    ax.plot(xs, [row["bare"]["wall_s"] for row in rows], "s--", label="bare Snakefile")
    ax.set_xscale("log")
    ax.set_xlabel("batches")
    ax.set_ylabel("snakemake -n (s)")
    ax.set_title("Planning")
    ax.legend(fontsize=7)


def panel_bars(ax: Any, title: str, labels: list[str], values: list[float], unit: str) -> None:
    bars = ax.bar(labels, values, color=["tab:blue", "tab:orange", "tab:grey"][: len(values)])
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_ylabel(unit)
    ax.set_title(title)


def panel_requests(ax: Any, r: dict[str, Any]) -> None:
    rows = r["summary"]["rows"]  # {measure: {"total": [median, max], ...}}
    values = [rows["ddb_writes"]["total"][0], rows["s3"]["total"][0]]
    panel_bars(ax, "Requests per batch attempt", ["DynamoDB writes", "S3 requests"], values,
               "requests (median)")  # fmt: skip
    for x, target in enumerate((r["targets"]["ddb_writes"], r["targets"]["s3_requests"])):
        ax.hlines(target, x - 0.4, x + 0.4, colors="red", linestyles="dashed")


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if cpu := load_results("cpu"):
        panels.append(lambda ax, r=cpu: panel_cpu(ax, r))
    if plan := load_results("plan"):
        panels.append(lambda ax, r=plan: panel_plan(ax, r))
    if red := load_results("reduce"):
        panels.append(lambda ax, r=red: panel_bars(
            ax, f"Reduce, {r['rows']:,} rows", ["polars", "ours"],
            [r["polars"]["wall_s"], r["ours"]["wall_s"]], "wall (s)"))  # fmt: skip
    if mem := load_results("merge_memory"):
        panels.append(lambda ax, r=mem: panel_bars(
            ax, "Concat merge memory", ["largest child", "merge node", "read all"],
            [r["largest_child_mib"], r["merge_extra_mib"], r["read_all_extra_mib"]],
            "MiB (above baseline)"))  # fmt: skip
    if req := load_results("requests"):
        panels.append(lambda ax, r=req: panel_requests(ax, r))
    if slurm := load_results("slurm"):
        panels.append(lambda ax, r=slurm: panel_bars(
            ax, "Slurm: example run", ["plain Snakemake", "ours"],
            [r["plain"]["wall_s"], r["ours"]["wall_s"]], "wall (s)"))  # fmt: skip
    if not panels:
        print("no results in bench/results/: run the benchmarks first")
        return 1
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 4.2 * rows), squeeze=False)
    for ax, draw in zip(axes.flat, panels, strict=False):
        draw(ax)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    PNG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PNG, dpi=90)
    write_section("plot", f"![benchmarks](benchmarks.png)\n\n`bench/plot.py` drew {len(panels)} "
                  "panels from `bench/results/*.json`.")  # fmt: skip
    print(f"wrote {PNG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
