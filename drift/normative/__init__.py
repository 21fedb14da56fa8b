"""The normative database: store, rescale/recompute, summaries and z-scores, SCT layout I/O.
May import ``drift.gate`` (drift results, policy types), ``drift.cohort``, ``drift.measure``
and ``registry``.
"""
