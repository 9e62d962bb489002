"""The ``legolas`` command: demo data, review import and per-tenant status.

Training itself runs through Dagster: ``legolas train --tenant T`` starts the tenant's job (as
``dagster job execute`` would, see ``legolas_ml.cli.train``); the other commands manage
the data the assets read and the models they write. Exit codes and ``--json``: ``legolas_ml.cli.conventions``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from legolas_ml.core import settings
from legolas_ml.cli.conventions import CommandError, UsageError, add_json_option, exit_code_for, print_json
from legolas_ml.cli import tenants as tenant_commands
from legolas_ml.cli import lifecycle as lifecycle_commands
from legolas_ml.cli.lifecycle import holdout_balanced_accuracies, tenant_argument
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.data.demo_data import DOMAINS, generate_demo_data
from legolas_ml.data.conversation_import import FORMATS as CONVERSATION_FORMATS
from legolas_ml.data.review_import import IMPORT_FORMATS, import_reviews
from legolas_ml.core.choices import RANDOM_SAMPLE
from legolas_ml.review.queue import FORMATS, queue_size, review_queue, write_queue
from legolas_ml.data.store import StoreUnavailableError, list_tenants, open_tenant_store, scrub
from legolas_ml.core.identity import validate_database
from legolas_ml.data.store_integrity import StoreIntegrityError
from legolas_ml.data.store_lock import StoreBusyError
from legolas_ml.cli import train as train_command
from legolas_ml.training.config import legolas_version


def _store(args, writer: bool = False, verify: bool = True):
    """The tenant's store; writing commands hold the embedded store's writer lock from the start.

    A command that writes the first documents of a new tenant refuses a name whose key name another
    tenant already has (``acme-eu`` beside ``acme_eu``), before anything is written.
    """
    if writer:
        from legolas_ml.data.tenants import open_catalogue

        with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
            catalogue.check_new_name(args.tenant)
    return open_tenant_store(
        settings.mongo_uri(), settings.data_dir(), settings.database_name(), args.tenant, writer=writer, verify=verify
    )


def cmd_demo_data(args) -> int:
    classifications, reviews = generate_demo_data(args.conversations, args.reviews, args.seed, domain=args.domain)
    with _store(args, writer=True) as store:
        existing = store.counts()
        if existing["classifications"] and not args.reset:
            print(
                f"tenant {args.tenant!r} already has {existing['classifications']} classifications and "
                f"{existing['reviews']} reviews; nothing written (use --reset to replace them)"
            )
            return 0
        if args.reset:
            store.delete_tenant_documents()
        store.insert_classifications(classifications)
        inserted = sum(store.insert_review(r) for r in reviews)
    print(f"tenant {args.tenant!r}: wrote {len(classifications)} classifications and {inserted} human reviews")
    return 0


def cmd_import_reviews(args) -> int:
    with _store(args, writer=True) as store:
        report = import_reviews(args.file, store, fmt=args.format)
    for line_no, reason in report.rejected:
        print(f"{args.file}:{line_no}: rejected: {reason}", file=sys.stderr)
    if report.rejected_count > len(report.rejected):
        print(f"... and {report.rejected_count - len(report.rejected)} more rejected lines", file=sys.stderr)
    print(
        f"{args.file}: {report.lines} lines, {report.imported} reviews imported, "
        f"{report.duplicates} already present, {report.unlabelled} left unlabelled, {report.rejected_count} rejected"
    )
    return 0 if report.ok else 1


def cmd_import_conversations(args) -> int:
    """Import the tenant's own conversations; the field map comes from --map, else the tenant setting."""
    from legolas_ml.data.conversation_import import import_conversations, resolve_field_map
    from legolas_ml.data.tenants import open_catalogue

    with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
        tenant = catalogue.get(args.tenant)
    field_map, source = resolve_field_map(args.map, tenant.settings.field_map if tenant else None)
    with _store(args, writer=not args.dry_run) as store:
        report = import_conversations(args.file, store, field_map, fmt=args.format, dry_run=args.dry_run)
    for line_no, reason in report.rejected:
        print(f"{args.file}:{line_no}: rejected: {reason}", file=sys.stderr)
    if report.rejected_count > len(report.rejected):
        print(f"... and {report.rejected_count - len(report.rejected)} more rejected lines", file=sys.stderr)
    would = " (dry run: nothing written)" if args.dry_run else ""
    print(
        f"{args.file}: {report.lines} lines, {report.imported} new conversations, {report.updated} updated, "
        f"{report.duplicates} already present, {report.rejected_count} rejected; field map from {source}{would}"
    )
    return 0 if report.ok else 1


