"""Model family ``qwen2_vl``: Qwen2-VL and Qwen2.5-VL through transformers' own classes.

Matrix parameters (one source):

- ``repo = "Qwen/Qwen2-VL-2B-Instruct"`` (+ ``revision``): from the hub, safetensors only;
- ``path = "/models/Qwen2-VL-2B-Instruct"`` (+ ``manifest``): a local folder, verified
  first by its model manifest (:mod:`evalsuite.vlm.manifest`);
- ``config = "tiny" | "qwen2_vl_2b" | {...}``: random weights (labelled ``random-weights``),
  with the offline Qwen2 tokenizer (:mod:`evalsuite.vlm.tokenizer`).

and, always: ``min_pixels``, ``max_pixels`` (the image processor's resize bounds, pinned:
published comparisons differ by them), ``max_new_tokens`` (default 64), ``insertion``
(``pre_llm``, ``vision`` or ``lm``, default ``pre_llm``: where hidden-state methods run; ``lm``:
inside the language model, V2Drop and FastV), ``attn_implementation`` (default ``sdpa``), ``decoder``
(a name of :data:`evalsuite.vlm.generate.DECODERS`, default ``eager``; ``static``: the ``lm_*``
latency KPIs come from a static KV cache, a CUDA graph on a GPU, answers still eager).
``image_size`` is not used: the processor's bounds set the resolution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..vlm.adapter import Qwen2VLAdapter
from ..vlm import configs
from ..vlm import manifest as manifests

FAMILIES = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
CONFIGS = {"qwen2_vl": "Qwen2VLConfig", "qwen2_5_vl": "Qwen2_5_VLConfig"}


def create(name: str, image_size: int | None = None, *, min_pixels: int | None = None,
           max_pixels: int | None = None, max_new_tokens: int = 64, insertion: str = "pre_llm",
           repo: str | None = None, revision: str | None = None, path: str | None = None,
           manifest: str | None = None, config: str | dict[str, Any] | None = None,
           attn_implementation: str = "sdpa", decoder: str = "eager") -> Qwen2VLAdapter:
    """A :class:`Qwen2VLAdapter` for model ``name``; see the module docstring for the parameters."""
    if min_pixels is None or max_pixels is None:
        raise ValueError(f"model {name}: min_pixels and max_pixels must be pinned in the matrix "
                         "(the image processor's resize bounds decide the visual-token count)")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"model {name}: need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    if sum(x is not None for x in (repo, path, config)) != 1:
        raise ValueError(f"model {name}: give exactly one of repo (hub id), path (local folder) or config")
    info = None
    if path is not None:  # checked before anything heavy is imported or loaded
        folder = Path(path).expanduser()
        info = manifests.verify(folder, Path(manifest) if manifest else None)
    import transformers

    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    labels: tuple[str, ...] = ()
    if config is not None:
        raw = configs.named(config) if isinstance(config, str) else dict(config)
        family = raw.get("model_type", "qwen2_vl")
        model_config = getattr(transformers, _lookup(CONFIGS, family, name)).from_dict(raw)
        model_config._attn_implementation = attn_implementation
        model = getattr(transformers, _lookup(FAMILIES, family, name))(model_config)
        from ..vlm.tokenizer import qwen2_tokenizer

        tokenizer, labels = qwen2_tokenizer(), ("random-weights",)
        source = f"config:{config if isinstance(config, str) else family}"
    else:
        if info is not None:
            family, where, source = info.family, str(folder), f"path:{folder}@{info.revision}"
        else:
            where, source = repo, f"hub:{repo}@{revision or 'main'}"
            family = _hub_family(repo, revision)
        cls = getattr(transformers, _lookup(FAMILIES, family, name))
        model = cls.from_pretrained(where, revision=revision, use_safetensors=True,
                                    attn_implementation=attn_implementation)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, revision=revision, padding_side="left")
        image_processor = transformers.Qwen2VLImageProcessor.from_pretrained(
            where, revision=revision, min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLAdapter(name, model, tokenizer, image_processor, min_pixels=min_pixels, max_pixels=max_pixels,
                          max_new_tokens=max_new_tokens, insertion=insertion, labels=labels, source=source,
                          decoder=decoder)


create.kind = "vlm"  # the engine runs this family's cases through evalsuite.vlm.case


def _lookup(table: dict[str, str], family: str, name: str) -> str:
    if family not in table:
        raise ValueError(f"model {name}: family {family!r} is not one of {', '.join(table)}")
    return table[family]


def _hub_family(repo: str, revision: str | None) -> str:
    """``model_type`` of a hub checkpoint's config.json."""
    from huggingface_hub import hf_hub_download

    with open(hf_hub_download(repo, "config.json", revision=revision), encoding="utf-8") as fh:
        return json.load(fh).get("model_type", "qwen2_vl")
