"""OCR engines behind one protocol: RGB pixels in, text lines in reading order out.

``OCR_ENGINES`` maps a name to an engine class; :func:`get_engine` builds one
engine per process and name (model sessions are large and slow to load).
Engines load their models on the first :meth:`OcrEngine.read`, so listing or
configuring them costs nothing.

``rapidocr`` (the default) runs the PP-OCRv6 det/rec ONNX models bundled in the
rapidocr wheel, on onnxruntime (CPU) or, given ``device="cuda:N"``, on that GPU
through :mod:`evalsuite.ocr.onnx_torch`. Their paths are given explicitly, which
is what keeps rapidocr from ever trying its model download; a missing file is an
error, not a fetch.
"""

from __future__ import annotations

import functools
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from evalsuite.ocr.reading_order import reading_order
from evalsuite.paths import file_sha256
from evalsuite.registry import Registry

Box = tuple[tuple[float, float], ...]  # corner points (x, y) in image pixels, clockwise from top-left


class OcrLine(NamedTuple):
    box: Box
    text: str
    score: float


class OcrResult(NamedTuple):
    """What an engine read: ``lines`` in reading order and ``text``, their texts
    joined by spaces within a visual line and newlines between lines."""

    text: str
    lines: list[OcrLine]

    @classmethod
    def from_lines(cls, lines: list[OcrLine]) -> "OcrResult":
        """Put unordered ``lines`` in reading order (:mod:`evalsuite.ocr.reading_order`)."""
        order = reading_order([line.box for line in lines]) if lines else []
        ordered = [lines[i] for row in order for i in row]
        text = "\n".join(" ".join(lines[i].text for i in row) for row in order)
        return cls(text, ordered)


class OcrEngineUnavailable(RuntimeError):
    """The engine cannot run here (package or model files missing); the message says what to install."""


class OcrReadError(RuntimeError):
    """An engine failed on one image; the message says why (and its size)."""


def _reason(exc: BaseException) -> str:
    """What went wrong, from ``exc`` or the errors that caused it (rapidocr's resize error of an image
    too thin to scale has an empty message; its cause says the short side would be 0 pixels).

    >>> try:
    ...     try:
    ...         raise ValueError("resize_w or resize_h is less than or equal to 0")
    ...     except ValueError as cause:
    ...         raise KeyError() from cause
    ... except KeyError as exc:
    ...     _reason(exc)
    'KeyError: ValueError: resize_w or resize_h is less than or equal to 0'
    """
    chain, seen = [], exc
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    names = [type(e).__name__ for e in chain]
    for i, error in enumerate(chain):
        if str(error).strip():
            shown = [n for j, n in enumerate(names[:i + 1]) if j == 0 or n != names[j - 1]]
            return ": ".join(shown) + f": {str(error).strip()}"
    return f"{names[0]} (no message)"


@runtime_checkable
class OcrEngine(Protocol):
    name: str

    def version_info(self) -> dict[str, Any]:
        """Everything that changes what the engine reads: package and model versions, settings."""

    def read(self, image: np.ndarray) -> OcrResult:
        """OCR of ``image``, uint8 RGB [H, W, 3]."""


OCR_ENGINES: Registry = Registry("OCR engine", "evalsuite.ocr_engines")
DEFAULT_ENGINE = "rapidocr"


def get_engine(name: str = DEFAULT_ENGINE, **options: Any) -> OcrEngine:
    """The process-wide engine registered as ``name`` with ``options`` (e.g. ``threads=1``
    in each process of an OCR pool), built on first use."""
    return _engine(name, tuple(sorted(options.items())))


@functools.cache
def _engine(name: str, options: tuple) -> OcrEngine:
    return OCR_ENGINES.get(name)(**dict(options))


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"OCR expects uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    return image


class _ClassScores:
    """What rapidocr's CTC decoder reads of the rec model's scores [lines, steps, classes]:
    their ``argmax`` and ``max`` over the classes, reduced where the scores are. The
    classes are 18k wide: copying them to the host to reduce them there slows every read on a GPU
    (docs/performance.md)."""

    def __init__(self, scores):
        best, index = scores.max(dim=-1)  # ties: the first index, as numpy's argmax
        self.shape = tuple(scores.shape)
        self._reduced = {"max": best.cpu().numpy(), "argmax": index.cpu().numpy()}

    def _over_classes(self, what: str, axis: int):
        if axis not in (2, -1):
            raise ValueError(f"rec scores are reduced over the classes (axis 2) only, not axis {axis}")
        return self._reduced[what]

    def argmax(self, axis: int):
        return self._over_classes("argmax", axis)

    def max(self, axis: int):
        return self._over_classes("max", axis)


