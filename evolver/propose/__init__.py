"""Proposing: the LLM providers, the request (prompt, repository summary, literature) and the offline catalogue.

May import: evolver's floor 0 (settings, verdicts), edits, proposals. Never execute, judge, record, run or ui.
"""
