from evolver.run.resources import available_memory_gb, check_resources, free_disk_gb


def test_thresholds(tmp_path):
    assert check_resources(tmp_path, 0.0, 0.0) is None
    reason = check_resources(tmp_path, free_disk_gb(tmp_path) + 1000, 0.0)
    assert reason and "free disk" in reason
    mem = available_memory_gb()
    if mem is not None:
        reason = check_resources(tmp_path, 0.0, mem + 1000)
        assert reason and "available memory" in reason
