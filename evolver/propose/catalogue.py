"""Literature-grounded changes to HRM, each a complete proposal the offline provider can hand out.

Every entry is a real edit against the names in `hrm/` (checked by tests/evolver/propose/test_offline_catalogue.py:
each entry validates with `load_proposal` and applies cleanly with `edits.engine.apply_edits`).

Where to edit a knob: the presets in `hrm/presets.py` pass most `ModelConfig`/`TrainConfig` values
explicitly, so changing a dataclass default in `hrm/config.py` would not reach them. Knobs the presets
set are edited in the preset builders (narrow `search_replace` edits, so entries compose with earlier
merged changes); knobs they leave at the default (`ema_decay`, `grad_clip_norm`) are changed with
`set_value` on the dataclass field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

TRM = ("2510.04871", "Less is More: Recursive Reasoning with Tiny Networks")
HRM = ("2506.21734", "Hierarchical Reasoning Model")


@dataclass(frozen=True)
class CatalogueEntry:
    id: str
    title: str
    rationale: str
    hypothesis: str
    citations: tuple[tuple[str, str, str], ...]  # (arxiv_id, title, claim)
    edits: tuple[dict[str, Any], ...]
    direction: str = "increase"
    size: float = 0.02
    confidence: str = "low"
    risk: str = "low"
    failure_modes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "rationale": self.rationale,
            "hypothesis": self.hypothesis,
            "citations": [{"arxiv_id": a, "title": t, "claim": c} for a, t, c in self.citations],
            "edits": [dict(e) for e in self.edits],
            "expected_effect": {
                "metric": "exact_accuracy",
                "direction": self.direction,
                "size": self.size,
                "confidence": self.confidence,
            },
            "risk": {"level": self.risk, "failure_modes": list(self.failure_modes)},
            "provenance": {"provider": "offline", "model": "catalogue", "prompt_hash": None, "parent_commit": None},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _sr(file: str, search: str, replace: str) -> dict[str, Any]:
    return {"op": "search_replace", "file": file, "search": search, "replace": replace}


def _set(file: str, target: str, value: str) -> dict[str, Any]:
    return {"op": "set_value", "file": file, "target": target, "value": value}


PRESETS = "hrm/presets.py"
CONFIG = "hrm/config.py"
MODEL = "hrm/model.py"
LAYERS = "hrm/layers.py"

FULL_BACKPROP_FORWARD = '''\
def forward(
    self, carry: HRMInnerCarry, batch: dict[str, torch.Tensor]
) -> tuple[HRMInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One segment. Returns (detached new carry, logits [B, L, V], (q_halt [B], q_continue [B]) in fp32).

    The first H_cycles - 1 recursions (L_cycles L-steps then one H-step each) run without grad; the last
    whole recursion is backpropagated through, instead of only its final L and H steps (TRM, 2510.04871).
    """
    cos_sin = self.rotary_emb() if self.config.pos_encodings == "rope" else None
    x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    cfg = self.config

    z_H, z_L = carry.z_H, carry.z_L
    with torch.no_grad():
        for _h_step in range(cfg.H_cycles - 1):
            for _l_step in range(cfg.L_cycles):
                z_L = self.L_level(z_L, z_H + x, cos_sin)
            z_H = self.H_level(z_H, z_L, cos_sin)

    for _l_step in range(cfg.L_cycles):
        z_L = self.L_level(z_L, z_H + x, cos_sin)
    z_H = self.H_level(z_H, z_L, cos_sin)

    new_carry = HRMInnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
    logits = self.lm_head(z_H)[:, self.puzzle_emb_len :]
    q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
    return new_carry, logits, (q_logits[..., 0], q_logits[..., 1])
