"""Our objectives inside other RL frameworks, which import us (we never import them).

verl/   SSPO and GMPO as verl policy losses, registered through verl's plug-in entry point
"""
