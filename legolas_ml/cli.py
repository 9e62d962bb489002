"""The ``legolas`` command: demo data, review import and per-tenant status.

Training itself runs through Dagster (``dagster asset materialize``, see the README); this command
manages the data the assets read.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from legolas_ml import settings
from legolas_ml.data import tenant_commands
from legolas_ml.lifecycle import commands as lifecycle_commands
from legolas_ml.lifecycle.artifacts import TenantArtifacts
from legolas_ml.lifecycle.commands import holdout_balanced_accuracies, tenant_argument
from legolas_ml.lifecycle.registry import ChampionUnavailableError, ModelRegistry
from legolas_ml.data.demo_data import DOMAINS, generate_demo_data
from legolas_ml.data.conversation_import import FORMATS as CONVERSATION_FORMATS
from legolas_ml.data.review_import import IMPORT_FORMATS, import_reviews
from legolas_ml.review.audit import RANDOM_SAMPLE
from legolas_ml.review.queue import FORMATS, queue_size, review_queue, write_queue
from legolas_ml.data.store import StoreUnavailableError, list_tenants, open_tenant_store, scrub, validate_database
from legolas_ml.data.store_integrity import StoreIntegrityError
from legolas_ml.data.store_lock import StoreBusyError


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
    with _store(args) as store:
        records = review_queue(store, args.limit)
    if args.output == "-":
        n = write_queue(records, sys.stdout, args.format)
    else:
        from legolas_ml.atomic_io import atomic_write

        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                write_queue(records, handle, args.format)

        atomic_write(Path(args.output), write)
        n = len(records)
    where = "" if args.output == "-" else f" to {args.output}"
    sampled = sum(1 for r in records if r["review_reason"] == [RANDOM_SAMPLE])
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


def cmd_status(args) -> int:
    """Every tenant of the deployment: documents, reviews, waiting reviews, queue, model in service."""
    from legolas_ml.data.tenants import open_catalogue

    with open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name()) as catalogue:
        found = catalogue.discover()
    if not found.tenants:
        removed = f" ({len(found.removed)} removed: `legolas tenants list`)" if found.removed else " (run: legolas demo-data)"
        print(f"no active tenant{removed}")
        for problem in found.refused:
            print(f"refused: {problem}")
        return 0
    print(
        f"{'tenant':<16} {'K':>3} {'documents':>10} {'reviews':>8} {'waiting':>8} {'unlearned':>9} {'queue':>6}  {'newest review':<20} "
        f"{'champion':<18} {'human test BA':>13} {'holdout BA':>10} {'age':>5}"
    )
    champions = {}
    for tenant in found.tenants:
        args.tenant = tenant.name
        registry = ModelRegistry(TenantArtifacts(settings.output_dir(), tenant.name))
        try:
            champions[tenant.name] = registry.champion()
            label = champions[tenant.name]["version"] if champions[tenant.name] else "none"
        except ChampionUnavailableError as exc:
            champions[tenant.name], label = None, f"DAMAGED: {exc}"
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
            print(f"{tenant.name:<16} store problem: {scrub(str(exc), settings.mongo_uri())}")
            continue
        manifest = champions[tenant.name] or {}
        # Human labels only: on LLM-labelled test sessions the score is agreement with the LLM (None: old manifest).
        test_ba = (manifest.get("test_metrics_human") or {}).get("balanced_accuracy")
        holdout_ba = holdout_balanced_accuracies(registry.history()).get(manifest.get("version"))
        k = _trained_k(manifest, tenant.settings)
        newest = counts["newest_review"].isoformat(timespec="seconds") if counts["newest_review"] else "-"
        print(
            f"{tenant.name:<16} {k:>3} {counts['classifications']:>10} {counts['reviews']:>8} {waiting:>8} {unlearned:>9} {queued:>6}  "
            f"{newest:<20} {label:<18} {_number(test_ba):>13} {_number(holdout_ba):>10} {_age(_promoted_at(registry, manifest)):>5}"
        )
    for problem in found.refused:
        print(f"refused: {problem}")
    for tenant, manifest in champions.items():
        if manifest is None:
            continue
        registry = ModelRegistry(TenantArtifacts(settings.output_dir(), tenant))
        print(
            f"\n{tenant}: champion {manifest['version']}, ensemble of {len(manifest['checkpoints'])} folds "
            f"({manifest['mode']} training, {manifest['created_at']}), classes {', '.join(manifest.get('labels') or []) or '-'}"
        )
        print(f"  test:      {_test_scores(manifest)}")
        print(f"  trained:   {_trained_with(manifest)}")
        last = registry.history()[-1] if registry.history() else None
        if last:
            print(f"  last decision: {last['action']} {last['version']} at {last['at']}: {last['reason']}")
        challenger = registry.challenger()
        if challenger is not None:
            waiting = challenger["record"]
            print(
                f"  challenger: {challenger['version']} waits since {challenger['since']}: compared on {challenger.get('holdout_n')} "
                f"holdout sessions, looked at again at {waiting.get('next_look_at') or '-'}"
                + (f" (about {waiting['decision']['promotion']['sessions_to_decide']} expected to decide)"
                   if ((waiting.get("decision") or {}).get("promotion") or {}).get("sessions_to_decide") else "")
            )
        stack = registry.champion_stack()
        if len(stack) > 1:
            print(f"  earlier champions (rollback walks back): {' <- '.join(reversed(stack[:-1]))}")
        print(f"  manifest:  {registry.manifest_path(manifest['version'])}")
        print(f"  folds:     {Path(manifest['checkpoints'][0]).parent}")
        report = registry.latest_report(manifest["version"])
        if report is not None:
            print(f"  report:    {report}")
        print(f"  decisions: {registry.decisions_path} (`legolas versions --tenant {tenant}`)")
    return 0


def _trained_with(manifest: dict) -> str:
    """One line: the preset and the values that decide a training, and which of them did not come from the preset."""
    recorded = manifest.get("training_config")
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
    from legolas_ml.training.resolution import resolve_layout

    return resolve_layout(own)["n_folds"]


def _number(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _promoted_at(registry: ModelRegistry, manifest: dict) -> str | None:
    """When the champion went into service (the pointer's ``since``), else when it was created."""
    import json

    try:
        since = json.loads(registry.pointer_path.read_text()).get("since")
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
    parser = argparse.ArgumentParser(prog="legolas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="fill the store with a reproducible demo tenant")
    demo.add_argument("--conversations", type=int, default=1500)
    demo.add_argument("--reviews", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--reset", action="store_true", help="replace the tenant's existing documents")
    demo.add_argument("--domain", choices=sorted(DOMAINS), default="support", help="the tenant's classes: support (5) or insurance (3)")
    demo.set_defaults(func=cmd_demo_data)
    imp = sub.add_parser("import-reviews", help="import human reviews from a JSONL file")
    imp.add_argument("file")
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
    status = sub.add_parser("status", help="every tenant: documents, reviews, waiting reviews, queue, model in service")
    status.set_defaults(func=cmd_status)
    repair = sub.add_parser("repair-store", help="remove duplicate copies that break the store's unique indexes")
    repair.add_argument("--tenant", type=tenant_argument, default=None, help="default: every tenant in the store")
    repair.set_defaults(func=cmd_repair_store)
    lifecycle_commands.add_commands(sub, settings.tenant())
    tenant_commands.add_commands(sub)
    for p in (demo, imp, conv, queue):
        p.add_argument("--tenant", type=tenant_argument, default=settings.tenant(), help="default: $LEGOLAS_TENANT or 'demo'")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StoreUnavailableError, StoreBusyError, StoreIntegrityError) as exc:
        print(f"legolas: {scrub(str(exc), settings.mongo_uri())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `legolas status | head`: the reader left; nothing is wrong and nothing more can be printed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError, ChampionUnavailableError) as exc:
        print(f"legolas: {scrub(str(exc), settings.mongo_uri())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
