"""The measuring instrument: NIfTI reading, morphometry, levels, the PAM50 table, SCT CSV
read/write and phantoms. Pure: arrays and voxel sizes in, arrays/tables out; imports only
``registry.errors``/``registry.fsutil`` helpers, never MLflow or the CLI.
"""
