"""Adapters to other tools; each module imports its tool only when used (``mteb``)."""
