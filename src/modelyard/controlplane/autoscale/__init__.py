"""Autoscaling: variants' capacities from target tracking, step and scheduled policies.

readings.py (metrics and alarms → what the policies read) → decide.py (the pure decision) ←
schedule.py (the bounds in force); autoscaler.py is the control-plane thread that applies them.
"""
