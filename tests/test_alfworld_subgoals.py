"""ALFWorld pieces that need neither textworld nor the game files: expert subgoals, task types, data lookup."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from hiper.envs.alfworld import NO_PLAN, canonical_split, plan_subgoal, task_type_of
from hiper.envs.data import DataNotFoundError, alfworld_json_dir, unpack_once


def subgoals(plan: list[str], task_type: str, placed_after: tuple[int, ...] = ()) -> list[str]:
    """Subgoal of each step when the plan is followed (``placed_after``: steps after which one object is placed)."""
    out, placed = [], 0
    for i in range(len(plan)):
        out.append(plan_subgoal(plan[i:], task_type, placed))
        placed += i in placed_after
    return out


def test_clean_task_stages() -> None:
    plan = [
        "go to countertop 3",
        "take bowl 1 from countertop 3",
        "go to sinkbasin 1",
        "clean bowl 1 with sinkbasin 1",
        "go to cabinet 4",
        "open cabinet 4",
        "move bowl 1 to cabinet 4",
    ]
    assert subgoals(plan, "pick_clean_then_place") == [
        "find the bowl",
        "take the bowl",
        "clean the bowl",
        "clean the bowl",
        "put the bowl in the cabinet",
        "put the bowl in the cabinet",
        "put the bowl in the cabinet",
    ]


def test_look_task_and_surfaces() -> None:
    plan = ["go to desk 2", "take alarmclock 1 from desk 2", "go to desk 1", "use desklamp 1"]
    assert subgoals(plan, "look_at_obj_in_light") == [
        "find the alarmclock",
        "take the alarmclock",
        "find the desklamp",
        "use the desklamp",
    ]
    assert plan_subgoal(["move mug 1 to desk 2"], "pick_and_place") == "put the mug on the desk"
    assert plan_subgoal(["heat apple 2 with microwave 1"], "pick_heat_then_place") == "heat the apple"
    assert plan_subgoal(["go to fridge 1", "cool bread 1 with fridge 1"], "pick_cool_then_place") == "cool the bread"
    assert plan_subgoal(["put mug 1 in/on coffeemachine 1"], "pick_and_place") == "put the mug on the coffeemachine"


def test_pick_two_second_object() -> None:
    plan = [
        "go to drawer 5",
        "take cd 3 from drawer 5",
        "go to safe 1",
        "move cd 3 to safe 1",
        "go to desk 2",
        "take cd 2 from desk 2",
        "go to safe 1",
        "move cd 2 to safe 1",
    ]
    assert subgoals(plan, "pick_two_obj", placed_after=(3,)) == [
        "find the cd",
        "take the cd",
        "put the cd in the safe",
        "put the cd in the safe",
        "find the second cd",
        "take the second cd",
        "put the second cd in the safe",
        "put the second cd in the safe",
    ]


def test_degenerate_plans() -> None:
    assert plan_subgoal([], "pick_and_place") == NO_PLAN.subgoal
    assert plan_subgoal(["go to desk 1"], "pick_and_place") == "go to desk 1"
    assert plan_subgoal(["examine alarmclock 1"], "look_at_obj_in_light") == "examine alarmclock 1"


def test_task_types_and_splits() -> None:
    assert task_type_of("/d/valid_seen/pick_two_obj_and_place-CD-None-Safe-308/trial_T1/game.tw-pddl") == "pick_two_obj"
    assert task_type_of("pick_heat_then_place_in_recep-Apple-None-Fridge-10/t/game.tw-pddl") == "pick_heat_then_place"
    with pytest.raises(ValueError, match="task type"):
        task_type_of("/d/valid_seen/unknown-CD/t/game.tw-pddl")
    assert canonical_split("eval_out_of_distribution") == "valid_unseen"
    with pytest.raises(ValueError, match="unknown ALFWorld split"):
        canonical_split("test")


def _make_archive(path: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        data = b'{"solvable": true}'
        info = tarfile.TarInfo("json_2.1.1/valid_unseen/look_at_obj_in_light-X-None-DeskLamp-1/trial_1/game.tw-pddl")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def test_unpack_once_checks_sha_and_is_atomic(tmp_path: Path) -> None:
    archive = tmp_path / "json_2.1.1.tar.xz"
    sha = _make_archive(archive)
    with pytest.raises(ValueError, match="sha256"):
        unpack_once(archive, tmp_path / "bad", "json_2.1.1", sha256="0" * 64)
    assert not (tmp_path / "bad" / "json_2.1.1").exists()  # nothing half-unpacked is left visible
    root = unpack_once(archive, tmp_path / "cache", "json_2.1.1", sha256=sha)
    assert (root / "valid_unseen").is_dir()
    assert unpack_once(archive, tmp_path / "cache", "json_2.1.1", sha256="ignored once unpacked") == root
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".unpack")] == []


def test_data_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    (shared / "data" / "alfworld").mkdir(parents=True)
    monkeypatch.setenv("HIPER_SHARED", str(shared))
    monkeypatch.setenv("HIPER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "empty"))  # what `import alfworld` sets: ignored if empty
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="alfworld-download"):
        alfworld_json_dir()
    import hiper.envs.data as data

    monkeypatch.setattr(data, "ALFWORLD_ARCHIVE_SHA256", _make_archive(shared / "data" / "alfworld" / "json_2.1.1.tar.xz"))
    cached = alfworld_json_dir()
    assert cached == tmp_path / "cache" / "alfworld" / "json_2.1.1"
    # $ALFWORLD_DATA with game files wins over the cache, an explicit data_dir over both
    (tmp_path / "dl" / "json_2.1.1" / "valid_unseen").mkdir(parents=True)
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "dl"))
    assert alfworld_json_dir() == tmp_path / "dl" / "json_2.1.1"
    assert alfworld_json_dir(cached) == cached
    assert alfworld_json_dir(cached.parent) == cached
    with pytest.raises(DataNotFoundError, match="neither"):
        alfworld_json_dir(tmp_path / "empty")
