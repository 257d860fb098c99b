"""Serving and measuring exported directories: vLLM (``serving.vllm``) and the benchmark (``serving.bench``).

It consumes what ``exporters`` writes and may import it and ``prunenet``; neither imports this package.
"""
