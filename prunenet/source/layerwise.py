"""Run a checkpoint one decoder layer at a time: the model never has to fit in memory.

The pattern is llm-compressor's sequential pipeline. A skeleton of the model is built on the meta
device; only the embeddings, the final norm and the head are materialised. A first pass replaces
every decoder layer by a catcher that records the arguments the model hands it (attention masks,
rotary embeddings, per-layer-type variants as in Gemma 3) and passes the hidden states through, so
the arguments come from transformers' own forward, never from a copy of it. After that each layer
is onloaded from the checkpoint (in the compute dtype, on the compute device), every sequence's
hidden states are run through it, and it is offloaded again. The head is applied by replaying the
model's forward with the final hidden states injected at the last layer, so family details
(final norms, logit soft-capping) stay transformers' business.

Peak memory is one layer plus the hidden states of the sequences in flight.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from prunenet.arch import ArchSpec, get_arch_spec
from prunenet.progress import track
from prunenet.quantization.compressed import compressed_reader
from prunenet.source.checkpoint import Checkpoint

__all__ = ["LayerwiseModel"]


class LayerwiseModel:
    """A causal LM whose decoder layers stay on disk until :meth:`onload` brings one in."""

    def __init__(self, path: Path | str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 round_to: torch.dtype | None = None):
        """``round_to``: round every weight to this dtype before computing in ``dtype`` (to reproduce an
        export written in a narrower dtype from its source)."""
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        from prunenet.source.loaders import needs_remote_code

        self.path = Path(path)
        self.device, self.dtype, self.round_to = torch.device(device), dtype, round_to
        self.ckpt = Checkpoint(self.path)
        self._reader = compressed_reader(self.ckpt.config)  # a quantized export: decompressed per module
        self.spec: ArchSpec = get_arch_spec(self.ckpt.config.get("model_type"))
        trust = needs_remote_code(self.path)
        config = AutoConfig.from_pretrained(self.path, trust_remote_code=trust)
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust).eval()
        self.config = self.model.config
        self.num_layers = self.spec.num_layers(self.ckpt.config)
        self.layers = self.model.get_submodule(self.spec.layers_prefix)
        for name, buf in list(self.model.named_buffers()):
            if buf.device.type != "meta":  # rotary frequencies and the like: computed at init, never stored
                self._set(name, buf, cast=False)
        layer_prefix = self.spec.layers_prefix + "."
        for name in self.ckpt.weight_map:
            if not name.startswith(layer_prefix):
                self._set(name, self.ckpt.get(name))
        if getattr(config, "tie_word_embeddings", False):
            self.model.tie_weights()
        self._check_complete(self.model, skip=self.layers)

    def _set(self, name: str, value: torch.Tensor, cast: bool = True) -> None:
        from accelerate.utils import set_module_tensor_to_device

        if cast and value.is_floating_point():
            value = value.to(self.round_to).to(self.dtype) if self.round_to is not None else value.to(self.dtype)
        set_module_tensor_to_device(self.model, name, self.device, value=value)

    # ------------------------------------------------------------------ layers

    def layer_tensor_names(self, layer: int) -> list[str]:
        prefix = f"{self.spec.layers_prefix}.{layer}."
        return [n for n in self.ckpt.weight_map if n.startswith(prefix)]

    def onload(self, layer: int) -> torch.nn.Module:
        """Materialise decoder layer ``layer`` from the checkpoint on the compute device."""
        names = self.layer_tensor_names(layer)
        pairs = (self._reader.tensors(names, self.ckpt.get) if self._reader is not None
                 else ((n, self.ckpt.get(n)) for n in names))
        for name, value in pairs:
            self._set(name, value)
        if self._reader is not None and self._reader.activations():
            from prunenet.quantization.apply import quantize_inputs_

            quantized = {n.removesuffix("_scale") for n in names if n.endswith(".weight_scale")}
            quantize_inputs_(self.layers[layer], f"{self.spec.layers_prefix}.{layer}.", quantized,
                             self._reader.activations())
        self._check_complete(self.layers[layer])
        return self.layers[layer]

    def _check_complete(self, module: torch.nn.Module, skip: torch.nn.Module | None = None) -> None:
        """Every parameter came from the checkpoint (set_module_tensor_to_device rejects unknown names)."""
        skipped = {id(p) for p in skip.parameters()} if skip is not None else set()
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta" and id(p) not in skipped]
        if missing:
            from prunenet.errors import ModelSourceError

            raise ModelSourceError(f"{self.path}: the checkpoint has no tensor for {missing[0]} "
                                   f"({len(missing)} missing); it does not match its config.json")

    def offload(self, layer: int) -> None:
        """Free decoder layer ``layer`` (its parameters go back to the meta device)."""
        self.layers[layer].to("meta")

    @contextlib.contextmanager
    def layer(self, index: int) -> Iterator[torch.nn.Module]:
        try:
            yield self.onload(index)
        finally:
            self.offload(index)

    def run_layer(self, module: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = module(hidden, **kwargs)
        return out[0] if self.spec.layer_returns_tuple else out

    # ------------------------------------------------------------------ inputs and head

    @contextlib.contextmanager
    def _patched_layers(self, make_forward) -> Iterator[None]:
        originals = [layer.forward for layer in self.layers]
        for i, layer in enumerate(self.layers):
            layer.forward = make_forward(i)
        try:
            yield
        finally:
            for layer, fwd in zip(self.layers, originals, strict=True):
                layer.forward = fwd

    def _wrap(self, hidden: torch.Tensor):
        return (hidden,) if self.spec.layer_returns_tuple else hidden

    def layer_inputs(self, ids: torch.Tensor, **model_kwargs) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Hidden states entering layer 0 for ``ids`` and the keyword arguments each layer receives."""
        kwargs: list[dict[str, Any]] = [{} for _ in range(self.num_layers)]
        first: list[torch.Tensor] = []

        def catcher(i):
            def forward(hidden_states, *args, **kw):
                if args:
                    raise TypeError("decoder layers are expected to take their extra inputs as keywords")
                if i == 0:
                    first.append(hidden_states)
                kwargs[i] = kw
                return self._wrap(hidden_states)
            return forward

        with self._patched_layers(catcher), torch.no_grad():
            self.model(input_ids=ids.to(self.device), use_cache=False, **model_kwargs)
        return first[0], kwargs

    def logits(self, ids: torch.Tensor, final_hidden: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """The model's logits for ``ids`` given the hidden states leaving the last layer."""
        last = self.num_layers - 1

        def inject(i):
            def forward(hidden_states, *args, **kw):
                return self._wrap(final_hidden if i == last else hidden_states)
            return forward

        with self._patched_layers(inject), torch.no_grad():
            return self.model(input_ids=ids.to(self.device), use_cache=False, **model_kwargs).logits

    def prepare(self, rows: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[dict[str, Any]]]]:
        """Hidden states entering layer 0 and every layer's keyword arguments, for each row of ids."""
        pairs = [self.layer_inputs(r) for r in rows]
        return [h for h, _ in pairs], [kw for _, kw in pairs]

    def final_hidden(self, rows: Sequence[torch.Tensor], *, label: str | None = None,
                     edit: Callable[[int, torch.nn.Module], torch.nn.Module] | None = None) -> list[torch.Tensor]:
        """Hidden states leaving the last layer for each row of ids: one pass, one layer resident.

        ``edit(index, module)`` changes an onloaded layer before it runs (a pruning plan, healed tensors)
        and returns the module to run; ``label`` shows a progress bar over the layers."""
        hidden, kwargs = self.prepare(rows)
        layers = range(self.num_layers)
        for i in track(layers, label, total=self.num_layers) if label else layers:
            with self.layer(i) as module:
                hidden = self.forward_layer(edit(i, module) if edit else module, i, hidden, kwargs)
        return hidden

    def forward_layer(self, module: torch.nn.Module, index: int, hidden: Sequence[torch.Tensor],
                      kwargs: Sequence[list[dict[str, Any]]]) -> list[torch.Tensor]:
        """Run every row's hidden states through the onloaded layer ``index``."""
        with torch.no_grad():
            return [self.run_layer(module, h, kw[index]) for h, kw in zip(hidden, kwargs, strict=True)]
