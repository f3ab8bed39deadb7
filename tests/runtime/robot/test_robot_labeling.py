import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from runtime.robot import schema as S
from runtime.robot.labeling.human import HumanLabelImporter, export_labels, label_records
from runtime.robot.labeling.language import InstructionLabeler
from runtime.robot.labeling.phases import PhaseSegmenter, segment_phases, segments
from runtime.robot.labeling.stages import LabelingConfig, add_labeling_stages
from runtime.robot.labeling.success import SuccessLabeler


def _pick_episode(source="ep0", reward_at_end=1.0):
    """ee moves (approach), stops and closes (grasp), moves closed (transport), stops and opens
    (release), moves away (retreat)."""
    ee_x = [0.0, 0.1, 0.2, 0.2, 0.2, 0.3, 0.4, 0.4, 0.4, 0.5]
    gripper = [0.04, 0.04, 0.04, 0.0, 0.0, 0.0, 0.0, 0.04, 0.04, 0.04]
    frames = []
    for i, (x, g) in enumerate(zip(ee_x, gripper)):
        frames.append({S.EPISODE_INDEX: 0, S.FRAME_INDEX: i, S.TIMESTAMP: i / 10, S.TASK: "pick up the cube",
                       S.STATE: np.array([x, 0, 0, g], np.float32), S.ACTION: np.zeros(2, np.float32),
                       S.REWARD: reward_at_end if i == len(ee_x) - 1 else 0.0, S.EPISODE_SOURCE: source})
    return S.frames_to_table(frames)


def _labels(table, name):
    return [[label for label in S.labels_from_json(text) if label.name == name]
            for text in table.column(S.LABELS).to_pylist()]


def test_phase_segmentation_from_gripper_and_speed():
    episode = _pick_episode()
    labeled = PhaseSegmenter(gripper_index=3, ee_indices=(0, 1, 2), fps=10)(episode)
    phases = [labels[0].value for labels in _labels(labeled, "phase")]
    assert phases == ["approach"] * 3 + ["grasp", "grasp", "transport", "transport", "release", "release", "retreat"]
    segments_label = _labels(labeled, "phase_segments")[0][0]
    assert segments_label.scope == "episode" and segments_label.value[0] == ["approach", 0, 2]
    assert segments(["a", "a", "b"]) == [["a", 0, 1], ["b", 2, 2]]
    assert segment_phases(np.full(4, 0.04), None, fps=10, closed_below=0.02, still_speed=0.1) == ["approach"] * 4


def test_success_rules_and_model(tmp_path):
    both = pa.concat_tables([_pick_episode("a", 1.0), _pick_episode("b", 0.0)])
    labeled = SuccessLabeler(rule="reward")(both)
    by_source = {e.column(S.EPISODE_SOURCE)[0].as_py(): _labels(e, "success")[0][0] for e in S.episode_tables(labeled)}
    assert by_source["a"].value is True and by_source["b"].value is False
    assert by_source["a"].source == "strata.success.reward" and by_source["a"].version == "1"
    with pytest.raises(ValueError, match="success.rule"):
        SuccessLabeler(rule="vibes")
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[10.0, 0, 0, 0]]))
        model.bias.fill_(-4.0)  # success iff final ee x > 0.4
    path = tmp_path / "success.pt"
    torch.jit.script(model).save(str(path))
    labeler = SuccessLabeler(rule="model", model_path=str(path))
    assert labeler.episode_success(_pick_episode()) is True
    assert len(labeler.version) == 12  # version is the model file's hash


def test_template_instructions_are_deterministic_and_carry_their_source():
    labeler = InstructionLabeler(mode="template")
    first = _labels(labeler(_pick_episode("ep7")), "instruction")[0][0]
    again = _labels(labeler(_pick_episode("ep7")), "instruction")[0][0]
    assert first == again and "pick up the cube" in first.value.lower()
    assert (first.source, first.version, first.scope) == ("template", "1", "episode")


