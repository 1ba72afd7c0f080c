"""PNG plots of a comparison report (matplotlib, no display needed)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from loadtest.servers import BARE_VLLM, OURS, RAY_SERVE_LLM  # noqa: E402

COLORS = {OURS: "tab:blue", BARE_VLLM: "tab:orange", RAY_SERVE_LLM: "tab:green"}


def _grid(n: int):
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _servers(results: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["server"] for r in results))


def draw(report: dict, out_json: pathlib.Path) -> list[pathlib.Path]:
    results = report.get("medians") or report["results"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    stem = out_json.with_suffix("")
    written = []
    machine = report.get("machine", {})
    caption = (f"{machine.get('cores')} cores, {machine.get('cpu', '')[:40]}, "
               f"{report.get('model', '')}, max_tokens {report['settings'].get('max_tokens')}")

    closed = [r for r in results if r["mode"] == "closed"]
    if closed:
        fig, axes = _grid(len(scenarios))
        for ax, scenario in zip(axes, scenarios, strict=True):
            for server in _servers(closed):
                rows = sorted((r for r in closed if r["server"] == server
                               and r["scenario"] == scenario), key=lambda r: r["concurrency"])
                ax.plot([r["concurrency"] for r in rows], [r["req_per_s"] for r in rows],
                        marker="o", label=server, color=COLORS.get(server))
            ax.set(title=scenario, xlabel="concurrency (closed loop)", ylabel="requests/s")
            ax.set_xscale("log", base=2)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"Throughput vs concurrency ({caption})", fontsize=9)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-throughput.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    opened = [r for r in results if r["mode"] == "open"]
    if opened:
        fig, axes = _grid(len(scenarios))
        for ax, scenario in zip(axes, scenarios, strict=True):
            rows = [r for r in opened if r["scenario"] == scenario]
            top = max((r["rate"] for r in rows), default=None)
            for server in _servers(rows):
                (row,) = [r for r in rows if r["server"] == server and r["rate"] == top]
                lat = row["latencies_ms"]
                if lat:
                    ax.plot(lat, [(i + 1) / len(lat) for i in range(len(lat))], label=server,
                            color=COLORS.get(server), drawstyle="steps-post")
            ax.set(title=f"{scenario} at {top:g} req/s (open loop)", xlabel="latency (ms)",
                   ylabel="fraction of requests")
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"Latency CDF ({caption})", fontsize=9)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-latency-cdf.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

        fig, axes = _grid(len(scenarios))
        for ax, scenario in zip(axes, scenarios, strict=True):
            for server in _servers(opened):
                rows = sorted((r for r in opened if r["server"] == server
                               and r["scenario"] == scenario), key=lambda r: r["rate"])
                ax.plot([r["rate"] for r in rows], [r["ttft_p50_ms"] for r in rows],
                        marker="o", label=f"{server} p50", color=COLORS.get(server))
                ax.plot([r["rate"] for r in rows], [r["ttft_p99_ms"] for r in rows],
                        marker="x", linestyle="--", label=f"{server} p99",
                        color=COLORS.get(server))
            ax.set(title=scenario, xlabel="offered load (req/s, open loop)",
                   ylabel="time to first token (ms)")
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"TTFT vs load ({caption})", fontsize=9)
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-ttft.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
