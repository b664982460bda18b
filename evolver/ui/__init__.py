"""The interface: the command line (cli, run_cmd), review of waiting winners, and the report.

May import: every part.
"""
