"""Learnable text prompts (paper Sec. 3.2, Eq. 1-2) and the CLIP text tower that encodes them.

A prompt for class ``label`` is ``p_label = (∂_1, ..., ∂_l, Tokenizer(label))`` (Eq. 1), CoOp
style: the prompt is tokenised as ``"X X ... X <label>."``, and the token embeddings of the
``l`` placeholders ``X`` are replaced by learnable context vectors, placed right after the
start-of-text token and before the class-name tokens. Everything else (start token, class name,
full stop, end-of-text token, padding) keeps CLIP's frozen token embeddings.

``T_label = ζ_text(p_label ⊕ pos)`` (Eq. 2) runs CLIP's frozen text transformer on these
embeddings. The text tower is frozen except its final projection, which is fine-tuned
(design §9, supplement 8); `TextEncoder` holds a trainable copy of it so that the CLIP model
itself stays frozen and can be shared with feature extraction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial

import open_clip
import torch
from torch import nn

from .hyperparameters import N_CTX

Tokenizer = Callable[[list[str]], torch.Tensor]


def context_length(clip_model: nn.Module) -> int:
    """Token context length of the CLIP text tower (77 for OpenAI CLIP)."""
    length = getattr(clip_model, "context_length", None)
    if length is None:
        length = clip_model.positional_embedding.shape[0]
    return int(length)


def default_tokenizer(clip_model: nn.Module) -> Tokenizer:
    """CLIP's BPE tokenizer (`open_clip.tokenize`) at the model's context length."""
    return partial(open_clip.tokenize, context_length=context_length(clip_model))


def pool_positions(
    tokens: torch.Tensor, pool_type: str = "argmax", eos_id: int | None = None
) -> torch.Tensor:
    """Index of the token whose feature becomes the text embedding, per prompt.

    For CLIP (``argmax``) this is the end-of-text token, the largest token id of a sequence.
    """
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        if eos_id is None:
            raise ValueError("pool type 'eos' needs the end-of-sequence token id")
        return (tokens == eos_id).int().argmax(dim=-1)
    if pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long)
    if pool_type == "last":
        return torch.full((tokens.shape[0],), tokens.shape[1] - 1, dtype=torch.long)
    raise ValueError(f"unsupported text pool type {pool_type!r}")


class PromptLearner(nn.Module):
    """Prompt embeddings ``(SOT, ∂_1..∂_l, name tokens, '.', EOT, pad)`` for every class (Eq. 1).

    Args:
        clip_model: open_clip CLIP model (only its token embedding is read, at construction).
        classnames: class names, in the order of the returned prompts.
        n_ctx: number ``l`` of learnable context vectors (paper: 8).
        class_specific: one set of context vectors per class instead of one shared set.
        init_std: standard deviation of the random context initialisation (CoOp: 0.02).
        ctx_init: optional words (exactly ``n_ctx`` tokens, e.g. ``"a photo of a"``) whose token
            embeddings initialise the context vectors instead of random values.
        tokenizer: maps a list of strings to ``[n, context_length]`` token ids; defaults to
            CLIP's BPE tokenizer.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        classnames: Sequence[str],
        n_ctx: int = N_CTX,
        class_specific: bool = False,
        init_std: float = 0.02,
        ctx_init: str | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        super().__init__()
        if n_ctx < 0:
            raise ValueError(f"n_ctx must be >= 0, got {n_ctx}")
        if not classnames:
            raise ValueError("at least one class name is needed")
        self.classnames = [str(c).replace("_", " ").strip() for c in classnames]
        self.n_ctx = int(n_ctx)
        self.class_specific = bool(class_specific)
        tokenize = tokenizer or default_tokenizer(clip_model)
        token_embedding: nn.Embedding = clip_model.token_embedding
        width = token_embedding.weight.shape[1]
        dtype = token_embedding.weight.dtype

        placeholder = " ".join(["X"] * self.n_ctx)
        texts = [f"{placeholder} {name}.".strip() for name in self.classnames]
        tokens = tokenize(texts).to(token_embedding.weight.device)
        if tokens.shape[1] != context_length(clip_model):
            raise ValueError(
                f"tokenizer returned {tokens.shape[1]} tokens per prompt, the text tower takes "
                f"{context_length(clip_model)}"
            )
        if bool((tokens[:, -1] != 0).any()):
            long = [t for t, last in zip(texts, tokens[:, -1].tolist(), strict=True) if last]
            raise ValueError(f"prompt longer than the text context: {long}")
        if self.n_ctx and bool((tokens[:, 1 : 1 + self.n_ctx] != tokens[0, 1]).any()):
            raise ValueError("the placeholder 'X' does not tokenise to one token each")
        with torch.no_grad():
            embedding = token_embedding(tokens).to(dtype)
        # Frozen pieces around the learnable context (non-persistent: derived from CLIP).
        self.register_buffer("token_prefix", embedding[:, :1].clone(), persistent=False)
        self.register_buffer(
            "token_suffix", embedding[:, 1 + self.n_ctx :].clone(), persistent=False
        )
        self.register_buffer("tokenized_prompts", tokens.clone(), persistent=False)
        positions = pool_positions(
            tokens,
            getattr(clip_model, "text_pool_type", "argmax"),
            getattr(clip_model, "text_eos_id", None),
        )
        self.register_buffer("eot_positions", positions.to(tokens.device), persistent=False)

        shape = (len(self.classnames), self.n_ctx, width) if class_specific else (self.n_ctx, width)
        ctx = torch.empty(shape, dtype=dtype, device=tokens.device)
        nn.init.normal_(ctx, std=init_std)
        self.ctx = nn.Parameter(ctx)
        if ctx_init is not None:
            self.init_context_from_words(token_embedding, ctx_init, tokenize)

    @property
    def n_cls(self) -> int:
        return len(self.classnames)

    @torch.no_grad()
    def init_context_from_words(
        self, token_embedding: nn.Embedding, words: str, tokenize: Tokenizer | None = None
    ) -> None:
        """Set the context vectors to the token embeddings of ``words`` (``n_ctx`` tokens)."""
        tokenize = tokenize or partial(open_clip.tokenize, context_length=self.context_len)
        tokens = tokenize([words]).to(token_embedding.weight.device)
        end = int(pool_positions(tokens)[0])
        ids = tokens[0, 1:end]
        if ids.numel() != self.n_ctx:
            raise ValueError(f"{words!r} has {ids.numel()} tokens, n_ctx is {self.n_ctx}")
        vectors = token_embedding(ids).to(self.ctx.dtype)
        self.ctx.copy_(vectors.expand_as(self.ctx))

    @property
    def context_len(self) -> int:
        return int(self.tokenized_prompts.shape[1])

    def forward(self) -> torch.Tensor:
        """Prompt token embeddings ``[n_cls, context_length, width]`` (Eq. 1)."""
        ctx = self.ctx
        if not self.class_specific:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx.to(self.token_prefix.dtype), self.token_suffix], 1)


