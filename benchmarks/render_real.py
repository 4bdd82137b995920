"""Print markdown tables for issue 15's runs (``results/real-*.json`` and the demo-corpus
``results/demo-ratios-*.json``): paired ratios, restore, the writer and durability
sections, the per-stage table and the many-files RSS. The output is pasted (with notes)
into the hand-written "Issue 15" section of RESULTS.md.

    python benchmarks/render_real.py results/real-A.json results/real-B.json ...
"""

from __future__ import annotations

import json
import statistics
import sys


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ratios(sec: dict, corpus: str) -> list[str]:
    out = ["| corpus | A | B | N | pairs | median B/A wall | range | A wall s (median) | "
           "B wall s (median) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in sec["pairs"]:
        r = p["ratios_b_over_a"]
        out.append(f"| {corpus} | `{p['a']}` | `{p['b']}` | {p['sessions']:,} | {p['pairs']} | "
                   f"**{med(r):.2f}** | {min(r):.2f} - {max(r):.2f} | {med(p['walls'][p['a']]):.2f} | "
                   f"{med(p['walls'][p['b']]):.2f} |")
    return out


def restore(sec: dict) -> list[str]:
    names: dict[str, list[dict]] = {}
    for r in sec["runs"]:
        names.setdefault(r["name"], []).append(r)
    ref = med([r["wall_s"] for r in names.get("ours extract", [])])
    out = ["| restore | wall s (median) | archives/s | vs `ours extract` | writer MB/s | all ok |",
           "|---|---|---|---|---|---|"]
    for name, rs in names.items():
        w = med([r["wall_s"] for r in rs])
        mb = [r["writer_mbps"] for r in rs if r.get("writer_mbps")]
        out.append(f"| {name} | {w:.2f} | {sec['n_archives'] / w:,.0f} | {w / ref:.2f}x | "
                   f"{med(mb) if mb else '-'} | {'yes' if all(r['ok'] for r in rs) else 'NO'} |")
    return out


def writer(sec: dict) -> list[str]:
    by: dict[str, list[dict]] = {}
    for r in sec["runs"]:
        by.setdefault(r["name"], []).append(r)
    out = ["| sweep tar.zst w2 | wall s (each run) | median | sessions/s | writer MB/s |",
           "|---|---|---|---|---|"]
    for name, rs in by.items():
        w = [r["wall_s"] for r in rs]
        mb = [r["writer_mbps"] for r in rs if r.get("writer_mbps")]
        out.append(f"| {name} | {', '.join(f'{x:.1f}' for x in w)} | {med(w):.2f} | "
                   f"{sec['sessions'] / med(w):,.0f} | {med(mb) if mb else '-'} |")
    for st in ("syncfs", "fsync"):
        a = [r["wall_s"] for r in by.get(f"ours tar.zst w2 {st}", [])]
        b = [r["wall_s"] for r in by.get(f"ours tar.zst w2 {st} + writer", [])]
        if a and b:
            out.append(f"\nThroughput change with the writer, {st}: "
                       f"{100 * (med(a) / med(b) - 1):+.0f} % (median over median)")
    return out


def durability(sec: dict) -> list[str]:
    by: dict[tuple[str, bool], list[float]] = {}
    for r in sec["runs"]:
        by.setdefault((r["strategy"], r["writer"]), []).append(r["seconds"] * 1000)
    out = [f"| strategy | writer | ms per batch of {sec['batch']} (median) | min - max | "
           f"ms per session |", "|---|---|---|---|---|"]
    for (st, w), xs in sorted(by.items()):
        out.append(f"| {st} | {'on' if w else 'off'} | **{med(xs):.1f}** | {min(xs):.1f} - "
                   f"{max(xs):.1f} | {med(xs) / sec['batch']:.3f} |")
    return out


def stages(sec: dict, label: str) -> list[str]:
    out = [f"{label}: {sec['sessions']:,} sessions, {sec['wall_s']} s under cProfile, "
           f"{sec['cpu_s']} s CPU", "", "| stage | ms per session | % of run |", "|---|---|---|"]
    out += [f"| {r['stage']} | {r['ms_per_session']:.3f} | {r['pct']} |" for r in sec["stages_ms"]]
    return out


def many(sec: dict) -> list[str]:
    out = ["| files in the session | generate s | sweep wall s | archived | worker peak RSS MB |",
           "|---|---|---|---|---|"]
    out += [f"| {p['files']:,} | {p['generate_s']} | {p['wall_s']} | {p['archived']} | "
            f"{p['maxrss_worker_mb']} |" for p in sec["points"]]
    return out


def main(files: list[str]) -> None:
    for f in files:
        with open(f) as fh:
            d = json.load(fh)
        m = d["machine"]
        print(f"\n<!-- {f}: {d['date']}, corpus {d.get('corpus')}, load {m['loadavg_start'][0]:.1f}"
              f" at start, {m.get('loadavg_end', [0])[0]:.1f} at end -->\n")
        if "ratios" in d:
            print("\n".join(ratios(d["ratios"], d.get("corpus", "demo"))), "\n")
        if "restore" in d:
            print("\n".join(restore(d["restore"])), "\n")
        if "writer" in d:
            print("\n".join(writer(d["writer"])), "\n")
        if "durability" in d:
            print("\n".join(durability(d["durability"])), "\n")
        if "manyfiles" in d:
            print("\n".join(many(d["manyfiles"])), "\n")
        for k, label in (("profile", "On ext4 (the shared disk)"), ("profile_tmpfs", "On tmpfs")):
            if k in d:
                print("\n".join(stages(d[k], label)), "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
