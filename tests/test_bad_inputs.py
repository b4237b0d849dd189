"""The bad-input corpus (tests/bad_inputs/): every file through the command a user would feed it to.

Each case must end with exactly one line `error: ...` naming the problem, exit code 2 (the documented code for
bad input), no traceback, and nothing written: no output file or directory, no temp or `.partial` leftovers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from genrec.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"

# file -> (command, words the one-line message must contain)
CASES = {
    "interactions/empty.csv": ("prepare", "is empty"),
    "interactions/header_only.csv": ("prepare", "has no rows"),
    "interactions/latin1.csv": ("prepare", "not valid UTF-8"),
    "interactions/utf16.csv": ("prepare", "not valid UTF-8"),
    "interactions/no_timestamp_column.csv": ("prepare", "no timestamp column"),
    "interactions/nan_timestamp.csv": ("prepare", "timestamp"),
    "interactions/text_timestamp.csv": ("prepare", "cannot be parsed"),
    "interactions/empty_ids.csv": ("prepare", "empty user or item id"),
    "interactions/unclosed_quote.csv": ("prepare", "could not be parsed"),
    "interactions/binary_garbage.csv": ("prepare", "could not be parsed"),
    "interactions/broken_line.jsonl": ("prepare", "could not be parsed"),
    "interactions/array_lines.jsonl": ("prepare", "JSON object"),
    "interactions/truncated.csv.gz": ("prepare", "truncated.csv.gz"),
    "interactions/spreadsheet.xlsx": ("prepare", "unsupported file type '.xlsx'"),
    "interactions/control_chars_in_ids.csv": ("prepare", "control character"),
    "catalog/duplicate_ids.csv": ("prepare-catalog", "duplicate item id"),
    "catalog/blank_title.csv": ("prepare-catalog", "empty title"),
    "catalog/no_title_column.csv": ("prepare-catalog", "no title column"),
    "catalog/empty.csv": ("prepare-catalog", "is empty"),
    "catalog/latin1.csv": ("prepare-catalog", "not valid UTF-8"),
    "users/empty.jsonl": ("generate", "is empty"),
    "users/invalid_json.jsonl": ("generate", "invalid JSON"),
    "users/array_line.jsonl": ("generate", "expected a JSON object"),
    "users/history_not_list.jsonl": ("generate", "history must be a list"),
    "users/user_id_object.jsonl": ("generate", "user_id must be a string"),
    "users/context_not_object.jsonl": ("generate", "context must be an object"),
    "users/request_not_text.jsonl": ("generate", "request must be a string"),
    "users/not_utf8.jsonl": ("generate", "not valid UTF-8"),
    "users/unknown_user.jsonl": ("generate", "unknown user_id"),
    "users/unknown_item.jsonl": ("generate", "neither an item id nor a title"),
    "configs/unclosed.yaml": ("sft", "not valid YAML"),
    "configs/list_not_mapping.yaml": ("sft", "must contain a mapping"),
    "configs/unknown_key.yaml": ("sft", "unknown config key 'lerning_rate'"),
    "configs/wrong_type.yaml": ("sft", "'max_steps' must be int"),
    "configs/nested_wrong.yaml": ("sft", "'prompt' must be a mapping"),
    "templates/syntax_error.j2": ("template", "syntax_error.j2 line 1"),
    "templates/missing_field.j2": ("template", "'no_such_field' is undefined"),
    "templates/no_user_block.j2": ("template", "must define a '{% block user %}'"),
    "templates/unsafe_access.j2": ("template", "unsafe"),
}


def test_corpus_is_complete():
    files = {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file()}
    assert files == set(CASES) and len(files) >= 30


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, tiny_raw, tiny_data, tiny_model):
    command, needle = CASES[name]
    path = str(CORPUS / name)
    out = tmp_path / "out"
    if command == "prepare":
        args = ["data", "prepare", "--interactions", path, "--catalog", str(tiny_raw[1]), "--output", str(out)]
    elif command == "prepare-catalog":
        args = ["data", "prepare", "--interactions", str(tiny_raw[0]), "--catalog", path, "--output", str(out)]
    elif command == "generate":
        args = ["generate", "--model", str(tiny_model), "--users", path, "--out", str(out), "--strict"]
    elif command == "sft":
        args = ["sft", "--config", path, "--data", str(tiny_data), "--output", str(out)]
    else:
        args = ["prompts", "show", "--data", str(tiny_data), "--user", "1", "--template", path]
    res = CliRunner().invoke(main, args)
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert res.exit_code == 2, res.output
    assert len(errors) == 1 and needle in errors[0], res.output
    assert "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []  # no output, no temp directory, no .partial file
