"""Greedy decoders with one interface for torch, ONNX Runtime and vLLM, timed the same way.

Every engine runs the same loop: one prompt pass, then one model call per new token, greedy
(argmax) sampling and a fixed number of new tokens (no early stop at end-of-text), so two models
are compared on identical work. :class:`Generation` records the model time of the prompt pass,
each decode step and each sampling step separately, as ONNX Runtime's LLaMA ``benchmark_e2e.py``
does. The same decoders serve the ONNX exporter's validation (ORT tokens and logits == torch).

ONNX Runtime decoding uses IO binding: the ``present.*`` outputs stay ``OrtValue``s that are bound
as the next step's ``past_key_values.*`` inputs, so the KV cache is never copied into numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prunenet.errors import PruneNetError
from prunenet.progress import status

__all__ = [
    "Generation", "Decoder", "TorchDecoder", "OrtDecoder", "VllmDecoder", "EngineError", "MemorySampler",
    "needs_remote_code", "onnx_dir_for", "artefact_mb", "ONNX_CACHE_FORMAT", "load_decoder", "isolated_memory",
]

log = logging.getLogger(__name__)
ONNX_CACHE_FORMAT = 3
"""Bump when the exporter changes what it writes, so stale cached graphs are rebuilt."""


class EngineError(PruneNetError):
    """An engine cannot run this directory (wrong kind of directory, or a length the graph does not support)."""


@dataclass
class Generation:
    """One greedy generation and where its time went (seconds)."""

    tokens: np.ndarray
    """New token ids, shape [batch, new_tokens]."""
    prefill_s: float
    """Model time of the prompt pass."""
    first_token_s: float
    """Prompt start to first new token chosen (time to first token)."""
    step_s: list[float]
    """Model time of each decode step (new_tokens - 1 of them)."""
    sampling_s: list[float]
    """Argmax time after each model call."""
    wall_s: float
    logits: list[np.ndarray] | None = field(default=None, repr=False)
    """With ``keep_logits``: the [batch, vocab] float32 logits that chose each new token."""


class Decoder(Protocol):
    name: str

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation: ...

    def close(self) -> None: ...


def needs_remote_code(hf_dir: Path) -> bool:
    """Our per-layer-width directories ship ``modeling_pruned.py``; nothing else gets remote code."""
    return (Path(hf_dir) / "modeling_pruned.py").is_file()


def _greedy(step, input_ids: np.ndarray, new_tokens: int, keep_logits: bool) -> Generation:
    """The shared loop: ``step(ids, pos, total)`` runs the model and returns last-position logits."""
    batch, prompt = input_ids.shape
    tokens = np.zeros((batch, new_tokens), dtype=np.int64)
    kept: list[np.ndarray] = []
    step_s: list[float] = []
    sampling_s: list[float] = []
    start = time.perf_counter()
    logits = step(input_ids, np.tile(np.arange(prompt, dtype=np.int64), (batch, 1)), prompt)
    prefill_s = time.perf_counter() - start
    for i in range(new_tokens):
        t0 = time.perf_counter()
        tokens[:, i] = logits.argmax(-1)
        if keep_logits:
            kept.append(np.asarray(logits, dtype=np.float32))
        sampling_s.append(time.perf_counter() - t0)
        if i == 0:
            first_token_s = time.perf_counter() - start
        if i == new_tokens - 1:
            break
        t1 = time.perf_counter()
        pos = np.full((batch, 1), prompt + i, dtype=np.int64)
        logits = step(tokens[:, i:i + 1], pos, prompt + i + 1)
        step_s.append(time.perf_counter() - t1)
    return Generation(tokens, prefill_s, first_token_s, step_s, sampling_s, time.perf_counter() - start,
                      kept if keep_logits else None)


class TorchDecoder:
    """A transformers model (eager PyTorch) with a ``DynamicCache``."""

    name = "torch"

    def __init__(self, model) -> None:
        self.model = model
        self._cache = None

    @classmethod
    def load(cls, hf_dir: Path, *, device: str = "cpu", dtype: str = "float32") -> TorchDecoder:
        import torch
        from transformers import AutoModelForCausalLM

        if (Path(hf_dir) / "model.onnx").is_file() and not list(Path(hf_dir).glob("*.safetensors")):
            raise EngineError(f"{hf_dir} is an ONNX export; the torch engine needs a Hugging Face directory")
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, dtype),
                                                     trust_remote_code=needs_remote_code(hf_dir))
        return cls(model.to(device).eval())

    def _step(self, ids: np.ndarray, pos: np.ndarray, total: int) -> np.ndarray:
        import torch

        device = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(ids).to(device),
                             position_ids=torch.from_numpy(pos).to(device),
                             attention_mask=torch.ones(ids.shape[0], total, dtype=torch.long, device=device),
                             past_key_values=self._cache, use_cache=True, logits_to_keep=1)
            self._cache = out.past_key_values
            return out.logits[:, -1].float().cpu().numpy()

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        """Full [batch, seq, vocab] logits of one uncached pass (padding checks)."""
        import torch

        device = self.model.device
        with torch.inference_mode():
            out = self.model(input_ids=torch.from_numpy(input_ids).to(device),
                             attention_mask=torch.from_numpy(attention_mask).to(device),
                             position_ids=torch.from_numpy(position_ids).to(device), use_cache=False)
        return out.logits.float().cpu().numpy()

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation:
        from transformers.cache_utils import DynamicCache

        self._cache = DynamicCache(config=self.model.config)
        try:
            return _greedy(self._step, input_ids, new_tokens, keep_logits)
        finally:
            self._cache = None

    def close(self) -> None:
        self.model = None


class OrtDecoder:
    """An exported decoder graph (``model.onnx``) in an ONNX Runtime session, driven with IO binding."""

    name = "onnxruntime"

    def __init__(self, onnx_dir: Path, *, device: str = "cpu", threads: int | None = None,
                 file_name: str = "model.onnx") -> None:
        import onnxruntime as ort

        onnx_dir = Path(onnx_dir)
        path = onnx_dir / file_name
        if not path.is_file():
            raise EngineError(f"{onnx_dir}: no {file_name}; export it first (prunenet export --target onnx)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._device = "cuda" if device.startswith("cuda") else "cpu"
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self._device == "cuda" else \
            ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        self.kv_shapes = [(int(inputs[n].shape[1]), int(inputs[n].shape[3])) for n in self.past_names]
        self.dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        self.max_total_length = _read_max_total_length(onnx_dir)
        self._past: list[Any] = []

    def _run(self, feeds: dict[str, np.ndarray], past: list[Any]) -> tuple[Any, list[Any]]:
        io = self.session.io_binding()
        for name, array in feeds.items():
            io.bind_cpu_input(name, array)
        for name, value in zip(self.past_names, past, strict=True):
            io.bind_ortvalue_input(name, value)
        io.bind_output("logits", self._device)
        for name in self.present_names:
            io.bind_output(name, self._device)
        self.session.run_with_iobinding(io)
        outputs = io.get_outputs()  # in binding order: logits, then presents
        return outputs[0], list(outputs[1:])

    def _empty_past(self, batch: int) -> list[Any]:
        import onnxruntime as ort

        return [ort.OrtValue.ortvalue_from_numpy(np.zeros((batch, h, 0, d), dtype=self.dtype), self._device, 0)
                for h, d in self.kv_shapes]

    def _step(self, ids: np.ndarray, pos: np.ndarray, total: int) -> np.ndarray:
        feeds = {"input_ids": np.ascontiguousarray(ids), "position_ids": np.ascontiguousarray(pos),
                 "attention_mask": np.ones((ids.shape[0], total), dtype=np.int64)}
        logits, self._past = self._run(feeds, self._past)
        return logits.numpy()[:, -1]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        logits, _ = self._run(feeds, self._empty_past(input_ids.shape[0]))
        return logits.numpy().astype(np.float32)

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation:
        total = input_ids.shape[1] + new_tokens
        if self.max_total_length is not None and total > self.max_total_length:
            raise EngineError(f"prompt + new tokens = {total} exceeds this graph's sliding-window limit "
                              f"{self.max_total_length}")
        self._past = self._empty_past(input_ids.shape[0])
        try:
            return _greedy(self._step, input_ids, new_tokens, keep_logits)
        finally:
            self._past = []

    def close(self) -> None:
        self.session = None


class MemorySampler:
    """Peak RSS of this process and its children (and device memory on CUDA), sampled in a thread."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._cuda = device.startswith("cuda")
        self._stop = threading.Event()
        self.baseline_mb = self.peak_mb = self._rss_mb()
        self.device_peak_mb: float | None = None

    def _rss_mb(self) -> float:
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except Exception:  # a child can exit between listing and reading
                continue
        return total / 2**20

    def _device_mb(self) -> float:
        import torch

        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            if self._cuda:
                self.device_peak_mb = max(self.device_peak_mb or 0.0, self._device_mb())

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())


