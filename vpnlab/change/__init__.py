"""Rehearsing a change: `vpnlab apply` (apply.py), what changed and with which impact
(diff.py, impacts.yaml), and the steps that make it on a running lab (steps.py)."""
