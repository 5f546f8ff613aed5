#!/usr/bin/env python3
"""bench-storm: N workers join at once through the bootstrap tier the policy gives for N, once
with Python kademlia 2.2.3 nodes and once with dht-node, laid out the same way: every
bootstrap node a process of its own (pyworker.py / dht-node bootstrap), workers GROUP to a
process (bench/pystorm.py / join-load workers), because 1,000 Python processes do not fit in
memory. Both use k = 25 (the replaced deployment's) and alpha = 3.

Measured per run: time from `go` until the last worker joined, join latency p50/p99 (each
worker from its own start of bootstrap), failed joins, CPU seconds of every process of the
run during the storm, memory per node (RSS, PSS and anonymous memory: a worker process's
divided by the nodes in it; a bootstrap process's). Writes a JSON file, a Markdown fragment
and an SVG plot.
"""

import argparse
import json
import math
import subprocess
import sys
import time
from xml.sax.saxutils import escape

import benchlib
from benchlib import JOIN_LOAD, K, LABELS, PYTHON, SYSTEMS

GROUP_COMMANDS = {
    "python": lambda count, seeds, deadline: [
        PYTHON, "bench/pystorm.py", "--count", str(count), "--bootstrap", seeds,
        "--k", str(K), "--deadline-secs", str(deadline)],
    "dht-node": lambda count, seeds, deadline: [
        JOIN_LOAD, "workers", "--count", str(count), "--bootstrap", seeds,
        "--k", str(K), "--deadline-secs", str(deadline)],
}


def plan(sizes):
    """{workers: (tier, bootstrap nodes)} from the policy's own code (join-load plan)."""
    output = subprocess.run([JOIN_LOAD, "plan", "--workers", ",".join(map(str, sizes))],
                            check=True, capture_output=True, text=True).stdout
    plans = [json.loads(line) for line in output.splitlines()]
    return {p["workers"]: (p["tier"], p["bootstrap_nodes"]) for p in plans}


def read_line(process, what):
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} (pid {process.pid}) exited without a line "
                           f"(exit code {process.poll()}); see its log")
    return json.loads(line)


def run_storm(system, workers, bootstraps, group, deadline, log):
    """One storm: start the tier, then the worker processes, then `go`; the figures."""
    base = benchlib.free_base_port(bootstraps)
    tier_processes, commands = [], {}
    groups = []
    try:
        seeds = []
        for index in range(bootstraps):
            command = benchlib.bootstrap_command(system, base + index, ",".join(seeds))
            commands.setdefault("bootstrap", benchlib.display(command))
            tier_processes.append(benchlib.start(command, log))
            benchlib.wait_listening(tier_processes[-1], base + index)
            seeds.append(f"127.0.0.1:{base + index}")
        # The tier's own joins settle before the workers come.
        time.sleep(0.5)
        all_seeds = ",".join(seeds)
        for first in range(0, workers, group):
            command = GROUP_COMMANDS[system](min(group, workers - first), all_seeds, deadline)
            commands.setdefault("workers", benchlib.display(command))
            groups.append(benchlib.start(command, log, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE))
        for process in groups:
            read_line(process, "worker process")
        processes = tier_processes + groups
        cpu_before = [benchlib.cpu_seconds(p.pid) for p in processes]
        drops_before = benchlib.udp_receive_buffer_errors()
        go = time.monotonic()
        for process in groups:
            process.stdin.write("go\n")
            process.stdin.flush()
        nodes = [node for process in groups for node in read_line(process, "worker process")["nodes"]]
        drops = benchlib.udp_receive_buffer_errors() - drops_before
        cpu = [benchlib.cpu_seconds(p.pid) - before for p, before in zip(processes, cpu_before)]
        time.sleep(SETTLE_SECS)
        cpu_settled = sum(benchlib.cpu_seconds(p.pid) - before
                          for p, before in zip(processes, cpu_before))
        memory = [benchlib.memory_bytes(p.pid) for p in processes]
    finally:
        for process in groups:
            if process.stdin and not process.stdin.closed:
                process.stdin.close()
        for process in groups + tier_processes:
            benchlib.stop(process)
    joined = [node for node in nodes if node["ok"]]
    latencies = [node["end"] - node["start"] for node in joined]
    return {
        "system": system,
        "workers": workers,
        "bootstrap_nodes": bootstraps,
        "worker_processes": len(groups),
        "joined": len(joined),
        "failed": len(nodes) - len(joined),
        "all_joined_after_secs": (max(node["end"] for node in nodes) - go
                                  if len(joined) == len(nodes) == workers else None),
        "last_join_after_secs": max((node["end"] for node in joined), default=go) - go,
        "join_p50_ms": milliseconds(benchlib.percentile(latencies, 0.50)),
        "join_p99_ms": milliseconds(benchlib.percentile(latencies, 0.99)),
        "cpu_seconds_bootstrap": sum(cpu[:bootstraps]),
        "cpu_seconds_workers": sum(cpu[bootstraps:]),
        "cpu_seconds_settled": cpu_settled,
        "receive_buffer_drops": drops,
        "mean_routing_table": sum(node["routing_table"] for node in nodes) / len(nodes),
        **memory_per_node(memory[bootstraps:], workers, "worker"),
        **memory_per_node(memory[:bootstraps], bootstraps, "bootstrap"),
        "commands": commands,
    }


