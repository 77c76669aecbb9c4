"""The first encoder layer of many single-gene deletions of one cell, computed together.

Deleting the gene at position ``i`` from a cell of ``n`` tokens leaves a sequence of ``n - 1`` tokens whose
position ``p`` holds the original token ``p`` when ``p < i`` ("A" rows) and the original token ``p + 1`` when
``p >= i`` ("B" rows). The first layer's inputs (token + position embeddings), and hence its queries, keys and values,
are therefore rows of just two small matrices per cell, shared by every deletion. Its attention is
``softmax(q_p · k_q) v_q`` over keys that are A rows left of ``i`` and B rows from ``i`` on; with the exponentiated
scores of the four blocks (A/B queries × A/B keys) computed once per cell, the attention of deletion ``i`` is a sum of
a prefix over A keys and a suffix over B keys, obtained for a batch of deletions by one matrix product per block and
cumulative sums over the batch's window. This replaces the per-sequence projections and attention of the first
layer (about an eighth of the model FLOPs of a five-layer run) by work that grows like ``n²`` per cell, not ``n³``.
The result equals the ordinary forward pass up to float rounding (tested).
"""

from __future__ import annotations

import torch

#: Largest exponentiated score blocks (4 × heads × n² floats) kept for one cell; longer cells use the plain path.
MAX_SCORE_BYTES = 512 * 2**20


class DeletionFirstLayer:
    """First-layer outputs of single-gene deletions of one cell (``ids``: the original token ids, 1-D)."""

    def __init__(self, bert, ids: torch.Tensor) -> None:
        self.layer = bert.encoder.layer[0]
        embeddings = bert.embeddings
        n = ids.shape[0]
        self.n = n
        positions = torch.arange(n - 1, device=ids.device)
        token_type = embeddings.token_type_embeddings.weight[0]
        base = embeddings.position_embeddings(positions) + token_type
        words = embeddings.word_embeddings(ids)
        # layer inputs: A rows keep their token, B rows take the next one
        self.x_a = embeddings.LayerNorm(words[:-1] + base)
        self.x_b = embeddings.LayerNorm(words[1:] + base)
        self_attention = self.layer.attention.self
        heads, head_size = self_attention.num_attention_heads, self_attention.attention_head_size
        self.heads, self.head_size = heads, head_size

        def split(x):  # (n-1, d) -> (heads, n-1, head_size)
            return x.view(n - 1, heads, head_size).transpose(0, 1)

        projections = (self_attention.query, self_attention.key, self_attention.value)
        q_a, k_a, v_a = (split(f(self.x_a)) for f in projections)
        q_b, k_b, v_b = (split(f(self.x_b)) for f in projections)
        scale = getattr(self_attention, "scaling", head_size**-0.5)  # transformers 4.x has no attribute
        self.v_a, self.v_b = v_a, v_b
        # exponentiated scores, stabilised by each query's maximum over both key blocks
        self.w = {}
        for query_name, q in (("a", q_a), ("b", q_b)):
            s_a = torch.matmul(q, k_a.transpose(1, 2)) * scale
            s_b = torch.matmul(q, k_b.transpose(1, 2)) * scale
            top = torch.maximum(s_a.amax(-1, keepdim=True), s_b.amax(-1, keepdim=True))
            self.w[query_name + "a"] = torch.exp(s_a - top)
            self.w[query_name + "b"] = torch.exp(s_b - top)

    @staticmethod
    def fits(n: int, heads: int) -> bool:
        return 4 * heads * n * n * 4 <= MAX_SCORE_BYTES

    def _attend(self, query: str, deletions: torch.Tensor, rows: slice) -> torch.Tensor:
        """Attention output of query ``rows`` of block ``query`` for each deletion: (G, heads, rows, head_size)."""
        first, last = int(deletions[0]), int(deletions[-1])
        w_a, w_b = self.w[query + "a"][:, rows], self.w[query + "b"][:, rows]  # (heads, rows, n-1)
        v_a, v_b = self.v_a, self.v_b
        ones = torch.ones_like(v_a[..., :1])
        # keys left of the window (A) and from the window's end on (B), the same for every deletion of the batch
        outside_num = torch.matmul(w_a[..., :first], v_a[:, :first]) + torch.matmul(w_b[..., last:], v_b[:, last:])
        outside_den = w_a[..., :first].sum(-1, keepdim=True) + w_b[..., last:].sum(-1, keepdim=True)
        # inside the window [first, last): A keys left of each deletion, B keys from it on
        window = slice(first, last)
        a_terms = w_a[..., window, None] * torch.cat([v_a[:, window], ones[:, window]], -1)[:, None]
        b_terms = w_b[..., window, None] * torch.cat([v_b[:, window], ones[:, window]], -1)[:, None]
        zeros = a_terms.new_zeros((*a_terms.shape[:2], 1, a_terms.shape[-1]))
        a_prefix = torch.cat([zeros, a_terms.cumsum(-2)], -2)  # exclusive prefix: columns < offset
        b_suffix = torch.cat([b_terms.flip(-2).cumsum(-2).flip(-2), zeros], -2)  # columns >= offset
        offsets = deletions - first
        inside = a_prefix[..., offsets, :] + b_suffix[..., offsets, :]  # (heads, rows, G, head_size + 1)
        num = outside_num[..., None, :] + inside[..., :-1]
        den = outside_den[..., None, :] + inside[..., -1:]
        return (num / den).permute(2, 0, 1, 3)

    def __call__(self, deletions: torch.Tensor) -> torch.Tensor:
        """Hidden states after the first layer for each deletion position (sorted), shape ``(G, n - 1, hidden)``."""
        n = self.n
        first, last = int(deletions[0]), int(deletions[-1])
        rows = torch.arange(n - 1, device=deletions.device)
        is_a = rows[None, :] < deletions[:, None]  # (G, n-1)
        # A queries are only needed left of the last deletion, B queries from the first one on
        out_a = self._attend("a", deletions, slice(0, last))  # (G, heads, last, head_size)
        out_b = self._attend("b", deletions, slice(first, n - 1))  # (G, heads, n-1-first, head_size)
        middle = torch.where(is_a[:, None, first:last, None], out_a[:, :, first:], out_b[:, :, : last - first])
        context = torch.cat([out_a[:, :, :first], middle, out_b[:, :, last - first :]], dim=2)
        context = context.transpose(1, 2).reshape(len(deletions), n - 1, self.heads * self.head_size)
        inputs = torch.where(is_a[..., None], self.x_a[None], self.x_b[None])
        attention_output = self.layer.attention.output(context, inputs)
        intermediate = self.layer.intermediate(attention_output)
        return self.layer.output(intermediate, attention_output)


def run_remaining_layers(bert, hidden: torch.Tensor, n_layers: int) -> torch.Tensor:
    """Layers 2..``n_layers`` of the encoder on first-layer outputs (no padding, so no mask)."""
    for layer in bert.encoder.layer[1:n_layers]:
        out = layer(hidden)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden
