"""scripts/compare_iteration_speed.py: which overrides each side of the side-by-side gets (the runs themselves
need two checkouts and minutes; docs/scale_out.md has their figures)."""

from __future__ import annotations


def test_new_overrides_reach_only_this_checkout(load_script) -> None:
    mod = load_script("compare_iteration_speed")
    args = mod.build_parser().parse_args(["--ref", "33d5193", "--iterations", "5", "--warmup", "1", "--no-sft",
                                          "--new-override", "env.kwargs.inadmissible_penalty=0",
                                          "env.history_length=2", "rollout.temperature=1.0"])
    old, new = mod.side_overrides(args, "old"), mod.side_overrides(args, "new")
    for side in (old, new):
        assert "trainer.total_iterations=6" in side and "env.history_length=2" in side and side[-1] == "sft.enabled=false"
        assert "rollout.temperature=1.0" in side and "trainer.eval_every=0" in side
    assert "env.kwargs.inadmissible_penalty=0" in new and "env.kwargs.inadmissible_penalty=0" not in old
    assert new.index("env.kwargs.inadmissible_penalty=0") > new.index("env.history_length=2")  # after the shared ones