def onnx_dir_for(hf_dir: Path, *, device: str = "cpu", validate: bool = True) -> Path:
    """``hf_dir`` itself if it holds model.onnx, else its cached export (built once, atomically, under a lock)."""
    if (hf_dir / "model.onnx").is_file():
        return hf_dir
    from filelock import FileLock

    from exporters.onnx import REPORT_FILE, export_onnx
    from exporters.staging import staged_output
    from prunenet.source.resolve import cache_dir

    root = cache_dir() / "onnx"
    root.mkdir(parents=True, exist_ok=True)
    entry = root / _fingerprint(hf_dir, device)
    with FileLock(str(entry) + ".lock"):
        if (entry / REPORT_FILE).is_file() and (entry / "model.onnx").is_file():
            return entry
        with status(f"Exporting {hf_dir.name} to ONNX (cached in {entry})"), staged_output(entry, force=True) as tmp:
            export_onnx(hf_dir, tmp, device=device, validate=validate)
    return entry


def _fingerprint(hf_dir: Path, device: str) -> str:
    """Config, plan and weight files (name, size, mtime): a re-export or re-prune gets a new entry."""
    from prunenet import __version__

    h = hashlib.sha256(f"{ONNX_CACHE_FORMAT}:{__version__}:{device}".encode())
    for name in ("config.json", "prunenet-plan.json"):
        if (hf_dir / name).is_file():
            h.update((hf_dir / name).read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{hf_dir.name}-{h.hexdigest()[:16]}"


def artefact_mb(engine: str, path: Path) -> float:
    """Size on disk of what the engine loads (the ORT graph and its data; not the unoptimized copy)."""
    files = [f for f in path.iterdir() if f.is_file()]
    if engine == "onnxruntime":
        files = [f for f in files if f.name.startswith("model.onnx")]
    else:
        files = [f for f in files if f.suffix == ".safetensors"]
    return round(sum(f.stat().st_size for f in files) / 2**20, 3)


def _read_max_total_length(onnx_dir: Path) -> int | None:
    try:
        return json.loads((onnx_dir / "prunenet-onnx.json").read_text()).get("max_total_length")
    except (OSError, ValueError):
        return None


class VllmDecoder:
    """vLLM's offline engine. It exposes no per-step hook, so decode time is derived from two calls.

    The prompt pass is timed as a 1-token generation; a full generation then costs one prompt pass
    plus ``new_tokens - 1`` decode steps, so each step is ``(full - prompt) / (new_tokens - 1)``.
    Prefix caching is off so the second call really recomputes the prompt.
    """

    name = "vllm"

    def __init__(self, hf_dir: Path, *, max_model_len: int, max_num_seqs: int, dtype: str = "auto") -> None:
        from vllm import LLM

        self.llm = LLM(model=str(hf_dir), skip_tokenizer_init=True, dtype=dtype, enforce_eager=True,
                       max_model_len=max_model_len, max_num_seqs=max_num_seqs, enable_prefix_caching=False,
                       seed=0)

    def _timed(self, prompts: list, max_tokens: int) -> tuple[float, list]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, detokenize=False)
        start = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start, outs

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=row.tolist()) for row in input_ids]
        prefill_s, _ = self._timed(prompts, 1)
        full_s, outs = self._timed(prompts, new_tokens)
        per_step = max(full_s - prefill_s, 0.0) / max(new_tokens - 1, 1)
        tokens = np.array([list(o.outputs[0].token_ids) for o in outs], dtype=np.int64)
        return Generation(tokens, prefill_s, prefill_s, [per_step] * (new_tokens - 1), [0.0] * new_tokens, full_s)

    def close(self) -> None:
        self.llm = None


