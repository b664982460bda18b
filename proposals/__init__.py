"""The proposal schema; stored proposals live below this folder as <run-id>/<proposal-id>/."""
