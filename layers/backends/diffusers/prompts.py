"""Prompts as the text encoders see them: the isolation framing of subject layers, and prompts past CLIP's 77 tokens.

The pipeline truncates a long prompt silently; here every prompt is split into 75-token chunks (at a comma where one
is near the cut), each chunk is encoded as its own BOS + tokens + EOS + padding sequence, and the chunk embeddings
are concatenated along the sequence axis (SDXL: both encoders, pooled embedding from the first chunk). A prompt that
fits one chunk is encoded exactly as the pipeline would encode it.
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from ..base import RenderRequest

logger = logging.getLogger(__package__)  # the whole backend logs under the package's name

ISOLATION_PROMPT = "isolated on a plain neutral grey background"
"""Appended to the prompt of every layer but the background: one subject on a flat backdrop, easy to matte."""
ISOLATION_NEGATIVE = "busy background, scenery, landscape, detailed background"
ISOLATED_LAYERS = ("midground", "foreground")
"""The layers rendered as subjects on a plain backdrop; anything else (the background, a plate) as a scene."""
WHOLE_PROMPT_NAMES = ("plate", "composite")
"""Requests that carry a whole scene's prompt (compose.py's plate and harmonising pass): encoded in full."""
WHOLE_PROMPT_CHUNKS = 16
"""How many 77-token chunks a whole-scene prompt may use (~1200 tokens: the longest example prompts take ~12)."""
KEPT_ENCODINGS = 16
"""Prompt encodings a backend keeps for reuse, the least recently used dropped first. The harmonising pass conditions
on the plate's whole prompt again, and regenerating a layer on its prompt: encoded once, each is computed once (on 2
CPU cores a 16-chunk prompt costs CLIP-L 0.8 s, 1.6 CPU-seconds, in bfloat16). An encoding depends on the text, the
chunk limit and the text encoders' weights alone, which do not change after loading (a LoRA is fused at load); one
is at most 16 x 77 x 2048 values (~5 MB in half precision)."""


def _isolated(request: RenderRequest) -> tuple[str, str]:
    """The prompt and negative prompt a layer is rendered with."""
    if request.name not in ISOLATED_LAYERS:  # the background, a whole-scene plate
        return request.prompt, request.negative_prompt
    prompt, negative = request.prompt, request.negative_prompt.strip()
    # The planner frames these layers itself ("isolated on a plain backdrop", "busy backdrop" in the negative);
    # saying it twice only spends tokens, so the framing is added only to prompts that lack it.
    if not any(w in prompt.lower() for w in ("isolated", "plain backdrop", "plain background")):
        prompt = f"{prompt.rstrip().rstrip(',')}, {ISOLATION_PROMPT}" if prompt.strip() else ISOLATION_PROMPT
    if not any(w in negative.lower() for w in ("busy background", "busy backdrop", "background scenery")):
        negative = f"{negative.rstrip(',')}, {ISOLATION_NEGATIVE}" if negative else ISOLATION_NEGATIVE
    return prompt, negative


@dataclass
class _Encoded:
    """One text's conditioning, chunk by chunk."""

    chunks: Any
    """Tensor (k, 77, D): one embedding sequence per 77-token chunk."""
    pooled: Any
    """Tensor (1, P) for SDXL (pooled embedding of the first chunk), else None."""
    zeros: bool = False
    """An all-zero (empty SDXL negative) conditioning: padded with zeros, not with the empty prompt."""


