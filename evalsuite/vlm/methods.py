"""Which compression methods a VLM case can run, and where.

Insertion points, in the order an image meets them:

- ``image``: before the model, on the image itself (``downscale`` to the same visual-token budget);
- ``vision``: inside the vision tower, on whole 2x2 merge units (:mod:`evalsuite.patch.qwen2_vl`:
  ``random``, the encoder ``v2drop`` and the A-ViT-style ``avit`` drop units, ``tome`` merges
  them, after the blocks of ``layers`` (default three spread over the depth), Qwen2.5-VL's
  attention windows kept);
- ``pre_llm``: between the vision tower and the language model, on the visual tokens
  (:mod:`evalsuite.vlm.select`);
- ``lm``: inside the language model (V2Drop, FastV: an entry's ``lm_drop``, run by
  :func:`evalsuite.vlm.lm_drop.generate` with the schedule the matrix gives; or an entry's
  ``prefill``, a :data:`evalsuite.vlm.generate.Prefill` in evaluate's own greedy loop).

:data:`TABLE` maps a method name to the points it can run at and, for ``pre_llm``, its
selection function and how its matrix parameters give the keep ratio. A case runs a
method at the model's ``insertion`` point (default ``pre_llm``); a method whose only point
is ``image`` or ``lm`` runs there on any model. Anything else is a :class:`VLMUsageError`.
This table is what a method spec's ``insertion`` set will hold once methods are specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import select
from .graphed import Graphed

INSERTION_POINTS = ("image", "vision", "pre_llm", "lm")
# points a method runs at whatever the model's insertion point: before the model, inside the LM's prefill
FIXED_POINTS = ("image", "lm")


class VLMUsageError(ValueError):
    """A method asked to run where it cannot, or with parameters it does not take."""


class ScheduleError(VLMUsageError):
    """An in-LM schedule that does not fit the loaded language model (the message names the key)."""


def _scalar_keep(name: str, params: dict[str, Any]) -> float:
    keep = params.get("keep", 1.0)
    if isinstance(keep, list) or "preset" in params:
        raise VLMUsageError(f"method {name!r}: a preset or per-layer keep ratios are an in-LM schedule "
                            "(insertion = \"lm\" on the model)")
    return float(keep)


def _keep(params: dict[str, Any]) -> float:
    return float(params.get("keep", 1.0))


def _tome_keep(params: dict[str, Any]) -> float:
    return 1.0 - float(params.get("merge_factor", 0.0))


@dataclass(frozen=True)
class Entry:
    points: frozenset[str]
    keep: Callable[[dict[str, Any]], float] = _keep  # matrix parameters -> fraction of visual tokens kept
    # pre_llm: a function of evalsuite.vlm.select; wrapped in Graphed (inside graphed.replaying(), replayed
    # from a CUDA graph once a shape recurs) unless it draws from a CPU generator
    select: Callable | None = None
    params: frozenset[str] = frozenset({"keep"})  # parameters the VLM path reads; others are refused
    # a method that acts inside the language model: (params, adapter) -> a prefill callable of
    # evalsuite.vlm.generate (its PrefillResult carries the cut cache); None: the unpatched prefill
    prefill: Callable[[dict[str, Any], Any], Callable] | None = None
    tower: str | None = None  # vision: the unit scores of evalsuite.patch.qwen2_vl (random, v2drop, avit, tome)
    lm_drop: str | None = None  # lm: the method of evalsuite.vlm.lm_drop.parse_schedule (v2drop, fastv)


TABLE: dict[str, Entry] = {
    "none": Entry(frozenset(INSERTION_POINTS), lambda p: 1.0, params=frozenset()),
    "random": Entry(frozenset({"pre_llm", "vision"}), select=select.random_select,
                    params=frozenset({"keep", "layers"}), tower="random"),
    "tome": Entry(frozenset({"pre_llm", "vision"}), _tome_keep, Graphed(select.tome_merge),
                  frozenset({"merge_factor", "layers"}), tower="tome"),
    "visionzip": Entry(frozenset({"pre_llm"}), select=Graphed(select.visionzip_select),
                       params=frozenset({"keep", "contextual_ratio"})),
    "divprune": Entry(frozenset({"pre_llm"}), select=Graphed(select.divprune_select)),
    "downscale": Entry(frozenset({"image"})),
    "avit": Entry(frozenset({"vision"}), lambda p: 1.0 - float(p.get("sparsity", 0.0)),
                  params=frozenset({"sparsity", "layers"}), tower="avit"),
    "v2drop": Entry(frozenset({"vision", "lm"}), lambda p: _scalar_keep("v2drop", p),
                    params=frozenset({"keep", "layers", "preset"}), tower="v2drop", lm_drop="v2drop"),
    "fastv": Entry(frozenset({"lm"}), params=frozenset({"k", "keep"}), lm_drop="fastv"),
}


@dataclass(frozen=True)
class VLMMethod:
    """A method resolved for one VLM case: where it runs and how much it keeps."""

    name: str
    point: str
    keep: float
    select: Callable | None
    options: dict[str, Any]  # extra keyword arguments of the selection function
    prefill: Callable | None = None  # see Entry.prefill
    tower: str | None = None  # see Entry.tower
    params: dict[str, Any] | None = None  # the matrix parameters as given
    schedule: Any = None  # lm: the evalsuite.vlm.lm_drop.DropSchedule (resolved with the model's depth)

    @property
    def is_zero(self) -> bool:
        return self.keep >= 1.0


def tower_layers(method: VLMMethod, depth: int) -> list[int]:
    """The tower blocks after which a ``vision``-point ``method`` drops units: its ``layers`` parameter, or
    three stages spread over the ``depth`` (fewer in a tower too shallow for three); a list that is not
    increasing block indices below ``depth`` is a :class:`VLMUsageError`."""
    from ..methods.state import default_layers

    layers = method.params.get("layers")
    if layers is None:
        return sorted(set(default_layers(depth)))
    if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
        raise VLMUsageError(f"method {method.name!r}: layers {layers!r}: expected a list of block indices")
    if any(not 0 <= x < depth for x in layers) or sorted(set(layers)) != layers:
        raise VLMUsageError(f"method {method.name!r}: layers {layers}: must be increasing block indices below "
                            f"the tower's depth {depth}")
    return list(layers)


def resolve(name: str, params: dict[str, Any], insertion: str = "pre_llm", num_layers: int | None = None) -> VLMMethod:
    """Method ``name`` with matrix ``params`` at the model's ``insertion`` point, or :class:`VLMUsageError`.

    An in-LM dropping method (an entry's ``lm_drop``) needs ``num_layers``, the language model's depth:
    its schedule is checked against it (a :class:`ScheduleError` naming the key)."""
    if insertion not in INSERTION_POINTS:
        raise VLMUsageError(f"insertion {insertion!r} is not one of {', '.join(INSERTION_POINTS)}")
    entry = TABLE.get(name)
    if entry is None:
        raise VLMUsageError(f"method {name!r} has no VLM insertion point; VLM methods: {', '.join(TABLE)}")
    only = next(iter(entry.points)) if len(entry.points) == 1 else None
    point = insertion if insertion in entry.points else only if only in FIXED_POINTS else None
    if point is None:
        raise VLMUsageError(f"method {name!r} cannot run at insertion point {insertion!r}; "
                            f"it runs at {', '.join(sorted(entry.points))}")
    unknown = set(params) - entry.params
    if unknown:
        raise VLMUsageError(f"method {name!r}: parameter(s) {sorted(unknown)} are not used in a VLM case; "
                            f"allowed: {sorted(entry.params)}")
    if point == "lm" and entry.prefill is None and entry.lm_drop is None and name != "none":
        raise VLMUsageError(f"method {name!r}: declares the lm point but brings no prefill")
    if point == "lm" and entry.lm_drop is not None:
        return _in_lm(name, entry, params, num_layers)
    if point == "vision" and name != "none" and entry.tower is None:
        raise VLMUsageError(f"method {name!r}: compression inside the Qwen2-VL vision tower is not yet supported "
                            "(random, v2drop, avit and tome are); use insertion = \"pre_llm\" on the model")
    if point != "vision" and "layers" in params:
        raise VLMUsageError(f"method {name!r}: layers applies inside the vision tower only (insertion = \"vision\")")
    keep = entry.keep(params)
    if not 0.0 < keep <= 1.0:
        raise VLMUsageError(f"method {name!r}: the kept fraction must be in (0, 1], got {keep:g}")
    options = {k: v for k, v in params.items() if k not in ("keep", "merge_factor", "sparsity", "layers")}
    return VLMMethod(name, point, keep, entry.select, options, prefill=entry.prefill, tower=entry.tower,
                     params=dict(params))


def _in_lm(name: str, entry: Entry, params: dict[str, Any], num_layers: int | None) -> VLMMethod:
    """An in-LM dropping method: its schedule (evalsuite.vlm.lm_drop) replaces the kept fraction."""
    if num_layers is None:  # never run it unpatched for want of a schedule
        raise VLMUsageError(f"method {name!r}: an in-LM schedule needs the language model's depth (num_layers)")
    from .lm_drop import parse_schedule

    try:
        schedule = parse_schedule(entry.lm_drop, params, num_layers)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    keep = 1.0
    for ratio in schedule.keep:  # what is left after the last drop layer, per image
        keep *= ratio
    return VLMMethod(name, "lm", keep, None, {}, tower=None, params=dict(params), schedule=schedule)
