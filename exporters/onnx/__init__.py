"""The ONNX target: a KV-cache decoder graph in optimum's layout, and the decoders that run it.

``export`` is the entry point (trace, save, optimize, copy side files, validate, write the report);
``layout``/``trace`` define the graph's I/O, ``optimize`` post-processes and saves it (external data
above 1 GiB), ``validate`` proves it against torch with the ``decoders`` and their shared ``greedy``
loop, ``manifest`` is the report file and ``cache`` keeps exports of HF directories for the bench.
"""
