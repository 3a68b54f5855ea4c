"""KPI arithmetic: EMD, cosine, percentiles, the FLOP model."""

import pytest
import torch

from evalsuite.metrics.similarity import percentile, pooled_cosine, self_transport, token_emd


def test_emd_is_zero_for_identical_and_permuted_token_sets():
    torch.manual_seed(0)
    ref = torch.randn(2, 32, 16)
    ones = torch.ones(2, 32)
    assert token_emd(ref, ref, ones).max() < 1e-5
    assert token_emd(ref, ref[:, torch.randperm(32)], ones).max() < 1e-5


def test_emd_counts_merged_tokens_by_size():
    """Tokens 0..15 duplicated twice == 16 tokens of size 2: the same distribution."""
    torch.manual_seed(0)
    half = torch.randn(1, 16, 16)
    ref = torch.cat([half, half], dim=1)
    assert token_emd(ref, half, torch.full((1, 16), 2.0)).item() < 1e-4
    # the same 16 tokens with unequal sizes are a different distribution
    skewed = torch.cat([torch.full((1, 8), 3.0), torch.full((1, 8), 1.0)], dim=1)
    assert token_emd(ref, half, skewed).item() > 1e-3


def test_emd_grows_with_distance_and_batches_match_single_items():
    torch.manual_seed(0)
    ref = torch.randn(3, 32, 16)
    near = ref + 0.1 * torch.randn_like(ref)
    far = torch.randn(3, 32, 16)
    ones = torch.ones(3, 32)
    assert (token_emd(ref, near, ones) < token_emd(ref, far, ones)).all()
    batched = token_emd(ref, far, ones)
    single = torch.stack([token_emd(ref[i:i + 1], far[i:i + 1], ones[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-6)


def test_emd_with_a_kept_self_transport_equals_the_full_computation():
    g = torch.Generator().manual_seed(1)
    ref, out = torch.randn(3, 48, 16, generator=g), torch.randn(3, 20, 16, generator=g)
    sizes = torch.rand(3, 20, generator=g) + 0.5
    kept = self_transport(ref)
    assert kept.shape == (3,)
    torch.testing.assert_close(token_emd(ref, out, sizes, ref_self=kept), token_emd(ref, out, sizes))
    assert not torch.allclose(token_emd(ref, out, sizes, ref_self=kept + 0.1), token_emd(ref, out, sizes))


def test_cosine_and_percentile():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    assert pooled_cosine(a, b).tolist() == pytest.approx([1.0, -1.0])
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)


def test_out_of_memory_retries_in_smaller_batches_then_names_the_case():
    from evalsuite.engine import with_oom_retry
    from evalsuite.models.base import EncoderOutput

    calls = []

    def forward(px, limit):
        calls.append(px.shape[0])
        if px.shape[0] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return EncoderOutput(px.clone(), torch.ones(px.shape[:2]), px[:, 0], [None] * px.shape[0], 0)

    pixels = torch.arange(8.0).view(8, 1)
    out = with_oom_retry(lambda px: forward(px, limit=2), pixels, "case x")
    assert calls[:3] == [8, 4, 2] and out.tokens.flatten().tolist() == list(range(8))
    with pytest.raises(RuntimeError, match="case y: CUDA out of memory even at batch 1"):
        with_oom_retry(lambda px: forward(px, limit=0), pixels, "case y")


def test_step_timer_times_regions_on_cpu_and_rejects_unknown_modes():
    import time

    from evalsuite.patch.runner import StepTimer

    for mode in StepTimer.MODES:
        timer = StepTimer(enabled=True, mode=mode)
        for _ in range(2):
            with timer(torch.device("cpu")):
                time.sleep(0.01)
        assert 0.02 <= timer.seconds < 1.0
    off = StepTimer()
    with off(torch.device("cpu")):
        time.sleep(0.01)
    assert off.seconds == 0.0
    with pytest.raises(ValueError, match="mode must be one of"):
        StepTimer(enabled=True, mode="wall")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_timer_events_span_queued_gpu_work():
    """A region whose kernel is still running when the host leaves it is counted in full by the
    events (the host returns at once: without the events it would read about zero), and work
    queued outside the regions is not counted; events read once are reused, and still time right."""
    from evalsuite.patch.runner import StepTimer

    device = torch.device("cuda")
    torch.cuda._sleep(1_000)  # context and sleep kernel loaded
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(20_000_000)
    end.record()
    end.synchronize()
    sleep_s = start.elapsed_time(end) / 1e3  # one sleep kernel, by itself
    for mode in (*StepTimer.MODES, "events"):  # the second events timer reuses the first one's events
        timer = StepTimer(enabled=True, mode=mode)
        torch.cuda._sleep(20_000_000)  # outside: not counted
        with timer(device):
            torch.cuda._sleep(20_000_000)
        with timer(device):
            torch.cuda._sleep(20_000_000)
        assert 1.8 * sleep_s <= timer.seconds <= 2.5 * sleep_s, (mode, timer.seconds, sleep_s)