class _TorchSession:
    """Stands in for rapidocr's onnxruntime session of one model: the same call, with the
    graph run by :class:`~evalsuite.ocr.onnx_torch.OnnxModule` on ``device`` in float32
    (TF32 off: the reads follow onnxruntime's to float tolerance). With ``class_scores``
    it returns :class:`_ClassScores` (the rec model, for the CTC decoder)."""

    def __init__(self, session, path: Path, device: str, class_scores: bool = False):
        import torch

        from .onnx_torch import OnnxModule

        self._session = session  # answers the rest (the rec model's character list)
        self.device = torch.device(device)
        self.module = OnnxModule(path).to(self.device).eval()
        self.class_scores = class_scores

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                output = self.module(torch.from_numpy(pixels).to(self.device))
                return _ClassScores(output) if self.class_scores else output.cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul


@OCR_ENGINES.register("rapidocr")
class RapidOcrEngine:
    """rapidocr with the wheel's PP-OCRv6 small det/rec models, on onnxruntime (CPU) or,
    with ``device="cuda:N"``, on that GPU through evalsuite's ONNX interpreter
    (:mod:`evalsuite.ocr.onnx_torch`; rapidocr's own pre- and post-processing either way).
    ``runtime="torch"`` runs the interpreter on the CPU too (to check it against onnxruntime).

    ``threads`` sets onnxruntime's intra-op threads (None: its default, all
    cores); give 1 per worker when running several processes. The 180-degree
    line classifier is off: samples arrive upright (EXIF applied), and a
    misfiring flip on a degraded image would read as compression damage.
    """

    name = "rapidocr"
    MODELS = {"det": "PP-OCRv6_det_small.onnx", "rec": "PP-OCRv6_rec_small.onnx"}
    TEXT_SCORE = 0.5  # rapidocr's default: lines recognised with lower confidence are dropped

    def __init__(self, threads: int | None = None, device: str = "cpu", runtime: str | None = None):
        if device != "cpu" and not device.startswith("cuda"):
            raise ValueError(f"rapidocr runs on 'cpu' or 'cuda[:N]', not {device!r}")
        runtime = runtime or ("onnxruntime" if device == "cpu" else "torch")
        if runtime not in ("onnxruntime", "torch") or (runtime == "onnxruntime" and device != "cpu"):
            raise ValueError(f"rapidocr runtime {runtime!r} on {device!r}: onnxruntime runs on 'cpu' here, "
                             "torch on 'cpu' or 'cuda[:N]'")
        self.threads = threads
        self.device = device
        self.runtime = runtime
        self._ocr = None
        spec = importlib.util.find_spec("rapidocr")  # locates the wheel without importing cv2 & co.
        if spec is None or spec.origin is None:
            raise OcrEngineUnavailable("rapidocr is not installed: pip install rapidocr onnxruntime")
        self.model_dir = Path(spec.origin).parent / "models"
        self.model_paths = {task: self.model_dir / file for task, file in self.MODELS.items()}
        missing = [str(p) for p in self.model_paths.values() if not p.is_file()]
        if missing:
            raise OcrEngineUnavailable(f"rapidocr's bundled models are missing: {', '.join(missing)}; "
                                       "reinstall rapidocr (the wheel ships PP-OCRv6 small det/rec)")

    @functools.cached_property
    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"engine": self.name, "version": metadata.version("rapidocr"),
                                "text_score": self.TEXT_SCORE, "use_cls": False}
        if self.runtime == "onnxruntime":
            info["onnxruntime"] = metadata.version("onnxruntime")
        else:  # reads differ from onnxruntime's in the last float bits, so cached reads are its own
            from .onnx_fusion import ENABLED as fused

            info["runtime"] = (f"torch {metadata.version('torch')} {self.device.split(':')[0]} float32 "
                               + ("fused" if fused else "node by node"))
        for task, path in self.model_paths.items():
            info[f"{task}_model"] = path.name
            info[f"{task}_sha256"] = file_sha256(path)[:16]
        return info

    def version_info(self) -> dict[str, Any]:
        return dict(self._info)

    def _engine(self):
        if self._ocr is None:
            from rapidocr import RapidOCR

            threads = -1 if self.threads is None else self.threads  # -1: onnxruntime decides
            ocr = RapidOCR(params={
                "Global.log_level": "warning",
                "Global.use_cls": False,
                "Global.text_score": self.TEXT_SCORE,
                "Det.model_path": str(self.model_paths["det"]),
                "Rec.model_path": str(self.model_paths["rec"]),
                "EngineConfig.onnxruntime.intra_op_num_threads": threads,
                "EngineConfig.onnxruntime.inter_op_num_threads": threads,
            })
            if self.runtime == "torch":  # rapidocr loads its models lazily: load them, then swap their sessions
                for task, model in (("det", ocr._load_det_model()), ("rec", ocr._load_rec_model())):
                    model.session = _TorchSession(model.session, self.model_paths[task], self.device,
                                                  class_scores=task == "rec")
            self._ocr = ocr  # only once complete: a failed swap must not leave onnxruntime reading
        return self._ocr

    def load(self) -> None:
        """Load both models now (rapidocr loads each on first use; this engine's first read)."""
        ocr = self._engine()
        ocr._load_det_model()
        ocr._load_rec_model()

    def read(self, image: np.ndarray) -> OcrResult:
        bgr = np.ascontiguousarray(_check_rgb(image)[..., ::-1])  # rapidocr takes arrays as OpenCV BGR
        try:
            output = self._engine()(bgr)
        except Exception as exc:
            raise OcrReadError(f"rapidocr could not read a {image.shape[1]}x{image.shape[0]} image: "
                               f"{_reason(exc)}") from exc
        if not getattr(output, "txts", None):
            return OcrResult("", [])
        lines = [OcrLine(tuple((float(x), float(y)) for x, y in box), text, float(score))
                 for box, text, score in zip(output.boxes, output.txts, output.scores)]
        return OcrResult.from_lines(lines)


