"""The promotion rule's error rates by holdout size: docs/lifecycle.md's table, rerunnable.

    .venv/bin/python bench/promotion_rule.py [--draws 2000]

Prints, for each holdout size and for how often the two ensembles disagree on being right, the
share of draws that promote a candidate truly worse by 0.05 balanced accuracy, an equally good
one and one better by 0.03; then a waiting challenger's rates when it is looked at as the holdout
grows to 450 sessions. Synthetic paired predictions with known truth
(``legolas_ml/lifecycle/rule_simulation.py``); the default ``PromotionPolicy`` unless flags say otherwise.
"""

from __future__ import annotations

import argparse
import time

from legolas_ml.lifecycle.promotion import PromotionPolicy
from legolas_ml.lifecycle.rule_simulation import Scenario, promotion_rate, sequential_rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--sizes", default="30,60,100,150,200,300,400,500")
    parser.add_argument("--disagreements", default="0.05,0.10,0.15")
    parser.add_argument("--margin", type=float, default=PromotionPolicy.margin)
    parser.add_argument("--confidence", type=float, default=PromotionPolicy.confidence)
    args = parser.parse_args()
    policy = PromotionPolicy(margin=args.margin, confidence=args.confidence)
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    print(f"policy: margin {policy.margin}, one-sided confidence {policy.confidence} (challenger looks "
          f"{policy.challenger_confidence}, every +{policy.challenger_growth:.0%}), min_holdout {policy.min_holdout}; "
          f"{args.draws} draws per cell; 5 balanced classes, champion accuracy 0.85")
    print("| disagreement | true BA difference | " + " | ".join(f"n={n}" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for d in (float(x) for x in args.disagreements.split(",")):
        for delta in (-0.05, 0.0, 0.03):
            scenario = Scenario(delta, max(d, abs(delta)))
            rates = [promotion_rate(scenario, n, args.draws, policy, seed=n) for n in sizes]
            print(f"| {d:.2f} | {delta:+.2f} | " + " | ".join(f"{r:.1%}" for r in rates) + " |", flush=True)
    print("\nUnbalanced classes (shares 0.52/0.20/0.15/0.10/0.03), the whole difference in one class (recall moved by 5 x delta):")
    print("| falling class (share) | true BA difference | " + " | ".join(f"n={n}" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    shares = (0.52, 0.20, 0.15, 0.10, 0.03)
    for cls in (4, 3, 0):
        for delta in (-0.05, 0.0):
            scenario = Scenario(delta, 0.10, class_shares=shares, drop_class=cls)
            rates = [promotion_rate(scenario, n, args.draws, policy, seed=n + 7) for n in sizes]
            print(f"| {cls} ({shares[cls]:.2f}) | {delta:+.2f} | " + " | ".join(f"{r:.1%}" for r in rates) + " |", flush=True)
    print("\nA waiting challenger, looked at from 30 sessions on each time the holdout grew 25%, up to 450:")
    print("| disagreement | true BA difference | promoted | rejected | still waiting |")
    print("|---|---|---|---|---|")
    for d in (0.05, 0.10):
        for delta in (-0.05, 0.0, 0.03):
            p, r, w = sequential_rates(Scenario(delta, max(d, abs(delta))), 450, max(args.draws // 2, 1), policy)
            print(f"| {d:.2f} | {delta:+.2f} | {p:.1%} | {r:.1%} | {w:.1%} |", flush=True)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