class PromptEncodingMixin:
    """DiffusersBackend's text side: the model's tokenizers and encoders, token counts for the planner, and each
    request's prompts encoded chunk by chunk into the pipeline's `prompt_embeds` keyword arguments."""

    def _tokenizers(self):
        pipe = self.pipe
        if self.family == "sdxl":
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            return [t for t, e in pairs if t is not None and e is not None]
        return [pipe.tokenizer]

    def _encoders(self):
        pipe = self.pipe
        if self.family == "sdxl":
            pairs = [(pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)]
            return [(t, e) for t, e in pairs if t is not None and e is not None]
        return [(pipe.tokenizer, pipe.text_encoder)]

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's own CLIP tokenizer, BOS/EOS included, nothing truncated.

        Args:
            text: any text.

        Returns:
            len(tokenizer(text).input_ids).
        """
        return len(self._tokenizers()[0](text, verbose=False).input_ids)

    @property
    def token_budget(self) -> int:
        """Longest layer prompt (tokens, BOS/EOS included) conditioned in full, isolation words included."""
        tok = self._tokenizers()[0]
        body = tok.model_max_length - 2
        suffix = len(tok(", " + ISOLATION_PROMPT, add_special_tokens=False, verbose=False).input_ids)
        return body * self.max_prompt_chunks + 2 - suffix

    def _chunk_ids(self, tokenizer, text: str, limit: Optional[int] = None) -> tuple[list[list[int]], list[list[int]],
                                                                                   dict]:
        """Token ids of `text` in encoder-sized chunks (BOS + up to 75 tokens + EOS + padding), their attention
        masks, and a report of what was encoded."""
        size = tokenizer.model_max_length
        body = size - 2
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        commas = self._commas.get(id(tokenizer))
        if commas is None:  # get_vocab() copies CLIP's 49k-entry vocabulary: once per tokenizer
            vocab = tokenizer.get_vocab()
            commas = self._commas[id(tokenizer)] = {vocab[t] for t in (",", ",</w>") if t in vocab}
        pieces: list[list[int]] = []
        rest = list(ids)
        while rest:
            if len(rest) <= body:
                cut = len(rest)
            else:
                # Break after the last comma near the end of the window so clauses stay whole.
                cut = body
                for i in range(body - 1, body - 21, -1):
                    if rest[i] in commas:
                        cut = i + 1
                        break
            pieces.append(rest[:cut])
            rest = rest[cut:]
        if not pieces:
            pieces = [[]]
        limit = limit or self.max_prompt_chunks
        truncated = sum(len(p) for p in pieces[limit:])
        pieces = pieces[:limit]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        chunks = [[tokenizer.bos_token_id] + p + [tokenizer.eos_token_id] + [pad] * (body - len(p)) for p in pieces]
        masks = [[1] * (len(p) + 2) + [0] * (body - len(p)) for p in pieces]
        report = {
            "tokens": len(ids) + 2,
            "chunks": len(chunks),
            "chunk_texts": [tokenizer.decode(p) for p in pieces],
            "truncated_tokens": truncated,
        }
        return chunks, masks, report

    def _encode(self, text: str, *, negative: bool = False, limit: Optional[int] = None) -> tuple[_Encoded, dict]:
        """Encode a prompt chunk by chunk (at most `limit` chunks; default max_prompt_chunks), the way the pipeline
        encodes one chunk."""
        import torch

        pipe = self.pipe
        device = self._exec_device
        if self.family == "sdxl" and negative and not text.strip() and pipe.config.get("force_zeros_for_empty_prompt"):
            chunks_ids, _, report = self._chunk_ids(self._tokenizers()[0], "")
            d = sum(e.config.hidden_size for _, e in self._encoders())
            p = pipe.text_encoder_2.config.projection_dim
            dtype = self._embed_dtype
            enc = _Encoded(torch.zeros(1, len(chunks_ids[0]), d, dtype=dtype, device=device),
                           torch.zeros(1, p, dtype=dtype, device=device), zeros=True)
            report["zeros"] = True
            return enc, report
        per_encoder = []
        report = None
        for tokenizer, _ in self._encoders():
            chunks_ids, masks, rep = self._chunk_ids(tokenizer, text, limit)
            report = report or rep
            per_encoder.append((chunks_ids, masks))
        k = max(len(c) for c, _ in per_encoder)
        with torch.no_grad():
            if self.family == "sd15":
                _, encoder = self._encoders()[0]
                chunks_ids, masks = per_encoder[0]
                ids = torch.tensor(chunks_ids, dtype=torch.long, device=device)
                mask = None
                if getattr(encoder.config, "use_attention_mask", False):  # as the pipeline does for such encoders
                    mask = torch.tensor(masks, dtype=torch.long, device=device)
                emb = encoder(ids, attention_mask=mask)[0].to(dtype=self._embed_dtype)
                return _Encoded(emb, None), report
            hidden, pooled = [], None
            for (tokenizer, encoder), (chunks_ids, _) in zip(self._encoders(), per_encoder):
                # The two tokenizers share CLIP's vocabulary, so this padding is for odd models only.
                empty = self._chunk_ids(tokenizer, "")[0][0]
                chunks_ids = chunks_ids + [empty] * (k - len(chunks_ids))
                ids = torch.tensor(chunks_ids, dtype=torch.long, device=device)
                out = encoder(ids, output_hidden_states=True)
                if out[0].ndim == 2:  # the projection encoder's text_embeds: SDXL's pooled embedding
                    pooled = out[0][:1]
                hidden.append(out.hidden_states[-2])
            dtype = self._embed_dtype
            emb = torch.cat(hidden, dim=-1).to(dtype=dtype)
            return _Encoded(emb, pooled.to(dtype=dtype)), report

    def _encode_kept(self, text: str, *, negative: bool = False,
                     limit: Optional[int] = None) -> tuple[_Encoded, dict]:
        """`_encode`, computed once per (text, negative, limit) among the last KEPT_ENCODINGS (the report copied,
        so that a caller's changes to it stay its own)."""
        kept: OrderedDict = self._kept_encodings
        key = (text, bool(negative), limit or self.max_prompt_chunks)
        hit = kept.get(key)
        if hit is None:
            hit = kept[key] = self._encode(text, negative=negative, limit=limit)
            while len(kept) > KEPT_ENCODINGS:
                kept.popitem(last=False)
        else:
            kept.move_to_end(key)
        encoded, report = hit
        return encoded, {k: list(v) if isinstance(v, list) else v for k, v in report.items()}

    def _empty_encoding(self) -> _Encoded:
        if self._empty is None:
            self._empty = self._encode("")[0]
        return self._empty

    def _batch_conditioning(self, encoded: Sequence[tuple[_Encoded, _Encoded]], cfg: bool) -> tuple[dict, int]:
        """Pad every prompt of one call to the same number of chunks and stack them into pipeline kwargs."""
        import torch

        k = max(max(p.chunks.shape[0], n.chunks.shape[0]) if cfg else p.chunks.shape[0] for p, n in encoded)
        empty = self._empty_encoding()

        def flat(enc: _Encoded):
            chunks = enc.chunks
            if chunks.shape[0] < k:
                filler = torch.zeros_like(chunks[:1]) if enc.zeros else empty.chunks[:1].to(chunks)
                chunks = torch.cat([chunks] + [filler] * (k - chunks.shape[0]))
            return chunks.reshape(1, -1, chunks.shape[-1])

        kwargs = {"prompt_embeds": torch.cat([flat(p) for p, _ in encoded])}
        if cfg:
            kwargs["negative_prompt_embeds"] = torch.cat([flat(n) for _, n in encoded])
        if self.family == "sdxl":
            kwargs["pooled_prompt_embeds"] = torch.cat([p.pooled for p, _ in encoded])
            if cfg:
                kwargs["negative_pooled_prompt_embeds"] = torch.cat([n.pooled for _, n in encoded])
        return kwargs, k

    def _encode_requests(self, requests, texts, cfg: bool) -> tuple[list, dict]:
        """Encode each request's (prompt, negative) chunk by chunk; returns the encodings and, per layer, what
        its text encoder saw (for the manifest)."""
        encoded, layers_info = [], {}
        for r, (prompt, negative) in zip(requests, texts):
            # A whole scene's prompt (a plate, a harmonising pass) is the user's own text: all of it is conditioned.
            limit = WHOLE_PROMPT_CHUNKS if r.name in WHOLE_PROMPT_NAMES else None
            pos, pos_report = self._encode_kept(prompt, limit=limit)
            neg, neg_report = self._encode_kept(negative, negative=True) if cfg else (None, None)
            encoded.append((pos, neg))
            info = {
                "seed": int(r.seed), "strength": float(r.strength),
                "prompt": prompt, "negative_prompt": negative if cfg else None,
                "tokens": pos_report["tokens"], "chunks": pos_report["chunks"],
                "chunk_texts": pos_report["chunk_texts"], "truncated_tokens": pos_report["truncated_tokens"],
            }
            if neg_report is not None:
                info.update(negative_tokens=neg_report["tokens"], negative_chunks=neg_report["chunks"],
                            negative_truncated_tokens=neg_report["truncated_tokens"])
            for what, rep in (("prompt", pos_report), ("negative prompt", neg_report)):
                if rep is not None and rep["truncated_tokens"]:
                    logger.warning("layer %s: %d tokens of its %s beyond %d chunks were not conditioned",
                                   r.name, rep["truncated_tokens"], what, limit or self.max_prompt_chunks)
            layers_info[r.name] = info
        return encoded, layers_info
