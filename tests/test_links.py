"""Metadata links to artifacts under LEGOLAS_ARTIFACTS_URL."""

import pytest

from legolas_assets.links import url_of, urls
from legolas_ml.core.settings import SettingsError


def test_artifacts_link_under_the_served_output_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    monkeypatch.setenv("LEGOLAS_ARTIFACTS_URL", "http://127.0.0.1:3001/")
    report = tmp_path / "output" / "demo" / "ensemble" / "runs" / "r 1" / "report.html"
    assert url_of(report) == "http://127.0.0.1:3001/demo/ensemble/runs/r%201/report.html"
    assert url_of(tmp_path / "elsewhere.html") is None  # never a link outside what is served
    assert urls({"report_url": report})["report_url"].url == url_of(report)


def test_no_server_no_links(tmp_path, monkeypatch):
    monkeypatch.setenv("LEGOLAS_HOME", str(tmp_path))
    monkeypatch.delenv("LEGOLAS_ARTIFACTS_URL", raising=False)
    assert urls({"report_url": tmp_path / "output" / "x.html"}) == {}


def test_a_bad_url_names_the_variable(monkeypatch):
    monkeypatch.setenv("LEGOLAS_ARTIFACTS_URL", "127.0.0.1:3001")
    with pytest.raises(SettingsError, match=r"LEGOLAS_ARTIFACTS_URL must be an http:// or https:// URL .* got '127.0.0.1:3001'"):
        url_of("x")
