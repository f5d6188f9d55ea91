"""Our objectives inside other RL frameworks (verl). They stand on ``sspo_cli.objectives`` alone.

- ``verl_loss``: SSPO and GMPO as verl policy-loss functions (no verl import).
- ``verl_plugin``: the ``verl.plugins`` entry point that registers them with verl.
- ``verl_check``: ``python -m sspo_cli.integrations.verl_check``, did verl load the plug-in?
"""
