"""report_step: a progress line on rank 0 without a supervisor, and heartbeats to a sink with one."""

import time

from runtime.elastic import progress, report_step


class _RecordingSink:
    def __init__(self):
        self.beats = []
        self.heartbeat = self  # mimics an actor handle: sink.heartbeat.remote(beat)

    def remote(self, beat):
        self.beats.append(beat)


def test_progress_line_without_supervisor(capsys):
    progress.install_heartbeat_sink(None)
    progress._STATE.last_print_s = 0.0
    for step in range(3):
        report_step(step, 3.0 - step, num_tokens=1000)
        time.sleep(0.01)
    progress._STATE.last_print_s = 0.0
    report_step(3, 0.5, num_tokens=1000)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("step 3 | loss 0.50 | ") and "tok/s" in line and line.endswith("s/step")


def test_heartbeats_reach_the_sink():
    sink = _RecordingSink()
    progress.install_heartbeat_sink(sink)
    try:
        report_step(7, 1.25, num_tokens=64, compute_s=0.01)
        report_step(8, 1.20, num_tokens=64, compute_s=0.01)
        assert progress.last_step() == 8
    finally:
        progress.install_heartbeat_sink(None)
    assert [(b.rank, b.step, b.loss) for b in sink.beats] == [(0, 7, 1.25), (0, 8, 1.20)]
    assert sink.beats[0].step_time_s is None and sink.beats[1].step_time_s > 0
    assert sink.beats[1].metrics == {"compute_s": 0.01}


def test_format_progress():
    assert progress.format_progress(120, 3.41, 11200, 0.31) == "step 120 | loss 3.41 | 11.2k tok/s | 0.31 s/step"
