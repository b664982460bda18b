"""The record: the run's git branches and notes (git_record), the proposal store on the record branch, and the
merge message.

May import: evolver's floor 0 (settings, verdicts). Never propose, execute, judge, run or ui.
"""
