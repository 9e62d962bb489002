"""The artifacts server behind the UI's links: reports, manifests and plots only, to loopback only."""

import threading
import urllib.error
import urllib.request

import pytest

from legolas_ml.lifecycle.artifact_server import is_served, make_server


@pytest.fixture
def served(tmp_path):
    report = tmp_path / "demo" / "ensemble" / "versions" / "v1" / "runs" / "r1" / "explainability" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>report</html>")
    dataset = tmp_path / "demo" / "datasets" / "abc.jsonl"
    dataset.parent.mkdir(parents=True)
    dataset.write_text('{"text": "a customer conversation"}\n')
    (tmp_path / "demo" / "folds" / "k1").mkdir(parents=True)
    (tmp_path / "demo" / "folds" / "k1" / "fold0.safetensors").write_bytes(b"weights")
    server = make_server(str(tmp_path), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _status(url, host=None):
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_only_reports_manifests_and_plots_are_served(served):
    assert _status(f"{served}/demo/ensemble/versions/v1/runs/r1/explainability/report.html") == (200, b"<html>report</html>")
    assert _status(f"{served}/demo/datasets/abc.jsonl")[0] == 404  # customer texts
    assert _status(f"{served}/demo/folds/k1/fold0.safetensors")[0] == 404  # weights
    assert _status(f"{served}/demo/ensemble/versions/v1/")[0] == 404  # no listings
    assert _status(f"{served}/demo/ensemble/../datasets/abc.jsonl")[0] == 404
    # A page that rebinds its own domain to 127.0.0.1 sends its domain as the Host: refused.
    assert _status(f"{served}/demo/ensemble/versions/v1/runs/r1/explainability/report.html", host="evil.example:3001")[0] == 403


def test_paths_and_hosts_are_checked_before_serving():
    assert is_served("/demo/folds/k1/runs/r1/fold_curves.png")
    assert not is_served("/demo/holdout/abc.jsonl") and not is_served("/demo/ensemble/.hidden.json")
    with pytest.raises(ValueError, match=r"host must be one of \['127.0.0.1', 'localhost'\].*got '0.0.0.0'"):
        make_server(".", port=0, host="0.0.0.0")
