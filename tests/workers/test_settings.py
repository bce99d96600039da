import argparse
from dataclasses import fields, replace

import pytest

from workers.settings import Settings, SettingError, add_flags, env_name, flag_name


def test_defaults_pass_their_own_checks_and_every_setting_says_what_it_is():
    settings = Settings()
    for f in fields(Settings):
        assert f.metadata["help"], f.name
    assert replace(settings, k=3).k == 3


@pytest.mark.parametrize("values, message", [
    ({"k": 0}, "k 0: must be at least 1 (set with CASED_K or --k)"),
    ({"alpha": 1.5}, "alpha 1.5: must be at most 1"),
    ({"alpha": -0.1}, "alpha -0.1: must be at least 0"),
    ({"max_wait_s": 0.0}, "max_wait_s 0.0: must be more than 0"),
    ({"search": "gpu"}, "search 'gpu': choose one of auto, exact, faiss"),
    ({"allow_private_hosts": 2}, "allow_private_hosts 2: choose one of 0, 1"),
    ({"broker": "http://kafka:9092"}, "broker 'http://kafka:9092': expected kafka://HOST:PORT"),
    ({"broker": "kafka://kafka"}, "expected kafka://HOST:PORT"),
    ({"broker": "kafka://a:1,,b:2"}, "expected kafka://HOST:PORT"),
    ({"broker": ""}, "expected kafka://HOST:PORT"),
    ({"kafka_sasl_password": None, "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism 'GSSAPI'"),
])
def test_a_bad_value_names_the_setting_and_where_to_set_it(values, message):
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**values)


def test_a_password_has_no_flag_and_is_never_shown():
    password = next(f for f in fields(Settings) if f.name == "kafka_sasl_password")
    assert password.metadata["flag"] is False and "hunter2" not in repr(Settings(kafka_sasl_password="hunter2"))


def test_broker_forms():
    assert Settings(broker="kafka-0:9092").broker == "kafka://kafka-0:9092"
    assert Settings(broker="kafka://a:1,b:2").broker == "kafka://a:1,b:2"
    assert Settings(broker="kafka://a:1, kafka://b:2").broker == "kafka://a:1,b:2"
    assert Settings(broker="[::1]:9092").broker == "kafka://[::1]:9092"


def test_environment_values_are_parsed_then_checked():
    assert Settings.from_env({"CASED_ALPHA": "0.5", "CASED_BATCH_SIZE": "32", "CASED_PRETRAINED": ""}).batch_size == 32
    with pytest.raises(SettingError, match=r"^CASED_BATCH_SIZE='lots': not a valid int$"):
        Settings.from_env({"CASED_BATCH_SIZE": "lots"})
    with pytest.raises(SettingError, match=r"^k -1: must be at least 1"):
        Settings.from_env({"CASED_K": "-1"})


def test_flags_derive_from_the_definition():
    parser = argparse.ArgumentParser()
    add_flags(parser, Settings(), "batch_size", "history_policy", "top_n", aliases={"top_n": "--top"})
    args = parser.parse_args(["--batch-size", "4", "--top", "2"])
    assert (args.batch_size, args.top_n, args.history_policy) == (4, 2, None)  # unset: the environment's
    assert "[env CASED_BATCH_SIZE, now 16]" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--history-policy", "sometimes"])
    assert (env_name("max_wait_s"), flag_name("max_wait_s")) == ("CASED_MAX_WAIT_S", "--max-wait-s")


def test_kafka_names_are_taken_in_any_case_and_checked():
    settings = Settings(kafka_security_protocol=" sasl_ssl", kafka_sasl_mechanism="scram-sha-512")
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    with pytest.raises(SettingError, match="kafka_security_protocol 'TLS': choose one of PLAINTEXT, SSL, "
                                           "SASL_PLAINTEXT, SASL_SSL"):
        Settings(kafka_security_protocol="tls")


def test_every_setting_is_in_the_configuration_reference():
    from pathlib import Path

    reference = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert [env_name(f.name) for f in fields(Settings) if f"`{env_name(f.name)}`" not in reference] == []


def test_history_and_gate_settings_take_their_bounds_from_the_policies():
    from cased_core.method.gate import BOUNDS as GATE_BOUNDS, GatePolicy
    from cased_core.method.history import BOUNDS as HISTORY_BOUNDS, HistoryPolicy
    from workers.settings import definition

    cases = [(f"history_{name}", HISTORY_BOUNDS[name], HistoryPolicy, name) for name in
             ("similarity", "margin", "patience", "patience_s", "stillness")]
    cases += [("gate_frames", GATE_BOUNDS["max_frames"], GatePolicy, "max_frames"),
              ("gate_seconds", GATE_BOUNDS["max_s"], GatePolicy, "max_s")]
    for setting, (low, high, _), policy, field in cases:
        meta = definition(setting).metadata
        assert (meta["minimum"], meta["maximum"]) == (low, high), setting
        below = low - (1 if isinstance(low, int) and low >= 1 else 0.5)
        with pytest.raises(SettingError, match=setting):
            Settings(**{setting: below})
        with pytest.raises(ValueError, match=f"{field} {below}"):
            policy(**{field: below})