@OCR_ENGINES.register("paddleocr")
class PaddleOcrEngine:
    """PaddleOCR 3.x pipeline (optional). Needs ``paddleocr`` and ``paddlepaddle``
    installed and its models downloaded once (it fetches them on first use)."""

    name = "paddleocr"

    def __init__(self, lang: str = "en", threads: int | None = None, device: str = "cpu"):
        try:
            import paddleocr  # noqa: F401
        except ImportError as error:
            raise OcrEngineUnavailable(
                "paddleocr is not installed: pip install paddleocr paddlepaddle, then run it once with "
                "network access (or point it at local model dirs) so its detection/recognition models exist"
            ) from error
        self.lang = lang
        self.options = {"device": device.replace("cuda", "gpu")}  # paddle names devices "cpu", "gpu:N"
        if threads is not None:
            self.options["cpu_threads"] = threads
        self._ocr = None

    def version_info(self) -> dict[str, Any]:
        return {"engine": self.name, "version": metadata.version("paddleocr"),
                "paddlepaddle": metadata.version("paddlepaddle"), "lang": self.lang,
                "device": self.options["device"].split(":")[0]}

    def _engine(self):
        if self._ocr is None:
            from paddleocr import PaddleOCR

            try:
                self._ocr = PaddleOCR(lang=self.lang, use_doc_orientation_classify=False,
                                      use_doc_unwarping=False, use_textline_orientation=False, **self.options)
            except Exception as error:  # its model fetch fails in many ways offline
                raise OcrEngineUnavailable(f"paddleocr could not load its models (offline?): {error}") from error
        return self._ocr

    def read(self, image: np.ndarray) -> OcrResult:
        bgr = np.ascontiguousarray(_check_rgb(image)[..., ::-1])  # paddle takes arrays as OpenCV BGR
        lines = []
        for page in self._engine().predict(bgr):
            for poly, text, score in zip(page["rec_polys"], page["rec_texts"], page["rec_scores"]):
                if text.strip():
                    lines.append(OcrLine(tuple((float(x), float(y)) for x, y in poly), text, float(score)))
        return OcrResult.from_lines(lines)
