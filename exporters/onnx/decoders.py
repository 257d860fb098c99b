"""Greedy decoders over the graph this exporter defines (ONNX Runtime) and its torch reference.

They live with the exporter because they speak its graph I/O (``input_ids``, ``attention_mask``,
``position_ids``, ``past_key_values.N.key|value`` -> ``logits``, ``present.N.key|value``): the
exporter validates with them and the benchmark times with them.

The graph is either the model builder's (no ``position_ids``: GroupQueryAttention derives positions
from ``attention_mask``, so it assumes no left padding) or the traced one (opt, falcon).
ONNX Runtime decoding uses IO binding: the ``present.*`` outputs stay ``OrtValue``s that are bound
as the next step's ``past_key_values.*`` inputs, so the KV cache is never copied into numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exporters.onnx.greedy import EngineError, Generation, greedy
from exporters.onnx.manifest import read_manifest

__all__ = ["TorchDecoder", "OrtDecoder"]


class TorchDecoder:
    """A transformers model (eager PyTorch) with a ``DynamicCache``."""

    name = "torch"

    def __init__(self, model) -> None:
        self.model = model
        self._cache = None

    @classmethod
    def load(cls, hf_dir: Path, *, device: str = "cpu", dtype: str = "float32") -> TorchDecoder:
        import torch

        from prunenet.source.loaders import load_causal_lm

        if (Path(hf_dir) / "model.onnx").is_file() and not list(Path(hf_dir).glob("*.safetensors")):
            raise EngineError(f"{hf_dir} is an ONNX export; the torch engine needs a Hugging Face directory")
        return cls(load_causal_lm(hf_dir, dtype=getattr(torch, dtype), device=device, check=False))

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
            return greedy(self._step, input_ids, new_tokens, keep_logits)
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
        head_size = _genai_head_size(onnx_dir)  # the builder's graphs name the head dim 'kv_cache_dim'
        self.kv_shapes = [(int(inputs[n].shape[1]), int(inputs[n].shape[3]) if isinstance(inputs[n].shape[3], int)
                           else head_size) for n in self.past_names]
        self.has_position_ids = "position_ids" in inputs
        self.dtype = np.float16 if inputs[self.past_names[0]].type == "tensor(float16)" else np.float32
        self.max_total_length = read_manifest(onnx_dir).get("max_total_length")
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
        feeds = {"input_ids": np.ascontiguousarray(ids), "attention_mask": np.ones((ids.shape[0], total), dtype=np.int64)}
        if self.has_position_ids:
            feeds["position_ids"] = np.ascontiguousarray(pos)
        logits, self._past = self._run(feeds, self._past)
        return logits.numpy()[:, -1]

    def forward(self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.has_position_ids:
            feeds["position_ids"] = position_ids
        logits, _ = self._run(feeds, self._empty_past(input_ids.shape[0]))
        return logits.numpy().astype(np.float32)

    def generate(self, input_ids: np.ndarray, new_tokens: int, *, keep_logits: bool = False) -> Generation:
        total = input_ids.shape[1] + new_tokens
        if self.max_total_length is not None and total > self.max_total_length:
            raise EngineError(f"prompt + new tokens = {total} exceeds this graph's sliding-window limit "
                              f"{self.max_total_length}")
        self._past = self._empty_past(input_ids.shape[0])
        try:
            return greedy(self._step, input_ids, new_tokens, keep_logits)
        finally:
            self._past = []

    def close(self) -> None:
        self.session = None


def _genai_head_size(onnx_dir: Path) -> int | None:
    """``head_size`` from a builder-made directory's genai_config.json (None for a traced graph)."""
    import json

    try:
        return int(json.loads((onnx_dir / "genai_config.json").read_text())["model"]["decoder"]["head_size"])
    except (OSError, ValueError, KeyError):
        return None
