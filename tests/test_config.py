from __future__ import annotations

import pytest

from genrec.config import SFTConfig, load_config, parse_overrides
from genrec.errors import GenrecError


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_steps: 7\nprompt:\n  max_history: 4\n")
    cfg = load_config(SFTConfig, p, parse_overrides(["learning_rate=0.01", "prompt.task=next_item_reason"]))
    assert (cfg.max_steps, cfg.prompt.max_history, cfg.learning_rate, cfg.prompt.task) == \
        (7, 4, 0.01, "next_item_reason")


@pytest.mark.parametrize("overrides,needle", [
    ({"nope": 1}, "unknown config key 'nope'"),
    ({"prompt.nope": 1}, "unknown config key 'prompt.nope'"),
    ({"max_steps": "many"}, "'max_steps' must be int"),
    ({"merge": "perhaps"}, "'merge' must be bool"),
])
def test_bad_keys_and_types(overrides, needle):
    with pytest.raises(GenrecError, match=needle):
        load_config(SFTConfig, None, overrides)


def test_shipped_configs_load():
    from pathlib import Path

    from genrec.config import DataConfig

    root = Path(__file__).parent.parent / "configs"
    sft = load_config(SFTConfig, root / "sft.yaml")
    assert sft.objective == "sequence" and sft.max_minutes > 0 and sft.prompt.item_facts == []
    assert load_config(DataConfig, root / "data_movielens.yaml").text_cols == ["genres"]


def test_empty_value_is_an_empty_list_none_is_none():
    from genrec.config import SFTConfig, load_config

    assert load_config(SFTConfig, None, {"prompt.item_facts": ""}).prompt.item_facts == []
    assert load_config(SFTConfig, None, {"prompt.item_facts": "none"}).prompt.item_facts is None
    assert load_config(SFTConfig, None, {"prompt.item_facts": "genres,tags"}).prompt.item_facts == ["genres", "tags"]
    assert load_config(SFTConfig, None, {"max_minutes": ""}).max_minutes is None
