"""`hybrid eval compare A.jsonl B.jsonl [--json]`: two traces of the same seeds, episode by episode.

Closed-loop results are deterministic on one machine at one thread count, and move by up to a tenth between
machines, so a change is judged against a run made beside it, seed by seed: per agent and family, the success
of each, and the seeds only one of them solved (with how the other ended). Those counts are what a paired test
reads; two success rates alone hide how many episodes changed hands. ``p_value`` is McNemar's exact test on
them (two-sided): how likely at least so lopsided a split of the changed seeds is when neither run is better.
On the tabletop any change of setting reshuffles about a fifth of 50 episodes, so 7 won against 3 lost
(p = 0.34) is no evidence; 10 against 1 (p = 0.012) is.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def episode_ends(path: str | Path) -> dict[tuple[str, str, int], dict]:
    """(agent, family, seed) -> the trace's "end" event; ValueError naming the line that is not a trace event."""
    ends = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                event = json.loads(line)
                if event.get("event") == "end":
                    ends[(event["agent"], event["family"], int(event["seed"]))] = event
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise ValueError(f"{path}:{n}: not a `hybrid eval ... trace=FILE` event ({err!r})") from None
    return ends


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of ``only_a`` against ``only_b`` discordant pairs (a sign test on them)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def compare(a: dict, b: dict) -> list[dict]:
    """One row per (agent, family) both traces hold: success of each over their common seeds, and the seeds
    only A or only B solved."""
    rows = []
    for agent, family in sorted({k[:2] for k in a} & {k[:2] for k in b}):
        seeds = sorted(k[2] for k in a if k[:2] == (agent, family) and k in b)
        ea, eb = ({s: t[(agent, family, s)] for s in seeds} for t in (a, b))
        only_a = {s: eb[s]["status"] for s in seeds if ea[s]["success"] and not eb[s]["success"]}
        only_b = {s: ea[s]["status"] for s in seeds if eb[s]["success"] and not ea[s]["success"]}
        rows.append({
            "agent": agent, "family": family, "episodes": len(seeds),
            "success_a": round(sum(ea[s]["success"] for s in seeds) / len(seeds), 3),
            "success_b": round(sum(eb[s]["success"] for s in seeds) / len(seeds), 3),
            "only_a": only_a, "only_b": only_b,
            "p_value": round(mcnemar_exact(len(only_a), len(only_b)), 4),
        })
    return rows


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="hybrid eval compare", description=__doc__.splitlines()[0])
    p.add_argument("a", help="trace of the reference run (`hybrid eval ... trace=FILE`)")
    p.add_argument("b", help="trace of the run to compare with it")
    p.add_argument("--json", action="store_true", help="one JSON line per agent and family")
    args = p.parse_args(argv)
    try:
        rows = compare(episode_ends(args.a), episode_ends(args.b))
    except (OSError, ValueError) as err:
        print(f"hybrid eval compare: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"no agent and family with common seeds in {args.a} and {args.b}", file=sys.stderr)
        return 1
    for r in rows:
        if args.json:
            print(json.dumps(r))
        else:
            print(f"{r['agent']}/{r['family']}: {r['episodes']} seeds, A {r['success_a']:.2f}, B {r['success_b']:.2f}; "
                  f"only A solved {len(r['only_a'])} (B: {r['only_a']}), only B {len(r['only_b'])} (A: {r['only_b']}); "
                  f"McNemar p = {r['p_value']:.3f}")
    return 0
