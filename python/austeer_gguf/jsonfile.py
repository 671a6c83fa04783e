"""Reading JSON a user hands us: bounded in size, UTF-8, no absurd nesting; every error an InputError that
names the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError

MAX_JSON_BYTES = 16 << 20
MAX_JSONL_BYTES = 1 << 30


def is_number(value: Any) -> bool:
    """A JSON number a float can hold (not a bool; integers of hundreds of digits are not)."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not isinstance(value, numbers.Integral) or -1e308 < value < 1e308


def load_json(text: str, origin: str) -> Any:
    """JSON text as Python values; InputError for invalid, oversized or absurdly nested JSON."""
    if len(text) > MAX_JSON_BYTES:
        raise InputError(f"{origin} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{origin} is not valid JSON: {error}") from None
    except RecursionError:
        raise InputError(f"{origin} nests too deeply") from None
    except ValueError as error:  # e.g. an integer literal of thousands of digits
        if "integer string conversion" in str(error):
            raise InputError(f"{origin} is not usable JSON: it holds an integer of thousands of digits; send numbers "
                             "a float can hold") from None
        raise InputError(f"{origin} is not usable JSON: {error}") from None


def read_json_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise InputError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB: not a {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text: not a {what} JSON file") from None
    return load_json(text, str(path))


def read_jsonl_objects(path: Path, what: str) -> list[tuple[str, dict[str, Any]]]:
    """("file:line", object) for every non-blank line of a JSONL file whose lines must be JSON objects."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.stat().st_size > MAX_JSONL_BYTES:
        raise InputError(f"{path} is larger than {MAX_JSONL_BYTES >> 30} GiB; split it")
    objects = []
    with path.open(encoding="utf-8") as lines:
        number = 0
        try:
            for number, line in enumerate(lines, start=1):  # noqa: B007 (number is read after a decode error)
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(f"{where}: not valid JSON ({error.msg})") from None
                except RecursionError:
                    raise InputError(f"{where}: nests too deeply to be a {what}") from None
                except ValueError as error:
                    raise InputError(f"{where}: not usable JSON ({error})") from None
                if not isinstance(data, dict):
                    raise InputError(f"{where}: expected a JSON object (a {what})")
                objects.append((where, data))
        except UnicodeDecodeError:
            raise InputError(f"{path}:{number + 1}: not UTF-8 text: {what} files are JSONL") from None
    return objects
