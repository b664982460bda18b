"""Sandboxes that run untrusted candidate code: Docker first, a hardened local process as fallback."""
