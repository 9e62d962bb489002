"""Serve the artifacts the UI links to (reports, manifests, plots), and nothing else, on loopback.

``make artifacts`` runs it for ``LEGOLAS_ARTIFACTS_URL``. Only files under a tenant's ``ensemble/``
or ``folds/`` directories ending in ``.html``, ``.png`` or ``.json`` are served: never the datasets
and holdouts (customer conversations), token caches, checkpoints, logs or asset values beside
them, and never a directory listing. Requests must name the server by its loopback host, so a web
page that rebinds its own domain to 127.0.0.1 cannot read the files through the engineer's browser.

Usage: ``python -m legolas_ml.lifecycle.artifact_server --directory var/output [--port 3001]``
"""

from __future__ import annotations

import argparse
import functools
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

SERVED_SUFFIXES = (".html", ".png", ".json")
SERVED_AREAS = ("ensemble", "folds")  # <tenant>/<area>/...
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def is_served(url_path: str) -> bool:
    """Whether a request path names a report, manifest or plot under a tenant's ensemble or folds."""
    parts = PurePosixPath(unquote(urlsplit(url_path).path)).parts
    if len(parts) < 4 or parts[0] != "/" or any(p in ("..", ".") or p.startswith(".") for p in parts[1:]):
        return False
    return parts[2] in SERVED_AREAS and parts[-1].endswith(SERVED_SUFFIXES)


class ArtifactHandler(SimpleHTTPRequestHandler):
    """``SimpleHTTPRequestHandler`` limited to ``is_served`` paths and loopback Host headers."""

    def _allowed(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK_HOSTS:
            self.send_error(HTTPStatus.FORBIDDEN, "artifacts are served to 127.0.0.1 or localhost only")
            return False
        if not is_served(self.path):
            self.send_error(HTTPStatus.NOT_FOUND, "only reports, manifests and plots are served")
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self._allowed():
            super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        if self._allowed():
            super().do_HEAD()

    def list_directory(self, path):  # never a listing, even for an allowed-looking directory name
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None


def make_server(directory: str, port: int = 3001, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server for ``directory`` on ``host:port`` (``port`` 0 picks a free one).

    Raises:
        ValueError: if ``host`` is not a loopback address.
    """
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"host must be one of {list(LOOPBACK_HOSTS)} (artifacts hold tenants' data), got {host!r}")
    return ThreadingHTTPServer((host, port), functools.partial(ArtifactHandler, directory=directory))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", required=True, help="the output directory ($LEGOLAS_HOME/output)")
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args(argv)
    server = make_server(args.directory, args.port)
    print(f"serving reports, manifests and plots of {args.directory} on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
