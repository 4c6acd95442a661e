"""engine/runtime/log.py on a resume: rows after the resumed step (written by a run that was then killed) and a torn
last line are cut, so no step appears twice."""

import json

from engine.runtime.log import MetricsLogger, cut_after


def test_a_resumed_logger_drops_rows_past_its_step_and_torn_lines(tmp_path):
    rows = [json.dumps({"step": s, "loss": s / 10}) for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n" + '{"step": 5, "lo')  # killed mid-write
    (tmp_path / "samples.jsonl").write_text(json.dumps({"step": 4, "tag": "t", "text": "x"}) + "\n")
    logger = MetricsLogger(tmp_path, tensorboard=False, start_step=2)
    logger.log(3, {"loss": 0.5})
    logger.close()
    logger.close()  # twice is fine
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and (tmp_path / "samples.jsonl").read_text() == ""
    assert cut_after(tmp_path / "metrics.jsonl", 3) == 0 and cut_after(tmp_path / "none.jsonl", 0) == 0
