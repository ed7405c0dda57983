"""Simulated Velro traffic for `manage.py velro_demo`: plan, run, report."""
