"""metrics.csv and TensorBoard (more3s.metrics)."""

def test_metrics_resume_drops_a_row_the_kill_cut_short(tmp_path):
    """A kill mid-write leaves a torn last row in metrics.csv: resuming drops it instead of crashing."""
    from more3s.metrics import METRIC_FIELDS, MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False, resume_step=None)
    for step in (10, 20):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("2")  # torn: the first digit of "25,..." -- no newline, every other field missing
    log = MetricsLog(tmp_path, tensorboard=False, resume_step=20)
    log.write({"step": 30, "loss": 0.5})
    log.close()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].split(",") == list(METRIC_FIELDS)
    assert [ln.split(",")[0] for ln in lines[1:]] == ["10", "20", "30"]
    assert lines[-1].split(",")[1] == repr(0.5)
