"""Rehearsing a change: `vpnlab apply` (apply.py), what changed and with which impact
(diff.py, impacts.yaml), the steps that make it on a running lab (steps.py), and
point-to-site's part: the PKI kept and grown, the sessions a change ends (p2s.py)."""
