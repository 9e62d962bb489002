"""One round of simulated reviewers: reviews of documents nobody reviewed yet, answered with the demo
generator's truth, as a JSONL that `legolas import-reviews` reads.

    .venv/bin/python bench/review_round.py --tenant demo --n 60 --out round1.jsonl [--seed 7 --conversations 600]
    .venv/bin/legolas import-reviews --tenant demo round1.jsonl

The generator is re-run with the seed and size the tenant was created with (`make demo`: seed 7,
600 conversations for `demo`) to know each conversation's true class; the store never holds it.
``--order random`` (default) picks unreviewed documents at random; ``--order queue`` takes the
review queue's order (flagged documents, highest priority first), as a reviewer would;
``--order rare-first`` takes documents whose LLM label is the rarest among the human reviews first
(a reviewer asked to fill the classes a retraining lacks).
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from datetime import datetime, timezone

from legolas_ml.core import settings
from legolas_ml.data.demo_data import generate_demo_data
from legolas_ml.data.store import open_tenant_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenant", default="demo")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--conversations", type=int, default=600)
    parser.add_argument("--domain", default="support")
    parser.add_argument("--order", choices=("random", "queue", "rare-first"), default="random")
    parser.add_argument("--round-seed", type=int, default=0, help="which random documents (--order random)")
    args = parser.parse_args()
    truth: dict[str, str] = {}
    generate_demo_data(args.conversations, 0, args.seed, truth=truth, domain=args.domain)
    with open_tenant_store(settings.mongo_uri(), settings.data_dir(), settings.database_name(), args.tenant) as store:
        reviewed = {r["session_id"]: r["label"] for r in store.reviews.find({"tenant": args.tenant}, {"session_id": 1, "label": 1})}
        docs = [d for d in store.classifications.find({"tenant": args.tenant}) if d["session_id"] not in reviewed]
    docs = [d for d in docs if d["session_id"] in truth]
    random.Random(args.round_seed).shuffle(docs)
    if args.order == "queue":
        docs.sort(key=lambda d: (not d.get("needs_review"), -(d.get("review_priority") or 0), d["session_id"]))
    elif args.order == "rare-first":
        seen = Counter(reviewed.values())
        docs.sort(key=lambda d: seen.get(d.get("llm_prediction"), 0))  # stable: random within a class
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with open(args.out, "w") as handle:
        for doc in docs[: args.n]:
            handle.write(json.dumps({"session_id": doc["session_id"], "label": truth[doc["session_id"]], "reviewed_at": now,
                                     "reviewer": "simulated", "notes": "generator truth"}) + "\n")
    print(f"{min(args.n, len(docs))} reviews of {len(docs)} unreviewed documents of tenant {args.tenant} -> {args.out}")


if __name__ == "__main__":
    main()
