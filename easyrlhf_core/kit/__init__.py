"""The public plugin kit: this package will hold everything a plugin may import.

For now it holds :mod:`easyrlhf_core.kit.rl_math` (the RL maths of online methods: masked statistics, GAE and
returns, KL estimators and controllers, clipped losses, group baselines). Importing this package imports
nothing heavy: torch is imported inside the functions.
"""
