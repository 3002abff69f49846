from __future__ import annotations

import logging

import numpy as np
import torch

from engine.config.schema import LiveParams
from engine.core.pipeline import LIVE_GROUPS
from engine.live.applier import LiveApplier
from tests.engine.core.pipelines import make_pipeline


def make(parts):
    return make_pipeline(parts)


def test_only_changed_groups_are_applied(tiny_parts):
    applier = LiveApplier(make(tiny_parts))
    live = LiveParams(prompt="a", t_index_list=[20, 40])
    assert set(applier.apply(live)) == set(LIVE_GROUPS)  # the first frame applies every group
    assert applier.apply(live) == []
    live.guidance_scale = 2.0
    assert applier.apply(live) == ["guidance"]
    assert float(applier.pipeline.stream.guidance) == 2.0


def test_prompt_blend_overrides_prompt_and_uses_the_cache(tiny_parts):
    pipe = make(tiny_parts)
    applier = LiveApplier(pipe)
    applier.apply(LiveParams(prompt="a", t_index_list=[20, 40]))
    calls = pipe.prompts.encode_calls
    for w in (0.2, 0.4, 0.6):
        applier.apply(LiveParams(prompt="a", prompt_blend=[("a", 1 - w), ("b", w)], t_index_list=[20, 40]))
    assert pipe.prompts.encode_calls == calls + 1  # only "b" was new
    a, b = pipe.prompts.encode("a").hidden, pipe.prompts.encode("b").hidden
    torch.testing.assert_close(pipe.stream.cond[:1], 0.4 * a + 0.6 * b)


def test_rejected_value_is_logged_once_and_the_old_value_stays(tiny_parts, caplog):
    pipe = make(tiny_parts)
    applier = LiveApplier(pipe)
    applier.apply(LiveParams(t_index_list=[20, 40]))
    wrong_steps = LiveParams(t_index_list=[10, 20, 30])
    with caplog.at_level(logging.WARNING, logger="streamvj.live"):
        applier.apply(wrong_steps)
        applier.apply(wrong_steps)
    assert sum("needs a rebuild" in r.message for r in caplog.records) == 1
    assert pipe.stream.t_index_list == [20, 40]
    assert pipe(np.zeros((64, 64, 4), np.uint8)).shape == (64, 64, 4)


def test_rebind_reapplies_everything_to_a_new_pipeline(tiny_parts):
    applier = LiveApplier(make(tiny_parts))
    live = LiveParams(guidance_scale=3.0, t_index_list=[20, 40])
    applier.apply(live)
    fresh = make(tiny_parts)
    applier.rebind(fresh)
    applier.apply(live)
    assert float(fresh.stream.guidance) == 3.0
