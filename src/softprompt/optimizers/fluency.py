"""Fluency of a prompt's tokens under a reference causal LM: Patel et al.'s scrutability proxy.

The perplexity of prompt tokens P_1..P_L is exp(-1/L Σ log p(P_i | P_<i)); the first token is predicted from
the reference tokenizer's start token (its BOS, else its EOS, as GPT-2 begins texts; with neither, the first
token is not scored). The reference LM
defaults to the prompt's own model; any causal LM can stand in. When the two tokenizers differ, the prompt's
text is decoded and re-tokenised for the reference.

``nll_of_vectors`` is the differentiable form PEZ's regulariser needs (Patel's "unembedded gradient
descent"): the prompt enters the reference as the given vectors (projected embeddings), so the gradient
reaches them through the context each token gives its successors and, with tied input/output embeddings,
through the token's own log-probability too. It needs the reference to be the prompt's own model: another
model's embedding space has no map back to the prompt's.
"""

from __future__ import annotations

import torch

from softprompt.engine import Engine
from softprompt.errors import SoftpromptError
from softprompt.models import LanguageModel


class Fluency:
    def __init__(self, reference: LanguageModel, lm: LanguageModel | None = None) -> None:
        if reference.kind != "causal":
            raise SoftpromptError(f"perplexity needs a causal reference LM; '{reference.name}' is {reference.kind}")
        self.reference = reference
        self.lm = lm or reference
        self.engine = Engine(reference)
        tok = reference.tokenizer
        # A tokenizer with neither leaves the first token unscored (it is read after a pad token).
        self.start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.first = 0 if self.start is not None else 1
        self.same_tokens = self.lm is reference or self.lm.tokenizer.get_vocab() == tok.get_vocab()
        head, embedding = reference.model.get_output_embeddings(), reference.model.get_input_embeddings()
        # With tied embeddings a token's log-probability also depends on its own (input) vector, which is the
        # shared weight times the embedding's scale (Gemma: √d).
        self.tied = head is not None and head.weight is embedding.weight and not self.engine.softcap
        self.embed_scale = float(getattr(embedding, "embed_scale", 1.0))

    def token_nll(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token negative log-likelihoods ``(K, T)`` of K prompts given as ``(K, L)`` token ids of the prompt's
        model, and a mask of the real tokens (the reference's tokenisation may differ in length)."""
        rows = ids.tolist() if self.same_tokens else [self._retokenise(r) for r in ids.tolist()]
        width = max(len(r) for r in rows)
        pad = self.reference.tokenizer.pad_token_id
        targets = torch.full((len(rows), width), pad, dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)  # the tokens scored
        for i, r in enumerate(rows):
            targets[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            real[i, : len(r)] = True
            mask[i, self.first : len(r)] = True
        if not mask.any(1).all():
            raise SoftpromptError("perplexity needs at least one token to predict")
        device = self.reference.device
        targets, mask, real = targets.to(device), mask.to(device), real.to(device)
        with torch.inference_mode():
            hidden = self._hidden(self.reference.embed(targets), real)
            logp = self.engine.project(hidden).log_softmax(-1)
        nll = -logp.gather(-1, targets[..., None])[..., 0]
        return nll.masked_fill(~mask, 0.0).float(), mask

    def nll(self, ids: torch.Tensor) -> torch.Tensor:
        """(K,) mean negative log-likelihood of each prompt's tokens."""
        nll, mask = self.token_nll(ids)
        return nll.sum(1) / mask.sum(1).clamp(min=1)

    def perplexity(self, ids: torch.Tensor) -> torch.Tensor:
        return self.nll(ids).exp()

    def nll_of_vectors(self, ids: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """The mean negative log-likelihood of the tokens ``ids`` ``(L,)`` entered as ``vectors`` ``(L, d)``
        (their embeddings, possibly carrying a straight-through gradient), differentiable in ``vectors``."""
        if self.lm is not self.reference:
            raise SoftpromptError("a fluency gradient needs the reference LM to be the prompt's own model "
                                  f"('{self.lm.name}'), not '{self.reference.name}'")
        ids = ids.to(self.reference.device)
        real = torch.ones_like(ids[None], dtype=torch.bool)
        hidden = self._hidden(vectors[None].to(self.reference.model.dtype), real)
        logits = self.engine.project(hidden[0])
        gold = logits.gather(-1, ids[:, None])[:, 0]
        if self.tied:
            own = (hidden[0] * vectors.to(hidden.dtype)).sum(-1).float() / self.embed_scale
            gold = gold + own - own.detach()  # same value, plus the gradient through the token's own vector
        return (logits.logsumexp(-1) - gold)[self.first :].mean()

    def _hidden(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states predicting each of ``embeds``' tokens: the start token, then all but the last token."""
        rows = embeds.shape[0]
        first = self.start if self.start is not None else self.reference.tokenizer.pad_token_id
        start = self.reference.embed(torch.full((rows, 1), first, dtype=torch.long,
                                                device=embeds.device)).to(embeds.dtype)
        inputs = torch.cat([start, embeds[:, :-1]], 1)
        attention = torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], 1).long()
        return self.engine.body(inputs_embeds=inputs, attention_mask=attention, use_cache=False)[0]

    def _retokenise(self, ids: list[int]) -> list[int]:
        text = self.lm.tokenizer.decode(ids)
        tokens = self.reference.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise SoftpromptError(f"the prompt {text!r} is empty for the fluency reference '{self.reference.name}'")
        return tokens
