"""ManiSkill's PickCube with its goal marker visible to the cameras.

ManiSkill hides the green goal sphere from the sensors (its position is only in
the state); a vision-language policy must see where to bring the cube, so this
variant shows it.
"""

from __future__ import annotations

from mani_skill.envs.tasks.tabletop.pick_cube import PickCubeEnv
from mani_skill.utils.registration import register_env


@register_env("VLAF-PickCubeGoal-v1", max_episode_steps=50)
class PickCubeGoalEnv(PickCubeEnv):
    """
    **Task Description:**
    ManiSkill's PickCube-v1 (grasp the red cube and move it to the goal) with the
    green goal sphere shown in the camera images.

    **Randomizations:**
    - as PickCube-v1: cube xy in [-0.1, 0.1]^2 and its z rotation; goal xy in
      [-0.1, 0.1]^2 and height in [0, 0.3] above the cube's resting height

    **Success Conditions:**
    - as PickCube-v1: the cube is within 0.025 m of the goal and the robot is static
    """

    def _load_scene(self, options: dict):
        super()._load_scene(options)
        self._hidden_objects.remove(self.goal_site)
