"""Latency and memory benchmark of dense vs pruned directories on torch, ONNX Runtime and vLLM.

``run.benchmark`` is the entry point; ``config`` says what to measure, ``engines`` loads decoders,
``measure`` times them alternately and summarises, ``memory`` samples and isolates peak memory,
``vllm_child`` runs vLLM in its own process and ``outputs`` writes the table, CSV, JSON and plot.
"""
