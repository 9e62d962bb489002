"""Run a BERT classifier's last layer at the [CLS] position only: same logits, ~14% fewer matmuls.

A BERT sequence classifier reads one vector: the pooler takes ``hidden[:, 0]`` of the last layer.
In that layer every other position's output is computed and thrown away, although position 0
still needs every position's *keys and values* (computed by the layer below's output). So the
last layer can project keys and values for all positions, but queries, the attention output, the
feed-forward block and both LayerNorms for position 0 only. The logits and every gradient are
the same arithmetic on the same numbers (tests/test_speed_paths.py checks them to float rounding).

For MiniLM-L6 at 83 tokens that skips 5/6 of the last layer's query, output and FFN matmuls:
about 14% of a training step's matmul FLOPs and of scoring's.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from transformers.models.bert.modeling_bert import (
    BertForSequenceClassification, BertLayer, BertSelfAttention, eager_attention_forward,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def supports_cls_only(model: torch.nn.Module) -> bool:
    """True for a BERT-family sequence classifier whose output depends on position 0 alone.

    That holds for ``BertForSequenceClassification`` (MiniLM, the default) with its pooler, an
    encoder-only config and a stock last layer; anything else (other heads, decoders, chunked
    feed-forward, a layer already patched) runs the model unchanged.
    """
    if type(model) is not BertForSequenceClassification or model.bert.pooler is None:
        return False
    config = model.config
    if config.is_decoder or config.add_cross_attention or config.chunk_size_feed_forward:
        return False
    if config._attn_implementation not in ("eager", "sdpa", "legolas_sdpa"):
        return False  # e.g. flex attention's block masks are built for every query position
    last = model.bert.encoder.layer[-1]
    return (
        type(last) is BertLayer
        and type(last.attention.self) is BertSelfAttention
        and "forward" not in vars(last)  # not already running at [CLS] only
    )


def _cls_forward(self: BertLayer, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
    """``BertLayer.forward`` for the output at position 0 only: returns ``(batch, 1, hidden)``.

    ``encoder_hidden_states`` (in ``args``), ``encoder_attention_mask`` and ``cache`` are only
    used by decoders and cross-attention, which ``supports_cls_only`` excludes; the rest of
    ``kwargs`` goes to the attention function, as in ``BertSelfAttention.forward``.
    """
    kwargs.pop("encoder_attention_mask", None)
    kwargs.pop("cache", None)
    attention = self.attention.self
    batch, width, _ = hidden_states.shape
    heads, head_size = attention.num_attention_heads, attention.attention_head_size
    first = hidden_states[:, :1]  # (batch, 1, hidden): the only query the pooler reads
    query = attention.query(first).view(batch, 1, heads, head_size).transpose(1, 2)
    key = attention.key(hidden_states).view(batch, width, heads, head_size).transpose(1, 2)
    value = attention.value(hidden_states).view(batch, width, heads, head_size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[2] > 1:
        attention_mask = attention_mask[:, :, :1, :]  # (batch, 1, 1, width): the keys position 0 may see
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = interface(
        attention, query, key, value, attention_mask,
        dropout=attention.dropout.p if attention.training else 0.0, scaling=attention.scaling, **kwargs,
    )
    attended = self.attention.output(context.reshape(batch, 1, -1), first)
    return self.output(self.intermediate(attended), attended)


@contextlib.contextmanager
def cls_only_last_layer(model: torch.nn.Module) -> Iterator[bool]:
    """Within the block, the model's last layer computes position 0 only; yields whether it applies.

    ``last_hidden_state`` then has width 1 (and ``hidden_states``' last entry, and ``attentions``
    lack the last layer), so use this only where the logits are all that is read (training steps,
    scoring); anything that reads token states or attentions runs outside it.
    """
    if not supports_cls_only(model):
        yield False
        return
    last = model.bert.encoder.layer[-1]
    last.forward = types.MethodType(_cls_forward, last)
    try:
        yield True
    finally:
        del last.forward  # back to BertLayer.forward
