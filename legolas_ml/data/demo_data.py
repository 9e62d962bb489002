"""A reproducible, realistic demo tenant: customer-support conversations with noisy LLM labels.

Five imbalanced classes (one rare, ~5%), conversations assembled from class-specific and shared
phrases so that no single keyword separates the classes (billing and cancellation both talk about
subscriptions and charges; technical issues and account access both talk about the app and
logging in). The LLM labels are wrong ~12% of the time, mostly towards the confusable neighbour,
with lower confidence when wrong; some documents are flagged ``needs_review``; the
``classification_method`` values are mixed; a few hundred human reviews work through the flagged
queue and spot-check the rest, so some wrong LLM labels survive into the first training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

CLASS_SHARES = {
    "billing": 0.32,
    "technical_issue": 0.26,
    "shipping": 0.22,
    "account_access": 0.15,
    "cancellation": 0.05,
}
# Which class an LLM mistakes each class for, most of the time.
CONFUSED_WITH = {
    "billing": "cancellation",
    "technical_issue": "account_access",
    "shipping": "billing",
    "account_access": "technical_issue",
    "cancellation": "billing",
}
METHODS = [("llm", 0.62), ("llm_long_text", 0.1), ("LLM", 0.05), ("ml_ensemble", 0.1), ("llm+human", 0.05), ("LLM_ml", 0.03), ("human_review", 0.05)]

_ISSUES = {
    "billing": [
        "I was charged twice for my subscription this month",
        "the invoice shows an amount I don't recognise",
        "my card was billed after I applied the discount code",
        "I need a copy of the receipt for last month's payment",
        "why did the price of my plan go up without notice",
        "the refund you promised has not reached my bank account",
        "there is a charge for an add-on I never ordered",
        "can I change the card used for automatic payments",
        "I was billed in dollars but my account is in euros",
        "the payment failed but the money left my account",
    ],
    "technical_issue": [
        "the app crashes as soon as I open the settings page",
        "the website keeps showing an error when I upload a file",
        "sync stopped working on my phone since the last update",
        "the page loads forever and then times out",
        "notifications are not arriving on my device anymore",
        "the export button does nothing when I click it",
        "the app freezes when I try to log in from the tablet",
        "videos are not playing, I only get a black screen",
        "the search returns no results even for exact names",
        "after the update the app drains my battery very quickly",
    ],
    "shipping": [
        "my parcel has been stuck in transit for a week",
        "the tracking number you sent does not work",
        "the courier says the package was delivered but I have nothing",
        "my order arrived damaged and the box was open",
        "can I change the delivery address for my order",
        "I received the wrong item in the package",
        "the delivery was supposed to arrive yesterday",
        "half of my order is missing from the box",
        "do you ship to my country and how long does it take",
        "the courier left the parcel at the wrong address",
    ],
    "account_access": [
        "I can't log in, it says my password is wrong",
        "I never receive the password reset email",
        "my account got locked after too many attempts",
        "I want to change the email address on my account",
        "the two-factor code is not accepted by the app",
        "someone else may have access to my account",
        "I lost access to the phone number used for verification",
        "my username is not recognised anymore",
        "how do I merge my two accounts into one",
        "the login page says my account does not exist",
    ],
    "cancellation": [
        "I want to cancel my subscription and stop all future charges",
        "please close my account and delete my data",
        "how do I end my plan before the next renewal",
        "I'd like to cancel, the service is too expensive for me",
        "stop the automatic renewal, I don't want to continue",
        "I want to terminate my contract at the end of the month",
        "cancel my membership, I am moving to another provider",
        "I don't use the service anymore, please unsubscribe me",
    ],
}
# Shared phrases that blur the boundaries between neighbouring classes.
_SHARED = {
    "billing": ["it's about my subscription", "I checked my bank statement", "this is the second time"],
    "cancellation": ["it's about my subscription", "I checked my bank statement", "I have been a customer for years"],
    "technical_issue": ["I'm using the app on my phone", "I already tried logging out and in", "it worked last week"],
    "account_access": ["I'm using the app on my phone", "I already tried logging out and in", "it worked last week"],
    "shipping": ["I ordered it last Monday", "I paid for express delivery", "this is the second time"],
}
_OPEN = ["Hi,", "Hello,", "Good morning,", "Hey there,", "Hi team,", ""]
_CLOSE = ["Thanks.", "Can you help?", "Please fix this.", "Thank you in advance.", "This is really frustrating.", ""]
_AGENT = [
    "Agent: I'm sorry to hear that, let me look into it.",
    "Agent: Thanks for reaching out, could you share your order or account number?",
    "Agent: I understand, I'll check what happened.",
    "Agent: Thank you for your patience, I'm reviewing your case now.",
]
_FOLLOW = [
    "Customer: Sure, it's under the same email I'm writing from.",
    "Customer: I already contacted you last week about this.",
    "Customer: Ok, please let me know as soon as possible.",
    "Customer: The number is in my previous message.",
]
_REVIEWERS = ["anna", "marco", "giulia", "luca", "sara"]


_LATER = [
    "Agent: Could you tell me when this started and what you have tried so far?",
    "Customer: It started a few days ago, I tried again this morning and nothing changed.",
    "Agent: Thanks, I have escalated this to the team that handles these cases.",
    "Customer: How long will that take? I need this sorted before the weekend.",
    "Agent: Usually one or two working days; you will get an email with the updates.",
    "Customer: Ok, but please make sure someone actually follows up this time.",
]


# A second tenant with its own classes (``legolas demo-data --domain insurance``): an insurer's
# claims desk, three classes, so one deployment shows tenants with different class sets.
INSURANCE_SHARES = {"claim_status": 0.45, "policy_change": 0.35, "complaint": 0.20}
INSURANCE_CONFUSED_WITH = {"claim_status": "complaint", "policy_change": "claim_status", "complaint": "claim_status"}
_INSURANCE_ISSUES = {
    "claim_status": [
        "I filed a claim for the water damage three weeks ago and heard nothing",
        "what is the status of my car accident claim",
        "the adjuster was supposed to call me back about my claim",
        "has my claim been approved, the repair shop is waiting",
        "I sent the photos of the damage, is anything else needed for the claim",
        "when will the claim payment reach my account",
        "my claim number does not show up on the website",
        "the assessor visited last week, what happens next with the claim",
    ],
    "policy_change": [
        "I want to add my partner as a driver on my car policy",
        "please update the address on my home insurance, we moved",
        "can I increase the coverage of my contents insurance",
        "I would like to switch my policy to monthly payments",
        "remove the old car from my policy, I sold it",
        "I need to change the beneficiary on my life insurance",
        "can I add flood cover to my existing home policy",
        "my new car needs to be insured from Monday, please update the policy",
    ],
    "complaint": [
        "this is unacceptable, nobody answers the claims line",
        "I am very unhappy with how my claim was handled",
        "your adjuster was rude and dismissed the damage",
        "I want to file a formal complaint about the delay",
        "I have been transferred five times and nobody helps",
        "the settlement offer is insulting compared to the damage",
        "I was promised a call back three times and it never came",
        "I am considering taking this to the ombudsman",
    ],
}
_INSURANCE_SHARED = {
    "claim_status": ["it's about my claim", "I have my policy number ready", "it has been weeks"],
    "complaint": ["it's about my claim", "I have been a customer for years", "it has been weeks"],
    "policy_change": ["I have my policy number ready", "the renewal is next month", "I checked the website first"],
}


@dataclass(frozen=True)
class DemoDomain:
    """The classes of one demo tenant, how often each occurs, which one an LLM confuses it with, and its phrases."""

    shares: dict[str, float]
    confused_with: dict[str, str]
    issues: dict[str, list[str]]
    shared: dict[str, list[str]]


#: ``legolas demo-data --domain NAME``: ``support`` (the demo tenant, 5 classes) or ``insurance`` (3 classes).
DOMAINS = {
    "support": DemoDomain(CLASS_SHARES, CONFUSED_WITH, _ISSUES, _SHARED),
    "insurance": DemoDomain(INSURANCE_SHARES, INSURANCE_CONFUSED_WITH, _INSURANCE_ISSUES, _INSURANCE_SHARED),
}


def _conversation(rng: random.Random, label: str, extra_turns: float = 0.0, domain: DemoDomain | None = None) -> str:
    domain = domain or DOMAINS["support"]
    issue = rng.choice(domain.issues[label])
    extras = rng.sample(domain.shared[label], k=rng.randint(0, 2))
    opening = " ".join(p for p in [rng.choice(_OPEN), issue + ".", *[e + "." for e in extras], rng.choice(_CLOSE)] if p)
    turns = [f"Customer: {opening}"]
    if rng.random() < 0.7:
        turns += [rng.choice(_AGENT), rng.choice(_FOLLOW)]
    if rng.random() < 0.3:
        # A second concern, often from the confusable class: the label follows the main request.
        other = domain.confused_with[label] if rng.random() < 0.6 else label
        turns.append(f"Customer: Also, {rng.choice(domain.issues[other])}.")
    # Long conversations: a geometric number of extra exchanges (mean `extra_turns`) gives the long tail.
    while extra_turns > 0 and rng.random() < extra_turns / (1 + extra_turns):
        turns.append(rng.choice(_LATER))
    return "\n".join(turns)


def _weighted(rng: random.Random, pairs) -> str:
    names, weights = zip(*pairs)
    return rng.choices(names, weights=weights, k=1)[0]


def generate_demo_data(
    n_conversations: int = 1500,
    n_reviews: int = 300,
    seed: int = 7,
    start: datetime | None = None,
    extra_turns: float = 0.0,
    truth: dict[str, str] | None = None,
    domain: str = "support",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Classification documents and human review documents (without the ``tenant`` field).

    Args:
        n_conversations: number of classification documents.
        n_reviews: number of human reviews, drawn mostly among wrong or flagged LLM labels.
        seed: the same seed gives the same data.
        start: timestamp of the first document (default 2026-01-05 09:00).
        extra_turns: mean number of extra agent/customer turns per conversation (longer, more
            variable texts, for benchmarks; the demo keeps 0 so it trains in minutes).
        truth: filled with ``session_id -> true class`` when given (benchmarks measure the label
            audit against it; the store never sees it).
        domain: the tenant's classes and phrases, a key of ``DOMAINS``.

    Returns:
        ``(classifications, reviews)``.
    """
    if n_conversations < 50:
        raise ValueError(f"n_conversations must be >= 50 to hold every class, got {n_conversations}")
    if not 0 <= n_reviews <= n_conversations:
        raise ValueError(f"n_reviews must be in 0..n_conversations ({n_conversations}), got {n_reviews}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    spec = DOMAINS[domain]
    rng = random.Random(seed)
    start = start or datetime(2026, 1, 5, 9, 0)
    labels = list(spec.shares)
    classifications = []
    truth = {} if truth is None else truth
    for i in range(n_conversations):
        label = rng.choices(labels, weights=list(spec.shares.values()), k=1)[0]
        session_id = f"conv-{i:06d}"
        truth[session_id] = label
        wrong = rng.random() < 0.12
        if wrong:
            predicted = spec.confused_with[label] if rng.random() < 0.7 else rng.choice([c for c in labels if c != label])
            confidence = round(rng.uniform(0.40, 0.85), 3)
        else:
            predicted = label
            confidence = round(min(0.99, rng.uniform(0.70, 1.0)), 3)
        needs_review = confidence < 0.55 or rng.random() < 0.04
        classifications.append(
            {
                "session_id": session_id,
                "text": _conversation(rng, label, extra_turns, spec),
                "llm_prediction": predicted,
                "llm_confidence": confidence,
                "classification_method": _weighted(rng, METHODS),
                "needs_review": needs_review,
                "created_at": start + timedelta(minutes=7 * i),
            }
        )

    # Reviewers work through the flagged queue first, then spot-check at random: wrong labels the
    # LLM was confident about mostly stay uncorrected, as in real logs.
    def priority(doc):
        return (0 if doc["needs_review"] else 1, rng.random())

    reviewed = sorted(classifications, key=priority)[:n_reviews]
    reviews = []
    review_start = start + timedelta(minutes=7 * n_conversations)
    for j, doc in enumerate(sorted(reviewed, key=lambda d: d["session_id"])):
        reviews.append(
            {
                "session_id": doc["session_id"],
                "text": doc["text"],
                "label": truth[doc["session_id"]],
                "reviewer": rng.choice(_REVIEWERS),
                "confidence": round(rng.uniform(0.8, 1.0), 2),
                "notes": "corrected LLM label" if doc["llm_prediction"] != truth[doc["session_id"]] else "confirmed",
                "reviewed_at": review_start + timedelta(minutes=3 * j),
            }
        )
    # Real logs are messy: a few records the quality gate must quarantine or supersede.
    last = review_start + timedelta(minutes=3 * len(reviews))
    if reviews:
        first = reviews[0]
        reviews.append({**first, "notes": "second opinion", "reviewed_at": last + timedelta(minutes=1)})
        reviews.append({**reviews[-1], "label": "  ", "reviewed_at": last + timedelta(minutes=2)})
    reviews.append({"session_id": "conv-missing", "label": labels[0], "reviewer": "anna", "reviewed_at": last})
    for k in range(3):
        classifications.append(
            {
                "session_id": f"conv-empty-{k}",
                "text": " " * k,
                "llm_prediction": labels[0],
                "llm_confidence": 0.9,
                "classification_method": "llm",
                "needs_review": False,
                "created_at": last,
            }
        )
    return classifications, reviews

