"""The run: its shared state and context, measuring a parent (baseline), judging one candidate, measuring
sides through an executor (sides), cohorts, the loop and its live display.

May import: every part but ui.
"""
