"""MLflow-backed model registry for segmentation model packages.

Knows nothing of drift: it stores packages, versions, aliases, lineage and fetches them back
byte-identical.
"""
