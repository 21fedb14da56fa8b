"""cordwatch drift monitor: morphometry, levels, cohorts, comparison, gate, normative database."""

__version__ = "0.1.0"
