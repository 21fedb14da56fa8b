"""Frozen cohorts: manifests and verification, inference (segmenters), the segmentation
cache, and measuring a version on a cohort. May import ``drift.measure`` and ``registry``.
"""
