"""The live replay's options are defined once (`LiveOptions`): the command line and the Dagster
resource build the same object with the same defaults, and a result records the same keys."""

import pytest
from pydantic import ValidationError

from weka_assets.cli import _live_options, build_parser
from weka_assets.defs.resources import LiveServer
from weka_assets.replay.live import LiveSettings
from weka_assets.replay.live_options import LiveOptions

BASE = ["replay-live", "DS", "--url", "http://u:8000", "--model", "m", "--json", "out.json"]
# options only the API and the resource set (the command line never had them)
NOT_ON_THE_COMMAND_LINE = {"retries", "retry_backoff_s", "subagent_status_from_files"}


def parsed(*extra: str) -> LiveOptions:
    return _live_options(build_parser().parse_args([*BASE, *extra]))


def test_the_command_line_defaults_are_the_options_defaults():
    assert parsed() == LiveOptions(url="http://u:8000", model="m")


def test_every_option_is_on_the_command_line_under_its_name():
    args = vars(build_parser().parse_args(BASE))
    on_the_line = {k for k in args if k in LiveOptions.model_fields} | {"reset_cache"}
    assert set(LiveOptions.model_fields) == on_the_line | NOT_ON_THE_COMMAND_LINE
    assert not on_the_line & NOT_ON_THE_COMMAND_LINE


def test_the_command_line_sets_each_option():
    options = parsed(
        "--concurrency", "2", "--time-scale", "0.5", "--arrival", "staggered",
        "--interval-s", "5", "--rate-per-s", "0.5", "--arrival-seed", "3",
        "--max-context", "100", "--drop", "traces", "--max-tokens-cap", "8",
        "--block-size", "16", "--kv-blocks", "300", "--timeout-s", "9", "--no-reset-cache",
    )  # fmt: skip
    assert options.model_dump(exclude=NOT_ON_THE_COMMAND_LINE) == {
        "url": "http://u:8000",
        "model": "m",
        "concurrency": 2,
        "time_scale": 0.5,
        "arrival": "staggered",
        "interval_s": 5.0,
        "rate_per_s": 0.5,
        "arrival_seed": 3,
        "max_context": 100,
        "drop": "traces",
        "max_tokens_cap": 8,
        "block_size": 16,
        "kv_blocks": 300,
        "timeout_s": 9.0,
        "reset_cache": False,
    }


def test_the_resource_holds_every_option_with_its_default_and_description():
    resource_fields = LiveServer.model_fields
    assert set(resource_fields) == set(LiveOptions.model_fields)
    for name, field in LiveOptions.model_fields.items():
        if name in ("url", "model"):  # required options; empty in the resource: not configured
            assert resource_fields[name].default == ""
            continue
        assert resource_fields[name].default == field.default, name
        assert resource_fields[name].description == field.description, name
    assert LiveServer(url="http://u:8000", model="m").options() == LiveOptions(
        url="http://u:8000", model="m"
    )


def test_a_bad_resource_value_fails_when_the_options_are_built():
    with pytest.raises(ValidationError, match="drop"):
        LiveServer(url="http://u", model="m", drop="everything").options()
    with pytest.raises(ValidationError, match="concurrency"):
        LiveOptions(url="http://u", model="m", concurrency=0)


def test_a_result_records_the_same_settings_keys():
    assert list(LiveSettings.model_fields) == [
        "concurrency", "time_scale", "arrival", "max_context", "max_context_source", "drop",
        "max_tokens_cap", "block_size", "kv_blocks", "kv_blocks_source", "timeout_s", "retries",
        "reset_cache",
    ]  # fmt: skip
