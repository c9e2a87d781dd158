"""PyBullet backend: one DIRECT physics client holding N drone bodies; integrates the wrenches it is given.

Bullet integrates at the physics rate through its own substeps (``numSubSteps``) inside one
``stepSimulation`` call per control period; the external wrench stays applied across those substeps,
which we verified gives the identical trajectory to one Python call per substep at a third of the cost.
Bodies are built once from primitive shapes; a reset only moves them (reloading a URDF costs ~16 ms).

Compiled by Cython in pure-Python mode (see ``physics``): ``step`` and ``read`` run every control period, and
as C they add almost nothing to the pybullet calls they make.
"""

from __future__ import annotations

import cython
import numpy as np
import pybullet as p

from entropilot.vehicle.airframe import GRAVITY, Airframe

_DRONE_COLORS = [
    (0.15, 0.35, 0.85, 1),
    (0.85, 0.3, 0.15, 1),
    (0.2, 0.7, 0.3, 1),
    (0.7, 0.2, 0.7, 1),
    (0.9, 0.75, 0.1, 1),
]
_ORIGIN, _LINK_FRAME = (0.0, 0.0, 0.0), p.LINK_FRAME
# Bound once: looked up on the module at every call they would cost more than some of the calls themselves.
_apply_force, _apply_torque, _step_simulation = p.applyExternalForce, p.applyExternalTorque, p.stepSimulation
_pose, _twist = p.getBasePositionAndOrientation, p.getBaseVelocity


@cython.cclass
class PyBulletWorld:
    num_drones = cython.declare(cython.Py_ssize_t, visibility="readonly")
    client = cython.declare(object, visibility="readonly")  # the physics client id; None once closed
    ground = cython.declare(object, visibility="readonly")
    bodies = cython.declare(list, visibility="readonly")

    def __init__(self, airframe: Airframe, num_drones: int, physics_hz: int, control_hz: int):
        self.num_drones = num_drones
        self.client = p.connect(p.DIRECT)
        c = self.client
        p.setGravity(0, 0, -GRAVITY, physicsClientId=c)
        p.setPhysicsEngineParameter(
            fixedTimeStep=1.0 / control_hz, numSubSteps=physics_hz // control_hz, physicsClientId=c
        )
        ground_shape = p.createCollisionShape(p.GEOM_PLANE, physicsClientId=c)
        ground_visual = p.createVisualShape(
            p.GEOM_BOX, halfExtents=[5, 5, 0.001], rgbaColor=[0.85, 0.87, 0.9, 1], physicsClientId=c
        )
        self.ground = p.createMultiBody(0, ground_shape, ground_visual, physicsClientId=c)
        half = airframe.collision_half_extents
        collision = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=c)
        self.bodies = []
        for i in range(num_drones):
            visual = self._visual_shape(airframe, _DRONE_COLORS[i % len(_DRONE_COLORS)])
            body = p.createMultiBody(airframe.mass, collision, visual, basePosition=[0, 0, 1 + i], physicsClientId=c)
            p.changeDynamics(body, -1, linearDamping=0.0, angularDamping=0.0, physicsClientId=c)
            self.bodies.append(body)
        self.set_inertial([airframe] * num_drones)

    def _visual_shape(self, airframe: Airframe, color) -> int:
        """An X of two arms and four rotor discs: cheap to build, readable in a video."""
        c = self.client
        arm = airframe.arm
        d = arm / np.sqrt(2)
        shapes = [p.GEOM_BOX, p.GEOM_BOX] + [p.GEOM_CYLINDER] * 4
        half_extents = [[arm, 0.004, 0.003]] * 2 + [[0, 0, 0]] * 4
        radii = [0, 0] + [0.023] * 4
        lengths = [0, 0] + [0.004] * 4
        positions = [[0, 0, 0], [0, 0, 0], [d, -d, 0.006], [-d, -d, 0.006], [-d, d, 0.006], [d, d, 0.006]]
        q45 = p.getQuaternionFromEuler([0, 0, np.pi / 4])
        q135 = p.getQuaternionFromEuler([0, 0, -np.pi / 4])
        orientations = [q45, q135] + [[0, 0, 0, 1]] * 4
        colors = [color, color] + [[0.1, 0.1, 0.1, 1]] * 4
        return p.createVisualShapeArray(
            shapeTypes=shapes,
            halfExtents=half_extents,
            radii=radii,
            lengths=lengths,
            rgbaColors=colors,
            visualFramePositions=positions,
            visualFrameOrientations=orientations,
            physicsClientId=c,
        )

    def set_inertial(self, airframes: list[Airframe]) -> None:
        for body, a in zip(self.bodies, airframes):
            p.changeDynamics(body, -1, mass=a.mass, localInertiaDiagonal=list(a.inertia), physicsClientId=self.client)

    def place(self, i: int, position, quaternion, velocity, angular_velocity_world) -> None:
        body, c = self.bodies[i], self.client
        p.resetBasePositionAndOrientation(body, list(position), list(quaternion), c)
        p.resetBaseVelocity(body, list(velocity), list(angular_velocity_world), c)

    @cython.ccall
    def step(self, body_forces: list, body_torques: list) -> list:
        """Apply each drone's body-frame force and torque for one control period, integrate it, and ``read``."""
        # Positional arguments: pybullet parses keywords noticeably slower, and these run every step.
        c = self.client
        i: cython.Py_ssize_t
        for i in range(len(self.bodies)):
            body = self.bodies[i]
            _apply_force(body, -1, body_forces[i], _ORIGIN, _LINK_FRAME, c)
            _apply_torque(body, -1, body_torques[i], _LINK_FRAME, c)
        _step_simulation(c)
        return self.read()

    @cython.ccall
    def read(self) -> list:
        """Per body: (position, quaternion (x, y, z, w), world velocity, world angular velocity), each a tuple."""
        c = self.client
        return [_pose(body, c) + _twist(body, c) for body in self.bodies]

    def render(self, target, width: int = 320, height: int = 240, distance: float = 0.5) -> np.ndarray:
        """An RGB frame from a chase camera looking at ``target``; TinyRenderer works without a display."""
        c = self.client
        view = p.computeViewMatrixFromYawPitchRoll(
            cameraTargetPosition=list(target),
            distance=distance,
            yaw=35,
            pitch=-25,
            roll=0,
            upAxisIndex=2,
            physicsClientId=c,
        )
        proj = p.computeProjectionMatrixFOV(fov=60, aspect=width / height, nearVal=0.02, farVal=30, physicsClientId=c)
        _, _, rgba, _, _ = p.getCameraImage(width, height, view, proj, renderer=p.ER_TINY_RENDERER, physicsClientId=c)
        return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]

    def close(self) -> None:
        if self.client is not None and p.isConnected(self.client):
            p.disconnect(self.client)
        self.client = None
