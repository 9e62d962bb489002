"""`legolas promote`, `legolas rollback`, `legolas versions`: the model lifecycle from the command line."""

from __future__ import annotations

import argparse

from legolas_ml.core import settings
from legolas_ml.cli.conventions import CommandError, add_json_option, print_json
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.core.identity import validate_tenant
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry, default_actor
from legolas_ml.core.storage import open_store


def tenant_argument(value: str) -> str:
    """``validate_tenant`` for argparse: its message (allowed characters, value received) reaches the user."""
    try:
        return validate_tenant(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def registry_for(tenant: str) -> ModelRegistry:
    """The tenant's registry as the CLI sees it: working files under ``$LEGOLAS_HOME/output``,
    published under ``LEGOLAS_ARTIFACTS`` (default: that directory itself)."""
    output = settings.output_dir()
    return ModelRegistry(TenantArtifacts(output, tenant, store=open_store(output, settings.artifacts_root() or None)))


def _registry(args) -> ModelRegistry:
    return registry_for(args.tenant)


def cmd_promote(args) -> int:
    record = _registry(args).promote(args.version, actor=default_actor("legolas promote"), reason=args.reason)
    print(f"tenant {args.tenant}: {record['version']} is the champion (was {record['previous_champion'] or 'none'})")
    return 0


def cmd_rollback(args) -> int:
    try:
        record = _registry(args).rollback(actor=default_actor("legolas rollback"), reason=args.reason)
    except ValueError as exc:
        # No champion, or the first one: the state of the registry, not a mistake in the command (exit 1).
        raise CommandError(str(exc)) from None
    print(f"tenant {args.tenant}: rolled back to {record['version']} (from {record['rolled_back_from']})")
    return 0


def holdout_balanced_accuracies(history: list[dict]) -> dict[str, float]:
    """Per version, its balanced accuracy on the human holdout, the latest recorded at a decision.

    Decisions record it as ``holdout_balanced_accuracy``, and the champion's as
    ``champion_holdout_balanced_accuracy`` of each comparison; older records have it only in the comparison
    with a champion (none for a first training). A version without a recorded value is absent.

    Args:
        history: the registry's decision records, oldest first (``ModelRegistry.history()``).
    """
    found: dict[str, float] = {}
    for record in history:
        # The champion is scored on the same holdout at every comparison: its latest score counts too.
        measured = record.get("champion_holdout_balanced_accuracy")
        if measured is not None and record.get("previous_champion"):
            found[record["previous_champion"]] = measured
        value = record.get("holdout_balanced_accuracy")
        if value is None:
            value = (((record.get("decision") or {}).get("comparison")) or {}).get("candidate_balanced_accuracy")
        if value is not None:
            found[record.get("version")] = value
    return found


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _state(version: str, champion: str | None, stack: list[str], challenger: dict | None, record: dict | None) -> str:
    """champion; challenger; earlier (a champion a rollback can return to); retired (served once, out of
    the stack); else its last decision (rejected, kept) or candidate (never decided)."""
    if version == champion:
        return "champion"
    if challenger is not None and challenger["version"] == version:
        return "challenger"
    if version in stack:
        return "earlier"
    if record is not None and record["action"] in ("promoted", "rolled_back"):
        return "retired"
    return record["action"] if record else "candidate"


def versions_report(registry: ModelRegistry) -> dict:
    """Every version of a tenant with its state and scores, the champion stack and the challenger.

    Returns:
        ``{"tenant", "champion", "champion_problem", "versions": [...], "champion_stack", "challenger"}``;
        what ``legolas versions`` prints, and ``--json`` as is.
    """
    try:
        champion, problem = registry.champion_version(), None
    except ChampionUnavailableError as exc:
        champion, problem = None, str(exc)
    history = registry.history()
    decisions = {record["version"]: record for record in history}
    stack, challenger = registry.champion_stack(), registry.challenger()
    holdout = holdout_balanced_accuracies(history)
    rows = []
    for version in registry.versions():
        manifest = registry.manifest(version)
        record = decisions.get(version)
        rows.append({
            "version": version,
            "state": _state(version, champion, stack, challenger, record),
            # Human labels only: on LLM-labelled test sessions the score is agreement with the LLM.
            "human_test_balanced_accuracy": (manifest.get("test_metrics_human") or {}).get("balanced_accuracy"),
            "holdout_balanced_accuracy": holdout.get(version),
            "created_at": manifest.get("created_at"),
            "decision": {key: record.get(key) for key in ("action", "at", "actor", "reason")} if record else None,
        })
    waiting = None
    if challenger is not None:
        record = challenger["record"]
        waiting = {"version": challenger["version"], "since": challenger["since"], "holdout_n": challenger.get("holdout_n"),
                   "next_look_at": record.get("next_look_at"), "reason": record.get("reason")}
    return {"tenant": registry.artifacts.tenant, "champion": champion, "champion_problem": problem, "versions": rows,
            "champion_stack": stack, "challenger": waiting}


def cmd_versions(args) -> int:
    report = versions_report(_registry(args))
    if args.json:
        return print_json(report)
    if report["champion_problem"]:
        print(f"warning: {report['champion_problem']}")
    print(f"{'version':<18} {'state':<10} {'human test BA':>13} {'holdout BA':>10}  {'created':<20} decision")
    for row in report["versions"]:
        decision = row["decision"]
        reason = f"{decision['at']} by {decision['actor']}: {decision['reason']}" if decision else "-"
        print(
            f"{row['version']:<18} {row['state']:<10} {_number(row['human_test_balanced_accuracy']):>13} "
            f"{_number(row['holdout_balanced_accuracy']):>10}  {row['created_at'] or '-':<20} {reason}"
        )
    stack, waiting = report["champion_stack"], report["challenger"]
    print(f"champions, oldest first (rollback walks back): {' -> '.join(stack) if stack else 'none'}")
    if waiting is not None:
        print(f"challenger: {waiting['version']} since {waiting['since']}, {waiting['holdout_n']} holdout sessions, "
              f"next look at {waiting['next_look_at'] or '-'}: {waiting['reason']}")
    return 0


def add_commands(sub, default_tenant: str) -> list[argparse.ArgumentParser]:
    """Register the lifecycle subcommands on the `legolas` parser; return them (they all take --tenant)."""
    promote = sub.add_parser("promote", help="make a version the champion (an operator's decision, recorded)")
    promote.add_argument("--version", required=True, help="a version listed by `legolas versions`")
    promote.add_argument("--reason", default="explicit promotion by an operator")
    promote.set_defaults(func=cmd_promote)
    rollback = sub.add_parser("rollback", help="put the previous champion back in service")
    rollback.add_argument("--reason", default="explicit rollback by an operator")
    rollback.set_defaults(func=cmd_rollback)
    versions = sub.add_parser("versions", help="every ensemble version of a tenant, the champion and the decisions")
    versions.set_defaults(func=cmd_versions)
    add_json_option(versions)
    parsers = [promote, rollback, versions]
    for p in parsers:
        p.add_argument("--tenant", type=tenant_argument, default=default_tenant, help="default: $LEGOLAS_TENANT or 'demo'")
    return parsers
