"""``dagster-daemon run`` whose code location is reloaded every N seconds instead of Dagster's 60.

``dagster-daemon run`` reloads its workspace every ``RELOAD_WORKSPACE_INTERVAL`` seconds (a constant
of Dagster 1.13's daemon controller, read at each check). A test that waits for that reload waits a
minute for nothing but the clock; this entry point sets the constant, then runs the real command.

    python tests/daemon_reloading.py SECONDS run -m legolas_assets.definitions
"""

import sys

import dagster._daemon.controller as controller
from dagster._daemon.cli import main

if __name__ == "__main__":
    # A renamed constant would make this a new attribute and the test silently wait 60 s again.
    assert hasattr(controller, "RELOAD_WORKSPACE_INTERVAL"), "Dagster's daemon no longer has RELOAD_WORKSPACE_INTERVAL"
    controller.RELOAD_WORKSPACE_INTERVAL = int(sys.argv.pop(1))
    sys.argv[0] = "dagster-daemon"
    sys.exit(main())
