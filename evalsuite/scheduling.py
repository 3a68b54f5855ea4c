"""Which pytest-xdist worker runs which case: work stealing that knows what a worker has loaded.

xdist's ``--dist worksteal`` hands out equal *counts* of tests in collection
order and lets an idle worker steal the back half of the longest queue. On the
GPU gate that split the cases by model (the collection is model-major), left
the worker with the lighter model idle, and then made it steal two DINOv2
cases at the very end: it loaded DINOv2 and repeated two reference passes,
several times the work of the cases it ran (docs/performance.md, "GPU gate").

Here a case costs its own work (compressed pass, similarity, timing, OCR), and
a worker pays a *setup* the first time it needs a model (the load) and a model
x dataset (the uncompressed reference pass). Costs are the seconds measured on
the last run of the same cases (kept in the pytest cache, ``.pytest_cache``,
under :data:`CACHE_KEY`); a case never measured counts :data:`DEFAULT_COSTS`.

* :func:`plan` assigns whole model x dataset groups, largest first, to the
  worker that would finish them earliest (setup included), then moves single
  cases off the busiest worker while that shortens the run.
* :func:`steal` lets an idle worker take cases from the worker with the most
  work left, cheapest for it first (groups it already holds), only while that
  shortens the run; otherwise it stops, as xdist's idle workers do.

:class:`AffinityScheduling` is the thin xdist side. Non-case tests cost one
unit each and need no setup.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

CACHE_KEY = "evalsuite/costs"
# Seconds assumed for what no earlier run measured, about the GPU gate's: a case, a model load
# (with its library's imports), a reference pass.
DEFAULT_COSTS = {"case": 1.0, "model": 3.0, "reference": 1.0}


@dataclass(frozen=True)
class Item:
    """One collected test: its index in the collection, and for an evaluation case its model
    and model x dataset group (both None for any other test)."""

    index: int
    case_id: str | None = None
    model: str | None = None
    group: str | None = None  # "model/dataset"


@dataclass
class Costs:
    """Measured seconds per case (its own work), per model load and per reference pass."""

    case: dict[str, float] = field(default_factory=dict)
    model: dict[str, float] = field(default_factory=dict)
    reference: dict[str, float] = field(default_factory=dict)

    def of(self, item: Item) -> float:
        return self.case.get(item.case_id, DEFAULT_COSTS["case"])

    def setup(self, item: Item, models: set[str], groups: set[str]) -> float:
        """What a worker holding ``models`` and ``groups`` pays before it can run ``item``."""
        cost = 0.0
        if item.model is not None and item.model not in models:
            cost += self.model.get(item.model, DEFAULT_COSTS["model"])
        if item.group is not None and item.group not in groups:
            cost += self.reference.get(item.group, DEFAULT_COSTS["reference"])
        return cost

    def to_json(self) -> dict:
        return {"case": self.case, "model": self.model, "reference": self.reference}

    @classmethod
    def from_json(cls, raw) -> "Costs":
        if not isinstance(raw, dict):
            return cls()
        return cls(*({str(k): float(v) for k, v in (raw.get(part) or {}).items()}
                     for part in ("case", "model", "reference")))

    def updated(self, other: "Costs") -> "Costs":
        """These costs with ``other``'s measurements taking precedence."""
        return Costs({**self.case, **other.case}, {**self.model, **other.model},
                     {**self.reference, **other.reference})


class Lane:
    """One worker: what it has loaded (from cases it ran), its queue, and the estimated seconds
    of that queue, each model load and reference pass it still needs counted once."""

    def __init__(self, costs: Costs):
        self.costs = costs
        self.loaded_models: set[str] = set()
        self.loaded_groups: set[str] = set()
        self.queue: list[Item] = []
        self.load = 0.0
        self._models: dict[str, int] = {}  # queued cases per model ...
        self._groups: dict[str, int] = {}  # ... and per model x dataset

    def _setups(self, item: Item) -> float:
        """Setup ``item`` adds to this lane: what is neither loaded nor needed by a queued case."""
        models = self.loaded_models | {m for m, n in self._models.items() if n}
        groups = self.loaded_groups | {g for g, n in self._groups.items() if n}
        return self.costs.setup(item, models, groups)

    def cost_of(self, item: Item) -> float:
        """Seconds ``item`` would add to this lane."""
        return self._setups(item) + self.costs.of(item)

    def push(self, item: Item) -> None:
        self.load += self.cost_of(item)
        self.queue.append(item)
        self._count(item, +1)

    def pop(self, item: Item) -> None:
        self.queue.remove(item)
        self._count(item, -1)
        self.load -= self.cost_of(item)  # refunds a setup no other queued case needs

    def ran(self, item: Item) -> None:
        """``item`` finished here: its model and reference pass stay loaded."""
        if item in self.queue:
            self.pop(item)
        for loaded, key in ((self.loaded_models, item.model), (self.loaded_groups, item.group)):
            if key is not None:
                loaded.add(key)

    def reset(self, items: Sequence[Item]) -> None:
        """The queue is ``items`` (what xdist says the worker still has)."""
        self.queue, self.load, self._models, self._groups = [], 0.0, {}, {}
        for item in items:
            self.push(item)

    def copy(self) -> "Lane":
        lane = Lane(self.costs)
        lane.loaded_models, lane.loaded_groups = set(self.loaded_models), set(self.loaded_groups)
        lane.reset(self.queue)
        return lane

    def _count(self, item: Item, step: int) -> None:
        for counts, key in ((self._models, item.model), (self._groups, item.group)):
            if key is not None:
                counts[key] = counts.get(key, 0) + step


