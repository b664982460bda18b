"""The evolution engine: providers, literature, repo summary, patching, the git record and the loop."""
