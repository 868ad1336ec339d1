"""Datasets (``datasets.py``), the procedural ``shapes`` set (``shapes.py``) and batching (``loader.py``)."""