'''

HALT_ONLY_FORWARD = '''\
def forward(
    self, carry: HRMCarry, batch: dict[str, torch.Tensor]
) -> tuple[HRMCarry, dict[str, torch.Tensor]]:
    """One ACT segment with TRM-style halting (2510.04871): a row halts in training when q_halt > 0.

    No Q-continue target and no extra no-grad forward pass: only the halt head is trained (against
    whether the answer is exactly right), which also saves one inner forward per training segment.
    """
    halted_in = carry.halted
    inner_carry = self.inner.reset_carry(halted_in, carry.inner_carry)
    steps = torch.where(halted_in, 0, carry.steps)
    current_data = {
        k: torch.where(halted_in.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
        for k, v in carry.current_data.items()
    }

    inner_carry, logits, (q_halt, q_continue) = self.inner(inner_carry, current_data)
    outputs: dict[str, torch.Tensor] = {
        "logits": logits,
        "q_halt_logits": q_halt,
        "q_continue_logits": q_continue,
    }

    with torch.no_grad():
        steps = steps + 1
        halted = steps >= self.config.halt_max_steps
        if self.training and self.config.halt_max_steps > 1:
            halted = halted | (q_halt > 0)
            explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
            min_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
            halted = halted & (steps >= min_steps)

    return HRMCarry(inner_carry, steps, halted, current_data), outputs
'''

MLP_T_BLOCK = '''\
class HRMBlock(nn.Module):
    """Post-norm block: h = norm(h + mix(h)); h = norm(h + mlp(h)).

    The token mixer is self-attention, or with ``config.mlp_t`` an MLP over the sequence (TRM, 2510.04871,
    MLP-Mixer style): the state is transposed to [B, hidden, L], a SwiGLU mixes the L = seq_len +
    puzzle_emb_len positions, and the result is transposed back. Its weights have the sequence length built
    in, so ``config.seq_len`` must be the dataset's (the trainer takes it from the dataset before building
    the model) and every input must have exactly L positions.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.use_mlp_t = bool(config.mlp_t)
        if self.use_mlp_t:
            puzzle_emb_len = -(config.puzzle_emb_ndim // -config.hidden_size)  # as HRMInner computes it
            self.mix_len = config.seq_len + puzzle_emb_len
            # Inner width by the channel MLP's rule (expansion * L * 2/3) rounded up to 16, not 256: 256 would
            # make the mixer of a 17-position grid 15x wider than its input and several times slower.
            self.mlp_t = SwiGLU(hidden_size=self.mix_len, expansion=config.expansion, multiple=16)
        else:
            self.self_attn = Attention(
                hidden_size=config.hidden_size,
                head_dim=config.hidden_size // config.num_heads,
                num_heads=config.num_heads,
                num_key_value_heads=config.num_heads,
                causal=False,
                attn_impl=config.attn_impl,
            )
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def mix(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        """The token-mixing sublayer's output (a fresh tensor), before the residual and the norm."""
        if not self.use_mlp_t:
            return self.self_attn(cos_sin, hidden_states)
        if hidden_states.shape[1] != self.mix_len:
            raise ValueError(
                f"mlp_t block built for {self.mix_len} positions (seq_len + puzzle_emb_len), "
                f"got {hidden_states.shape[1]}"
            )
        return self.mlp_t(hidden_states.transpose(1, 2)).transpose(1, 2).contiguous()

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            hidden_states = rms_norm(hidden_states + self.mix(cos_sin, hidden_states), self.norm_eps)
            return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)
        # Outside autograd (most of a segment's updates, and the Q-target forward) the sublayer outputs are
        # fresh tensors: add the residual and normalise in place. Same values (a + b == b + a in IEEE).
        hidden_states = rms_norm_(self.mix(cos_sin, hidden_states).add_(hidden_states), self.norm_eps)
        return rms_norm_(self.mlp(hidden_states).add_(hidden_states), self.norm_eps)
'''

SWIGLU_WIDTH = '''\
def swiglu_width(hidden_size: int, expansion: float, multiple: int = 256) -> int:
    """Inner width of the SwiGLU: round(expansion * hidden * 2/3) rounded up to a multiple of ``multiple``."""
    return find_multiple(round(expansion * hidden_size * 2 / 3), multiple)
