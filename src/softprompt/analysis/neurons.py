"""Model-stimulation similarity (Su et al. 2022): which feed-forward neurons a prompt switches on.

Each prompt is run on the same probe inputs; at every layer we record the input of the feed-forward
block's output projection (the neuron activations: act(x W1), or act(x W_gate) · x W_up in gated FFNs).
A neuron counts as activated where its activation, averaged over the probes, is positive. The overlap
of two prompts is the cosine similarity of their binary activation vectors, |A ∩ B| / √(|A| |B|), as in
the authors' code.

Positions: ``prompt`` keeps one pattern per prompt position (as Su et al., who feed the prompt
itself; for a prefix before a causal LM's input these positions never see the input); ``answer`` keeps
the pattern at the position that predicts the answer, which depends on the input and works for
prompts of different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel
from softprompt.prompts.task import TaskPrompt
from softprompt.tasks.scoring import CHOICE_BATCH_SIZE, TaskEncoder, collate_rows
from softprompt.tasks.task import Task, TaskExample

POSITIONS = ("prompt", "answer")


def ffn_output_projections(lm: LanguageModel) -> list[nn.Module]:
    """Per transformer layer, the linear map from the FFN's neurons back to the hidden size."""
    hidden = lm.hidden_size
    found = []
    for i, layer in enumerate(lm.layers):
        candidates = []
        for module in layer.modules():
            weight = getattr(module, "weight", None)
            if weight is None or weight.dim() != 2:
                continue
            # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out) and says so with ``nf``.
            out_dim, in_dim = (weight.shape[1], weight.shape[0]) if hasattr(module, "nf") else weight.shape
            if out_dim == hidden and in_dim > hidden:
                candidates.append(module)
        if len(candidates) != 1:
            raise SoftpromptError(f"model '{lm.name}': cannot identify the feed-forward output projection of "
                                  f"layer {i} ({len(candidates)} candidates)")
        found += candidates
    return found


@torch.inference_mode()
def mean_activations(engine: Engine, prompt: TaskPrompt, task: Task, probes: Sequence[TaskExample],
                     positions: str = "prompt", batch_size: int = CHOICE_BATCH_SIZE) -> torch.Tensor:
    """Neuron activations averaged over ``probes``: (layers, P, neurons) at the prompt positions, or
    (layers, 1, neurons) at the answer position. Positive entries are the activated neurons."""
    if positions not in POSITIONS:
        raise SoftpromptError(f"unknown positions {positions!r}; choose one of: {', '.join(POSITIONS)}")
    if positions == "prompt" and prompt.length == 0:
        raise SoftpromptError("a prompt without vectors has no prompt positions; use positions='answer'")
    lm = engine.lm
    if lm.kind == "seq2seq":
        raise SoftpromptError("neuron overlap is implemented for causal and masked LMs")
    encoded = TaskEncoder(lm, task, prompt).encode(probes)
    per_example = 1 if encoded.shared_ids is not None else encoded.num_choices
    rows = [encoded.rows[i * per_example] for i in range(encoded.num_examples)]  # the context; choices aside
    width = prompt.length if positions == "prompt" else 1
    sums = None
    state: dict[str, torch.Tensor] = {}

    def record(index: int) -> object:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            acts = inputs[0].float()  # (B, T, neurons)
            where = state["where"]
            picked = acts[where[0], where[1]].view(len(acts), width, -1)
            state[f"layer{index}"] = picked.sum(0)
        return hook

    handles = [m.register_forward_pre_hook(record(i)) for i, m in enumerate(ffn_output_projections(lm))]
    try:
        for idx in engine.eval_batches(rows, batch_size):
            batch = collate_rows([rows[i] for i in idx], lm.tokenizer.pad_token_id, engine.padding_side == "left",
                                 lm.device)
            if positions == "prompt":
                state["where"] = (batch.prompt_slots >= 0).nonzero(as_tuple=True)
            else:
                # Multiple-choice rows read several positions; the first one predicts the answer's first token.
                first = torch.ones_like(batch.query_rows, dtype=torch.bool)
                first[1:] = batch.query_rows[1:] != batch.query_rows[:-1]
                state["where"] = (batch.query_rows[first], batch.query_positions[first])
            engine.final_hidden(batch, prompt.vectors(), prompt.deltas())
            layers = torch.stack([state[f"layer{i}"] for i in range(lm.num_layers)])
            sums = layers if sums is None else sums + layers
    finally:
        for h in handles:
            h.remove()
    assert sums is not None
    return sums / len(rows)


def neuron_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two binary activation patterns; 1 for identical ones, NaN if shapes differ."""
    if a.shape != b.shape:
        return float("nan")
    a, b = a.flatten().double(), b.flatten().double()
    denominator = (a.sum() * b.sum()).sqrt()
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0
