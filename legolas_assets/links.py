"""Links from metadata to artifacts: URLs under ``LEGOLAS_ARTIFACTS_URL`` when it is set.

``make artifacts`` serves the reports, manifests and plots of ``$LEGOLAS_HOME/output`` read-only
on 127.0.0.1:3001 (``legolas_ml.lifecycle.artifact_server``) and ``make ui`` sets ``LEGOLAS_ARTIFACTS_URL`` to it, so a report or manifest
opens with one click from the asset page. Without it the metadata keeps the local path (the UI's
copy button), which is what a browser on another machine could not open anyway.
"""

from pathlib import Path
from urllib.parse import quote

from dagster import MetadataValue

from legolas_ml.core import settings


def url_of(path: str | Path) -> str | None:
    """The artifact's URL under ``LEGOLAS_ARTIFACTS_URL``; ``None`` when unset or outside the output directory."""
    base = settings.artifacts_url()
    if not base:
        return None
    try:
        relative = Path(path).resolve().relative_to(settings.output_dir())
    except ValueError:
        return None
    return f"{base}/{quote(relative.as_posix())}"


def urls(paths: dict[str, str | Path]) -> dict[str, MetadataValue]:
    """``{name: MetadataValue.url}`` for the paths that have a URL (none when no server is configured)."""
    out = {}
    for name, path in paths.items():
        url = url_of(path)
        if url is not None:
            out[name] = MetadataValue.url(url)
    return out
