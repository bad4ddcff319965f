"""Alarms: a condition on an endpoint's metric, evaluated every 10 s (evaluate.py: the rules,
pure; evaluator.py: the control plane's thread that applies them and records transitions)."""