# dht-node fills its far buckets 1 to 2 s after a join (Python never does): the CPU seconds are
# read again, and the memory only, this long after the last join, so that their cost counts.
SETTLE_SECS = 3.0

# The memory figures of benchlib.memory_bytes, in the order the tables give them.
MEMORY_KINDS = ("rss", "pss", "anon")


def memory_per_node(memory, nodes, role):
    """{"rss_per_ROLE_node_bytes": ..., "pss_...", "anon_..."}: the processes' sums / nodes."""
    return {f"{kind}_per_{role}_node_bytes": sum(process[kind] for process in memory) / nodes
            for kind in MEMORY_KINDS}


def milliseconds(seconds):
    return None if seconds is None else seconds * 1e3


def ratio(numerator, denominator):
    return numerator / denominator if numerator and denominator else None


def compare(runs):
    """Python / dht-node ratios per worker count and layout (higher: dht-node better)."""
    by_key = {(run["system"], run["workers"], run["group"]): run for run in runs}
    comparisons = []
    for workers, group in dict.fromkeys((run["workers"], run["group"]) for run in runs):
        python, dht = by_key.get(("python", workers, group)), by_key.get(("dht-node", workers, group))
        if not (python and dht):
            continue
        python_time = python["all_joined_after_secs"] or python["last_join_after_secs"]
        comparisons.append({
            "workers": workers,
            "group": group,
            "full_join": ratio(python_time, dht["all_joined_after_secs"]),
            "python_all_joined": python["all_joined_after_secs"] is not None,
            **{f"{kind}_per_{role}_node": ratio(python[f"{kind}_per_{role}_node_bytes"],
                                                dht[f"{kind}_per_{role}_node_bytes"])
               for kind in MEMORY_KINDS for role in ("worker", "bootstrap")},
            "cpu_seconds": ratio(python["cpu_seconds_bootstrap"] + python["cpu_seconds_workers"],
                                 dht["cpu_seconds_bootstrap"] + dht["cpu_seconds_workers"]),
            "cpu_seconds_settled": ratio(python["cpu_seconds_settled"], dht["cpu_seconds_settled"]),
        })
    return comparisons


def number(value, digits=1, unit=""):
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def memory_cell(run, role, digits):
    """"RSS / PSS / anon" per node of `role` in MiB."""
    return " / ".join(f"{benchlib.mib(run[f'{kind}_per_{role}_node_bytes']):.{digits}f}"
                      for kind in MEMORY_KINDS) + " MiB"


def ratio_cell(comparison, role):
    """"RSS / PSS / anon" ratios of `role`, the RSS and PSS ones (the targets') in bold."""
    cells = []
    for kind in MEMORY_KINDS:
        text = number(comparison[f"{kind}_per_{role}_node"], 1, "x")
        cells.append(text if kind == "anon" else f"**{text}**")
    return " / ".join(cells)


def layout(comparison):
    return f"{comparison['workers']} workers ({comparison['group']} per process)"


def binaries_note():
    """Which dht-node build was measured: a node's memory depends on its C library and malloc."""
    where = f"dht-node's binaries: `{benchlib.display([benchlib.BIN_DIR])}`"
    if benchlib.BUILD_TARGET:
        return f"{where} (target {benchlib.BUILD_TARGET})."
    return (f"{where} (the host target: glibc, dynamically linked; the image ships "
            "x86_64-unknown-linux-musl, static, which `BENCH_TARGET=x86_64-unknown-linux-musl` "
            "measures).")


