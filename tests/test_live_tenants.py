"""Tenants live and the default tenant's keys: what a load builds, the difference the sensor sees,
when it asks the webserver for a reload, and how (the GraphQL mutation against a stand-in server)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import build_sensor_context

from dagster_helpers import resources
from legolas_assets.definitions import build_definitions
from legolas_assets.live_tenants import (
    RETRY_AFTER,
    ReloadDecision,
    TenantChange,
    build_tenants_sensor,
    compare_tenants,
    decide_reload,
    reload_code_location,
    tenants_tick,
)
from legolas_assets.resources import MongoResource, WorkspaceResource
from legolas_assets.tenancy import ASSET_NAMES, SOURCE_ASSET_NAMES, TenantPlan, discover_tenants
from legolas_ml.cli import main
from legolas_ml.data.tenants import TenantSettings

T0 = datetime(2026, 3, 1, 12, 0, 0)
URL = "http://127.0.0.1:3000"
LOCATION = "legolas_assets.definitions"


def keys_of(defs) -> set[str]:
    return {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}


# --- the default tenant's keys ----------------------------------------------------------------------


def test_the_default_tenant_has_unprefixed_keys_and_the_others_keep_their_prefix(tmp_path, monkeypatch):
    defs = build_definitions([TenantPlan("demo"), TenantPlan("insurance")], resources=resources(tmp_path))
    keys = keys_of(defs)
    names = set(ASSET_NAMES) | set(SOURCE_ASSET_NAMES)
    # The names a tenant may not take are exactly the default tenant's keys.
    assert {k for k in keys if "/" not in k} == names
    assert {k for k in keys if "/" in k} == {f"insurance/{n}" for n in names}
    assert {"demo__training_job", "insurance__training_job"} <= {j.name for j in defs.jobs}  # jobs keep the tenant
    assert defs.resolve_job_def("demo__training_job").partitions_def.get_partition_keys() == ["0", "1", "2"]
    # The default is LEGOLAS_TENANT's, decided when the plan is made.
    monkeypatch.setenv("LEGOLAS_TENANT", "insurance")
    assert TenantPlan("insurance").key("fold_models").to_user_string() == "fold_models"
    assert TenantPlan("demo").key("fold_models").to_user_string() == "demo/fold_models"


def test_a_tenant_named_like_a_default_tenant_asset_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"tenant 'fold_models': its key name 'fold_models' is an asset key of the default tenant 'demo'.*"
                                         r"must not be one of \['cv_metrics'"):
        build_definitions([TenantPlan("demo"), TenantPlan("fold_models")], resources=resources(tmp_path))
    build_definitions([TenantPlan("fold_models", is_default=False)], resources=resources(tmp_path))  # no default tenant: no clash
    # Found in the store: refused with the reason, the others load (a clash never empties the UI).
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    for name in ("demo", "human-reviews", "acme"):  # '-' becomes '_': human_reviews
        assert main(["tenants", "add", name]) == 0
    assert [t.name for t in discover_tenants()] == ["acme", "demo"]


# --- the difference and the decision -------------------------------------------------------------------


def test_added_changed_and_removed_tenants_are_named():
    loaded = [TenantPlan("demo"), TenantPlan("insurance", TenantSettings(n_folds=2)), TenantPlan("old")]
    stored = [TenantPlan("acme"), TenantPlan("demo"), TenantPlan("insurance", TenantSettings(n_folds=3, retrain_threshold=9))]
    change = compare_tenants(loaded, stored)
    assert change == TenantChange(
        added=("acme",), changed=("insurance (n_folds 2 -> 3, retrain_threshold default -> 9)",), removed=("old",),
    )
    assert change.describe() == "added acme; changed insurance (n_folds 2 -> 3, retrain_threshold default -> 9); removed old"
    assert not compare_tenants(stored, list(reversed(stored))).any


def test_a_reload_is_asked_once_per_difference_and_again_after_the_retry_interval():
    change = TenantChange(added=("acme",))
    first = decide_reload(change, None, T0, URL, LOCATION)
    assert first.ask and first.reason == f"asked {URL} to reload code location {LOCATION}"
    asked = {"change": change.describe(), "at": T0.isoformat()}
    waiting = decide_reload(change, asked, T0 + RETRY_AFTER - timedelta(seconds=1), URL, LOCATION)
    assert not waiting.ask and "asked http://127.0.0.1:3000 to reload code location legolas_assets.definitions at 2026-03-01 12:00:00" in waiting.reason
    assert decide_reload(change, asked, T0 + RETRY_AFTER, URL, LOCATION).ask  # the reload did not take: ask again
    assert decide_reload(TenantChange(added=("acme", "zeta")), asked, T0, URL, LOCATION).ask  # another difference
    alone = decide_reload(change, None, T0, "", LOCATION)
    assert not alone.ask and "LEGOLAS_DAGSTER_URL unset" in alone.reason and "every 60 s" in alone.reason
    assert not decide_reload(change, None, T0, URL, None).ask
    assert decide_reload(TenantChange(), None, T0, URL, LOCATION) == ReloadDecision(False, "")


def test_a_tick_names_the_tenants_asks_for_the_reload_and_records_it():
    asked = []

    def reload(url, location):
        asked.append((url, location))
        return "reloaded"

    loaded, stored = [TenantPlan("demo")], [TenantPlan("acme"), TenantPlan("demo")]
    reason, cursor = tenants_tick(loaded, stored, None, T0, URL, LOCATION, reload)
    assert asked == [(URL, LOCATION)]
    assert reason == (
        "tenants changed since the code location loaded (demo): added acme; until it reloads they are not trained; "
        f"asked {URL} to reload code location {LOCATION}: the webserver reloaded"
    )
    again, same = tenants_tick(loaded, stored, cursor, T0 + timedelta(seconds=30), URL, LOCATION, reload)
    assert asked == [(URL, LOCATION)] and same == cursor and "added acme" in again  # not asked twice
    in_sync, kept = tenants_tick(stored, stored, cursor, T0, URL, LOCATION, reload)
    assert in_sync == "the code location's tenants are the store's: acme, demo" and kept == cursor


# --- the sensor over a real store --------------------------------------------------------------------------


def test_the_sensor_sees_a_tenant_added_changed_and_removed_in_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    assert main(["tenants", "add", "demo"]) == 0 and main(["tenants", "add", "insurance", "--n-folds", "2"]) == 0
    loaded = discover_tenants()
    asked = []
    sensor = build_tenants_sensor(loaded, reload=lambda url, location: asked.append(location) or "reloaded")
    res = {"mongo": MongoResource(data_dir=str(tmp_path)), "workspace": WorkspaceResource(webserver_url=URL)}

    def tick() -> str:
        return sensor(build_sensor_context(resources=res)).skip_reason.skip_message

    assert tick() == "the code location's tenants are the store's: demo, insurance"
    assert main(["tenants", "add", "acme"]) == 0
    assert main(["tenants", "add", "insurance", "--n-folds", "3"]) == 0
    assert main(["tenants", "remove", "demo"]) == 0
    reason = tick()
    assert "added acme; changed insurance (n_folds 2 -> 3); removed demo" in reason
    # Outside the daemon the tick has no code location name: it says so and asks nobody.
    assert "does not know its code location's name" in reason and asked == []
    down = {**res, "mongo": MongoResource(uri="mongodb://127.0.0.1:9/?directConnection=true", timeout_s=0.3)}
    outage = sensor(build_sensor_context(resources=down)).skip_reason.skip_message
    assert outage.startswith("the store cannot be read, the tenants stay as loaded (demo, insurance)")


# --- the GraphQL mutation -------------------------------------------------------------------------------------


class _Webserver(BaseHTTPRequestHandler):
    """Answers ``reloadRepositoryLocation`` as the Dagster webserver does, after ``delay`` seconds."""

    delay = threading.Event()
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).received.append(body)
        type(self).delay.wait(5)
        location = body["variables"]["repositoryLocationName"]
        if location == LOCATION:
            entry = {"__typename": "WorkspaceLocationEntry", "locationOrLoadError": {"__typename": "RepositoryLocation"}}
        else:
            entry = {"__typename": "RepositoryLocationNotFound", "message": f"Location {location} does not exist"}
        payload = json.dumps({"data": {"reloadRepositoryLocation": entry}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_the_reload_is_the_webservers_graphql_mutation():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webserver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        _Webserver.delay.set()
        assert reload_code_location(url, LOCATION) == "reloaded"
        assert "reloadRepositoryLocation" in _Webserver.received[0]["query"]
        assert reload_code_location(url, "nowhere") == (
            "refused the reload (RepositoryLocationNotFound: Location nowhere does not exist)"
        )
        _Webserver.delay.clear()  # a slow load: the tick goes on, the request finishes on its own
        assert reload_code_location(url, LOCATION, wait_s=0.2) == "is reloading (no answer within 0.2 s)"
    finally:
        _Webserver.delay.set()
        server.shutdown()
        server.server_close()
    assert reload_code_location(url, LOCATION).startswith("could not be asked (DagsterGraphQLClientError: ")
