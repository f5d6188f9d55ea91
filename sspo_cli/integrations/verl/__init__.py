"""Our objectives inside verl. They stand on ``sspo_cli.objectives`` alone.

- ``loss``: SSPO and GMPO as verl policy-loss functions (no verl import).
- ``plugin``: the ``verl.plugins`` entry point that registers them with verl.
- ``check``: ``python -m sspo_cli.integrations.verl.check``, did verl load the plug-in?
"""
