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


def test_a_nested_key_changes_that_key_alone(tmp_path):
    """SFTConfig's prompt has defaults of its own (item_facts=[], max_history=50, not PromptConfig's): one prompt key
    on the command line or in YAML keeps the others (it once rebuilt the prompt from PromptConfig's, so
    `prompt.request_share=0.3` silently wrote every item's facts into the windows); an explicit null stays null."""
    from genrec.config import PromptConfig

    assert PromptConfig().item_facts is None and SFTConfig().prompt.item_facts == []
    cfg = load_config(SFTConfig, None, {"prompt.request_share": "0.3"})
    assert cfg.prompt == SFTConfig().prompt.__class__(**{**vars(SFTConfig().prompt), "request_share": 0.3})
    p = tmp_path / "c.yaml"
    p.write_text("prompt:\n  max_history: 4\n")
    assert load_config(SFTConfig, p).prompt.item_facts == []
    p.write_text("prompt:\n  item_facts: null\n")
    assert load_config(SFTConfig, p).prompt.item_facts is None


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


def test_cli_options_take_help_and_choices_from_the_config_fields():
    """Every option derived from a config field shows that field's metadata help (one place per field) and accepts
    the names the field declares; the options of shared fields (EngineConfig, SearchConfig) read the same field."""
    import dataclasses

    import click

    from genrec import cli, config
    from genrec.items.index import ID_STYLES

    settings = {("data", "prepare"): config.DataConfig, ("sft",): config.SFTConfig, ("generate",): config.GenerateConfig,
                ("rank",): config.RankConfig, ("recommend",): config.GenerateConfig,
                ("evaluate",): config.EvaluateConfig, ("tune-fusion",): config.FusionConfig,
                ("serve",): config.ServeConfig, ("prompts", "show"): config.PromptConfig}
    derived = 0
    for path, cls in settings.items():
        cmd = cli.main
        for name in path:
            cmd = cmd.commands[name]
        fields = {f.name: f for cls_ in (config.PromptConfig, cls) for f in dataclasses.fields(cls_)}  # sft: template
        for param in cmd.params:
            if not isinstance(param, click.Option) or param.name not in fields:
                continue
            meta = fields[param.name].metadata
            assert param.help.startswith(meta["help"]), (path, param.name)
            if isinstance(param.type, click.Choice):
                assert tuple(param.type.choices) == (ID_STYLES if param.name == "item_id" else meta["choices"])
            derived += 1
    assert derived > 60
    assert config.GenerateConfig.__dataclass_fields__["backend"] is config.EvaluateConfig.__dataclass_fields__["backend"]


def test_config_choices_are_the_ones_the_code_checks():
    """The lists the CLI offers are the very objects the engines, the search and the prompt builders check against
    (config.py owns them), and every objective offered has a builder."""
    from genrec import config
    from genrec.infer import backends, constrained
    from genrec.prompts.sequence import OBJECTIVE

    assert backends.BACKENDS is config.BACKENDS and constrained.SEARCHES is config.SEARCHES
    assert set(OBJECTIVE) == set(config.OBJECTIVES)