def test_human_labels_round_trip_through_jsonl(tmp_path):
    episode = PhaseSegmenter(gripper_index=3, fps=10)(_pick_episode())
    path = tmp_path / "labels.jsonl"
    assert export_labels([episode], path) == 10 + 1
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert {r["source"] for r in records} == {"strata.phases.gripper_velocity"}
    human = [{"episode_source": "ep0", "frame_index": None, "name": "quality", "value": "good",
              "source": "human:alice", "version": "2026-01", "scope": "episode"},
             {"episode_source": "ep0", "frame_index": 4, "name": "phase", "value": "grasp",
              "source": "human:alice", "version": "2026-01"}]
    (tmp_path / "human.jsonl").write_text("\n".join(json.dumps(r) for r in human) + "\n")
    merged = HumanLabelImporter(tmp_path / "human.jsonl")(episode)
    assert [label.value for label in _labels(merged, "quality")[9]] == ["good"]
    phase_labels = _labels(merged, "phase")[4]
    assert {(label.source, label.value) for label in phase_labels} == {
        ("strata.phases.gripper_velocity", "grasp"), ("human:alice", "grasp")}
    assert len(label_records(merged)) == len(records) + 2


@pytest.mark.slow
def test_labeling_stages_run_as_ray_data_actor_pools(ray_local):
    import ray.data

    episodes = [_pick_episode(f"ep{i}", float(i % 2)) for i in range(4)]
    dataset = ray.data.from_arrow(episodes)
    config = LabelingConfig(success_rule="reward", gripper_index=3, fps=10, instructions="auto",
                            llm_app_name="no-such-app")
    rows = add_labeling_stages(dataset, config).take_all()
    assert len(rows) == 40
    for row in rows:
        names = {label.name: label for label in S.labels_from_json(row[S.LABELS])}
        assert set(names) == {"success", "phase", "phase_segments", "instruction"}
        assert names["success"].value == (row[S.EPISODE_SOURCE] in ("ep1", "ep3"))
        assert names["instruction"].source == "template"  # no Serve app: templates, cleanly


@pytest.mark.slow
def test_instructions_come_from_a_running_serve_llm_app(ray_local):
    from ray import serve

    @serve.deployment
    class FakeLLM:
        def generate_text(self, prompt: str) -> str:
            assert "pick up the cube" in prompt and "grasp" in prompt
            return " Gently pick up the cube. "

    @serve.deployment(name="LLMServer:tiny")
    class FakeStrataServer:
        """serve_apps.llm's server request/stream shape, without an engine."""

        async def generate(self, request):
            assert request["model"] == "tiny" and request["sampling"]["temperature"] == 0.0
            for piece in ("Lift the ", "cube.\nExtra line"):
                yield {"prompt_tokens": 3, "outputs": [{"index": 0, "text": piece, "token_ids": [1],
                                                        "finish_reason": None}]}

    started_here = not serve.status().applications
    if started_here:
        serve.start(proxy_location="Disabled")
    episode = PhaseSegmenter(gripper_index=3, fps=10)(_pick_episode())
    try:
        serve.run(FakeLLM.bind(), name="strata-test-llm", route_prefix=None)
        serve.run(FakeStrataServer.bind(), name="strata-test-llm-server", route_prefix=None)
        for app_name, expected in [("strata-test-llm", "Gently pick up the cube."),
                                   ("strata-test-llm-server", "Lift the cube.")]:
            labeled = InstructionLabeler(mode="llm", app_name=app_name)(episode)
            label = _labels(labeled, "instruction")[0][0]
            assert (label.value, label.source) == (expected, f"llm:{app_name}")
    finally:
        serve.delete("strata-test-llm")
        serve.delete("strata-test-llm-server")
        if started_here:
            serve.shutdown()
    with pytest.raises(ValueError, match="no Serve application"):
        InstructionLabeler(mode="llm", app_name="strata-test-llm")
