"""Simulated robot cell for the closed loop: MuJoCo pick-and-place (gymnasium-robotics Fetch) with RGB-D
cameras, a scripted expert, simulator ground truth, and SimWorker actors that roll episodes out.

    from runtime.robot.sim.env import PickPlaceSim, SimConfig
    from runtime.robot.sim.expert import ScriptedExpert
    from runtime.robot.sim.pool import SimPool, SimPoolConfig
"""