def plan(items: Sequence[Item], lanes: Sequence[Lane]) -> dict[int, list[Item]]:
    """Append ``items`` to the ``lanes``' queues (see the module docstring); returns the items
    each lane got, by position in ``lanes``, in the order it should run them: group by group,
    collection order within a group."""
    costs = lanes[0].costs
    groups: dict[object, list[Item]] = {}
    for item in items:  # a non-case test is a group of its own
        groups.setdefault(item.group if item.group is not None else ("test", item.index), []).append(item)
    for group in sorted(groups.values(), key=lambda g: -sum(costs.of(i) for i in g)):
        lane = min(lanes, key=lambda lane: lane.load + lane.cost_of(group[0]) + sum(costs.of(i) for i in group[1:]))
        for item in group:
            lane.push(item)
    new = {id(item) for item in items}
    _rebalance(lanes, new)
    return {k: [i for i in lane.queue if id(i) in new] for k, lane in enumerate(lanes)}


def _rebalance(lanes: Sequence[Lane], new: set[int]) -> None:
    """Move single newly planned cases from the busiest lane to the idlest while that lowers the
    busiest lane's finish time: the taker pays any setup, the giver gets back any it no longer needs."""
    for _ in range(len(new)):
        busiest, idlest = max(lanes, key=lambda lane: lane.load), min(lanes, key=lambda lane: lane.load)
        movable = [i for i in reversed(busiest.queue) if id(i) in new]
        if busiest is idlest or not movable:
            return
        item = min(movable, key=idlest.cost_of)  # the cheapest for the taker, the latest on ties
        if idlest.load + idlest.cost_of(item) >= busiest.load:
            return
        busiest.pop(item)
        idlest.push(item)
        _move_to_group(idlest, item)


def _move_to_group(lane: Lane, item: Item) -> None:
    """Queue ``item`` next to the lane's other cases of its group (it was pushed last)."""
    same = [k for k, i in enumerate(lane.queue[:-1]) if item.group is not None and i.group == item.group]
    if same:
        lane.queue.insert(same[-1] + 1, lane.queue.pop())


def steal(thief: Lane, victim: Lane, keep: int) -> list[Item]:
    """Cases of ``victim``'s queue (past its first ``keep``) that ``thief`` should run instead:
    cheapest for the thief first (no setup), the victim's latest on ties, taken while the
    thief would finish before the victim does now."""
    trial, giver, taken = thief.copy(), victim.copy(), []
    candidates = list(reversed(victim.queue[keep:]))
    while candidates:
        item = min(candidates, key=trial.cost_of)
        if trial.load + trial.cost_of(item) >= giver.load:
            break
        candidates.remove(item)
        giver.pop(item)
        trial.push(item)
        taken.append(item)
    return taken


def _xdist_base():
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling


class AffinityScheduling(_xdist_base()):
    """xdist's work-stealing scheduler with :func:`plan` and :func:`steal` deciding who runs what.

    ``describe(collection)`` turns the collected node ids into :class:`Item` objects. xdist's
    bookkeeping (``node2pending``, ``pending``, the one steal request in flight) is kept; only
    which tests go where is decided here.
    """

    def __init__(self, config, log, describe: Callable[[list[str]], list[Item]], costs: Costs):
        super().__init__(config, log)
        self.describe, self.costs = describe, costs
        self.lanes: dict[object, Lane] = {}
        self.items: list[Item] = []

    def add_node(self, node) -> None:
        super().add_node(node)
        self.lanes[node] = Lane(self.costs)

    def schedule(self) -> None:
        if self.collection is None and self.node2collection:
            self.items = self.describe(next(iter(self.node2collection.values())))
        super().schedule()

    def mark_test_complete(self, node, item_index: int, duration: float | None = None) -> None:
        self.lanes[node].ran(self.items[item_index])
        super().mark_test_complete(node, item_index, duration)

    def check_schedule(self) -> None:
        from xdist.scheduler.worksteal import MIN_PENDING

        up = {node: pending for node, pending in self.node2pending.items() if not node.shutting_down}
        idle = [node for node, pending in up.items() if len(pending) < MIN_PENDING]
        if not idle:
            return
        for node, pending in up.items():  # a steal may have taken cases back: follow xdist's queues
            self.lanes[node].reset([self.items[i] for i in pending])
        if self.pending:
            planned = plan([self.items[i] for i in self.pending], [self.lanes[node] for node in idle])
            self.pending.clear()
            for k, node in enumerate(idle):
                indices = [item.index for item in planned[k]]
                if indices:
                    self.node2pending[node].extend(indices)
                    node.send_runtest_some(indices)
            return
        if self.steal_requested_from_node is not None:  # one steal request at a time
            return
        for node in idle:
            victims = [n for n in up if n is not node and len(up[n]) > MIN_PENDING]
            if victims:
                victim = max(victims, key=lambda n: self.lanes[n].load)
                taken = steal(self.lanes[node], self.lanes[victim], MIN_PENDING)
                if taken:
                    victim.send_steal([item.index for item in taken])
                    self.steal_requested_from_node = victim
                    return
        for node in idle:  # nothing worth taking: let them run their last case and stop (xdist's rule)
            node.shutdown()
