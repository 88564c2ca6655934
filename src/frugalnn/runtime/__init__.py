"""Where a cheaper model will run: export, runtimes, and measurement on a runtime.

- :mod:`frugalnn.runtime.deps`: the optional ``onnx`` extra, and the one-line error naming it;
- :mod:`frugalnn.runtime.graphs`: one module -> one graph file (ONNX, exported program,
  TorchScript), loaded back as a callable on a chosen runtime;
- :mod:`frugalnn.runtime.package`: an export directory (``manifest.json``, graph files,
  ``check.json``) and the runner that drives it; input-dependent models get their
  method's runner (a small loop over exported segments), found through
  :data:`frugalnn.plugins.PLUGINS` by name;
- :mod:`frugalnn.runtime.export`: :class:`ExportConfig` and :func:`export` (export, check
  against the PyTorch model on real data, write atomically);
- :mod:`frugalnn.runtime.measure`: latency and peak memory on ``eager``,
  ``onnxruntime`` or ``compile``.

This package sits above the evaluation layer and below the methods: it never
imports a method package. Importing it loads no torch; onnx and onnxruntime are
imported only when a graph is exported to or run on them.
"""
