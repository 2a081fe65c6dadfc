"""Loading a Hugging Face tokenizer directory (``tokenizer.json`` and its companion files).

:func:`read_hf_dir` does the work of :meth:`Tokenizer.from_hf_dir
<bitnet_actor.engine.tokenizer.Tokenizer.from_hf_dir>`: it reads ``tokenizer.json`` (required),
``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``, ``config.json`` and the
chat template files (``chat_template.jinja``, ``chat_template.json``, ``additional_chat_templates/*.jinja``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as Backend

from bitnet_actor.engine.tokenizer._common import _SPECIAL_TOKEN_NAMES, TokenizerError, TokenizerParts

__all__ = ["read_hf_dir"]


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text: {e}") from e
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read: {e.strerror or e}") from e


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from e


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when the file does not exist."""
    if not path.exists():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _token_content(value: Any, where: str) -> str | None:
    """A special-token setting as a string: a string, or a serialized AddedToken ``{"content": ...}``."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])
    raise TokenizerError(f"{where}: expected a token string or {{'content': ...}}, got {value!r}")


def _id_list(value: Any, where: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, bool):
        raise TokenizerError(f"{where}: expected a token id or a list of ids, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TokenizerError(f"{where}: expected a token id or a list of ids, got {value!r}")


def read_hf_dir(path: Path | str) -> TokenizerParts:
    """Read a Hugging Face tokenizer directory (see :meth:`Tokenizer.from_hf_dir`).

    Raises:
        TokenizerError: a file is missing, unreadable or malformed.
    """
    root = Path(path)
    if not root.is_dir():
        raise TokenizerError(f"{root}: not a directory")
    tokenizer_json = root / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise TokenizerError(f"{tokenizer_json}: missing (a Hugging Face tokenizer needs tokenizer.json)")
    text = _read_text(tokenizer_json)
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{tokenizer_json}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    try:
        backend = Backend.from_str(text)
    except Exception as e:  # the Rust side raises plain Exception
        raise TokenizerError(f"{tokenizer_json}: not a tokenizer the tokenizers library can load: {e}") from e

    config_path = root / "tokenizer_config.json"
    config = _read_json_object(config_path)
    special_map = _read_json_object(root / "special_tokens_map.json")

    notes: list[str] = []
    # Tokens the config declares that tokenizer.json lacks.
    added_decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(added_decoder, Mapping):
        raise TokenizerError(f"{config_path}: added_tokens_decoder must be an object")
    present = {tok.content for tok in backend.get_added_tokens_decoder().values()}
    for key, spec in sorted(added_decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        content = _token_content(spec, f"{config_path}: added_tokens_decoder[{key}]")
        if content is None or content in present or not isinstance(spec, Mapping):
            continue
        backend.add_tokens(
            [
                AddedToken(
                    content,
                    single_word=bool(spec.get("single_word", False)),
                    lstrip=bool(spec.get("lstrip", False)),
                    rstrip=bool(spec.get("rstrip", False)),
                    normalized=bool(spec.get("normalized", not spec.get("special", False))),
                    special=bool(spec.get("special", False)),
                )
            ]
        )
        present.add(content)
        if str(backend.token_to_id(content)) != str(key):
            notes.append(f"added token {content!r} got id {backend.token_to_id(content)}, config says {key}")

    special: dict[str, str | None] = {}
    for name in _SPECIAL_TOKEN_NAMES:
        if name in config:
            special[name] = _token_content(config[name], f"{config_path}: {name}")
        elif name in special_map:
            special[name] = _token_content(special_map[name], f"{root / 'special_tokens_map.json'}: {name}")
    extra_special: list[str] = []
    for key in ("extra_special_tokens", "additional_special_tokens"):
        for source, where in ((config, config_path), (special_map, root / "special_tokens_map.json")):
            values = source.get(key)
            if isinstance(values, Mapping):
                values = list(values.values())
            for v in values or ():
                content = _token_content(v, f"{where}: {key}")
                if content is not None:
                    extra_special.append(content)
    # Special tokens not yet in the added vocabulary become special added tokens (as transformers does).
    missing = [t for t in [*special.values(), *extra_special] if t is not None and t not in present]
    for token in dict.fromkeys(missing):
        backend.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        present.add(token)

    # BOS/EOS come from tokenizer.json's post-processor alone: transformers 5 drops add_bos_token and
    # add_eos_token from the config whenever tokenizer.json exists.
    extra_eos: list[int] = []
    for name in ("generation_config.json", "config.json"):
        data = _read_json_object(root / name)
        extra_eos += _id_list(data.get("eos_token_id"), f"{root / name}: eos_token_id")

    return TokenizerParts(
        backend=backend,
        special_tokens=special,
        extra_eos_ids=extra_eos,
        chat_templates=_hf_chat_templates(root, config),
        source=str(root),
        notes=notes,
    )


def _hf_chat_templates(root: Path, config: Mapping[str, Any]) -> dict[str, str]:
    config_path = root / "tokenizer_config.json"
    templates: dict[str, str] = {}
    value = config.get("chat_template")
    if isinstance(value, str):
        templates["default"] = value
    elif isinstance(value, list):
        for item in value:
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise TokenizerError(f"{config_path}: chat_template entries need 'name' and 'template'")
            templates[item["name"]] = item["template"]
    elif value is not None:
        raise TokenizerError(f"{config_path}: chat_template must be a string or a list of named templates")
    # Template files override the config (transformers 5 saves templates as files).
    files: dict[str, str] = {}
    json_path = root / "chat_template.json"
    if json_path.is_file():
        data = _read_json_object(json_path)
        template = data.get("chat_template")
        if not isinstance(template, str):
            raise TokenizerError(f"{json_path}: chat_template must be a string")
        files["default"] = template
    jinja_path = root / "chat_template.jinja"
    if jinja_path.is_file():
        files["default"] = _read_text(jinja_path)
    extra_dir = root / "additional_chat_templates"
    if extra_dir.is_dir():
        for f in sorted(extra_dir.glob("*.jinja")):
            files[f.name.removesuffix(".jinja")] = _read_text(f)
    return files or templates
