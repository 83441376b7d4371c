"""vla-forget: measure what a vision-language-action policy gains and forgets when adapted.

Importing this package is cheap: torch, ManiSkill and SAPIEN are imported only
when a task, policy or command needs them.
"""

__version__ = "0.1.0"