def load_decoder(engine: str, path: Path, *, device: str = "cpu", threads: int | None = None) -> Decoder:
    """An in-process decoder: ``path`` is an HF directory (torch) or an ONNX export directory (onnxruntime)."""
    if engine == "onnxruntime":
        return OrtDecoder(path, device=device, threads=threads)
    if engine == "torch":
        return TorchDecoder.load(path, device=device)
    raise EngineError(f"engine {engine!r} cannot be loaded in this process")


def isolated_memory(engine: str, path: Path, *, device: str, threads: int, batch: int, prompt: int,
                    new_tokens: int, vocab: int, timeout: float = 900.0) -> dict[str, Any]:
    """Peak memory of the model served alone: a fresh process imports the engine, loads, generates once.

    In the benchmark process several models (and any on-the-fly export) share one heap, so its RSS
    cannot be attributed to a model. The child reports its peak RSS (``ru_maxrss``), its RSS after
    the engine's imports, and device memory on CUDA.
    """
    cmd = [sys.executable, "-m", "serving.bench_engines", engine, str(path), "--device", device,
           "--threads", str(threads), "--batch", str(batch), "--prompt", str(prompt), "--new-tokens",
           str(new_tokens), "--vocab", str(vocab)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
        raise EngineError(f"memory measurement of {path} ({engine}) failed (exit {proc.returncode}): {tail[-300:]}")
    return json.loads(lines[-1])


def _memory_child(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="internal: peak memory of one model (see isolated_memory)")
    parser.add_argument("engine", choices=("torch", "onnxruntime"))
    parser.add_argument("path", type=Path)
    for name in ("--threads", "--batch", "--prompt", "--new-tokens", "--vocab"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.engine == "torch":
        import torch
        import transformers  # noqa: F401  (counted in the baseline, like onnxruntime below)

        torch.set_num_threads(args.threads)
    else:
        import onnxruntime  # noqa: F401
    sampler = MemorySampler(args.device)
    baseline = sampler.baseline_mb
    decoder = load_decoder(args.engine, args.path, device=args.device, threads=args.threads)
    ids = np.random.default_rng(0).integers(3, args.vocab, size=(args.batch, args.prompt), dtype=np.int64)
    with sampler:
        decoder.generate(ids, args.new_tokens)
    peak = max(sampler.peak_mb, _high_water_mb())
    return {"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
            "model_memory_mb": round(peak - baseline, 1), "steady_rss_mb": round(sampler._rss_mb(), 1),
            "device_peak_mb": sampler.device_peak_mb}


def _high_water_mb() -> float:
    """VmHWM: the true peak RSS of this process image (``ru_maxrss`` would carry the parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    print(json.dumps(_memory_child()))
