"""Model manifests: what a local model folder must declare before evalsuite loads it.

A folder holds ``manifest.toml`` (or the matrix names another file) with the fields of the
team's model registry::

    id = "Qwen2-VL-2B-Instruct"
    family = "qwen2_vl"                  # qwen2_vl or qwen2_5_vl
    path = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    format = "safetensors"               # the only format loaded: no pickled *.bin
    quant = "bf16"                       # none, fp32, fp16 or bf16: quantised weights are not loaded
    checksum_sha256 = ["<hex>", "<hex>"] # one per file of `path`, same order
    revision = "895c3a49bc3fa70a340399125c650a463535e71c"
    license = "apache-2.0"

``path`` (a string or a list) is relative to the folder. Every file is hashed before
loading, and a ``*.safetensors`` file in the folder that the manifest does not list is refused
(it would be loaded unchecked); a missing or wrong checksum is an error naming the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..paths import file_sha256

FIELDS = ("id", "family", "path", "format", "quant", "checksum_sha256", "revision", "license")
QUANTS = ("none", "fp32", "fp16", "bf16")


class ManifestError(ValueError):
    """A manifest that is missing, malformed, or does not match the files; the message names the file."""


@dataclass(frozen=True)
class Manifest:
    id: str
    family: str
    files: tuple[Path, ...]
    format: str
    quant: str
    checksums: tuple[str, ...]
    revision: str
    license: str


def read(folder: Path, manifest: Path | None = None) -> Manifest:
    """Parse and check ``folder``'s manifest (fields, format, one checksum per file)."""
    path = Path(manifest) if manifest else Path(folder) / "manifest.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: model manifest not found (a local model folder needs one: "
                            f"fields {', '.join(FIELDS)})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: malformed TOML: {exc}") from None
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}")
    files = raw["path"] if isinstance(raw["path"], list) else [raw["path"]]
    sums = raw["checksum_sha256"] if isinstance(raw["checksum_sha256"], list) else [raw["checksum_sha256"]]
    if raw["format"] != "safetensors":
        raise ManifestError(f"{path}: format {raw['format']!r}: only safetensors weights are loaded")
    bad = [f for f in files if not str(f).endswith(".safetensors")]
    if bad:
        raise ManifestError(f"{path}: path lists {', '.join(bad)}: only *.safetensors files are loaded "
                            "(pickled *.bin weights can run code when loaded)")
    if raw["quant"] not in QUANTS:
        raise ManifestError(f"{path}: quant {raw['quant']!r} is not one of {', '.join(QUANTS)}")
    if len(sums) != len(files):
        raise ManifestError(f"{path}: {len(files)} file(s) in path but {len(sums)} checksum_sha256 value(s)")
    base = Path(folder)
    return Manifest(str(raw["id"]), str(raw["family"]), tuple(base / f for f in files), raw["format"],
                    raw["quant"], tuple(str(s).lower() for s in sums), str(raw["revision"]), str(raw["license"]))


def verify(folder: Path, manifest: Path | None = None) -> Manifest:
    """:func:`read`, then hash every weights file against its checksum."""
    info = read(folder, manifest)
    unlisted = sorted(set(Path(folder).glob("*.safetensors")) - set(info.files))
    if unlisted:  # transformers would load them unchecked
        raise ManifestError(f"{unlisted[0]}: weights file not listed in the model manifest (path, checksum_sha256)")
    for file, expected in zip(info.files, info.checksums):
        if not file.is_file():
            raise ManifestError(f"{file}: listed in the model manifest but missing")
        if not expected:
            raise ManifestError(f"{file}: no checksum_sha256 in the model manifest")
        actual = file_sha256(file)
        if actual != expected:
            raise ManifestError(f"{file}: sha256 {actual} does not match the manifest's {expected}")
    return info
