"""riselm: RISE (Recursive IntroSpEction) for language models.

A model answers; told "that is wrong, try again" it should answer better, turn after turn, without
ever being told the right answer. riselm holds the tasks, generation backends, multi-turn rollouts,
reward-weighted training and the evaluation that measure and build that ability.
"""

__version__ = "0.1.0"
