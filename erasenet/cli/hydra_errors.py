"""Hydra's composition errors (unknown option, misspelt key, wrong type, bad syntax) as erasenet's one paragraph.

Hydra reports these itself, as a stack of internals or its merge dump; ``explain`` turns one into the problem, what
is allowed and, for a misspelling, the closest valid names. Import-light: no torch.
"""

from __future__ import annotations

import difflib
import os
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError
from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

from ..common.config import REMOVED_KEYS
from ..common.errors import UserError
from ..presets import unknown_preset_message

CONF = Path(__file__).resolve().parents[1] / "conf"

WIDTH = 100
# Hydra launcher plugins that erasenet's launcher configs build on: {plugin config: erasenet's launcher}
PLUGIN_LAUNCHERS = {"joblib": "parallel", "submitit_slurm": "slurm", "submitit_local": "slurm"}


def paragraph(text: str, first_indent: int = 0) -> str:
    """``text`` as one paragraph wrapped to the console width (the first line ``first_indent`` shorter)."""
    return textwrap.fill(" ".join(text.split()), WIDTH, initial_indent=" " * first_indent).lstrip(" ")


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """' Did you mean X?' naming the closest of ``choices`` to ``word``, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    names = [f"{prefix}{c}" for c in close]
    return " Did you mean " + (f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]) + "?"


# What a config node of each type accepts, in words, with an example (first match wins).
_EXPECTED = ((BooleanNode, "true or false"), (IntegerNode, "an integer, e.g. 3"), (FloatNode, "a number, e.g. 0.5"),
             (ListConfig, "a list in brackets, e.g. [1,2] (or [] for none)"),
             (DictConfig, "a group of keys (set them one by one, e.g. key.sub=value)"), (StringNode, "a string"))


def _expected(node: Any) -> str:
    """What a config node accepts, in words, with an example."""
    return next((words for kind, words in _EXPECTED if isinstance(node, kind)), "a value of another type")


def _unknown_option(err: MissingConfigException) -> str:
    missing = err.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = list(err.options or [])
    if group == "hydra/launcher" and option in PLUGIN_LAUNCHERS:
        return (f"the {PLUGIN_LAUNCHERS[option]} launcher needs Hydra's {option} plugin, which is not installed. "
                "Install the launcher plugins with pip install -e '.[cluster]' (or pip install "
                "hydra-joblib-launcher hydra-submitit-launcher).")
    if missing.startswith("experiment/"):  # presets nest (dong2017/...): name them all, not one folder's options
        return unknown_preset_message(missing[len("experiment/"):])
    top, _, folder = group.partition("/")
    # erase=mnist_cnn/gates misspelled: Hydra lists the top group's own options (a nested group, hydra/launcher,
    # lists its own), so name the option as typed among every option of the group, its folders' included
    if folder and (CONF / top).is_dir() and set(options) == {p.stem for p in (CONF / top).glob("*.yaml")}:
        group, option = top, f"{folder}/{option}"
        options = sorted(str(p.relative_to(CONF / top).with_suffix("")) for p in (CONF / top).rglob("*.yaml"))
    if not group or not options:  # not a group option: e.g. a --config-name that does not exist
        return f"the config {missing!r} does not exist. Check its name against erasenet/conf/."
    listing = ", ".join(options)
    return (f"{group}={option}: the config group {group!r} has no option {option!r}."
            f"{did_you_mean(option, options)} Its options are: {listing}.")


def _bad_key(cause: ConfigAttributeError | ConfigKeyError) -> str:
    full_key = cause.full_key or str(cause.key)
    if full_key in REMOVED_KEYS:
        return REMOVED_KEYS[full_key]
    parent = cause.parent_node
    keys = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
    section, _, _ = full_key.rpartition(".")
    prefix = f"{section}." if section else ""
    hint = did_you_mean(str(cause.key), keys, prefix)
    known = ", ".join(f"{prefix}{k}" for k in keys if k != "hydra")
    where = f"in {section}" if section else "at the top level"
    return (f"{full_key} is not a key of erasenet's config.{hint} The keys {where} are: {known}. "
            f"`python -m erasenet.train --cfg job` prints the whole config.")


def _wrong_type(cause: ValidationError) -> str:
    default = cause.child_node
    shown = str(default).lower() if isinstance(default, BooleanNode) else default
    return (f"{cause.full_key}={cause.value} has the wrong type: {cause.full_key} takes {_expected(default)}"
            f" (its default is {shown}).")


def explain(err: BaseException) -> Optional[str]:
    """The one-paragraph message for a Hydra or OmegaConf configuration error, or None when ``err`` is not one."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, MissingConfigException):
        return _unknown_option(err)
    if isinstance(err, OverrideParseException):
        first = str(err).splitlines()[0] if str(err) else "unreadable override"
        return (f"a command-line override could not be read ({first}). Write overrides as key=value, a sweep as "
                f"key=a,b,c and a list as key=[a,b]; quote values with spaces or brackets for the shell.")
    cause = err.__cause__ if isinstance(err, ConfigCompositionException) else err
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return _bad_key(cause)
    if isinstance(cause, ValidationError):
        return _wrong_type(cause)
    text = " ".join(str(err).split())
    if isinstance(err, ConfigCompositionException) and text.startswith("Ambiguous value for argument"):
        override = str(err).split("'")[1] if str(err).count("'") >= 2 else "key=a,b"
        return (f"{override} is a sweep, which needs -m: python -m erasenet.train -m {override} ... trains each "
                f"value (a preset sweeps without -m). For a list value write key=[a,b] instead.")
    if isinstance(cause, OmegaConfBaseException) and cause is not err:
        return f"{text} ({' '.join(str(cause).split())})"
    if isinstance(err, (ConfigCompositionException, OmegaConfBaseException)):
        return text
    return None


def full_error_wanted() -> bool:
    """HYDRA_FULL_ERROR=1 asks for the complete stack trace, as in any Hydra application."""
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def print_and_exit(message: str) -> None:
    """Print one problem's paragraph and exit with status 2, like every input error of erasenet."""
    print(f"\nerror: {message}\n", file=sys.stderr)
    sys.exit(2)


def exit_if_config_error(err: BaseException) -> None:
    """Print ``err``'s paragraph and exit 2 when it is a configuration error (and no full trace is wanted)."""
    message = None if full_error_wanted() else explain(err)
    if message is not None:
        print_and_exit(message if isinstance(err, UserError) else paragraph(message, len("error: ")))


def reporting_config_errors(report: Callable[[Callable[[], Any]], Any]) -> Callable[[Callable[[], Any]], Any]:
    """Wrap Hydra's ``run_and_report`` so that configuration errors print as erasenet's paragraph, exit 2."""

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:
                exit_if_config_error(err)
                raise

        return report(guarded)

    return run_and_report