def markdown(report, svg_link):
    runs, comparisons = report["runs"], report["comparisons"]
    group = report["group"]
    lines = [
        f"Run {report['started']}, {report['machine']} at start, "
        f"{report['load_average_at_end']} at end (the machine is shared).",
        "",
        "Layout, the same for both systems: every bootstrap node is a process of its own (pyworker.py, "
        f"`dht-node bootstrap`); workers run {group} to a process (bench/pystorm.py, `join-load workers`), "
        "because 1,000 Python processes at 25 to 40 MB each do not fit in this machine's memory; the rows "
        "with 1 node per worker process run every worker as a process of its own, as pods do. All on "
        f"127.0.0.1, k = {K}, alpha = 3. Each worker process listens, then on `go` all its workers join at "
        "once: Python's `bootstrap()` with every bootstrap node, dht-node's bootstrap manager with its "
        "defaults (round robin, 3 seeds per join, retries with backoff). Joined: Python's `bootstrap()` "
        "returned within 60 s with a non-empty routing table (it does not retry); dht-node's manager "
        "reported it joined within 60 s.",
        "",
        f"Memory, three figures per node: RSS / PSS / anon. Per worker node = the worker processes' "
        f"sum / workers (each process's interpreter or runtime shared by {group} nodes); per bootstrap "
        "node = a bootstrap process's. RSS (VmRSS) counts every resident page, the executable's and "
        "shared libraries' mapped pages in full in every process. PSS (Pss of smaps_rollup) divides "
        "each shared page among the processes mapping it: on a host where many nodes run the same "
        "binary its text is in memory once, so PSS, the kernel's fair share of it, is what one more "
        "node costs the host, and the PSS of all nodes adds up to their memory together. Anon "
        "(RssAnon): heap and stacks alone, what a node costs beyond any shared page. Contacts per "
        "worker: the mean routing-table size when the worker process reported (a node knowing more "
        f"of the network holds more). CPU seconds: every process of the run's, from `go` to the "
        f"last join and again to {SETTLE_SECS:.0f} s after it, when the memory is read too "
        "(dht-node looks up contacts for its far buckets 1 to 2 s after its join, which Python "
        f"never does). {binaries_note()}",
        "",
        "| workers | bootstrap nodes (tier) | nodes per worker process | system | all joined after "
        "| join p50 | join p99 | failed joins | CPU s bootstrap + workers "
        f"| CPU s to {SETTLE_SECS:.0f} s later "
        "| per worker node: RSS / PSS / anon | per bootstrap node: RSS / PSS / anon "
        "| contacts per worker | receive-buffer drops |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        all_joined = run["all_joined_after_secs"]
        after = (f"**{all_joined:.2f} s**" if all_joined is not None
                 else f"not all (last join {run['last_join_after_secs']:.2f} s)")
        lines.append(
            f"| {run['workers']} | {run['bootstrap_nodes']} ({run['tier']}) | {run['group']} "
            f"| {LABELS[run['system']]} "
            f"| {after} | {number(run['join_p50_ms'], 1, ' ms')} | {number(run['join_p99_ms'], 1, ' ms')} "
            f"| {run['failed']} | {run['cpu_seconds_bootstrap']:.2f} + {run['cpu_seconds_workers']:.2f} "
            f"| {run['cpu_seconds_settled']:.2f} "
            f"| {memory_cell(run, 'worker', 3)} | {memory_cell(run, 'bootstrap', 1)} "
            f"| {run['mean_routing_table']:.0f} "
            f"| {run['receive_buffer_drops']} |")
    lines += [
        "",
        "Ratios, Python / dht-node, same run (targets: at least 20x faster to a full join, at least "
        "10x less memory per node):",
        "",
        "| workers | nodes per worker process | time to full join "
        "| per worker node: RSS / PSS / anon | per bootstrap node: RSS / PSS / anon "
        f"| CPU seconds to the last join / to {SETTLE_SECS:.0f} s later |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        full = number(c["full_join"], 1, "x")
        if c["full_join"] is not None and not c["python_all_joined"]:
            full += " (to Python's last join; not all joined)"
        lines.append(
            f"| {c['workers']} | {c['group']} | **{full}** | {ratio_cell(c, 'worker')} "
            f"| {ratio_cell(c, 'bootstrap')} | {number(c['cpu_seconds'], 1, 'x')} "
            f"/ {number(c['cpu_seconds_settled'], 1, 'x')} |")
    verdicts = []
    for target, key, goal in (("20x faster to a full join", "full_join", 20),
                              ("10x less RSS per worker node", "rss_per_worker_node", 10),
                              ("10x less PSS per worker node", "pss_per_worker_node", 10),
                              ("10x less RSS per bootstrap node", "rss_per_bootstrap_node", 10),
                              ("10x less PSS per bootstrap node", "pss_per_bootstrap_node", 10)):
        missed = [layout(c) for c in comparisons if (c[key] or 0) < goal]
        verdicts.append(f"{target}: " + (f"**missed** at {', '.join(missed)}"
                                         if missed else "met at every size"))
    not_all = [layout(c) for c in comparisons if not c["python_all_joined"]]
    if not_all:
        verdicts.append(f"Python did not join every worker at {', '.join(not_all)}, so the "
                        "full-join ratio there is to its last successful join and understates the gap")
    lines += ["", "Targets in this run: " + "; ".join(verdicts) + ".", "",
              f"![join time against worker count]({svg_link})", "",
              "Commands (`just bench-storm` runs them; ports vary, one bootstrap command per "
              f"bootstrap node, one worker command per {group} workers):", "", "```"]
    for system in SYSTEMS:
        first = next((run for run in runs if run["system"] == system and run["group"] == group), None)
        if first:
            lines += [first["commands"]["bootstrap"], first["commands"]["workers"]]
    lines += ["```"]
    return "\n".join(lines) + "\n"


def svg_plot(runs, group):
    """Join time (log scale) against worker count, one line per system: time until every
    worker joined (solid) and join p50 (dashed), for the runs with `group` workers per process.
    Where not every worker joined, the point is hollow, at the last join, with the failures."""
    width, height = 680, 400
    left, right, top, bottom = 70, 200, 40, 50
    runs = [run for run in runs if run["group"] == group]
    sizes = sorted({run["workers"] for run in runs})
    short = {"python": "Python kademlia", "dht-node": "dht-node"}
    colors = {"python": "#3572a5", "dht-node": "#c0622d"}
    series = []
    for system in SYSTEMS:
        system_runs = sorted((r for r in runs if r["system"] == system), key=lambda r: r["workers"])
        full = [(r["workers"], r["all_joined_after_secs"] or r["last_join_after_secs"], r["failed"])
                for r in system_runs]
        p50 = [(r["workers"], (r["join_p50_ms"] or 0) / 1e3, 0) for r in system_runs]
        # p50 first, so that a hollow all-joined point is drawn over it.
        series.append((f"{short[system]}: join p50", colors[system], "6,4", p50))
        series.append((f"{short[system]}: all joined", colors[system], "", full))
    values = [y for _, _, _, points in series for _, y, _ in points if y and y > 0]
    low = 10 ** math.floor(math.log10(min(values)))
    high = 10 ** math.ceil(math.log10(max(values)))
    x_low, x_high = min(sizes), max(sizes)

    def x_of(workers):
        span = x_high - x_low or 1
        return left + (workers - x_low) / span * (width - left - right)

    def y_of(seconds):
        fraction = (math.log10(max(seconds, low)) - math.log10(low)) / (math.log10(high) - math.log10(low) or 1)
        return height - bottom - fraction * (height - top - bottom)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">Join storm: seconds against workers joining '
             f'at once (log scale, {group} workers per process)</text>']
    decade = low
    while decade <= high * 1.0001:
        y = y_of(decade)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{decade:g} s</text>')
        decade *= 10
    for workers in sizes:
        x = x_of(workers)
        parts.append(f'<line x1="{x:.1f}" y1="{height - bottom}" x2="{x:.1f}" y2="{top}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{workers}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.0f}" y="{height - 12}" '
                 f'text-anchor="middle">workers</text>')
    parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>')
    for index, (name, color, dash, points) in enumerate(series):
        drawn = [(w, s, failed) for w, s, failed in points if s and s > 0]
        coords = " ".join(f"{x_of(w):.1f},{y_of(s):.1f}" for w, s, _ in drawn)
        dashing = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"{dashing}/>')
        for w, s, failed in drawn:
            fill = "white" if failed else color
            parts.append(f'<circle cx="{x_of(w):.1f}" cy="{y_of(s):.1f}" r="4" fill="{fill}" '
                         f'stroke="{color}" stroke-width="2"/>')
            if failed:
                parts.append(f'<text x="{x_of(w) - 8:.1f}" y="{y_of(s) - 9:.1f}" text-anchor="end" '
                             f'font-size="10" fill="{color}">{failed} failed</text>')
        y = top + 10 + index * 18
        parts.append(f'<line x1="{width - right + 12}" y1="{y}" x2="{width - right + 36}" y2="{y}" '
                     f'stroke="{color}" stroke-width="2"{dashing}/>')
        parts.append(f'<text x="{width - right + 42}" y="{y + 4}" font-size="11">{escape(name)}</text>')
    note_y = top + 10 + len(series) * 18 + 8
    parts.append(f'<text x="{width - right + 12}" y="{note_y}" font-size="10">hollow: not every worker</text>')
    parts.append(f'<text x="{width - right + 12}" y="{note_y + 13}" font-size="10">joined; time of the last join</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def check(report):
    """The smoke test's assertions: every worker joined, figures are sane."""
    problems = []
    for run in report["runs"]:
        name = f"{run['system']} with {run['workers']} workers"
        if run["joined"] != run["workers"] or run["failed"]:
            problems.append(f"{name}: {run['joined']} joined, {run['failed']} failed")
        if not run["all_joined_after_secs"] or not run["join_p99_ms"]:
            problems.append(f"{name}: no full-join time or p99")
        for kind in MEMORY_KINDS:
            if run[f"{kind}_per_worker_node_bytes"] <= 0 or run[f"{kind}_per_bootstrap_node_bytes"] <= 0:
                problems.append(f"{name}: no {kind} measured")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,500,1000", help="worker counts, comma-separated")
    parser.add_argument("--group", type=int, default=50, help="worker nodes per process")
    parser.add_argument("--per-process-sizes", default="",
                        help="worker counts to run again with one worker per process")
    parser.add_argument("--deadline-secs", type=float, default=60.0)
    parser.add_argument("--machine", default="", help="machine description for the report")
    parser.add_argument("--json", required=True, help="where the figures go")
    parser.add_argument("--markdown", help="where the BENCHMARKS.md fragment goes")
    parser.add_argument("--svg", help="where the plot goes")
    parser.add_argument("--svg-link", help="the plot's link in the fragment (default --svg)")
    parser.add_argument("--log", required=True, help="the nodes' stderr")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every worker joined (the smoke test)")
    args = parser.parse_args()
    layouts = [(int(size), args.group) for size in args.sizes.split(",")]
    layouts += [(int(size), 1) for size in args.per_process_sizes.split(",") if size]
    tiers = plan(sorted({workers for workers, _ in layouts}))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs = []
    with open(args.log, "w") as log:
        for system in SYSTEMS:
            for workers, group in layouts:
                tier, bootstraps = tiers[workers]
                print(f"bench-storm: {system}, {workers} workers ({group} per process), "
                      f"{bootstraps} bootstrap nodes ({tier})", file=sys.stderr, flush=True)
                run = run_storm(system, workers, bootstraps, group, args.deadline_secs, log)
                run.update(tier=tier, group=group)
                print(f"  all joined after {run['all_joined_after_secs']}, p50 {run['join_p50_ms']} ms, "
                      f"p99 {run['join_p99_ms']} ms, failed {run['failed']}", file=sys.stderr, flush=True)
                runs.append(run)
    with open("/proc/loadavg") as loadavg:
        load_at_end = " ".join(loadavg.read().split()[:3])
    report = {"started": started, "machine": args.machine, "load_average_at_end": load_at_end,
              "group": args.group, "runs": runs, "comparisons": compare(runs)}
    with open(args.json, "w") as out:
        json.dump(report, out, indent=2)
    if args.svg:
        with open(args.svg, "w") as out:
            out.write(svg_plot(runs, args.group))
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown(report, args.svg_link or args.svg))
    if args.check:
        problems = check(report)
        for problem in problems:
            print(f"bench-storm: FAILED: {problem}", file=sys.stderr)
        if problems:
            sys.exit(1)
        summary = ", ".join(f"{run['system']} {run['workers']}/{run['workers']}" for run in runs)
        print(f"bench-storm: ok, every worker joined ({summary})", file=sys.stderr)


if __name__ == "__main__":
    main()
