"""The simulator: a task's settings resolved on its MuJoCo model, the simulation that reads its blocks, rollouts."""
