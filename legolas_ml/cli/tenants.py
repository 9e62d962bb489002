"""`legolas tenants add|list|remove`: the deployment's tenants and their settings, from the command line."""

from __future__ import annotations

import argparse

from legolas_ml.core import settings
from legolas_ml.cli.conventions import UsageError, add_json_option, print_json
from legolas_ml.data.tenants import Discovery, open_catalogue
from legolas_ml.cli.lifecycle import tenant_argument

RELOAD_HINT = (
    "a running Dagster UI or daemon picks it up by itself (the reload_on_tenant_change sensor: within a minute); "
    "`legolas train`, `dagster asset materialize` and `dagster job execute` load it at once"
)


def _catalogue():
    return open_catalogue(settings.mongo_uri(), settings.data_dir(), settings.database_name())


def unknown_tenant(name: str, found: Discovery, *, inactive_too: bool = False, option: str = "--tenant") -> UsageError | None:
    """Why ``--tenant name`` names no tenant a command can act on, or ``None`` when it names one.

    Args:
        name: the tenant given on the command line.
        found: the deployment's tenants (``TenantCatalogue.discover()``).
        inactive_too: removed tenants and tenants held back for their settings count as known
            (``repair-store`` repairs them too).
        option: how the command line gave the name, for the message.

    Returns:
        A ``UsageError`` listing the known tenants (and saying how a removed one comes back), or
        ``None``.
    """
    known = set(found.names()) | (set(found.removed) | set(found.held_back) if inactive_too else set())
    if name in known:
        return None
    listed = ", ".join(map(repr, sorted(known))) or "none yet (`legolas demo-data`, `legolas import-reviews FILE --tenant T` or `legolas tenants add T`)"
    why = ""
    if name in found.removed:
        why = f"; {name!r} was removed (`legolas tenants add {name}` brings it back)"
    elif name in found.held_back:
        why = f"; {name!r} is held back for its settings or key name (`legolas tenants list` says why)"
    return UsageError(f"{option} must name a tenant of this deployment, got {name!r}; the tenants are: {listed}{why}")


def changes_from_args(args) -> dict:
    """The settings to change: ``--settings JSON`` first, then the named options on top."""
    values: dict = {}
    if args.settings:
        values = settings.json_object(args.settings, "--settings", "a JSON object of tenant settings")
    for name in ("n_folds", "model_name", "epochs", "max_length", "retrain_threshold"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    if getattr(args, "field_map", None):
        from legolas_ml.data.conversation_import import parse_field_map

        values["field_map"] = parse_field_map(args.field_map)
    return values


def cmd_tenants_add(args) -> int:
    with _catalogue() as catalogue:
        tenant = catalogue.add(args.name, changes_from_args(args), unset=tuple(args.unset))
    print(f"tenant {tenant.name!r} added ({tenant.settings.describe()}); {RELOAD_HINT}")
    return 0


def cmd_tenants_remove(args) -> int:
    with _catalogue() as catalogue:
        removed = catalogue.remove(args.name)
    if not removed:
        with _catalogue() as catalogue:
            refusal = unknown_tenant(args.name, catalogue.discover(), option="tenants remove NAME")
        raise refusal or UsageError(f"no tenant {args.name!r} in this deployment (`legolas tenants list`)")
    print(
        f"tenant {args.name!r} removed from the deployment: its documents and artifacts stay, nothing is deleted; "
        f"`legolas tenants add {args.name}` brings it back; {RELOAD_HINT}"
    )
    return 0


def cmd_tenants_list(args) -> int:
    with _catalogue() as catalogue:
        found = catalogue.discover()
    if args.json:
        return print_json({
            "tenants": [
                {"name": t.name, "source": "catalogue" if t.in_catalogue else "documents", "settings": t.settings.to_dict()}
                for t in found.tenants
            ],
            "removed": list(found.removed),
            "refused": list(found.refused),
        })
    if not found.tenants:
        print("no active tenant (`legolas demo-data`, `legolas import-reviews --tenant T` or `legolas tenants add T`)")
    for tenant in found.tenants:
        where = "catalogue" if tenant.in_catalogue else "documents"
        print(f"{tenant.name:<24} {where:<10} {tenant.settings.describe()}")
    for name in found.removed:
        print(f"{name:<24} {'removed':<10} (documents and artifacts kept)")
    for problem in found.refused:
        print(f"refused: {problem}")
    return 0


def add_commands(sub) -> None:
    """Register `legolas tenants ...` on the `legolas` parser."""
    tenants = sub.add_parser("tenants", help="the deployment's tenants: add, list, remove")
    actions = tenants.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a tenant, change some of its settings, or bring a removed one back (stored settings are kept)")
    add.add_argument("name", type=tenant_argument)
    add.add_argument("--n-folds", dest="n_folds", type=int, default=None, help="K of K-fold for this tenant")
    add.add_argument("--model", dest="model_name", default=None, help="a Hugging Face id or a local model directory")
    add.add_argument("--epochs", type=int, default=None)
    add.add_argument("--max-length", dest="max_length", type=int, default=None)
    add.add_argument("--retrain-threshold", dest="retrain_threshold", type=int, default=None)
    add.add_argument("--field-map", dest="field_map", default=None, metavar="TARGET=FIELD,...",
                     help="`legolas import-conversations`'s field map for this tenant, e.g. session_id=ticket_id,text=body")
    add.add_argument(
        "--settings", default=None,
        help="JSON object of tenant settings, e.g. '{\"min_confidence\": 0.6, \"review_reasons\": [\"label_issue\"]}'",
    )
    add.add_argument("--unset", action="append", default=[], metavar="SETTING",
                     help="give a setting back to the deployment's value (repeatable); other stored settings are kept")
    add.set_defaults(func=cmd_tenants_add)
    remove = actions.add_parser("remove", help="take a tenant out of the deployment (its data and artifacts stay)")
    remove.add_argument("name", type=tenant_argument)
    remove.set_defaults(func=cmd_tenants_remove)
    listing = actions.add_parser("list", help="the tenants, where each was found and its settings")
    listing.set_defaults(func=cmd_tenants_list)
    add_json_option(listing)
