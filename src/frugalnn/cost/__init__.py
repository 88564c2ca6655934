"""Cost accounting: what a forward pass costs, counted and measured.

* :mod:`~frugalnn.cost.count`: parameters, FLOPs (= 2 x MACs), activation bytes
  from the dispatched ops; per-module table; what is left uncounted.
* :mod:`~frugalnn.cost.ledger`: per-example costs of input-dependent models.
* :mod:`~frugalnn.cost.latency`, :mod:`~frugalnn.cost.memory`,
  :mod:`~frugalnn.cost.machine`: measured wall-clock, peak memory, and the
  machine they were measured on.
* :mod:`~frugalnn.cost.profile`: all of it for one model (``frugalnn profile``).

Submodules are imported explicitly (``from frugalnn.cost.count import measure``)
so that importing the ledger stays cheap for the modules that only charge it.
"""
