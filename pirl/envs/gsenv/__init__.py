"""GSEnv: the seeds' Real2Sim2Real simulator, ManiSkill3 physics seen through 3D Gaussian
splatting (the πRL paper's PutCubeOnPlate-v0).

    assets.py       the asset folder: layout, manifest, checks (no torch)
    splats.py       3DGS PLY layout, activations, spherical-harmonics colour
    transforms.py   rigid transforms carrying splats from their capture frame to the world
    camera.py       the calibrated third-person camera, SAPIEN and OpenCV conventions
    rasterize.py    gsplat's CUDA rasterizer and pirl's torch rasterizer (EWA, front to back)
    compositing.py  premultiplied layers: foreground over the cached table over a background
    renderer.py     splat clouds and the per-step render
    robot.py        the folder's Franka as a ManiSkill agent; link poses by forward kinematics
    task.py         the ManiSkill task PutCubeOnPlate-v0 (imports ManiSkill)
    env.py          the adapters behind pirl's env protocol (CPU workers, GPU batch)
    synthetic.py    a synthetic asset folder for tests and CPU runs
"""
