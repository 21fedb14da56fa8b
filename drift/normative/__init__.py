"""The normative database: versioned normative morphometric databases, each linked to the
model version that made it.

A normative database holds healthy subjects' PAM50-normalised per-slice metrics in Spinal
Cord Toolbox's layout (what SCT ships as ``PAM50-normalized-metrics`` and reads in
``sct_compute_compression -normalize-hc 1``). The modules, in import order (each imports only
the ones above it):

* :mod:`drift.normative.layout`: SCT's layout on disk: reading and validating a database
  folder (participants.tsv, per-subject CSVs), SCT's per-slice rows, the synthetic database;
* :mod:`drift.normative.datasets`: the two layouts (single folder, r20250321; several
  datasets, PAM50-normalized-metrics since 2026): detecting, reading, staging, converting;
* :mod:`drift.normative.policy`: the normative policy (when a rescale may stand in for a
  recompute) and the drift result (scaling) format a rescale reads;
* :mod:`drift.normative.store`: versions in the registry (MLflow), import, list, resolve,
  export;
* :mod:`drift.normative.summary`: level means, summaries, z-scores; ``show``;
* :mod:`drift.normative.update`: the next version after a model change (rescale or recompute).

May import ``drift.gate`` (drift results, policy types), ``drift.cohort``, ``drift.measure``
and ``registry``.
"""
