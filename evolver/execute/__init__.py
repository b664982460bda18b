"""Execution: stage jobs, the executors (local slots, Ray), the cascade and its host checks (gates), shipping
files to nodes, and the pristine harness copy.

May import: evolver's floor 0, sandbox, puzzles. It knows no verdicts: never judge, propose, record, run or ui.
"""
