"""The validation cascade's stages, run as a process inside the sandbox against a candidate's hrm/."""
