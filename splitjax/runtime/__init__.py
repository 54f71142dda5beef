"""Drivers that execute the scheduling policies: the real-time loop and its executors."""
