"""vLLM's engine arguments as flowperf sees them: which exist (read from vLLM's source, without importing
vLLM), which flowperf sets itself from its own settings, and `--engine-arg KEY=VALUE` parsed and checked.

Kept apart from the in-process engine so that config.py can check pass-through arguments without importing
the engine module (which imports config).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowperf.errors import UserError

# Engine arguments flowperf derives from its own settings. Passing one through as well would leave
# config.json stating one value while the engine ran another, so each is refused, naming the setting.
OWN_ENGINE_ARGS = {
    "model": "--model or --model-preset",
    "dtype": "engine.dtype",
    "max_model_len": "--max-model-len",
    "seed": "--seed",
    "block_size": "--block-size",
    "enforce_eager": "--eager/--compiled",
    "cudagraph_capture_sizes": "--cuda-graph-sizes",
    "max_num_seqs": "engine.max_num_seqs",
    "enable_prefix_caching": "engine.enable_prefix_caching",
    "disable_log_stats": "nothing: flowperf needs the engine's per-request statistics",
}


def own_engine_arg_problem(key: str, preset: str | None = None) -> str | None:
    """Why `key` cannot be passed through as an engine argument, if it cannot."""
    if key in OWN_ENGINE_ARGS:
        return f"{key} is set by flowperf itself; use {OWN_ENGINE_ARGS[key]}"
    if key == "load_format" and preset is not None:
        return "load_format: a model preset has no weights and always loads dummy ones"
    return None


PLAIN_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "tuple": (list,),
    "dict": (dict,),
}


def _accepted_types(annotation: ast.expr) -> tuple[type, ...] | None:
    """The JSON-shaped types an annotation such as `int | None` or `list[int]` accepts; None for any
    other annotation (an alias, a config class, a Literal), whose values are left to vLLM to check."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        left, right = _accepted_types(annotation.left), _accepted_types(annotation.right)
        return None if left is None or right is None else left + right
    if isinstance(annotation, ast.Constant) and annotation.value is None:
        return (type(None),)
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    return PLAIN_TYPES.get(annotation.id) if isinstance(annotation, ast.Name) else None


@functools.cache
def engine_arg_fields() -> dict[str, tuple[type, ...] | None]:
    """AsyncEngineArgs' fields and the types each accepts (None: not checked here).

    Read from the source of `vllm.engine.arg_utils` rather than by importing it: that import loads
    torch and most of vLLM (~10 s here), too slow for refusing a mistyped flag; parsing the file takes
    milliseconds. A vLLM whose file no longer declares the dataclasses there is imported instead."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("--engine-arg: vLLM is not installed here, so its engine arguments cannot be checked")
    source = Path(next(iter(spec.submodule_search_locations))) / "engine" / "arg_utils.py"
    classes = [
        node
        for node in ast.parse(source.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ClassDef) and node.name in ("EngineArgs", "AsyncEngineArgs")
    ]
    fields = {
        statement.target.id: _accepted_types(statement.annotation)
        for node in classes
        for statement in node.body
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
    }
    if len(classes) == 2 and fields:
        return fields
    from vllm.engine.arg_utils import AsyncEngineArgs

    return {field.name: None for field in dataclasses.fields(AsyncEngineArgs)}


def engine_arg_problem(key: str, value: Any) -> str | None:
    """What is wrong with passing `key=value` to vLLM's engine, if anything."""
    fields = engine_arg_fields()
    if key not in fields:
        return f"{key} is not a vLLM engine argument (see `vllm serve --help`)"
    accepted = fields[key]
    if accepted is None:
        return None
    if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
        names = "/".join(sorted({"null" if kind is type(None) else kind.__name__ for kind in accepted}))
        return f"{key} takes {names}, got {json.dumps(value)}"
    return None


def check_engine_args(arguments: dict[str, Any], source: str) -> None:
    """Refuse (one line naming `source`) any argument vLLM's engine does not take or flowperf sets itself."""
    for key, value in arguments.items():
        problem = own_engine_arg_problem(key) or engine_arg_problem(key, value)
        if problem is not None:
            raise UserError(f"{source}: {problem}")


def parse_engine_args(items: Iterable[str]) -> dict[str, Any]:
    """`--engine-arg KEY=VALUE` items as engine arguments, checked against vLLM's own fields.

    VALUE is JSON where it parses (numbers, true/false, null, lists, objects), else a string, so
    `tensor_parallel_size=2`, `enable_chunked_prefill=false` and `kv_cache_dtype=fp8` all read as
    meant. KEY may be written as on vLLM's command line (`tensor-parallel-size`)."""
    arguments: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise UserError(f"--engine-arg {item}: expected KEY=VALUE, e.g. tensor_parallel_size=2")
        if key in arguments:
            raise UserError(f"--engine-arg {key}: given twice")
        try:
            arguments[key] = json.loads(text)
        except ValueError:
            arguments[key] = text
    check_engine_args(
        {key: value for key, value in arguments.items() if key not in SETTING_OF_ENGINE_ARG}, "--engine-arg"
    )
    return arguments


# The flowperf-owned engine arguments `--engine-arg` may still give, vLLM's name -> the setting it names:
# a vLLM user passes vLLM's names, so the value is applied to that setting (recorded there, once) rather
# than refused. `model` and `disable_log_stats` have no such setting and stay refused, naming the flag.
SETTING_OF_ENGINE_ARG = {
    "dtype": "engine.dtype",
    "max_model_len": "engine.max_model_len",
    "seed": "engine.seed",
    "block_size": "engine.block_size",
    "enforce_eager": "engine.enforce_eager",
    "cudagraph_capture_sizes": "engine.cudagraph_capture_sizes",
    "max_num_seqs": "engine.max_num_seqs",
    "enable_prefix_caching": "engine.enable_prefix_caching",
}


def settings_from_engine_args(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--engine-arg` items split into the arguments passed through to vLLM and the flowperf settings
    (by dotted path) that the flowperf-owned ones name."""
    passed = {key: value for key, value in arguments.items() if key not in SETTING_OF_ENGINE_ARG}
    settings = {SETTING_OF_ENGINE_ARG[key]: value for key, value in arguments.items() if key not in passed}
    return passed, settings
