"""The monitoring service (``cordwatch serve``): MLflow webhooks and a reconciliation poll
trigger drift checks that run exactly once per key, and a dashboard (Jinja2 pages with JSON
twins) shows every version's morphometry over time. May import ``drift.gate``,
``drift.normative``, ``drift.cohort``, ``drift.measure`` and ``registry``.
"""
