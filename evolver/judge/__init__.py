"""Judgement: seed pairs and their decisions (pairs), the promotion rules (promotion), the learning-curve early
stop, screening and the fidelity of the cheap stages.

May import: evolver's floor 0 and record. It knows no executors: never execute, propose, run or ui.
"""
