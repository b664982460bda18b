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


def test_every_setting_is_declared_once_and_offered_by_flag_environment_and_env_file(tmp_path):
    """Each field of Settings is a flag of `evolve.py run` (unless it declares none), an HRM_ variable and a
    .env key, all derived from the field: a value given each way lands in that field."""
    import argparse
    import dataclasses

    from evolver.settings import Settings
    from evolver.ui.settings_flags import add_setting_flags, flag_of, flag_overrides

    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    samples = {bool: None, int: "7", float: "0.5", str: "local"}
    flagged = 0
    for f in dataclasses.fields(Settings):
        flag = flag_of(f)
        if flag is None:
            continue
        flagged += 1
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert action.dest == f.name and action.help
        if action.choices:
            argv = [flag, action.choices[0]]
        elif action.nargs == 0:
            argv = [flag]
        else:
            argv = [flag, "1,2" if str(f.type).startswith("list") else samples[type(f.default)
                                                                               if f.default is not None
                                                                               and f.default is not dataclasses.MISSING
                                                                               else str]]
            if f.name in ("workers", "cohort", "context_tokens", "max_reply_tokens"):
                argv = [flag, "3"]
            elif f.name in ("max_runtime_seconds", "screen_budget_seconds"):
                argv = [flag, "9.5"]
        overrides = flag_overrides(parser.parse_args(argv))
        assert overrides[f.name] is not None, f.name
        assert sum(v is not None for v in overrides.values()) == 1
        s = load_settings(tmp_path, overrides=overrides, environ={})
        assert getattr(s, f.name) == overrides[f.name]
    assert flagged >= 35
    # the environment and .env reach every field, flagged or not
    for f in dataclasses.fields(Settings):
        default = getattr(Settings(), f.name)
        if isinstance(default, bool):
            text, want = ("false", False) if default else ("true", True)
        elif isinstance(default, list):
            text, want = ("4,5", [4, 5]) if f.name == "seeds" else ("a,b", ["a", "b"])
        elif f.metadata.get("choices"):
            text = want = f.metadata["choices"][-1]
        elif isinstance(default, float) or f.name in ("max_runtime_seconds", "screen_budget_seconds"):
            text, want = "0.5", 0.5
        elif isinstance(default, int) or f.name in ("workers", "cohort", "context_tokens", "max_reply_tokens"):
            text, want = "3", 3
        else:
            text, want = "x-value", "x-value"
        (tmp_path / ".env").write_text(f"HRM_{f.name.upper()}={text}\n")
        assert getattr(load_settings(tmp_path, environ={}), f.name) == want, f.name
        assert getattr(load_settings(tmp_path, environ={f"HRM_{f.name.upper()}": text}), f.name) == want


def test_flag_values_pass_the_fields_checks():
    import argparse

    import pytest

    from evolver.ui.settings_flags import add_setting_flags

    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    for argv in (["--budget-seconds", "0"], ["--workers", "0"], ["--screen-fraction", "1.5"], ["--seeds", "a,b"],
                 ["--llm-retries", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert parser.parse_args(["--serial-pairs"]).side_by_side is False
