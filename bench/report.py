"""bench/results/results.md and its plots, from one run of bench/run.py.

python -m bench.report bench/results/raw/run-<stamp>-<mode>.json   # redo from raw data
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Result = dict[str, Any]
RELAYS = ("raw", "naive", "naive-parsed", "app", "app-redis")
LABEL = {
    "raw": "raw ASGI (limit)",
    "naive": "naive Django view",
    "naive-parsed": "naive Django view on the app's provider",
    "app": "app, in-process log",
    "app-redis": "app, Redis log",
}
COLOR = {
    "raw": "#4c72b0",
    "naive": "#dd8452",
    "naive-parsed": "#c44e52",
    "app": "#55a868",
    "app-redis": "#8172b3",
}

# Share of the server's core that other processes (or the hypervisor) may take in a ramp
# window whose failure counts without a further window.
FOREIGN_LIMIT = 0.15


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def pair(a: float | None, b: float | None, digits: int = 1) -> str:
    return f"{num(a, digits)} / {num(b, digits)}"


def reference(result: Result, transport: str, streams: int) -> Result | None:
    """The ramp level at the reference load."""
    ramp = result.get(f"ramp_{transport}")
    if not ramp:
        return None
    for level in ramp["levels"]:
        if level["streams"] == streams:
            level_: Result = level
            return level_
    return None


def half_capacity(result: Result) -> Result | None:
    ramp = result.get("ramp_sse")
    if not ramp or not ramp.get("full") or not ramp["capacity"]:
        return None
    half = ramp["capacity"] / 2
    passed = [lv for lv in ramp["levels"] if lv["streams"] <= ramp["capacity"]]
    best: Result = min(passed, key=lambda lv: abs(lv["streams"] - half))
    return best


def lifecycle(result: Result) -> Result:
    """The cohort whose answers are counted whole: 50 tokens/s if measured, else 200."""
    cohort: Result = result.get("slow_sse") or result["fast_sse"]
    return cohort


def capacity(result: Result) -> str:
    ramp = result.get("ramp_sse")
    if not ramp or not ramp.get("full"):
        return "not ramped"
    if ramp["capacity"] is None:
        return f"< {ramp['levels'][0]['streams']}"
    if not ramp["exceeded"]:
        return f"≥ {ramp['capacity']}"
    return str(ramp["capacity"])


def capacity_value(result: Result) -> float | None:
    ramp = result.get("ramp_sse")
    if not ramp or not ramp.get("full") or ramp["capacity"] is None:
        return None
    return float(ramp["capacity"])


def rows(run: Result) -> Iterator[tuple[Result, str]]:
    """Each result with its transports: SSE, then the WebSocket for the app."""
    for result in run["results"]:
        yield result, "sse"
        if "ramp_ws" in result:
            yield result, "ws"


def name(result: Result, transport: str = "sse") -> str:
    relay = LABEL.get(result["relay"], result["relay"])
    return f"{result['server']} · {relay}" + (" · WebSocket" if transport == "ws" else "")


def table(head: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in body]
    return out


def find(run: Result, server: str, relay: str) -> Result | None:
    for result in run["results"]:
        if result["server"] == server and result["relay"] == relay:
            found: Result = result
            return found
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ref_cpu(result: Result | None, streams: int) -> float | None:
    level = reference(result, "sse", streams) if result else None
    return level["cpu_s_per_1k_tokens"] if level else None


def targets(run: Result) -> list[str]:
    settings = run["settings"]
    ref = settings["ref_streams"]
    servers = sorted({r["server"] for r in run["results"]})
    checks: list[tuple[str, Callable[[str], tuple[str, bool | None]]]] = []

    def cpu_vs(base: str, limit: float) -> Callable[[str], tuple[str, bool | None]]:
        def check(server: str) -> tuple[str, bool | None]:
            value = ratio(
                ref_cpu(find(run, server, "app"), ref), ref_cpu(find(run, server, base), ref)
            )
            return (times(value), None if value is None else value <= limit)

        return check

    def cap_vs(base: str, limit: float) -> Callable[[str], tuple[str, bool | None]]:
        def check(server: str) -> tuple[str, bool | None]:
            app, other = find(run, server, "app"), find(run, server, base)
            single = ratio(
                capacity_value(app) if app else None, capacity_value(other) if other else None
            )
            # A round in which the base's ramp failed at its first level measured nothing;
            # one in which the app's did counts as none.
            turns = [
                r for r in run.get("capacity_rounds", []) if r["server"] == server and r.get(base)
            ]
            if not turns:
                return (times(single), None if single is None else single >= limit)
            rounds = [(r["app"] or 0) / r[base] for r in turns]
            value = statistics.median(rounds)
            streams = ", ".join(f"{r['app']}/{r[base]}" for r in turns)
            text = (
                f"{times(value)}, the median of {len(rounds)} rounds of ramps in turns "
                f"({streams} streams); {times(single)} in the ramps above"
            )
            return (text, value >= limit)

        return check

    def ttft(server: str) -> tuple[str, bool | None]:
        app = find(run, server, "app")
        level = half_capacity(app) if app else None
        if level is None:
            return ("-", None)
        p50, p99 = level["ttft_ms"]["p50"], level["ttft_ms"]["p99"]
        late = level.get("late_readers", 0)
        text = (
            f"{p50:.1f} / {p99:.1f} ms at {level['streams']} streams "
            f"(n={level['ttft_ms']['n']}, {late} readers connected after their first token)"
        )
        return (text, p50 <= 10 and p99 <= 50)

    def rss(server: str) -> tuple[str, bool | None]:
        app = find(run, server, "app")
        if not app:
            return ("-", None)
        value = app["idle"]["rss_kib_per_stream"]
        return (f"{value:.0f} KiB", value <= 64)

    def events(server: str) -> tuple[str, bool | None]:
        # Counted over whole answers: a window cuts frames at its edges, and that skews
        # its ratio by a percent either way.
        result = find(run, server, "app")
        if not result:
            return ("-", None)
        value = lifecycle(result)["events_per_token"]
        level = reference(result, "sse", ref)
        window = level["events_per_token"] if level else None
        label = f"{value:.3f} over whole answers ({num(window, 3)} in the {ref}-stream window)"
        return (label, value <= 0.5)

    def redis_calls(server: str) -> tuple[str, bool | None]:
        result = find(run, server, "app-redis")
        level = reference(result or {}, "sse", ref)
        if not level:
            return ("-", None)
        value = level["per_token"].get("redis_awaited_path")
        if value is None:  # a run from before the writer's round trips were told apart
            value = level["per_token"]["redis_awaited"]
            return (f"{num(value, 2)} round trips", value == 0)
        writes = level.get("redis_log_writes_per_s")
        return (
            f"{num(value, 2)} round trips on the token path; the log writer "
            f"{num(writes, 0)} per second for all answers",
            value < 0.005,
        )

    def db_writes(server: str) -> tuple[str, bool | None]:
        result = find(run, server, "app")
        if not result:
            return ("-", None)
        cohort = lifecycle(result)
        writes = cohort["per_message"]["db_write"]
        # One write per flush interval (1 s) the answer lasted, its last part included.
        allowed = 3 + math.ceil(cohort["answer_seconds"])
        return (f"{writes:.1f} (allowed {allowed})", writes <= allowed)

    def redis_cpu(server: str) -> tuple[str, bool | None]:
        single = ratio(
            ref_cpu(find(run, server, "app-redis"), ref), ref_cpu(find(run, server, "app"), ref)
        )
        rounds = [p["app-redis"] / p["app"] for p in run.get("pairs", []) if p["server"] == server]
        if not rounds:
            return (times(single), None if single is None else single <= 1.3)
        value = statistics.median(rounds)
        text = (
            f"{times(value)}, the median of {len(rounds)} rounds in turns "
            f"({min(rounds):.2f}-{max(rounds):.2f}); {times(single)} in the ramps above"
        )
        return (text, value <= 1.3)

    checks = [
        ("CPU per 1,000 tokens ≤ 1.25x raw", cpu_vs("raw", 1.25)),
        ("CPU per 1,000 tokens ≤ 0.7x naive", cpu_vs("naive", 0.7)),
        ("capacity ≥ 0.8x raw", cap_vs("raw", 0.8)),
        ("capacity ≥ 1.5x naive", cap_vs("naive", 1.5)),
        ("added TTFT p50 ≤ 10 ms, p99 ≤ 50 ms at half capacity", ttft),
        ("RSS per open idle stream ≤ 64 KiB", rss),
        ("events per token ≤ 0.5", events),
        ("zero awaited Redis calls per token (Redis log)", redis_calls),
        ("DB writes per message ≤ 3 + one per flush interval", db_writes),
        ("Redis log CPU ≤ 1.3x in-process", redis_cpu),
    ]
    body = []
    for label, check in checks:
        row = [label]
        for server in servers:
            text, met = check(server)
            row.append(f"{text} {'✅' if met else '❌' if met is False else ''}".strip())
        body.append(row)
    return table(["target (50 tokens/s unless said)", *servers], body)


def markdown(run: Result) -> str:
    settings = run["settings"]
    ref = settings["ref_streams"]
    m = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    extras = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["uvicorn_extras"].items())
    command = "make bench" if run["mode"] == "quick" else "make bench-full"
    out = [
        "# Relay benchmark",
        "",
        f"`{command}` ({run['mode']} mode), {run['stamp']}, {run['seconds']:.0f} s. "
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, {m['os']}. "
        f"{versions}; uvicorn's optional speedups: {extras}.",
        "",
        "The server under test runs alone on core 0; the load generator and the upstream "
        "share core 1. Answers are 500 tokens. *Added* latency is the client's receipt of a "
        "token minus the upstream's send stamp of its chunk. The 50 tokens/s figures come "
        f"from the ramp's level of {ref} concurrent streams (2,000 tokens/s), measured over "
        f"{settings['window']:g} s; capacity is the last ramp level whose p99 added latency "
        "is at most 100 ms. See bench/run.py for the method.",
        "",
        *(
            [
                "The capacity target against the bare relay is read from further rounds "
                "of ramps of the two, one after the other and in the order ABBA across "
                f"rounds, in steps of {settings.get('turn_step', 10)} streams from a "
                "little below the capacity each reached in the ramps of the table.",
                "",
            ]
            if run.get("capacity_rounds")
            else []
        ),
        f"## At 50 tokens/s per stream ({ref} streams, and the ramp)",
        "",
    ]
    body = []
    for result, transport in rows(run):
        level = reference(result, transport, ref)
        if level is None:
            continue
        body.append(
            [
                name(result, transport),
                capacity(result) if transport == "sse" else "-",
                pair(level["ttft_ms"]["p50"], level["ttft_ms"]["p99"]),
                pair(level["latency_ms"]["p50"], level["latency_ms"]["p99"]),
                num(level["cpu_s_per_1k_tokens"], 3),
                num(level["events_per_token"], 2),
                num(level["bytes_per_answer_byte"], 2),
            ]
        )
    out += table(
        [
            "configuration",
            "capacity (streams)",
            "added TTFT p50 / p99 ms",
            "added per-token p50 / p99 ms",
            "server CPU s per 1,000 tokens",
            "events per token",
            "bytes on the wire per answer byte",
        ],
        body,
    )
    cohorts = [("fast", f"At 200 tokens/s per stream ({settings['fast_streams']} answers at once)")]
    if settings.get("slow_cohort"):
        cohorts.append(("slow", f"Whole answers at 50 tokens/s ({ref} at once, start to end)"))
    for prefix, title in cohorts:
        out += ["", f"## {title}", ""]
        body = []
        for result in run["results"]:
            for transport in ("sse", "ws"):
                cohort = result.get(f"{prefix}_{transport}")
                if not cohort:
                    continue
                body.append(
                    [
                        name(result, transport),
                        pair(cohort["ttft_ms"]["p50"], cohort["ttft_ms"]["p99"]),
                        pair(cohort["latency_ms"]["p50"], cohort["latency_ms"]["p99"]),
                        num(cohort["cpu_s_per_1k_tokens"], 3),
                        num(cohort["events_per_token"], 2),
                        num(cohort["bytes_per_answer_byte"], 2),
                    ]
                )
        out += table(
            [
                "configuration",
                "added TTFT p50 / p99 ms",
                "added per-token p50 / p99 ms",
                "server CPU s per 1,000 tokens",
                "events per token",
                "bytes on the wire per answer byte",
            ],
            body,
        )
    out += ["", "## Per stream and per answer", ""]
    body = []
    for result in run["results"]:
        fast = result["fast_sse"]
        whole = lifecycle(result)
        level = reference(result, "sse", ref)
        path = (
            "redis_awaited_path"
            if level and "redis_awaited_path" in level["per_token"]
            else "redis_awaited"
        )
        redis = level["per_token"][path] if level else None
        writes = level.get("redis_log_writes_per_s") if level else None
        stft_ws = result.get("stft_ws", {}).get("stft_ms", {})
        answers = result.get("answers")
        body.append(
            [
                name(result),
                f"{result['idle']['rss_kib_per_stream']:.0f}",
                num(result["idle"]["idle_cpu_ms_per_stream_s"], 2),
                num(whole["per_message"]["db_write"], 1),
                pair(redis, fast["per_token"].get(path, fast["per_token"]["redis_awaited"]), 2),
                num(writes, 0) if result["relay"] == "app-redis" else "-",
                num(whole["per_message"]["redis_sync"], 1),
                pair(result["stft_sse"]["stft_ms"]["p50"], result["stft_sse"]["stft_ms"]["max"]),
                pair(stft_ws.get("p50"), stft_ws.get("max")),
                (
                    f"{answers['cpu_ms_per_answer']:.1f} "
                    f"({answers['threads_cpu_ms_per_answer']:.1f})"
                    if answers
                    else "-"
                ),
            ]
        )
    out += table(
        [
            "configuration",
            "RSS per open idle stream KiB",
            "idle CPU ms per stream-second",
            "DB writes per message",
            "awaited Redis calls per token, log writer aside (50 / 200 tokens/s)",
            "log writer round trips per s",
            "sync Redis calls per message",
            "Send-to-first-token SSE p50 / max ms",
            "WebSocket p50 / max ms",
            "server CPU per 5-token answer ms (in threads)",
        ],
        body,
    )
    out += [
        "",
        "DB writes per message are counted over whole answers "
        f"({lifecycle(run['results'][0])['answer_seconds']:.1f} s each); "
        "Send-to-first-token runs one answer at a time, from the POST (or the `send` frame) "
        "to the first token, with an upstream that answers at once. The CPU per answer "
        f"comes from {settings.get('short_answers', 400)} answers of five tokens, four at a "
        "time, the server's idle CPU taken out: the cost of an answer apart from its "
        "tokens, paid N / 10 times a second by a ramp level of N streams.",
        "",
        "## Targets (issue #9; ratios within this run)",
        "",
        *targets(run),
        "",
        "## The other core: load generator and upstream",
        "",
    ]
    body = []
    for result, transport in rows(run):
        ramp = result.get(f"ramp_{transport}")
        if not ramp or not ramp["levels"]:
            continue
        last = ramp["levels"][-1]
        use = last["usage"]
        seconds = use["seconds"]
        cores = use["core_busy"]
        body.append(
            [
                name(result, transport),
                str(last["streams"]),
                f"{use['cpu_s']['server'] / seconds:.0%}",
                f"{use['cpu_s']['loadgen'] / seconds:.0%}",
                f"{use['cpu_s']['upstream'] / seconds:.0%}",
                " / ".join(f"{c:.0%}" for c in cores),
                f"{last.get('foreign_load', 0):.0%}",
                num(last["upstream_lag_ms"]["p99_ms"], 1),
                loadgen_lag(use),
            ]
        )
    out += table(
        [
            "configuration (last ramp level)",
            "streams",
            "server CPU",
            "load generator CPU",
            "upstream CPU",
            "core 0 / core 1 busy (all processes)",
            "other processes on the server's core",
            "upstream send lag p99 ms",
            "load generator: wakes > 5 ms late, worst ms",
        ],
        body,
    )
    out += [
        "",
        "Other processes on the server's core: the core's busy time that the server did not "
        "use, the hypervisor's steal time included. A ramp level fails when a second window "
        "confirms the first, or a third when other processes took "
        f"{FOREIGN_LIMIT:.0%} of the core or more in the second.",
        "",
        "![p99 added latency against concurrent streams](ramp.png)",
        "",
        "![Server CPU per 1,000 relayed tokens](cpu.png)",
        "",
    ]
    return "\n".join(out)


def loadgen_lag(use: Result) -> str:
    lag = use.get("loadgen_loop")
    if not lag:
        return "-"
    return f"{lag['late_share']:.1%}, {lag['worst_ms']:.0f}"


def plot_ramp(run: Result, path: Path) -> None:
    servers = sorted({r["server"] for r in run["results"]})
    fig, axes = plt.subplots(1, len(servers), figsize=(6 * len(servers), 4.2), squeeze=False)
    for ax, server in zip(axes[0], servers, strict=True):
        for relay in RELAYS:
            result = find(run, server, relay)
            if not result or not result["ramp_sse"].get("full"):
                continue
            levels = result["ramp_sse"]["levels"]
            xs = [lv["streams"] for lv in levels]
            ys = [max(lv["latency_ms"]["p99"], 0.1) for lv in levels]
            ax.plot(xs, ys, "o-", label=LABEL[relay], color=COLOR[relay])
        ax.axhline(100, color="grey", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(f"{server}: p99 added latency, 50 tokens/s per stream")
        ax.set_xlabel("concurrent streams (SSE)")
        ax.set_ylabel("ms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cpu(run: Result, path: Path) -> None:
    ref = run["settings"]["ref_streams"]
    servers = sorted({r["server"] for r in run["results"]})
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(RELAYS)
    for i, relay in enumerate(RELAYS):
        xs, values = [], []
        for s, server in enumerate(servers):
            value = ref_cpu(find(run, server, relay), ref)
            if value is not None:  # a configuration this run did not measure: no bar
                xs.append(s + (i - (len(RELAYS) - 1) / 2) * width)
                values.append(value * 1000)
        if values:
            bars = ax.bar(xs, values, width, label=LABEL[relay], color=COLOR[relay])
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(servers)), servers)
    ax.set_ylabel("server CPU µs per relayed token")
    ax.set_title(f"CPU per token at {ref} streams x 50 tokens/s (SSE)")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: Result, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.md").write_text(markdown(run))
    plot_ramp(run, folder / "ramp.png")
    plot_cpu(run, folder / "cpu.png")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    write(json.loads(source.read_text()), Path(__file__).resolve().parent / "results")
