"""Critic: value heads are read at the HAE positions (spec 3.4) of the trainer's sequence layout."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hiper.models.critic import HEAD_CHANNELS, ValueModel, head_names


class PositionBackbone(torch.nn.Module):
    """Fake decoder: hidden state at column s is (s, 100 + s, 200 + s, 0...) so a value reveals its column."""

    def __init__(self, hidden: int = 4) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=hidden)
        self.hidden = hidden
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False):  # noqa: ARG002
        b, s = input_ids.shape
        col = torch.arange(s, dtype=torch.float32).expand(b, s)
        h = torch.zeros(b, s, self.hidden)
        h[..., 0], h[..., 1], h[..., 2] = col, 100 + col, 200 + col
        return SimpleNamespace(last_hidden_state=h + 0 * self.dummy)


def _critic(n_heads: int) -> ValueModel:
    critic = ValueModel(PositionBackbone(), 4, n_heads)
    with torch.no_grad():
        critic.value_head.weight.zero_()
        critic.value_head.bias.zero_()
        for ch in range(n_heads):
            critic.value_head.weight[ch, ch] = 1.0  # channel ch reads hidden dim ch
    return critic


def test_head_names() -> None:
    assert head_names(1) == ("turn",)
    assert head_names(2) == ("low", "high")
    assert head_names(3) == ("low", "high", "term")
    assert HEAD_CHANNELS == {"low": 0, "high": 1, "term": 2}
    with pytest.raises(ValueError):
        head_names(4)


def test_read_positions_three_heads() -> None:
    prompt_width, resp_len = 7, 5
    ids = torch.zeros(3, prompt_width + resp_len, dtype=torch.long)
    mask = torch.ones_like(ids)
    v_low_pos = torch.tensor([0, 2, 4])
    vals = _critic(3).read_values(ids, mask, prompt_width, v_low_pos)
    # high / term: hidden state after the prompt = input column P - 1 (response position 0)
    assert vals["high"].tolist() == [100 + 6.0] * 3
    assert vals["term"].tolist() == [200 + 6.0] * 3
    # low: response position v_low_pos = input column P + v_low_pos - 1, channel 0
    assert vals["low"].tolist() == [6.0, 8.0, 10.0]


def test_read_positions_one_head() -> None:
    ids = torch.zeros(2, 9, dtype=torch.long)
    vals = _critic(1).read_values(ids, torch.ones_like(ids), 4, torch.tensor([3, 1]))
    assert set(vals) == {"turn"}
    assert vals["turn"].tolist() == [3.0, 3.0]


def test_shared_mode_trains_head_only() -> None:
    backbone = PositionBackbone()
    critic = ValueModel(backbone, 4, 3, shared=True)
    assert set(critic.state_dict()) == {"value_head.weight", "value_head.bias"}
    assert critic.trainable_parameters() == list(critic.value_head.parameters())
    ids = torch.zeros(1, 6, dtype=torch.long)
    vals = critic.read_values(ids, torch.ones_like(ids), 3, torch.tensor([1]))
    sum(vals.values()).sum().backward()
    assert backbone.dummy.grad is None and critic.value_head.weight.grad is not None


def test_low_read_position_is_after_subgoal_close_tag() -> None:
    """With a real tokenizer and TurnBatch layout, V_low reads the state right after ``</subgoal>``."""
    from hiper.models.tokenizer import build_demo_tokenizer
    from hiper.protocol import format_response
    from hiper.protocol.spans import TokenByteTable, token_spans

    texts = [format_response("SWITCH", "find the apple", "go to fridge 1"),
             format_response("KEEP", "find the apple", "open fridge 1")] * 20
    tok = build_demo_tokenizer(texts, vocab_size=300)
    resp = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts[:2]]
    spans = token_spans(TokenByteTable.from_tokenizer(tok), resp)
    for row, pos in zip(resp, spans.v_low_pos.tolist()):
        consumed = tok.decode(row[:pos])
        assert consumed.endswith("</subgoal>"), consumed  # the value sees switch + subgoal, not the action