class TextEncoder(nn.Module):
    """CLIP's text tower on prompt embeddings (Eq. 2): ``+pos → transformer → ln → EOT → proj``.

    Holds references to the frozen text parts of `clip_model` (never its image tower) and a
    trainable copy of ``text_projection`` (design §9). With ``finetune_projection=False`` the copy
    is frozen too (the "no finetune" row of Table 6).
    """

    def __init__(self, clip_model: nn.Module, finetune_projection: bool = True) -> None:
        super().__init__()
        for name in ("transformer", "positional_embedding", "ln_final", "text_projection"):
            if not hasattr(clip_model, name):
                raise TypeError(f"CLIP model has no text tower attribute {name!r}")
        self.transformer = clip_model.transformer
        self.ln_final = clip_model.ln_final
        self.positional_embedding = clip_model.positional_embedding
        self.register_buffer("attn_mask", getattr(clip_model, "attn_mask", None), persistent=False)
        proj = clip_model.text_projection
        self.finetune_projection = bool(finetune_projection)
        if isinstance(proj, nn.Module):
            self.text_projection = copy.deepcopy(proj)
            self.text_projection.requires_grad_(self.finetune_projection)
        elif proj is None:
            raise TypeError("CLIP model has no text projection")
        else:
            self.text_projection = nn.Parameter(
                proj.detach().clone(), requires_grad=self.finetune_projection
            )

    def projection_parameters(self) -> list[nn.Parameter]:
        """The (copied) text projection's parameters."""
        if isinstance(self.text_projection, nn.Module):
            return list(self.text_projection.parameters())
        return [self.text_projection]

    def train(self, mode: bool = True) -> TextEncoder:
        """Keep the frozen CLIP parts in eval mode whatever the mode of the owner."""
        super().train(mode)
        self.transformer.eval()
        self.ln_final.eval()
        return self

    def forward(self, prompts: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[k, D]`` from prompt embeddings ``[k, L, width]``.

        ``eot_positions[i]`` is where prompt ``i``'s end-of-text token sits (it moves by n_ctx
        relative to the plain class-name prompt).
        """
        get_cast = getattr(self.transformer, "get_cast_dtype", None)
        cast = get_cast() if get_cast is not None else prompts.dtype
        x = prompts.to(cast) + self.positional_embedding.to(cast)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_positions.to(x.device)]
        if isinstance(self.text_projection, nn.Module):
            return self.text_projection(x)
        return x @ self.text_projection.to(x.dtype)
