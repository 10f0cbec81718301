"""The table of methods is the settings' list of methods, and says what each collects and trains on."""

import typing

from riselm.methods import METHODS
from riselm.settings import RunSettings


def test_every_method_of_the_settings_is_in_the_table():
    assert set(METHODS) == set(typing.get_args(RunSettings.model_fields["method"].annotation))


def test_what_each_method_runs():
    assert [name for name, m in METHODS.items() if m.online] == ["online"]
    assert [name for name, m in METHODS.items() if m.first_turns_only] == ["filtered_sft", "single_turn_rwr"]
    assert [name for name, m in METHODS.items() if m.uses_experts] == ["rise", "rise_success"]