def cmd_review_queue(args) -> int:
    """Export the review queue, highest priority first, in the format `import-reviews` reads back."""
    if args.json and args.output == "-":
        raise UsageError("--json prints the queue's summary on standard output, so the queue needs --output FILE, got --output -")
    with _store(args) as store:
        records = review_queue(store, args.limit)
    if args.output == "-":
        n = write_queue(records, sys.stdout, args.format)
    else:
        from legolas_ml.core.atomic_io import atomic_write

        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                write_queue(records, handle, args.format)

        atomic_write(Path(args.output), write)
        n = len(records)
    where = "" if args.output == "-" else f" to {args.output}"
    sampled = sum(1 for r in records if r["review_reason"] == [RANDOM_SAMPLE])
    if args.json:
        print_json({"tenant": args.tenant, "documents": n, "random_samples": sampled, "output": args.output, "format": args.format})
    print(
        f"tenant {args.tenant!r}: {n} documents in the review queue{where} ({sampled} of them random samples, "
        f"review_reason 'random_sample', spread through it: review them like the others); fill in 'label' and run "
        f"`legolas import-reviews <file> --tenant {args.tenant}`",
        file=sys.stderr,
    )
    return 0


def _age(created_at: str | None) -> str:
    """``2026-12-01T10:00:00Z`` -> ``"3h"`` / ``"2d"``: how long the model has been in service."""
    from datetime import datetime, timezone

    if not created_at:
        return "-"
    try:
        then = datetime.strptime(created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "-"
    hours = max((datetime.now(timezone.utc) - then).total_seconds(), 0) / 3600
    return f"{hours * 60:.0f}m" if hours < 1 else f"{hours:.0f}h" if hours < 48 else f"{hours / 24:.0f}d"


def status_report(args) -> dict:
    """Every tenant's numbers and champion as ``legolas status`` shows them (``--json`` prints this).

    Returns:
        ``{"tenants": [...], "removed": [...], "refused": [...]}``: one entry per active tenant (see
        ``_tenant_status``), the removed tenants' names and why the refused ones were refused.
    """
    from legolas_ml.data.tenants import open_catalogue

    with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
        found = catalogue.discover()
    tenants = []
    for tenant in found.tenants:
        args.tenant = tenant.name
        tenants.append(_tenant_status(args, tenant))
    return {"tenants": tenants, "removed": list(found.removed), "refused": list(found.refused)}


def _tenant_status(args, tenant) -> dict:
    """One tenant's row: documents, reviews, waiting reviews, queue, and its champion (``None`` if none)."""
    registry = lifecycle_commands.registry_for(tenant.name)
    entry: dict = {"tenant": tenant.name, "n_folds": None,
                   "champion": None, "champion_problem": None, "store_problem": None}
    try:
        manifest = registry.champion()
    except ChampionUnavailableError as exc:
        manifest, entry["champion_problem"] = None, str(exc)
    # As the sensor counts: new since the last recorded training (a waiting challenger's included),
    # and not yet learned by the model in service (read by rejected candidates or the challenger too).
    trained, learned = registry.trained_reviews(), registry.champion_reviews()
    try:
        with _store(args) as store:
            counts = store.counts()
            waiting = store.count_reviews_after(trained.as_tuple() if trained else None)
            unlearned = store.count_reviews_after(learned.as_tuple()) if learned else counts["reviews"]
            queued = queue_size(store)
    except (StoreBusyError, StoreIntegrityError) as exc:  # one tenant's damaged documents: its row says so
        entry["store_problem"] = scrub(str(exc), settings.mongo_uri())
    else:
        newest = counts["newest_review"].isoformat(timespec="seconds") if counts["newest_review"] else None
        entry.update(documents=counts["classifications"], reviews=counts["reviews"], waiting=waiting, unlearned=unlearned,
                     queue=queued, newest_review=newest)
    manifest = manifest or {}
    # K of the model in service as trained (not what the shell's LEGOLAS_PRESET says now); with none, the next training's.
    entry["n_folds"] = _trained_k(manifest, tenant.settings)
    # Human labels only: on LLM-labelled test sessions the score is agreement with the LLM (None: old manifest).
    entry["human_test_balanced_accuracy"] = (manifest.get("test_metrics_human") or {}).get("balanced_accuracy")
    entry["holdout_balanced_accuracy"] = holdout_balanced_accuracies(registry.history()).get(manifest.get("version"))
    if manifest:
        entry["champion"] = _champion_status(registry, manifest)
    return entry


def _champion_status(registry: ModelRegistry, manifest: dict) -> dict:
    """The champion in service: its ensemble, test scores, last decision, challenger and files."""
    last = registry.history()[-1] if registry.history() else None
    challenger = registry.challenger()
    waiting = None
    if challenger is not None:
        record = challenger["record"]
        waiting = {
            "version": challenger["version"], "since": challenger["since"], "holdout_n": challenger.get("holdout_n"),
            "next_look_at": record.get("next_look_at"),
            "sessions_to_decide": ((record.get("decision") or {}).get("promotion") or {}).get("sessions_to_decide"),
        }
    report = registry.latest_report(manifest["version"])
    return {
        "version": manifest["version"], "folds": len(manifest["checkpoints"]), "mode": manifest.get("mode"),
        "created_at": manifest.get("created_at"), "in_service_since": _promoted_at(registry, manifest),
        "labels": manifest.get("labels") or [],
        **{key: manifest.get(key) for key in ("test_metrics", "test_metrics_human", "llm_agreement")},
        "last_decision": {key: last.get(key) for key in ("action", "version", "at", "reason")} if last else None,
        "challenger": waiting,
        "earlier_champions": registry.champion_stack()[:-1],
        "manifest": str(registry.manifest_path(manifest["version"])),
        "folds_dir": str(Path(manifest["checkpoints"][0]).parent),
        "report": str(report) if report is not None else None,
        "decisions": registry.decisions_location,
        "training_config": manifest.get("training_config"),
    }


def _trained_with(champion: dict) -> str:
    """One line: the preset and the values that decide a training, and which of them did not come from the preset."""
    recorded = champion.get("training_config")
    if not recorded:
        return "- (a version from before the configuration was recorded)"
    config, sources = recorded["config"], recorded.get("sources", {})
    shown = ("n_folds", "epochs", "max_length", "lr", "loss", "batch_size", "freeze_layers", "model_name", "precision")
    values = ", ".join(f"{name} {config[name]}" for name in shown if name in config)
    changed = sorted(
        f"{name} ({layer})" for name, layer in sources.items() if layer in ("environment", "run_config", "tenant") and name in config
    )
    return f"preset {recorded.get('preset')}: {values}" + (f"; set by {', '.join(changed)}" if changed else "")


def _trained_k(manifest: dict, own) -> int:
    """K of the model in service as it was trained; with none yet, the K the tenant's next training resolves to."""
    trained = ((manifest.get("training_config") or {}).get("config") or {}).get("n_folds")
    if trained is None and manifest.get("checkpoints"):
        trained = len(manifest["checkpoints"])  # versions from before the config was recorded: one checkpoint per fold
    if trained is not None:
        return trained
    from legolas_ml.data.tenants import fold_layout

    return fold_layout(own, settings.preset())["n_folds"]


def cmd_status(args) -> int:
    """Every tenant of the deployment: documents, reviews, waiting reviews, queue, model in service."""
    report = status_report(args)
    if args.json:
        return print_json(report)
    if not report["tenants"]:
        removed = f" ({len(report['removed'])} removed: `legolas tenants list`)" if report["removed"] else " (run: legolas demo-data)"
        print(f"no active tenant{removed}")
        for problem in report["refused"]:
            print(f"refused: {problem}")
        return 0
    print(
        f"{'tenant':<16} {'K':>3} {'documents':>10} {'reviews':>8} {'waiting':>8} {'unlearned':>9} {'queue':>6}  {'newest review':<20} "
        f"{'champion':<18} {'human test BA':>13} {'holdout BA':>10} {'age':>5}"
    )
    for row in report["tenants"]:
        if row["store_problem"]:
            print(f"{row['tenant']:<16} store problem: {row['store_problem']}")
            continue
        champion = row["champion"] or {}
        label = f"DAMAGED: {row['champion_problem']}" if row["champion_problem"] else champion.get("version", "none")
        print(
            f"{row['tenant']:<16} {row['n_folds']:>3} {row['documents']:>10} {row['reviews']:>8} {row['waiting']:>8} "
            f"{row['unlearned']:>9} {row['queue']:>6}  {row['newest_review'] or '-':<20} {label:<18} "
            f"{_number(row['human_test_balanced_accuracy']):>13} {_number(row['holdout_balanced_accuracy']):>10} "
            f"{_age(champion.get('in_service_since')):>5}"
        )
    for problem in report["refused"]:
        print(f"refused: {problem}")
    for row in report["tenants"]:
        _print_champion(row["tenant"], row["champion"])
    return 0


def _print_champion(tenant: str, champion: dict | None) -> None:
    if champion is None:
        return
    print(
        f"\n{tenant}: champion {champion['version']}, ensemble of {champion['folds']} folds "
        f"({champion['mode']} training, {champion['created_at']}), classes {', '.join(champion['labels']) or '-'}"
    )
    print(f"  test:      {_test_scores(champion)}")
    print(f"  trained:   {_trained_with(champion)}")
    last = champion["last_decision"]
    if last:
        print(f"  last decision: {last['action']} {last['version']} at {last['at']}: {last['reason']}")
    waiting = champion["challenger"]
    if waiting is not None:
        print(
            f"  challenger: {waiting['version']} waits since {waiting['since']}: compared on {waiting['holdout_n']} "
            f"holdout sessions, looked at again at {waiting['next_look_at'] or '-'}"
            + (f" (about {waiting['sessions_to_decide']} expected to decide)" if waiting["sessions_to_decide"] else "")
        )
    if champion["earlier_champions"]:
        print(f"  earlier champions (rollback walks back): {' <- '.join(reversed(champion['earlier_champions']))}")
    print(f"  manifest:  {champion['manifest']}")
    print(f"  folds:     {champion['folds_dir']}")
    if champion["report"] is not None:
        print(f"  report:    {champion['report']}")
    print(f"  decisions: {champion['decisions']} (`legolas versions --tenant {tenant}`)")


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _promoted_at(registry: ModelRegistry, manifest: dict) -> str | None:
    """When the champion went into service (the pointer's ``since``), else when it was created."""
    try:
        since = (registry.pointer() or {}).get("since")
    except (OSError, ValueError, AttributeError):
        since = None
    return _as_zulu(since) or manifest.get("created_at")


def _as_zulu(at: str | None) -> str | None:
    from datetime import datetime, timezone

    if not at:
        return None
    try:
        moment = datetime.fromisoformat(at.replace("Z", "+00:00"))
    except ValueError:
        return None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _test_scores(manifest: dict) -> str:
    """The champion's test scores in words: human labels, agreement with the LLM, both together."""
    mixed = manifest.get("test_metrics") or {}
    parts = []
    human, agreement = manifest.get("test_metrics_human"), manifest.get("llm_agreement")
    if human is not None:
        parts.append(f"balanced accuracy {_number(human.get('balanced_accuracy'))} on {human.get('n', 0)} human-labelled sessions")
    if agreement is not None:
        parts.append(
            f"agreement with LLM labels {_number(agreement.get('balanced_accuracy'))} (balanced) on {agreement.get('n', 0)} sessions"
        )
    parts.append(f"mixed (both) {_number(mixed.get('balanced_accuracy'))} on {mixed.get('n', '-')} sessions")
    return "; ".join(parts)


def cmd_repair_store(args) -> int:
    """Remove the extra copies that break a unique index, tenant by tenant (one copy of each is kept)."""
    from legolas_ml.data.store import UNIQUE_INDEXES, connect
    from legolas_ml.data.store_integrity import remove_duplicates

    tenants = [args.tenant]
    if args.tenant is None:
        from legolas_ml.data.tenants import open_catalogue

        with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
            found = catalogue.discover()
        # Every valid tenant name in the store, removed ones too: they are repaired, never skipped.
        tenants = sorted(set(found.names()) | set(found.removed) | set(found.held_back))
        for problem in found.refused:
            print(f"refused: {problem}")
    backup_dir = settings.home_dir() / "store-repairs"
    for tenant in tenants:
        args.tenant = tenant
        with _store(args, writer=True, verify=False) as store:
            result = remove_duplicates(store, UNIQUE_INDEXES, backup_dir)
            store.check_unique()
        removed = ", ".join(f"{n} {name}" for name, n in result["removed"].items())
        saved = f"; removed copies saved to {result['backup']}" if result["backup"] else ""
        print(f"tenant {tenant!r}: removed {removed} duplicate documents{saved}")
    if not tenants:
        print("no tenants in the store: nothing to repair")
    return 0


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legolas", description=__doc__.splitlines()[0], epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"legolas {legolas_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="fill the store with a reproducible demo tenant")
    demo.add_argument("--conversations", type=int, default=1500)
    demo.add_argument("--reviews", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--reset", action="store_true", help="replace the tenant's existing documents")
    demo.add_argument("--domain", choices=sorted(DOMAINS), default="support", help="the tenant's classes: support (5) or insurance (3)")
    demo.set_defaults(func=cmd_demo_data)
    imp = sub.add_parser("import-reviews", help="import human reviews from a JSONL or CSV file",
                         description="Import human reviews from a JSONL or CSV file (the formats `legolas review-queue` writes).")
    imp.add_argument("file", help="a .jsonl or .csv file of reviews (session_id, label, reviewed_at)")
    imp.add_argument("--format", choices=IMPORT_FORMATS, default="auto", help="default: csv for *.csv files, else jsonl")
    imp.set_defaults(func=cmd_import_reviews)
    conv = sub.add_parser("import-conversations", help="import your own conversations (JSONL, CSV, Parquet), idempotently")
    conv.add_argument("file")
    conv.add_argument("--format", choices=CONVERSATION_FORMATS, default="auto",
                      help="default: from the extension (.csv, .parquet), else jsonl")
    conv.add_argument("--map", default=None, metavar="TARGET=FIELD,...",
                      help="the file's field for each of session_id, text, turns, llm_label, llm_confidence, method "
                           "(default: the tenant setting field_map, else those names)")
    conv.add_argument("--dry-run", action="store_true", help="validate and count, write nothing")
    conv.set_defaults(func=cmd_import_conversations)
    queue = sub.add_parser("review-queue", help="export the documents waiting for a human review, highest priority first")
    queue.add_argument("--limit", type=_positive_int, default=None, help="at most this many documents (default: all)")
    queue.add_argument("--format", choices=FORMATS, default="jsonl")
    queue.add_argument("--output", default="-", help="a file to write (atomically); default: standard output")
    queue.set_defaults(func=cmd_review_queue)
    add_json_option(queue)
    status = sub.add_parser("status", help="every tenant: documents, reviews, waiting reviews, queue, model in service")
    status.set_defaults(func=cmd_status)
    add_json_option(status)
    repair = sub.add_parser("repair-store", help="remove duplicate copies that break the store's unique indexes")
    repair.add_argument("--tenant", type=tenant_argument, default=None, help="default: every tenant in the store")
    repair.set_defaults(func=cmd_repair_store)
    repair.set_defaults(known_tenant="any")
    for p in lifecycle_commands.add_commands(sub, settings.tenant()):
        p.set_defaults(known_tenant="active")
    tenant_commands.add_commands(sub)
    train = train_command.add_command(sub)
    for p in (demo, imp, conv, queue, train):
        p.add_argument("--tenant", type=tenant_argument, default=settings.tenant(), help="default: $LEGOLAS_TENANT or 'demo'")
    # demo-data and import-reviews write a tenant's first documents: a new name is how a tenant starts.
    queue.set_defaults(known_tenant="active")
    return parser


EXIT_CODES_HELP = """exit codes: 0 done; 1 the command could not be carried out now (store down or busy, missing file,
no earlier champion, the Dagster run failed); 2 usage (bad option or value, unknown tenant, invalid LEGOLAS_* setting).
Commands with --json print one JSON document on standard output (docs/cli.md)."""


def _check_tenant(args) -> None:
    """Refuse a ``--tenant`` that names no tenant of the deployment, listing the known ones.

    ``known_tenant`` on the parsed command says which count: ``"active"`` tenants, or ``"any"`` the
    store names (removed and held-back ones too). When the store cannot be read the check is skipped
    with a warning: the lifecycle commands read only the tenant's artifacts, and a rollback is most
    needed while something else is down.

    Raises:
        UsageError: listing the tenants.
    """
    from legolas_ml.data.tenants import open_catalogue

    which = getattr(args, "known_tenant", None)
    if which is None or args.tenant is None:
        return
    try:
        with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
            found = catalogue.discover()
    except StoreUnavailableError as exc:
        print(f"legolas: warning: tenant {args.tenant!r} not checked, the store cannot be read: "
              f"{scrub(str(exc), settings.mongo_uri())}", file=sys.stderr)
        return
    refusal = tenant_commands.unknown_tenant(args.tenant, found, inactive_too=which == "any")
    if refusal is not None:
        raise refusal


def main(argv: list[str] | None = None) -> int:
    """Run one ``legolas`` command; return its exit code (``legolas_ml.cli.conventions``: 0, 1 runtime, 2 usage).

    argparse exits with 2 on a malformed command line before anything runs.
    """
    args = build_parser().parse_args(argv)
    try:
        _check_tenant(args)
        return args.func(args)
    except BrokenPipeError:
        # `legolas status | head`: the reader left; nothing is wrong and nothing more can be printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (StoreUnavailableError, StoreBusyError, StoreIntegrityError, OSError, ValueError, ChampionUnavailableError,
            CommandError) as exc:
        print(f"legolas: {scrub(str(exc), settings.mongo_uri())}", file=sys.stderr)
        return exit_code_for(exc)
