"""Evaluates cases inside one worker process.

The engine owns what a worker loads once and reuses: model adapters (one per
model id), dataset samples, and the uncompressed reference pass of each
model x dataset, which every method of that pair is compared with. It knows
nothing of pytest: the plugin hands it :class:`~evalsuite.matrix.CaseSpec`
objects and receives :class:`~evalsuite.results.CaseResult` objects.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .billing import bill_kpis
from .data.datasets import DATASETS
from .data.sample import Sample, SampleError
from .image_side import annotate_sent, case_images
from .matrix import CaseSpec, DatasetSpec, ModelSpec
from .metrics import bootstrap, flops, kpis, retrieval, similarity, text_tokens
from .metrics.latency import timed_calls
from .models import MODELS
from .models.base import EncoderOutput, ModelAdapter
from .patch.runner import StepTimer
from .plan import TokenPlan
from .results import CaseResult, SampleRecord
from .settings import EngineSettings
from .workers import thread_map

OOM_RETRIES = 3


@dataclass
class Reference:
    """The uncompressed pass of one model x dataset, shared by every method."""

    samples: list[Sample]  # loadable samples, in batch order
    errors: list[SampleRecord]  # samples that failed to load, with the reason
    batches: list[torch.Tensor]  # preprocessed pixels per batch
    outputs: list[EncoderOutput]  # unpatched model output per batch (on CPU)
    # timed forwards of the unpatched model (timing batch): None until the first case of the pair
    # times them, with no OCR process loading or reading (see Engine.evaluate)
    encoder_seconds: list[float] | None = None
    emd_self: dict[int, torch.Tensor] = field(default_factory=dict)  # per batch: OT of the tokens with themselves
    sizes: list[tuple[int, int]] = field(default_factory=list)  # originals' (width, height), for the bill


@dataclass
class Timings:
    encoder: list[float] = field(default_factory=list)
    compression: list[float] = field(default_factory=list)


class Engine:
    def __init__(self, settings: EngineSettings):
        self.settings = settings
        self._models: dict[str, ModelAdapter] = {}
        self._started: set[torch.device] = set()  # GPUs this worker has initialised
        self._datasets: dict[str, list[Sample]] = {}
        self._references: dict[tuple[str, str], Reference] = {}
        self.vlm_references: dict[tuple[str, str], object] = {}  # evalsuite.vlm.case.VLMReference per model x dataset
        self._ocr = None
        self._read_ahead: set[str] = set()  # datasets whose originals the OCR stage was sent ahead
        self.stage_seconds: dict[str, float] = {}
        self.last_artifacts: list[tuple[Sample, TokenPlan]] = []  # (sample, plan) of the last case, for reports
        self.progress: Callable[[str], None] = lambda message: None  # tells the user about a long stage
        # why a case's KPIs look like a loaded host's timing; set (by the session) to time such a case once more
        self.retime_noisy: Callable[[dict[str, float]], list[str]] | None = None
        self.interval_resamples = bootstrap.RESAMPLES  # bootstrap draws per case (thresholds.toml [intervals])

    # -- things loaded once per worker ---------------------------------------------
    def device_for(self, spec: ModelSpec) -> torch.device:
        """``auto``/``cuda``: this worker's GPU (worker index modulo device count); else CPU."""
        if self.settings.device_override:
            spec = replace(spec, device=self.settings.device_override)
        if spec.device == "cpu" or (spec.device == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise RuntimeError(f"model {spec.id} asks for device {spec.device!r} but CUDA is not available")
        if spec.device.startswith("cuda:"):
            return torch.device(spec.device)
        return self._worker_gpu()

    def _worker_gpu(self) -> torch.device:
        """This worker's GPU: worker index modulo device count."""
        return torch.device("cuda", self.settings.worker_index % torch.cuda.device_count())

    def ocr_device(self) -> str:
        """Where OCR runs: ``auto`` puts it on this worker's GPU unless the run is on the CPU."""
        wanted = self.settings.ocr_device
        if wanted == "auto":
            on_gpu = self.settings.device_override != "cpu" and torch.cuda.is_available()
            wanted = "cuda" if on_gpu else "cpu"
        if wanted == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("OCR asked to run on 'cuda' but CUDA is not available")
            return str(self._worker_gpu())
        return wanted

    def model(self, spec: ModelSpec) -> ModelAdapter:
        if spec.id not in self._models:
            device = self.device_for(spec)
            self._start_device(device)
            with self._stage("model_load"):
                factory = MODELS.get(spec.factory)
                with torch.device(device):  # parameters are created (and randomly initialised) in place
                    adapter = factory(spec.id, image_size=spec.image_size, **spec.params)
                self._models[spec.id] = adapter.to(device, getattr(torch, spec.dtype))
        return self._models[spec.id]

    def _start_device(self, device: torch.device) -> None:
        """First use of a GPU in this worker: its CUDA context and cuBLAS handle, timed as a stage of
        their own, so that ``model_load`` is what a model costs wherever it is loaded (the xdist
        scheduler plans with it: :mod:`evalsuite.scheduling`)."""
        if device.type != "cuda" or device in self._started:
            return
        with self._stage("device_init"):
            ones = torch.ones(8, 8, device=device)
            (ones @ ones).sum().item()
        self._started.add(device)

    def samples(self, spec: DatasetSpec) -> list[Sample]:
        """Raises ``DatasetUnavailable`` when the dataset's store is missing."""
        if spec.id not in self._datasets:
            loader = DATASETS.get(spec.loader)
            self._datasets[spec.id] = loader(self.settings.data_root, **spec.params)
        return self._datasets[spec.id]

    def reference(self, model_spec: ModelSpec, dataset_spec: DatasetSpec) -> Reference:
        key = (model_spec.id, dataset_spec.id)
        if key not in self._references:
            adapter = self.model(model_spec)
            samples = self.samples(dataset_spec)
            with self._stage("uncompressed_pass"):
                self._references[key] = self._reference_pass(adapter, samples)
        return self._references[key]

    def _reference_pass(self, adapter: ModelAdapter, samples: list[Sample]) -> Reference:
        loaded, errors, images = [], [], []
        for sample, image in zip(samples, thread_map(_load_or_error, samples)):
            if isinstance(image, SampleError):
                errors.append(SampleRecord(sample.sample_id, sample.doc_type, error=str(image)))
            else:
                images.append(image)
                loaded.append(sample)
        size = self.settings.batch_size
        batches = [adapter.preprocess(images[i:i + size]) for i in range(0, len(images), size)]
        outputs = [_to_cpu(with_oom_retry(adapter.reference, px, f"{adapter.name} reference pass"))
                   for px in batches]
        return Reference(loaded, errors, batches, outputs, sizes=[image.size for image in images])

    # -- one case ---------------------------------------------------------------------
    def evaluate(self, case: CaseSpec) -> CaseResult:
        self.settings = replace(self.settings, **case.settings)  # the matrix file's seed, batch, timing
        if getattr(MODELS.get(case.model.factory), "kind", None) == "api":  # a hosted VLM: no local encoder
            from .api.case import evaluate_api_case

            samples = self.samples(case.dataset)
            self.last_artifacts = [(sample, TokenPlan.identity((1, 1))) for sample in samples]  # for the reports
            return evaluate_api_case(case, samples, self.settings)
        if getattr(MODELS.get(case.model.factory), "kind", "encoder") == "vlm":  # asks a VLM; no OCR stage
            from .vlm.case import evaluate_vlm_case

            return evaluate_vlm_case(self, case, self.model(case.model))
        started = dict(self.stage_seconds)
        ocr = self.start_ocr()  # started with the run, or now
        reading_ahead = 0
        if ocr is not None and case.dataset.id not in self._read_ahead:
            # and read the dataset's originals, which every case of it needs, while the model loads
            ocr.read_ahead(self.samples(case.dataset))
            self._read_ahead.add(case.dataset.id)
            reading_ahead = len(self.samples(case.dataset))
        if case.model.id not in self._models:
            self.progress(f"loading model {case.model.id}")
        adapter = self.model(case.model)
        ref = self.reference(case.model, case.dataset)
        compressor = case.build_method(adapter.num_layers, seed=self.settings.seed)  # checks depth-bound params
        result = CaseResult(case.id, case.model.id, case.method, dict(case.params), case.dataset.id,
                            labels=list(adapter.labels))
        result.samples.extend(ref.errors)

        with self._stage("compressed_pass"):  # outputs stay on the model's device for the similarity KPIs
            sent_sizes, sent = case_images(compressor, ref.samples, ref.sizes)  # what a hosted model is sent
            outputs = ref.outputs if case.method == "none" else [
                with_oom_retry(lambda px: adapter.compressed(px, compressor), px, case.id)
                for px in (ref.batches if sent is None else self._preprocessed([s.image for s in sent], adapter))
            ]
        with self._stage("similarity"):
            records = self._sample_kpis(ref, outputs, adapter.device)
        with self._stage("compressed_pass"):  # then to the CPU, for OCR, export and the reports
            outputs = [out if out is ref_out else _to_cpu(out) for out, ref_out in zip(outputs, ref.outputs)]
        # Timed with no OCR in flight, on a GPU too: a forward at the timing batch is host-bound,
        # and OCR reads on every core slow it down (docs/performance.md, "Latency KPIs").
        # So the pool has loaded and the reads queued ahead are done before either model is timed.
        if ocr is not None:
            if reading_ahead:
                self.progress(f"OCR of the {reading_ahead} originals of {case.dataset.id} "
                              "(once per dataset; cached for later runs)")
            with self._stage("ocr"):
                ocr.wait_idle()
        if ref.encoder_seconds is None:
            with self._stage("uncompressed_pass"):
                ref.encoder_seconds = self._time(adapter.reference, ref.batches).encoder
        with self._stage("compressed_timing"):
            timing = self._case_timing(adapter, compressor, ref, case)
        if ocr is not None:
            with self._stage("ocr"):
                ocr.collect(ocr.submit(ref.samples, outputs, records,
                                       sent=None if sent is None else [s.image for s in sent]))
        if self.settings.export_dir is not None:
            with self._stage("export"):
                self._export(case, ref, outputs, sent_sizes, sent)
        text_tokens.add_sample_kpis(ref.samples, records, adapter.embed_dim, adapter.dtype.itemsize)  # text pages
        result.samples.extend(records)
        self.last_artifacts = list(zip(ref.samples, [plan for out in outputs for plan in out.plans]))
        data = self._case_data(adapter, compressor, ref.errors + records, timing, ref)
        result.kpis = kpis.case_kpis(data)
        result.intervals = {name: list(bounds) for name, bounds in bootstrap.intervals(
            data, resamples=self.interval_resamples, seed=self.settings.seed).items()}
        noisy = self.retime_noisy(result.kpis) if self.retime_noisy is not None else []
        if noisy:  # once more, the reference's forwards too: a loaded host may have slowed either
            with self._stage("compressed_timing"):
                if case.method != "none":
                    ref.encoder_seconds = self._time(adapter.reference, ref.batches).encoder
                timing = self._case_timing(adapter, compressor, ref, case)
            result.kpis = kpis.case_kpis(self._case_data(adapter, compressor, ref.errors + records, timing, ref))
        result.kpis.update(text_tokens.case_kpis(records))
        result.kpis.update(bill_kpis(ref.sizes, sent_sizes))
        annotate_sent(records, sent_sizes, sent)
        result.stage_seconds = {k: v - started.get(k, 0.0) for k, v in self.stage_seconds.items()
                                if v - started.get(k, 0.0) > 0}
        result.env = {
            "device": str(adapter.device), "dtype": str(adapter.dtype).removeprefix("torch."),
            "image_size": str(adapter.image_size), "timing_batch": str(self.settings.timing_batch),
            "timing_repeats": str(self.settings.timing_repeats), "seed": str(self.settings.seed),
            **({"gpu_name": torch.cuda.get_device_name(adapter.device)} if adapter.device.type == "cuda" else {}),
            **(ocr.version_info() if ocr is not None else {}),
            **({"retimed": "; ".join(noisy)} if noisy else {}),  # why the first timing was not kept
        }
        return result

    def _sample_kpis(self, ref: Reference, outputs: list[EncoderOutput], device: torch.device) -> list[SampleRecord]:
        """Per-sample tokens, cosine and EMD (Sinkhorn batched on ``device``: on CPU it dominates a GPU case).

        ``outputs`` are still on ``device`` in the model's dtype (the reference ones on the CPU in
        float32); both sides are compared in float32."""
        records, index = [], 0
        for batch, (ref_out, out) in enumerate(zip(ref.outputs, outputs)):
            cosines = similarity.pooled_cosine(out.pooled.cpu(), ref_out.pooled)
            if out is ref_out:  # the `none` method reuses the reference pass
                emd = torch.zeros(len(out.plans))
            else:
                ref_tokens = ref_out.patch_tokens.to(device)
                if batch not in ref.emd_self:  # the same for every method: computed once
                    ref.emd_self[batch] = similarity.self_transport(ref_tokens)
                emd = similarity.token_emd(ref_tokens, out.patch_tokens.to(device, torch.float32),
                                           out.patch_sizes.to(device, torch.float32),
                                           ref_self=ref.emd_self[batch]).cpu()
            for b, plan in enumerate(out.plans):
                sample = ref.samples[index]
                records.append(SampleRecord(sample.sample_id, sample.doc_type, kpis={
                    "tokens_before": float(plan.num_patches),
                    "tokens_after": float(plan.num_tokens),
                    "feature_cosine": float(cosines[b]),
                    "emd": float(emd[b]),
                }))
                index += 1
        if not outputs:  # no sample could be loaded: nothing to retrieve
            return records
        # retrieval among the dataset's uncompressed embeddings (evalsuite.metrics.retrieval)
        hits = retrieval.self_hits(torch.cat([out.pooled.cpu() for out in outputs]),
                                   torch.cat([ref_out.pooled for ref_out in ref.outputs]))
        for record, hit in zip(records, hits):
            record.kpis.update(hit)
        return records

    def _case_timing(self, adapter, compressor, ref: Reference, case: CaseSpec) -> Timings:
        if case.method == "none":
            return Timings(encoder=ref.encoder_seconds, compression=[0.0] * len(ref.encoder_seconds))

        def with_hook_timer(px):
            return adapter.compressed(px, compressor, StepTimer(enabled=True), plans=False)

        if adapter.device.type != "cuda":  # the timer reads the clock around each hook: microseconds of a CPU forward
            return self._time(with_hook_timer, ref.batches)
        # on a GPU, two runs: the hook timer's events and their read-back would distort the encoder time
        encoder = self._time(lambda px: adapter.compressed(px, compressor, plans=False), ref.batches).encoder
        return Timings(encoder=encoder, compression=self._time(with_hook_timer, ref.batches).compression)

    def _time(self, forward, batches: list[torch.Tensor]) -> Timings:
        """Synchronised timing of ``forward`` on the timing batch, warm-up excluded; the compression
        work each forward reported (0 unless its timer was enabled) comes along."""
        if not batches:
            return Timings()
        calls = timed_calls(forward, batches[0][: self.settings.timing_batch],
                            self.settings.timing_warmup, self.settings.timing_repeats)
        return Timings(encoder=[seconds for seconds, _ in calls],
                       compression=[out.compression_seconds for _, out in calls])

    def _case_data(self, adapter, compressor, records, timing: Timings, ref: Reference) -> kpis.CaseData:
        """What the case measured, for the KPIs declared in :mod:`evalsuite.metrics.kpis` and their
        intervals (``records``: every sample of the case, failed ones with their error)."""
        data = kpis.CaseData(
            [r for r in records if _scored(r)], failed=[r for r in records if not _scored(r)],
            series={"encoder": timing.encoder, "compression": timing.compression,
                    "reference_encoder": ref.encoder_seconds},
            given={"ideal_speedup": flops.ideal_speedup(
                compressor.schedule(adapter.num_patches, adapter.num_prefix), adapter.num_patches,
                adapter.num_prefix, adapter.embed_dim)},
        )
        return data

    def start_ocr(self):
        """This worker's OCR stage, started on first use (its processes load their models in the
        background); None when the run reads no text."""
        if self._ocr is None and self.settings.ocr_engine:
            from .ocr.stage import OcrStage

            self._ocr = OcrStage(self.settings.ocr_engine, self.settings.ocr_workers, self.ocr_device())
        return self._ocr

    # -- helpers ------------------------------------------------------------------------
    def _preprocessed(self, images, adapter: ModelAdapter) -> list[torch.Tensor]:
        size = self.settings.batch_size
        return [adapter.preprocess(images[i:i + size]) for i in range(0, len(images), size)]

    def _export(self, case: CaseSpec, ref: Reference, outputs: list[EncoderOutput], sent_sizes=None,
                sent=None) -> None:
        from .export import export_case

        export_case(self.settings.export_dir / f"{case.id}.npz", ref.samples, outputs,
                    image_size=self.model(case.model).image_size, sent_sizes=sent_sizes,
                    sent=None if sent is None else [s.image for s in sent])

    @contextmanager
    def _stage(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[name] = self.stage_seconds.get(name, 0.0) + time.perf_counter() - start

    def close(self) -> None:
        if self._ocr is not None:
            self._ocr.close()


def _scored(record: SampleRecord) -> bool:
    """A sample whose OCR alone failed still counts for its tokens and cosine (it has no OCR KPIs)."""
    return record.error is None or record.info.get("error_stage") == "ocr"


def _load_or_error(sample: Sample):
    """The sample's image, or the :class:`SampleError` that names why it cannot be used."""
    try:
        return sample.load()
    except SampleError as exc:
        return exc


def with_oom_retry(forward, pixels: torch.Tensor, what: str) -> EncoderOutput:
    """Run ``forward`` on ``pixels``; on CUDA out-of-memory retry in halves, then fail naming ``what``."""
    chunk = pixels.shape[0]
    for _ in range(OOM_RETRIES + 1):
        try:
            parts = [forward(pixels[i:i + chunk]) for i in range(0, pixels.shape[0], chunk)]
            return parts[0] if len(parts) == 1 else _concat(parts)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    raise RuntimeError(f"{what}: CUDA out of memory even at batch {chunk} "
                       f"(images {tuple(pixels.shape[-2:])}); lower batch_size or image_size in the matrix")


def _to_cpu(out: EncoderOutput) -> EncoderOutput:
    return EncoderOutput(out.tokens.float().cpu(), out.sizes.float().cpu(), out.pooled.float().cpu(),
                         out.plans, out.num_prefix, out.compression_seconds)


def _concat(parts: list[EncoderOutput]) -> EncoderOutput:
    return EncoderOutput(torch.cat([p.tokens for p in parts]), torch.cat([p.sizes for p in parts]),
                         torch.cat([p.pooled for p in parts]), [pl for p in parts for pl in p.plans],
                         parts[0].num_prefix, sum(p.compression_seconds for p in parts))
