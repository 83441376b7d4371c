"""ManiSkill3 task definitions of vla-forget (registered with ManiSkill on import).

Each module follows ManiSkill's task template (a docstring with Task
Description / Randomizations / Success Conditions and one ``evaluate()``) and
registers its env under a ``VLAF-`` prefixed name so that it never clashes with
ManiSkill's built-ins. Importing this package imports ManiSkill; the task
registry in :mod:`vla_forget.envs` imports the modules only when a task is made.
"""
