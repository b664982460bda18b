"""Load checkpoints saved by sapientinc/HRM into :class:`hrm.model.HRM`.

The reference saves ``train_state.model.state_dict()`` of the (usually ``torch.compile``-d)
``ACTLossHead``, so its keys read ``_orig_mod.model.inner.<name>``. Our modules use the reference's
names, so conversion only strips the wrapper prefixes. The full mapping (``i`` a layer index,
``X`` either ``H`` or ``L``):

=================================================================  ===============================================  =====================================
reference key (after ``_orig_mod.`` and ``model.`` are stripped)  ours                                             shape
=================================================================  ===============================================  =====================================
``inner.embed_tokens.embedding_weight``                            same                                             [vocab, hidden]
``inner.embed_pos.embedding_weight`` (learned positions only)      same                                             [puzzle_emb_len + seq_len, hidden]
``inner.puzzle_emb.weights`` (buffer; puzzle_emb_ndim > 0)         same                                             [num_puzzle_identifiers, puzzle_emb_ndim]
``inner.lm_head.weight``                                           same                                             [vocab, hidden]
``inner.q_head.weight`` / ``inner.q_head.bias``                    same                                             [2, hidden] / [2]
``inner.X_level.layers.i.self_attn.qkv_proj.weight``               same                                             [3 * hidden, hidden]
``inner.X_level.layers.i.self_attn.o_proj.weight``                 same                                             [hidden, hidden]
``inner.X_level.layers.i.mlp.gate_up_proj.weight``                 same                                             [2 * inter, hidden]
``inner.X_level.layers.i.mlp.down_proj.weight``                    same                                             [hidden, inter]
``inner.H_init`` / ``inner.L_init`` (buffers)                      same                                             [hidden]
=================================================================  ===============================================  =====================================

Not in either checkpoint (non-persistent buffers, rebuilt at construction): the RoPE tables
``inner.rotary_emb.cos_cached/sin_cached`` and the puzzle embedding's ``local_weights/local_ids``.
``inter`` is the SwiGLU width, ``hrm.layers.swiglu_width(hidden, expansion)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrm.model import HRM

REFERENCE_PREFIXES = ("_orig_mod.", "model.")


def convert_reference_state_dict(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map a sapientinc/HRM state dict (any mix of ``_orig_mod.`` / ``model.`` prefixes) to HRM's names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in REFERENCE_PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix) :]
                    stripped = True
        if not name.startswith("inner."):
            raise KeyError(f"reference key {key!r} does not belong to the model (expected '...inner.<name>')")
        if name in out:
            raise KeyError(f"two reference keys map to {name!r}")
        out[name] = value
    return out


def load_reference_checkpoint(model: nn.Module, path: str | Path) -> HRM:
    """Load a reference checkpoint file into ``model`` (an :class:`HRM`, or a loss head with ``.model``).

    Every key must match exactly (``strict``); tensors are cast to our buffers' dtypes by ``copy_``.
    Returns the HRM that was loaded.
    """
    target = model if isinstance(model, HRM) else getattr(model, "model", None)
    if not isinstance(target, HRM):
        raise TypeError(f"expected an HRM or a module with an HRM at .model, got {type(model).__name__}")
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(raw).__name__}")
    target.load_state_dict(convert_reference_state_dict(raw), strict=True)
    return target
