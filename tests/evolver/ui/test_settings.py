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


def test_llm_settings_from_env_file_environment_and_flags(tmp_path):
    from evolver.settings import Settings

    defaults = Settings()
    assert defaults.context_tokens is None and defaults.max_reply_tokens is None
    assert defaults.llm_timeout == 120.0 and defaults.llm_retries == 3
    (tmp_path / ".env").write_text("HRM_CONTEXT_TOKENS=8192\nHRM_LLM_TIMEOUT=300\nHRM_LLM_RETRIES=1\n")
    s = load_settings(tmp_path, environ={"HRM_MAX_REPLY_TOKENS": "1500"})
    assert (s.context_tokens, s.max_reply_tokens, s.llm_timeout, s.llm_retries) == (8192, 1500, 300.0, 1)
    s = load_settings(tmp_path, overrides={"context_tokens": 4096, "llm_retries": 0}, environ={"HRM_CONTEXT_TOKENS": "none"})
    assert s.context_tokens == 4096 and s.llm_retries == 0
    assert load_settings(tmp_path, environ={"HRM_CONTEXT_TOKENS": ""}).context_tokens is None
    assert "context_tokens" in s.to_dict() and "llm_timeout" in s.to_dict()


def test_bad_llm_settings_are_clear_errors(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="HRM_CONTEXT_TOKENS: expected an integer"):
        load_settings(tmp_path, environ={"HRM_CONTEXT_TOKENS": "4k"})
    with pytest.raises(ValueError, match="HRM_LLM_TIMEOUT"):
        load_settings(tmp_path, environ={"HRM_LLM_TIMEOUT": "0"})
    with pytest.raises(ValueError, match="llm_retries"):
        load_settings(tmp_path, overrides={"llm_retries": -1}, environ={})
    with pytest.raises(ValueError, match="max_reply_tokens"):
        load_settings(tmp_path, overrides={"max_reply_tokens": 0}, environ={})
