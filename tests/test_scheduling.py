"""The xdist scheduler plans cases by model and measured cost, and steals only what shortens the run."""

from types import SimpleNamespace

from xdist.remote import Producer

from evalsuite.scheduling import AffinityScheduling, Costs, Item, Lane, plan, steal

DATASETS = ("samples", "sroie", "photos")


def gate_items(methods: int = 9) -> list[Item]:
    """The GPU gate's shape in collection order (model, then method, then dataset)."""
    items = []
    for model in ("dinov2", "vit"):
        for method in range(methods):
            for dataset in DATASETS:
                items.append(Item(len(items), f"{model}-m{method}-{dataset}", model, f"{model}/{dataset}"))
    return items


def gate_costs(items: list[Item]) -> Costs:
    """Roughly the two-H200 full-store run: DINOv2 at 518 px is the heavy model, SROIE the big dataset."""
    per_case = {("dinov2", "sroie"): 2.5, ("dinov2", "photos"): 1.2, ("dinov2", "samples"): 0.9,
                ("vit", "sroie"): 1.0, ("vit", "photos"): 0.7, ("vit", "samples"): 0.6}
    return Costs(case={i.case_id: per_case[tuple(i.group.split("/"))] for i in items},
                 model={"dinov2": 5.0, "vit": 3.0},
                 reference={f"{m}/{d}": (3.0 if d == "sroie" else 1.0) for m in ("dinov2", "vit") for d in DATASETS})


def contiguous_split(items: list[Item], costs: Costs, workers: int) -> list[Lane]:
    """xdist's initial worksteal split: equal counts in collection order."""
    lanes, size = [Lane(costs) for _ in range(workers)], -(-len(items) // workers)
    for k, item in enumerate(items):
        lanes[k // size].push(item)
    return lanes


def makespan(lanes) -> float:
    return max(lane.load for lane in lanes)


def test_lane_counts_each_model_load_and_reference_pass_once_and_refunds_them():
    costs = Costs(case={"a": 1.0, "b": 2.0}, model={"m": 5.0}, reference={"m/x": 3.0})
    lane = Lane(costs)
    a, b = Item(0, "a", "m", "m/x"), Item(1, "b", "m", "m/x")
    lane.push(a)
    assert lane.load == 5.0 + 3.0 + 1.0
    lane.push(b)
    assert lane.load == 11.0  # the second case of the group needs no setup
    lane.pop(a)
    assert lane.load == 10.0  # b still needs the model and the reference pass
    lane.pop(b)
    assert lane.load == 0.0
    lane.push(a)
    lane.ran(a)
    assert lane.load == 0.0 and lane.cost_of(b) == 2.0  # what a case loaded stays loaded


def test_plan_keeps_groups_whole_and_balances_unmeasured_cases():
    items = gate_items()
    lanes = [Lane(Costs()) for _ in range(2)]
    planned = plan(items, lanes)
    assert sorted(i.index for k in planned for i in planned[k]) == list(range(len(items)))
    split = [g for g in {i.group for i in items} if all(any(i.group == g for i in lane.queue) for lane in lanes)]
    assert len(split) <= 1  # at most one model x dataset group runs on both workers
    assert abs(lanes[0].load - lanes[1].load) <= 5.0  # within one case plus a model load
    for lane in lanes:  # each worker runs its cases group by group
        groups = [i.group for i in lane.queue]
        assert all(groups.index(g) + groups.count(g) - 1 == len(groups) - 1 - groups[::-1].index(g) for g in groups)


def test_plan_with_measured_costs_beats_xdists_equal_counts():
    items = gate_items()
    costs = gate_costs(items)
    lanes = [Lane(costs) for _ in range(2)]
    plan(items, lanes)
    baseline = makespan(contiguous_split(items, costs, 2))
    whole = sum(costs.of(i) for i in items) + 8.0 + 12.0  # every setup paid once
    assert makespan(lanes) < baseline
    assert makespan(lanes) <= whole / 2 + 6.0  # near an even split; a second worker pays at most one load
    for workers in (1, 3, 4):  # any worker count: every case planned exactly once
        more = [Lane(costs) for _ in range(workers)]
        planned = plan(items, more)
        assert sorted(i.index for k in planned for i in planned[k]) == list(range(len(items)))


def test_steal_prefers_cases_the_thief_holds_and_skips_a_load_that_does_not_pay():
    costs = Costs(model={"a": 10.0, "b": 1.0})
    victim, thief = Lane(costs), Lane(costs)
    a_cases = [Item(k, f"a{k}", "a", "a/x") for k in range(4)]
    b_cases = [Item(4 + k, f"b{k}", "b", "b/x") for k in range(4)]
    for item in a_cases + b_cases:
        victim.push(item)
    thief.loaded_models, thief.loaded_groups = {"a"}, {"a/x"}
    taken = steal(thief, victim, keep=2)
    assert taken and all(i.model == "a" for i in taken[:2])  # no setup for the thief: first
    assert set(taken) <= set(victim.queue[2:])

    late = Lane(costs)  # the gate's tail: two short cases of a model the idle worker lacks
    late.loaded_models, late.loaded_groups = {"a"}, {"a/x"}
    for item in a_cases:
        late.push(item)
    assert steal(Lane(costs), late, keep=2) == []  # a 10 s load for 2 s of cases: not worth it


def test_costs_survive_the_cache_and_newer_measurements_win():
    old = Costs(case={"a": 1.0, "b": 2.0}, model={"m": 5.0})
    new = Costs.from_json(old.updated(Costs(case={"b": 3.0}, reference={"m/x": 4.0})).to_json())
    assert new.case == {"a": 1.0, "b": 3.0} and new.model == {"m": 5.0} and new.reference == {"m/x": 4.0}
    assert Costs.from_json(None).case == {} and Costs.from_json("garbage").model == {}


class FakeNode:
    """The part of xdist's WorkerController the scheduler talks to."""

    def __init__(self, name: str):
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[int] = []
        self.steal_requests: list[list[int]] = []

    def send_runtest_some(self, indices):
        self.sent.extend(indices)

    def send_steal(self, indices):
        self.steal_requests.append(list(indices))

    def shutdown(self):
        self.shutting_down = True


def test_xdist_scheduler_plans_steals_and_stops_idle_workers():
    items = gate_items(methods=3)
    costs = gate_costs(items)
    config = SimpleNamespace(getvalue=lambda name: {"tx": ["2*popen"]}[name])
    sched = AffinityScheduling(config, Producer("test", enabled=False), lambda collection: items, costs)
    nodes = [FakeNode("gw0"), FakeNode("gw1")]
    collection = [f"cases/test_compression.py::test_case[{i.case_id}]" for i in items]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    assert sorted(nodes[0].sent + nodes[1].sent) == list(range(len(items)))
    shared = {items[i].group for i in nodes[0].sent} & {items[i].group for i in nodes[1].sent}
    assert len(shared) <= 1  # at most one reference pass is computed on both workers

    fast, slow = nodes  # gw0 runs through its queue; gw1 has not finished a case yet
    for index in list(fast.sent):
        sched.mark_test_complete(fast, index)
    if slow.steal_requests:  # gw1's queue was worth splitting: give back what was asked
        asked = slow.steal_requests[-1]
        sched.remove_pending_tests_from_node(slow, asked)
        assert set(asked) <= set(fast.sent)  # the stolen cases went to the idle worker
        for index in asked:
            sched.mark_test_complete(fast, index)
    assert fast.shutting_down  # nothing left worth taking: it may stop
    for index in list(sched.node2pending[slow]):
        sched.mark_test_complete(slow, index)
    assert sched.tests_finished
