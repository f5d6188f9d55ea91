"""``python -m sspo_cli.integrations.verl.check``: did verl load sspo-cli's plug-in, as a trainer would?

Imports verl the way its driver and Ray workers do (entry points, ``VERL_USE_EXTERNAL_MODULES``, and
``VERL_USE_EXTERNAL_PLUGINS`` as set in this shell), then looks up each of our loss modes in verl's registry.
Exit code 0: every one is ours; 1: not (with the reason, and the plug-in's traceback where it fails to import).
Run it in the environment, and with the environment variables, that the workers get.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from importlib.metadata import entry_points

PLUGIN = "sspo_cli.integrations.verl.plugin"
ENTRY_POINT_GROUP = "verl.plugins"


def problems() -> list[str]:
    """What keeps ``loss_mode=sspo`` from working in this environment (empty: nothing)."""
    try:
        import verl
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
    except Exception as error:
        return [f"verl cannot be imported here: {type(error).__name__}: {error}"]

    from sspo_cli.integrations.verl.loss import VERL_LOSS_MODES, verl_policy_loss

    found: list[str] = []
    ours = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.value == PLUGIN]
    if not ours:
        found.append(f"no {ENTRY_POINT_GROUP} entry point names {PLUGIN}: is sspo-cli installed in this environment?")
    policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto").strip().lower()
    external = os.environ.get("VERL_USE_EXTERNAL_MODULES", "").split(",")
    if ours and policy != "auto" and ours[0].name not in policy.split(",") and PLUGIN not in external:
        found.append(f"VERL_USE_EXTERNAL_PLUGINS={policy} leaves out the entry point {ours[0].name!r}")
    for loss_mode in VERL_LOSS_MODES:
        try:
            function = get_policy_loss_fn(loss_mode)
        except ValueError as error:
            found.append(f"loss_mode={loss_mode} is not registered: {error}")
            continue
        if function.__module__ != verl_policy_loss.__module__:
            found.append(f"loss_mode={loss_mode} is registered by {function.__module__}, not by sspo-cli")
    if found and PLUGIN not in sys.modules:
        try:
            importlib.import_module(PLUGIN)
        except Exception:
            found.append(f"importing {PLUGIN} fails:\n{traceback.format_exc()}")
    if not found:
        print(f"verl {verl.__version__}: loss_mode {', '.join(VERL_LOSS_MODES)} registered by sspo-cli ({PLUGIN})")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"verl plug-in check FAILED: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
