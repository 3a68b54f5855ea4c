"""Compression inside a vision-language model, judged by the VLM's own answers.

- :mod:`.adapter` the Qwen2-VL family split into image -> vision tower -> visual tokens
  -> language model (loading: :mod:`evalsuite.models.qwen2_vl`, manifests: :mod:`.manifest`,
  random-weight configurations: :mod:`.configs`, offline tokenizer: :mod:`.tokenizer`);
- :mod:`.generate` evalsuite's greedy loop with a swappable prefill and decoder;
- :mod:`.select` pure-torch visual-token selections between the tower and the language model;
- :mod:`.lm_drop` V2Drop and FastV inside the language model (its own layer loop and KV cache),
  :mod:`.static_decode` decoding on a static KV cache (a captured CUDA graph on a GPU);
- :mod:`.methods` which method runs at which insertion point;
- :mod:`.prompts` what each dataset asks; :mod:`.case` one VLM case through the engine.
"""
