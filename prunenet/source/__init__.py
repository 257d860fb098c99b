"""Reading the source: resolving --model, safetensors access, FFN views, the HF loader, the layer-by-layer runner."""
