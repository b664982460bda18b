from evolver.settings import load_settings


def test_env_file_environment_and_flags_layer(tmp_path):
    (tmp_path / ".env").write_text("HRM_PROVIDER=ollama\nHRM_SEEDS=3,4,5\nHRM_BUDGET_SECONDS=12.5\nHRM_AUTO_APPLY=yes\n")
    s = load_settings(tmp_path, environ={"HRM_PROVIDER": "lmstudio", "HRM_MAX_RUNTIME_SECONDS": "60"})
    assert s.provider == "lmstudio"  # environment beats .env
    assert s.seeds == [3, 4, 5]
    assert s.budget_seconds == 12.5
    assert s.auto_apply is True
    assert s.max_runtime_seconds == 60.0
    s2 = load_settings(tmp_path, overrides={"provider": "offline", "cycles": 7, "model": None}, environ={})
    assert s2.provider == "offline" and s2.cycles == 7


def test_bad_boolean_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="HRM_AUTO_APPLY"):
        load_settings(tmp_path, environ={"HRM_AUTO_APPLY": "maybe"})