'''

SWIGLU_INIT = '''\
def __init__(self, hidden_size: int, expansion: float, multiple: int = 256) -> None:
    super().__init__()
    inter = swiglu_width(hidden_size, expansion, multiple)
    self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
    self.down_proj = CastedLinear(inter, hidden_size, bias=False)
'''

CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        id="trm-full-backprop-last-recursion",
        title="Backpropagate through the whole last recursion",
        rationale=(
            "HRM differentiates only the final L step and H step of a segment (the 1-step gradient). TRM found "
            "that backpropagating through the full last recursion (all L steps plus the H step) was its single "
            "largest gain on Sudoku-Extreme (56.5% -> 87.4% in its ablation)."
        ),
        hypothesis="Exact accuracy rises at equal wall-clock budget despite slower steps.",
        citations=(
            (*TRM, "Full backprop through the last recursion beats the 1-step gradient (Table 1)."),
            ("1909.01377", "Deep Equilibrium Models", "The 1-step gradient is an approximation of the implicit gradient."),
        ),
        edits=({"op": "replace_function", "file": MODEL, "target": "HRMInner.forward", "code": FULL_BACKPROP_FORWARD},),
        size=0.05,
        confidence="medium",
        risk="medium",
        failure_modes=("more memory and time per step", "fewer steps fit in the budget"),
    ),
    CatalogueEntry(
        id="trm-ema-weights",
        title="Evaluate with an exponential moving average of the weights",
        rationale=(
            "TRM keeps an EMA of the weights and reports that removing it costs several points; EMA weights "
            "smooth the noisy late updates of small-data training. A decay of 0.99 suits short CPU budgets "
            "(TRM used 0.999 over far longer runs)."
        ),
        hypothesis="Exact accuracy of the EMA weights exceeds that of the raw weights at the same step.",
        citations=(
            (*TRM, "Removing the EMA drops Sudoku-Extreme accuracy from 87.4% to 79.9%."),
            (
                "1703.01780",
                "Mean teachers are better role models: Weight-averaged consistency targets improve "
                "semi-supervised deep learning results",
                "An EMA of weights is a better model than the raw weights.",
            ),
        ),
        edits=(_set(CONFIG, "TrainConfig.ema_decay", "0.99"),),
        failure_modes=("EMA lags behind a fast-improving model in very short runs",),
    ),
    CatalogueEntry(
        id="more-l-cycles",
        title="Three low-level cycles per high-level step",
        rationale=(
            "TRM recurses its latent six times per answer update (n=6) and finds more inner steps help; the "
            "recurrent-depth line of work shows extra iterations buy reasoning without extra parameters."
        ),
        hypothesis="L_cycles=3 raises exact accuracy despite about 25% slower segments.",
        citations=(
            (*TRM, "More latent recursions per answer update improve accuracy (T=3, n=6 beats T=2, n=2)."),
            (
                "2502.05171",
                "Scaling up Test-Time Compute with Latent Reasoning: A Recurrent Depth Approach",
                "More recurrent iterations improve reasoning at fixed parameter count.",
            ),
        ),
        edits=(
            _sr(PRESETS, "        L_cycles=2,\n        halt_max_steps=4,", "        L_cycles=3,\n        halt_max_steps=4,"),
            _sr(PRESETS, "        L_cycles=2,\n        halt_max_steps=16,", "        L_cycles=3,\n        halt_max_steps=16,"),
        ),
        failure_modes=("slower steps mean fewer updates in a fixed budget",),
    ),
    CatalogueEntry(
        id="more-h-cycles",
        title="Three high-level cycles per segment",
        rationale="TRM uses T=3 outer recursions; HRM's presets use 2. A third H cycle deepens each segment.",
        hypothesis="H_cycles=3 raises exact accuracy at equal budget.",
        citations=((*TRM, "T=3 outer recursions, with n=6 inner ones, is TRM's best Sudoku setting."),),
        edits=(
            _sr(PRESETS, "        L_layers=2,\n        H_cycles=2,", "        L_layers=2,\n        H_cycles=3,"),
            _sr(PRESETS, "        L_layers=4,\n        H_cycles=2,", "        L_layers=4,\n        H_cycles=3,"),
        ),
        failure_modes=("about 50% slower segments",),
    ),
    CatalogueEntry(
        id="fewer-l-cycles",
        title="One low-level cycle per high-level step (cheaper segments)",
        rationale=(
            "On a small budget, cheaper segments mean more optimizer steps. The ARC Prize analysis found the "
            "outer refinement loop, not the inner hierarchy, drives most of HRM's performance."
        ),
        hypothesis="L_cycles=1 trains more steps and matches or beats L_cycles=2 at equal wall clock.",
        citations=((*HRM, "H/L cycles trade compute per segment for depth of reasoning."),),
        edits=(_sr(PRESETS, "        L_cycles=2,\n        halt_max_steps=4,", "        L_cycles=1,\n        halt_max_steps=4,"),),
        direction="increase",
        size=0.01,
        failure_modes=("too shallow a recursion to solve harder puzzles",),
    ),
    CatalogueEntry(
        id="stablemax-on-cpu-presets",
        title="Stablemax cross-entropy on the CPU presets, as HRM trains",
        rationale=(
            "The CPU presets train with softmax cross-entropy, which learned faster on 4x4 Sudoku in short "
            "runs. HRM uses stablemax because softmax can collapse numerically late in long runs on small "
            "data; at the larger budgets of an overnight run that regime may be reached."
        ),
        hypothesis="Stablemax cross-entropy keeps improving where softmax plateaus in longer runs.",
        citations=(
            (
                "2501.04697",
                "Grokking at the Edge of Numerical Stability",
                "Stablemax prevents softmax collapse, which appears mainly late in long training runs.",
            ),
            (*HRM, "HRM trains its small-data tasks with stablemax cross-entropy."),
        ),
        edits=(
            _sr(
                PRESETS,
                '        forward_dtype="float32",\n        loss_type="softmax_cross_entropy",',
                '        forward_dtype="float32",\n        loss_type="stablemax_cross_entropy",',
            ),
        ),
        risk="medium",
        failure_modes=("slower learning within a short budget",),
    ),
    CatalogueEntry(
        id="learned-positions",
        title="Learned position embeddings instead of RoPE",
        rationale=(
            "Puzzle grids have a fixed size and absolute cell positions carry meaning (rows, columns, boxes); "
            "learned absolute embeddings can encode that directly, where RoPE encodes only 1-D offsets."
        ),
        hypothesis="Learned positions raise exact accuracy on fixed-size grids.",
        citations=(
            (
                "2104.09864",
                "RoFormer: Enhanced Transformer with Rotary Position Embedding",
                "RoPE encodes relative 1-D offsets.",
            ),
            ("1706.03762", "Attention Is All You Need", "Learned absolute position embeddings work as well as fixed ones."),
        ),
        edits=(
            _sr(
                PRESETS,
                '        pos_encodings="rope",\n        forward_dtype="float32",',
                '        pos_encodings="learned",\n        forward_dtype="float32",',
            ),
            _sr(
                PRESETS,
                '        pos_encodings="rope",\n        forward_dtype="bfloat16",',
                '        pos_encodings="learned",\n        forward_dtype="bfloat16",',
            ),
        ),
        failure_modes=("slower early learning without a positional prior",),
    ),
    CatalogueEntry(
        id="trm-halt-without-continue-loss",
        title="Halt on q_halt > 0 alone, without the Q-continue target",
        rationale=(
            "HRM bootstraps a Q-continue target with an extra no-grad forward pass each training segment. TRM "
            "drops it: the halt head alone learns whether the answer is right, and the saved forward pass "
            "buys more training steps; its ablation shows the continue loss does not help (86.1% vs 87.4%)."
        ),
        hypothesis="Dropping the continue target keeps accuracy and speeds training, raising accuracy at equal budget.",
        citations=(
            (*TRM, "Halting with only the halt BCE (no continue loss) is simpler and slightly better."),
            ("1603.08983", "Adaptive Computation Time for Recurrent Neural Networks", "Learned halting per input."),
        ),
        edits=({"op": "replace_function", "file": MODEL, "target": "HRM.forward", "code": HALT_ONLY_FORWARD},),
        size=0.02,
        failure_modes=("the halt head halts too early before it is calibrated",),
    ),
    CatalogueEntry(
        id="trm-single-shared-network",
        title="One network for both the H and L levels",
        rationale=(
            "TRM replaces HRM's two modules with one network used for both updates (the H update simply gets "
            "no input injection); separate networks did worse (82.4% vs 87.4%). Sharing halves the recurrent "
            "parameters, which also regularises small-data training."
        ),
        hypothesis="A shared H/L network matches or beats separate ones with half the recurrent parameters.",
        citations=(
            (*TRM, "A single shared network beats separate f_H and f_L."),
            ("1807.03819", "Universal Transformers", "Weight sharing across depth suits algorithmic tasks."),
        ),
        edits=(
            _sr(
                MODEL,
                "        self.H_level = ReasoningModule([HRMBlock(config) for _ in range(config.H_layers)])\n"
                "        self.L_level = ReasoningModule([HRMBlock(config) for _ in range(config.L_layers)])",
                "        self.L_level = ReasoningModule([HRMBlock(config) for _ in range(config.L_layers)])\n"
                "        self.H_level = self.L_level  # one shared network for both levels (TRM)",
            ),
        ),
        risk="medium",
        failure_modes=("less capacity when the levels need different functions",),
    ),
    CatalogueEntry(
        id="trm-mlp-token-mixer",
        title="An MLP over the sequence instead of self-attention on sudoku4 and sudoku6",
        rationale=(
            "TRM replaces self-attention with an MLP applied across the token dimension (MLP-Mixer style) when "
            "the context is small and fixed, L <= D, as a Sudoku grid is; on Sudoku-Extreme this raised "
            "accuracy from 74.7% (self-attention) to 87.4%, while on 30x30 mazes and ARC attention stayed "
            "better. The edit adds a ModelConfig switch mlp_t (default False, so reference-shaped models and "
            "checkpoints are unchanged) and turns it on in the CPU presets where L = seq_len + 1 puzzle "
            "position fits in hidden_size 64: sudoku4 (L=17) and sudoku6 (L=37); sudoku9 and maze (L=82) "
            "keep attention. Each block then transposes the state to [B, hidden, L], applies a SwiGLU over L "
            "(L fixed at build time from the seq_len the trainer takes from the dataset, plus the "
            "puzzle-embedding prefix; inner width expansion * L * 2/3 rounded up to 16, i.e. 48 and 112, "
            "where the usual rounding to 256 would make it 2-5x slower than attention on CPU), transposes "
            "back and normalises over the hidden axis as HRM's post-norm does. Position is implicit in the "
            "mixer's weights, so RoPE goes unused in these blocks. Parameters: 21% fewer on sudoku4, 6% on "
            "sudoku6; step time about the same as with attention on 2 CPU cores."
        ),
        hypothesis=(
            "A token-mixing MLP learns the fixed row/column/box interactions of a small grid more easily than "
            "attention and raises exact accuracy on sudoku4/sudoku6 at equal budget."
        ),
        citations=(
            (*TRM, "On Sudoku-Extreme an MLP over the sequence beats self-attention (87.4% vs 74.7%, Table 1)."),
            ("2002.05202", "GLU Variants Improve Transformer", "SwiGLU, the MLP used for the token mixer too."),
        ),
        edits=(
            _sr(
                CONFIG,
                '    attn_impl: str = "auto"  # "auto" (flash-attn if installed, else SDPA) | "sdpa" | "flash"\n',
                '    attn_impl: str = "auto"  # "auto" (flash-attn if installed, else SDPA) | "sdpa" | "flash"\n'
                "    mlp_t: bool = False  # token mixer: False = self-attention, True = an MLP over the fixed sequence\n",
            ),
            {"op": "replace_function", "file": LAYERS, "target": "swiglu_width", "code": SWIGLU_WIDTH},
            {"op": "replace_function", "file": LAYERS, "target": "SwiGLU.__init__", "code": SWIGLU_INIT},
            {"op": "replace_class", "file": MODEL, "target": "HRMBlock", "code": MLP_T_BLOCK},
            _sr(
                PRESETS,
                "        num_heads=4,\n        expansion=4.0,\n",
                "        num_heads=4,\n        expansion=4.0,\n"
                "        mlp_t=seq_len + 1 <= 64,  # TRM: an MLP token mixer where L (seq + puzzle position) <= hidden\n",
            ),
        ),
        size=0.03,
        risk="medium",
        failure_modes=(
            "a dense mixer over 17 or 37 positions may overfit 2000 training puzzles where attention's shared "
            "weights generalise",
            "the model only accepts the sequence length it was built for (no length transfer)",
            "the gain measured on 9x9 Sudoku-Extreme may not carry over to 4x4/6x6 grids with short budgets",
        ),
    ),
    CatalogueEntry(
        id="trm-two-layers",
        title="Two layers per level instead of four in the GPU presets",
        rationale=(
            "TRM reports that 2-layer networks recursed more often generalise better than 4-layer ones on "
            "small data (Sudoku-Extreme 87.4% with 2 layers and n=6 vs 79.5% with 4 layers and n=3). The CPU "
            "presets already use H_layers=L_layers=2; the GPU presets (sudoku-extreme-gpu, maze30-gpu) still "
            "use the reference's 4+4, which this entry halves. Note that TRM compared at roughly equal "
            "effective depth (it doubled the recursions); this entry alone halves the depth and the compute "
            "of each segment, trading it for about twice the optimizer steps per hour and half the block "
            "parameters (27M -> about 14M); more-l-cycles can buy the depth back."
        ),
        hypothesis="2+2 layers overfit less on the 1k-example GPU tasks and match or beat 4+4 at equal wall clock.",
        citations=(
            (*TRM, "Fewer layers (2) with more recursions generalise better than 4 layers on small data (Table 1)."),
            (
                "2502.05171",
                "Scaling up Test-Time Compute with Latent Reasoning: A Recurrent Depth Approach",
                "Depth can come from recurrence rather than from more layers.",
            ),
        ),
        edits=(_sr(PRESETS, "        H_layers=4,\n        L_layers=4,\n", "        H_layers=2,\n        L_layers=2,\n"),),
        size=0.02,
        risk="medium",
        failure_modes=(
            "half the depth per recursion without more cycles may underfit (TRM compensated with n=6)",
            "no effect on the CPU presets, which are already 2+2",
        ),
    ),
    CatalogueEntry(
        id="more-halt-steps",
        title="Allow eight ACT segments instead of four on CPU presets",
        rationale=(
            "The ARC Prize analysis of HRM found the outer refinement loop (ACT segments) drives performance; "
            "each extra segment is another refinement of the answer."
        ),
        hypothesis="halt_max_steps=8 raises exact accuracy; the halt head keeps training cost bounded.",
        citations=(
            (*HRM, "Deep supervision over ACT segments refines the answer segment by segment."),
            ("1603.08983", "Adaptive Computation Time for Recurrent Neural Networks", "More allowed steps, chosen adaptively."),
        ),
        edits=(_sr(PRESETS, "        halt_max_steps=4,", "        halt_max_steps=8,"),),
        failure_modes=("evaluation runs twice the segments", "slower data turnover in training"),
    ),
    CatalogueEntry(
        id="cosine-lr-decay-to-zero",
        title="Anneal the CPU learning rate to zero instead of 10%",
        rationale=(
            "The CPU presets follow a cosine down to 10% of the rate by the end of the budget (the horizon is "
            "the budget's elapsed fraction). Annealing all the way removes the last noise from the final weights."
        ),
        hypothesis="lr_min_ratio=0.0 raises final exact accuracy at equal budget.",
        citations=(("1608.03983", "SGDR: Stochastic Gradient Descent with Warm Restarts", "Cosine schedules improve final accuracy."),),
        edits=(_sr(PRESETS, "        lr=lr,\n        lr_min_ratio=0.1,", "        lr=lr,\n        lr_min_ratio=0.0,"),),
        size=0.01,
        failure_modes=("the last part of a short budget trains at a rate too low to matter",),
    ),
    CatalogueEntry(
        id="lower-lr",
        title="Halve the CPU learning rate (3e-3 -> 1.5e-3)",
        rationale="Recurrent models through many cycles are sensitive to step size; a lower rate may train more stably.",
        hypothesis="lr=1.5e-3 gives higher exact accuracy or fewer divergences.",
        citations=(
            ("1412.6980", "Adam: A Method for Stochastic Optimization", "The step size bounds the update magnitude."),
            ("2407.05872", "Scaling Exponents Across Parameterizations and Optimizers", "Adam-atan2 has no epsilon; lr sets the scale."),
        ),
        edits=(_sr(PRESETS, "lr: float = 3e-3", "lr: float = 1.5e-3"),),
        direction="increase",
        size=0.01,
        failure_modes=("slower learning within a short budget",),
    ),
    CatalogueEntry(
        id="longer-warmup",
        title="Longer learning-rate warmup on CPU presets (100 -> 300 steps)",
        rationale="Warmup avoids early instability from large Adam steps while the second moments are unreliable.",
        hypothesis="A 300-step warmup reduces early loss spikes and raises final accuracy.",
        citations=(("1706.02677", "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", "Linear warmup stabilises early training."),),
        edits=(_sr(PRESETS, "        lr_warmup_steps=100,", "        lr_warmup_steps=300,"),),
        size=0.01,
        failure_modes=("wastes part of a short budget at low learning rate",),
    ),
    CatalogueEntry(
        id="puzzle-embedding-weight-decay",
        title="Weight decay 1.0 on the puzzle embedding too, as in the reference recipe",
        rationale=(
            "The reference's 1k-example recipes decay both the network and the puzzle embedding at 1.0; the "
            "CPU presets decay the network at 1.0 but the SignSGD-trained puzzle embedding only at 0.1."
        ),
        hypothesis="A stronger decay on the puzzle embedding keeps its scale in line and raises exact accuracy.",
        citations=(
            ("1711.05101", "Decoupled Weight Decay Regularization", "Decoupled decay regularises independently of the rate."),
            (*HRM, "The 1k-example recipes train with weight decay 1.0 on both optimizers."),
        ),
        edits=(
            _sr(
                PRESETS,
                "        puzzle_emb_weight_decay=0.1,\n        eval_interval_steps=500,",
                "        puzzle_emb_weight_decay=1.0,\n        eval_interval_steps=500,",
            ),
        ),
        size=0.01,
        failure_modes=("a shared puzzle embedding decayed towards zero carries no signal",),
    ),
    CatalogueEntry(
        id="grad-norm-clipping",
        title="Clip the gradient norm at 1.0",
        rationale="Recurrent computation can produce rare huge gradients; clipping bounds them without changing typical steps.",
        hypothesis="Clipping removes divergences and raises mean exact accuracy across seeds.",
        citations=(
            ("1211.5063", "On the difficulty of training Recurrent Neural Networks", "Norm clipping tames exploding gradients."),
        ),
        edits=(_set(CONFIG, "TrainConfig.grad_clip_norm", "1.0"),),
        size=0.01,
        failure_modes=("slows learning if typical gradient norms exceed the threshold",),
    ),
)


def by_id(entry_id: str) -> CatalogueEntry:
    for entry in CATALOGUE:
        if entry.id == entry_id:
            return entry
    raise KeyError(f"no catalogue entry {entry_id!r}; known: {', '.join(e.id for e in CATALOGUE)}")
