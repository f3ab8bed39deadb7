"""Episode labeling as Ray Data stages: success/failure, phase segmentation, language instructions,
and human labels imported from / exported to JSONL. Every label carries its source and version
(runtime.robot.schema.Label). Stages map whole episodes: use them with `batch_size=None` on blocks
that hold whole episodes, as the episode datasources produce; `stages.add_labeling_stages` wires them.
"""
