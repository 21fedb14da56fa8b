"""The drift gate: paired statistics, policy, verdict, the check orchestration and reports.
May import ``drift.cohort``, ``drift.measure``, ``drift.provenance`` and ``registry``.
"""
